//! Signed models, end to end: `tiergate model keygen | sign | verify` as a publisher and an
//! operator run them on a copy of the bundled edge model; a node with trusted keys refusing an
//! unsigned or tampered model; and the periodic integrity check noticing a file changed after
//! load while the node keeps answering from the model it loaded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{repo_root, tiergate};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A private copy of the bundled toy model `name` (edge or regional: the same file names, those
/// its manifest lists) to sign and tamper with.
fn copy_model(name: &str, into: &Path) -> PathBuf {
    let dir = into.join(name);
    std::fs::create_dir(&dir).unwrap();
    for file in [
        "manifest.json",
        "model.onnx",
        "model.int8.onnx",
        "tokenizer.json",
    ] {
        std::fs::copy(
            repo_root().join("models").join(name).join(file),
            dir.join(file),
        )
        .unwrap();
    }
    dir
}

/// Flips one bit of one byte in the middle of `path`: same size, different sha256.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    let output = tiergate(&["model", "keygen", "--out", prefix.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

fn sign(key: &Path, model: &Path) {
    let output = tiergate(&[
        "model",
        "sign",
        "--key",
        key.to_str().unwrap(),
        model.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
}

fn verify(public: &Path, model: &Path) -> Output {
    tiergate(&[
        "model",
        "verify",
        "--trusted-keys",
        public.to_str().unwrap(),
        model.to_str().unwrap(),
    ])
}

/// Asserts `verify` fails and its message contains every one of `expected`.
fn assert_refused(output: &Output, expected: &[&str]) {
    let message = stderr(output);
    assert!(!output.status.success(), "verify passed: {message}");
    for part in expected {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
}

#[test]
fn sign_and_verify_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    let model = copy_model("edge", temp.path());
    let (key, public) = keygen(temp.path(), "release");
    sign(&key, &model);
    assert!(model.join("manifest.json.sig").is_file());

    let output = verify(&public, &model);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("is valid") && stdout.contains("3 files match"),
        "{stdout}"
    );
}

#[test]
fn a_changed_byte_in_the_graph_or_tokenizer_fails_verify_naming_the_file() {
    let temp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(temp.path(), "release");
    for file in ["model.onnx", "tokenizer.json"] {
        let parent = temp.path().join(file.replace('.', "_"));
        std::fs::create_dir(&parent).unwrap();
        let model = copy_model("edge", &parent);
        sign(&key, &model);
        flip_a_byte(&model.join(file));
        // The signature is still good (the manifest is untouched): the file's hash is what fails.
        assert_refused(
            &verify(&public, &model),
            &[file, "does not match its manifest"],
        );
    }
}

#[test]
fn a_changed_manifest_is_a_bad_signature() {
    let temp = tempfile::tempdir().unwrap();
    let model = copy_model("edge", temp.path());
    let (key, public) = keygen(temp.path(), "release");
    sign(&key, &model);
    // What an attacker who replaced a file would do next: edit its hash in the manifest.
    let manifest = model.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"1.0.0\"", "\"1.0.1\"")).unwrap();
    assert_refused(&verify(&public, &model), &["bad signature", "edge"]);
}

#[test]
fn unsigned_and_untrusted_models_fail_verify() {
    let temp = tempfile::tempdir().unwrap();
    let model = copy_model("edge", temp.path());
    let (key, _) = keygen(temp.path(), "publisher");
    let (_, other_public) = keygen(temp.path(), "someone-else");
    assert_refused(&verify(&other_public, &model), &["is not signed"]);
    sign(&key, &model);
    assert_refused(&verify(&other_public, &model), &["not trusted"]);
}

#[test]
fn a_node_with_trusted_keys_refuses_an_unsigned_model_at_start() {
    let temp = tempfile::tempdir().unwrap();
    let model = copy_model("edge", temp.path());
    let (_, public) = keygen(temp.path(), "release");
    let config = temp.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             [engine]\nmodel_dir = {:?}\n[model_trust]\ntrusted_keys = [{:?}]\n",
            model.display().to_string(),
            public.display().to_string()
        ),
    )
    .unwrap();
    let output = tiergate(&["serve", "--config", config.to_str().unwrap()]);
    let message = stderr(&output);
    assert!(!output.status.success(), "the node started: {message}");
    assert!(
        message.contains("is not signed") && message.contains(&model.display().to_string()),
        "{message}"
    );
    // It never got as far as listening.
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "{message}"
    );
}

// --- the node, in process ---

async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    http(
        addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
}

async fn ask(addr: std::net::SocketAddr, prompt: &str) -> String {
    let body = serde_json::json!({
        "model": "tiergate",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
        "temperature": 0,
    })
    .to_string();
    http(
        addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             content-type: application/json\r\nx-tiergate-tier-constraint: edge_only\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

fn node_config(model: &Path, public: &Path, interval: &str) -> tiergate::config::Config {
    let toml = format!(
        "[node]\nname = \"trust-test\"\n\
         [server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
         [engine]\nmodel_dir = {:?}\n\
         [model_trust]\ntrusted_keys = [{:?}]\nintegrity_check_interval = \"{interval}\"\n",
        model.display().to_string(),
        public.display().to_string()
    );
    let file = model.parent().unwrap().join("node.toml");
    std::fs::write(&file, toml).unwrap();
    let config: tiergate::config::Config =
        tiergate::config::load(Some(&file), Vec::<(String, String)>::new()).unwrap();
    config.validate().unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_after_load_drops_the_gauge_and_the_loaded_model_keeps_answering() {
    let temp = tempfile::tempdir().unwrap();
    let model = copy_model("edge", temp.path());
    let (key, public) = keygen(temp.path(), "release");
    sign(&key, &model);

    let node = tiergate::serve::start_node(node_config(&model, &public, "200ms"))
        .await
        .unwrap();
    let ok = "tiergate_model_integrity_ok{model=\"tiergate-edge\",node=\"trust-test\"}";
    let text = metrics(node.http_addr).await;
    assert!(text.contains(&format!("{ok} 1")), "{text}");
    assert!(
        text.contains(
            "tiergate_model_signature_verified{model=\"tiergate-edge\",node=\"trust-test\"} 1"
        ),
        "{text}"
    );

    // Someone writes into the model folder after load.
    flip_a_byte(&model.join("tokenizer.json"));
    let started = Instant::now();
    loop {
        let text = metrics(node.http_addr).await;
        if text.contains(&format!("{ok} 0")) {
            assert!(
                text.contains("result=\"file_changed\""),
                "the check counts the mismatch: {text}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gauge never dropped: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The tampered folder is refused by a node starting now...
    let refused = tiergate::serve::start_node(node_config(&model, &public, "off")).await;
    let message = format!("{:#}", anyhow::Error::from(refused.unwrap_err()));
    assert!(
        message.contains("tokenizer.json") && message.contains("does not match its manifest"),
        "{message}"
    );
    // ...while the running node answers from the model it loaded (the tokenizer in memory is
    // the verified one: the greedy answer is the reference's).
    let response = ask(node.http_addr, "turn on the kitchen lights").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_lowercase().contains("x-tiergate-tier: edge"),
        "{response}"
    );
    assert!(
        response.contains("Turning on the kitchen lights."),
        "{response}"
    );
    node.shutdown().await;
}

async fn local_model_id(addr: std::net::SocketAddr) -> String {
    let response = http(
        addr,
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let body = serde_json::from_str::<serde_json::Value>(body).unwrap();
    let local = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|card| card["id"] != "tiergate")
        .unwrap();
    local["id"].as_str().unwrap().to_owned()
}

/// The value of `tiergate_model_reloads_total{result}` in `text` (0 when absent).
fn reload_count(text: &str, result: &str) -> u64 {
    let series = format!("tiergate_model_reloads_total{{node=\"trust-test\",result=\"{result}\"}}");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Reloads, expecting the regional toy model to be swapped in and to answer; returns the answer.
async fn reload_to_regional(
    reloader: &tiergate::serve::Reloader,
    addr: std::net::SocketAddr,
) -> String {
    let report = reloader.reload().await;
    assert_eq!(
        report.model,
        tiergate::model_trust::ModelReloadOutcome::Reloaded
    );
    assert_eq!(local_model_id(addr).await, "tiergate-regional");
    let response = ask(addr, "turn on the kitchen lights").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_a_tampered_model_and_swaps_in_a_signed_one() {
    let temp = tempfile::tempdir().unwrap();
    let model = copy_model("edge", temp.path());
    let (key, public) = keygen(temp.path(), "release");
    sign(&key, &model);
    let node = tiergate::serve::start_node(node_config(&model, &public, "off"))
        .await
        .unwrap();
    let reloader = node.reloader();
    let edge_answer = "Turning on the kitchen lights.";
    assert_eq!(local_model_id(node.http_addr).await, "tiergate-edge");

    // Nothing changed: nothing to do.
    let report = reloader.reload().await;
    assert_eq!(
        report.model,
        tiergate::model_trust::ModelReloadOutcome::Unchanged
    );

    // A file changed under the same manifest: refused, the loaded model keeps answering.
    let original_tokenizer = std::fs::read(model.join("tokenizer.json")).unwrap();
    flip_a_byte(&model.join("tokenizer.json"));
    let report = reloader.reload().await;
    assert_eq!(
        report.model,
        tiergate::model_trust::ModelReloadOutcome::Refused
    );
    std::fs::write(model.join("tokenizer.json"), original_tokenizer).unwrap();

    // Another model's files over this one, not signed: a bad signature, refused.
    for name in [
        "manifest.json",
        "model.onnx",
        "model.int8.onnx",
        "tokenizer.json",
    ] {
        std::fs::copy(
            repo_root().join("models/regional").join(name),
            model.join(name),
        )
        .unwrap();
    }
    let report = reloader.reload().await;
    assert_eq!(
        report.model,
        tiergate::model_trust::ModelReloadOutcome::Refused
    );
    let text = metrics(node.http_addr).await;
    assert_eq!(reload_count(&text, "refused"), 2, "{text}");
    assert_eq!(local_model_id(node.http_addr).await, "tiergate-edge");
    let response = ask(node.http_addr, "turn on the kitchen lights").await;
    assert!(response.contains(edge_answer), "{response}");

    // Signed by the trusted key: swapped in; new requests use it.
    sign(&key, &model);
    let response = reload_to_regional(&reloader, node.http_addr).await;
    // Both toy models answer this prompt with the same words; /v1/models above names the
    // engine the node generates with.
    assert!(response.contains(edge_answer), "{response}");
    let text = metrics(node.http_addr).await;
    assert_eq!(reload_count(&text, "reloaded"), 1, "{text}");
    assert!(
        text.contains(
            "tiergate_model_signature_verified{model=\"tiergate-regional\",node=\"trust-test\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("model=\"tiergate-edge\""), "{text}");
    node.shutdown().await;
}

/// The update docs/operations.md prescribes: the new model in a folder of its own, signed, and
/// the `model_dir` symlink swapped to it by a rename; the loaded model's files are never
/// written (a real model's weights files are mapped, and truncating one kills the node).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_dir_symlink_swapped_to_a_new_signed_folder_reloads() {
    let temp = tempfile::tempdir().unwrap();
    let edge = copy_model("edge", temp.path());
    let regional = copy_model("regional", temp.path());
    let (key, public) = keygen(temp.path(), "release");
    sign(&key, &edge);
    sign(&key, &regional);
    let current = temp.path().join("current");
    std::os::unix::fs::symlink(&edge, &current).unwrap();
    let edge_manifest = std::fs::read(edge.join("manifest.json")).unwrap();
    let node = tiergate::serve::start_node(node_config(&current, &public, "off"))
        .await
        .unwrap();
    let reloader = node.reloader();
    assert_eq!(local_model_id(node.http_addr).await, "tiergate-edge");

    let next = temp.path().join("current.next");
    std::os::unix::fs::symlink(&regional, &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    reload_to_regional(&reloader, node.http_addr).await;
    // The folder the node served from is as it was.
    assert_eq!(
        std::fs::read(edge.join("manifest.json")).unwrap(),
        edge_manifest
    );
    node.shutdown().await;
}
