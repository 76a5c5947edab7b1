//! Custody's cryptography: the encrypted segment container, authenticated
//! records, and the keyring of key-encryption keys (KEKs).
//!
//! - [`keyring`]: KEK ids, the keyring and its 0600 key file, rotation.
//! - [`container`]: the segment object format (versioned header, per-segment
//!   data key wrapped by a KEK, chunked AES-256-GCM in the STREAM
//!   construction, authenticated footer), streaming encryption and
//!   random-access or streaming decryption.
//! - [`signing`]: the node's Ed25519 signing key (evidence bundles), its
//!   0600 key file, and offline verification with the public key in PEM.
//! - [`record`]: small plaintext records (holds, policies, audit) sealed with
//!   a key derived from a KEK.
//!
//! Every failure is a [`CryptoError`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod aead;
pub mod container;
mod error;
pub mod keyring;
pub mod record;
pub mod signing;

pub use container::{
    decrypt_all, open_prefix_len, Encryptor, OpenedSegment, SegmentFooter, SegmentMeta,
    StreamDecryptor, DEFAULT_CHUNK_SIZE, FOOTER_LEN, MAX_CHUNK_SIZE, MAX_HEADER_LEN,
    MAX_PREFIX_LEN, PREFIX_PROBE_LEN,
};
pub use error::CryptoError;
pub use keyring::{Kek, KeyId, Keyring};
pub use record::{open_record, seal_record, sealed_record_len};
pub use signing::{verify_signature, SigningKey};
