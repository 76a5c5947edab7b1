//! Custody's audit chain: the record format, the digest chain, sealed batch
//! and checkpoint objects, and offline verification.
//!
//! Every read, export, hold, release, policy change, key operation, deletion
//! and refused request becomes an [`AuditRecord`]. Records are numbered from
//! 1 (`seq`) and each carries the SHA-256 digest of the one before (`prev`),
//! so the chain fixes their order; the digest of a record is the SHA-256 of
//! its canonical JSON encoding ([`AuditRecord::digest`]).
//!
//! Records reach the object store in group-committed **batches**, one
//! create-only object per batch, named by the sequence numbers it holds:
//!
//! ```text
//! audit/{first:020}-{last:020}.rec    one sealed "audit-record" per record, concatenated
//! audit/heads/{seq:020}.head           sealed "audit-head": {"seq", "digest", "at", "object", "keys", "active_key"}
//! audit/claims/{first:020}.claim       sealed "audit-claim": the batch key its writer is about to write
//! ```
//!
//! Several writers (the nodes of a cluster) share one chain: before writing
//! a batch a writer takes the claim on its first sequence number,
//! create-only, so two writers cannot both append after the same record
//! with batches of different lengths; the loser re-reads the tail and
//! renumbers. A claim whose batch never appears (its writer died) is filled
//! with `audit.void` records by the next writer, so the chain has no hole.
//!
//! Every record and head is sealed on its own with `custody-crypto`'s record
//! sealing (GMAC under a key derived from the active KEK), so an edit is
//! pinned to the one record it touched; the JSON payloads stay readable
//! with standard tools (`strings`, `grep`). A **head** (checkpoint) names the
//! last sequence number and its digest after each batch; a verifier that
//! holds an earlier head (`custody audit head > head.json`) notices records
//! cut from the tail even if the heads in the store were removed too.
//!
//! This crate is I/O-free: [`verify`] takes `(object key, bytes)` pairs and
//! a keyring and names every problem (edited, removed, reordered, inserted,
//! truncated) by sequence number and object. Listing the store is the job of
//! the server and the CLI.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod object;
mod record;
mod verify;

pub use object::{
    batch_key, claim_key, head_key, open_batch, open_claim, open_head, parse_key, seal_batch,
    seal_claim, seal_head, Head, ObjectName, OpenedBatch, AUDIT_PREFIX, CLAIMS_PREFIX, CLAIM_KIND,
    HEADS_PREFIX, HEAD_KIND, RECORD_KIND,
};
pub use record::{AuditRecord, Digest, Outcome, GENESIS};
pub use verify::{verify, Problem, ProblemKind, TrustedHead, VerifyReport};

/// Why an audit object could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Sealing or opening failed (wrong key, edited bytes, malformed envelope).
    #[error("{0}")]
    Crypto(#[from] custody_crypto::CryptoError),
    /// The sealed payload is not the JSON this crate writes.
    #[error("payload: {0}")]
    Payload(String),
}
