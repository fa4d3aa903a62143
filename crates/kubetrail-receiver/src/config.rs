//! The `server:` section of the config file, and how it builds a [`ReceiverConfig`].
//!
//! The file's form keeps what a person writes (paths, a Jaeger URL, optional TLS) and the
//! defaults, which are [`ReceiverConfig::default`]'s; [`ServerConfig::build`] checks it and
//! adds what the rest of the configuration decides (the cluster name, the trace window).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{JaegerLink, ReceiverConfig, ReceiverError, TlsConfig};

/// `server:` — the audit webhook of `serve` and `receive`. Every field's default is
/// [`ReceiverConfig::default`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address. Absent: 127.0.0.1:8443 for the webhook (`consume` serves its metrics
    /// here when set, and not at all otherwise).
    pub listen: Option<SocketAddr>,
    /// TLS (PEM files); absent: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens file ([`ReceiverConfig::token_file`]).
    pub token_file: Option<PathBuf>,
    /// Allow a non-loopback address without authentication.
    pub insecure: bool,
    /// Largest accepted body (also after gzip decompression), bytes.
    pub max_body_bytes: usize,
    /// Most items per EventList.
    pub max_batch_items: usize,
    /// Most connections open at once (more are closed at once).
    pub max_connections: usize,
    /// Most request-body bytes held at once over all requests (503 beyond; at least
    /// `max_body_bytes`).
    pub max_inflight_bytes: usize,
    /// Slow-client protection: time to send the request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Slow-client protection: time to send the body.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Jaeger UI base URL for `GET /redirect`.
    pub jaeger_url: Option<String>,
    /// Answer 503 once the exporter has been failing this long (accepting more would only
    /// fill the queue). Default 30 s. Read by the command that knows its exporter.
    #[serde(with = "humantime_serde")]
    pub export_failure_threshold: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let d = ReceiverConfig::default();
        ServerConfig {
            listen: None,
            tls: None,
            token_file: None,
            insecure: d.insecure,
            max_body_bytes: d.max_body_bytes,
            max_batch_items: d.max_batch_items,
            max_connections: d.max_connections,
            max_inflight_bytes: d.max_inflight_bytes,
            header_read_timeout: d.header_read_timeout,
            body_read_timeout: d.body_read_timeout,
            jaeger_url: None,
            export_failure_threshold: Duration::from_secs(30),
        }
    }
}

/// `server.tls:` — the files; `--tls-cert`, `--tls-key`, `--client-ca` may set each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// CA for client certificates (PEM).
    pub client_ca: Option<PathBuf>,
}

impl ServerConfig {
    /// The receiver's settings: batches POSTed to `/audit` belong to `cluster`; `/redirect`
    /// computes trace ids with the pipeline's trace `window`.
    ///
    /// Fails on TLS settings that do not make a server (a certificate without its key, a
    /// client CA without TLS). Limits are checked when the receiver binds.
    pub fn build(&self, cluster: &str, window: Duration) -> Result<ReceiverConfig, ReceiverError> {
        let d = ReceiverConfig::default();
        let tls = self.tls.clone().unwrap_or_default();
        let tls = match (tls.cert, tls.key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                client_ca: tls.client_ca,
            }),
            (None, None) if tls.client_ca.is_some() => {
                return Err(ReceiverError::Config(
                    "a client CA needs TLS: give --tls-cert and --tls-key too (server.tls.cert, server.tls.key)".into(),
                ));
            }
            (None, None) => None,
            _ => {
                return Err(ReceiverError::Config(
                    "TLS needs both a certificate and a key (server.tls.cert and server.tls.key)"
                        .into(),
                ));
            }
        };
        Ok(ReceiverConfig {
            listen: self.listen.unwrap_or(d.listen),
            default_cluster: cluster.to_owned(),
            max_body_bytes: self.max_body_bytes,
            max_batch_items: self.max_batch_items,
            max_connections: self.max_connections,
            max_inflight_bytes: self.max_inflight_bytes,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            tls,
            token_file: self.token_file.clone(),
            insecure: self.insecure,
            jaeger: self
                .jaeger_url
                .clone()
                .map(|url| JaegerLink { url, window }),
            ..d
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_builds_the_receivers_defaults() {
        let s: ServerConfig = serde_yaml::from_str("{}").unwrap();
        let built = s.build("prod", Duration::from_secs(1800)).unwrap();
        assert_eq!(
            built,
            ReceiverConfig {
                default_cluster: "prod".into(),
                ..ReceiverConfig::default()
            }
        );
    }

    #[test]
    fn settings_reach_the_receiver_and_half_a_tls_setup_is_refused() {
        let s: ServerConfig = serde_yaml::from_str(
            "listen: 0.0.0.0:9443\ntls: {cert: c.pem, key: k.pem, client_ca: ca.pem}\nmax_body_bytes: 1024\nbody_read_timeout: 2s\njaeger_url: http://jaeger:16686\n",
        )
        .unwrap();
        let r = s.build("c", Duration::from_secs(60)).unwrap();
        assert_eq!(r.listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(r.max_body_bytes, 1024);
        assert_eq!(r.body_read_timeout, Duration::from_secs(2));
        let tls = r.tls.unwrap();
        assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
        let jaeger = r.jaeger.unwrap();
        assert_eq!(
            (jaeger.url.as_str(), jaeger.window),
            ("http://jaeger:16686", Duration::from_secs(60))
        );

        for (yaml, want) in [
            ("tls: {cert: c.pem}", "both a certificate and a key"),
            ("tls: {client_ca: ca.pem}", "a client CA needs TLS"),
        ] {
            let s: ServerConfig = serde_yaml::from_str(yaml).unwrap();
            let e = s.build("c", Duration::from_secs(60)).unwrap_err();
            assert!(e.to_string().contains(want), "{yaml}: {e}");
        }
        let typo = serde_yaml::from_str::<ServerConfig>("max_body_byte: 1").unwrap_err();
        assert!(typo.to_string().contains("max_body_byte"), "{typo}");
    }
}
