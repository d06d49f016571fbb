//! gRPC `tiergate.v1.Admin/Report` through a real tonic client: the same report as HTTP
//! `GET /v1/report`, guarded like it (a tenant's key when tenants are configured), and listed
//! by server reflection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use tiergate_e2e::{NodeProcess, get, tiergate_bin};
use tiergate_proto::v1 as pb;
use tiergate_proto::v1::admin_client::AdminClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const KEY: &str = "tg_admin-test-key-0123456789abcdef";
const EDGE: &str =
    "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n";

async fn admin(node: &NodeProcess) -> AdminClient<tonic::transport::Channel> {
    AdminClient::connect(node.grpc_url()).await.unwrap()
}

async fn http_report(node: &NodeProcess) -> Value {
    let reply = get(&format!("{}/v1/report", node.http_url()))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().unwrap()
}

#[tokio::test]
async fn report_over_grpc_is_the_http_report() {
    let node = NodeProcess::start("edge", EDGE).await.unwrap();
    let answer = admin(&node)
        .await
        .report(pb::ReportRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.node, "edge-1");
    assert_eq!(answer.tier, pb::Tier::Edge as i32);
    let grpc: Value = serde_json::from_str(&answer.report_json).unwrap();
    let http = http_report(&node).await;
    // Live numbers move between the two calls; what the node is does not, and both documents
    // have the same shape (one builder).
    for field in ["node", "tier", "profile", "models", "compliance"] {
        assert_eq!(grpc[field], http[field], "field {field}");
    }
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&grpc), keys(&http));
    assert_eq!(keys(&grpc["performance"]), keys(&http["performance"]));
    assert_eq!(grpc["models"][0]["id"], http["models"][0]["id"]);
}

#[tokio::test]
async fn reflection_lists_the_admin_service() {
    let node = NodeProcess::start("edge", EDGE).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(node.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tiergate.v1.Admin"), "{names:?}");
    assert!(names.contains(&"tiergate.v1.Inference"), "{names:?}");
}

/// `tiergate keys hash` of `key`.
fn hash_line(key: &str) -> String {
    let mut child = Command::new(tiergate_bin())
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn with_tenants_report_needs_a_key_as_http_does() {
    let config = format!("{EDGE}[[tenants]]\nname = \"ops\"\n{}\n", hash_line(KEY));
    let node = NodeProcess::start("edge", &config).await.unwrap();
    let mut client = admin(&node).await;

    let refused = client.report(pb::ReportRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let http = get(&format!("{}/v1/report", node.http_url()))
        .await
        .unwrap();
    assert_eq!(http.status, 401);

    let mut call = tonic::Request::new(pb::ReportRequest {});
    call.metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let answer = client.report(call).await.unwrap().into_inner();
    assert_eq!(answer.node, "edge-1");
}
