//! Human and JSON output of the client.

use custody_proto::v1 as pb;
use serde_json::{json, Value};

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| custody_core::Timestamp::from_parts(t.seconds, t.nanos).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A segment as JSON.
pub fn segment_json(s: &pb::SegmentInfo) -> Value {
    json!({
        "segment_id": s.segment_id,
        "camera_id": s.camera_id,
        "stream": s.stream,
        "start": ts(&s.start),
        "end": ts(&s.end),
        "media_type": s.media_type,
        "sequence": s.sequence,
        "size_bytes": s.size_bytes,
        "stored_bytes": s.stored_bytes,
        "sha256": s.sha256,
        "key_id": s.key_id,
        "ingested_at": ts(&s.ingested_at),
    })
}

/// A segment as one human line.
pub fn segment_line(s: &pb::SegmentInfo) -> String {
    format!(
        "{}  {} {:<5} {} → {}  {:>10} B  {}",
        s.segment_id,
        s.camera_id,
        s.stream,
        ts(&s.start),
        ts(&s.end),
        s.size_bytes,
        s.media_type
    )
}

/// A camera as JSON.
pub fn camera_json(c: &pb::CameraInfo) -> Value {
    json!({
        "camera_id": c.camera_id,
        "segments": c.segments,
        "size_bytes": c.size_bytes,
        "first_start": ts(&c.first_start),
        "last_end": ts(&c.last_end),
    })
}

/// A camera as one human line.
pub fn camera_line(c: &pb::CameraInfo) -> String {
    format!(
        "{:<24} {:>8} segments {:>14} B  {} → {}",
        c.camera_id,
        c.segments,
        c.size_bytes,
        ts(&c.first_start),
        ts(&c.last_end)
    )
}
