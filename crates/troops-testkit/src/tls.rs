//! Certificates made in the test, for the HTTP server's TLS mode: a CA of the test's own (its PEM
//! in a temp file, for a check's `ca` or a node's trust) and server certificates it signs, good,
//! for another name, or expired. Nothing of the machine's trust is touched.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: tempfile::TempDir,
}

/// A certificate and its key, for a server.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The certificate and the key in PEM, as a web server (nginx) reads them.
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    /// A rustls server config serving this certificate, with ring, as troops' client has it.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .expect("a certificate rustls takes");
        Arc::new(config)
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a CA of the same name would be tried for its certificates.
        static MADE: AtomicU32 = AtomicU32::new(0);
        let name = format!("troops test CA {}-{}", std::process::id(), MADE.fetch_add(1, Ordering::SeqCst));
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        TestCa { cert, key, dir }
    }

    /// The CA's certificate in a PEM file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `name` (a DNS name or an IP address), valid now.
    pub fn server(&self, name: &str) -> ServerCert {
        self.sign(name, false)
    }

    /// A certificate for `name` that expired in 2021.
    pub fn expired_server(&self, name: &str) -> ServerCert {
        self.sign(name, true)
    }

    fn sign(&self, name: &str, expired: bool) -> ServerCert {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if expired {
            (params.not_before, params.not_after) =
                (rcgen::date_time_ymd(2020, 1, 1), rcgen::date_time_ymd(2021, 1, 1));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        ServerCert {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}
