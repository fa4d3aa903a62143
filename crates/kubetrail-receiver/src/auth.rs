//! Bearer tokens and client certificates.

use std::path::Path;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq as _;

use crate::ReceiverError;

/// What a connection learned during the TLS handshake; inserted into every request's
/// extensions by the server.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The peer.
    pub remote: std::net::SocketAddr,
    /// A client certificate was presented and verified against the client CA.
    pub client_cert_verified: bool,
    /// The verified client certificate's subject: its common name, else the whole subject
    /// (`kube-apiserver`'s webhook client certificate names the server).
    pub client_subject: Option<String>,
}

/// The subject of a DER certificate: the first common name, else the subject as a string.
pub(crate) fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    cn.or_else(|| Some(subject.to_string()))
        .filter(|s| !s.is_empty())
}

/// An identity as a batch source: characters outside `[A-Za-z0-9-._:]` become `_`, at most
/// 253 characters.
fn source_label(name: &str) -> String {
    name.chars()
        .take(253)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The configured credentials.
#[derive(Clone, Default)]
pub(crate) struct Auth {
    tokens: Vec<Vec<u8>>,
    /// The name of each token (the second field of its line), if it has one.
    names: Vec<Option<String>>,
    client_ca: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No usable credential: 401.
    Missing,
    /// A bearer token that is not one of ours: 403.
    Invalid,
}

impl Auth {
    /// `tokens`: one per line of the tokens file, `TOKEN` or `TOKEN,NAME[,…]` (the first two
    /// fields of kube-apiserver's static token file format: the name is who holds the token,
    /// an API server's name for example).
    pub(crate) fn new(tokens: Vec<String>, client_ca: bool) -> Self {
        let (tokens, names) = tokens
            .into_iter()
            .map(|line| match line.split_once(',') {
                Some((token, rest)) => {
                    let name = rest
                        .split(',')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .trim_matches('"');
                    (
                        token.trim().as_bytes().to_vec(),
                        (!name.is_empty()).then(|| name.to_owned()),
                    )
                }
                None => (line.into_bytes(), None),
            })
            .unzip();
        Auth {
            tokens,
            names,
            client_ca,
        }
    }

    /// Who sent an accepted request, as a batch source: the verified client certificate's
    /// subject, else the name of the bearer token it presented (when the tokens file names
    /// it). `None` without an identity.
    pub(crate) fn identity(&self, headers: &HeaderMap, conn: Option<&ConnInfo>) -> Option<String> {
        if let Some(subject) = conn
            .filter(|c| c.client_cert_verified)
            .and_then(|c| c.client_subject.as_deref())
        {
            return Some(source_label(subject));
        }
        let token = bearer_token(headers.get(AUTHORIZATION)?.as_bytes())?;
        // Constant time over every token, as in `check`: select the index without branching.
        use subtle::ConditionallySelectable as _;
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, t) in self.tokens.iter().enumerate() {
            let eq = t.as_slice().ct_eq(token);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), eq);
            found |= eq;
        }
        if !bool::from(found) {
            return None;
        }
        self.names
            .get(index as usize)
            .cloned()
            .flatten()
            .map(|n| source_label(&n))
    }

    /// Whether any credential is required.
    pub(crate) fn required(&self) -> bool {
        !self.tokens.is_empty() || self.client_ca
    }

    /// Accepts a verified client certificate or a valid bearer token.
    pub(crate) fn check(&self, headers: &HeaderMap, conn: Option<&ConnInfo>) -> Result<(), Denied> {
        if !self.required() || conn.is_some_and(|c| c.client_cert_verified) {
            return Ok(());
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(Denied::Missing);
        };
        let Some(token) = bearer_token(value.as_bytes()) else {
            return Err(Denied::Missing);
        };
        // Compare against every token, whatever matched, so the time taken does not tell
        // which token (or how much of one) was right.
        let mut ok = subtle::Choice::from(0);
        for t in &self.tokens {
            ok |= t.as_slice().ct_eq(token);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Denied::Invalid)
        }
    }
}

impl Auth {
    /// Whether `token` is one of ours, compared in constant time against every token.
    fn matches(&self, token: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0);
        for t in &self.tokens {
            ok |= t.as_slice().ct_eq(token);
        }
        bool::from(ok)
    }

    /// Kinesis Data Firehose HTTP-endpoint deliveries: the access key configured on the
    /// delivery stream arrives in `X-Amz-Firehose-Access-Key` (Firehose sends no bearer
    /// token); it must be one of the tokens. A client certificate or bearer token also works.
    pub(crate) fn check_firehose(
        &self,
        headers: &HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<(), Denied> {
        match headers.get("x-amz-firehose-access-key") {
            Some(key) if self.required() => {
                if self.matches(key.as_bytes()) {
                    Ok(())
                } else {
                    Err(Denied::Invalid)
                }
            }
            _ => self.check(headers, conn),
        }
    }

    /// Pub/Sub push subscriptions: a bearer token, or the token in the push endpoint's URL
    /// (`?token=…`, the verification token Google documents for push endpoints).
    pub(crate) fn check_query_token(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        conn: Option<&ConnInfo>,
    ) -> Result<(), Denied> {
        let token = query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::as_bytes)
        });
        match token {
            Some(t) if self.required() && headers.get(AUTHORIZATION).is_none() => {
                if self.matches(t) {
                    Ok(())
                } else {
                    Err(Denied::Invalid)
                }
            }
            _ => self.check(headers, conn),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    // "Bearer" must be followed by whitespace ("Bearerxyz" is another scheme).
    (rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') && !token.is_empty()).then_some(token)
}

/// Reads one token per line; blank lines and `#` comments are ignored.
pub(crate) fn load_tokens(path: &Path) -> Result<Vec<String>, ReceiverError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReceiverError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(ReceiverError::Empty {
            what: "bearer tokens",
            path: path.to_owned(),
        });
    }
    Ok(tokens)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (a DNS-1123 label).
pub(crate) fn valid_cluster(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn tokens() {
        let auth = Auth::new(vec!["alpha".into(), "beta-token".into()], false);
        assert_eq!(auth.check(&headers(None), None), Err(Denied::Missing));
        assert_eq!(
            auth.check(&headers(Some("Basic dXNlcjpwYXNz")), None),
            Err(Denied::Missing)
        );
        assert_eq!(
            auth.check(&headers(Some("Bearer alph")), None),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(&headers(Some("Bearer alphaa")), None),
            Err(Denied::Invalid)
        );
        assert_eq!(
            auth.check(&headers(Some("Bearerbeta-token")), None),
            Err(Denied::Missing)
        );
        assert_eq!(auth.check(&headers(Some("Bearer alpha")), None), Ok(()));
        assert_eq!(
            auth.check(&headers(Some("bearer  beta-token ")), None),
            Ok(())
        );
    }

    #[test]
    fn client_cert_or_nothing() {
        let conn = |v| ConnInfo {
            client_subject: None,
            remote: "127.0.0.1:1".parse().unwrap(),
            client_cert_verified: v,
        };
        let mtls = Auth::new(vec![], true);
        assert_eq!(mtls.check(&headers(None), Some(&conn(true))), Ok(()));
        assert_eq!(
            mtls.check(&headers(None), Some(&conn(false))),
            Err(Denied::Missing)
        );
        assert_eq!(
            mtls.check(&headers(Some("Bearer x")), Some(&conn(false))),
            Err(Denied::Invalid)
        );
        let open = Auth::default();
        assert!(!open.required());
        assert_eq!(open.check(&headers(None), None), Ok(()));
    }

    #[test]
    fn identities_are_the_certificate_subject_else_the_token_name() {
        let auth = Auth::new(
            vec![
                "alpha,apiserver-1,uid-1,\"system:masters\"".into(),
                "beta".into(),
            ],
            true,
        );
        let bearer = |t: &str| headers(Some(&format!("Bearer {t}")));
        // A named token: its name; the token itself still authenticates.
        assert_eq!(auth.check(&bearer("alpha"), None), Ok(()));
        assert_eq!(
            auth.identity(&bearer("alpha"), None).as_deref(),
            Some("apiserver-1")
        );
        // An unnamed or unknown token: no identity.
        assert_eq!(auth.identity(&bearer("beta"), None), None);
        assert_eq!(auth.identity(&bearer("alpha,apiserver-1"), None), None);
        assert_eq!(auth.identity(&headers(None), None), None);
        // A verified client certificate wins over a token.
        let cert = ConnInfo {
            remote: "10.0.0.1:1".parse().unwrap(),
            client_cert_verified: true,
            client_subject: Some("kube apiserver/2".into()),
        };
        assert_eq!(
            auth.identity(&bearer("alpha"), Some(&cert)).as_deref(),
            Some("kube_apiserver_2")
        );
        let unverified = ConnInfo {
            client_cert_verified: false,
            ..cert
        };
        assert_eq!(
            auth.identity(&bearer("alpha"), Some(&unverified))
                .as_deref(),
            Some("apiserver-1")
        );
    }

    #[test]
    fn a_certificates_subject_is_its_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apiserver-2");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_subject(cert.der()).as_deref(),
            Some("apiserver-2")
        );
        let mut no_cn = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        no_cn.distinguished_name = rcgen::DistinguishedName::new();
        no_cn
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "team");
        let cert = no_cn.self_signed(&key).unwrap();
        assert_eq!(certificate_subject(cert.der()).as_deref(), Some("O=team"));
        assert_eq!(certificate_subject(b"not a certificate"), None);
    }

    #[test]
    fn token_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# comment\n\n  one  \ntwo\n   # indented comment\n").unwrap();
        assert_eq!(load_tokens(&p).unwrap(), vec!["one", "two"]);
        std::fs::write(&p, "# only comments\n\n").unwrap();
        let err = load_tokens(&p).unwrap_err().to_string();
        assert!(
            err.contains("tokens") && err.contains(&p.display().to_string()),
            "{err}"
        );
        let missing = dir.path().join("missing");
        let err = load_tokens(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn cluster_names() {
        for ok in ["a", "prod-eu-1", "0", &"a".repeat(63)] {
            assert!(valid_cluster(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Prod",
            "a_b",
            "a.b",
            "a/b",
            &"a".repeat(64),
            "ä",
        ] {
            assert!(!valid_cluster(bad), "{bad}");
        }
    }
}
