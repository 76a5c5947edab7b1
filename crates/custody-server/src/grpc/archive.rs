//! `ArchiveService`: operators list, read and export footage.

use std::pin::Pin;

use custody_core::{CameraId, SegmentId, StreamName};
use custody_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::audit::{audited, range_detail, Durability, Target};
use super::convert::{range, segment_info, to_proto_ts};
use crate::{Caller, Node, OpenSegment, ServerError};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Room left in a message for everything but the data (field tags, the
/// segment info of a first message).
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Re-cuts plaintext pieces so that no message carries more than fits under
/// `limits.max_message_bytes`, whatever the size of the pieces decrypted.
fn fit_messages(
    pieces: impl Stream<Item = Result<bytes::Bytes, ServerError>> + Send + 'static,
    max_message: usize,
) -> impl Stream<Item = Result<bytes::Bytes, ServerError>> + Send + 'static {
    let max = max_message.saturating_sub(MESSAGE_OVERHEAD).max(4096);
    pieces.flat_map(move |piece| {
        let parts: Vec<Result<bytes::Bytes, ServerError>> = match piece {
            Ok(mut b) => {
                let mut parts = Vec::with_capacity(b.len() / max + 1);
                while b.len() > max {
                    parts.push(Ok(b.split_to(max)));
                }
                parts.push(Ok(b));
                parts
            }
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(parts)
    })
}

/// The archive service over a node.
#[derive(Clone)]
pub struct ArchiveApi {
    node: Node,
}

impl ArchiveApi {
    /// Serves the archive of `node`.
    pub fn new(node: Node) -> Self {
        ArchiveApi { node }
    }

    async fn known_camera(&self, id: &str) -> Result<CameraId, ServerError> {
        let camera = CameraId::parse(id)?;
        if !self.node.knows_camera(&camera).await? {
            return Err(ServerError::NotFound(format!(
                "camera {camera} has no footage in this archive"
            )));
        }
        Ok(camera)
    }
}

/// The handlers proper; the trait methods below wrap each with its audit record.
impl ArchiveApi {
    #[tracing::instrument(skip_all)]
    async fn list_cameras_inner(
        &self,
        _request: Request<pb::ListCamerasRequest>,
    ) -> Result<Response<pb::ListCamerasResponse>, Status> {
        let cameras = self
            .node
            .catalog()
            .map_cameras(|c| pb::CameraInfo {
                camera_id: c.camera.as_str().to_owned(),
                segments: c.segments(),
                size_bytes: c.bytes(),
                first_start: Some(to_proto_ts(c.first_start())),
                last_end: Some(to_proto_ts(c.last_end())),
            })
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListCamerasResponse { cameras }))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn list_segments_inner(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let r = request.into_inner();
        let limits = self.node.limits();
        let camera = CameraId::parse(&r.camera_id).map_err(ServerError::from)?;
        let stream = if r.stream.is_empty() {
            None
        } else {
            Some(StreamName::parse(&r.stream).map_err(ServerError::from)?)
        };
        let range = range(r.start, r.end)?;
        range
            .check_span(limits.max_query_span(), "limits.max_query_span_secs")
            .map_err(ServerError::from)?;
        let camera = self.known_camera(camera.as_str()).await?;
        let page_size = match r.page_size {
            0 => limits.default_page_size,
            n => n.min(limits.max_page_size),
        } as usize;
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let page = self
            .node
            .catalog()
            .list_segments(&camera, stream.as_ref(), &range, page_size, token)
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: page.segments.iter().map(segment_info).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn read_segment_inner(
        &self,
        request: Request<pb::ReadSegmentRequest>,
    ) -> Result<Response<BoxStream<pb::ReadSegmentResponse>>, Status> {
        let r = request.into_inner();
        let id = SegmentId::parse(&r.segment_id).map_err(ServerError::from)?;
        let seg = self.node.open_segment(&id).await?;
        let size = seg.record.size;
        if r.offset > size || (r.offset == size && r.length > 0) {
            return Err(Status::out_of_range(format!(
                "offset {} is beyond segment {id} of {size} bytes",
                r.offset
            )));
        }
        let end = if r.length == 0 {
            size
        } else {
            r.offset.saturating_add(r.length).min(size)
        };
        let info = segment_info(&seg.record);
        if r.offset == end {
            // Nothing to read (empty segment or empty range): the info alone.
            let only = pb::ReadSegmentResponse {
                info: Some(info),
                data: bytes::Bytes::new(),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(only)]))));
        }
        let mut info = Some(info);
        let max = self.node.limits().max_message_bytes;
        let out = fit_messages(self.node.read_plaintext(seg, r.offset..end), max).map(move |b| {
            let data = b?;
            Ok(pb::ReadSegmentResponse {
                info: info.take(),
                data,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn export_clip_inner(
        &self,
        request: Request<pb::ExportClipRequest>,
    ) -> Result<Response<BoxStream<pb::ExportClipResponse>>, Status> {
        let r = request.into_inner();
        let limits = self.node.limits();
        let camera = CameraId::parse(&r.camera_id).map_err(ServerError::from)?;
        let stream = StreamName::parse(&r.stream).map_err(ServerError::from)?;
        let range = range(r.start, r.end)?;
        range
            .check_span(limits.max_export_span(), "limits.max_export_span_secs")
            .map_err(ServerError::from)?;
        let camera = self.known_camera(camera.as_str()).await?;
        let mut records = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .node
                .catalog()
                .list_segments(
                    &camera,
                    Some(&stream),
                    &range,
                    limits.max_page_size as usize,
                    token.as_deref(),
                )
                .map_err(ServerError::from)?;
            records.extend(page.segments);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        if records.is_empty() {
            return Err(Status::not_found(format!(
                "no footage of camera {camera} stream {stream} in {range}"
            )));
        }
        if let Some(bad) = records.iter().find(|s| !s.media_type.is_concatenable()) {
            return Err(Status::failed_precondition(format!(
                "segment {} is {}; clips can be exported only from video/mp2t segments (read segments one by one instead)",
                bad.segment_id, bad.media_type
            )));
        }
        // Authenticate every header before the first byte goes out.
        let mut opened: Vec<OpenSegment> = Vec::with_capacity(records.len());
        for rec in &records {
            opened.push(self.node.open_segment(&rec.segment_id).await?);
        }
        let node = self.node.clone();
        let max = self.node.limits().max_message_bytes;
        let mut infos = Some(records.iter().map(segment_info).collect::<Vec<_>>());
        let pieces = futures::stream::iter(opened).flat_map(move |seg| {
            let len = seg.record.size;
            node.read_plaintext(seg, 0..len)
        });
        let out = fit_messages(pieces, max).map(move |b| {
            let data = b?;
            Ok(pb::ExportClipResponse {
                segments: infos.take().unwrap_or_default(),
                data,
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl pb::archive_service_server::ArchiveService for ArchiveApi {
    async fn list_cameras(
        &self,
        request: Request<pb::ListCamerasRequest>,
    ) -> Result<Response<pb::ListCamerasResponse>, Status> {
        let caller = Caller::of(&request);
        let result = self.list_cameras_inner(request).await;
        let target = Target::default();
        let p = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            p,
            "archive.list_cameras",
            target,
            Durability::Footage,
            result,
        )
        .await
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.get_ref();
        let mut target = Target::camera(&r.camera_id);
        target.detail = format!("stream {:?} {}", r.stream, range_detail(&r.start, &r.end));
        let result = self.list_segments_inner(request).await;
        let p = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            p,
            "archive.list_segments",
            target,
            Durability::Footage,
            result,
        )
        .await
    }

    type ReadSegmentStream = BoxStream<pb::ReadSegmentResponse>;

    async fn read_segment(
        &self,
        request: Request<pb::ReadSegmentRequest>,
    ) -> Result<Response<Self::ReadSegmentStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.get_ref();
        let mut target = Target {
            segment: r.segment_id.clone(),
            detail: format!("offset {} length {}", r.offset, r.length),
            ..Default::default()
        };
        if let Ok(Some(rec)) = SegmentId::parse(&r.segment_id)
            .map_err(ServerError::from)
            .and_then(|id| Ok(self.node.catalog().get(&id)?))
        {
            target.cameras = vec![rec.camera.to_string()];
        }
        let started = std::time::Instant::now();
        let result = (self.read_segment_inner(request).await)
            .map(|r| r.map(|s| self.node.metrics.timed_read(&caller.listener, started, s)));
        let p = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            p,
            "archive.read_segment",
            target,
            Durability::Footage,
            result,
        )
        .await
    }

    type ExportClipStream = BoxStream<pb::ExportClipResponse>;

    async fn export_clip(
        &self,
        request: Request<pb::ExportClipRequest>,
    ) -> Result<Response<Self::ExportClipStream>, Status> {
        let caller = Caller::of(&request);
        let r = request.get_ref();
        let mut target = Target::camera(&r.camera_id);
        target.detail = format!("stream {:?} {}", r.stream, range_detail(&r.start, &r.end));
        let result = self.export_clip_inner(request).await;
        let p = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            p,
            "archive.export_clip",
            target,
            Durability::Footage,
            result,
        )
        .await
    }
}
