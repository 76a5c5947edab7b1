//! Authenticated records: small plaintext payloads (holds, policies, audit
//! entries) that stay readable but cannot be altered or relabelled without a
//! KEK.
//!
//! ```text
//! "CSTDYREC" | version u8 = 1 | key id len u8 | key id | kind len u8 | kind
//!   | nonce (12) | payload len u32 LE | payload | tag (16)
//! ```
//!
//! The tag is AES-256-GCM over an empty plaintext with everything before it as
//! additional data, under `SHA-256("custody-record-key-v1" || KEK)`, so the raw
//! KEK (which wraps data keys) is never used for a second purpose.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::{CryptoError, Kek, KeyId, Keyring};

const MAGIC: &[u8; 8] = b"CSTDYREC";
const VERSION: u8 = 1;
const KEY_CONTEXT: &[u8] = b"custody-record-key-v1";
/// Longest record kind accepted.
const MAX_KIND_LEN: usize = 64;

/// Seals `payload` as a record of `kind` (1..=64 characters of
/// `[A-Za-z0-9._-]`) under `kek`. The payload stays plaintext.
pub fn seal_record(kek: &Kek, kind: &str, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if !valid_kind(kind) {
        return Err(CryptoError::InvalidRecordKind(
            kind.chars().take(80).collect(),
        ));
    }
    let payload_len =
        u32::try_from(payload.len()).map_err(|_| CryptoError::RecordTooLarge(payload.len()))?;
    let id = kek.id().as_str();
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);

    let mut out =
        Vec::with_capacity(8 + 3 + id.len() + kind.len() + NONCE_LEN + 4 + payload.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    // Key ids are at most 32 bytes and kinds at most 64, both checked above.
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    out.push(kind.len() as u8);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(payload);
    let tag = aead::seal(&record_cipher(kek), &nonce, &out, &mut []);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Verifies a record sealed by any key of `keyring` and of `expected_kind`;
/// returns its payload.
pub fn open_record(
    keyring: &Keyring,
    expected_kind: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut r = Reader(bytes);
    if r.take(8)? != MAGIC {
        return Err(malformed("bad magic".to_string()));
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(malformed(format!("unsupported version {version}")));
    }
    let id_len = usize::from(r.take(1)?[0]);
    let id = std::str::from_utf8(r.take(id_len)?)
        .map_err(|_| malformed("key id is not UTF-8".to_string()))?;
    let id = KeyId::parse(id).map_err(|e| malformed(e.to_string()))?;
    let kind_len = usize::from(r.take(1)?[0]);
    let kind = r.take(kind_len)?.to_vec();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(r.take(NONCE_LEN)?);
    let mut len = [0u8; 4];
    len.copy_from_slice(r.take(4)?);
    let payload_len = u32::from_le_bytes(len) as usize;
    let payload = r.take(payload_len)?;
    let signed_len = bytes.len() - r.0.len();
    let tag = r.take(TAG_LEN)?;
    if !r.0.is_empty() {
        return Err(malformed(format!("{} trailing bytes", r.0.len())));
    }

    let kek = keyring.get(&id).ok_or(CryptoError::UnknownKey(id))?;
    if !aead::open(
        &record_cipher(kek),
        &nonce,
        &bytes[..signed_len],
        &mut [],
        tag,
    ) {
        return Err(CryptoError::Authentication {
            part: "record".to_string(),
        });
    }
    if kind != expected_kind.as_bytes() {
        return Err(CryptoError::WrongRecordKind {
            expected: expected_kind.to_string(),
            found: String::from_utf8_lossy(&kind).into_owned(),
        });
    }
    Ok(payload.to_vec())
}

/// The length of the sealed record at the start of `bytes` (records can be
/// concatenated, e.g. a batch of audit records). Checks only the framing.
pub fn sealed_record_len(bytes: &[u8]) -> Result<usize, CryptoError> {
    let mut r = Reader(bytes);
    if r.take(8)? != MAGIC {
        return Err(malformed("bad magic".to_string()));
    }
    r.take(1)?;
    let id_len = usize::from(r.take(1)?[0]);
    r.take(id_len)?;
    let kind_len = usize::from(r.take(1)?[0]);
    r.take(kind_len)?;
    r.take(NONCE_LEN)?;
    let mut len = [0u8; 4];
    len.copy_from_slice(r.take(4)?);
    r.take(u32::from_le_bytes(len) as usize)?;
    r.take(TAG_LEN)?;
    Ok(bytes.len() - r.0.len())
}

/// The record cipher derived from a KEK.
fn record_cipher(kek: &Kek) -> aes_gcm::Aes256Gcm {
    let mut h = Sha256::new();
    h.update(KEY_CONTEXT);
    h.update(kek.key_bytes());
    aead::cipher(&h.finalize().into())
}

fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn malformed(reason: String) -> CryptoError {
    CryptoError::Malformed(format!("record: {reason}"))
}

/// A cursor over record bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CryptoError> {
        if self.0.len() < n {
            return Err(CryptoError::Truncated {
                what: "record".to_string(),
                expected: n as u64,
                found: self.0.len() as u64,
            });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::generate(KeyId::parse("k1").unwrap())
    }

    #[test]
    fn round_trip_keeps_payload_readable() {
        let ring = ring();
        let payload = b"{\"hold\":\"case-17\"}";
        let rec = seal_record(ring.active(), "hold", payload).unwrap();
        assert!(
            rec.windows(payload.len()).any(|w| w == payload),
            "plaintext payload"
        );
        assert_eq!(open_record(&ring, "hold", &rec).unwrap(), payload);
        let empty = seal_record(ring.active(), "policy", b"").unwrap();
        assert_eq!(open_record(&ring, "policy", &empty).unwrap(), b"");
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_detected() {
        let ring = ring();
        let rec = seal_record(ring.active(), "audit", b"camera cam-1 exported").unwrap();
        for pos in 0..rec.len() {
            let mut bad = rec.clone();
            bad[pos] ^= 0x01;
            assert!(open_record(&ring, "audit", &bad).is_err(), "flip at {pos}");
        }
        for cut in 0..rec.len() {
            assert!(
                open_record(&ring, "audit", &rec[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut long = rec.clone();
        long.push(0);
        assert!(matches!(
            open_record(&ring, "audit", &long),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn concatenated_records_split() {
        let ring = ring();
        let a = seal_record(ring.active(), "audit", b"first").unwrap();
        let b = seal_record(ring.active(), "audit", b"second!").unwrap();
        let both = [a.clone(), b.clone()].concat();
        assert_eq!(sealed_record_len(&both).unwrap(), a.len());
        assert_eq!(sealed_record_len(&both[a.len()..]).unwrap(), b.len());
        assert!(sealed_record_len(&a[..a.len() - 1]).is_err());
        assert!(sealed_record_len(b"nope").is_err());
    }

    #[test]
    fn wrong_kind_is_refused() {
        let ring = ring();
        let rec = seal_record(ring.active(), "hold", b"x").unwrap();
        assert!(matches!(
            open_record(&ring, "policy", &rec),
            Err(CryptoError::WrongRecordKind { expected, found }) if expected == "policy" && found == "hold"
        ));
        for bad in ["", "a b", "ä", &"k".repeat(65)] {
            assert!(matches!(
                seal_record(ring.active(), bad, b"x"),
                Err(CryptoError::InvalidRecordKind(_))
            ));
        }
    }

    #[test]
    fn keys_matter() {
        let mut ring = ring();
        let rec = seal_record(ring.active(), "hold", b"x").unwrap();
        assert!(matches!(
            open_record(&Keyring::generate(KeyId::parse("k2").unwrap()), "hold", &rec),
            Err(CryptoError::UnknownKey(k)) if k.as_str() == "k1"
        ));
        assert!(matches!(
            open_record(
                &Keyring::generate(KeyId::parse("k1").unwrap()),
                "hold",
                &rec
            ),
            Err(CryptoError::Authentication { .. })
        ));
        ring.rotate(KeyId::parse("k2").unwrap()).unwrap();
        assert_eq!(open_record(&ring, "hold", &rec).unwrap(), b"x");
        let rec2 = seal_record(ring.active(), "hold", b"y").unwrap();
        assert!(rec2.windows(2).any(|w| w == b"k2"));
        assert_eq!(open_record(&ring, "hold", &rec2).unwrap(), b"y");
    }

    #[test]
    fn record_key_differs_from_the_kek() {
        // A tag made with the raw KEK must not verify.
        let ring = ring();
        let mut rec = seal_record(ring.active(), "hold", b"x").unwrap();
        let signed = rec.len() - TAG_LEN;
        let nonce_off = 8 + 1 + 1 + 2 + 1 + 4;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&rec[nonce_off..nonce_off + NONCE_LEN]);
        let raw_tag = aead::seal(
            &aead::cipher(ring.active().key_bytes()),
            &nonce,
            &rec[..signed],
            &mut [],
        );
        rec[signed..].copy_from_slice(&raw_tag);
        assert!(matches!(
            open_record(&ring, "hold", &rec),
            Err(CryptoError::Authentication { .. })
        ));
    }
}
