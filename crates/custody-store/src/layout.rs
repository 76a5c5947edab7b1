//! The object layout of segments.
//!
//! ```text
//! segments/{camera}/{stream}/{YYYY}/{MM}/{DD}/{HH}/{start}_{sequence}_{segment_id}.cseg
//! ```
//! with `start` as a compact UTC instant (`20261124T100000.000000000Z`).
//! The key is a function of exactly what the segment id is derived from
//! (camera, stream, start, sequence): one segment id has one possible key, so
//! a create-only write can never leave two objects carrying one id. The end
//! of the range is in the object's authenticated header. The hour
//! directories keep local directories small; the camera prefix lets one
//! camera be listed alone.

use chrono::{Datelike, Timelike};
use custody_core::{CameraId, SegmentId, StreamName, Timestamp};
use object_store::path::Path;

/// Top-level prefix of segment objects.
pub const SEGMENTS_PREFIX: &str = "segments";
/// File extension of segment containers.
pub const SEGMENT_EXT: &str = "cseg";

/// What a segment object's key says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentKey {
    /// Camera id.
    pub camera: CameraId,
    /// Stream name.
    pub stream: StreamName,
    /// Start of the time range covered.
    pub start: Timestamp,
    /// Upload sequence number.
    pub sequence: u64,
    /// Segment id.
    pub segment_id: SegmentId,
}

fn compact(t: Timestamp) -> String {
    t.to_datetime().format("%Y%m%dT%H%M%S%.9fZ").to_string()
}

fn parse_compact(s: &str) -> Option<Timestamp> {
    let dt = chrono::NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%S%.9fZ").ok()?;
    dt.and_utc()
        .timestamp_nanos_opt()
        .map(Timestamp::from_nanos)
}

impl SegmentKey {
    /// The object key of this segment.
    pub fn path(&self) -> Path {
        let start = self.start.to_datetime();
        let name = format!(
            "{}_{}_{}.{SEGMENT_EXT}",
            compact(self.start),
            self.sequence,
            self.segment_id
        );
        Path::from_iter([
            SEGMENTS_PREFIX.to_string(),
            self.camera.to_string(),
            self.stream.to_string(),
            format!("{:04}", start.year()),
            format!("{:02}", start.month()),
            format!("{:02}", start.day()),
            format!("{:02}", start.hour()),
            name,
        ])
    }

    /// Parses a key written by [`SegmentKey::path`]; `None` for anything else.
    pub fn parse(path: &Path) -> Option<SegmentKey> {
        let parts: Vec<_> = path.parts().collect();
        if parts.len() != 8 || parts[0].as_ref() != SEGMENTS_PREFIX {
            return None;
        }
        let camera = CameraId::parse(parts[1].as_ref()).ok()?;
        let stream = StreamName::parse(parts[2].as_ref()).ok()?;
        let name = parts[7].as_ref().strip_suffix(&format!(".{SEGMENT_EXT}"))?;
        let mut fields = name.split('_');
        let start = parse_compact(fields.next()?)?;
        let sequence = fields.next()?.parse().ok()?;
        let segment_id = SegmentId::parse(fields.next()?).ok()?;
        if fields.next().is_some() {
            return None;
        }
        let key = SegmentKey {
            camera,
            stream,
            start,
            sequence,
            segment_id,
        };
        // The directory part must agree with the name, and the id with what
        // it is derived from: a moved or renamed object is not ours.
        let derived = SegmentId::derive(&key.camera, &key.stream, key.start, key.sequence);
        (key.path() == *path && derived == key.segment_id).then_some(key)
    }
}

/// Prefix holding every segment of a camera.
pub fn camera_prefix(camera: &CameraId) -> Path {
    Path::from_iter([SEGMENTS_PREFIX, camera.as_str()])
}

/// Prefix holding every segment object.
pub fn segments_prefix() -> Path {
    Path::from(SEGMENTS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip() {
        let camera = CameraId::parse("cam-7").unwrap();
        let stream = StreamName::main();
        let start = Timestamp::parse_rfc3339("2026-11-24T10:00:00.25Z").unwrap();
        let key = SegmentKey {
            segment_id: SegmentId::derive(&camera, &stream, start, 3),
            camera,
            stream,
            start,
            sequence: 3,
        };
        let p = key.path();
        assert_eq!(
            p.as_ref(),
            format!(
                "segments/cam-7/main/2026/11/24/10/20261124T100000.250000000Z_3_{}.cseg",
                key.segment_id
            )
        );
        assert_eq!(SegmentKey::parse(&p), Some(key.clone()));
        // An id that was not derived from the key's fields is not ours.
        let other = SegmentId::derive(&key.camera, &key.stream, start, 4);
        let forged = Path::from(
            p.as_ref()
                .replace(&key.segment_id.to_string(), &other.to_string()),
        );
        assert_eq!(SegmentKey::parse(&forged), None);
    }

    #[test]
    fn foreign_or_moved_keys_are_not_parsed() {
        assert_eq!(SegmentKey::parse(&Path::from("segments/x")), None);
        assert_eq!(SegmentKey::parse(&Path::from("holds/abc.rec")), None);
        let camera = CameraId::parse("cam-7").unwrap();
        let start = Timestamp::parse_rfc3339("2026-11-24T10:00:00.25Z").unwrap();
        let id = SegmentId::derive(&camera, &StreamName::main(), start, 3);
        let moved = Path::from(format!(
            "segments/cam-7/main/2026/11/25/10/20261124T100000.250000000Z_3_{id}.cseg"
        ));
        assert_eq!(SegmentKey::parse(&moved), None);
    }
}
