//! The ingest path: a segment streams in, is encrypted chunk by chunk into a
//! staged object, and is acknowledged only once object and index are durable.

use bytes::Bytes;
use custody_catalog::SegmentRecord;
use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange};
use custody_crypto::{Encryptor, SegmentMeta};
use custody_store::SegmentKey;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::{Node, ServerError};

/// The validated first message of an upload.
#[derive(Debug, Clone)]
pub struct IngestHeader {
    /// Camera id.
    pub camera: CameraId,
    /// Stream name.
    pub stream: StreamName,
    /// Time range the segment covers.
    pub range: TimeRange,
    /// Media type of the bytes.
    pub media_type: MediaType,
    /// Sequence number (0 when the client gave none).
    pub sequence: u64,
    /// SHA-256 the client claims for the bytes.
    pub sha256: Option<[u8; 32]>,
    /// Size the client claims for the bytes.
    pub size: Option<u64>,
}

/// A message after the header.
#[derive(Debug, Clone)]
pub enum IngestPart {
    /// More bytes.
    Chunk(Bytes),
    /// End of the upload, optionally with the client's SHA-256.
    Finish {
        /// SHA-256 the client claims for the bytes.
        sha256: Option<[u8; 32]>,
    },
}

/// What the caller is told once the segment is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReceipt {
    /// Segment id.
    pub segment_id: SegmentId,
    /// Plaintext size.
    pub size: u64,
    /// Encrypted object size.
    pub stored_size: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// True when the same segment was already stored.
    pub duplicate: bool,
}

fn hex32(d: &[u8; 32]) -> String {
    hex::encode(d)
}

impl Node {
    /// Validates the header against the configured limits.
    fn check_header(&self, h: &IngestHeader) -> Result<(), ServerError> {
        h.range.check_span(
            self.limits.max_segment_duration(),
            "limits.max_segment_duration_secs",
        )?;
        let now = self.clock.now();
        let skew = std::time::Duration::from_secs(self.limits.max_clock_skew_secs);
        if h.range.end() > now.saturating_add(skew) {
            return Err(ServerError::Invalid(format!(
                "segment ends at {}, more than limits.max_clock_skew_secs = {} s after the server's clock ({now})",
                h.range.end(),
                self.limits.max_clock_skew_secs
            )));
        }
        if let Some(size) = h.size {
            if size > self.limits.max_segment_bytes {
                return Err(ServerError::Invalid(format!(
                    "declared size {size} exceeds limits.max_segment_bytes = {}",
                    self.limits.max_segment_bytes
                )));
            }
        }
        Ok(())
    }

    /// Stores one segment. Returns only once the encrypted object and its index
    /// entry are durable; on any error nothing is visible.
    pub async fn ingest<S>(
        &self,
        header: IngestHeader,
        mut parts: S,
    ) -> Result<IngestReceipt, ServerError>
    where
        S: Stream<Item = Result<IngestPart, ServerError>> + Unpin + Send,
    {
        self.check_header(&header)?;
        let id = SegmentId::derive(
            &header.camera,
            &header.stream,
            header.range.start(),
            header.sequence,
        );
        let _guard = self.claim(id).ok_or_else(|| {
            ServerError::Aborted(format!(
                "an upload of segment {id} is already in progress; retry"
            ))
        })?;
        if let Some(existing) = self.catalog.get(&id)? {
            return self.answer_duplicate(&header, existing, &mut parts).await;
        }
        let key = SegmentKey {
            camera: header.camera.clone(),
            stream: header.stream.clone(),
            range: header.range,
            sequence: header.sequence,
            segment_id: id,
        }
        .path();
        let meta = SegmentMeta {
            camera: header.camera.clone(),
            stream: header.stream.clone(),
            range: header.range,
            segment_id: id,
            sequence: header.sequence,
            media_type: header.media_type.clone(),
            created: self.clock.now(),
        };
        let kek = self.keyring.active().clone();
        let (mut enc, prefix) = Encryptor::new(&kek, &meta, self.chunk_size)?;
        self.catalog.add_pending(&id, key.as_ref())?;
        let mut writer = match self.store.writer(&key).await {
            Ok(w) => w,
            Err(e) => {
                self.catalog.remove_pending(&id)?;
                return Err(e.into());
            }
        };
        let result: Result<_, ServerError> = async {
            writer.write(&prefix).await?;
            let finish_sha = loop {
                match parts.next().await {
                    Some(Ok(IngestPart::Chunk(data))) => {
                        let total = enc.plaintext_len() + data.len() as u64;
                        if total > self.limits.max_segment_bytes {
                            return Err(ServerError::Invalid(format!(
                                "segment exceeds limits.max_segment_bytes = {}",
                                self.limits.max_segment_bytes
                            )));
                        }
                        let (e, ct) = tokio::task::spawn_blocking(move || {
                            let ct = enc.update(&data);
                            (enc, ct)
                        })
                        .await
                        .map_err(|e| ServerError::Internal(format!("encryption task: {e}")))?;
                        enc = e;
                        writer.write(&ct).await?;
                    }
                    Some(Ok(IngestPart::Finish { sha256 })) => break sha256,
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(ServerError::Invalid(format!(
                            "upload of segment {id} ended after {} bytes without its finish message; nothing stored",
                            enc.plaintext_len()
                        )))
                    }
                }
            };
            if let Some(extra) = parts.next().await {
                extra?;
                return Err(ServerError::Invalid("message after the finish message".into()));
            }
            let (tail, footer) = enc.finish();
            writer.write(&tail).await?;
            if let Some(size) = header.size {
                if size != footer.plaintext_len {
                    return Err(ServerError::Invalid(format!(
                        "declared size {size} but received {} bytes; nothing stored",
                        footer.plaintext_len
                    )));
                }
            }
            for claimed in [header.sha256, finish_sha].into_iter().flatten() {
                if claimed != footer.sha256 {
                    return Err(ServerError::Invalid(format!(
                        "client sha256 {} does not match received bytes {}; nothing stored",
                        hex32(&claimed),
                        hex32(&footer.sha256)
                    )));
                }
            }
            Ok(footer)
        }
        .await;
        let footer = match result {
            Ok(f) => f,
            Err(e) => {
                writer.abort().await;
                self.catalog.remove_pending(&id)?;
                debug!(segment = %id, error = %e, "upload refused");
                return Err(e);
            }
        };
        let stored_size = writer.commit().await?;
        let rec = SegmentRecord {
            segment_id: id,
            camera: header.camera,
            stream: header.stream,
            range: header.range,
            sequence: header.sequence,
            media_type: header.media_type,
            size: footer.plaintext_len,
            stored_size,
            sha256: footer.sha256,
            key_id: kek.id().to_string(),
            ingested_at: meta.created,
            object_key: key.to_string(),
            expires_at: None,
        };
        let rec = self.index_segment(rec)?;
        info!(segment = %id, camera = %rec.camera, range = %rec.range, size = rec.size, "segment stored");
        Ok(IngestReceipt {
            segment_id: id,
            size: rec.size,
            stored_size,
            sha256: rec.sha256,
            duplicate: false,
        })
    }

    /// A retry of a stored segment: same bytes → the stored receipt; other
    /// bytes → ALREADY_EXISTS. Nothing is written either way.
    async fn answer_duplicate<S>(
        &self,
        header: &IngestHeader,
        existing: SegmentRecord,
        parts: &mut S,
    ) -> Result<IngestReceipt, ServerError>
    where
        S: Stream<Item = Result<IngestPart, ServerError>> + Unpin + Send,
    {
        let mut h = Sha256::new();
        let mut size = 0u64;
        loop {
            match parts.next().await {
                Some(Ok(IngestPart::Chunk(d))) => {
                    size += d.len() as u64;
                    if size > self.limits.max_segment_bytes {
                        return Err(ServerError::Invalid(format!(
                            "segment exceeds limits.max_segment_bytes = {}",
                            self.limits.max_segment_bytes
                        )));
                    }
                    h.update(&d);
                }
                Some(Ok(IngestPart::Finish { .. })) => break,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(ServerError::Invalid(
                        "upload ended without its finish message".into(),
                    ))
                }
            }
        }
        let digest: [u8; 32] = h.finalize().into();
        if digest != existing.sha256
            || existing.media_type != header.media_type
            || existing.range != header.range
        {
            return Err(ServerError::AlreadyExists(format!(
                "segment {} (camera {}, stream {}, start {}, sequence {}) is already stored with different content (sha256 {})",
                existing.segment_id,
                existing.camera,
                existing.stream,
                existing.range.start(),
                existing.sequence,
                hex32(&existing.sha256)
            )));
        }
        Ok(IngestReceipt {
            segment_id: existing.segment_id,
            size: existing.size,
            stored_size: existing.stored_size,
            sha256: existing.sha256,
            duplicate: true,
        })
    }
}
