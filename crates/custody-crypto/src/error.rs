//! The crate's one error type, [`CryptoError`].

use std::path::PathBuf;

use crate::container::MAX_CHUNK_SIZE;
use crate::KeyId;

/// Why a cryptographic operation failed. Each variant is a distinct situation
/// a caller can act on; none of them ever carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key id does not follow its format.
    #[error(
        "invalid key id {0:?}: expected 1..=32 characters of [A-Za-z0-9._-], starting with a letter or digit"
    )]
    InvalidKeyId(String),
    /// Reading, writing or syncing a key file (or its directory) failed.
    #[error("key file {path}: {source}")]
    KeyFileIo {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is accessible by group or others.
    #[error("key file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 600 it)")]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Refused to create a key file over an existing one.
    #[error("key file {0} already exists; refusing to overwrite it")]
    KeyFileExists(PathBuf),
    /// A key file or key environment value is not a valid keyring.
    #[error("invalid keyring in {origin}: {reason}")]
    InvalidKeyring {
        /// Where the keyring came from (a path, or "environment value").
        origin: String,
        /// What is wrong (never includes key material).
        reason: String,
    },
    /// A key with this id is already in the keyring.
    #[error("key id {0} is already in the keyring")]
    DuplicateKeyId(KeyId),
    /// The data was sealed with a key that is not in the keyring.
    #[error("key {0} is not in the keyring")]
    UnknownKey(KeyId),
    /// A chunk size of zero or above [`MAX_CHUNK_SIZE`].
    #[error("chunk size {0} is outside 1..={MAX_CHUNK_SIZE}")]
    InvalidChunkSize(u32),
    /// The bytes do not start with the segment magic.
    #[error("not a custody segment (bad magic)")]
    NotASegment,
    /// The container version is not one this build reads.
    #[error("unsupported segment container version {0}")]
    UnsupportedVersion(u8),
    /// Structurally invalid data (bad lengths, fields, or trailing bytes).
    #[error("malformed {0}")]
    Malformed(String),
    /// Fewer bytes than the format requires.
    #[error("truncated {what}: need {expected} bytes, have {found}")]
    Truncated {
        /// What was cut short.
        what: String,
        /// Bytes required.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A tag did not verify: wrong key, tampering, reordering or truncation.
    #[error("authentication failed for {part}: wrong key or tampered data")]
    Authentication {
        /// Which part failed ("header", "wrapped data key", "chunk 3", "footer", ...).
        part: String,
    },
    /// A chunk index past the end of the segment.
    #[error("chunk index {index} out of range (segment has {count} chunks)")]
    ChunkOutOfRange {
        /// The requested index.
        index: u64,
        /// Chunks in the segment.
        count: u64,
    },
    /// An authentic segment that is not the one the caller expected.
    #[error("segment mismatch: expected {expected}, found {found}")]
    Mismatch {
        /// What the caller expected.
        expected: String,
        /// What the segment header says.
        found: String,
    },
    /// Reading the segment object failed.
    #[error("reading segment: {0}")]
    Read(#[source] std::io::Error),
    /// A record kind that does not follow its format.
    #[error("invalid record kind {0:?}: expected 1..=64 characters of [A-Za-z0-9._-]")]
    InvalidRecordKind(String),
    /// A record payload above the 4 GiB format limit.
    #[error("record payload of {0} bytes exceeds the u32 length limit")]
    RecordTooLarge(usize),
    /// An authentic record of a different kind than expected.
    #[error("record kind is {found:?}, expected {expected:?}")]
    WrongRecordKind {
        /// The kind the caller asked for.
        expected: String,
        /// The kind in the record.
        found: String,
    },
    /// An Ed25519 signature that does not verify under the given public key.
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// A public key that is not an Ed25519 key in PEM (SubjectPublicKeyInfo).
    #[error("invalid Ed25519 public key: {0}")]
    InvalidPublicKey(String),
}
