//! Rebuilding the catalog from the store: the bucket is the truth.

use custody_catalog::{Catalog, SegmentRecord};
use custody_core::MediaType;
use custody_store::{layout, ObjectPath, SegmentKey};
use futures::StreamExt;
use tracing::{info, warn};

use crate::{Node, ServerError};

/// How often a rebuild logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a rebuild found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Segments indexed.
    pub indexed: u64,
    /// Objects under `segments/` whose key is not a segment key.
    pub foreign: Vec<String>,
    /// Segment objects that failed authentication, with the reason.
    pub failed: Vec<(String, String)>,
    /// Objects carrying a segment id another object already holds: neither
    /// is replaced or deleted; both are named, for an operator to examine.
    pub conflicts: Vec<(String, String)>,
}

impl Node {
    /// Reads a segment object's header and footer, checks them against its
    /// key, and indexes it.
    pub(crate) async fn index_object(
        &self,
        path: &ObjectPath,
    ) -> Result<SegmentRecord, ServerError> {
        let key = SegmentKey::parse(path)
            .ok_or_else(|| ServerError::Invalid(format!("{path} is not a segment key")))?;
        let (opened, size) = self.open_object(path).await?;
        opened.check_expected(&key.camera, &key.segment_id)?;
        let meta = opened.meta().clone();
        if meta.stream != key.stream
            || meta.range.start() != key.start
            || meta.sequence != key.sequence
        {
            return Err(ServerError::DataLoss(format!(
                "{path}: header does not match the object key"
            )));
        }
        let footer_bytes = self.store.get_range(path, opened.footer_range()).await?;
        let footer = opened.read_footer(&footer_bytes)?;
        let rec = SegmentRecord {
            segment_id: meta.segment_id,
            camera: meta.camera,
            stream: meta.stream,
            range: meta.range,
            sequence: meta.sequence,
            media_type: MediaType::parse(meta.media_type.as_str())?,
            size: footer.plaintext_len,
            stored_size: size,
            sha256: footer.sha256,
            key_id: opened.key_id().to_string(),
            ingested_at: meta.created,
            object_key: path.to_string(),
            expires_at: None,
        };
        let object_key = rec.object_key.clone();
        let indexed = self.index_segment(rec)?;
        if indexed.object_key != object_key {
            return Err(ServerError::AlreadyExists(format!(
                "{object_key} carries segment {}, which {} already holds",
                indexed.segment_id, indexed.object_key
            )));
        }
        Ok(indexed)
    }

    /// Indexes every segment object in the store into this node's catalog.
    /// Call on an empty catalog (see [`Catalog::destroy`]) to rebuild from scratch.
    /// Logs progress every few seconds.
    pub async fn reindex_all(&self) -> Result<RebuildReport, ServerError> {
        let mut report = RebuildReport::default();
        let mut objects = self.store.list(&layout::segments_prefix());
        let started = std::time::Instant::now();
        let mut last_log = started;
        let mut seen = 0u64;
        while let Some(obj) = objects.next().await {
            let obj = obj?;
            seen += 1;
            if last_log.elapsed() >= PROGRESS_EVERY {
                info!(
                    objects = seen,
                    indexed = report.indexed,
                    elapsed_secs = started.elapsed().as_secs(),
                    "rebuilding the catalog from the store"
                );
                last_log = std::time::Instant::now();
            }
            if SegmentKey::parse(&obj.key).is_none() {
                report.foreign.push(obj.key.to_string());
                continue;
            }
            match self.index_object(&obj.key).await {
                Ok(_) => report.indexed += 1,
                Err(ServerError::AlreadyExists(why)) => {
                    warn!(key = %obj.key, why, "segment id conflict: not indexed");
                    report.conflicts.push((obj.key.to_string(), why));
                }
                Err(e @ (ServerError::Unavailable(_) | ServerError::Internal(_))) => return Err(e),
                Err(e) => {
                    warn!(key = %obj.key, error = %e, "segment object not indexed");
                    report.failed.push((obj.key.to_string(), e.to_string()));
                }
            }
        }
        Ok(report)
    }
}

/// Deletes the catalog directory of `config` so the next open starts empty.
pub(crate) fn destroy_catalog(config: &crate::ServerConfig) -> Result<(), ServerError> {
    Catalog::destroy(&config.catalog_dir()).map_err(ServerError::from)
}
