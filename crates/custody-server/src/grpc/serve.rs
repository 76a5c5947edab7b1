//! Serving the gRPC API on one listener per network segment, each with only
//! its configured services, standard health checking and reflection, mutual
//! TLS where configured, and the authorization gate in front of every route.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use custody_proto::v1::archive_service_server::ArchiveServiceServer;
use custody_proto::v1::audit_service_server::AuditServiceServer;
use custody_proto::v1::compliance_service_server::ComplianceServiceServer;
use custody_proto::v1::evidence_service_server::EvidenceServiceServer;
use custody_proto::v1::hold_service_server::HoldServiceServer;
use custody_proto::v1::ingest_service_server::IngestServiceServer;
use custody_proto::v1::node_service_server::NodeServiceServer;
use custody_proto::v1::policy_service_server::PolicyServiceServer;
use custody_proto::v1::retention_service_server::RetentionServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::RoutesBuilder;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::info;

use super::{ArchiveApi, AuditApi, ComplianceApi, EvidenceApi, IngestApi, NodeApi, RetentionApi};
use crate::authz::{Gate, GateConfig};
use crate::{ListenerConfig, Node, ServerError, ServiceKind};

/// HTTP/2 flow-control window per stream.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A bound listener, ready to serve.
pub struct Serving {
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

impl Serving {
    /// Binds a listener.
    pub async fn bind(config: ListenerConfig) -> Result<Serving, ServerError> {
        let tls = match &config.tls {
            None => None,
            Some(t) => {
                let read = |what: &str, p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| {
                        ServerError::FailedPrecondition(format!(
                            "listener {}: tls.{what} {}: {e}",
                            config.name,
                            p.display()
                        ))
                    })
                };
                Some(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(
                            read("cert", &t.cert)?,
                            read("key", &t.key)?,
                        ))
                        .client_ca_root(Certificate::from_pem(read("client_ca", &t.client_ca)?))
                        .client_auth_optional(false),
                )
            }
        };
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
            tls,
            config,
            local_addr,
        })
    }
}

async fn routes(
    node: &Node,
    services: &[ServiceKind],
    status: &NodeApi,
) -> Result<RoutesBuilder, ServerError> {
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
            ServiceKind::Node => {
                routes.add_service(NodeServiceServer::new(status.clone()));
                reporter.set_serving::<NodeServiceServer<NodeApi>>().await;
            }
            ServiceKind::Audit => {
                routes.add_service(AuditServiceServer::new(AuditApi::new(node.clone())));
                reporter.set_serving::<AuditServiceServer<AuditApi>>().await;
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
    let status = NodeApi::new(
        node.clone(),
        bound
            .iter()
            .map(|b| (b.config.clone(), b.local_addr.to_string()))
            .collect(),
    );
    for b in bound {
        let routes = routes(&node, &b.config.services, &status).await?;
        let gate = Arc::new(GateConfig {
            listener: b.config.name.clone(),
            services: b.config.services.clone(),
            mtls: b.tls.is_some(),
            rules: node.auth.rules.clone(),
            revoked: node.revoked.clone(),
            denials: node.denials.clone(),
            node: node.clone(),
        });
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = b.tls {
            server = server.tls_config(tls).map_err(|e| {
                ServerError::FailedPrecondition(format!("listener {}: tls: {e}", b.config.name))
            })?;
        }
        let mut stop = stop_rx.clone();
        info!(listener = b.config.name, addr = %b.local_addr, services = ?b.config.services, "serving gRPC");
        let name = b.config.name.clone();
        tasks.push(tokio::spawn(async move {
            server
                .layer(tower_layer::layer_fn(move |inner| {
                    Gate::new(inner, gate.clone())
                }))
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
