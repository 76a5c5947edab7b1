//! The object layout: every fact needed to rebuild the index is in the key.
//!
//! ```text
//! segments/{camera}/{stream}/{YYYY}/{MM}/{DD}/{HH}/{start}_{end}_{sequence}_{segment_id}.cseg
//! ```
//! with `start` and `end` as compact UTC instants (`20261124T100000.000000000Z`).
//! The hour directories keep local directories small; the camera prefix lets
//! one camera be listed alone.

use chrono::{Datelike, Timelike};
use custody_core::{CameraId, SegmentId, StreamName, TimeRange, Timestamp};
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
    /// Time range covered.
    pub range: TimeRange,
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
        let start = self.range.start().to_datetime();
        let name = format!(
            "{}_{}_{}_{}.{SEGMENT_EXT}",
            compact(self.range.start()),
            compact(self.range.end()),
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
        let end = parse_compact(fields.next()?)?;
        let sequence = fields.next()?.parse().ok()?;
        let segment_id = SegmentId::parse(fields.next()?).ok()?;
        if fields.next().is_some() {
            return None;
        }
        let range = TimeRange::new(start, end).ok()?;
        let key = SegmentKey {
            camera,
            stream,
            range,
            sequence,
            segment_id,
        };
        // The directory part must agree with the name: a moved object is not ours.
        (key.path() == *path).then_some(key)
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
        let end = Timestamp::parse_rfc3339("2026-11-24T10:00:06Z").unwrap();
        let key = SegmentKey {
            segment_id: SegmentId::derive(&camera, &stream, start, 3),
            camera,
            stream,
            range: TimeRange::new(start, end).unwrap(),
            sequence: 3,
        };
        let p = key.path();
        assert!(p
            .as_ref()
            .starts_with("segments/cam-7/main/2026/11/24/10/20261124T100000.250000000Z_"));
        assert_eq!(SegmentKey::parse(&p), Some(key));
    }

    #[test]
    fn foreign_or_moved_keys_are_not_parsed() {
        assert_eq!(SegmentKey::parse(&Path::from("segments/x")), None);
        assert_eq!(SegmentKey::parse(&Path::from("holds/abc.rec")), None);
        let moved = Path::from(
            "segments/cam-7/main/2026/11/25/10/20261124T100000.250000000Z_20261124T100006.000000000Z_3_0123456789abcdef0123456789abcdef.cseg",
        );
        assert_eq!(SegmentKey::parse(&moved), None);
    }
}
