//! Input limits, each named in the server config (`[limits]`) and enforced at the edge.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every limit the server enforces on input. Field names are the config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest segment accepted, in bytes (plaintext).
    pub max_segment_bytes: u64,
    /// Smallest segment accepted, in bytes (plaintext): an empty segment is
    /// a recorder's fault, not footage, and is refused by default.
    pub min_segment_bytes: u64,
    /// Longest segment accepted (end - start), in seconds.
    pub max_segment_duration_secs: u64,
    /// Longest time range a listing may ask for, in seconds.
    pub max_query_span_secs: u64,
    /// Longest time range one clip export may cover, in seconds.
    pub max_export_span_secs: u64,
    /// Largest page a listing returns.
    pub max_page_size: u32,
    /// Page size when the caller gives none.
    pub default_page_size: u32,
    /// Largest gRPC message accepted, in bytes (bounds one upload chunk).
    pub max_message_bytes: usize,
    /// How far in the future (by the server's clock) a segment may end, in
    /// seconds: footage from a camera with a wrong clock is refused.
    pub max_clock_skew_secs: u64,
    /// How long an upload may send nothing before the server abandons it,
    /// in seconds: a frozen client must not hold its segment forever.
    pub upload_idle_timeout_secs: u64,
    /// Bytes kept free on the file systems of the catalog and of a local
    /// store: an upload that would leave less is refused
    /// (RESOURCE_EXHAUSTED), so on a nearly full disk the audit log, holds
    /// and retention's deletions keep working, and ingest resumes by itself
    /// once retention frees space. 0 turns the check off.
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_segment_bytes: 256 * 1024 * 1024,
            min_segment_bytes: 1,
            max_segment_duration_secs: 600,
            max_query_span_secs: 31 * 24 * 3600,
            max_export_span_secs: 24 * 3600,
            max_page_size: 1000,
            default_page_size: 100,
            max_message_bytes: 4 * 1024 * 1024,
            max_clock_skew_secs: 300,
            upload_idle_timeout_secs: 30,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// `max_segment_duration_secs` as a duration.
    pub fn max_segment_duration(&self) -> Duration {
        Duration::from_secs(self.max_segment_duration_secs)
    }

    /// `upload_idle_timeout_secs` as a duration.
    pub fn upload_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.upload_idle_timeout_secs)
    }

    /// `max_query_span_secs` as a duration.
    pub fn max_query_span(&self) -> Duration {
        Duration::from_secs(self.max_query_span_secs)
    }

    /// `max_export_span_secs` as a duration.
    pub fn max_export_span(&self) -> Duration {
        Duration::from_secs(self.max_export_span_secs)
    }
}
