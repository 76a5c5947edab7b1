//! The audit objects in the store: sealed batches of records and sealed
//! heads (checkpoints), and the keys they live under.

use custody_crypto::{open_record, seal_record, sealed_record_len, Kek, Keyring};
use serde::{Deserialize, Serialize};

use crate::record::parse_digest;
use crate::{AuditError, AuditRecord, Digest};

/// Prefix of every audit object.
pub const AUDIT_PREFIX: &str = "audit";
/// Prefix of the heads (checkpoints).
pub const HEADS_PREFIX: &str = "audit/heads";
/// Record kind of each sealed record in a batch.
pub const RECORD_KIND: &str = "audit-record";
/// Record kind of a sealed head.
pub const HEAD_KIND: &str = "audit-head";
/// Prefix of the claims several writers (cluster nodes) take on a batch's
/// first sequence number before writing it.
pub const CLAIMS_PREFIX: &str = "audit/claims";
/// Record kind of a sealed claim.
pub const CLAIM_KIND: &str = "audit-claim";

/// The key of the claim on sequence number `first`.
pub fn claim_key(first: u64) -> String {
    format!("{CLAIMS_PREFIX}/{first:020}.claim")
}

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
    /// A writer's claim on the batch starting at `first`.
    Claim {
        /// First sequence number of the claimed batch.
        first: u64,
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
    if let Some(name) = key
        .strip_prefix(CLAIMS_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
    {
        let first = name.strip_suffix(".claim")?.parse().ok()?;
        return (claim_key(first) == key).then_some(ObjectName::Claim { first });
    }
    let name = key.strip_prefix(AUDIT_PREFIX)?.strip_prefix('/')?;
    let (first, last) = name.strip_suffix(".rec")?.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (batch_key(first, last) == key && first <= last && first > 0)
        .then_some(ObjectName::Batch { first, last })
}

/// Seals a claim: the key of the batch its writer is about to write.
pub fn seal_claim(kek: &Kek, batch_key: &str) -> Result<Vec<u8>, AuditError> {
    Ok(seal_record(kek, CLAIM_KIND, batch_key.as_bytes())?)
}

/// Opens a claim; returns the batch key it names.
pub fn open_claim(keyring: &Keyring, bytes: &[u8]) -> Result<String, AuditError> {
    let payload = open_record(keyring, CLAIM_KIND, bytes)?;
    String::from_utf8(payload).map_err(|_| AuditError::Payload("claim is not UTF-8".into()))
}

/// Seals each record on its own (so an edit is pinned to one record) and
/// concatenates them into one batch object.
pub fn seal_batch(kek: &Kek, records: &[AuditRecord]) -> Result<Vec<u8>, AuditError> {
    let mut out = Vec::new();
    for r in records {
        out.extend(seal_record(kek, RECORD_KIND, &r.canonical())?);
    }
    Ok(out)
}

/// A batch object split into its records, each authenticated on its own.
#[derive(Debug)]
pub struct OpenedBatch {
    /// Each sealed record in object order: the record, or why it is not authentic.
    pub records: Vec<Result<AuditRecord, AuditError>>,
    /// Why the bytes after the last record could not be split into records.
    pub unreadable_tail: Option<String>,
}

impl OpenedBatch {
    /// The authentic records.
    pub fn authentic(self) -> Vec<AuditRecord> {
        self.records.into_iter().filter_map(Result::ok).collect()
    }
}

/// Splits a batch object into its sealed records and authenticates each.
pub fn open_batch(keyring: &Keyring, bytes: &[u8]) -> OpenedBatch {
    let mut records = Vec::new();
    let mut rest = bytes;
    let mut unreadable_tail = None;
    while !rest.is_empty() {
        let len = match sealed_record_len(rest) {
            Ok(n) => n,
            Err(e) => {
                unreadable_tail = Some(e.to_string());
                break;
            }
        };
        let (one, tail) = rest.split_at(len);
        rest = tail;
        records.push(
            open_record(keyring, RECORD_KIND, one)
                .map_err(AuditError::from)
                .and_then(|p| {
                    serde_json::from_slice(&p).map_err(|e| AuditError::Payload(e.to_string()))
                }),
        );
    }
    OpenedBatch {
        records,
        unreadable_tail,
    }
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
