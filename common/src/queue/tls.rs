//! TLS to Redis: what a `rediss://`, `rediss-sentinel://` or
//! `rediss-cluster://` `REDIS_URL` trusts and shows.
//!
//! The files `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE` and
//! `REDIS_TLS_KEY_FILE` name are read and checked once, at start, so that
//! a missing or unreadable file stops the program with its name instead
//! of failing every connection later. The CA is trusted *besides* the
//! system's roots (a Redis whose certificate a public CA signed needs no
//! setting). The client certificate is shown only to a Redis that asks
//! for one (`tls-auth-clients yes`). The same certificates serve the
//! sentinels and every node of a Cluster.
//!
//! Server names are always checked: a certificate must name the host
//! (or IP address) `REDIS_URL` gives. There is no switch to turn the
//! checks off; redis-rs' `#insecure` URL fragment is refused by it, as
//! this build leaves out its insecure mode.

use deadpool_redis::redis::{ClientTlsConfig, RedisError, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The certificates a TLS connection to Redis uses (none set: the system's
/// roots, no client certificate). Never shows their contents in a debug
/// print.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The system's roots and `REDIS_TLS_CA_FILE`'s certificates, as PEM;
    /// `None` when no CA file is set (redis-rs then loads the system's
    /// roots itself).
    roots: Option<Vec<u8>>,
    /// `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE`, as PEM.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.roots.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// Reads and checks the files: `ca` (PEM certificates), and `cert` with
    /// `key` (a PEM certificate chain and its private key), which go
    /// together. The error names the file and what is wrong with it.
    pub fn load(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<RedisTls, String> {
        let roots = match ca {
            None => None,
            Some(path) => {
                let pem = read(path)?;
                let certificates = certificates_in(&pem, path)?;
                // Checked here so that a CA rustls cannot use is named at
                // start, not met as a refused handshake.
                let mut store = rustls::RootCertStore::empty();
                for certificate in certificates {
                    store
                        .add(certificate)
                        .map_err(|e| format!("{}: not a usable CA certificate ({e})", path.display()))?;
                }
                let mut roots = system_roots_pem();
                roots.extend_from_slice(&pem);
                Some(roots)
            }
        };
        let client = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert)?;
                certificates_in(&cert_pem, cert)?;
                let key_pem = read(key)?;
                PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("{}: no PEM private key in it ({e})", key.display()))?;
                Some((cert_pem, key_pem))
            }
            _ => {
                return Err(
                    "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: set both (a client certificate and its key) or neither"
                        .into(),
                )
            }
        };
        Ok(RedisTls { roots, client })
    }

    /// Whether any file was given.
    pub fn is_set(&self) -> bool {
        self.roots.is_some() || self.client.is_some()
    }

    /// The certificates in the form redis-rs takes them.
    pub(crate) fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.roots.clone(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certificates_in(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

/// The system's trusted roots as PEM (empty if it has none): redis-rs
/// trusts either the system's roots or the ones it is given, so they are
/// given together.
fn system_roots_pem() -> Vec<u8> {
    use base64::Engine as _;
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        log::debug!("a system root certificate could not be read: {error}");
    }
    let mut pem = Vec::new();
    for certificate in found.certs {
        let text = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// Whether `error` is a failed TLS handshake (a certificate refused on
/// either side, no common protocol), as opposed to Redis being away.
pub(crate) fn is_tls_failure(error: &RedisError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = next {
        if current.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = current.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>() {
            next = Some(&**inner);
            continue;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = current.source();
    }
    // Some paths (a Cluster's first connections, the sentinels' lookups)
    // keep only the message; these phrases are rustls' own.
    let text = error.to_string();
    [
        "invalid peer certificate",
        "received fatal alert",
        "peer is incompatible",
    ]
    .iter()
    .any(|phrase| text.contains(phrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_a_tls_failure_and_a_refused_connection_is_not() {
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, bad);
        assert!(is_tls_failure(&RedisError::from(io)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&RedisError::from(refused)));
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("postback-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");

        let error = RedisTls::load(Some(&missing), None, None).unwrap_err();
        assert!(
            error.contains("cannot read") && error.contains("missing.pem"),
            "{error}"
        );
        let error = RedisTls::load(Some(&junk), None, None).unwrap_err();
        assert!(
            error.contains("junk.pem") && error.contains("no PEM certificate"),
            "{error}"
        );
        let error = RedisTls::load(None, Some(&junk), None).unwrap_err();
        assert!(error.contains("go together"), "{error}");
        let error = RedisTls::load(None, Some(&junk), Some(&junk)).unwrap_err();
        assert!(error.contains("junk.pem"), "{error}");
        assert!(!RedisTls::load(None, None, None).unwrap().is_set());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
