//! Values stored in the catalog.

use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange, Timestamp};
use serde::{Deserialize, Serialize};

/// Everything the index knows about one stored segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Segment id.
    pub segment_id: SegmentId,
    /// Camera id.
    pub camera: CameraId,
    /// Stream name.
    pub stream: StreamName,
    /// Time range covered.
    pub range: TimeRange,
    /// Upload sequence number.
    pub sequence: u64,
    /// Media type of the plaintext.
    pub media_type: MediaType,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Encrypted object size in bytes.
    pub stored_size: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// Id of the KEK wrapping the data key.
    pub key_id: String,
    /// When the segment was stored.
    pub ingested_at: Timestamp,
    /// Object key in the store.
    pub object_key: String,
    /// When retention ends for this segment (ignoring holds); `None` when no
    /// policy applies (kept until one does).
    pub expires_at: Option<Timestamp>,
}

/// What the catalog knows about one camera.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraSummary {
    /// Camera id.
    pub camera: CameraId,
    /// Number of segments.
    pub segments: u64,
    /// Plaintext bytes.
    pub bytes: u64,
    /// Earliest segment start.
    pub first_start: Timestamp,
    /// Latest segment end.
    pub last_end: Timestamp,
    /// Streams seen.
    pub streams: Vec<StreamName>,
}
