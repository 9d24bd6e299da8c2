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
        self.acceptor_offering(&[])
    }

    /// The same, choosing one of `alpn` (e.g. `h2`) when the client offers it.
    pub(crate) fn acceptor_offering(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into()),
            )
            .expect("server tls config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// Certificates for Redis over TLS, written to a folder of their own: a
/// CA, one certificate for `127.0.0.1` and `localhost` that every test
/// Redis node presents (also to each other, as replicas and cluster peers
/// do), and a client certificate, all signed by the CA.
#[derive(Debug)]
pub struct RedisCerts {
    dir: crate::TempDir,
}

impl RedisCerts {
    /// Generates the CA and the certificates.
    pub fn new() -> std::sync::Arc<RedisCerts> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = crate::TempDir::new("redis-tls");
        // Each certificate needs a name of its own: OpenSSL (Redis' side)
        // takes a leaf named like its issuer for a self-signed one.
        let named = |names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
            params
        };
        let ca_key = KeyPair::generate().expect("ca key");
        // A name of its own too, so that another set's CA is another
        // issuer altogether (rustls then says `UnknownIssuer`).
        static SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let set = SETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ca_name = format!("postback test redis CA {} {set}", std::process::id());
        let mut ca_params = named(Vec::new(), &ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let signed = |names: Vec<String>, common_name: &str| {
            let key = KeyPair::generate().expect("key");
            let cert = named(names, common_name).signed_by(&key, &issuer).expect("cert");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = signed(vec!["127.0.0.1".into(), "localhost".into()], "redis");
        let (client_cert, client_key) = signed(vec!["postback-client".into()], "postback-client");
        for (name, pem) in [
            ("ca.crt", ca_cert.pem()),
            ("redis.crt", server_cert),
            ("redis.key", server_key),
            ("client.crt", client_cert),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("cannot write a certificate");
        }
        std::sync::Arc::new(RedisCerts { dir })
    }

    /// A file of the set: `ca.crt`, `redis.crt`, `redis.key`, `client.crt`
    /// or `client.key`.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// redis-server's options to listen on `port` with TLS only (no plain
    /// port), to ask clients for a certificate, and to speak TLS to its
    /// master, replicas and cluster peers.
    pub fn server_options(&self, port: u16) -> Vec<String> {
        let path = |name: &str| self.file(name).display().to_string();
        [
            ("--port", "0".to_string()),
            ("--tls-port", port.to_string()),
            ("--tls-cert-file", path("redis.crt")),
            ("--tls-key-file", path("redis.key")),
            ("--tls-ca-cert-file", path("ca.crt")),
            ("--tls-auth-clients", "yes".to_string()),
            ("--tls-replication", "yes".to_string()),
        ]
        .into_iter()
        .flat_map(|(option, value)| [option.to_string(), value])
        .collect()
    }

    /// The services' settings for these certificates (`REDIS_TLS_*_FILE`).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("REDIS_TLS_CA_FILE", "ca.crt"),
            ("REDIS_TLS_CERT_FILE", "client.crt"),
            ("REDIS_TLS_KEY_FILE", "client.key"),
        ]
        .into_iter()
        .map(|(var, name)| (var.to_string(), self.file(name).display().to_string()))
        .collect()
    }

    /// The queue handle's form of them.
    pub fn queue_tls(&self) -> common::queue::RedisTls {
        common::queue::RedisTls::load(
            Some(&self.file("ca.crt")),
            Some(&self.file("client.crt")),
            Some(&self.file("client.key")),
        )
        .expect("the test certificates load")
    }

    /// A redis-rs client for the TLS node on `port`, with the client
    /// certificate.
    pub fn client(&self, port: u16) -> deadpool_redis::redis::Client {
        use deadpool_redis::redis::{Client, ClientTlsConfig, TlsCertificates};
        let read = |name: &str| std::fs::read(self.file(name)).expect("cannot read a certificate");
        Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}"),
            TlsCertificates {
                client_tls: Some(ClientTlsConfig {
                    client_cert: read("client.crt"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read("ca.crt")),
            },
        )
        .expect("a TLS client")
    }
}
