//! The segment container: one encrypted object per video segment.
//!
//! ```text
//! prefix:  magic "CSTDYSEG" | version u8 = 1 | header_len u32 LE | header | header_tag (16)
//! chunks:  AES-256-GCM(DEK, nonce(i, flag), chunk_i, aad = header_digest) = ciphertext || tag
//! footer:  plaintext_len u64 LE | sha256(plaintext) (32) | footer_tag (16)
//! ```
//!
//! Nonces follow the STREAM construction (`counter u64 BE || flag u32 BE`;
//! flag 0 = data chunk, 1 = last data chunk, 2 = header tag, 3 = footer tag),
//! so reordering, dropping or truncating chunks fails authentication. Every
//! chunk but the last holds exactly `chunk_size` plaintext bytes; the last holds
//! 1..=chunk_size bytes, or 0 for an empty segment. The per-segment data key
//! (DEK) is wrapped by a KEK inside the header, and every tag binds the
//! SHA-256 of the header (`header_digest`).
//!
//! This module owns the constants and shared layout helpers; [`Encryptor`]
//! writes objects, [`OpenedSegment`] and [`StreamDecryptor`] read them.

mod decrypt;
mod encrypt;
mod header;

use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange, Timestamp};
use sha2::{Digest, Sha256};

pub use decrypt::{decrypt_all, open_prefix_len, OpenedSegment, StreamDecryptor};
pub use encrypt::Encryptor;

use crate::aead::{NONCE_LEN, TAG_LEN};

/// Magic bytes opening every segment object.
const MAGIC: &[u8; 8] = b"CSTDYSEG";
/// The container version this build writes and reads.
const VERSION: u8 = 1;
/// Additional data binding a wrapped DEK to its segment and KEK.
const DEK_WRAP_CONTEXT: &[u8] = b"custody-dek-v1";

/// Bytes needed to learn the prefix length: magic, version, header_len.
pub const PREFIX_PROBE_LEN: usize = 13;
/// Largest header accepted, in bytes.
pub const MAX_HEADER_LEN: u32 = 4096;
/// Largest prefix possible; reading this many bytes always covers the prefix.
pub const MAX_PREFIX_LEN: u64 = PREFIX_PROBE_LEN as u64 + MAX_HEADER_LEN as u64 + TAG_LEN as u64;
/// Chunk size used unless the caller picks another.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size accepted (bounds per-chunk memory on both sides).
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Length of the footer: plaintext_len (8) + sha256 (32) + tag (16).
pub const FOOTER_LEN: u64 = 56;

const FLAG_DATA: u32 = 0;
const FLAG_LAST: u32 = 1;
const FLAG_HEADER: u32 = 2;
const FLAG_FOOTER: u32 = 3;

/// What the archive knows about a segment before its bytes arrive; stored
/// authenticated in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMeta {
    /// The camera that recorded it.
    pub camera: CameraId,
    /// The camera stream.
    pub stream: StreamName,
    /// The time span it covers.
    pub range: TimeRange,
    /// Its id.
    pub segment_id: SegmentId,
    /// The camera's sequence number for it.
    pub sequence: u64,
    /// Its media type.
    pub media_type: MediaType,
    /// When the archive created the object.
    pub created: Timestamp,
}

/// The authenticated trailer of a segment: its plaintext length and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFooter {
    /// Total plaintext bytes.
    pub plaintext_len: u64,
    /// SHA-256 of the whole plaintext.
    pub sha256: [u8; 32],
}

/// The STREAM nonce: `counter` big-endian then `flag` big-endian.
fn nonce(counter: u64, flag: u32) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[8..].copy_from_slice(&flag.to_be_bytes());
    n
}

/// SHA-256 of magic, version, header_len and header bytes.
fn header_digest(header: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update([VERSION]);
    h.update((header.len() as u32).to_le_bytes());
    h.update(header);
    h.finalize().into()
}

/// Additional data of the DEK wrap.
fn dek_wrap_aad(segment_id: &SegmentId, kek_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DEK_WRAP_CONTEXT.len() + 16 + kek_id.len());
    aad.extend_from_slice(DEK_WRAP_CONTEXT);
    aad.extend_from_slice(segment_id.as_bytes());
    aad.extend_from_slice(kek_id.as_bytes());
    aad
}

/// Additional data of the footer tag.
fn footer_aad(digest: &[u8; 32], plaintext_len: u64, sha256: &[u8; 32]) -> [u8; 72] {
    let mut aad = [0u8; 72];
    aad[..32].copy_from_slice(digest);
    aad[32..40].copy_from_slice(&plaintext_len.to_le_bytes());
    aad[40..].copy_from_slice(sha256);
    aad
}

/// Refuses a chunk size of zero or above [`MAX_CHUNK_SIZE`].
fn check_chunk_size(chunk_size: u32) -> Result<(), crate::CryptoError> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(crate::CryptoError::InvalidChunkSize(chunk_size));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
