//! The reloading TLS state both listeners read once per accepted connection: a new handshake
//! uses the configs in force at that moment, a connection already open keeps the session it
//! negotiated (nothing is cut by a reload).

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio_rustls::TlsAcceptor;

use super::{Built, Files, ServerTls, TlsError, build};

/// `tiergate_tls_reloads_total{result}` and `tiergate_tls_certificate_not_after_seconds`.
#[derive(Debug, Clone)]
pub struct TlsMetrics {
    reloads: IntCounterVec,
    not_after: IntGauge,
}

impl TlsMetrics {
    pub fn register(registry: &Registry, node: &str) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "tls_reloads_total",
                "Attempts to load changed TLS certificate files, by result (reloaded, failed).",
            )
            .const_label("node", node),
            &["result"],
        )?;
        let not_after = IntGauge::with_opts(
            Opts::new(
                "tls_certificate_not_after_seconds",
                "notAfter of the certificate the listeners serve (Unix seconds).",
            )
            .const_label("node", node),
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(not_after.clone()))?;
        Ok(TlsMetrics { reloads, not_after })
    }
}

/// What one reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files hold what is already served.
    Unchanged,
    /// New connections get the new certificate.
    Reloaded,
    /// The files could not be read or did not load; the previous certificate stays.
    Failed,
}

struct Served {
    grpc: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    digest: [u8; 32],
}

/// The certificate, key and client CA of `[server.tls]`, re-read on demand.
pub struct ReloadingTls {
    source: ServerTls,
    served: RwLock<Arc<Served>>,
    /// The digest of the last set that failed, so the periodic check reports it once.
    last_failed: Mutex<Option<[u8; 32]>>,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads the files once; at start a bad set is an error (there is no old one to keep).
    pub fn load(source: ServerTls, metrics: TlsMetrics) -> Result<Arc<Self>, TlsError> {
        let files = Files::read(&source)?;
        let built = build(&source, &files)?;
        let served = serve(&metrics, built, files.digest());
        Ok(Arc::new(ReloadingTls {
            source,
            served: RwLock::new(served),
            last_failed: Mutex::new(None),
            metrics,
        }))
    }

    /// How often the files are checked (`reload_interval`).
    pub fn interval(&self) -> std::time::Duration {
        self.source.reload_interval
    }

    /// The acceptor for the next gRPC connection (client certificates asked for with mTLS).
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current().grpc))
    }

    /// The acceptor for the next HTTP connection (HTTP/2 or HTTP/1.1 by ALPN).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current().http))
    }

    fn current(&self) -> Arc<Served> {
        // A panic elsewhere cannot leave a half-written Arc: the value is still whole.
        Arc::clone(&self.served.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the files and swaps in what they hold when it changed and loads. `forced`
    /// (SIGHUP) retries a set that failed before and logs it again; the periodic check reports
    /// one bad set once. Blocking: reads files.
    pub fn reload(&self, forced: bool) -> ReloadOutcome {
        let files = match Files::read(&self.source) {
            Ok(files) => files,
            Err(err) => {
                // Also the moment between an operator's delete and write: the next check
                // sees the new files.
                return self.failed(None, forced, &err);
            }
        };
        let digest = files.digest();
        if digest == self.current().digest {
            return ReloadOutcome::Unchanged;
        }
        match build(&self.source, &files) {
            Ok(built) => {
                let served = serve(&self.metrics, built, digest);
                *self.served.write().unwrap_or_else(PoisonError::into_inner) = served;
                *self
                    .last_failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.metrics.reloads.with_label_values(&["reloaded"]).inc();
                tracing::info!(
                    cert_file = %self.source.cert_file.display(),
                    "TLS certificate reloaded: new connections use it"
                );
                ReloadOutcome::Reloaded
            }
            Err(err) => self.failed(Some(digest), forced, &err),
        }
    }

    fn failed(&self, digest: Option<[u8; 32]>, forced: bool, err: &TlsError) -> ReloadOutcome {
        let mut last = self
            .last_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let repeat = digest.is_some() && *last == digest;
        *last = digest;
        if forced || !repeat {
            self.metrics.reloads.with_label_values(&["failed"]).inc();
            tracing::error!(
                error = %crate::error_chain(err),
                "TLS reload refused: the previous certificate keeps serving"
            );
        }
        ReloadOutcome::Failed
    }
}

fn serve(metrics: &TlsMetrics, built: Built, digest: [u8; 32]) -> Arc<Served> {
    if let Some(not_after) = built.not_after {
        metrics.not_after.set(not_after);
    }
    Arc::new(Served {
        grpc: built.grpc,
        http: built.http,
        digest,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        (cert, key.serialize_pem())
    }

    fn setup() -> (tempfile::TempDir, Arc<ReloadingTls>, Registry) {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "first");
        let source = ServerTls {
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
            client_ca_file: None,
            reload_interval: std::time::Duration::from_secs(60),
        };
        let registry = Registry::new();
        let metrics = TlsMetrics::register(&registry, "n").unwrap();
        let tls = ReloadingTls::load(source, metrics).unwrap();
        (dir, tls, registry)
    }

    fn failures(tls: &ReloadingTls) -> u64 {
        tls.metrics.reloads.with_label_values(&["failed"]).get()
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_an_unchanged_one_is_not() {
        let (dir, tls, _registry) = setup();
        let before = tls.current();
        assert_eq!(tls.reload(false), ReloadOutcome::Unchanged);
        write_pair(dir.path(), "second");
        assert_eq!(tls.reload(false), ReloadOutcome::Reloaded);
        assert!(!Arc::ptr_eq(&before, &tls.current()));
        assert_eq!(
            tls.metrics.reloads.with_label_values(&["reloaded"]).get(),
            1
        );
    }

    #[test]
    fn a_key_of_another_certificate_keeps_the_old_pair() {
        let (dir, tls, _registry) = setup();
        let before = tls.current();
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = write_pair(other.path(), "other");
        std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
        assert_eq!(tls.reload(false), ReloadOutcome::Failed);
        assert!(Arc::ptr_eq(&before, &tls.current()));
        assert_eq!(failures(&tls), 1);
        // The periodic check reports one bad set once; SIGHUP reports it again.
        assert_eq!(tls.reload(false), ReloadOutcome::Failed);
        assert_eq!(failures(&tls), 1);
        assert_eq!(tls.reload(true), ReloadOutcome::Failed);
        assert_eq!(failures(&tls), 2);
    }

    #[test]
    fn garbage_and_missing_files_keep_the_old_pair() {
        let (dir, tls, _registry) = setup();
        let before = tls.current();
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        assert_eq!(tls.reload(false), ReloadOutcome::Failed);
        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        assert_eq!(tls.reload(false), ReloadOutcome::Failed);
        assert!(Arc::ptr_eq(&before, &tls.current()));
        assert_eq!(failures(&tls), 2);
    }
}
