//! The audit objects in the store: sealed batches of records and sealed
//! heads (checkpoints), and the keys they live under.

use custody_crypto::{open_record, seal_record, Kek, Keyring};
use serde::{Deserialize, Serialize};

use crate::record::parse_digest;
use crate::{AuditError, AuditRecord, Digest};

/// Prefix of every audit object.
pub const AUDIT_PREFIX: &str = "audit";
/// Prefix of the heads (checkpoints).
pub const HEADS_PREFIX: &str = "audit/heads";
/// Record kind of a sealed batch.
pub const BATCH_KIND: &str = "audit-batch";
/// Record kind of a sealed head.
pub const HEAD_KIND: &str = "audit-head";

/// The key of the batch holding records `first..=last`.
pub fn batch_key(first: u64, last: u64) -> String {
    format!("{AUDIT_PREFIX}/{first:020}-{last:020}.rec")
}

/// The key of the head at `seq`.
pub fn head_key(seq: u64) -> String {
    format!("{HEADS_PREFIX}/{seq:020}.head")
}

/// What an object key under `audit/` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectName {
    /// A batch of records `first..=last`.
    Batch {
        /// First sequence number.
        first: u64,
        /// Last sequence number.
        last: u64,
    },
    /// A head at `seq`.
    Head {
        /// Sequence number the head names.
        seq: u64,
    },
}

/// Parses a key written by [`batch_key`] or [`head_key`]; `None` otherwise.
pub fn parse_key(key: &str) -> Option<ObjectName> {
    if let Some(name) = key
        .strip_prefix(HEADS_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
    {
        let seq = name.strip_suffix(".head")?;
        let seq = seq.parse().ok()?;
        return (head_key(seq) == key).then_some(ObjectName::Head { seq });
    }
    let name = key.strip_prefix(AUDIT_PREFIX)?.strip_prefix('/')?;
    let (first, last) = name.strip_suffix(".rec")?.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (batch_key(first, last) == key && first <= last && first > 0)
        .then_some(ObjectName::Batch { first, last })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    records: Vec<AuditRecord>,
}

/// Seals a batch of records under `kek`.
pub fn seal_batch(kek: &Kek, records: &[AuditRecord]) -> Result<Vec<u8>, AuditError> {
    #[derive(Serialize)]
    struct BatchRef<'a> {
        records: &'a [AuditRecord],
    }
    let payload = serde_json::to_vec(&BatchRef { records })
        .map_err(|e| AuditError::Payload(e.to_string()))?;
    Ok(seal_record(kek, BATCH_KIND, &payload)?)
}

/// Authenticates a sealed batch and returns its records.
pub fn open_batch(keyring: &Keyring, bytes: &[u8]) -> Result<Vec<AuditRecord>, AuditError> {
    let payload = open_record(keyring, BATCH_KIND, bytes)?;
    let b: Batch =
        serde_json::from_slice(&payload).map_err(|e| AuditError::Payload(e.to_string()))?;
    Ok(b.records)
}

/// A checkpoint of the chain: its last record, and the node's keyring as it
/// was then (so a restart can tell which key operations happened meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Last sequence number.
    pub seq: u64,
    /// Hex digest of record `seq`.
    pub digest: String,
    /// When the head was written (RFC 3339).
    pub at: String,
    /// The batch object holding record `seq`.
    #[serde(default)]
    pub object: String,
    /// Ids of the KEKs the node had.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Id of the active KEK.
    #[serde(default)]
    pub active_key: String,
}

impl Head {
    /// The digest as bytes, if well-formed.
    pub fn digest_bytes(&self) -> Option<Digest> {
        parse_digest(&self.digest)
    }
}

/// Seals a head under `kek`.
pub fn seal_head(kek: &Kek, head: &Head) -> Result<Vec<u8>, AuditError> {
    let payload = serde_json::to_vec(head).map_err(|e| AuditError::Payload(e.to_string()))?;
    Ok(seal_record(kek, HEAD_KIND, &payload)?)
}

/// Authenticates a sealed head.
pub fn open_head(keyring: &Keyring, bytes: &[u8]) -> Result<Head, AuditError> {
    let payload = open_record(keyring, HEAD_KIND, bytes)?;
    serde_json::from_slice(&payload).map_err(|e| AuditError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_foreign_keys_are_refused() {
        assert_eq!(
            parse_key(&batch_key(1, 3)),
            Some(ObjectName::Batch { first: 1, last: 3 })
        );
        assert_eq!(parse_key(&head_key(7)), Some(ObjectName::Head { seq: 7 }));
        for bad in [
            "audit/1-3.rec",
            "audit/00000000000000000003-00000000000000000001.rec",
            "audit/00000000000000000000-00000000000000000001.rec",
            "audit/heads/7.head",
            "audit/x.rec",
            "holds/00000000000000000001-00000000000000000001.rec",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
