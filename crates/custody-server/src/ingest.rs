//! The ingest path: a segment streams in, is encrypted chunk by chunk into a
//! staged object, and is acknowledged only once object and index are durable.

use bytes::Bytes;
use custody_catalog::SegmentRecord;
use custody_core::{CameraId, MediaType, SegmentId, StreamName, TimeRange};
use custody_crypto::{Encryptor, SegmentMeta};
use custody_store::{SegmentKey, StoreError};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::commit::{Committed, Publish};
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

/// Upload pieces up to this size are sealed and hashed on the runtime thread
/// (about 0.2 ms at the reference machine's 1.7 GB/s sealing and 2 GB/s
/// hashing; less than a thread hop costs under load); larger ones on a
/// blocking thread that also writes them.
const INLINE_PIECE_BYTES: usize = 256 * 1024;

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
            if size < self.limits.min_segment_bytes {
                return Err(ServerError::Invalid(format!(
                    "declared size {size} is below limits.min_segment_bytes = {}",
                    self.limits.min_segment_bytes
                )));
            }
            if size > self.limits.max_segment_bytes {
                return Err(ServerError::Invalid(format!(
                    "declared size {size} exceeds limits.max_segment_bytes = {}",
                    self.limits.max_segment_bytes
                )));
            }
        }
        Ok(())
    }

    /// Refuses an upload of `size` bytes that would leave less than
    /// `limits.min_free_bytes` free where it lands (a local store's file
    /// system) or where the catalog and the audit records go: that space
    /// is kept for reads' audit records, holds and retention's deletions,
    /// which are what frees space again.
    fn check_free_space(&self, size: u64) -> Result<(), ServerError> {
        let reserve = self.limits.min_free_bytes;
        if reserve == 0 {
            return Ok(());
        }
        for (what, dir) in self.data_dirs() {
            // Only the upload's own file system must hold it; one that
            // cannot say is left to the write itself.
            let size = if what == "objects" { size } else { 0 };
            let Some(free) = crate::node::free_bytes(dir) else {
                continue;
            };
            if free < reserve.saturating_add(size) {
                warn!(dir = %dir.display(), free, reserve, "upload refused: the disk is nearly full");
                return Err(ServerError::OutOfSpace(format!(
                    "the node's disk is nearly full: {} has {free} bytes free and limits.min_free_bytes = {reserve} \
                     are kept for the audit log, holds and retention; nothing was stored; retry once retention \
                     frees space or the disk grows",
                    dir.display()
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
        self.check_free_space(header.size.unwrap_or(0))?;
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
        let key = SegmentKey {
            camera: header.camera.clone(),
            stream: header.stream.clone(),
            start: header.range.start(),
            sequence: header.sequence,
            segment_id: id,
        }
        .path();
        // Whether this is a retry is decided by the store, not only the index:
        // an index that lost the entry must not let other bytes in.
        if let Some(existing) = self.stored_segment(&id, &key).await? {
            let received = receive_all(&mut parts, self.limits.max_segment_bytes).await?;
            return self.answer_duplicate(&header, existing, received);
        }
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
        let mut writer = self.store.writer(&key).await?;
        // A local object's write intent is recorded by the group commit,
        // before it links the object into place. Other backends publish
        // while uploading: their intent goes to RocksDB now, on a blocking
        // thread while the upload streams in (a RocksDB write can wait
        // behind a synced batch of the group commit), awaited before the
        // object is published.
        let intent = (!writer.is_local()).then(|| {
            let (catalog, key) = (self.catalog.clone(), key.to_string());
            tokio::task::spawn_blocking(move || catalog.add_pending(&id, &key))
        });
        let mut sealed = Vec::new();
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
                        if data.len() <= INLINE_PIECE_BYTES {
                            // Small pieces: sealing them costs less than a
                            // thread hop; the writer gathers the output.
                            sealed.clear();
                            enc.update_into(&data, &mut sealed);
                            writer.write(&sealed).await?;
                        } else {
                            // Encrypt, hash and write on one blocking thread.
                            enc = writer
                                .write_from(move || {
                                    let mut out = Vec::new();
                                    enc.update_into(&data, &mut out);
                                    (enc, out)
                                })
                                .await?;
                        }
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
            self.check_claims(
                &header,
                &Received {
                    size: footer.plaintext_len,
                    sha256: footer.sha256,
                    finish_sha256: finish_sha,
                },
            )?;
            Ok(footer)
        }
        .await;
        let intent = match intent {
            None => Ok(()),
            Some(t) => match t.await {
                Ok(r) => r.map_err(ServerError::from),
                Err(e) => Err(ServerError::Internal(format!("write intent task: {e}"))),
            },
        };
        let footer = match result.and_then(|f| intent.map(|()| f)) {
            Ok(f) => f,
            Err(e) => {
                let local = writer.is_local();
                writer.abort().await;
                if !local {
                    // Removing an intent that was never recorded is harmless.
                    self.catalog.remove_pending(&id)?;
                }
                debug!(segment = %id, error = %e, "upload refused");
                return Err(e);
            }
        };
        let received = Received {
            size: footer.plaintext_len,
            sha256: footer.sha256,
            finish_sha256: None,
        };
        let (stored_size, publish, staging) = if writer.is_local() {
            let staging = self.committer.staging();
            let staged = writer.stage().await?;
            (staged.size(), Publish::Staged(staged), Some(staging))
        } else {
            match writer.commit_deferred().await {
                Ok((size, _)) => (size, Publish::Published, None),
                Err(StoreError::AlreadyExists { .. }) => {
                    self.catalog.remove_pending(&id)?;
                    return self.answer_existing(&header, &key, received).await;
                }
                Err(e) => {
                    self.catalog.remove_pending(&id)?;
                    return Err(e.into());
                }
            }
        };
        let rec = SegmentRecord {
            segment_id: id,
            camera: header.camera.clone(),
            stream: header.stream.clone(),
            range: header.range,
            sequence: header.sequence,
            media_type: header.media_type.clone(),
            size: footer.plaintext_len,
            stored_size,
            sha256: footer.sha256,
            key_id: kek.id().to_string(),
            ingested_at: meta.created,
            object_key: key.to_string(),
            expires_at: None,
        };
        // Durable name and index entry, group-committed with other uploads.
        let rec = match self.committer.commit(rec, publish, staging).await? {
            Committed::Indexed(rec) => *rec,
            Committed::Exists => return self.answer_existing(&header, &key, received).await,
        };
        info!(segment = %id, camera = %rec.camera, range = %rec.range, size = rec.size, "segment stored");
        Ok(IngestReceipt {
            segment_id: id,
            size: rec.size,
            stored_size,
            sha256: rec.sha256,
            duplicate: false,
        })
    }

    /// The object was refused as existing: another writer (a node, a
    /// process) stored this id first. Nothing was replaced; the upload is
    /// answered as a retry of what is there.
    async fn answer_existing(
        &self,
        header: &IngestHeader,
        key: &custody_store::ObjectPath,
        received: Received,
    ) -> Result<IngestReceipt, ServerError> {
        let id = SegmentId::derive(
            &header.camera,
            &header.stream,
            header.range.start(),
            header.sequence,
        );
        let existing = self.stored_segment(&id, key).await?.ok_or_else(|| {
            ServerError::Unavailable(format!(
                "segment {id}: the store refused the write as existing, then had no object; retry"
            ))
        })?;
        self.answer_duplicate(header, existing, received)
    }

    /// The stored segment with this id, if any: from the index, else from
    /// the object in the store (authenticated and indexed on the way).
    async fn stored_segment(
        &self,
        id: &SegmentId,
        key: &custody_store::ObjectPath,
    ) -> Result<Option<SegmentRecord>, ServerError> {
        if let Some(rec) = self.catalog.get(id)? {
            return Ok(Some(rec));
        }
        if !self.store.exists(key).await? {
            return Ok(None);
        }
        warn!(segment = %id, key = %key, "segment stored but not indexed: indexing it from the store");
        let rec = self.index_object(key).await.map_err(|e| match e {
            ServerError::DataLoss(m) => ServerError::DataLoss(format!(
                "segment {id} is stored as {key} but fails authentication ({m}); it is left as it is"
            )),
            other => other,
        })?;
        // Its writer may have died before journaling it: tell the peers.
        self.announce(std::slice::from_ref(&rec)).await;
        Ok(Some(rec))
    }

    /// The client's claims (declared size, header and finish digests) against
    /// the bytes received; the same checks for first uploads and retries.
    fn check_claims(&self, header: &IngestHeader, got: &Received) -> Result<(), ServerError> {
        if got.size < self.limits.min_segment_bytes {
            return Err(ServerError::Invalid(format!(
                "segment of {} bytes is below limits.min_segment_bytes = {}; nothing stored",
                got.size, self.limits.min_segment_bytes
            )));
        }
        if let Some(size) = header.size {
            if size != got.size {
                return Err(ServerError::Invalid(format!(
                    "declared size {size} but received {} bytes; nothing stored",
                    got.size
                )));
            }
        }
        for (what, claimed) in [("header", header.sha256), ("finish", got.finish_sha256)] {
            if let Some(claimed) = claimed {
                if claimed != got.sha256 {
                    return Err(ServerError::Invalid(format!(
                        "{what} sha256 {} does not match received bytes {}; nothing stored",
                        hex32(&claimed),
                        hex32(&got.sha256)
                    )));
                }
            }
        }
        Ok(())
    }

    /// A retry of a stored segment: same bytes → the stored receipt; other
    /// bytes or another range → ALREADY_EXISTS. Nothing is written either way.
    fn answer_duplicate(
        &self,
        header: &IngestHeader,
        existing: SegmentRecord,
        received: Received,
    ) -> Result<IngestReceipt, ServerError> {
        self.check_claims(header, &received)?;
        if received.sha256 != existing.sha256
            || existing.media_type != header.media_type
            || existing.range != header.range
        {
            return Err(ServerError::AlreadyExists(format!(
                "segment {} (camera {}, stream {}, start {}, sequence {}) is already stored with different content \
                 (range {}, sha256 {}); stored footage is never replaced",
                existing.segment_id,
                existing.camera,
                existing.stream,
                existing.range.start(),
                existing.sequence,
                existing.range,
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

/// What a client sent, summarised.
struct Received {
    size: u64,
    sha256: [u8; 32],
    finish_sha256: Option<[u8; 32]>,
}

/// Reads an upload to its finish message without storing it (a retry).
async fn receive_all<S>(parts: &mut S, max_bytes: u64) -> Result<Received, ServerError>
where
    S: Stream<Item = Result<IngestPart, ServerError>> + Unpin + Send,
{
    let mut h = Sha256::new();
    let mut size = 0u64;
    let finish_sha256 = loop {
        match parts.next().await {
            Some(Ok(IngestPart::Chunk(d))) => {
                size += d.len() as u64;
                if size > max_bytes {
                    return Err(ServerError::Invalid(format!(
                        "segment exceeds limits.max_segment_bytes = {max_bytes}"
                    )));
                }
                h.update(&d);
            }
            Some(Ok(IngestPart::Finish { sha256 })) => break sha256,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(ServerError::Invalid(
                    "upload ended without its finish message".into(),
                ))
            }
        }
    };
    if let Some(extra) = parts.next().await {
        extra?;
        return Err(ServerError::Invalid(
            "message after the finish message".into(),
        ));
    }
    Ok(Received {
        size,
        sha256: h.finalize().into(),
        finish_sha256,
    })
}
