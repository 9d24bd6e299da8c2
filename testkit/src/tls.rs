//! A throw-away certificate authority, for HTTPS tests with a private CA.

use std::sync::Arc;

/// A throw-away certificate authority and a `localhost` server certificate
/// it signed, for testing HTTPS delivery with a private CA.
pub struct TestCa {
    ca_pem: String,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
}

impl TestCa {
    /// Generates the CA and the server certificate.
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        let server_cert = server_params.signed_by(&server_key, &issuer).expect("server cert");
        TestCa {
            ca_pem: ca_cert.pem(),
            server_cert: server_cert.der().to_vec(),
            server_key: server_key.serialize_der(),
        }
    }

    /// The CA certificate as PEM, for `DELIVER_EXTRA_CA_FILE`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into()),
            )
            .expect("server tls config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
