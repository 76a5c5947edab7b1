//! Serving the gRPC API, with standard health checking and reflection.

use std::future::Future;
use std::net::SocketAddr;

use custody_proto::v1::archive_service_server::ArchiveServiceServer;
use custody_proto::v1::hold_service_server::HoldServiceServer;
use custody_proto::v1::ingest_service_server::IngestServiceServer;
use custody_proto::v1::policy_service_server::PolicyServiceServer;
use custody_proto::v1::retention_service_server::RetentionServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use super::{ArchiveApi, IngestApi, RetentionApi};
use crate::{Node, ServerError};

/// A bound listener, ready to serve.
pub struct Serving {
    listener: TcpListener,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

impl Serving {
    /// Binds `addr`.
    pub async fn bind(addr: &str) -> Result<Serving, ServerError> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            ServerError::FailedPrecondition(format!("cannot listen on {addr}: {e}"))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ServerError::Internal(format!("local address of {addr}: {e}")))?;
        Ok(Serving {
            listener,
            local_addr,
        })
    }
}

/// Serves every service of `node` on `bound` until `shutdown` resolves, then
/// drains in-flight calls.
pub async fn serve(
    node: Node,
    bound: Serving,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let max = node.limits().max_message_bytes;
    let ingest = IngestServiceServer::new(IngestApi::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let archive = ArchiveServiceServer::new(ArchiveApi::new(node.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let retention = RetentionApi::new(node.clone());
    let policies = PolicyServiceServer::new(retention.clone());
    let holds = HoldServiceServer::new(retention.clone());
    let sweeps = RetentionServiceServer::new(retention);

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<IngestServiceServer<IngestApi>>()
        .await;
    reporter
        .set_serving::<ArchiveServiceServer<ArchiveApi>>()
        .await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custody_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let reflection_v1 = reflection
        .build_v1()
        .map_err(|e| ServerError::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custody_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Internal(format!("reflection: {e}")))?;

    info!(addr = %bound.local_addr, "serving gRPC");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(archive)
        .add_service(policies)
        .add_service(holds)
        .add_service(sweeps)
        .serve_with_incoming_shutdown(TcpListenerStream::new(bound.listener), shutdown)
        .await
        .map_err(|e| ServerError::Unavailable(format!("gRPC server: {e}")))
}
