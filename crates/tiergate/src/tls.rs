//! Server-side TLS for both listeners: the node's certificate on HTTP and gRPC, and on gRPC
//! (the link between nodes) optionally a client CA that every caller must be signed by (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

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

impl ServerTls {
    /// The tonic TLS config for the gRPC listener (mTLS when `client_ca_file` is set).
    pub fn grpc_config(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        let identity =
            tonic::transport::Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }

    /// The rustls acceptor for the HTTP listener (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&read(&self.cert_file)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Config(format!("{}: {e}", self.cert_file.display())))?;
        if certs.is_empty() {
            return Err(TlsError::Empty {
                path: self.cert_file.clone(),
                what: "certificate",
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(&read(&self.key_file)?).map_err(|_| TlsError::Empty {
                path: self.key_file.clone(),
                what: "private key",
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}
