//! Certificates rotate without a restart (issue #10): the node re-reads `[server.tls]` on SIGHUP
//! and on a schedule; new connections on both listeners get the new certificate, connections
//! already open keep working, and a broken new pair is refused (the old one keeps serving, a
//! metric counts the failure). And a TCP peer that connects and never speaks is closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tiergate_e2e::{Gate, NodeProcess, metric, node_toml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
const SETTINGS: u8 = 0x4;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: String,
}

fn make_ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "tiergate reload CA");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pem = issuer.pem();
    Ca { issuer, pem }
}

/// A certificate (PEM, DER) and its key (PEM) for 127.0.0.1, valid until `year`-01-01.
struct Pair {
    cert: String,
    der: Vec<u8>,
    key: String,
}

fn issue(ca: &Ca, common_name: &str, year: i32, usage: ExtendedKeyUsagePurpose) -> Pair {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Pair {
        cert: cert.pem(),
        der: cert.der().to_vec(),
        key: key.serialize_pem(),
    }
}

fn server_pair(ca: &Ca, common_name: &str, year: i32) -> Pair {
    issue(ca, common_name, year, ExtendedKeyUsagePurpose::ServerAuth)
}

/// Unix seconds of `year`-01-01T00:00:00Z (what the expiry gauge should read).
fn new_year(year: i64) -> f64 {
    let days: i64 = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    (days * 86_400) as f64
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn new(dir: &Path, ca: &Ca) -> Files {
        let files = Files {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.ca, &ca.pem).unwrap();
        files
    }

    fn install(&self, pair: &Pair) {
        std::fs::write(&self.cert, &pair.cert).unwrap();
        std::fs::write(&self.key, &pair.key).unwrap();
    }

    fn toml(&self, reload_interval: &str) -> String {
        let tls = format!(
            "[server]\nhandshake_timeout = \"1s\"\n[server.tls]\ncert_file = \"{}\"\n\
             key_file = \"{}\"\nclient_ca_file = \"{}\"\nreload_interval = \"{reload_interval}\"\n[engine]",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        );
        node_toml("edge-1", "edge", "edge", None, None, Gate::Default).replacen("[engine]", &tls, 1)
    }
}

/// A TLS client trusting `ca`, offering `alpn`, with a client certificate when given.
fn client(ca: &Ca, alpn: &[u8], identity: Option<&Pair>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(pair.der.clone())],
                PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, session) = stream.get_ref();
    session.peer_certificates().unwrap()[0].to_vec()
}

/// The leaf certificate a new connection to `addr` is served.
async fn certificate_at(connector: &TlsConnector, addr: SocketAddr) -> Vec<u8> {
    served(&connect(connector, addr).await)
}

/// Polls until a new connection to `addr` gets `expected` (reloads run after the signal
/// returns).
async fn wait_for_certificate(connector: &TlsConnector, addr: SocketAddr, expected: &[u8]) {
    let started = Instant::now();
    while certificate_at(connector, addr).await != expected {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{addr} still serves the old certificate after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{addr}: new certificate after {:?}", started.elapsed());
}

/// One HTTP/1.1 request on an open connection; returns the response head.
async fn http1_get(stream: &mut TlsStream<TcpStream>, path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: {connection}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0_u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            if n == 0 || (!close && text.contains("\r\n\r\n")) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no HTTP response in 10 s");
    String::from_utf8_lossy(&response).into_owned()
}

async fn metrics(connector: &TlsConnector, addr: SocketAddr) -> String {
    let mut stream = connect(connector, addr).await;
    let response = http1_get(&mut stream, "/metrics", true).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

async fn wait_for_metric(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
    result: &str,
    value: f64,
) {
    let started = Instant::now();
    loop {
        let text = metrics(connector, addr).await;
        if metric(&text, name, &[("result", result)]) == Some(value) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}{{result={result}}} never reached {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_rotates_the_certificate_on_both_listeners_and_refuses_a_broken_pair() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let files = Files::new(dir.path(), &ca);
    let first = server_pair(&ca, "first", 2031);
    files.install(&first);
    let peer = issue(&ca, "edge-1", 2031, ExtendedKeyUsagePurpose::ClientAuth);
    // A long interval: only the signal can make the node notice.
    let node = NodeProcess::start("tls", &files.toml("1h")).await.unwrap();
    let grpc = client(&ca, b"h2", Some(&peer));
    let http = client(&ca, b"http/1.1", None);

    let mut old_grpc = connect(&grpc, node.grpc).await;
    let mut old_http = connect(&http, node.http).await;
    assert_eq!(served(&old_grpc), first.der);
    assert_eq!(served(&old_http), first.der);
    let text = metrics(&http, node.http).await;
    assert_eq!(
        metric(&text, "tiergate_tls_certificate_not_after_seconds", &[]),
        Some(new_year(2031))
    );

    let second = server_pair(&ca, "second", 2032);
    files.install(&second);
    node.hang_up().unwrap();
    wait_for_certificate(&grpc, node.grpc, &second.der).await;
    wait_for_certificate(&http, node.http, &second.der).await;
    let text = metrics(&http, node.http).await;
    assert_eq!(
        metric(
            &text,
            "tiergate_tls_reloads_total",
            &[("result", "reloaded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "tiergate_tls_certificate_not_after_seconds", &[]),
        Some(new_year(2032))
    );

    // Connections opened before the rotation were not cut: both still serve.
    let head = http1_get(&mut old_http, "/healthz", false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    old_grpc.write_all(PREFACE).await.unwrap();
    old_grpc.write_all(&EMPTY_SETTINGS).await.unwrap();
    let mut frame = [0_u8; 9];
    tokio::time::timeout(Duration::from_secs(5), old_grpc.read_exact(&mut frame))
        .await
        .expect("the old gRPC connection went silent")
        .expect("the old gRPC connection was closed");
    assert_eq!(frame[3], SETTINGS, "{frame:?}");

    // A certificate with another certificate's key: refused, the second one keeps serving.
    let third = server_pair(&ca, "third", 2033);
    std::fs::write(&files.cert, &third.cert).unwrap();
    std::fs::write(&files.key, &first.key).unwrap();
    node.hang_up().unwrap();
    wait_for_metric(
        &http,
        node.http,
        "tiergate_tls_reloads_total",
        "failed",
        1.0,
    )
    .await;
    assert_eq!(certificate_at(&grpc, node.grpc).await, second.der);
    assert_eq!(certificate_at(&http, node.http).await, second.der);
    // And a file that is not PEM at all.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    node.hang_up().unwrap();
    wait_for_metric(
        &http,
        node.http,
        "tiergate_tls_reloads_total",
        "failed",
        2.0,
    )
    .await;
    assert_eq!(certificate_at(&grpc, node.grpc).await, second.der);
    let text = metrics(&http, node.http).await;
    assert_eq!(
        metric(&text, "tiergate_tls_certificate_not_after_seconds", &[]),
        Some(new_year(2032))
    );

    // Fixed files load again.
    files.install(&third);
    node.hang_up().unwrap();
    wait_for_certificate(&grpc, node.grpc, &third.der).await;
}

#[tokio::test]
async fn rotated_files_are_picked_up_on_schedule_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let files = Files::new(dir.path(), &ca);
    let first = server_pair(&ca, "first", 2031);
    files.install(&first);
    let node = NodeProcess::start("tls", &files.toml("200ms"))
        .await
        .unwrap();
    let http = client(&ca, b"http/1.1", None);
    assert_eq!(certificate_at(&http, node.http).await, first.der);
    let second = server_pair(&ca, "second", 2032);
    files.install(&second);
    wait_for_certificate(&http, node.http, &second.der).await;
}

/// Connects and never sends a byte; returns how long the node took to close the connection.
async fn silent_peer(addr: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut byte = [0_u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(_)) => panic!("{addr} sent bytes to a peer that said nothing"),
        Err(_) => panic!("{addr} kept a silent connection open for 10 s"),
    }
}

#[tokio::test]
async fn a_peer_that_connects_and_never_speaks_is_closed() {
    // Plaintext: the HTTP/2 preface (gRPC) or any first byte (HTTP) must arrive in time.
    let toml = node_toml("edge-1", "edge", "edge", None, None, Gate::Default).replacen(
        "[engine]",
        "[server]\nhandshake_timeout = \"1s\"\n[engine]",
        1,
    );
    let node = NodeProcess::start("plain", &toml).await.unwrap();
    for addr in [node.grpc, node.http] {
        let closed_after = silent_peer(addr).await;
        eprintln!("plaintext {addr}: silent peer closed after {closed_after:?}");
        assert!(
            closed_after >= Duration::from_secs(1),
            "{addr}: {closed_after:?}"
        );
    }
    // A client that speaks is untouched.
    let mut client = node.grpc_client().await.unwrap();
    client
        .explain(tiergate_proto::v1::GenerateRequest {
            prompt: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // TLS: the handshake must finish in time.
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca();
    let files = Files::new(dir.path(), &ca);
    files.install(&server_pair(&ca, "only", 2031));
    let node = NodeProcess::start("tls", &files.toml("1h")).await.unwrap();
    for addr in [node.grpc, node.http] {
        let closed_after = silent_peer(addr).await;
        eprintln!("TLS {addr}: silent peer closed after {closed_after:?}");
        assert!(
            closed_after >= Duration::from_secs(1),
            "{addr}: {closed_after:?}"
        );
    }
}
