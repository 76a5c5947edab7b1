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
use tokio_rustls::rustls;
use tonic::service::RoutesBuilder;
use tracing::info;

use super::accept;

use super::{ArchiveApi, AuditApi, ComplianceApi, EvidenceApi, IngestApi, NodeApi, RetentionApi};
use crate::authz::{Gate, GateConfig};
use crate::{ListenerConfig, Node, ServerError, ServiceKind};

/// HTTP/2 flow-control window per stream.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 PINGs this often on an idle connection...
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
/// ...and a peer that does not answer within this is disconnected (a frozen
/// client's uploads end, releasing their segments).
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A bound listener, ready to serve.
pub struct Serving {
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    /// The listener's configuration.
    pub config: ListenerConfig,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

impl Serving {
    /// Binds a listener.
    pub async fn bind(config: ListenerConfig) -> Result<Serving, ServerError> {
        let tls = config
            .tls
            .as_ref()
            .map(|t| accept::server_config(&config.name, t))
            .transpose()?
            .map(|mut tls| {
                // HTTP services are also for HTTP/1.1 clients (ffmpeg, players).
                if config.services.iter().any(|s| s.has_http_routes()) {
                    tls.alpn_protocols.push(b"http/1.1".to_vec());
                }
                tls
            });
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
) -> Result<tonic::service::Routes, ServerError> {
    let max = node.limits().max_message_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    // Reflection describes only the services this listener serves: the
    // others are cut out of the descriptors, not just left unlisted.
    let descriptors = served_descriptors(services)?;
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    let mut reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    let mut routes = RoutesBuilder::default();
    let retention = RetentionApi::new(node.clone());
    for s in services {
        if s.is_grpc() {
            reflection = reflection.with_service_name(s.grpc_name());
            reflection_alpha = reflection_alpha.with_service_name(s.grpc_name());
        }
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
            // HTTP routes, added to the router below.
            ServiceKind::Playback | ServiceKind::Metrics => {}
        }
    }
    let reflection_err = |e| ServerError::Internal(format!("reflection: {e}"));
    routes.add_service(health);
    routes.add_service(reflection.build_v1().map_err(reflection_err)?);
    routes.add_service(reflection_alpha.build_v1alpha().map_err(reflection_err)?);
    let mut routes = routes.routes();
    if services.contains(&ServiceKind::Playback) {
        let router = routes.axum_router_mut();
        *router = std::mem::take(router).merge(crate::playback::router(node.clone()));
    }
    if ServiceKind::serves_metrics(services) {
        crate::metrics::add_route(&mut routes, node.clone());
    }
    Ok(routes)
}

/// Custody's file descriptors with only the `services` kept.
fn served_descriptors(services: &[ServiceKind]) -> Result<Vec<u8>, ServerError> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(custody_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| ServerError::Internal(format!("reflection descriptors: {e}")))?;
    for file in &mut set.file {
        let package = file.package.clone().unwrap_or_default();
        file.service.retain(|s| {
            let full = format!("{package}.{}", s.name.as_deref().unwrap_or_default());
            services.iter().any(|k| k.grpc_name() == full)
        });
    }
    Ok(set.encode_to_vec())
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
        node.metrics.listener_started(&b.config);
        let gate = Arc::new(GateConfig {
            listener: b.config.name.clone(),
            services: b.config.services.clone(),
            mtls: b.tls.is_some(),
            rules: node.auth.rules.clone(),
            revoked: node.revoked.clone(),
            denials: node.denials.clone(),
            node: node.clone(),
        });
        let mut stop = stop_rx.clone();
        info!(listener = b.config.name, addr = %b.local_addr, services = ?b.config.services, "serving gRPC");
        let name = b.config.name.clone();
        // HTTP/1.1 (next to HTTP/2) only where HTTP services are served.
        let http1 = b.config.services.iter().any(|s| s.has_http_routes());
        let router = tonic::transport::Server::builder()
            .accept_http1(http1)
            .layer(tower_layer::layer_fn(move |inner| {
                Gate::new(inner, gate.clone())
            }))
            // Segments are megabytes: default 64 KiB HTTP/2 windows would
            // stall every upload on flow control.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_routes(routes);
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // Sockets are accepted here, not by tonic, so that each gets
        // TCP_NODELAY and TLS refusals are seen (see `accept`).
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let served = match b.tls {
                Some(tls) => {
                    let incoming = accept::tls(b.listener, tls, name.clone(), node);
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
                None => {
                    router
                        .serve_with_incoming_shutdown(
                            accept::plain(b.listener, name.clone()),
                            stopped,
                        )
                        .await
                }
            };
            served.map_err(|e| ServerError::Unavailable(format!("listener {name}: {e}")))
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
