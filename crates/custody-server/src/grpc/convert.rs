//! Conversions between wire (prost) types and domain types.

use custody_catalog::SegmentRecord;
use custody_core::{InvalidInput, TimeRange, Timestamp};
use custody_proto::v1 as pb;

use crate::ServerError;

/// A wire timestamp as a domain instant; `field` names it in errors.
pub fn from_proto_ts(
    t: Option<prost_types::Timestamp>,
    field: &'static str,
) -> Result<Timestamp, ServerError> {
    let t = t.ok_or(InvalidInput::Missing(field))?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ServerError::Invalid(format!(
            "{field}.nanos {} is outside 0..1e9",
            t.nanos
        )));
    }
    Ok(Timestamp::from_parts(t.seconds, t.nanos)?)
}

/// A domain instant as a wire timestamp.
pub fn to_proto_ts(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

/// `[start, end)` from two wire timestamps.
pub(crate) fn range(
    start: Option<prost_types::Timestamp>,
    end: Option<prost_types::Timestamp>,
) -> Result<TimeRange, ServerError> {
    Ok(TimeRange::new(
        from_proto_ts(start, "start")?,
        from_proto_ts(end, "end")?,
    )?)
}

/// A catalog record as wire `SegmentInfo`.
pub fn segment_info(r: &SegmentRecord) -> pb::SegmentInfo {
    pb::SegmentInfo {
        segment_id: r.segment_id.to_string(),
        camera_id: r.camera.to_string(),
        stream: r.stream.to_string(),
        start: Some(to_proto_ts(r.range.start())),
        end: Some(to_proto_ts(r.range.end())),
        media_type: r.media_type.to_string(),
        sequence: r.sequence,
        size_bytes: r.size,
        stored_bytes: r.stored_size,
        sha256: hex::encode(r.sha256),
        key_id: r.key_id.clone(),
        ingested_at: Some(to_proto_ts(r.ingested_at)),
        object_key: r.object_key.clone(),
    }
}

/// A 32-byte digest from the wire; empty means absent.
pub(crate) fn digest(b: &[u8], field: &'static str) -> Result<Option<[u8; 32]>, ServerError> {
    if b.is_empty() {
        return Ok(None);
    }
    b.try_into()
        .map(Some)
        .map_err(|_| ServerError::Invalid(format!("{field} must be 32 bytes, got {}", b.len())))
}
