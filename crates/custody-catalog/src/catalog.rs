//! The RocksDB index: column families, key encodings, queries.
//!
//! Column families:
//! - `segments`: `camera 0x00 stream 0x00 start(8, sortable) sequence(8, BE)` → [`SegmentRecord`]
//! - `segment_ids`: `segment id (16)` → key in `segments`
//! - `cameras`: `camera` → segment count, bytes, and per stream the longest
//!   segment indexed (so a query finds every stored segment whatever the
//!   limits say today)
//! - `pending`: `segment id (16)` → object key of an upload in flight (write intent)
//! - `expiry`: `expires_at(8, sortable) segment id (16)` → empty: the sweeper's work list
//! - `records`: object key → sealed record bytes (holds, releases, policies mirrored from the store)
//! - `meta`: `schema` → the layout version; absent in a catalog that was
//!   just created (or lost and recreated), which is how a node notices an
//!   index that does not cover its store. `journal/{node}` → the last batch
//!   of that peer's journal applied here (clusters)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use custody_core::{CameraId, SegmentId, StreamName, TimeRange, Timestamp};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::{CameraSummary, CatalogError, SegmentRecord};

const CF_SEGMENTS: &str = "segments";
const CF_SEGMENT_IDS: &str = "segment_ids";
const CF_CAMERAS: &str = "cameras";
const CF_PENDING: &str = "pending";
const CF_EXPIRY: &str = "expiry";
const CF_RECORDS: &str = "records";
const CF_META: &str = "meta";
const CFS: [&str; 7] = [
    CF_SEGMENTS,
    CF_SEGMENT_IDS,
    CF_CAMERAS,
    CF_PENDING,
    CF_EXPIRY,
    CF_RECORDS,
    CF_META,
];

/// Version of the catalog's layout; a catalog marked with another one (or
/// none) is rebuilt from the store.
pub const SCHEMA_VERSION: u32 = 3;
const META_SCHEMA: &[u8] = b"schema";
/// Prefix of `journal/{node}` → last applied batch of that peer's journal.
const META_JOURNAL: &[u8] = b"journal/";

/// Whether a catalog is known to index its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogState {
    /// Marked with [`SCHEMA_VERSION`] after a complete build: it indexes the store.
    Current,
    /// No mark: just created, or recreated after it was lost.
    Unmarked,
    /// Marked by another version of the layout.
    Outdated(u32),
}

fn expiry_key(at: Timestamp, id: &SegmentId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&at.to_sortable_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct CameraCounts {
    segments: u64,
    bytes: u64,
    /// Each stream's summary.
    streams: BTreeMap<StreamName, StreamSpan>,
}

/// One camera's summary as the catalog holds it in memory (see
/// [`Catalog::map_cameras`]).
#[derive(Debug, Clone, Copy)]
pub struct CameraView<'a> {
    /// Camera id.
    pub camera: &'a CameraId,
    counts: &'a CameraCounts,
}

impl CameraView<'_> {
    /// Number of segments.
    pub fn segments(&self) -> u64 {
        self.counts.segments
    }

    /// Plaintext bytes.
    pub fn bytes(&self) -> u64 {
        self.counts.bytes
    }

    /// Earliest segment start (`Timestamp::MAX` with no stream).
    pub fn first_start(&self) -> Timestamp {
        let starts = self.counts.streams.values().map(|s| s.first_start);
        starts.min().unwrap_or(Timestamp::MAX)
    }

    /// Latest segment end (`Timestamp::MIN` with no stream).
    pub fn last_end(&self) -> Timestamp {
        let ends = self.counts.streams.values().map(|s| s.last_end);
        ends.max().unwrap_or(Timestamp::MIN)
    }

    /// Streams seen, by name.
    pub fn streams(&self) -> impl Iterator<Item = &StreamName> {
        self.counts.streams.keys()
    }
}

/// What the catalog keeps per camera stream so that listing cameras and
/// bounding a query need no scan.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StreamSpan {
    /// The longest segment ever indexed on the stream, in nanoseconds.
    longest: u64,
    /// Start of its earliest segment.
    first_start: Timestamp,
    /// The latest end of its segments (after deletions: the end of the
    /// latest-starting segment left, which is the same unless segments
    /// overlap).
    last_end: Timestamp,
}

impl Default for StreamSpan {
    fn default() -> Self {
        StreamSpan {
            longest: 0,
            first_start: Timestamp::MAX,
            last_end: Timestamp::MIN,
        }
    }
}

/// One page of a segment listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPage {
    /// Segments in (start, stream, sequence) order.
    pub segments: Vec<SegmentRecord>,
    /// Token for the next page, if any.
    pub next_page_token: Option<String>,
}

/// The catalog of one node.
#[derive(Clone)]
pub struct Catalog {
    db: Arc<DB>,
    /// Serialises read-modify-write of camera counts.
    counts_lock: Arc<Mutex<()>>,
    /// The `cameras` column family in memory, loaded on first use: camera
    /// listings, query bounds and "is this camera known" read it without
    /// touching RocksDB. Changed only after a write of the column family
    /// succeeded, under `counts_lock`, so it never runs ahead of the disk.
    cameras: Arc<RwLock<Option<BTreeMap<CameraId, CameraCounts>>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("path", &self.db.path())
            .finish()
    }
}

fn segment_key(camera: &CameraId, stream: &StreamName, start: Timestamp, sequence: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(camera.as_str().len() + stream.as_str().len() + 18);
    k.extend_from_slice(camera.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(stream.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&start.to_sortable_bytes());
    k.extend_from_slice(&sequence.to_be_bytes());
    k
}

fn stream_prefix(camera: &CameraId, stream: &StreamName) -> Vec<u8> {
    let mut k = camera.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(stream.as_str().as_bytes());
    k.push(0);
    k
}

fn decode<T: for<'a> Deserialize<'a>>(key: &[u8], value: &[u8]) -> Result<T, CatalogError> {
    postcard::from_bytes(value).map_err(|e| CatalogError::Corrupt {
        key: hex_of(key),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain records into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sync_opts() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl Catalog {
    /// Opens (or creates) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Catalog {
            db: Arc::new(db),
            counts_lock: Arc::new(Mutex::new(())),
            cameras: Arc::default(),
        })
    }

    /// Whether this catalog is marked as indexing its store.
    pub fn state(&self) -> Result<CatalogState, CatalogError> {
        match self.db.get_cf(self.cf(CF_META), META_SCHEMA)? {
            None => Ok(CatalogState::Unmarked),
            Some(v) => {
                let v: u32 = decode(META_SCHEMA, &v)?;
                Ok(if v == SCHEMA_VERSION {
                    CatalogState::Current
                } else {
                    CatalogState::Outdated(v)
                })
            }
        }
    }

    /// Marks the catalog as indexing its store, durably: call once it was
    /// built from the store, or when the store holds no segment.
    pub fn mark_current(&self) -> Result<(), CatalogError> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            META_SCHEMA,
            encode(&SCHEMA_VERSION),
            &sync_opts(),
        )?;
        Ok(())
    }

    /// Removes the mark: the next start rebuilds the catalog from the store
    /// (for an index found to have missed what peers journaled).
    pub fn clear_mark(&self) -> Result<(), CatalogError> {
        self.db
            .delete_cf_opt(self.cf(CF_META), META_SCHEMA, &sync_opts())?;
        Ok(())
    }

    /// For each peer node, the last batch of its journal applied here.
    pub fn journal_positions(&self) -> Result<BTreeMap<String, u64>, CatalogError> {
        let mut out = BTreeMap::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(META_JOURNAL, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            let Some(node) = k.strip_prefix(META_JOURNAL) else {
                break;
            };
            let node = String::from_utf8_lossy(node).into_owned();
            out.insert(node, decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Records that `node`'s journal was applied up to batch `seq`, durably.
    pub fn set_journal_position(&self, node: &str, seq: u64) -> Result<(), CatalogError> {
        let mut key = META_JOURNAL.to_vec();
        key.extend_from_slice(node.as_bytes());
        self.db
            .put_cf_opt(self.cf(CF_META), key, encode(&seq), &sync_opts())?;
        Ok(())
    }

    /// Deletes the catalog at `path` (for a rebuild).
    pub fn destroy(path: &Path) -> Result<(), CatalogError> {
        DB::destroy(&Options::default(), path)?;
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every CF in CFS is created at open.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| unreachable!("column family {name} exists"))
    }

    /// Records that an upload of `id` to `object_key` is in flight.
    pub fn add_pending(&self, id: &SegmentId, object_key: &str) -> Result<(), CatalogError> {
        // Not synced: the write-ahead log has it once this returns, which a
        // process crash (kill -9) does not lose; the synced batch that
        // indexes the segment makes it durable against power loss with
        // everything before it.
        self.add_pendings([(id, object_key)])
    }

    /// Forgets a write intent.
    pub fn remove_pending(&self, id: &SegmentId) -> Result<(), CatalogError> {
        self.remove_pendings([id])
    }

    /// Records many write intents in one batch, not synced, like
    /// [`Catalog::add_pending`] (the group commit's, before it links the
    /// round's objects into place).
    pub fn add_pendings<'a>(
        &self,
        intents: impl IntoIterator<Item = (&'a SegmentId, &'a str)>,
    ) -> Result<(), CatalogError> {
        let mut b = WriteBatch::default();
        for (id, key) in intents {
            b.put_cf(self.cf(CF_PENDING), id.as_bytes(), key.as_bytes());
        }
        self.db.write(b)?;
        Ok(())
    }

    /// Forgets many write intents in one batch.
    pub fn remove_pendings<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a SegmentId>,
    ) -> Result<(), CatalogError> {
        let mut b = WriteBatch::default();
        for id in ids {
            b.delete_cf(self.cf(CF_PENDING), id.as_bytes());
        }
        self.db.write(b)?;
        Ok(())
    }

    /// Every write intent left, as (segment id, object key).
    pub fn pending(&self) -> Result<Vec<(SegmentId, String)>, CatalogError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_PENDING), IteratorMode::Start)
        {
            let (k, v) = item?;
            let id: [u8; 16] = k.as_ref().try_into().map_err(|_| CatalogError::Corrupt {
                key: hex_of(&k),
                reason: "pending key is not a segment id".into(),
            })?;
            out.push((
                SegmentId::from_bytes(id),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    /// Indexes a stored segment (and clears its write intent), durably and atomically.
    /// Indexing a segment already present is a no-op; returns whether it was added.
    pub fn put_segment(&self, rec: &SegmentRecord) -> Result<bool, CatalogError> {
        Ok(self.put_segments(std::slice::from_ref(rec))? == 1)
    }

    /// Indexes many segments in one synced batch (rebuilds, bulk loads).
    /// Segments already present are skipped; returns how many were added.
    pub fn put_segments(&self, recs: &[SegmentRecord]) -> Result<usize, CatalogError> {
        let _guard = self.counts_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts: std::collections::BTreeMap<CameraId, CameraCounts> = Default::default();
        let mut seen = std::collections::HashSet::new();
        let mut added = 0;
        let mut b = WriteBatch::default();
        for rec in recs {
            b.delete_cf(self.cf(CF_PENDING), rec.segment_id.as_bytes());
            if !seen.insert(rec.segment_id) || self.get(&rec.segment_id)?.is_some() {
                continue;
            }
            added += 1;
            if !counts.contains_key(&rec.camera) {
                counts.insert(rec.camera.clone(), self.counts(&rec.camera)?);
            }
            if let Some(c) = counts.get_mut(&rec.camera) {
                c.segments += 1;
                c.bytes += rec.size;
                let span = u64::try_from(rec.range.span_nanos()).unwrap_or(0);
                let s = c.streams.entry(rec.stream.clone()).or_default();
                s.longest = s.longest.max(span);
                s.first_start = s.first_start.min(rec.range.start());
                s.last_end = s.last_end.max(rec.range.end());
            }
            let key = segment_key(&rec.camera, &rec.stream, rec.range.start(), rec.sequence);
            b.put_cf(self.cf(CF_SEGMENTS), &key, encode(rec));
            b.put_cf(self.cf(CF_SEGMENT_IDS), rec.segment_id.as_bytes(), &key);
            if let Some(at) = rec.expires_at {
                b.put_cf(self.cf(CF_EXPIRY), expiry_key(at, &rec.segment_id), []);
            }
        }
        for (camera, c) in &counts {
            b.put_cf(self.cf(CF_CAMERAS), camera.as_str().as_bytes(), encode(c));
        }
        self.db.write_opt(b, &sync_opts())?;
        self.remember_counts(counts);
        Ok(added)
    }

    /// Removes a segment from the index; returns what was removed.
    pub fn delete_segment(&self, id: &SegmentId) -> Result<Option<SegmentRecord>, CatalogError> {
        Ok(self.delete_segments(std::slice::from_ref(id))?.pop())
    }

    /// Removes many segments in one synced batch; returns those that were indexed.
    pub fn delete_segments(&self, ids: &[SegmentId]) -> Result<Vec<SegmentRecord>, CatalogError> {
        let _guard = self.counts_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts: std::collections::BTreeMap<CameraId, CameraCounts> = Default::default();
        let mut removed = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut dirty = std::collections::BTreeSet::new();
        let mut deleted_keys = std::collections::HashSet::new();
        let mut b = WriteBatch::default();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            let Some(rec) = self.get(id)? else { continue };
            if !counts.contains_key(&rec.camera) {
                counts.insert(rec.camera.clone(), self.counts(&rec.camera)?);
            }
            if let Some(c) = counts.get_mut(&rec.camera) {
                c.segments = c.segments.saturating_sub(1);
                c.bytes = c.bytes.saturating_sub(rec.size);
                if let Some(s) = c.streams.get(&rec.stream) {
                    if rec.range.start() <= s.first_start || rec.range.end() >= s.last_end {
                        dirty.insert((rec.camera.clone(), rec.stream.clone()));
                    }
                }
            }
            let key = segment_key(&rec.camera, &rec.stream, rec.range.start(), rec.sequence);
            deleted_keys.insert(key.clone());
            b.delete_cf(self.cf(CF_SEGMENTS), &key);
            b.delete_cf(self.cf(CF_SEGMENT_IDS), id.as_bytes());
            if let Some(at) = rec.expires_at {
                b.delete_cf(self.cf(CF_EXPIRY), expiry_key(at, id));
            }
            removed.push(rec);
        }
        // Streams whose first or last segment went: their ends from what is left.
        for (camera, stream) in dirty {
            let prefix = stream_prefix(&camera, &stream);
            let first = self.edge_except(&prefix, Direction::Forward, &deleted_keys)?;
            let last = self.edge_except(&prefix, Direction::Reverse, &deleted_keys)?;
            if let Some(c) = counts.get_mut(&camera) {
                match (first, last) {
                    (Some(f), Some(l)) => {
                        if let Some(s) = c.streams.get_mut(&stream) {
                            s.first_start = f.range.start();
                            s.last_end = l.range.end();
                        }
                    }
                    _ => {
                        c.streams.remove(&stream);
                    }
                }
            }
        }
        for (camera, c) in &counts {
            if c.segments == 0 {
                b.delete_cf(self.cf(CF_CAMERAS), camera.as_str().as_bytes());
            } else {
                b.put_cf(self.cf(CF_CAMERAS), camera.as_str().as_bytes(), encode(c));
            }
        }
        self.db.write_opt(b, &sync_opts())?;
        self.remember_counts(counts);
        Ok(removed)
    }

    fn counts(&self, camera: &CameraId) -> Result<CameraCounts, CatalogError> {
        self.with_cameras(|all| all.get(camera).cloned().unwrap_or_default())
    }

    /// Runs `f` over every camera's counts, loading them from the `cameras`
    /// column family on first use.
    fn with_cameras<T>(
        &self,
        f: impl FnOnce(&BTreeMap<CameraId, CameraCounts>) -> T,
    ) -> Result<T, CatalogError> {
        {
            let loaded = self.cameras.read().unwrap_or_else(|p| p.into_inner());
            if let Some(all) = loaded.as_ref() {
                return Ok(f(all));
            }
        }
        let mut loaded = self.cameras.write().unwrap_or_else(|p| p.into_inner());
        if loaded.is_none() {
            let mut all = BTreeMap::new();
            for item in self
                .db
                .iterator_cf(self.cf(CF_CAMERAS), IteratorMode::Start)
            {
                let (k, v) = item?;
                let counts: CameraCounts = decode(&k, &v)?;
                let camera = CameraId::parse(&String::from_utf8_lossy(&k)).map_err(|e| {
                    CatalogError::Corrupt {
                        key: hex_of(&k),
                        reason: e.to_string(),
                    }
                })?;
                all.insert(camera, counts);
            }
            *loaded = Some(all);
        }
        Ok(f(loaded.as_ref().map_or(&BTreeMap::new(), |all| all)))
    }

    /// Takes counts just written to the `cameras` column family into
    /// memory (a camera without segments is gone). Call with `counts_lock`
    /// held, after the write succeeded.
    fn remember_counts(&self, counts: BTreeMap<CameraId, CameraCounts>) {
        let mut loaded = self.cameras.write().unwrap_or_else(|p| p.into_inner());
        if let Some(all) = loaded.as_mut() {
            for (camera, c) in counts {
                if c.segments == 0 {
                    all.remove(&camera);
                } else {
                    all.insert(camera, c);
                }
            }
        }
    }

    /// The segment with this id.
    pub fn get(&self, id: &SegmentId) -> Result<Option<SegmentRecord>, CatalogError> {
        // Both reads from one snapshot: a concurrent delete is seen whole or not at all.
        let snap = self.db.snapshot();
        let Some(key) = snap.get_cf(self.cf(CF_SEGMENT_IDS), id.as_bytes())? else {
            return Ok(None);
        };
        match snap.get_cf(self.cf(CF_SEGMENTS), &key)? {
            Some(v) => decode(&key, &v).map(Some),
            None => Err(CatalogError::Corrupt {
                key: hex_of(&key),
                reason: "segment id points at a missing entry".into(),
            }),
        }
    }

    /// Whether the camera has any segment.
    pub fn has_camera(&self, camera: &CameraId) -> Result<bool, CatalogError> {
        self.with_cameras(|all| all.contains_key(camera))
    }

    /// Every camera with its summary, by id (from memory: no scan).
    pub fn cameras(&self) -> Result<Vec<CameraSummary>, CatalogError> {
        self.map_cameras(|c| CameraSummary {
            camera: c.camera.clone(),
            segments: c.segments(),
            bytes: c.bytes(),
            first_start: c.first_start(),
            last_end: c.last_end(),
            streams: c.streams().cloned().collect(),
        })
    }

    /// `f` of every camera's summary, by id, borrowed from memory: a caller
    /// that needs only a few fields (a listing answering thousands of
    /// cameras) copies only those.
    pub fn map_cameras<T>(
        &self,
        mut f: impl FnMut(CameraView<'_>) -> T,
    ) -> Result<Vec<T>, CatalogError> {
        self.with_cameras(|all| {
            all.iter()
                .map(|(camera, counts)| f(CameraView { camera, counts }))
                .collect()
        })
    }

    /// The first (or last) segment under `prefix` whose key is not in `except`.
    fn edge_except(
        &self,
        prefix: &[u8],
        dir: Direction,
        except: &std::collections::HashSet<Vec<u8>>,
    ) -> Result<Option<SegmentRecord>, CatalogError> {
        let mut upper = prefix.to_vec();
        upper.push(0xff);
        let from = match dir {
            Direction::Forward => prefix,
            Direction::Reverse => &upper[..],
        };
        let it = self
            .db
            .iterator_cf(self.cf(CF_SEGMENTS), IteratorMode::From(from, dir));
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                return Ok(None);
            }
            if !except.contains(k.as_ref()) {
                return Ok(Some(decode(&k, &v)?));
            }
        }
        Ok(None)
    }

    /// Segments of `camera` (one stream, or all with `None`) that overlap
    /// `range`, in (start, stream, sequence) order, `limit` at a time.
    ///
    /// Each stream's scan starts the longest segment ever indexed on it
    /// before `range.start()`, so a segment longer than today's limits is
    /// still found.
    pub fn list_segments(
        &self,
        camera: &CameraId,
        stream: Option<&StreamName>,
        range: &TimeRange,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<SegmentPage, CatalogError> {
        let after = page_token.map(decode_token).transpose()?;
        let counts = self.counts(camera)?;
        let streams: Vec<(StreamName, u64)> = match stream {
            Some(s) => counts
                .streams
                .get(s)
                .map(|span| vec![(s.clone(), span.longest)])
                .unwrap_or_default(),
            None => counts
                .streams
                .into_iter()
                .map(|(s, span)| (s, span.longest))
                .collect(),
        };
        let mut all = Vec::new();
        for (s, longest) in &streams {
            let scan_from = Timestamp::from_nanos(
                range
                    .start()
                    .as_nanos()
                    .saturating_sub(i64::try_from(*longest).unwrap_or(i64::MAX)),
            );
            let prefix = stream_prefix(camera, s);
            let mut from = segment_key(camera, s, scan_from, 0);
            if let Some((t, ref ts, seq)) = after {
                let resume = segment_key(camera, s, t, seq);
                if resume > from {
                    from = resume;
                }
                let _ = ts;
            }
            let it = self.db.iterator_cf(
                self.cf(CF_SEGMENTS),
                IteratorMode::From(&from, Direction::Forward),
            );
            let mut taken = 0;
            for item in it {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let rec: SegmentRecord = decode(&k, &v)?;
                if rec.range.start() >= range.end() {
                    break;
                }
                if !rec.range.overlaps(range) {
                    continue;
                }
                if let Some((t, ref ts, seq)) = after {
                    if (rec.range.start(), rec.stream.as_str(), rec.sequence)
                        <= (t, ts.as_str(), seq)
                    {
                        continue;
                    }
                }
                all.push(rec);
                taken += 1;
                if taken > limit {
                    break;
                }
            }
        }
        all.sort_by(|a, b| {
            (a.range.start(), a.stream.as_str(), a.sequence).cmp(&(
                b.range.start(),
                b.stream.as_str(),
                b.sequence,
            ))
        });
        let next_page_token = if all.len() > limit {
            all.truncate(limit);
            all.last().map(encode_token)
        } else {
            None
        };
        Ok(SegmentPage {
            segments: all,
            next_page_token,
        })
    }

    /// Changes many segments' expiries in one synced batch (after a policy
    /// change); returns how many were indexed.
    pub fn set_expiries(
        &self,
        changes: &[(SegmentId, Option<Timestamp>)],
    ) -> Result<usize, CatalogError> {
        let _guard = self.counts_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = WriteBatch::default();
        let mut found = 0;
        for (id, at) in changes {
            let Some(mut rec) = self.get(id)? else {
                continue;
            };
            found += 1;
            if rec.expires_at == *at {
                continue;
            }
            let key = segment_key(&rec.camera, &rec.stream, rec.range.start(), rec.sequence);
            if let Some(old) = rec.expires_at {
                b.delete_cf(self.cf(CF_EXPIRY), expiry_key(old, id));
            }
            if let Some(new) = at {
                b.put_cf(self.cf(CF_EXPIRY), expiry_key(*new, id), []);
            }
            rec.expires_at = *at;
            b.put_cf(self.cf(CF_SEGMENTS), &key, encode(&rec));
        }
        self.db.write_opt(b, &sync_opts())?;
        Ok(found)
    }

    /// Changes a segment's expiry (after a policy change); returns false if
    /// the segment is not indexed.
    pub fn set_expiry(&self, id: &SegmentId, at: Option<Timestamp>) -> Result<bool, CatalogError> {
        let _guard = self.counts_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut rec) = self.get(id)? else {
            return Ok(false);
        };
        if rec.expires_at == at {
            return Ok(true);
        }
        let key = segment_key(&rec.camera, &rec.stream, rec.range.start(), rec.sequence);
        let mut b = WriteBatch::default();
        if let Some(old) = rec.expires_at {
            b.delete_cf(self.cf(CF_EXPIRY), expiry_key(old, id));
        }
        if let Some(new) = at {
            b.put_cf(self.cf(CF_EXPIRY), expiry_key(new, id), []);
        }
        rec.expires_at = at;
        b.put_cf(self.cf(CF_SEGMENTS), &key, encode(&rec));
        self.db.write_opt(b, &sync_opts())?;
        Ok(true)
    }

    /// Up to `limit` segments whose expiry is at or before `now`, earliest
    /// first, starting after `after` (for batching). Costs what it returns.
    pub fn expired(
        &self,
        now: Timestamp,
        after: Option<(Timestamp, SegmentId)>,
        limit: usize,
    ) -> Result<Vec<(Timestamp, SegmentId)>, CatalogError> {
        let from = match after {
            Some((t, id)) => {
                let mut k = expiry_key(t, &id).to_vec();
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_EXPIRY),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in it {
            let (k, _) = item?;
            let (t, id) = match (k.get(..8), k.get(8..24)) {
                (Some(t), Some(id)) if k.len() == 24 => {
                    let mut tb = [0u8; 8];
                    tb.copy_from_slice(t);
                    let mut ib = [0u8; 16];
                    ib.copy_from_slice(id);
                    (
                        Timestamp::from_sortable_bytes(tb),
                        SegmentId::from_bytes(ib),
                    )
                }
                _ => {
                    return Err(CatalogError::Corrupt {
                        key: hex_of(&k),
                        reason: "bad expiry key".into(),
                    })
                }
            };
            if t > now || out.len() >= limit {
                break;
            }
            out.push((t, id));
        }
        Ok(out)
    }

    /// Every segment of one camera, in (stream, start) order.
    pub fn camera_segments(&self, camera: &CameraId) -> Result<Vec<SegmentRecord>, CatalogError> {
        let mut prefix = camera.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(CF_SEGMENTS),
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Mirrors a sealed record (hold, release, policy) kept in the store.
    pub fn put_record(&self, object_key: &str, sealed: &[u8]) -> Result<(), CatalogError> {
        self.db.put_cf_opt(
            self.cf(CF_RECORDS),
            object_key.as_bytes(),
            sealed,
            &sync_opts(),
        )?;
        Ok(())
    }

    /// Every mirrored record, as (object key, sealed bytes), in key order.
    pub fn records(&self) -> Result<Vec<(String, Vec<u8>)>, CatalogError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RECORDS), IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Calls `f` on every indexed segment, in key order.
    pub fn for_each_segment(
        &self,
        mut f: impl FnMut(SegmentRecord) -> bool,
    ) -> Result<(), CatalogError> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_SEGMENTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            if !f(decode(&k, &v)?) {
                break;
            }
        }
        Ok(())
    }
}

fn encode_token(r: &SegmentRecord) -> String {
    format!("{}.{}.{}", r.range.start().as_nanos(), r.stream, r.sequence)
}

fn decode_token(t: &str) -> Result<(Timestamp, String, u64), CatalogError> {
    let mut parts = t.splitn(3, '.');
    let start = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(CatalogError::BadPageToken)?;
    let stream = parts.next().ok_or(CatalogError::BadPageToken)?;
    let stream = StreamName::parse(stream).map_err(|_| CatalogError::BadPageToken)?;
    let seq = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(CatalogError::BadPageToken)?;
    Ok((
        Timestamp::from_nanos(start),
        stream.as_str().to_string(),
        seq,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_core::MediaType;

    fn rec(camera: &str, stream: &str, start_s: i64, dur_s: i64, seq: u64) -> SegmentRecord {
        let camera = CameraId::parse(camera).unwrap();
        let stream = StreamName::parse(stream).unwrap();
        let start = Timestamp::from_secs(start_s);
        SegmentRecord {
            segment_id: SegmentId::derive(&camera, &stream, start, seq),
            camera,
            stream,
            range: TimeRange::new(start, Timestamp::from_secs(start_s + dur_s)).unwrap(),
            sequence: seq,
            media_type: MediaType::parse("video/mp2t").unwrap(),
            size: 100,
            stored_size: 200,
            sha256: [7; 32],
            key_id: "k1".into(),
            ingested_at: Timestamp::from_secs(0),
            object_key: "x".into(),
            expires_at: Some(Timestamp::from_secs(start_s + dur_s + 100)),
        }
    }

    fn range(a: i64, b: i64) -> TimeRange {
        TimeRange::new(Timestamp::from_secs(a), Timestamp::from_secs(b)).unwrap()
    }

    #[test]
    fn a_segment_longer_than_any_limit_is_found_inside() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        // A 600 s segment, then short ones: a window inside the long one
        // must find it, whatever the limits of the day say.
        c.put_segment(&rec("cam-1", "main", 1000, 600, 0)).unwrap();
        for i in 0..10 {
            c.put_segment(&rec("cam-1", "main", 2000 + i * 6, 6, 0))
                .unwrap();
        }
        let cam = CameraId::parse("cam-1").unwrap();
        let p = c
            .list_segments(&cam, None, &range(1500, 1510), 100, None)
            .unwrap();
        assert_eq!(p.segments.len(), 1, "{:?}", p.segments);
        assert_eq!(p.segments[0].range, range(1000, 1600));
        let p = c
            .list_segments(
                &cam,
                Some(&StreamName::main()),
                &range(1590, 2007),
                100,
                None,
            )
            .unwrap();
        assert_eq!(p.segments.len(), 3);
    }

    #[test]
    fn camera_summaries_follow_puts_and_deletes_without_scans() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..10).map(|i| rec("cam-1", "main", i * 6, 6, 0)).collect();
        c.put_segments(&recs).unwrap();
        c.put_segment(&rec("cam-1", "sub", 30, 6, 0)).unwrap();
        let summary = |c: &Catalog| {
            let s = c.cameras().unwrap().pop().unwrap();
            (s.first_start, s.last_end, s.segments, s.streams.len())
        };
        assert_eq!(
            summary(&c),
            (Timestamp::from_secs(0), Timestamp::from_secs(60), 11, 2)
        );
        // The first two and the last go: the ends move to what is left.
        let gone: Vec<_> = [0, 1, 9].iter().map(|&i| recs[i].segment_id).collect();
        c.delete_segments(&gone).unwrap();
        assert_eq!(
            summary(&c),
            (Timestamp::from_secs(12), Timestamp::from_secs(54), 8, 2)
        );
        // A stream emptied disappears from the summary.
        let sub = rec("cam-1", "sub", 30, 6, 0);
        c.delete_segment(&sub.segment_id).unwrap();
        assert_eq!(
            summary(&c),
            (Timestamp::from_secs(12), Timestamp::from_secs(54), 7, 1)
        );
    }

    #[test]
    fn a_new_catalog_is_unmarked_until_marked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.state().unwrap(), CatalogState::Unmarked);
        c.mark_current().unwrap();
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.state().unwrap(), CatalogState::Current);
        drop(c);
        Catalog::destroy(dir.path()).unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.state().unwrap(), CatalogState::Unmarked);
    }

    #[test]
    fn expiries_change_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..20).map(|i| rec("cam-1", "main", i * 6, 6, 0)).collect();
        c.put_segments(&recs).unwrap();
        let changes: Vec<_> = recs
            .iter()
            .map(|r| (r.segment_id, Some(Timestamp::from_secs(5))))
            .collect();
        assert_eq!(c.set_expiries(&changes).unwrap(), 20);
        let due = c.expired(Timestamp::from_secs(5), None, 100).unwrap();
        assert_eq!(due.len(), 20);
    }

    #[test]
    fn time_range_queries_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        for i in 0..50 {
            c.put_segment(&rec("cam-1", "main", i * 6, 6, 0)).unwrap();
            c.put_segment(&rec("cam-1", "sub", i * 6, 6, 0)).unwrap();
            c.put_segment(&rec("cam-2", "main", i * 6, 6, 0)).unwrap();
        }
        let cam = CameraId::parse("cam-1").unwrap();
        let main = StreamName::main();
        // [10, 20) overlaps segments starting at 6, 12, 18.
        let p = c
            .list_segments(&cam, Some(&main), &range(10, 20), 100, None)
            .unwrap();
        let starts: Vec<_> = p
            .segments
            .iter()
            .map(|r| r.range.start().as_nanos() / 1_000_000_000)
            .collect();
        assert_eq!(starts, vec![6, 12, 18]);
        assert!(p.next_page_token.is_none());
        // Both streams, paged by 7, covers all 100 exactly once in order.
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let p = c
                .list_segments(&cam, None, &range(0, 10_000), 7, token.as_deref())
                .unwrap();
            seen.extend(
                p.segments
                    .iter()
                    .map(|r| (r.range.start(), r.stream.clone())),
            );
            match p.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen.len(), 100);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert!(c
            .list_segments(&cam, None, &range(0, 1), 7, Some("garbage"))
            .is_err());
    }

    #[test]
    fn summaries_follow_puts_and_deletes_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = rec("cam-1", "main", 0, 6, 0);
        let r2 = rec("cam-1", "main", 6, 6, 0);
        {
            let c = Catalog::open(dir.path()).unwrap();
            c.add_pending(&r1.segment_id, "k").unwrap();
            c.put_segment(&r1).unwrap();
            c.put_segment(&r1).unwrap(); // idempotent
            c.put_segment(&r2).unwrap();
            assert!(c.pending().unwrap().is_empty());
        }
        let c = Catalog::open(dir.path()).unwrap();
        let cams = c.cameras().unwrap();
        assert_eq!(cams.len(), 1);
        assert_eq!((cams[0].segments, cams[0].bytes), (2, 200));
        assert_eq!(cams[0].first_start, Timestamp::from_secs(0));
        assert_eq!(cams[0].last_end, Timestamp::from_secs(12));
        assert_eq!(c.delete_segment(&r1.segment_id).unwrap(), Some(r1.clone()));
        assert_eq!(c.get(&r1.segment_id).unwrap(), None);
        assert_eq!(c.cameras().unwrap()[0].first_start, Timestamp::from_secs(6));
        // The expiry list holds r2 only, and follows set_expiry.
        let exp = c.expired(Timestamp::from_secs(1000), None, 10).unwrap();
        assert_eq!(exp, vec![(Timestamp::from_secs(112), r2.segment_id)]);
        assert!(c
            .expired(Timestamp::from_secs(111), None, 10)
            .unwrap()
            .is_empty());
        assert!(c
            .set_expiry(&r2.segment_id, Some(Timestamp::from_secs(5)))
            .unwrap());
        assert_eq!(
            c.expired(Timestamp::from_secs(5), None, 10).unwrap().len(),
            1
        );
        assert!(c
            .expired(
                Timestamp::from_secs(5),
                Some((Timestamp::from_secs(5), r2.segment_id)),
                10
            )
            .unwrap()
            .is_empty());
        c.delete_segment(&r2.segment_id).unwrap();
        assert!(c.expired(Timestamp::MAX, None, 10).unwrap().is_empty());
        assert!(c.cameras().unwrap().is_empty());
        assert!(!c.has_camera(&r1.camera).unwrap());
    }

    /// The summaries kept in memory (loaded before the changes, then
    /// updated by them) are what the column family says after a reopen.
    #[test]
    fn summaries_in_memory_match_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cams = |c: &Catalog| {
            c.cameras()
                .unwrap()
                .into_iter()
                .map(|s| {
                    (
                        s.camera.to_string(),
                        s.segments,
                        s.bytes,
                        s.first_start,
                        s.last_end,
                        s.streams,
                    )
                })
                .collect::<Vec<_>>()
        };
        let recs: Vec<_> = (0..30)
            .map(|i| {
                rec(
                    &format!("cam-{}", i % 4),
                    ["main", "sub"][i % 2],
                    i as i64 * 6,
                    6,
                    0,
                )
            })
            .collect();
        let in_memory = {
            let c = Catalog::open(dir.path()).unwrap();
            c.put_segments(&recs[..10]).unwrap();
            assert_eq!(cams(&c).len(), 4); // loaded here; changed from now on
            c.put_segments(&recs[10..]).unwrap();
            c.put_segment(&rec("cam-9", "main", 0, 6, 0)).unwrap();
            // Every segment of cam-1 and the first and last of cam-2.
            let gone: Vec<_> = recs
                .iter()
                .filter(|r| r.camera.as_str() == "cam-1")
                .chain([&recs[2], &recs[26]])
                .map(|r| r.segment_id)
                .collect();
            c.delete_segments(&gone).unwrap();
            assert!(!c.has_camera(&CameraId::parse("cam-1").unwrap()).unwrap());
            assert!(c.has_camera(&CameraId::parse("cam-9").unwrap()).unwrap());
            cams(&c)
        };
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!(in_memory, cams(&reopened));
        assert_eq!(
            in_memory.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["cam-0", "cam-2", "cam-3", "cam-9"]
        );
    }
}
