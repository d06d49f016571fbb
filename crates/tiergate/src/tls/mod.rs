//! Server-side TLS for both listeners: the node's certificate on HTTP and gRPC, and on gRPC
//! (the link between nodes) optionally a client CA that every caller must be signed by (mTLS).
//!
//! The certificate, key and client CA are re-read without a restart ([`ReloadingTls`]): on
//! SIGHUP and when a periodic check finds the files' contents changed. A new set that does not
//! load (unparsable, key not matching the certificate) is refused and the old one keeps serving.

mod not_after;
mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use not_after::not_after_unix;
pub use reload::{ReloadOutcome, ReloadingTls, TlsMetrics};

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The node's certificate chain (PEM), served on both listeners.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// When set, gRPC callers must present a client certificate signed by this CA (PEM): the
    /// mutual TLS between edge and regional nodes. HTTP clients are not asked for one.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are re-read and, when their contents changed, loaded for new
    /// connections (SIGHUP does it at once).
    #[serde(default = "default_reload_interval", with = "crate::config::duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(60)
}

/// Why TLS could not be set up; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("invalid TLS setup: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The files' bytes as read at one moment; their digest tells a changed set from the same one.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(tls: &ServerTls) -> Result<Files, TlsError> {
        Ok(Files {
            cert: read(&tls.cert_file)?,
            key: read(&tls.key_file)?,
            client_ca: tls.client_ca_file.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            // Length-prefixed so that bytes moving between files still change the digest.
            let bytes = part.map_or(&[][..], Vec::as_slice);
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
        hash.finalize().into()
    }
}

/// Both listeners' rustls configs built from one set of files.
struct Built {
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    /// The leaf certificate's notAfter (Unix seconds), when it could be read.
    not_after: Option<i64>,
}

fn build(tls: &ServerTls, files: &Files) -> Result<Built, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(format!("{}: {e}", tls.cert_file.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::Empty {
            path: tls.cert_file.clone(),
            what: "certificate",
        });
    };
    let not_after = not_after_unix(leaf);
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|_| TlsError::Empty {
        path: tls.key_file.clone(),
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Also checks that the key belongs to the certificate.
    let certified = rustls::sign::CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        TlsError::Config(format!(
            "{} with {}: {e}",
            tls.cert_file.display(),
            tls.key_file.display()
        ))
    })?;
    let certified = Arc::new(certified);
    let builder = || {
        rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))
    };
    let mut http = builder()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Single(Arc::clone(&certified))));
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let grpc_builder = match (&tls.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(TlsError::Empty {
                    path: path.clone(),
                    what: "CA certificate",
                });
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
            builder()?.with_client_cert_verifier(verifier)
        }
        _ => builder()?.with_no_client_auth(),
    };
    let mut grpc = grpc_builder.with_cert_resolver(Arc::new(Single(certified)));
    // gRPC is HTTP/2 only.
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built {
        grpc: Arc::new(grpc),
        http: Arc::new(http),
        not_after,
    })
}

/// One certificate for every client hello (no SNI selection).
#[derive(Debug)]
struct Single(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Single {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
