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

use crate::StoreError;

/// Where objects live. Field names are the `[store]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Objects up to this size are written to S3 with one create-only PUT
    /// (`If-None-Match: *`) from memory; larger ones are uploaded in parts
    /// to a staging key and copied into place create-only.
    pub s3_single_put_max_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_allow_http: false,
            s3_single_put_max_bytes: DEFAULT_SINGLE_PUT_MAX_BYTES,
        }
    }
}

/// Default of [`StoreConfig::s3_single_put_max_bytes`].
pub(crate) const DEFAULT_SINGLE_PUT_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Prefix of objects a large remote write stages before its create-only copy.
pub(crate) const STAGING_PREFIX: &str = "staging";

/// How an `s3://` store copies create-only (object_store's
/// `aws_copy_if_not_exists`): one CopyObject with `If-None-Match: *`.
pub(crate) const S3_COPY_IF_NOT_EXISTS: &str = "header: If-None-Match: *";

/// Key, size, and the engine's own modification time and version of a
/// stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object key.
    pub key: Path,
    /// Size in bytes.
    pub size: u64,
    /// When the engine last wrote the object, by the engine's clock.
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// The engine's version tag (ETag), where it gives one.
    pub version: Option<String>,
}

impl From<object_store::ObjectMeta> for ObjectInfo {
    fn from(m: object_store::ObjectMeta) -> Self {
        ObjectInfo {
            key: m.location,
            size: m.size,
            last_modified: m.last_modified,
            version: m.e_tag,
        }
    }
}

enum Backend {
    /// A local directory: writes go through a staging file, fsync and a
    /// hard link into place (which fails if the name exists).
    Local {
        root: PathBuf,
        staging: PathBuf,
        /// Directories whose entry in their parent is known durable.
        durable_dirs: Arc<DurableDirs>,
    },
    /// Anything else: create-only PUTs, or parts staged then copied create-only.
    Remote { single_put_max: usize },
}

/// An object store with the durability Custody needs.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<dyn ObjectStore>,
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
                // Large segments land with a create-only copy: CopyObject
                // with If-None-Match: * (412 if the key exists). Not the
                // "multipart" mode (a multipart copy completed with
                // If-None-Match): SeaweedFS checks that condition before
                // completing but not atomically, so concurrent completions
                // of one key all succeed (tests/e2e/seaweed.rs).
                .with_config(
                    object_store::aws::AmazonS3ConfigKey::CopyIfNotExists,
                    S3_COPY_IF_NOT_EXISTS,
                )
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
            let single_put_max = config.s3_single_put_max_bytes.max(1);
            return Ok(Store {
                inner,
                backend: Arc::new(Backend::Remote {
                    single_put_max: usize::try_from(single_put_max).unwrap_or(usize::MAX),
                }),
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
            backend: Arc::new(Backend::Local {
                root,
                staging,
                durable_dirs: Arc::new(DurableDirs::default()),
            }),
            url,
        })
    }

    /// A store held in memory, for tests.
    pub fn memory() -> Store {
        Self::memory_with_single_put_max(DEFAULT_SINGLE_PUT_MAX_BYTES as usize)
    }

    /// A store over any [`ObjectStore`] with the remote write path, for
    /// tests with engines that behave differently from [`InMemory`].
    #[cfg(test)]
    pub(crate) fn from_object_store(inner: Arc<dyn ObjectStore>) -> Store {
        Store {
            inner,
            backend: Arc::new(Backend::Remote {
                single_put_max: DEFAULT_SINGLE_PUT_MAX_BYTES as usize,
            }),
            url: "test://".to_string(),
        }
    }

    /// A store held in memory whose writes switch to the staged path above
    /// `single_put_max` bytes, for tests of that path.
    pub fn memory_with_single_put_max(single_put_max: usize) -> Store {
        Store {
            inner: Arc::new(InMemory::new()),
            backend: Arc::new(Backend::Remote { single_put_max }),
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
            Backend::Remote { .. } => None,
        }
    }

    /// Starts a streamed, create-only write of `key`; nothing is visible
    /// until [`ObjectWriter::commit`], which returns only once the object is
    /// durable, and fails with [`StoreError::AlreadyExists`] (writing
    /// nothing) if an object named `key` exists by then.
    pub async fn writer(&self, key: &Path) -> Result<ObjectWriter, StoreError> {
        let inner = match &*self.backend {
            Backend::Local {
                root,
                staging,
                durable_dirs,
            } => {
                // The staging file is created by the first blocking write,
                // not here: one thread hop less per object.
                let tmp = staging.join(format!("{}.tmp", unique_suffix()));
                WriterInner::Local {
                    file: LocalFile::Unopened,
                    pending: Vec::new(),
                    tmp,
                    dest: root.join(key.as_ref()),
                    root: root.clone(),
                    durable_dirs: durable_dirs.clone(),
                }
            }
            Backend::Remote { single_put_max } => WriterInner::Buffered {
                buf: Vec::new(),
                max: *single_put_max,
                store: self.inner.clone(),
            },
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
            Backend::Local {
                root,
                staging,
                durable_dirs,
            } => {
                let tmp = staging.join(format!("{}.tmp", unique_suffix()));
                let dest = root.join(key.as_ref());
                let root = root.clone();
                let durable_dirs = durable_dirs.clone();
                tokio::task::spawn_blocking(move || {
                    write_durable_local(&tmp, &dest, &root, &durable_dirs, &bytes)
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
            Backend::Remote { .. } => {
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
        Ok(m.into())
    }

    /// Whether an object named `key` exists. A local store answers with
    /// one `stat` on the calling thread (microseconds, no thread hop: this
    /// is on every upload's path); others ask the engine.
    pub async fn exists(&self, key: &Path) -> Result<bool, StoreError> {
        if let Backend::Local { root, .. } = &*self.backend {
            return match std::fs::symlink_metadata(root.join(key.as_ref())) {
                Ok(m) => Ok(m.is_file()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::io(key.as_ref(), e)),
            };
        }
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
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
                r.map(ObjectInfo::from)
                    .map_err(|e| StoreError::backend(&p, e))
            })
            .boxed()
    }

    /// Makes the names of committed objects durable: one fsync per distinct
    /// directory across every [`PendingSync`] given (group commit). Blocking:
    /// call from a blocking thread.
    pub fn sync_dirs(&self, pending: &PendingSync) -> Result<(), StoreError> {
        match &*self.backend {
            Backend::Local { durable_dirs, .. } => durable_dirs
                .sync(&pending.dirs)
                .map_err(|e| StoreError::io("directory sync", e)),
            Backend::Remote { .. } => Ok(()),
        }
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A random per-process seed; the counter in unique_suffix orders within.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Writes `bytes` to `tmp`, fsyncs, then links it to `dest` (never replacing
/// an existing object), fsyncing every directory it touched.
fn write_durable_local(
    tmp: &FsPath,
    dest: &FsPath,
    root: &FsPath,
    durable_dirs: &DurableDirs,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let dirs = match publish_local(tmp, dest, root, durable_dirs) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
    };
    durable_dirs.sync(&dirs)
}

/// Links a synced staging file into place, never replacing an existing
/// object (`link(2)` fails with `EEXIST`). Returns the directories whose
/// fsync makes the link durable: its own, and the parent of every ancestor
/// not yet known durable (one another writer may have just created).
fn publish_local(
    tmp: &FsPath,
    dest: &FsPath,
    root: &FsPath,
    durable_dirs: &DurableDirs,
) -> std::io::Result<Vec<PathBuf>> {
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("object key has no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    std::fs::hard_link(tmp, dest)?;
    std::fs::remove_file(tmp)?;
    let mut dirs = vec![parent.to_path_buf()];
    let mut d = parent;
    while d != root && !durable_dirs.contains(d) {
        match d.parent() {
            Some(p) if p.starts_with(root) => {
                dirs.push(p.to_path_buf());
                d = p;
            }
            _ => break,
        }
    }
    Ok(dirs)
}

/// Directories known to be durably linked into their parents, so a commit
/// fsyncs only what it must. Bounded: forgetting only costs extra fsyncs.
#[derive(Debug, Default)]
struct DurableDirs {
    known: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl DurableDirs {
    const MAX: usize = 100_000;

    fn contains(&self, dir: &FsPath) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(dir)
    }

    /// Fsyncs each directory once, then remembers their children as durable.
    fn sync(&self, dirs: &[PathBuf]) -> std::io::Result<()> {
        let mut unique: Vec<&PathBuf> = dirs.iter().collect();
        unique.sort();
        unique.dedup();
        sync_dirs_concurrently(&unique)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() > Self::MAX {
            known.clear();
        }
        // A synced directory makes its entries durable: every directory in
        // the list below it is now durably linked.
        for d in dirs {
            if let Some(p) = d.parent() {
                if unique.iter().any(|u| u.as_path() == p) {
                    known.insert(d.clone());
                }
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Most directory fsyncs one group commit has in flight at once.
const DIR_SYNC_THREADS: usize = 16;

/// Fsyncs every directory in `dirs`, up to [`DIR_SYNC_THREADS`] at a time.
/// A round of segments from many cameras touches as many directories; one
/// after the other they would cost one disk round trip each, where the
/// disk serves them together (as it serves concurrent writers' fsyncs).
/// Returns the first error after every sync has finished.
fn sync_dirs_concurrently(dirs: &[&PathBuf]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if dirs.len() <= 1 {
        return dirs.iter().try_for_each(|d| sync_dir(d));
    }
    let next = AtomicUsize::new(0);
    let worker = || -> std::io::Result<()> {
        let mut first_error = Ok(());
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(dir) = dirs.get(i) else {
                return first_error;
            };
            if let Err(e) = sync_dir(dir) {
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..dirs.len().min(DIR_SYNC_THREADS))
            .map(|_| scope.spawn(worker))
            .collect();
        let mut result = worker();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("directory sync thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// Directory syncs a committed local object still needs before it is
/// durable: give them to [`Store::sync_dirs`], alone or with others'
/// (group commit). Empty for other backends.
#[derive(Debug, Default)]
#[must_use = "the object is not durable until its directories are synced"]
pub struct PendingSync {
    dirs: Vec<PathBuf>,
}

impl PendingSync {
    /// Adds another commit's directories.
    pub fn merge(&mut self, other: PendingSync) {
        self.dirs.extend(other.dirs);
    }

    /// Whether nothing is left to sync.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

/// A local object whose bytes are durable in a staging file, not yet under
/// its name. Dropping it leaves the staging file to the startup cleanup;
/// [`StagedObject::discard`] removes it at once.
#[derive(Debug)]
pub struct StagedObject {
    key: Path,
    tmp: PathBuf,
    dest: PathBuf,
    root: PathBuf,
    durable_dirs: Arc<DurableDirs>,
    size: u64,
}

impl StagedObject {
    /// Object size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's key.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// Links the object into place, never replacing one
    /// ([`StoreError::AlreadyExists`], and the staging file is removed).
    /// Returns the directory syncs that make the name durable. Blocking:
    /// call from a blocking thread (the group commit's).
    pub fn publish(self) -> Result<PendingSync, StoreError> {
        match publish_local(&self.tmp, &self.dest, &self.root, &self.durable_dirs) {
            Ok(dirs) => Ok(PendingSync { dirs }),
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                Err(match e.kind() {
                    std::io::ErrorKind::AlreadyExists => StoreError::AlreadyExists {
                        key: self.key.to_string(),
                    },
                    _ => StoreError::io(self.key.as_ref(), e),
                })
            }
        }
    }

    /// Removes the staging file; nothing becomes visible. Blocking.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Bytes a local writer gathers before handing them to a blocking write.
const LOCAL_WRITE_BATCH: usize = 1024 * 1024;

/// The staging file of a local write.
enum LocalFile {
    /// Not created yet (nothing written to disk).
    Unopened,
    Open(std::fs::File),
    /// A blocking write failed or was cancelled: the write cannot go on.
    Broken,
}

impl LocalFile {
    /// The open file, creating it on first use.
    fn open(self, tmp: &FsPath) -> std::io::Result<std::fs::File> {
        match self {
            LocalFile::Open(f) => Ok(f),
            LocalFile::Unopened => std::fs::File::create_new(tmp),
            LocalFile::Broken => Err(std::io::Error::other(
                "an earlier write to this staging file failed",
            )),
        }
    }
}

/// Appends `pending` then `data` to the staging file (created on first use).
fn append_local(
    file: LocalFile,
    tmp: &FsPath,
    pending: &[u8],
    data: &[u8],
) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let mut f = file.open(tmp)?;
    f.write_all(pending)?;
    f.write_all(data)?;
    Ok(f)
}

fn join_error(e: tokio::task::JoinError) -> std::io::Error {
    std::io::Error::other(format!("write task: {e}"))
}

/// Runs `produce` and writes `pending` then its bytes to the staging file,
/// all on one blocking thread. Returns `produce`'s value and how many bytes
/// it produced. After a failure the file is [`LocalFile::Broken`].
async fn write_local<T, F>(
    file: &mut LocalFile,
    pending: &mut Vec<u8>,
    tmp: &FsPath,
    produce: F,
) -> Result<(T, u64), StoreError>
where
    F: FnOnce() -> (T, Vec<u8>) + Send + 'static,
    T: Send + 'static,
{
    let f = std::mem::replace(file, LocalFile::Broken);
    let gathered = std::mem::take(pending);
    let path = tmp.to_path_buf();
    let (value, n, result) = tokio::task::spawn_blocking(move || {
        let (value, data) = produce();
        let result = append_local(f, &path, &gathered, &data);
        (value, data.len() as u64, result)
    })
    .await
    .map_err(|e| StoreError::io(tmp, join_error(e)))?;
    *file = LocalFile::Open(result.map_err(|e| StoreError::io(tmp, e))?);
    Ok((value, n))
}

enum WriterInner {
    Local {
        file: LocalFile,
        /// Small writes (the container prefix, the tail) gathered for the
        /// next blocking write.
        pending: Vec<u8>,
        tmp: PathBuf,
        dest: PathBuf,
        root: PathBuf,
        durable_dirs: Arc<DurableDirs>,
    },
    /// Small so far: held in memory for one create-only PUT.
    Buffered {
        buf: Vec<u8>,
        max: usize,
        store: Arc<dyn ObjectStore>,
    },
    /// Past the single-PUT size: parts go to `staging`, copied create-only
    /// to the key on commit.
    Staged {
        upload: WriteMultipart,
        staging: Path,
        store: Arc<dyn ObjectStore>,
    },
}

/// A streamed object write in progress. Dropping it without
/// [`ObjectWriter::commit`] leaves nothing visible.
pub struct ObjectWriter {
    key: Path,
    inner: WriterInner,
    written: u64,
}

impl ObjectWriter {
    /// Appends bytes. Local writes are gathered in memory up to
    /// `LOCAL_WRITE_BATCH` bytes, then written on a blocking thread.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if let WriterInner::Local {
            file, pending, tmp, ..
        } = &mut self.inner
        {
            pending.extend_from_slice(data);
            self.written += data.len() as u64;
            if pending.len() >= LOCAL_WRITE_BATCH {
                write_local(file, pending, tmp, || ((), Vec::new())).await?;
            }
            return Ok(());
        }
        self.write_remote(data).await
    }

    /// Appends bytes to a remote write (buffered, then staged in parts).
    async fn write_remote(&mut self, data: &[u8]) -> Result<(), StoreError> {
        match &mut self.inner {
            WriterInner::Local { pending, .. } => pending.extend_from_slice(data),
            WriterInner::Buffered { buf, max, store } => {
                if buf.len() + data.len() <= *max {
                    buf.extend_from_slice(data);
                } else {
                    let staging = Path::from_iter([
                        STAGING_PREFIX.to_string(),
                        format!("{}-{:016x}.part", unique_suffix(), rand_suffix()),
                    ]);
                    let upload = store
                        .put_multipart(&staging)
                        .await
                        .map_err(|e| StoreError::backend(&staging, e))?;
                    let mut upload = WriteMultipart::new(upload);
                    upload.write(buf);
                    upload.write(data);
                    let store = store.clone();
                    self.inner = WriterInner::Staged {
                        upload,
                        staging,
                        store,
                    };
                }
            }
            WriterInner::Staged {
                upload, staging, ..
            } => {
                // Bounded memory: wait until in-flight parts drain below 4.
                upload
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| StoreError::backend(&*staging, e))?;
                upload.write(data);
            }
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Runs `produce` (CPU work such as encryption) on a blocking thread
    /// and appends the bytes it returns. For a local store the same thread
    /// also writes them, after anything gathered by [`ObjectWriter::write`]:
    /// one thread hop per piece and no copy into another buffer.
    pub async fn write_from<T, F>(&mut self, produce: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> (T, Vec<u8>) + Send + 'static,
        T: Send + 'static,
    {
        if let WriterInner::Local {
            file, pending, tmp, ..
        } = &mut self.inner
        {
            let (value, n) = write_local(file, pending, tmp, produce).await?;
            self.written += n;
            return Ok(value);
        }
        let (value, data) = tokio::task::spawn_blocking(produce)
            .await
            .map_err(|e| StoreError::io(self.key.as_ref(), join_error(e)))?;
        self.write_remote(&data).await?;
        Ok(value)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the object visible and durable; returns its size.
    pub async fn commit(self) -> Result<u64, StoreError> {
        let store_dirs = match &self.inner {
            WriterInner::Local { durable_dirs, .. } => Some(durable_dirs.clone()),
            _ => None,
        };
        let (size, pending) = self.commit_deferred().await?;
        if let Some(durable_dirs) = store_dirs {
            tokio::task::spawn_blocking(move || durable_dirs.sync(&pending.dirs))
                .await
                .map_err(|e| StoreError::io("directory sync", std::io::Error::other(e)))?
                .map_err(|e| StoreError::io("directory sync", e))?;
        }
        Ok(size)
    }

    /// Makes the object visible with its bytes durable, and returns its
    /// size and the directory syncs that make its name durable too: the
    /// caller batches those with other commits' ([`Store::sync_dirs`])
    /// before acknowledging. Fails with [`StoreError::AlreadyExists`]
    /// (writing nothing) if the key exists.
    pub async fn commit_deferred(self) -> Result<(u64, PendingSync), StoreError> {
        match self.inner {
            WriterInner::Local { .. } => {
                let staged = self.stage().await?;
                let size = staged.size();
                let key = staged.key().clone();
                let pending = tokio::task::spawn_blocking(move || staged.publish())
                    .await
                    .map_err(|e| StoreError::io(key.as_ref(), join_error(e)))??;
                return Ok((size, pending));
            }
            WriterInner::Buffered { buf, store, .. } => {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                store
                    .put_opts(&self.key, PutPayload::from(buf), opts)
                    .await
                    .map_err(|e| StoreError::backend(&self.key, e))?;
            }
            WriterInner::Staged {
                upload,
                staging,
                store,
            } => {
                upload
                    .finish()
                    .await
                    .map_err(|e| StoreError::backend(&staging, e))?;
                let copied = store
                    .copy_if_not_exists(&staging, &self.key)
                    .await
                    .map_err(|e| StoreError::backend(&self.key, e));
                if let Err(e) = store.delete(&staging).await {
                    tracing::warn!(key = %staging, error = %e, "staged part upload left behind");
                }
                copied?;
            }
        }
        Ok((self.written, PendingSync::default()))
    }

    /// Whether the object goes to a local directory, where it is
    /// [staged](ObjectWriter::stage) and linked into place by the caller's
    /// group commit; other backends publish in [`ObjectWriter::commit_deferred`].
    pub fn is_local(&self) -> bool {
        matches!(self.inner, WriterInner::Local { .. })
    }

    /// Local writes only: writes what is left to the staging file and
    /// fsyncs it, in one blocking call, without giving it its name yet.
    /// [`StagedObject::publish`] links it into place. Other backends are
    /// refused: they have no staging file ([`ObjectWriter::is_local`]).
    pub async fn stage(self) -> Result<StagedObject, StoreError> {
        let WriterInner::Local {
            file,
            pending: gathered,
            tmp,
            dest,
            root,
            durable_dirs,
        } = self.inner
        else {
            return Err(StoreError::io(
                self.key.as_ref(),
                std::io::Error::other("only local writes are staged"),
            ));
        };
        let staged = tmp.clone();
        tokio::task::spawn_blocking(move || {
            let synced = append_local(file, &tmp, &gathered, &[]).and_then(|f| f.sync_all());
            if let Err(e) = synced {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::io(&tmp, e));
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::io(&staged, join_error(e)))??;
        Ok(StagedObject {
            key: self.key,
            tmp: staged,
            dest,
            root,
            durable_dirs,
            size: self.written,
        })
    }

    /// Abandons the write; nothing becomes visible.
    pub async fn abort(self) {
        match self.inner {
            WriterInner::Local { file, tmp, .. } => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            WriterInner::Buffered { .. } => {}
            WriterInner::Staged { upload, .. } => {
                let _ = upload.abort().await;
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
        assert!(!store.exists(&key).await.unwrap());
        w.write(b"world").await.unwrap();
        assert_eq!(w.commit().await.unwrap(), 11);
        assert!(store.exists(&key).await.unwrap());
        assert!(
            !store.exists(&Path::from("segments/a/b")).await.unwrap(),
            "a directory is not an object"
        );
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

    /// A second streamed write of an existing key fails and changes nothing.
    async fn never_overwrites(store: &Store, len: usize) {
        let key = Path::from("segments/c/main/2026/01/01/10/x.cseg");
        let first = vec![1u8; len];
        let mut w = store.writer(&key).await.unwrap();
        w.write(&first).await.unwrap();
        w.commit().await.unwrap();
        let mut w = store.writer(&key).await.unwrap();
        w.write(&vec![2u8; len]).await.unwrap();
        let again = w.commit().await;
        assert!(
            matches!(again, Err(StoreError::AlreadyExists { .. })),
            "{again:?}"
        );
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from(first));
        // Nothing staged is left behind, whichever path the write took.
        let staged: Vec<_> = store
            .list(&Path::from(STAGING_PREFIX))
            .try_collect()
            .await
            .unwrap();
        assert!(staged.is_empty(), "{staged:?}");
    }

    #[tokio::test]
    async fn memory_store_semantics() {
        roundtrip(&Store::memory()).await;
        never_overwrites(&Store::memory(), 1000).await;
    }

    #[tokio::test]
    async fn large_remote_writes_are_staged_and_copied_create_only() {
        let store = Store::memory_with_single_put_max(64);
        roundtrip(&store).await;
        never_overwrites(&store, 10_000).await;
    }

    #[tokio::test]
    async fn local_writes_never_replace_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::default(), dir.path())
            .await
            .unwrap();
        never_overwrites(&store, 1000).await;
        // A deferred commit is visible at once and made durable by sync_dirs.
        let key = Path::from("segments/d/main/2026/01/01/10/y.cseg");
        let mut w = store.writer(&key).await.unwrap();
        w.write(b"abc").await.unwrap();
        let (n, pending) = w.commit_deferred().await.unwrap();
        assert_eq!(n, 3);
        assert!(!pending.is_empty(), "a new directory chain needs syncs");
        store.sync_dirs(&pending).unwrap();
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"abc"));
    }

    /// A staged object is invisible until published; publishing onto an
    /// existing name refuses without replacing it and leaves no staging
    /// file; a discarded one leaves nothing.
    #[tokio::test]
    async fn staged_objects_are_linked_create_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::default(), dir.path())
            .await
            .unwrap();
        let staging_files = || {
            std::fs::read_dir(dir.path().join("staging"))
                .unwrap()
                .count()
        };
        let key = Path::from("segments/s/main/2026/01/01/10/a.cseg");
        let stage = |bytes: &'static [u8]| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let mut w = store.writer(&key).await.unwrap();
                assert!(w.is_local());
                w.write(bytes).await.unwrap();
                w.stage().await.unwrap()
            }
        };
        let first = stage(b"first").await;
        assert_eq!(first.size(), 5);
        assert!(matches!(
            store.head(&key).await,
            Err(StoreError::NotFound { .. })
        ));
        let second = stage(b"other bytes").await;
        assert_eq!(staging_files(), 2);
        let pending = first.publish().unwrap();
        store.sync_dirs(&pending).unwrap();
        assert!(matches!(
            second.publish(),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"first"));
        assert_eq!(
            staging_files(),
            0,
            "publishing or refusing removes the staging file"
        );
        stage(b"dropped").await.discard();
        assert_eq!(staging_files(), 0);
        // Other backends publish while uploading and have nothing to stage.
        let mem = Store::memory();
        let w = mem.writer(&key).await.unwrap();
        assert!(!w.is_local());
        assert!(w.stage().await.is_err());
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

    /// Gathered small writes, pieces produced on the writer's blocking
    /// thread and a batch-sized write land in order, whatever the backend;
    /// nothing is visible before commit.
    async fn mixed_writes(store: &Store) {
        let key = Path::from("segments/m/main/2026/01/01/10/z.cseg");
        let big: Vec<u8> = (0..LOCAL_WRITE_BATCH + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = store.writer(&key).await.unwrap();
        w.write(b"prefix-").await.unwrap();
        let n = w
            .write_from(|| (42u8, b"produced-".to_vec()))
            .await
            .unwrap();
        assert_eq!(n, 42);
        w.write(&big).await.unwrap();
        w.write(b"-tail").await.unwrap();
        assert_eq!(w.written(), (7 + 9 + big.len() + 5) as u64);
        assert!(
            store.head(&key).await.is_err(),
            "uncommitted write is visible"
        );
        assert_eq!(w.commit().await.unwrap(), (7 + 9 + big.len() + 5) as u64);
        let mut want = b"prefix-produced-".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"-tail");
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from(want));
    }

    #[tokio::test]
    async fn produced_and_gathered_writes_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let local = Store::open(&StoreConfig::default(), dir.path())
            .await
            .unwrap();
        mixed_writes(&local).await;
        mixed_writes(&Store::memory()).await;
        mixed_writes(&Store::memory_with_single_put_max(1000)).await;
        // Nothing is left in staging by a committed or an aborted write,
        // whether or not its file was created yet.
        let mut w = local
            .writer(&Path::from("segments/a/x.cseg"))
            .await
            .unwrap();
        w.write(b"small").await.unwrap();
        w.abort().await;
        let mut w = local
            .writer(&Path::from("segments/a/y.cseg"))
            .await
            .unwrap();
        w.write_from(|| ((), vec![1u8; 10])).await.unwrap();
        w.abort().await;
        assert_eq!(
            std::fs::read_dir(dir.path().join("staging"))
                .unwrap()
                .count(),
            0
        );
        assert!(local.head(&Path::from("segments/a/x.cseg")).await.is_err());
        assert!(local.head(&Path::from("segments/a/y.cseg")).await.is_err());
    }
}
