//! A throwaway PKI for TLS and mTLS tests (rcgen).

use std::path::PathBuf;

/// A throwaway PKI: a CA, a server certificate for 127.0.0.1/localhost, a client
/// certificate from the same CA, and a client certificate from an unrelated CA.
pub struct Pki {
    /// Where the files are.
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The CA certificate file.
    pub ca_file: PathBuf,
    /// Server certificate file (127.0.0.1, localhost).
    pub server_cert: PathBuf,
    /// Server key file.
    pub server_key: PathBuf,
    /// Client certificate + key (PEM) signed by the CA.
    pub client_identity: String,
    /// Client certificate + key (PEM) signed by another CA.
    pub stranger_identity: String,
}

fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("certificate generation");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(
        params,
        KeyPair::generate().expect("certificate generation"),
    )
    .expect("certificate generation")
}

fn leaf(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    sans: &[&str],
    cn: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate().expect("certificate generation");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate generation");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let cert = params
        .signed_by(&key, issuer)
        .expect("certificate generation");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Creates the CA and certificates in a temporary directory.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Pki {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = tempfile::tempdir().expect("certificate generation");
        let ca = new_ca("kubetrail test CA");
        let other = new_ca("some other CA");
        let (server_cert, server_key) = leaf(
            &ca,
            &["127.0.0.1", "localhost"],
            "kubetrail-receiver",
            ServerAuth,
        );
        let (client_cert, client_key) = leaf(&ca, &[], "kube-apiserver", ClientAuth);
        let (stranger_cert, stranger_key) = leaf(&other, &[], "kube-apiserver", ClientAuth);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("certificate generation");
            p
        };
        let ca_pem = ca.pem();
        Pki {
            ca_file: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_identity: format!("{client_cert}{client_key}"),
            stranger_identity: format!("{stranger_cert}{stranger_key}"),
            ca_pem,
            dir,
        }
    }
}
