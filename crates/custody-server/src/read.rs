//! The read path: open a stored segment, authenticate it, stream plaintext.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use custody_catalog::SegmentRecord;
use custody_core::SegmentId;
use custody_crypto::{OpenedSegment, StreamDecryptor};
use custody_store::{ObjectPath, StoreError};
use futures::stream::{BoxStream, StreamExt};

use crate::{Node, ServerError};

/// Plaintext bytes per message when streaming reads.
pub const DEFAULT_READ_PIECE: usize = 256 * 1024;

/// Bytes fetched first, enough for any header.
const PREFIX_PROBE: u64 = 1024;

/// A stored segment whose header has been authenticated.
pub struct OpenSegment {
    /// The catalog entry.
    pub record: SegmentRecord,
    /// The authenticated container.
    pub opened: OpenedSegment,
    /// Size of the object in the store.
    pub object_len: u64,
}

impl Node {
    /// Opens an object and authenticates its header (not its chunks).
    pub(crate) async fn open_object(
        &self,
        key: &ObjectPath,
    ) -> Result<(OpenedSegment, u64), ServerError> {
        let size = match self.store.head(key).await {
            Ok(info) => info.size,
            Err(StoreError::NotFound { .. }) => {
                return Err(ServerError::NotFound(format!(
                    "object {key} is missing from the store"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        Ok((self.open_object_sized(key, size).await?, size))
    }

    /// As `open_object`, for an object whose size is known (from a listing).
    pub(crate) async fn open_object_sized(
        &self,
        key: &ObjectPath,
        size: u64,
    ) -> Result<OpenedSegment, ServerError> {
        let mut prefix = self.store.get_range(key, 0..size.min(PREFIX_PROBE)).await?;
        let prefix_len = custody_crypto::open_prefix_len(&prefix)?;
        if prefix_len > prefix.len() as u64 {
            if prefix_len > size {
                return Err(ServerError::DataLoss(format!(
                    "object {key} is truncated inside its header"
                )));
            }
            prefix = self.store.get_range(key, 0..prefix_len).await?;
        }
        Ok(OpenedSegment::open(
            &self.keyring,
            &prefix[..prefix_len as usize],
            size,
        )?)
    }

    /// Looks up a segment and authenticates its header against the catalog:
    /// an object moved, renamed or swapped is reported as data loss.
    pub async fn open_segment(&self, id: &SegmentId) -> Result<OpenSegment, ServerError> {
        let record = self
            .lookup(id)
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("segment {id} not found")))?;
        let key = ObjectPath::from(record.object_key.as_str());
        let (opened, object_len) = match self.open_object(&key).await {
            Err(ServerError::NotFound(m)) => {
                return Err(ServerError::DataLoss(format!("segment {id}: {m}")))
            }
            other => other?,
        };
        opened.check_expected(&record.camera, &record.segment_id)?;
        if opened.plaintext_len() != record.size {
            return Err(ServerError::DataLoss(format!(
                "segment {id}: object holds {} bytes, catalog says {}",
                opened.plaintext_len(),
                record.size
            )));
        }
        Ok(OpenSegment {
            record,
            opened,
            object_len,
        })
    }

    /// Streams the plaintext of `range` (clamped to the segment). A whole-segment
    /// read also verifies the footer and the SHA-256 of everything served; any
    /// failure ends the stream with DATA_LOSS, and no unauthenticated byte is sent.
    pub fn read_plaintext(
        &self,
        seg: OpenSegment,
        range: Range<u64>,
    ) -> BoxStream<'static, Result<Bytes, ServerError>> {
        let len = seg.opened.plaintext_len();
        let range = range.start.min(len)..range.end.min(len);
        let store = self.store.clone();
        let key = ObjectPath::from(seg.record.object_key.as_str());
        let whole = range.start == 0 && range.end == len;
        async_stream::try_stream! {
            if whole {
                let body = seg.opened.prefix_len()..seg.object_len;
                let mut pieces = store.get_range_stream(&key, body).await?;
                let mut dec = StreamDecryptor::new(seg.opened);
                let mut out = BytesMut::new();
                while let Some(piece) = pieces.next().await {
                    out.extend_from_slice(&dec.push(&piece?)?);
                    if out.len() >= DEFAULT_READ_PIECE {
                        yield out.split().freeze();
                    }
                }
                dec.finish()?;
                if !out.is_empty() {
                    yield out.freeze();
                }
            } else if !range.is_empty() {
                let chunks = seg.opened.chunk_indices(range.clone());
                let first = seg.opened.chunk_object_range(chunks.start);
                let last = seg.opened.chunk_object_range(chunks.end - 1);
                let mut pieces = store.get_range_stream(&key, first.start..last.end).await?;
                let mut buf = BytesMut::new();
                let mut index = chunks.start;
                while index < chunks.end {
                    let want = seg.opened.chunk_object_range(index);
                    let want_len = (want.end - want.start) as usize;
                    while buf.len() < want_len {
                        match pieces.next().await {
                            Some(piece) => buf.extend_from_slice(&piece?),
                            None => Err(ServerError::DataLoss(format!("object {key} ended early")))?,
                        }
                    }
                    let ct = buf.split_to(want_len);
                    let plain = seg.opened.decrypt_chunk(index, &ct)?;
                    let p0 = seg.opened.chunk_plain_offset(index);
                    let from = range.start.saturating_sub(p0) as usize;
                    let to = ((range.end - p0) as usize).min(plain.len());
                    yield Bytes::copy_from_slice(&plain[from..to]);
                    index += 1;
                }
            }
        }
        .boxed()
    }
}
