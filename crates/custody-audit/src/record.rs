//! One audit record, its canonical encoding and its digest.

use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A SHA-256 digest, hex-encoded in records and heads.
pub type Digest = [u8; 32];

/// The `prev` digest of the first record (seq 1).
pub const GENESIS: Digest = [0u8; 32];

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// Refused before anything changed: bad input, not found, not allowed.
    Refused,
    /// Accepted but failed (store or index unavailable, data loss).
    Failed,
}

impl Outcome {
    /// The outcome's name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    /// Parses an outcome name.
    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Ok, Outcome::Refused, Outcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// One audited event. Field order is the canonical encoding: never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Hex SHA-256 of the previous record ([`GENESIS`] for seq 1).
    pub prev: String,
    /// When the event happened (RFC 3339, UTC).
    pub at: String,
    /// Who: the authenticated principal (or `local`, `local:NAME`, `custodyd`).
    pub principal: String,
    /// The listener (network segment) the request arrived on, or `node`.
    pub listener: String,
    /// What, e.g. `archive.read_segment`, `hold.create`, `sweep.delete`, `key.activate`.
    pub action: String,
    /// Cameras concerned (`*` for every camera).
    pub cameras: Vec<String>,
    /// Segment concerned, if one.
    pub segment: String,
    /// Hold concerned, if one.
    pub hold: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or failed (the status message); empty when ok.
    pub reason: String,
    /// Anything else worth keeping: time range, policy scope, sizes.
    pub detail: String,
    /// The cluster node that wrote the record; empty for a node without a
    /// cluster (and then left out of the encoding, so chains written
    /// before the field existed verify unchanged).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl AuditRecord {
    /// The canonical encoding: compact JSON in field order.
    pub fn canonical(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and a unit enum cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical encoding; the next record's `prev`.
    pub fn digest(&self) -> Digest {
        use sha2::Digest as _;
        Sha256::digest(self.canonical()).into()
    }

    /// The `prev` field as bytes, if it is 64 hex digits.
    pub fn prev_digest(&self) -> Option<Digest> {
        parse_digest(&self.prev)
    }

    /// Whether the record concerns `camera` (a `*` record concerns every camera).
    pub fn concerns_camera(&self, camera: &str) -> bool {
        self.cameras.iter().any(|c| c == camera || c == "*")
    }

    /// Whether the record's action is `filter` or under it (`hold` matches `hold.create`).
    pub fn action_matches(&self, filter: &str) -> bool {
        self.action == filter
            || self
                .action
                .strip_prefix(filter)
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// Parses 64 hex digits.
pub(crate) fn parse_digest(s: &str) -> Option<Digest> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}
