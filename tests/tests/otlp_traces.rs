//! OTLP trace export (`[telemetry]`): an edge and a regional node export their spans of one
//! request to a fake OTLP collector (a real tonic `TraceService` server on 127.0.0.1, the real
//! wire format). The spans carry the trace id the request came with and join into one trace:
//! the edge's span is the child of the client's span, the regional node's span the child of
//! the edge's. A trace the edge starts is flagged sampled so the regional node records it too.
//! Off (no `[telemetry]`), a node runs no exporter thread.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tiergate_e2e::scenario::{EdgeLinks, FakeCloud, edge_toml};
use tiergate_e2e::{Gate, NodeProcess, http_send, node_toml};

const TRACE_ID: &str = "5af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

/// One exported span: the service that sent it, its name and its ids (hex).
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    /// Serves on 127.0.0.1:0; the URL the nodes export to.
    async fn start() -> (Collector, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (collector, url)
    }

    /// The request span `service` exported for `trace_id`, waiting for the batch export
    /// (every 5 s by default).
    async fn request_span(&self, service: &str, trace_id: &str) -> Received {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.service == service && s.trace_id == trace_id && s.name == "request")
                .cloned();
            if let Some(span) = found {
                return span;
            }
            assert!(
                Instant::now() < until,
                "no request span of {service} in trace {trace_id}; received: {:?}",
                self.spans.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn telemetry_toml(url: &str, service: &str) -> String {
    format!("[telemetry]\notlp_endpoint = \"{url}\"\nservice_name = \"{service}\"\n")
}

/// edge -> regional -> fake cloud, both nodes exporting to `url`.
async fn fleet(url: &str) -> (NodeProcess, NodeProcess, FakeCloud) {
    let cloud = FakeCloud::start().await.unwrap();
    let mut regional_config = node_toml(
        "regional-1",
        "regional",
        "regional",
        None,
        None,
        Gate::CloudFirst,
    );
    regional_config.push_str(&format!(
        "[upstreams.cloud]\nbase_url = \"{}\"\nmodel = \"tiergate\"\n",
        cloud.url
    ));
    regional_config.push_str(&telemetry_toml(url, "regional"));
    let regional = NodeProcess::start("regional", &regional_config)
        .await
        .unwrap();
    let links = EdgeLinks {
        regional: Some(regional.grpc_url()),
        failures_to_open: 5,
        ..EdgeLinks::default()
    };
    let mut edge_config = edge_toml(&links, Gate::RegionalFirst, Duration::from_secs(2));
    edge_config.push_str(&telemetry_toml(url, "edge"));
    let edge = NodeProcess::start("edge", &edge_config).await.unwrap();
    (edge, regional, cloud)
}

async fn chat(edge: &NodeProcess, traceparent: Option<&str>) -> tiergate_e2e::HttpReply {
    let body = serde_json::json!({
        "model": "tiergate",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "what is the capital of france"}],
    });
    let mut headers = vec![("content-type", "application/json")];
    if let Some(traceparent) = traceparent {
        headers.push(("traceparent", traceparent));
    }
    let reply = http_send(
        http::Method::POST,
        &format!("{}/v1/chat/completions", edge.http_url()),
        &headers,
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-tiergate-tier"), Some("cloud"));
    reply
}

/// Whether the process runs the OpenTelemetry batch exporter thread (thread names are cut
/// to 15 bytes in `comm`).
fn has_exporter_thread(node: &NodeProcess) -> bool {
    let pid = node.pid().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .any(|comm| comm.starts_with("OpenTelemetry"))
}

#[tokio::test]
async fn one_trace_across_edge_and_regional_reaches_the_collector() {
    let (collector, url) = Collector::start().await;
    let (edge, regional, _cloud) = fleet(&url).await;
    assert!(has_exporter_thread(&edge) && has_exporter_thread(&regional));

    // A client's trace: the edge's span is the child of the client's span and has the id the
    // edge answered with; the regional node's span is the child of the edge's.
    let reply = chat(&edge, Some(&format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))).await;
    let returned = reply.header("traceparent").unwrap().to_owned();
    let edge_span = collector.request_span("edge", TRACE_ID).await;
    assert_eq!(edge_span.parent_span_id, CLIENT_SPAN);
    assert_eq!(returned, format!("00-{TRACE_ID}-{}-01", edge_span.span_id));
    let regional_span = collector.request_span("regional", TRACE_ID).await;
    assert_eq!(regional_span.parent_span_id, edge_span.span_id);
    assert_ne!(regional_span.span_id, edge_span.span_id);

    // A trace the edge starts: flagged sampled (ratio 1.0) in the answer and upstream, so the
    // regional node records its span of it too; the edge's span is the trace's root.
    let reply = chat(&edge, None).await;
    let returned = reply.header("traceparent").unwrap().to_owned();
    let parts: Vec<&str> = returned.split('-').collect();
    assert_eq!(parts[3], "01", "{returned}");
    let edge_span = collector.request_span("edge", parts[1]).await;
    assert_eq!(edge_span.span_id, parts[2]);
    assert_eq!(edge_span.parent_span_id, "");
    let regional_span = collector.request_span("regional", parts[1]).await;
    assert_eq!(regional_span.parent_span_id, edge_span.span_id);
}

#[tokio::test]
async fn a_caller_that_does_not_sample_is_followed() {
    let (collector, url) = Collector::start().await;
    let (edge, _regional, _cloud) = fleet(&url).await;
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let reply = chat(&edge, Some(&format!("00-{unsampled}-{CLIENT_SPAN}-00"))).await;
    assert!(reply.header("traceparent").unwrap().ends_with("-00"));
    // A sampled request after it is exported: once it is in, the unsampled one would be too.
    chat(&edge, Some(&format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))).await;
    collector.request_span("regional", TRACE_ID).await;
    collector.request_span("edge", TRACE_ID).await;
    let spans = collector.spans.lock().unwrap();
    assert!(
        spans.iter().all(|s| s.trace_id != unsampled),
        "an unsampled trace was exported: {spans:?}"
    );
}

#[tokio::test]
async fn export_is_off_by_default() {
    let node = NodeProcess::start(
        "edge",
        "[node]\nname = \"edge-1\"\ntier = \"edge\"\n[engine]\nmodel_dir = \"models/edge\"\n",
    )
    .await
    .unwrap();
    assert!(!has_exporter_thread(&node));
}
