//! `NodeService`: the node's listeners and what each refused.

use custody_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{ListenerConfig, Node};

/// The node service: static listener facts plus live refusal counts.
#[derive(Clone)]
pub struct NodeApi {
    node: Node,
    listeners: Vec<(ListenerConfig, String)>,
}

impl NodeApi {
    /// Serves status for `node` listening on `listeners` (config, bound address).
    pub fn new(node: Node, listeners: Vec<(ListenerConfig, String)>) -> Self {
        NodeApi { node, listeners }
    }
}

#[tonic::async_trait]
impl pb::node_service_server::NodeService for NodeApi {
    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let counts = self.node.denials().snapshot();
        let listeners = self
            .listeners
            .iter()
            .map(|(l, addr)| pb::ListenerStatus {
                name: l.name.clone(),
                addr: addr.clone(),
                services: l
                    .services
                    .iter()
                    .map(|s| s.grpc_name().to_string())
                    .collect(),
                mtls: l.tls.is_some(),
                refusals: counts
                    .iter()
                    .filter(|((name, _), _)| name == &l.name)
                    .map(|((_, reason), n)| (reason.clone(), *n))
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::NodeStatus { listeners }))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let view = self.node.cluster_view().await?;
        Ok(Response::new(pb::ClusterStatus {
            node_id: view.node_id,
            members: view
                .members
                .into_iter()
                .map(|m| pb::ClusterMember {
                    lag_batches: m.journal_head.saturating_sub(m.applied),
                    node_id: m.node_id,
                    advertise: m.advertise,
                    alive: m.alive,
                    heartbeat_age_ms: m.heartbeat_age_ms,
                    duties: m.duties,
                    journal_head: m.journal_head,
                    applied: m.applied,
                    version: m.version,
                    started_at: m.started_at,
                })
                .collect(),
        }))
    }
}
