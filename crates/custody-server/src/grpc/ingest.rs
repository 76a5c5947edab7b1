//! `IngestService`: cameras push segments.

use custody_core::{CameraId, MediaType, StreamName};
use custody_proto::v1 as pb;
use custody_proto::v1::put_segment_request::Part;
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::audit::{audited, range_detail, Durability, Target};
use super::convert::{digest, range};
use crate::{Caller, CameraScope, IngestHeader, IngestPart, Node, ServerError};

/// The ingest service over a node.
#[derive(Clone)]
pub struct IngestApi {
    node: Node,
}

impl IngestApi {
    /// Serves ingest for `node`.
    pub fn new(node: Node) -> Self {
        IngestApi { node }
    }
}

fn header(h: pb::SegmentHeader) -> Result<IngestHeader, ServerError> {
    Ok(IngestHeader {
        camera: CameraId::parse(&h.camera_id)?,
        stream: StreamName::parse(&h.stream)?,
        range: range(h.start, h.end)?,
        media_type: MediaType::parse(&h.media_type)?,
        sequence: h.sequence.unwrap_or(0),
        sha256: digest(&h.sha256, "header.sha256")?,
        size: h.size_bytes,
    })
}

#[tonic::async_trait]
impl pb::ingest_service_server::IngestService for IngestApi {
    async fn put_segment(
        &self,
        request: Request<Streaming<pb::PutSegmentRequest>>,
    ) -> Result<Response<pb::PutSegmentResponse>, Status> {
        let caller = Caller::of(&request);
        let started = std::time::Instant::now();
        let mut target = Target::default();
        let result = self.put_segment_inner(request, &mut target).await;
        let outcome = result
            .as_ref()
            .map(|r| (r.get_ref().size_bytes, r.get_ref().duplicate));
        (self.node.metrics).ingested(&caller.listener, started, outcome.map_err(|s| s.code()));
        if let Ok(r) = &result {
            target.segment = r.get_ref().segment_id.clone();
            if r.get_ref().duplicate {
                target.detail.push_str("; duplicate");
            }
        }
        let p = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            p,
            "ingest.put_segment",
            target,
            Durability::Grouped,
            result,
        )
        .await
    }
}

impl IngestApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn put_segment_inner(
        &self,
        request: Request<Streaming<pb::PutSegmentRequest>>,
        target: &mut Target,
    ) -> Result<Response<pb::PutSegmentResponse>, Status> {
        let caller = Caller::of(&request);
        let mut stream = request.into_inner();
        let first = stream.next().await.ok_or_else(|| {
            Status::invalid_argument("empty upload: the first message must be a header")
        })??;
        let h = match first.part {
            Some(Part::Header(h)) => {
                *target = Target::camera(&h.camera_id);
                target.detail = format!("stream {:?} {}", h.stream, range_detail(&h.start, &h.end));
                header(h)?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a header",
                ))
            }
        };
        if !caller.cameras.allows(h.camera.as_str()) {
            let n = self
                .node
                .denials()
                .count(&caller.listener, "camera-binding");
            let bound = match &caller.cameras {
                CameraScope::Only(ids) if !ids.is_empty() => {
                    ids.iter().cloned().collect::<Vec<_>>().join(", ")
                }
                _ => "no camera".to_string(),
            };
            tracing::warn!(principal = caller.principal, camera = %h.camera, refusals = n, "refused: camera not bound to certificate");
            return Err(Status::permission_denied(format!(
                "{} may ingest only for {bound}, not for camera {}",
                caller.principal, h.camera
            )));
        }
        let idle = self.node.limits().upload_idle_timeout();
        let max_message = self.node.limits().max_message_bytes;
        let parts = idle_limited(stream, idle).map(move |m| match m {
            Ok(pb::PutSegmentRequest {
                part: Some(Part::Chunk(b)),
            }) => Ok(IngestPart::Chunk(b)),
            Ok(pb::PutSegmentRequest {
                part: Some(Part::Finish(f)),
            }) => Ok(IngestPart::Finish {
                sha256: digest(&f.sha256, "finish.sha256")?,
            }),
            Ok(pb::PutSegmentRequest {
                part: Some(Part::Header(_)),
            }) => Err(ServerError::Invalid("a second header in one upload".into())),
            Ok(pb::PutSegmentRequest { part: None }) => {
                Err(ServerError::Invalid("empty message in upload".into()))
            }
            Err(s) => Err(stream_error(&s, max_message)),
        });
        let receipt = self.node.ingest(h, Box::pin(parts)).await?;
        Ok(Response::new(pb::PutSegmentResponse {
            segment_id: receipt.segment_id.to_string(),
            size_bytes: receipt.size,
            stored_bytes: receipt.stored_size,
            sha256: receipt.sha256.to_vec(),
            duplicate: receipt.duplicate,
        }))
    }
}

/// Ends an upload stream with an error when no message arrives for `idle`:
/// a frozen or vanished client releases its segment and staging file instead
/// of holding them for as long as its connection lives.
fn idle_limited(
    stream: Streaming<pb::PutSegmentRequest>,
    idle: std::time::Duration,
) -> impl futures::Stream<Item = Result<pb::PutSegmentRequest, Status>> {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(Status::deadline_exceeded(format!(
                    "no message for {} s (limits.upload_idle_timeout_secs); upload abandoned, nothing stored",
                    idle.as_secs()
                ))),
                None,
            )),
        }
    })
}

/// The error a broken upload stream becomes: a message over the size limit
/// is the client's mistake (INVALID_ARGUMENT naming the limit), an idle
/// stream is DEADLINE_EXCEEDED, anything else a transport failure (ABORTED,
/// retry).
fn stream_error(s: &Status, max_message: usize) -> ServerError {
    match s.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            if s.message().contains("message length too large") =>
        {
            ServerError::Invalid(format!(
                "a message of the upload is larger than limits.max_message_bytes = {max_message} ({}); \
                 send smaller chunks; nothing stored",
                s.message()
            ))
        }
        tonic::Code::DeadlineExceeded => ServerError::DeadlineExceeded(s.message().to_string()),
        _ => ServerError::Aborted(format!(
            "upload stream failed: {}; nothing stored",
            s.message()
        )),
    }
}
