//! TLS client settings for the cloud link: public roots plus an optional private CA bundle.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::SetupError;

/// Reads every certificate of a PEM bundle; an empty or unreadable bundle is an error.
pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let bytes = std::fs::read(path).map_err(|source| SetupError::ReadFile {
        what: "CA bundle",
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::Tls(format!("CA bundle `{}`: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(SetupError::Tls(format!(
            "CA bundle `{}` holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A client config trusting the public web roots and, when given, the CA bundle at `ca_file`.
/// The crypto provider is named explicitly so that no process-wide default has to be installed.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_pem_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| SetupError::Tls(format!("CA bundle `{}`: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
