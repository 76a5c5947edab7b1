//! Serving the gRPC API on one listener per network segment, each with only
//! its configured services, standard health checking and reflection.

use std::future::Future;
use std::net::SocketAddr;

use custody_proto::v1::archive_service_server::ArchiveServiceServer;
use custody_proto::v1::compliance_service_server::ComplianceServiceServer;
use custody_proto::v1::evidence_service_server::EvidenceServiceServer;
use custody_proto::v1::hold_service_server::HoldServiceServer;
use custody_proto::v1::ingest_service_server::IngestServiceServer;
use custody_proto::v1::policy_service_server::PolicyServiceServer;
use custody_proto::v1::retention_service_server::RetentionServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::RoutesBuilder;
use tracing::info;

use super::{ArchiveApi, ComplianceApi, EvidenceApi, IngestApi, RetentionApi};
use crate::{ListenerConfig, Node, ServerError, ServiceKind};

/// HTTP/2 flow-control window per stream.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A bound listener, ready to serve.
pub struct Serving {
    listener: TcpListener,
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

impl Serving {
    /// Binds a listener.
    pub async fn bind(config: ListenerConfig) -> Result<Serving, ServerError> {
        let addr = config.addr.clone();
        let listener = TcpListener::bind(&addr).await.map_err(|e| {
            ServerError::FailedPrecondition(format!(
                "listener {}: cannot listen on {addr}: {e}",
                config.name
            ))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ServerError::Internal(format!("local address of {addr}: {e}")))?;
        Ok(Serving {
            listener,
            config,
            local_addr,
        })
    }
}

async fn routes(node: &Node, services: &[ServiceKind]) -> Result<RoutesBuilder, ServerError> {
    let max = node.limits().max_message_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custody_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    let mut reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(custody_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    let mut routes = RoutesBuilder::default();
    let retention = RetentionApi::new(node.clone());
    for s in services {
        reflection = reflection.with_service_name(s.grpc_name());
        reflection_alpha = reflection_alpha.with_service_name(s.grpc_name());
        match s {
            ServiceKind::Ingest => {
                routes.add_service(
                    IngestServiceServer::new(IngestApi::new(node.clone()))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                );
                reporter
                    .set_serving::<IngestServiceServer<IngestApi>>()
                    .await;
            }
            ServiceKind::Archive => {
                routes.add_service(
                    ArchiveServiceServer::new(ArchiveApi::new(node.clone()))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                );
                reporter
                    .set_serving::<ArchiveServiceServer<ArchiveApi>>()
                    .await;
            }
            ServiceKind::Policy => {
                routes.add_service(PolicyServiceServer::new(retention.clone()));
                reporter
                    .set_serving::<PolicyServiceServer<RetentionApi>>()
                    .await;
            }
            ServiceKind::Hold => {
                routes.add_service(HoldServiceServer::new(retention.clone()));
                reporter
                    .set_serving::<HoldServiceServer<RetentionApi>>()
                    .await;
            }
            ServiceKind::Retention => {
                routes.add_service(RetentionServiceServer::new(retention.clone()));
                reporter
                    .set_serving::<RetentionServiceServer<RetentionApi>>()
                    .await;
            }
            ServiceKind::Compliance => {
                routes.add_service(
                    ComplianceServiceServer::new(ComplianceApi::new(node.clone()))
                        .max_encoding_message_size(max),
                );
                reporter
                    .set_serving::<ComplianceServiceServer<ComplianceApi>>()
                    .await;
            }
            ServiceKind::Evidence => {
                routes.add_service(
                    EvidenceServiceServer::new(EvidenceApi::new(node.clone()))
                        .max_encoding_message_size(max),
                );
                reporter
                    .set_serving::<EvidenceServiceServer<EvidenceApi>>()
                    .await;
            }
        }
    }
    let reflection_err = |e| ServerError::Internal(format!("reflection: {e}"));
    routes.add_service(health);
    routes.add_service(reflection.build_v1().map_err(reflection_err)?);
    routes.add_service(reflection_alpha.build_v1alpha().map_err(reflection_err)?);
    Ok(routes)
}

/// Serves `node` on every bound listener until `shutdown` resolves, then
/// drains in-flight calls on all of them.
pub async fn serve(
    node: Node,
    bound: Vec<Serving>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for b in bound {
        let routes = routes(&node, &b.config.services).await?;
        let mut stop = stop_rx.clone();
        info!(listener = b.config.name, addr = %b.local_addr, services = ?b.config.services, "serving gRPC");
        let name = b.config.name.clone();
        tasks.push(tokio::spawn(async move {
            tonic::transport::Server::builder()
                // Segments are megabytes: default 64 KiB HTTP/2 windows would
                // stall every upload on flow control.
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .tcp_nodelay(true)
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(TcpListenerStream::new(b.listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .map_err(|e| ServerError::Unavailable(format!("listener {name}: {e}")))
        }));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await
            .map_err(|e| ServerError::Internal(format!("listener task: {e}")))??;
    }
    Ok(())
}
