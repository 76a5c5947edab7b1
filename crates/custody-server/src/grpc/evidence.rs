//! `EvidenceService`: signed evidence bundles, streamed file by file.

use std::pin::Pin;

use custody_core::{CameraId, HoldId};
use custody_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::info;

use super::audit::{audited, range_detail, Durability, Target};
use super::convert::range;
use crate::{BundlePart, Caller, EvidenceScope, Node, ServerError};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The evidence service over a node.
#[derive(Clone)]
pub struct EvidenceApi {
    node: Node,
}

impl EvidenceApi {
    /// Serves evidence bundles of `node`.
    pub fn new(node: Node) -> Self {
        EvidenceApi { node }
    }
}

fn scope_from(r: &pb::ExportEvidenceRequest) -> Result<EvidenceScope, ServerError> {
    match (r.hold_id.is_empty(), r.camera_id.is_empty()) {
        (false, true) if r.start.is_none() && r.end.is_none() => {
            Ok(EvidenceScope::Hold(HoldId::parse(&r.hold_id)?))
        }
        (true, false) => Ok(EvidenceScope::Range {
            camera: CameraId::parse(&r.camera_id)?,
            range: range(r.start, r.end)?,
        }),
        _ => Err(ServerError::Invalid(
            "give hold_id alone, or camera_id with start and end".into(),
        )),
    }
}

#[tonic::async_trait]
impl pb::evidence_service_server::EvidenceService for EvidenceApi {
    type ExportEvidenceStream = BoxStream<pb::ExportEvidenceResponse>;

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn export_evidence(
        &self,
        request: Request<pb::ExportEvidenceRequest>,
    ) -> Result<Response<Self::ExportEvidenceStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let principal = caller.recorded_principal(&r.principal);
        let mut target = Target::camera(&r.camera_id);
        target.hold = r.hold_id.clone();
        if r.hold_id.is_empty() {
            target.detail = range_detail(&r.start, &r.end);
        }
        // Handing decrypted footage out is recorded durably before the first byte.
        let result = self.export(&r, &principal).await;
        audited(
            &self.node,
            &caller,
            principal,
            "evidence.export",
            target,
            Durability::Durable,
            result,
        )
        .await
    }
}

impl EvidenceApi {
    async fn export(
        &self,
        r: &pb::ExportEvidenceRequest,
        principal: &str,
    ) -> Result<Response<BoxStream<pb::ExportEvidenceResponse>>, Status> {
        let scope = scope_from(r)?;
        info!(principal, ?scope, "evidence export");
        let parts = self.node.export_evidence(scope, principal).await?;
        let out = parts.map(|p| {
            let part = match p? {
                BundlePart::File { path, size, total } => {
                    pb::export_evidence_response::Part::File(pb::BundleFile {
                        path,
                        size,
                        segment_bytes_total: total,
                    })
                }
                BundlePart::Data(b) => pb::export_evidence_response::Part::Data(b.to_vec()),
            };
            Ok(pb::ExportEvidenceResponse { part: Some(part) })
        });
        Ok(Response::new(Box::pin(out)))
    }
}
