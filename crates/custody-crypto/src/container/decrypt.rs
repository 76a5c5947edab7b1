//! Reading a segment object: [`open_prefix_len`] and [`OpenedSegment`] verify
//! the prefix and derive the chunk layout for random access;
//! [`StreamDecryptor`] and [`decrypt_all`] decrypt whole objects in order.

use std::io::{ErrorKind, Read};
use std::ops::Range;

use aes_gcm::Aes256Gcm;
use custody_core::{CameraId, SegmentId};
use sha2::{Digest, Sha256};

use super::header::Header;
use super::{
    dek_wrap_aad, footer_aad, header_digest, nonce, SegmentFooter, SegmentMeta, FLAG_DATA,
    FLAG_FOOTER, FLAG_HEADER, FLAG_LAST, FOOTER_LEN, MAGIC, MAX_HEADER_LEN, PREFIX_PROBE_LEN,
    VERSION,
};
use crate::aead::{self, TAG_LEN};
use crate::{CryptoError, KeyId, Keyring};

const TAG: u64 = TAG_LEN as u64;

/// The full prefix length, from at least the first [`PREFIX_PROBE_LEN`] bytes
/// of an object. Checks the magic, the version and the header length.
pub fn open_prefix_len(first_bytes: &[u8]) -> Result<u64, CryptoError> {
    if first_bytes.len() < PREFIX_PROBE_LEN {
        return Err(CryptoError::Truncated {
            what: "segment prefix".to_string(),
            expected: PREFIX_PROBE_LEN as u64,
            found: first_bytes.len() as u64,
        });
    }
    if &first_bytes[..8] != MAGIC {
        return Err(CryptoError::NotASegment);
    }
    if first_bytes[8] != VERSION {
        return Err(CryptoError::UnsupportedVersion(first_bytes[8]));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&first_bytes[9..13]);
    let header_len = u32::from_le_bytes(len);
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(CryptoError::Malformed(format!(
            "segment prefix: header length {header_len} outside 1..={MAX_HEADER_LEN}"
        )));
    }
    Ok(PREFIX_PROBE_LEN as u64 + u64::from(header_len) + TAG)
}

/// A segment whose prefix has been authenticated: its metadata, its data key
/// and its chunk layout, ready for random-access chunk decryption.
#[derive(Clone)]
pub struct OpenedSegment {
    meta: SegmentMeta,
    key_id: KeyId,
    chunk_size: u32,
    cipher: Aes256Gcm,
    digest: [u8; 32],
    prefix_len: u64,
    object_len: u64,
    chunk_count: u64,
    /// Ciphertext length (with tag) of the last chunk.
    last_chunk_len: u64,
    plaintext_len: u64,
}

impl std::fmt::Debug for OpenedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedSegment")
            .field("meta", &self.meta)
            .field("key_id", &self.key_id)
            .field("chunk_size", &self.chunk_size)
            .field("object_len", &self.object_len)
            .field("chunk_count", &self.chunk_count)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl OpenedSegment {
    /// Parses and authenticates the prefix (bytes past the prefix are
    /// ignored) of an object `object_len` bytes long, unwrapping its data key
    /// with the matching KEK of `keyring`.
    pub fn open(
        keyring: &Keyring,
        prefix: &[u8],
        object_len: u64,
    ) -> Result<OpenedSegment, CryptoError> {
        let prefix_len = open_prefix_len(prefix)?;
        if (prefix.len() as u64) < prefix_len {
            return Err(CryptoError::Truncated {
                what: "segment prefix".to_string(),
                expected: prefix_len,
                found: prefix.len() as u64,
            });
        }
        let header_end = prefix_len as usize - TAG_LEN;
        let header_bytes = &prefix[PREFIX_PROBE_LEN..header_end];
        let header_tag = &prefix[header_end..prefix_len as usize];
        let header = Header::decode(header_bytes)?;

        let kek = keyring
            .get(&header.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(header.key_id.clone()))?;
        let mut dek = [0u8; 32];
        dek.copy_from_slice(&header.wrapped_dek[..32]);
        let aad = dek_wrap_aad(&header.meta.segment_id, header.key_id.as_str());
        if !aead::open(
            &aead::cipher(kek.key_bytes()),
            &header.wrap_nonce,
            &aad,
            &mut dek,
            &header.wrapped_dek[32..],
        ) {
            return Err(auth("wrapped data key"));
        }
        let cipher = aead::cipher(&dek);
        let digest = header_digest(header_bytes);
        if !aead::open(
            &cipher,
            &nonce(0, FLAG_HEADER),
            &digest,
            &mut [],
            header_tag,
        ) {
            return Err(auth("header"));
        }

        let min_len = prefix_len + TAG + FOOTER_LEN;
        if object_len < min_len {
            return Err(CryptoError::Truncated {
                what: "segment".to_string(),
                expected: min_len,
                found: object_len,
            });
        }
        let body = object_len - prefix_len - FOOTER_LEN;
        let full = u64::from(header.chunk_size) + TAG;
        let chunk_count = body.div_ceil(full);
        let last_chunk_len = body - (chunk_count - 1) * full;
        // The last chunk holds at least one byte unless it is the only one.
        if last_chunk_len < TAG || (chunk_count > 1 && last_chunk_len == TAG) {
            return Err(CryptoError::Malformed(format!(
                "segment: object length {object_len} fits no chunk layout for chunk size {}",
                header.chunk_size
            )));
        }
        let plaintext_len = (chunk_count - 1) * u64::from(header.chunk_size) + last_chunk_len - TAG;
        Ok(OpenedSegment {
            meta: header.meta,
            key_id: header.key_id,
            chunk_size: header.chunk_size,
            cipher,
            digest,
            prefix_len,
            object_len,
            chunk_count,
            last_chunk_len,
            plaintext_len,
        })
    }

    /// The authenticated segment metadata.
    pub fn meta(&self) -> &SegmentMeta {
        &self.meta
    }

    /// Refuses an authentic segment that is not the one the caller looked up
    /// (e.g. an object stored under another camera's key).
    pub fn check_expected(
        &self,
        camera: &CameraId,
        segment_id: &SegmentId,
    ) -> Result<(), CryptoError> {
        if &self.meta.camera != camera || &self.meta.segment_id != segment_id {
            return Err(CryptoError::Mismatch {
                expected: format!("camera {camera} segment {segment_id}"),
                found: format!(
                    "camera {} segment {}",
                    self.meta.camera, self.meta.segment_id
                ),
            });
        }
        Ok(())
    }

    /// The id of the KEK that wraps the data key.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// Plaintext bytes per chunk (all but the last).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Total plaintext bytes, from the layout (confirmed by [`Self::read_footer`]).
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Number of chunks (at least one).
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// Length of the prefix; chunks start at this object offset.
    pub fn prefix_len(&self) -> u64 {
        self.prefix_len
    }

    /// Object offsets of the footer.
    pub fn footer_range(&self) -> Range<u64> {
        self.object_len - FOOTER_LEN..self.object_len
    }

    /// Authenticates the footer bytes and checks its length against the layout.
    pub fn read_footer(&self, bytes: &[u8]) -> Result<SegmentFooter, CryptoError> {
        if bytes.len() as u64 != FOOTER_LEN {
            return Err(CryptoError::Truncated {
                what: "segment footer".to_string(),
                expected: FOOTER_LEN,
                found: bytes.len() as u64,
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[..8]);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&bytes[8..40]);
        let footer = SegmentFooter {
            plaintext_len: u64::from_le_bytes(len),
            sha256,
        };
        let aad = footer_aad(&self.digest, footer.plaintext_len, &footer.sha256);
        let n = nonce(self.chunk_count, FLAG_FOOTER);
        if !aead::open(&self.cipher, &n, &aad, &mut [], &bytes[40..]) {
            return Err(auth("footer"));
        }
        if footer.plaintext_len != self.plaintext_len {
            return Err(CryptoError::Malformed(format!(
                "segment footer: plaintext length {} but the layout holds {}",
                footer.plaintext_len, self.plaintext_len
            )));
        }
        Ok(footer)
    }

    /// The chunks holding plaintext bytes `plain` (clamped to the segment; empty
    /// if nothing of the range is in it).
    pub fn chunk_indices(&self, plain: Range<u64>) -> Range<u64> {
        let end = plain.end.min(self.plaintext_len);
        if plain.start >= end {
            let i = (plain.start / u64::from(self.chunk_size)).min(self.chunk_count);
            return i..i;
        }
        let cs = u64::from(self.chunk_size);
        plain.start / cs..(end - 1) / cs + 1
    }

    /// Object offsets of chunk `index` (ciphertext and tag); an empty range at
    /// the footer if `index` is past the last chunk.
    pub fn chunk_object_range(&self, index: u64) -> Range<u64> {
        let full = u64::from(self.chunk_size) + TAG;
        if index >= self.chunk_count {
            let footer = self.object_len - FOOTER_LEN;
            return footer..footer;
        }
        let start = self.prefix_len + index * full;
        let len = if index + 1 == self.chunk_count {
            self.last_chunk_len
        } else {
            full
        };
        start..start + len
    }

    /// Plaintext offset of the first byte of chunk `index`.
    pub fn chunk_plain_offset(&self, index: u64) -> u64 {
        index
            .saturating_mul(u64::from(self.chunk_size))
            .min(self.plaintext_len)
    }

    /// Authenticates and decrypts chunk `index` from exactly its object bytes.
    pub fn decrypt_chunk(&self, index: u64, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(ciphertext.len().saturating_sub(TAG_LEN));
        self.decrypt_chunk_into(index, ciphertext, &mut out)?;
        Ok(out)
    }

    /// Like [`Self::decrypt_chunk`], appending the plaintext to `out`.
    fn decrypt_chunk_into(
        &self,
        index: u64,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        if index >= self.chunk_count {
            return Err(CryptoError::ChunkOutOfRange {
                index,
                count: self.chunk_count,
            });
        }
        let r = self.chunk_object_range(index);
        let expected = r.end - r.start;
        let found = ciphertext.len() as u64;
        if found < expected {
            return Err(CryptoError::Truncated {
                what: format!("chunk {index}"),
                expected,
                found,
            });
        }
        if found > expected {
            return Err(CryptoError::Malformed(format!(
                "chunk {index}: {found} bytes, expected {expected}"
            )));
        }
        let flag = if index + 1 == self.chunk_count {
            FLAG_LAST
        } else {
            FLAG_DATA
        };
        let (ct, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        let start = out.len();
        out.extend_from_slice(ct);
        if !aead::open(
            &self.cipher,
            &nonce(index, flag),
            &self.digest,
            &mut out[start..],
            tag,
        ) {
            out.truncate(start);
            return Err(auth(&format!("chunk {index}")));
        }
        Ok(())
    }
}

fn auth(part: &str) -> CryptoError {
    CryptoError::Authentication {
        part: part.to_string(),
    }
}

/// Push-style decryption of a whole object in order, buffering at most one
/// chunk. Feed it every byte after the prefix, then call [`Self::finish`].
#[derive(Debug)]
pub struct StreamDecryptor {
    opened: OpenedSegment,
    /// Index of the chunk being assembled; `chunk_count` once at the footer.
    next_chunk: u64,
    /// Partial bytes of the current chunk, or of the footer.
    pub(super) buf: Vec<u8>,
    hasher: Sha256,
    /// Object bytes pushed so far.
    consumed: u64,
}

impl StreamDecryptor {
    /// Starts decrypting after the prefix of `opened`.
    pub fn new(opened: OpenedSegment) -> StreamDecryptor {
        let chunk_len = opened.chunk_size as usize + TAG_LEN;
        StreamDecryptor {
            opened,
            next_chunk: 0,
            buf: Vec::with_capacity(chunk_len.max(FOOTER_LEN as usize)),
            hasher: Sha256::new(),
            consumed: 0,
        }
    }

    /// Takes the next object bytes; returns the plaintext of every chunk they
    /// complete. Nothing it returns is unauthenticated, but the segment as a
    /// whole is only verified by [`Self::finish`]. After an error, discard it.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.consumed += data.len() as u64;
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.next_chunk >= self.opened.chunk_count {
                let room = FOOTER_LEN as usize - self.buf.len();
                if room == 0 {
                    return Err(CryptoError::Malformed(
                        "segment: bytes after the footer".to_string(),
                    ));
                }
                let take = room.min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                continue;
            }
            let r = self.opened.chunk_object_range(self.next_chunk);
            let need = (r.end - r.start) as usize;
            if self.buf.is_empty() && data.len() >= need {
                let (chunk, rest) = data.split_at(need);
                self.opened
                    .decrypt_chunk_into(self.next_chunk, chunk, &mut out)?;
                data = rest;
                self.next_chunk += 1;
                continue;
            }
            let take = (need - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == need {
                self.opened
                    .decrypt_chunk_into(self.next_chunk, &self.buf, &mut out)?;
                self.buf.clear();
                self.next_chunk += 1;
            }
        }
        self.hasher.update(&out);
        Ok(out)
    }

    /// Verifies that the whole object arrived, the footer, and the SHA-256 of
    /// all plaintext returned.
    pub fn finish(self) -> Result<SegmentFooter, CryptoError> {
        let expected = self.opened.object_len - self.opened.prefix_len;
        if self.next_chunk < self.opened.chunk_count || self.buf.len() as u64 != FOOTER_LEN {
            return Err(CryptoError::Truncated {
                what: "segment".to_string(),
                expected,
                found: self.consumed,
            });
        }
        let footer = self.opened.read_footer(&self.buf)?;
        let sha256: [u8; 32] = self.hasher.finalize().into();
        if sha256 != footer.sha256 {
            return Err(auth("plaintext digest"));
        }
        Ok(footer)
    }
}

/// Decrypts a whole object read from `reader` (`object_len` bytes), checking
/// every tag and the plaintext digest. Holds the whole plaintext: for tests and
/// small objects only.
pub fn decrypt_all<R: Read>(
    keyring: &Keyring,
    mut reader: R,
    object_len: u64,
) -> Result<(SegmentMeta, Vec<u8>, SegmentFooter), CryptoError> {
    let truncated = |found: u64| CryptoError::Truncated {
        what: "segment".to_string(),
        expected: object_len,
        found,
    };
    let mut prefix = vec![0u8; PREFIX_PROBE_LEN];
    reader
        .read_exact(&mut prefix)
        .map_err(|e| eof_or(e, truncated(0)))?;
    let prefix_len = open_prefix_len(&prefix)?;
    if prefix_len > object_len {
        return Err(truncated(object_len));
    }
    prefix.resize(prefix_len as usize, 0);
    reader
        .read_exact(&mut prefix[PREFIX_PROBE_LEN..])
        .map_err(|e| eof_or(e, truncated(PREFIX_PROBE_LEN as u64)))?;
    let opened = OpenedSegment::open(keyring, &prefix, object_len)?;
    let meta = opened.meta().clone();
    let mut dec = StreamDecryptor::new(opened);
    let mut plain = Vec::new();
    let mut remaining = object_len - prefix_len;
    let mut buf = vec![0u8; 64 * 1024];
    while remaining > 0 {
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => return Err(truncated(object_len - remaining)),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(CryptoError::Read(e)),
        };
        plain.extend_from_slice(&dec.push(&buf[..n])?);
        remaining -= n as u64;
    }
    let footer = dec.finish()?;
    Ok((meta, plain, footer))
}

/// Maps an early end of input to `truncated`, other errors to [`CryptoError::Read`].
fn eof_or(e: std::io::Error, truncated: CryptoError) -> CryptoError {
    if e.kind() == ErrorKind::UnexpectedEof {
        truncated
    } else {
        CryptoError::Read(e)
    }
}
