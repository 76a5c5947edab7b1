//! The [`Store`]: durable writes, ranged reads, listing and deletion of objects.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::StoreError;

/// Where objects live. Field names are the `[store]` config keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `file:///path`, `memory://` or `s3://bucket[/prefix]`. Empty means
    /// `file://{data_dir}/objects`.
    pub url: String,
    /// S3 endpoint (for MinIO, Garage, Ceph RGW...); empty means AWS.
    pub s3_endpoint: String,
    /// S3 region; empty means `AWS_REGION` or `us-east-1`.
    pub s3_region: String,
    /// Allow plain HTTP to the S3 endpoint (loopback test servers).
    pub s3_allow_http: bool,
}

/// Size and key of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object key.
    pub key: Path,
    /// Size in bytes.
    pub size: u64,
}

enum Backend {
    /// A local directory: writes go through a staging file, fsync and rename.
    Local { root: PathBuf, staging: PathBuf },
    /// Anything else: writes go through object_store (atomic on completion).
    Remote,
}

/// An object store with the durability Custody needs.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens the store named by `config`, defaulting to `{data_dir}/objects`.
    pub async fn open(config: &StoreConfig, data_dir: &FsPath) -> Result<Store, StoreError> {
        let url = if config.url.is_empty() {
            format!("file://{}", data_dir.join("objects").display())
        } else {
            config.url.clone()
        };
        if let Some(path) = url.strip_prefix("file://") {
            return Self::open_local(PathBuf::from(path), data_dir.join("staging"), url.clone())
                .await;
        }
        if url == "memory://" {
            return Ok(Self::memory());
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::Config(format!("no bucket in {url}")));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if !config.s3_endpoint.is_empty() {
                b = b.with_endpoint(&config.s3_endpoint);
            }
            if !config.s3_region.is_empty() {
                b = b.with_region(&config.s3_region);
            }
            b = b
                .with_allow_http(config.s3_allow_http)
                .with_retry(object_store::RetryConfig {
                    backoff: object_store::BackoffConfig::default(),
                    max_retries: 4,
                    // A caller (an upload, a sweep) learns of an outage within seconds.
                    retry_timeout: std::time::Duration::from_secs(15),
                });
            let s3 = b
                .build()
                .map_err(|e| StoreError::Config(format!("{url}: {e}")))?;
            let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix.trim_matches('/')))
            };
            return Ok(Store {
                inner,
                backend: Arc::new(Backend::Remote),
                url,
            });
        }
        Err(StoreError::Config(format!(
            "unsupported store url {url:?}: expected file://, memory:// or s3://"
        )))
    }

    async fn open_local(root: PathBuf, staging: PathBuf, url: String) -> Result<Store, StoreError> {
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| StoreError::io(&root, e))?;
        // Staging files are never acknowledged: whatever a crash left there goes.
        if tokio::fs::try_exists(&staging).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&staging)
                .await
                .map_err(|e| StoreError::io(&staging, e))?;
        }
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(|e| StoreError::io(&staging, e))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StoreError::Config(format!("{}: {e}", root.display())))?;
        Ok(Store {
            inner: Arc::new(fs),
            backend: Arc::new(Backend::Local { root, staging }),
            url,
        })
    }

    /// A store held in memory, for tests.
    pub fn memory() -> Store {
        Store {
            inner: Arc::new(InMemory::new()),
            backend: Arc::new(Backend::Remote),
            url: "memory://".to_string(),
        }
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local root directory, for `file://` stores.
    pub fn local_root(&self) -> Option<&FsPath> {
        match &*self.backend {
            Backend::Local { root, .. } => Some(root),
            Backend::Remote => None,
        }
    }

    /// Starts a streamed write of `key`; nothing is visible until
    /// [`ObjectWriter::commit`], which returns only once the object is durable.
    pub async fn writer(&self, key: &Path) -> Result<ObjectWriter, StoreError> {
        let inner = match &*self.backend {
            Backend::Local { root, staging } => {
                let tmp = staging.join(format!("{}.tmp", unique_suffix()));
                let file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| StoreError::io(&tmp, e))?;
                WriterInner::Local {
                    file,
                    tmp,
                    dest: root.join(key.as_ref()),
                    root: root.clone(),
                }
            }
            Backend::Remote => {
                let upload = self
                    .inner
                    .put_multipart(key)
                    .await
                    .map_err(|e| StoreError::backend(key, e))?;
                WriterInner::Remote(WriteMultipart::new(upload))
            }
        };
        Ok(ObjectWriter {
            key: key.clone(),
            inner,
            written: 0,
        })
    }

    /// Writes a small object only if `key` does not exist yet; durable on return.
    pub async fn put_create_only(&self, key: &Path, bytes: Bytes) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Local { root, staging } => {
                let tmp = staging.join(format!("{}.tmp", unique_suffix()));
                let dest = root.join(key.as_ref());
                let root = root.clone();
                tokio::task::spawn_blocking(move || {
                    write_durable_local(&tmp, &dest, &root, &bytes, true)
                })
                .await
                .map_err(|e| StoreError::io(key.as_ref(), std::io::Error::other(e)))?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => StoreError::AlreadyExists {
                        key: key.to_string(),
                    },
                    _ => StoreError::io(key.as_ref(), e),
                })
            }
            Backend::Remote => {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                self.inner
                    .put_opts(key, PutPayload::from(bytes), opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| StoreError::backend(key, e))
            }
        }
    }

    /// Size of an object.
    pub async fn head(&self, key: &Path) -> Result<ObjectInfo, StoreError> {
        let m = self
            .inner
            .head(key)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        Ok(ObjectInfo {
            key: m.location,
            size: m.size,
        })
    }

    /// Whole object.
    pub async fn get(&self, key: &Path) -> Result<Bytes, StoreError> {
        let r = self
            .inner
            .get(key)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        r.bytes().await.map_err(|e| StoreError::backend(key, e))
    }

    /// A byte range of an object.
    pub async fn get_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        self.inner
            .get_range(key, range)
            .await
            .map_err(|e| StoreError::backend(key, e))
    }

    /// A byte range of an object, as a stream of pieces.
    pub async fn get_range_stream(
        &self,
        key: &Path,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let opts = object_store::GetOptions {
            range: Some(range.into()),
            ..Default::default()
        };
        let r = self
            .inner
            .get_opts(key, opts)
            .await
            .map_err(|e| StoreError::backend(key, e))?;
        let k = key.clone();
        Ok(r.into_stream()
            .map_err(move |e| StoreError::backend(&k, e))
            .boxed())
    }

    /// Every object under `prefix` (recursively), in no particular order.
    pub fn list(&self, prefix: &Path) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
        let p = prefix.clone();
        self.inner
            .list(Some(prefix))
            .map(move |r| {
                r.map(|m| ObjectInfo {
                    key: m.location,
                    size: m.size,
                })
                .map_err(|e| StoreError::backend(&p, e))
            })
            .boxed()
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Writes `bytes` to `tmp`, fsyncs, then moves it to `dest` (refusing to
/// replace when `create_only`), fsyncing every directory it touched.
fn write_durable_local(
    tmp: &FsPath,
    dest: &FsPath,
    root: &FsPath,
    bytes: &[u8],
    create_only: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let r = publish_local(tmp, dest, root, create_only);
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r
}

/// Moves a synced staging file into place and makes the move durable.
fn publish_local(
    tmp: &FsPath,
    dest: &FsPath,
    root: &FsPath,
    create_only: bool,
) -> std::io::Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("object key has no parent directory"))?;
    let mut created = Vec::new();
    let mut d = parent;
    while !d.exists() {
        created.push(d.to_path_buf());
        match d.parent() {
            Some(p) if p.starts_with(root) => d = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(parent)?;
    if create_only {
        std::fs::hard_link(tmp, dest)?;
        std::fs::remove_file(tmp)?;
    } else {
        std::fs::rename(tmp, dest)?;
    }
    sync_dir(parent)?;
    // New directories exist durably only once their parents are synced too.
    for dir in created {
        if let Some(p) = dir.parent() {
            sync_dir(p)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

enum WriterInner {
    Local {
        file: tokio::fs::File,
        tmp: PathBuf,
        dest: PathBuf,
        root: PathBuf,
    },
    Remote(WriteMultipart),
}

/// A streamed object write in progress. Dropping it without
/// [`ObjectWriter::commit`] leaves nothing visible.
pub struct ObjectWriter {
    key: Path,
    inner: WriterInner,
    written: u64,
}

impl ObjectWriter {
    /// Appends bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        match &mut self.inner {
            WriterInner::Local { file, tmp, .. } => file
                .write_all(data)
                .await
                .map_err(|e| StoreError::io(&*tmp, e))?,
            WriterInner::Remote(w) => {
                // Bounded memory: wait until in-flight parts drain below 4.
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| StoreError::backend(&self.key, e))?;
                w.write(data);
            }
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the object visible and durable; returns its size.
    pub async fn commit(self) -> Result<u64, StoreError> {
        match self.inner {
            WriterInner::Local {
                mut file,
                tmp,
                dest,
                root,
            } => {
                let sync = async {
                    file.flush().await?;
                    file.sync_all().await
                };
                if let Err(e) = sync.await {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(StoreError::io(&tmp, e));
                }
                drop(file);
                let key = self.key.clone();
                tokio::task::spawn_blocking(move || {
                    let r = publish_local(&tmp, &dest, &root, false);
                    if r.is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    r
                })
                .await
                .map_err(|e| StoreError::io(key.as_ref(), std::io::Error::other(e)))?
                .map_err(|e| StoreError::io(key.as_ref(), e))?;
            }
            WriterInner::Remote(w) => {
                w.finish()
                    .await
                    .map_err(|e| StoreError::backend(&self.key, e))?;
            }
        }
        Ok(self.written)
    }

    /// Abandons the write; nothing becomes visible.
    pub async fn abort(self) {
        match self.inner {
            WriterInner::Local { file, tmp, .. } => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            WriterInner::Remote(w) => {
                let _ = w.abort().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn roundtrip(store: &Store) {
        let key = Path::from("segments/a/b/c.cseg");
        let mut w = store.writer(&key).await.unwrap();
        w.write(b"hello ").await.unwrap();
        assert!(
            store.head(&key).await.is_err(),
            "uncommitted write is visible"
        );
        w.write(b"world").await.unwrap();
        assert_eq!(w.commit().await.unwrap(), 11);
        assert_eq!(
            store.get(&key).await.unwrap(),
            Bytes::from_static(b"hello world")
        );
        assert_eq!(
            store.get_range(&key, 6..11).await.unwrap(),
            Bytes::from_static(b"world")
        );
        assert_eq!(store.head(&key).await.unwrap().size, 11);

        let aborted = Path::from("segments/a/b/d.cseg");
        let mut w = store.writer(&aborted).await.unwrap();
        w.write(b"partial").await.unwrap();
        w.abort().await;
        assert!(matches!(
            store.head(&aborted).await,
            Err(StoreError::NotFound { .. })
        ));

        let rec = Path::from("holds/h1.rec");
        store
            .put_create_only(&rec, Bytes::from_static(b"one"))
            .await
            .unwrap();
        let again = store
            .put_create_only(&rec, Bytes::from_static(b"two"))
            .await;
        assert!(
            matches!(again, Err(StoreError::AlreadyExists { .. })),
            "{again:?}"
        );
        assert_eq!(store.get(&rec).await.unwrap(), Bytes::from_static(b"one"));

        let listed: Vec<_> = store
            .list(&Path::from("segments"))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(store.head(&key).await.is_err());
    }

    #[tokio::test]
    async fn memory_store_semantics() {
        roundtrip(&Store::memory()).await;
    }

    #[tokio::test]
    async fn local_store_semantics_and_staging_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::default(), dir.path())
            .await
            .unwrap();
        roundtrip(&store).await;
        // A crash mid-write leaves a staging file; reopening removes it and it never shows.
        std::fs::write(dir.path().join("staging/leftover.tmp"), b"x").unwrap();
        let store = Store::open(&StoreConfig::default(), dir.path())
            .await
            .unwrap();
        assert!(!dir.path().join("staging/leftover.tmp").exists());
        let all: Vec<_> = store.list(&Path::from("")).try_collect().await.unwrap();
        assert!(all.iter().all(|o| !o.key.as_ref().contains("tmp")));
    }
}
