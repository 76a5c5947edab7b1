//! The conditional-write probe: whether the engine behind a [`Store`]
//! really refuses a create-only write of an existing key. Every record a
//! cluster shares (segments, holds, leases, journal entries) relies on it;
//! an engine that ignores `If-None-Match` (Garage 2.5 does) would let two
//! nodes both "win" the same key.

use bytes::Bytes;
use object_store::path::Path;

use crate::store::Store;
use crate::StoreError;

/// Prefix of the probe's objects; each probe writes fresh keys under it and
/// deletes them afterwards.
pub(crate) const PROBE_PREFIX: &str = "cluster/probe";

const FIRST: &[u8] = b"custody conditional-write probe: first";
const SECOND: &[u8] = b"custody conditional-write probe: second";

impl Store {
    /// Checks that the engine honours create-only writes: two create-only
    /// writes of one fresh key must give exactly one
    /// [`StoreError::AlreadyExists`] and leave the first bytes in place, and
    /// the create-only copy that large objects land with
    /// (`copy_if_not_exists`) must refuse an existing destination likewise.
    /// Fails with [`StoreError::NoConditionalWrites`] when the engine
    /// ignores the condition, or with the backend's error when the probe
    /// cannot run. The probe's objects are deleted either way.
    pub async fn probe_conditional_writes(&self) -> Result<(), StoreError> {
        let id = probe_id();
        let key = Path::from_iter([PROBE_PREFIX.to_string(), id.clone()]);
        let copy = Path::from_iter([PROBE_PREFIX.to_string(), format!("{id}.copy")]);
        let verdict = self.probe_keys(&key, &copy).await;
        let cleanup = async {
            self.delete(&key).await?;
            self.delete(&copy).await
        }
        .await;
        match (verdict, cleanup) {
            (Err(e), cleanup) => {
                if let Err(c) = cleanup {
                    tracing::warn!(key = %key, error = %c, "conditional-write probe left its objects behind");
                }
                Err(e)
            }
            (Ok(()), cleanup) => cleanup,
        }
    }

    async fn probe_keys(&self, key: &Path, copy: &Path) -> Result<(), StoreError> {
        let refused = |detail: &str| StoreError::NoConditionalWrites {
            url: self.url().to_string(),
            detail: detail.to_string(),
        };
        self.put_create_only(key, Bytes::from_static(FIRST)).await?;
        match self.put_create_only(key, Bytes::from_static(SECOND)).await {
            Err(StoreError::AlreadyExists { .. }) => {}
            Ok(()) => {
                return Err(refused(
                    "a second create-only PUT of one key succeeded instead of failing with PreconditionFailed",
                ))
            }
            Err(e) => return Err(e),
        }
        if self.get(key).await? != FIRST {
            return Err(refused(
                "a refused create-only PUT replaced the object all the same",
            ));
        }
        // The large-object path lands with a create-only copy.
        self.copy_create_only(key, copy).await?;
        match self.copy_create_only(key, copy).await {
            Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Ok(()) => Err(refused(
                "a create-only copy onto an existing object succeeded",
            )),
            Err(e) => Err(e),
        }
    }

    /// Copies `from` to `to` only if `to` does not exist.
    async fn copy_create_only(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        self.inner
            .copy_if_not_exists(from, to)
            .await
            .map_err(|e| StoreError::backend(to, e))
    }
}

/// A fresh probe key name: random per call, so concurrent probes (several
/// nodes starting at once) never see each other's objects.
fn probe_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    format!("{:016x}-{}", h.finish(), std::process::id())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
        PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;

    /// An in-memory engine that may ignore `If-None-Match`: with `put`
    /// false a create-only PUT overwrites (as on Garage 2.5), with `copy`
    /// false a create-only copy replaces its destination.
    #[derive(Debug)]
    struct Engine {
        inner: InMemory,
        put: bool,
        copy: bool,
    }

    impl Engine {
        fn store(put: bool, copy: bool) -> Store {
            Store::from_object_store(Arc::new(Engine {
                inner: InMemory::new(),
                put,
                copy,
            }))
        }
    }

    impl std::fmt::Display for Engine {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Engine(put: {}, copy: {})", self.put, self.copy)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Engine {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            mut opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            if !self.put && opts.mode == PutMode::Create {
                opts.mode = PutMode::Overwrite;
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            if self.copy {
                self.inner.copy_if_not_exists(from, to).await
            } else {
                self.inner.copy(from, to).await
            }
        }
    }

    async fn leftovers(store: &Store) -> Vec<String> {
        store
            .list(&Path::from(PROBE_PREFIX))
            .map_ok(|o| o.key.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn probe_passes_on_an_engine_that_honours_create_only() {
        for store in [Store::memory(), Engine::store(true, true)] {
            store.probe_conditional_writes().await.unwrap();
            // Twice: each probe uses fresh keys and cleans up after itself.
            store.probe_conditional_writes().await.unwrap();
            assert!(leftovers(&store).await.is_empty());
        }
    }

    #[tokio::test]
    async fn probe_passes_on_a_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::StoreConfig::default(), dir.path())
            .await
            .unwrap();
        store.probe_conditional_writes().await.unwrap();
        assert!(leftovers(&store).await.is_empty());
    }

    #[tokio::test]
    async fn probe_refuses_an_engine_that_ignores_if_none_match() {
        let store = Engine::store(false, false);
        let err = store.probe_conditional_writes().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::NoConditionalWrites { detail, .. } if detail.contains("PUT")),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("ignores If-None-Match") && msg.contains("cluster member"),
            "{msg}"
        );
        assert!(leftovers(&store).await.is_empty(), "probe objects left");
    }

    #[tokio::test]
    async fn probe_refuses_an_engine_whose_copy_ignores_the_condition() {
        let store = Engine::store(true, false);
        let err = store.probe_conditional_writes().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::NoConditionalWrites { detail, .. } if detail.contains("copy")),
            "{err:?}"
        );
        assert!(leftovers(&store).await.is_empty(), "probe objects left");
    }
}
