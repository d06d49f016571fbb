//! The gRPC listener: Inference, Admin, Health and reflection (v1 and v1alpha) on one port,
//! inside the serving stack, over the node's own accept loop ([`crate::accept`]: socket options,
//! a bounded handshake or first bytes, TLS (mutual when configured) with certificates that
//! reload). Health follows the node's lifecycle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tiergate_proto::v1::admin_server::AdminServer;
use tiergate_proto::v1::inference_server::InferenceServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::{AdminService, InferenceService};
use crate::accept::{IntakeSettings, grpc_plain_incoming, grpc_tls_incoming};
use crate::device::DeviceReporter;
use crate::node::NodeApi;
use crate::shell::{Api, Lifecycle, Phase, StackSettings, serving_stack};

/// How often readiness is re-read between lifecycle changes (engine workers may die at any
/// time, and nothing announces it).
const READINESS_POLL: Duration = Duration::from_secs(1);

/// What the gRPC listener needs besides its socket.
#[derive(Debug, Clone)]
pub struct GrpcListenerSettings {
    pub tls: Option<Arc<crate::tls::ReloadingTls>>,
    pub stack: StackSettings,
    pub lifecycle: Lifecycle,
    /// The node's report (`tiergate.v1.Admin/Report`), shared with HTTP `GET /v1/report`.
    pub device: Arc<DeviceReporter>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// The handshake bound (TLS, or in plaintext the HTTP/2 preface's first bytes) and the
    /// socket options of each accepted connection; its keepalive interval also paces PINGs.
    pub intake: IntakeSettings,
}

/// Serves gRPC on `listener` until `shutdown` completes.
pub async fn serve_grpc(
    listener: TcpListener,
    node: Arc<dyn NodeApi>,
    settings: GrpcListenerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let max_message = node.limits().max_body_bytes;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Registered before the first watch can arrive (an unknown service is NOT_FOUND).
    health_reporter
        .set_service_status(inference_name(), ServingStatus::NotServing)
        .await;
    let follower = tokio::spawn(follow_readiness(
        health_reporter.clone(),
        settings.lifecycle.clone(),
    ));
    let inference =
        InferenceServer::new(InferenceService::new(node)).max_decoding_message_size(max_message);
    let admin = AdminServer::new(AdminService::new(Arc::clone(&settings.device)));
    let mut routes = Routes::new(health_service)
        .add_service(inference)
        .add_service(admin);
    // Reflection is a convenience for grpcurl and friends; a node serves without it. Both
    // versions: grpcurl before 1.9 and Python's grpcio-reflection speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tiergate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    match reflection().build_v1() {
        Ok(v1) => routes = routes.add_service(v1),
        Err(err) => tracing::error!(error = %err, "reflection descriptors are invalid"),
    }
    match reflection().build_v1alpha() {
        Ok(v1alpha) => routes = routes.add_service(v1alpha),
        Err(err) => tracing::error!(error = %err, "reflection descriptors are invalid"),
    }
    let service = serving_stack(Api::Grpc, &settings.stack, routes.prepare());
    let intake = settings.intake;
    // Health watches are streams that never end by themselves: tonic's graceful shutdown would
    // wait for them for ever (a stopped regional node stayed alive, SERVING, for minutes while
    // its edge watched it). Clearing the statuses ends every watch when the listener stops.
    let stop = async move {
        shutdown.await;
        follower.abort();
        let mut reporter = health_reporter;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        reporter.clear_service_status(inference_name()).await;
        reporter.clear_service_status("").await;
    };
    // A peer that vanished (half-open connection) would hold its streams, and the generations
    // behind them, until TCP gave up (many minutes): PINGs find it within interval + timeout.
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(settings.intake.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout));
    // Two instantiations: tonic puts the connection's info (for TLS the verified client
    // certificate the auth layer looks for) in each request by the stream's type.
    match settings.tls {
        Some(tls) => {
            let incoming = grpc_tls_incoming(listener, tls, intake);
            server
                .serve_with_incoming_shutdown(service, incoming, stop)
                .await
        }
        None => {
            let incoming = grpc_plain_incoming(listener, intake);
            server
                .serve_with_incoming_shutdown(service, incoming, stop)
                .await
        }
    }
}

fn inference_name() -> &'static str {
    <InferenceServer<InferenceService> as NamedService>::NAME
}

/// Keeps `grpc.health.v1` in step with the lifecycle: NOT_SERVING the moment a drain starts
/// (watchers are told at once), and whenever the engine workers are gone.
async fn follow_readiness(reporter: HealthReporter, lifecycle: Lifecycle) {
    let mut phases = lifecycle.subscribe();
    let mut last = None;
    loop {
        let ready = lifecycle.is_ready();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(inference_name(), status).await;
            reporter.set_service_status("", status).await;
            last = Some(ready);
        }
        if lifecycle.phase() == Phase::Stopped {
            return;
        }
        tokio::select! {
            changed = phases.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(READINESS_POLL) => {}
        }
    }
}
