//! The gRPC listener: Inference, Health and reflection on one port, TCP_NODELAY on each
//! accepted connection, TLS (mutual when configured) in front when configured.

use std::future::Future;
use std::sync::Arc;

use tiergate_proto::v1::inference_server::InferenceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::InferenceService;
use crate::node::NodeApi;

/// Serves gRPC on `listener` until `shutdown` completes.
pub async fn serve_grpc(
    listener: TcpListener,
    node: Arc<dyn NodeApi>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let max_message = node.limits().max_body_bytes;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    if node.is_ready() {
        health_reporter
            .set_serving::<InferenceServer<InferenceService>>()
            .await;
    } else {
        health_reporter
            .set_not_serving::<InferenceServer<InferenceService>>()
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tiergate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| {
            tracing::error!(error = %err, "reflection descriptors are invalid");
            err
        });
    let inference =
        InferenceServer::new(InferenceService::new(node)).max_decoding_message_size(max_message);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = match tls {
        Some(tls) => tonic::transport::Server::builder().tls_config(tls)?,
        None => tonic::transport::Server::builder(),
    };
    let router = server.add_service(health_service).add_service(inference);
    // Reflection is a convenience for grpcurl and friends; a node serves without it.
    let router = match reflection {
        Ok(reflection) => router.add_service(reflection),
        Err(_) => router,
    };
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
