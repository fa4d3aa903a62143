//! The rustls server configuration (ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::{ReceiverError, TlsConfig};

/// Builds the server config: certificate chain and key, and when a client CA is given, a
/// verifier that *allows* unauthenticated clients (so a missing client certificate becomes
/// an HTTP 401, not a TLS alert) but fails the handshake on a certificate it cannot verify.
/// ALPN offers h2 and http/1.1.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, ReceiverError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&tls.cert, "the TLS certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|source| ReceiverError::Pem {
        what: "the TLS private key",
        path: tls.key.clone(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| ReceiverError::Tls {
            context: "choosing TLS protocol versions".to_owned(),
            source,
        })?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca, "client CA certificates")? {
                roots.add(cert).map_err(|source| ReceiverError::Tls {
                    context: format!("adding a client CA certificate from {}", ca.display()),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|source| ReceiverError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| ReceiverError::Tls {
            context: format!(
                "using the certificate {} with the key {}",
                tls.cert.display(),
                tls.key.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ReceiverError> {
    let pem_error = |source| ReceiverError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(ReceiverError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
