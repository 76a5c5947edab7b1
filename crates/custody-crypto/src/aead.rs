//! Thin AES-256-GCM helpers shared by the container and records: key setup,
//! detached-tag sealing and opening with explicit 12-byte nonces.

use aes_gcm::aead::AeadInOut;
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
        .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into())
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
    let Ok(tag) = Tag::try_from(tag) else {
        return false;
    };
    cipher
        .decrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into(), &tag)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// Test case 16 of the GCM specification (McGrew and Viega): AES-256,
    /// 96-bit IV, associated data. Every stored segment depends on these
    /// exact bytes, whatever version of the cipher crate seals them.
    #[test]
    fn seals_and_opens_the_gcm_specification_vector() {
        let key: [u8; 32] =
            unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
                .try_into()
                .unwrap();
        let nonce: [u8; NONCE_LEN] = unhex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let sealed = unhex(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        );
        let tag = unhex("76fc6ece0f4e1768cddf8853bb2d551b");
        let c = cipher(&key);
        let mut buf = plain.clone();
        assert_eq!(seal(&c, &nonce, &aad, &mut buf).to_vec(), tag);
        assert_eq!(buf, sealed);
        assert!(open(&c, &nonce, &aad, &mut buf, &tag));
        assert_eq!(buf, plain);
        let mut forged = sealed.clone();
        forged[0] ^= 1;
        assert!(!open(&c, &nonce, &aad, &mut forged, &tag));
        assert!(!open(&c, &nonce, &aad, &mut sealed.clone(), &tag[..15]));
    }
}
