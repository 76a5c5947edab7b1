//! Validated identifiers. Parsing is the one place that says why input is bad.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{InvalidInput, Timestamp};

/// Longest camera id accepted.
pub(crate) const MAX_CAMERA_ID_LEN: usize = 64;
/// Longest stream name accepted.
pub(crate) const MAX_STREAM_LEN: usize = 32;
/// Longest media type accepted.
pub(crate) const MAX_MEDIA_TYPE_LEN: usize = 64;

fn bad(kind: &'static str, value: &str, rule: &'static str) -> InvalidInput {
    InvalidInput::Id {
        kind,
        value: value.chars().take(80).collect(),
        rule,
    }
}

/// A camera id: 1..=64 characters of `[A-Za-z0-9._-]`, starting with a letter
/// or digit (safe as an object key component).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CameraId(String);

impl CameraId {
    /// Parses and validates a camera id.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const RULE: &str = "1..=64 characters of [A-Za-z0-9._-], starting with a letter or digit";
        if s.is_empty() || s.len() > MAX_CAMERA_ID_LEN {
            return Err(bad("camera id", s, RULE));
        }
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok {
            return Err(bad("camera id", s, RULE));
        }
        Ok(CameraId(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CameraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stream name within a camera (`main`, `sub`): 1..=32 characters of
/// `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamName(String);

impl StreamName {
    /// The default stream, `main`.
    pub fn main() -> Self {
        StreamName("main".to_string())
    }

    /// Parses a stream name; the empty string means `main`.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const RULE: &str = "1..=32 characters of [a-z0-9_-], starting with a letter or digit";
        if s.is_empty() {
            return Ok(Self::main());
        }
        let first_ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
        if s.len() > MAX_STREAM_LEN || !first_ok || !rest_ok {
            return Err(bad("stream", s, RULE));
        }
        Ok(StreamName(s.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A segment id: 128 bits, written as 32 lowercase hex digits.
///
/// Derived from (camera, stream, start, sequence), so a retried upload of the
/// same segment gets the same id wherever it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentId([u8; 16]);

impl SegmentId {
    /// The id of the segment identified by `(camera, stream, start, sequence)`.
    pub fn derive(camera: &CameraId, stream: &StreamName, start: Timestamp, sequence: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"custody-segment-id-v1\0");
        h.update(camera.as_str().as_bytes());
        h.update([0]);
        h.update(stream.as_str().as_bytes());
        h.update([0]);
        h.update(start.as_nanos().to_be_bytes());
        h.update(sequence.to_be_bytes());
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        SegmentId(id)
    }

    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const RULE: &str = "32 lowercase hex digits";
        if s.len() != 32
            || !s
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(bad("segment id", s, RULE));
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).map_err(|_| bad("segment id", s, RULE))?;
        Ok(SegmentId(id))
    }

    /// From raw bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        SegmentId(b)
    }

    /// Raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A media type such as `video/mp2t` or `video/mp4`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MediaType(String);

impl MediaType {
    /// MPEG transport stream, the type whose segments concatenate into a valid clip.
    pub const MPEG_TS: &'static str = "video/mp2t";

    /// Parses `type/subtype` (lowercase letters, digits, `.+-`), at most 64 characters.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        const RULE: &str = "type/subtype of [a-z0-9.+-], at most 64 characters";
        let tok = |t: &str| {
            !t.is_empty()
                && t.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '+' | '-')
                })
        };
        match s.split_once('/') {
            Some((a, b)) if s.len() <= MAX_MEDIA_TYPE_LEN && tok(a) && tok(b) => {
                Ok(MediaType(s.to_string()))
            }
            _ => Err(bad("media type", s, RULE)),
        }
    }

    /// The media type as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether segments of this type can be concatenated into one valid stream.
    pub fn is_concatenable(&self) -> bool {
        self.0 == Self::MPEG_TS
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_ids() {
        for ok in ["cam-001", "A", "gate.north_2", &"x".repeat(64)] {
            assert!(CameraId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-cam",
            ".x",
            "cam/1",
            "cam 1",
            "caméra",
            &"x".repeat(65),
            "..",
        ] {
            assert!(CameraId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn streams() {
        assert_eq!(StreamName::parse("").unwrap().as_str(), "main");
        assert!(StreamName::parse("sub").is_ok());
        assert!(StreamName::parse("Main").is_err());
        assert!(StreamName::parse("a/b").is_err());
    }

    #[test]
    fn segment_ids_round_trip_and_are_stable() {
        let c = CameraId::parse("cam-1").unwrap();
        let s = StreamName::main();
        let a = SegmentId::derive(&c, &s, Timestamp::from_secs(5), 0);
        assert_eq!(a, SegmentId::derive(&c, &s, Timestamp::from_secs(5), 0));
        assert_ne!(a, SegmentId::derive(&c, &s, Timestamp::from_secs(5), 1));
        assert_ne!(
            a,
            SegmentId::derive(
                &c,
                &StreamName::parse("sub").unwrap(),
                Timestamp::from_secs(5),
                0
            )
        );
        assert_eq!(SegmentId::parse(&a.to_string()).unwrap(), a);
        assert!(SegmentId::parse("ABCDEF0123456789abcdef0123456789").is_err());
        assert!(SegmentId::parse("abc").is_err());
    }

    #[test]
    fn media_types() {
        assert!(MediaType::parse("video/mp2t").unwrap().is_concatenable());
        assert!(!MediaType::parse("video/mp4").unwrap().is_concatenable());
        for bad in [
            "video",
            "/mp4",
            "video/",
            "Video/MP4",
            "video/mp4; codecs=x",
        ] {
            assert!(MediaType::parse(bad).is_err(), "{bad}");
        }
    }
}
