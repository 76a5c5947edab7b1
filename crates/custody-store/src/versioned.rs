//! Objects that are not records: replaced in place (heartbeats) or only if
//! unchanged since they were read (leases), and listings that resume after a
//! key (journals tailed by peers). Footage and sealed records never use
//! these: they are create-only.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::{ObjectInfo, Store, StoreError};

impl Store {
    /// Objects under `prefix` whose keys sort after `offset`. S3 lists in
    /// key order from the offset (`start-after`); other backends may not
    /// keep the order, so callers sort what they get.
    pub fn list_after(
        &self,
        prefix: &Path,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let p = prefix.clone();
        self.inner
            .list_with_offset(Some(prefix), offset)
            .map(move |r| {
                r.map(ObjectInfo::from)
                    .map_err(|e| StoreError::backend(&p, e))
            })
            .boxed()
    }

    /// The "directories" directly under `prefix` (common prefixes up to the
    /// next `/`), without listing the objects inside them.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>, StoreError> {
        let r = self
            .inner
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| StoreError::backend(prefix, e))?;
        Ok(r.common_prefixes)
    }

    /// Writes `key`, replacing whatever is there. Only for objects that are
    /// state, not records (a node's heartbeat). Returns what the engine
    /// stored, with its own modification time.
    pub async fn put_replace(&self, key: &Path, bytes: Bytes) -> Result<ObjectInfo, StoreError> {
        self.inner
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        self.head(key).await
    }

    /// Writes `key` only if the engine still holds `version` of it (S3
    /// `If-Match`): the compare-and-swap a lease is renewed or taken over
    /// with. A stale version fails with [`StoreError::Conflict`]. Returns
    /// the new version.
    pub async fn put_if_version(
        &self,
        key: &Path,
        bytes: Bytes,
        version: &str,
    ) -> Result<String, StoreError> {
        let opts = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: Some(version.to_string()),
                version: None,
            }),
            ..Default::default()
        };
        let r = self
            .inner
            .put_opts(key, PutPayload::from(bytes), opts)
            .await
            .map_err(|e| match e {
                object_store::Error::Precondition { .. } => StoreError::Conflict {
                    key: key.to_string(),
                },
                e => StoreError::backend(key, e),
            })?;
        match r.e_tag {
            Some(t) => Ok(t),
            None => Ok(self.head(key).await?.version.unwrap_or_default()),
        }
    }

    /// Deletes what large remote writes staged (parts uploaded, then copied
    /// into place) and left behind because their writer died, if the store
    /// wrote it before `cutoff` (the store's clock). Returns how many went.
    /// Uploads still in progress are younger than any sane cutoff; parts of
    /// multipart uploads never completed are not objects and are not seen
    /// here (an S3 lifecycle rule `AbortIncompleteMultipartUpload` ends them).
    pub async fn remove_stale_staging(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, StoreError> {
        let prefix = Path::from(crate::store::STAGING_PREFIX);
        let stale: Vec<Path> = self
            .list(&prefix)
            .try_filter_map(|o| async move { Ok((o.last_modified < cutoff).then_some(o.key)) })
            .try_collect()
            .await?;
        for key in &stale {
            self.delete(key).await?;
        }
        Ok(stale.len())
    }

    /// A whole object with its metadata (modification time and version).
    pub async fn get_with_info(&self, key: &Path) -> Result<(Bytes, ObjectInfo), StoreError> {
        let r = self
            .inner
            .get(key)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        let info = ObjectInfo::from(r.meta.clone());
        let bytes = r.bytes().await.map_err(|e| StoreError::backend(key, e))?;
        Ok((bytes, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn if_version_refuses_a_stale_version() {
        let store = Store::memory();
        let key = Path::from("cluster/leases/sweeper");
        store
            .put_create_only(&key, Bytes::from_static(b"a"))
            .await
            .unwrap();
        let v1 = store.head(&key).await.unwrap().version.unwrap();
        let v2 = store
            .put_if_version(&key, Bytes::from_static(b"b"), &v1)
            .await
            .unwrap();
        assert_ne!(v1, v2);
        let stale = store
            .put_if_version(&key, Bytes::from_static(b"c"), &v1)
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{stale:?}"
        );
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"b"));
    }

    #[tokio::test]
    async fn stale_staging_goes_and_fresh_staging_stays() {
        let store = Store::memory();
        let staged = Path::from("staging/left-behind");
        let segment = Path::from("segments/cam/main/x.cseg");
        for k in [&staged, &segment] {
            store
                .put_create_only(k, Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let written = store.head(&staged).await.unwrap().last_modified;
        // A cutoff before it was written: it may still be in use.
        assert_eq!(
            store
                .remove_stale_staging(written - chrono::Duration::seconds(1))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .remove_stale_staging(written + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            1
        );
        assert!(matches!(
            store.head(&staged).await,
            Err(StoreError::NotFound { .. })
        ));
        store
            .head(&segment)
            .await
            .expect("segments are never touched");
    }

    #[tokio::test]
    async fn list_after_skips_what_was_seen() {
        let store = Store::memory();
        for i in 0..5u32 {
            let key = Path::from(format!("j/n1/{i:020}"));
            store.put_create_only(&key, Bytes::new()).await.unwrap();
        }
        let mut after: Vec<String> = store
            .list_after(&Path::from("j/n1"), &Path::from(format!("j/n1/{:020}", 2)))
            .map_ok(|o| o.key.to_string())
            .try_collect()
            .await
            .unwrap();
        after.sort();
        assert_eq!(
            after,
            vec![format!("j/n1/{:020}", 3), format!("j/n1/{:020}", 4)]
        );
    }
}
