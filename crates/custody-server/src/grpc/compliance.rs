//! `ComplianceService`: compliance reports computed from the store, with
//! progress streamed while the scan runs.

use std::pin::Pin;

use custody_core::CameraId;
use custody_proto::v1 as pb;
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

use super::audit::{audited, Durability, Target};
use super::convert::{from_proto_ts, to_proto_ts};
use crate::{Caller, ComplianceReport, Node, ScanProgress, ServerError};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Progress messages buffered for a slow client; later ones replace none,
/// they are simply skipped while the buffer is full.
const PROGRESS_BUFFER: usize = 16;

/// The compliance service over a node.
#[derive(Clone)]
pub struct ComplianceApi {
    node: Node,
}

impl ComplianceApi {
    /// Serves compliance reports of `node`.
    pub fn new(node: Node) -> Self {
        ComplianceApi { node }
    }
}

/// A report as its wire message.
pub fn report_to_proto(r: &ComplianceReport) -> pb::ComplianceReport {
    use crate::ViolationKind as K;
    let kind = |k: K| -> i32 {
        (match k {
            K::ExpiredUnheld => pb::ViolationKind::ExpiredUnheld,
            K::ExpiredUnindexed => pb::ViolationKind::ExpiredUnindexed,
            K::PastCeiling => pb::ViolationKind::PastCeiling,
            K::HeldMissing => pb::ViolationKind::HeldMissing,
            K::HeldCorrupt => pb::ViolationKind::HeldCorrupt,
            K::Corrupt => pb::ViolationKind::Corrupt,
            K::UnindexedObject => pb::ViolationKind::UnindexedObject,
            K::MissingObject => pb::ViolationKind::MissingObject,
            K::ForeignObject => pb::ViolationKind::ForeignObject,
        }) as i32
    };
    pb::ComplianceReport {
        generated_at: Some(to_proto_ts(r.generated_at)),
        as_of: Some(to_proto_ts(r.as_of)),
        store_url: r.store_url.clone(),
        deep: r.deep,
        requested_cameras: r.requested_cameras.clone(),
        objects_scanned: r.objects_scanned,
        index_entries: r.index_entries,
        bytes_read: r.bytes_read,
        sweep_bound_secs: r.sweep_bound_secs,
        gap_tolerance_secs: r.gap_tolerance_secs,
        cameras: r
            .cameras
            .iter()
            .map(|c| pb::CameraCompliance {
                camera_id: c.camera.clone(),
                policy: c.policy.clone(),
                segments: c.segments,
                bytes: c.bytes,
                held_segments: c.held_segments,
                held_bytes: c.held_bytes,
                next_expiry: c.next_expiry.map(to_proto_ts),
                gaps: c
                    .gaps
                    .iter()
                    .map(|(stream, g)| pb::RecordingGap {
                        stream: stream.clone(),
                        start: Some(to_proto_ts(g.start())),
                        end: Some(to_proto_ts(g.end())),
                    })
                    .collect(),
            })
            .collect(),
        violations: r
            .violations
            .iter()
            .map(|v| pb::Violation {
                kind: kind(v.kind),
                camera_id: v.camera.clone(),
                detail: v.detail.clone(),
                segments: v
                    .segments
                    .iter()
                    .map(|s| pb::ViolationSegment {
                        segment_id: s.segment_id.clone(),
                        stream: s.stream.clone(),
                        start: s.range.map(|r| to_proto_ts(r.start())),
                        end: s.range.map(|r| to_proto_ts(r.end())),
                        object_key: s.object_key.clone(),
                        expires_at: s.expires_at.map(to_proto_ts),
                        hold_ids: s.hold_ids.clone(),
                    })
                    .collect(),
            })
            .collect(),
        audit: Some(pb::AuditStatus {
            verified: r.audit.verified,
            detail: r.audit.detail.clone(),
        }),
    }
}

fn progress_msg(p: ScanProgress) -> pb::RunReportResponse {
    pb::RunReportResponse {
        event: Some(pb::run_report_response::Event::Progress(
            pb::ReportProgress {
                scanned: p.scanned,
                total: p.total,
                bytes_read: p.bytes_read,
            },
        )),
    }
}

#[tonic::async_trait]
impl pb::compliance_service_server::ComplianceService for ComplianceApi {
    type RunReportStream = BoxStream<pb::RunReportResponse>;

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn run_report(
        &self,
        request: Request<pb::RunReportRequest>,
    ) -> Result<Response<Self::RunReportStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let target = Target {
            cameras: r.camera_ids.clone(),
            detail: format!("deep={}", r.deep),
            ..Default::default()
        };
        let result = self.run(r, &caller).await;
        let principal = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            principal,
            "compliance.report",
            target,
            Durability::Grouped,
            result,
        )
        .await
    }
}

impl ComplianceApi {
    async fn run(
        &self,
        r: pb::RunReportRequest,
        caller: &Caller,
    ) -> Result<Response<BoxStream<pb::RunReportResponse>>, Status> {
        let cameras = r
            .camera_ids
            .iter()
            .map(|c| CameraId::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServerError::from)?;
        let as_of = r
            .as_of
            .map(|t| from_proto_ts(Some(t), "as_of"))
            .transpose()?;
        info!(
            principal = caller.principal,
            cameras = cameras.len(),
            deep = r.deep,
            "compliance report"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(PROGRESS_BUFFER);
        let node = self.node.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |p: ScanProgress| {
                // Progress is advisory: skipped while the client lags.
                let _ = progress_tx.try_send(Ok(progress_msg(p)));
            };
            // A client that hangs up cancels the scan.
            let result = tokio::select! {
                r = node.compliance_report(&cameras, as_of, r.deep, &progress) => r,
                () = tx.closed() => return,
            };
            let msg = result
                .map_err(Status::from)
                .map(|rep| pb::RunReportResponse {
                    event: Some(pb::run_report_response::Event::Report(report_to_proto(
                        &rep,
                    ))),
                });
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
