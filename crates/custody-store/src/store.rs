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
    /// A local directory: an upload is written to a file without a name
    /// (`O_TMPFILE`) in its object's directory, or to a named staging file
    /// where the file system has none, fsynced, then linked into place
    /// (which fails if the name exists).
    Local {
        root: PathBuf,
        staging: PathBuf,
        /// Directories whose entry in their parent is known durable.
        durable_dirs: Arc<DurableDirs>,
        /// Removes the staging names of published objects.
        reaper: Arc<StagingReaper>,
        /// Whether uploads are written as files without a name
        /// (`O_TMPFILE`) where the file system allows; else as named
        /// staging files.
        anonymous_files: bool,
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
        Self::open_local_with(root, staging, url, true).await
    }

    async fn open_local_with(
        root: PathBuf,
        staging: PathBuf,
        url: String,
        anonymous_files: bool,
    ) -> Result<Store, StoreError> {
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
                reaper: Arc::new(StagingReaper::start()),
                anonymous_files,
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
                reaper,
                anonymous_files,
            } => {
                // The staging file is created by the first blocking write,
                // not here: one thread hop less per object.
                let tmp = staging.join(format!("{}.tmp", unique_suffix()));
                WriterInner::Local {
                    file: LocalFile::Unopened {
                        anonymous: *anonymous_files,
                    },
                    pending: Vec::new(),
                    tmp,
                    dest: root.join(key.as_ref()),
                    root: root.clone(),
                    durable_dirs: durable_dirs.clone(),
                    reaper: reaper.clone(),
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
                reaper,
                ..
            } => {
                let tmp = staging.join(format!("{}.tmp", unique_suffix()));
                let dest = root.join(key.as_ref());
                let root = root.clone();
                let durable_dirs = durable_dirs.clone();
                let reaper = reaper.clone();
                tokio::task::spawn_blocking(move || {
                    write_durable_local(&tmp, &dest, &root, &durable_dirs, &reaper, &bytes)
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
    reaper: &StagingReaper,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let dirs = match publish_local(LinkSource::Named(tmp), dest, root, durable_dirs) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
    };
    reaper.remove(tmp.to_path_buf());
    durable_dirs.sync(&dirs)
}

/// Links a synced staging file into place, never replacing an existing
/// object (`link(2)` fails with `EEXIST`); the staging name stays, for the
/// caller to give to the [`StagingReaper`]. Returns the directories whose
/// fsync makes the link durable: its own, and the parent of every ancestor
/// not yet known durable (one another writer may have just created).
fn publish_local(
    source: LinkSource<'_>,
    dest: &FsPath,
    root: &FsPath,
    durable_dirs: &DurableDirs,
) -> std::io::Result<Vec<PathBuf>> {
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("object key has no parent directory"))?;
    match source {
        LinkSource::Named(tmp) => {
            // Usually made when the object was staged; a sweep may have
            // removed it since, if it emptied.
            std::fs::create_dir_all(parent)?;
            std::fs::hard_link(tmp, dest)?;
        }
        // Its directory holds it already (the file was made in it).
        LinkSource::Anonymous(file) => link_anonymous(file, dest)?,
    }
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

/// What [`publish_local`] links into place.
enum LinkSource<'a> {
    /// A staging file, by its name.
    Named(&'a FsPath),
    /// A file without a name (`O_TMPFILE`), in the object's directory.
    Anonymous(&'a std::fs::File),
}

/// Creates a file without a name in `dir` (`O_TMPFILE`): nothing to name in
/// a shared staging directory and nothing to unlink later, so concurrent
/// uploads do not queue on one directory's lock and the file system does
/// not hunt for free inodes among just-deleted ones. Fails with
/// [`std::io::ErrorKind::Unsupported`] where the file system has no
/// `O_TMPFILE` (the caller then uses a named staging file).
fn create_anonymous(dir: &FsPath) -> std::io::Result<std::fs::File> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    match openat(
        CWD,
        dir,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    ) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        // Kernels or file systems without O_TMPFILE.
        Err(
            e
            @ (rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL),
        ) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            std::io::Error::from(e),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Gives an anonymous file the name `dest` (`linkat` through
/// `/proc/self/fd`, as open(2) documents for `O_TMPFILE`); fails with
/// `EEXIST`, replacing nothing, if the name is taken.
fn link_anonymous(file: &std::fs::File, dest: &FsPath) -> std::io::Result<()> {
    use rustix::fs::{linkat, AtFlags, CWD};
    use std::os::fd::AsRawFd;
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(CWD, from.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW).map_err(std::io::Error::from)
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
    run_concurrently(dirs, |d| sync_dir(d))
        .into_iter()
        .collect()
}

/// Runs `f` on every item, up to [`DIR_SYNC_THREADS`] at a time (the
/// calling thread is one of them); results are in the items' order.
fn run_concurrently<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let worker = || -> Vec<(usize, R)> {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..items.len().min(DIR_SYNC_THREADS))
            .map(|_| scope.spawn(worker))
            .collect();
        let mut all = worker();
        for h in helpers {
            match h.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
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
    /// The synced file, when it has no name yet (`O_TMPFILE`): `tmp` is
    /// then unused, and a crash leaves nothing behind.
    anonymous: Option<std::fs::File>,
    root: PathBuf,
    durable_dirs: Arc<DurableDirs>,
    reaper: Arc<StagingReaper>,
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
        let source = match &self.anonymous {
            Some(file) => LinkSource::Anonymous(file),
            None => LinkSource::Named(&self.tmp),
        };
        match publish_local(source, &self.dest, &self.root, &self.durable_dirs) {
            Ok(dirs) => {
                if self.anonymous.is_none() {
                    self.reaper.remove(self.tmp);
                }
                Ok(PendingSync { dirs })
            }
            Err(e) => {
                self.discard_staging();
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
        self.discard_staging();
    }

    fn discard_staging(&self) {
        // An anonymous file goes when its descriptor closes.
        if self.anonymous.is_none() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }

    /// [Publishes](StagedObject::publish) every object at once: each link
    /// waits for the file system's journal like any metadata change, and
    /// the disk serves them together. Results are in the order given.
    /// Blocking.
    pub fn publish_all(objects: Vec<StagedObject>) -> Vec<Result<PendingSync, StoreError>> {
        let slots: Vec<std::sync::Mutex<Option<StagedObject>>> = objects
            .into_iter()
            .map(|o| std::sync::Mutex::new(Some(o)))
            .collect();
        run_concurrently(&slots, |slot| {
            match slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(o) => o.publish(),
                None => Err(StoreError::io(
                    "publish",
                    std::io::Error::other("staged object published twice"),
                )),
            }
        })
    }
}

/// Removes the staging names of objects already linked into place, on a
/// thread of its own: an unlink waits for the file system's journal like
/// any metadata change, and no acknowledgement needs to wait for it. A
/// name a crash leaves behind goes with the staging directory at startup
/// (the object keeps its own name: only a link count drops).
#[derive(Debug)]
struct StagingReaper {
    tx: Option<std::sync::mpsc::Sender<Reap>>,
}

/// Work for the [`StagingReaper`]'s thread.
#[derive(Debug)]
enum Reap {
    /// Remove this staging name.
    Remove(PathBuf),
    /// Answer once every earlier name is removed (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl StagingReaper {
    /// Starts the thread; if it cannot start, names are removed inline.
    fn start() -> StagingReaper {
        let (tx, rx) = std::sync::mpsc::channel::<Reap>();
        let started = std::thread::Builder::new()
            .name("custody-staging-reaper".into())
            .spawn(move || {
                for work in rx {
                    match work {
                        Reap::Remove(tmp) => remove_staging_name(&tmp),
                        Reap::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        match started {
            Ok(_) => StagingReaper { tx: Some(tx) },
            Err(e) => {
                tracing::warn!(error = %e, "no staging reaper thread: staging names are removed inline");
                StagingReaper { tx: None }
            }
        }
    }

    /// Removes `tmp` soon.
    fn remove(&self, tmp: PathBuf) {
        let Some(tx) = &self.tx else {
            return remove_staging_name(&tmp);
        };
        // The thread gone, the name is removed here.
        if let Err(std::sync::mpsc::SendError(Reap::Remove(tmp))) = tx.send(Reap::Remove(tmp)) {
            remove_staging_name(&tmp);
        }
    }

    /// Waits until every name given so far is removed.
    #[cfg(test)]
    fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            if tx.send(Reap::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

fn remove_staging_name(tmp: &FsPath) {
    if let Err(e) = std::fs::remove_file(tmp) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), error = %e, "removing a staging name failed; it goes at the next start");
        }
    }
}

/// Bytes a local writer gathers before handing them to a blocking write.
const LOCAL_WRITE_BATCH: usize = 1024 * 1024;

/// The staging file of a local write.
enum LocalFile {
    /// Not created yet (nothing written to disk); `anonymous`: try a file
    /// without a name first.
    Unopened { anonymous: bool },
    /// Being written: without a name in the object's directory
    /// (`anonymous`), or as a named staging file.
    Open {
        file: std::fs::File,
        anonymous: bool,
    },
    /// A blocking write failed or was cancelled: the write cannot go on.
    Broken,
}

impl LocalFile {
    /// The open file, creating it on first use: without a name in the
    /// object's directory where the file system allows, else as the
    /// staging file `tmp`.
    fn open(self, tmp: &FsPath, dest: &FsPath) -> std::io::Result<(std::fs::File, bool)> {
        match self {
            LocalFile::Open { file, anonymous } => Ok((file, anonymous)),
            LocalFile::Unopened { anonymous } => {
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)?;
                    if !anonymous {
                        return Ok((std::fs::File::create_new(tmp)?, false));
                    }
                    match create_anonymous(dir) {
                        Ok(file) => return Ok((file, true)),
                        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((std::fs::File::create_new(tmp)?, false))
            }
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
    dest: &FsPath,
    pending: &[u8],
    data: &[u8],
) -> std::io::Result<(std::fs::File, bool)> {
    use std::io::Write;
    let (mut f, anonymous) = file.open(tmp, dest)?;
    f.write_all(pending)?;
    f.write_all(data)?;
    Ok((f, anonymous))
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
    dest: &FsPath,
    produce: F,
) -> Result<(T, u64), StoreError>
where
    F: FnOnce() -> (T, Vec<u8>) + Send + 'static,
    T: Send + 'static,
{
    let f = std::mem::replace(file, LocalFile::Broken);
    let gathered = std::mem::take(pending);
    let (path, dest_path) = (tmp.to_path_buf(), dest.to_path_buf());
    let (value, n, result) = tokio::task::spawn_blocking(move || {
        let (value, data) = produce();
        let result = append_local(f, &path, &dest_path, &gathered, &data);
        (value, data.len() as u64, result)
    })
    .await
    // Errors name the object being written: its staging file may have no
    // name (O_TMPFILE) for an operator to look for.
    .map_err(|e| StoreError::io(dest, join_error(e)))?;
    let (f, anonymous) = result.map_err(|e| StoreError::io(dest, e))?;
    *file = LocalFile::Open { file: f, anonymous };
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
        reaper: Arc<StagingReaper>,
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
            file,
            pending,
            tmp,
            dest,
            ..
        } = &mut self.inner
        {
            pending.extend_from_slice(data);
            self.written += data.len() as u64;
            if pending.len() >= LOCAL_WRITE_BATCH {
                write_local(file, pending, tmp, dest, || ((), Vec::new())).await?;
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
            file,
            pending,
            tmp,
            dest,
            ..
        } = &mut self.inner
        {
            let (value, n) = write_local(file, pending, tmp, dest, produce).await?;
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
            reaper,
        } = self.inner
        else {
            return Err(StoreError::io(
                self.key.as_ref(),
                std::io::Error::other("only local writes are staged"),
            ));
        };
        let staged = tmp.clone();
        let target = dest.clone();
        let anonymous = tokio::task::spawn_blocking(move || {
            let synced = append_local(file, &tmp, &target, &gathered, &[])
                .and_then(|(f, anonymous)| f.sync_all().map(|()| (f, anonymous)));
            match synced {
                Ok((f, true)) => Ok(Some(f)),
                Ok((_, false)) => Ok(None),
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(StoreError::io(&target, e))
                }
            }
        })
        .await
        .map_err(|e| StoreError::io(&dest, join_error(e)))??;
        Ok(StagedObject {
            key: self.key,
            tmp: staged,
            dest,
            anonymous,
            root,
            durable_dirs,
            reaper,
            size: self.written,
        })
    }

    /// Abandons the write; nothing becomes visible.
    pub async fn abort(self) {
        match self.inner {
            WriterInner::Local { file, tmp, .. } => {
                // An anonymous file goes when its descriptor closes.
                let named = !matches!(
                    file,
                    LocalFile::Open {
                        anonymous: true,
                        ..
                    }
                );
                drop(file);
                if named {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
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

    /// Every file under `dir`, recursively.
    fn named_files(dir: &FsPath) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// A staged object is invisible until published; publishing onto an
    /// existing name refuses without replacing it; once published or
    /// refused, the only name on disk is the object's; a discarded one
    /// leaves nothing. Both ways of staging: files without a name
    /// (`O_TMPFILE`, the default) and named staging files.
    #[tokio::test]
    async fn staged_objects_are_linked_create_only() {
        for anonymous in [true, false] {
            staged_objects_are_linked_create_only_with(anonymous).await;
        }
    }

    async fn staged_objects_are_linked_create_only_with(anonymous: bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local_with(
            dir.path().join("objects"),
            dir.path().join("staging"),
            "file://test".into(),
            anonymous,
        )
        .await
        .unwrap();
        let reaper = match &*store.backend {
            Backend::Local { reaper, .. } => reaper.clone(),
            Backend::Remote { .. } => unreachable!(),
        };
        let names = || {
            reaper.flush();
            named_files(dir.path())
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
        let staged_names = names();
        if anonymous {
            assert!(staged_names.is_empty(), "named: {staged_names:?}");
        } else {
            assert_eq!(staged_names.len(), 2, "{staged_names:?}");
            assert!(staged_names
                .iter()
                .all(|p| p.starts_with(dir.path().join("staging"))));
        }
        let pending = first.publish().unwrap();
        store.sync_dirs(&pending).unwrap();
        assert!(matches!(
            second.publish(),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"first"));
        assert_eq!(
            names(),
            vec![dir.path().join("objects").join(key.as_ref())],
            "publishing or refusing leaves only the object's name"
        );
        stage(b"dropped").await.discard();
        assert_eq!(names().len(), 1);
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
