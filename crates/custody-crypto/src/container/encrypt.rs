//! Writing a segment object: [`Encryptor`] turns plaintext pieces into the
//! prefix, whole encrypted chunks and the footer, buffering at most one chunk.

use aes_gcm::Aes256Gcm;
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
        let cipher = aead::cipher(&dek);
        let header_tag = aead::seal(&cipher, &nonce(0, FLAG_HEADER), &digest, &mut []);

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
    pub fn update(&mut self, mut data: &[u8]) -> Vec<u8> {
        self.hasher.update(data);
        self.plaintext_len += data.len() as u64;
        let cs = self.chunk_size;
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.buf.len() == cs {
                // More data follows, so the held-back chunk is not the last.
                self.sealer.seal(&mut out, &self.buf, FLAG_DATA);
                self.buf.clear();
            }
            if self.buf.is_empty() && data.len() > cs {
                // A whole chunk with more after it: seal straight from the input.
                let (chunk, rest) = data.split_at(cs);
                self.sealer.seal(&mut out, chunk, FLAG_DATA);
                data = rest;
                continue;
            }
            let take = (cs - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        out
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
        let tag = aead::seal(&s.cipher, &nonce(s.counter, FLAG_FOOTER), &aad, &mut []);
        out.extend_from_slice(&footer.plaintext_len.to_le_bytes());
        out.extend_from_slice(&footer.sha256);
        out.extend_from_slice(&tag);
        (out, footer)
    }
}

/// The DEK cipher, header digest and chunk counter.
struct ChunkSealer {
    cipher: Aes256Gcm,
    digest: [u8; 32],
    /// Index of the next chunk to seal (after the last one: the chunk count).
    counter: u64,
}

impl ChunkSealer {
    /// Appends chunk `counter` (ciphertext and tag) to `out` and advances.
    fn seal(&mut self, out: &mut Vec<u8>, plain: &[u8], flag: u32) {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = aead::seal(
            &self.cipher,
            &nonce(self.counter, flag),
            &self.digest,
            &mut out[start..],
        );
        out.extend_from_slice(&tag);
        self.counter += 1;
    }
}
