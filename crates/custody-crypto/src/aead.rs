//! Thin AES-256-GCM helpers shared by the container and records: key setup,
//! detached-tag sealing and opening with explicit 12-byte nonces.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

/// Length of an AES-GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// Length of an AES-GCM nonce.
pub(crate) const NONCE_LEN: usize = 12;

/// An AES-256-GCM cipher keyed with `key`.
pub(crate) fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

/// Encrypts `buf` in place and returns the tag.
///
/// AES-GCM only refuses messages or associated data above 64 GiB; every
/// caller in this crate passes at most a few MiB (`MAX_CHUNK_SIZE`, records
/// bounded by a `u32` length), so the refusal is unreachable.
pub(crate) fn seal(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .expect("AES-GCM accepts inputs below 64 GiB; callers bound them far lower");
    tag.into()
}

/// Decrypts `buf` in place after checking `tag`; `false` if authentication fails
/// (then `buf` holds no usable data).
pub(crate) fn open(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> bool {
    if tag.len() != TAG_LEN {
        return false;
    }
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
        .is_ok()
}
