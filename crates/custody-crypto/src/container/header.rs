//! The binary encoding of the segment header: a format byte, then
//! length-prefixed strings and fixed-width little-endian integers. Decoding
//! validates every field and rejects trailing bytes.

use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange, Timestamp};

use super::{check_chunk_size, SegmentMeta};
use crate::aead::{NONCE_LEN, TAG_LEN};
use crate::{CryptoError, KeyId};

/// Version of the field layout below.
const HEADER_FORMAT: u8 = 1;
/// Length of a wrapped DEK: 32 ciphertext bytes and a tag.
pub(super) const WRAPPED_DEK_LEN: usize = 32 + TAG_LEN;

/// Everything the header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub meta: SegmentMeta,
    pub chunk_size: u32,
    pub key_id: KeyId,
    pub wrap_nonce: [u8; NONCE_LEN],
    pub wrapped_dek: [u8; WRAPPED_DEK_LEN],
}

impl Header {
    /// The header bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut b = Vec::with_capacity(256);
        b.push(HEADER_FORMAT);
        put_str(&mut b, m.camera.as_str());
        put_str(&mut b, m.stream.as_str());
        b.extend_from_slice(&m.range.start().as_nanos().to_le_bytes());
        b.extend_from_slice(&m.range.end().as_nanos().to_le_bytes());
        b.extend_from_slice(m.segment_id.as_bytes());
        b.extend_from_slice(&m.sequence.to_le_bytes());
        put_str(&mut b, m.media_type.as_str());
        b.extend_from_slice(&m.created.as_nanos().to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        put_str(&mut b, self.key_id.as_str());
        b.extend_from_slice(&self.wrap_nonce);
        b.extend_from_slice(&self.wrapped_dek);
        b
    }

    /// Parses header bytes; any deviation is [`CryptoError::Malformed`].
    pub(super) fn decode(bytes: &[u8]) -> Result<Header, CryptoError> {
        let mut r = Reader(bytes);
        let format = r.u8()?;
        if format != HEADER_FORMAT {
            return Err(malformed(format!("unknown header format {format}")));
        }
        let camera = CameraId::parse(r.str("camera id")?).map_err(invalid)?;
        let stream_s = r.str("stream")?;
        if stream_s.is_empty() {
            return Err(malformed("empty stream name".to_string()));
        }
        let stream = StreamName::parse(stream_s).map_err(invalid)?;
        let start = Timestamp::from_nanos(r.i64()?);
        let end = Timestamp::from_nanos(r.i64()?);
        let range = TimeRange::new(start, end).map_err(invalid)?;
        let segment_id = SegmentId::from_bytes(r.array()?);
        let sequence = r.u64()?;
        let media_type = MediaType::parse(r.str("media type")?).map_err(invalid)?;
        let created = Timestamp::from_nanos(r.i64()?);
        let chunk_size = u32::from_le_bytes(r.array()?);
        check_chunk_size(chunk_size)
            .map_err(|_| malformed(format!("chunk size {chunk_size} out of range")))?;
        let key_id = KeyId::parse(r.str("key id")?).map_err(|e| malformed(e.to_string()))?;
        let wrap_nonce = r.array()?;
        let wrapped_dek = r.array()?;
        if !r.0.is_empty() {
            return Err(malformed(format!("{} trailing bytes", r.0.len())));
        }
        Ok(Header {
            meta: SegmentMeta {
                camera,
                stream,
                range,
                segment_id,
                sequence,
                media_type,
                created,
            },
            chunk_size,
            key_id,
            wrap_nonce,
            wrapped_dek,
        })
    }
}

/// Appends a string with a u8 length. Every string written here comes from a
/// validated type of at most 64 bytes.
fn put_str(b: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= usize::from(u8::MAX));
    b.push(s.len() as u8);
    b.extend_from_slice(s.as_bytes());
}

fn malformed(reason: String) -> CryptoError {
    CryptoError::Malformed(format!("segment header: {reason}"))
}

fn invalid(e: custody_core::InvalidInput) -> CryptoError {
    malformed(e.to_string())
}

/// A cursor over header bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CryptoError> {
        if self.0.len() < n {
            return Err(malformed(format!(
                "ends early: needs {n} more bytes, has {}",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CryptoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, CryptoError> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, CryptoError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, CryptoError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, field: &str) -> Result<&'a str, CryptoError> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.take(len)?).map_err(|_| malformed(format!("{field} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let camera = CameraId::parse("cam-1").unwrap();
        let stream = StreamName::main();
        let start = Timestamp::from_secs(1_700_000_000);
        Header {
            meta: SegmentMeta {
                segment_id: SegmentId::derive(&camera, &stream, start, 7),
                camera,
                stream,
                range: TimeRange::new(start, Timestamp::from_secs(1_700_000_006)).unwrap(),
                sequence: 7,
                media_type: MediaType::parse("video/mp2t").unwrap(),
                created: Timestamp::from_nanos(-5),
            },
            chunk_size: 1024,
            key_id: KeyId::parse("k1").unwrap(),
            wrap_nonce: [9; NONCE_LEN],
            wrapped_dek: [7; WRAPPED_DEK_LEN],
        }
    }

    fn is_malformed(r: Result<Header, CryptoError>) -> bool {
        matches!(r, Err(CryptoError::Malformed(_)))
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn rejects_trailing_bytes_and_every_truncation() {
        let bytes = sample().encode();
        let mut long = bytes.clone();
        long.push(0);
        assert!(is_malformed(Header::decode(&long)));
        for cut in 0..bytes.len() {
            assert!(is_malformed(Header::decode(&bytes[..cut])), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_invalid_fields() {
        let bytes = sample().encode();
        // Camera id "cam-1" starts at offset 2 (format byte, length byte).
        let mut bad_camera = bytes.clone();
        bad_camera[2] = b'-';
        assert!(is_malformed(Header::decode(&bad_camera)));
        // A camera length running past the end of the header.
        let mut bad_len = bytes.clone();
        bad_len[1] = 250;
        assert!(is_malformed(Header::decode(&bad_len)));
        let mut bad_format = bytes.clone();
        bad_format[0] = 2;
        assert!(is_malformed(Header::decode(&bad_format)));

        let mut h = sample();
        h.chunk_size = 0;
        assert!(is_malformed(Header::decode(&h.encode())));
        // Key id "k1" sits just before the wrap nonce and wrapped key.
        let mut bad_key_id = bytes.clone();
        let key_id_off = bytes.len() - WRAPPED_DEK_LEN - NONCE_LEN - 2;
        assert_eq!(&bytes[key_id_off..key_id_off + 2], b"k1");
        bad_key_id[key_id_off] = b'-';
        assert!(is_malformed(Header::decode(&bad_key_id)));
    }

    #[test]
    fn rejects_empty_range() {
        let h = sample();
        let mut bytes = h.encode();
        // end nanos follows format(1) + camera(1+5) + stream(1+4) + start(8).
        let end_off = 1 + 6 + 5 + 8;
        bytes[end_off..end_off + 8].copy_from_slice(&h.meta.range.start().as_nanos().to_le_bytes());
        assert!(is_malformed(Header::decode(&bytes)));
    }
}
