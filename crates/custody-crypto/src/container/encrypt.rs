//! Writing a segment object: [`Encryptor`] turns plaintext pieces into the
//! prefix, whole encrypted chunks and the footer, buffering at most one chunk.
//!
//! Chunks are sealed with the `aes-gcm` crate (AES-NI and carry-less
//! multiplication detected at run time), written into one output buffer per
//! call ([`Encryptor::update_into`]) so the ingest path copies each byte once.

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::header::{Header, WRAPPED_DEK_LEN};
use super::{
    check_chunk_size, dek_wrap_aad, footer_aad, header_digest, nonce, SegmentFooter, SegmentMeta,
    FLAG_DATA, FLAG_FOOTER, FLAG_HEADER, FLAG_LAST, FOOTER_LEN, MAGIC, VERSION,
};
use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::{CryptoError, Kek};

/// Streaming encryptor of one segment under a fresh data key.
///
/// Write the prefix from [`Encryptor::new`], then every output of
/// [`Encryptor::update`], then the output of [`Encryptor::finish`].
pub struct Encryptor {
    sealer: ChunkSealer,
    chunk_size: usize,
    /// Plaintext not yet encrypted: at most one chunk, held back until it is
    /// known whether more data follows.
    pub(super) buf: Vec<u8>,
    hasher: Sha256,
    plaintext_len: u64,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("chunk_size", &self.chunk_size)
            .field("chunks_sealed", &self.sealer.counter)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Starts a segment: draws a data key, wraps it with `kek`, and returns the
    /// encryptor with the prefix bytes to write first.
    pub fn new(
        kek: &Kek,
        meta: &SegmentMeta,
        chunk_size: u32,
    ) -> Result<(Encryptor, Vec<u8>), CryptoError> {
        check_chunk_size(chunk_size)?;
        let mut dek = [0u8; 32];
        OsRng.fill_bytes(&mut dek);
        let mut wrap_nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut wrap_nonce);

        let mut wrapped_dek = [0u8; WRAPPED_DEK_LEN];
        wrapped_dek[..32].copy_from_slice(&dek);
        let aad = dek_wrap_aad(&meta.segment_id, kek.id().as_str());
        let tag = aead::seal(
            &aead::cipher(kek.key_bytes()),
            &wrap_nonce,
            &aad,
            &mut wrapped_dek[..32],
        );
        wrapped_dek[32..].copy_from_slice(&tag);

        let header = Header {
            meta: meta.clone(),
            chunk_size,
            key_id: kek.id().clone(),
            wrap_nonce,
            wrapped_dek,
        }
        .encode();
        let digest = header_digest(&header);
        let cipher = DataKey::new(&dek);
        let header_tag = cipher.seal(nonce(0, FLAG_HEADER), &digest, &mut []);

        let mut prefix = Vec::with_capacity(13 + header.len() + TAG_LEN);
        prefix.extend_from_slice(MAGIC);
        prefix.push(VERSION);
        prefix.extend_from_slice(&(header.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&header);
        prefix.extend_from_slice(&header_tag);

        let chunk_size = chunk_size as usize;
        let enc = Encryptor {
            sealer: ChunkSealer {
                cipher,
                digest,
                counter: 0,
            },
            chunk_size,
            buf: Vec::with_capacity(chunk_size),
            hasher: Sha256::new(),
            plaintext_len: 0,
        };
        Ok((enc, prefix))
    }

    /// Adds plaintext; returns zero or more whole encrypted chunks to write.
    /// One full chunk is always held back so the last chunk can be marked.
    pub fn update(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.update_into(data, &mut out);
        out
    }

    /// Like [`Encryptor::update`], appending the sealed chunks to `out`
    /// (sized once for all of them).
    /// Each piece of `data` is hashed as it is sealed or held back, while
    /// it is in cache: one pass over memory, not two.
    pub fn update_into(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        self.plaintext_len += data.len() as u64;
        let cs = self.chunk_size;
        let sealed = (self.buf.len() + data.len()).saturating_sub(1) / cs;
        out.reserve(sealed * (cs + TAG_LEN));
        while !data.is_empty() {
            if self.buf.len() == cs {
                // More data follows, so the held-back chunk is not the last.
                self.sealer.seal(out, &self.buf, FLAG_DATA);
                self.buf.clear();
            }
            if self.buf.is_empty() && data.len() > cs {
                // A whole chunk with more after it: seal straight from the input.
                let (chunk, rest) = data.split_at(cs);
                self.hasher.update(chunk);
                self.sealer.seal(out, chunk, FLAG_DATA);
                data = rest;
                continue;
            }
            let take = (cs - self.buf.len()).min(data.len());
            self.hasher.update(&data[..take]);
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    /// Plaintext bytes given to [`Encryptor::update`] so far.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Seals the last chunk and the footer; returns the bytes to write last.
    pub fn finish(mut self) -> (Vec<u8>, SegmentFooter) {
        let mut out = Vec::with_capacity(self.buf.len() + TAG_LEN + FOOTER_LEN as usize);
        self.sealer.seal(&mut out, &self.buf, FLAG_LAST);
        let footer = SegmentFooter {
            plaintext_len: self.plaintext_len,
            sha256: self.hasher.finalize().into(),
        };
        let s = &self.sealer;
        let aad = footer_aad(&s.digest, footer.plaintext_len, &footer.sha256);
        let tag = s.cipher.seal(nonce(s.counter, FLAG_FOOTER), &aad, &mut []);
        out.extend_from_slice(&footer.plaintext_len.to_le_bytes());
        out.extend_from_slice(&footer.sha256);
        out.extend_from_slice(&tag);
        (out, footer)
    }
}

/// A data key for sealing (AES-256-GCM, the `aes-gcm` crate, as every
/// other seal and open in this crate).
struct DataKey(aes_gcm::Aes256Gcm);

impl DataKey {
    fn new(dek: &[u8; 32]) -> DataKey {
        DataKey(aead::cipher(dek))
    }

    /// Encrypts `buf` in place and returns the tag. Every nonce is used
    /// once per data key: the chunk counter and flag make it unique.
    fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        aead::seal(&self.0, &nonce, aad, buf)
    }
}

/// The DEK cipher, header digest and chunk counter.
struct ChunkSealer {
    cipher: DataKey,
    digest: [u8; 32],
    /// Index of the next chunk to seal (after the last one: the chunk count).
    counter: u64,
}

impl ChunkSealer {
    /// Appends chunk `counter` (ciphertext and tag) to `out` and advances.
    fn seal(&mut self, out: &mut Vec<u8>, plain: &[u8], flag: u32) {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .seal(nonce(self.counter, flag), &self.digest, &mut out[start..]);
        out.extend_from_slice(&tag);
        self.counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `update_into` appends what `update` returns.
    #[test]
    fn update_into_appends_the_same_chunks() {
        use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange, Timestamp};
        let kek = Kek::generate(crate::KeyId::parse("k1").unwrap());
        let (camera, stream) = (CameraId::parse("cam-a").unwrap(), StreamName::main());
        let start = Timestamp::from_secs(1_800_000_000);
        let meta = SegmentMeta {
            segment_id: SegmentId::derive(&camera, &stream, start, 0),
            camera,
            stream,
            range: TimeRange::new(start, start.saturating_add_nanos(6_000_000_000)).unwrap(),
            sequence: 0,
            media_type: MediaType::parse(MediaType::MPEG_TS).unwrap(),
            created: start,
        };
        let (mut a, _) = Encryptor::new(&kek, &meta, 1024).unwrap();
        let (mut b, _) = Encryptor::new(&kek, &meta, 1024).unwrap();
        // Different DEKs: compare lengths and that output only grows.
        let mut out = b"kept".to_vec();
        for piece in [&[1u8; 10][..], &[2u8; 3000], &[3u8; 1024], &[4u8; 1]] {
            let before = out.len();
            b.update_into(piece, &mut out);
            assert_eq!(out.len() - before, a.update(piece).len());
        }
        assert_eq!(&out[..4], b"kept");
    }
}
