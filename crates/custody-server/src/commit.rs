//! Group commit of ingests: uploads that finished writing their objects at
//! about the same time share one round, as databases share a log flush. A
//! round records the write intents of its staged local objects in one
//! batch, links the objects into place (all at once: each link waits on
//! the file system, and the disk serves them together), fsyncs each
//! directory it touched once, journals the round (in a cluster) and indexes it in one synced
//! RocksDB batch. A segment is acknowledged only after its round completed
//! (invariant 5), so under load the disk pays one directory sync and one
//! index sync for many segments instead of one each, and an upload makes
//! one thread hop (its staging write and fsync) besides the round. A few
//! rounds are in flight at once, so one stalled directory sync holds up
//! only its own round; journaling and indexing keep the rounds' order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use custody_catalog::{Catalog, SegmentRecord};
use custody_store::{PendingSync, StagedObject, Store, StoreError};
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::cluster::{ClusterLink, JournalEntryV1};
use crate::metrics::CommitStats;
use crate::retention::{index_records, Retention};
use crate::ServerError;

/// Most segments committed in one round.
const MAX_ROUND: usize = 512;

/// Rounds in flight at once (one thread each).
const COMMIT_THREADS: usize = 4;

/// Rounds slower than this are logged with the step that took the time
/// (they show as `custody_commit_round_duration_seconds` too).
const SLOW_ROUND: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest a round waits for uploads that are writing their staging file
/// (an fsync, typically under a millisecond) before it starts without
/// them, as PostgreSQL's `commit_delay` waits only when other transactions
/// are active. With nothing staging, a round starts at once, so a lone
/// upload never waits.
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// How a round gets an upload's object under its name.
pub(crate) enum Publish {
    /// A local object, durable in its staging file: the round records its
    /// write intent, then links it into place.
    Staged(StagedObject),
    /// Already under its name (other backends publish while uploading,
    /// after recording the write intent themselves).
    Published,
}

/// What a round did with an upload.
#[derive(Debug)]
pub(crate) enum Committed {
    /// Stored and indexed, durably: the record as indexed.
    Indexed(Box<SegmentRecord>),
    /// An object with that name already existed (another writer stored the
    /// same id first): nothing was replaced or indexed.
    Exists,
}

struct Request {
    rec: SegmentRecord,
    publish: Publish,
    done: oneshot::Sender<Result<Committed, ServerError>>,
}

/// The commit queue of a node: [`COMMIT_THREADS`] threads, each taking
/// every request that is ready as one round, making their objects' names
/// durable, then indexing them all in one synced batch. When the last
/// handle goes, the threads are stopped and joined, so the catalog they
/// hold is closed before the process exits.
#[derive(Clone)]
pub(crate) struct Committer {
    inner: Arc<Inner>,
}

struct Inner {
    tx: std::sync::Mutex<Option<mpsc::SyncSender<Request>>>,
    threads: std::sync::Mutex<Vec<thread::JoinHandle<()>>>,
    /// Uploads writing their staging file, about to join a round.
    staging: Arc<AtomicUsize>,
}

/// An upload writing its staging file: rounds starting meanwhile wait for
/// it (up to [`GATHER_WAIT`]). Counted until dropped or handed to
/// [`Committer::commit`].
pub(crate) struct Staging(Arc<AtomicUsize>);

impl Drop for Staging {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Committer {
    /// Starts the commit thread; it stops when the last committer handle
    /// is dropped.
    pub(crate) fn start(
        store: Store,
        catalog: Catalog,
        retention: Arc<Retention>,
        cluster: Arc<dyn ClusterLink>,
        stats: CommitStats,
    ) -> Result<Committer, ServerError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(4 * MAX_ROUND);
        let staging = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            store,
            catalog,
            retention,
            cluster,
            runtime: tokio::runtime::Handle::current(),
            staging: staging.clone(),
            stats,
            queue: std::sync::Mutex::new(rx),
            index_order: std::sync::Mutex::new(()),
        });
        let mut threads = Vec::with_capacity(COMMIT_THREADS);
        for i in 0..COMMIT_THREADS {
            let shared = shared.clone();
            let started = thread::Builder::new()
                .name(format!("custody-commit-{i}"))
                .spawn(move || run(&shared));
            match started {
                Ok(t) => threads.push(t),
                // Fewer threads only cost overlap; none is fatal.
                Err(e) if !threads.is_empty() => {
                    warn!(error = %e, threads = threads.len(), "fewer group-commit threads than planned");
                    break;
                }
                Err(e) => {
                    return Err(ServerError::Internal(format!(
                        "starting the commit thread: {e}"
                    )))
                }
            }
        }
        Ok(Committer {
            inner: Arc::new(Inner {
                tx: std::sync::Mutex::new(Some(tx)),
                threads: std::sync::Mutex::new(threads),
                staging,
            }),
        })
    }

    /// Counts an upload as staging until the guard is dropped or given to
    /// [`Committer::commit`].
    pub(crate) fn staging(&self) -> Staging {
        self.inner.staging.fetch_add(1, Ordering::SeqCst);
        Staging(self.inner.staging.clone())
    }

    /// Makes `rec`'s object durable under its name and indexes it; returns
    /// once both are durable.
    pub(crate) async fn commit(
        &self,
        rec: SegmentRecord,
        publish: Publish,
        staging: Option<Staging>,
    ) -> Result<Committed, ServerError> {
        // Uncounted before it is queued: a round never waits for an upload
        // already in the queue.
        drop(staging);
        let (done, wait) = oneshot::channel();
        let tx = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ServerError::Unavailable("the node is shutting down".into()))?;
        let stopped = || ServerError::Unavailable("the commit thread stopped".into());
        match tx.try_send(Request { rec, publish, done }) {
            Ok(()) => {}
            // The queue is bounded: when it is full, wait on a blocking
            // thread, not the runtime.
            Err(mpsc::TrySendError::Full(req)) => {
                tokio::task::spawn_blocking(move || tx.send(req).map_err(|_| ()))
                    .await
                    .map_err(|e| ServerError::Internal(format!("commit queue: {e}")))?
                    .map_err(|()| stopped())?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        wait.await
            .map_err(|_| ServerError::Unavailable("the commit thread stopped".into()))?
    }
}

/// Where a round is published for peers, in a cluster.
struct Journal<'a> {
    cluster: &'a dyn ClusterLink,
    runtime: tokio::runtime::Handle,
}

impl Journal<'_> {
    /// Appends the round to this node's journal, if the node journals: a
    /// segment is acknowledged only once peers can learn of it, so none
    /// acknowledged is missing from the journal when the node dies.
    fn publish(&self, recs: &[SegmentRecord]) -> Result<(), ServerError> {
        if !self.cluster.journals() {
            return Ok(());
        }
        let entries = JournalEntryV1::stored(recs);
        self.runtime.block_on(self.cluster.publish(entries))
    }
}

/// What the commit threads share.
struct Shared {
    store: Store,
    catalog: Catalog,
    retention: Arc<Retention>,
    cluster: Arc<dyn ClusterLink>,
    runtime: tokio::runtime::Handle,
    /// Uploads writing their staging file (see [`Staging`]).
    staging: Arc<AtomicUsize>,
    stats: CommitStats,
    /// The commit queue: one thread at a time gathers a round from it.
    queue: std::sync::Mutex<mpsc::Receiver<Request>>,
    /// Rounds are journaled and indexed one at a time, in the order they
    /// reach that step (the journal is a sequence).
    index_order: std::sync::Mutex<()>,
}

/// One commit thread: gathers a round while it holds the queue, then
/// commits it. With several threads, a round whose directory sync stalls
/// (a slow disk moment) does not hold up the rounds behind it, and one
/// round's index sync overlaps the next round's links and syncs.
fn run(shared: &Shared) {
    let journal = Journal {
        cluster: &*shared.cluster,
        runtime: shared.runtime.clone(),
    };
    while let Some(round) = gather(shared) {
        commit_round(shared, &journal, round);
    }
}

/// The next round: the first request waiting (blocking until one comes),
/// then every request ready or about to be (see [`GATHER_WAIT`]). `None`
/// once the queue is closed and empty.
fn gather(shared: &Shared) -> Option<Vec<Request>> {
    let rx = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    let first = rx.recv().ok()?;
    let mut round = vec![first];
    let deadline = Instant::now() + GATHER_WAIT;
    while round.len() < MAX_ROUND {
        match rx.try_recv() {
            Ok(r) => {
                round.push(r);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if shared.staging.load(Ordering::SeqCst) == 0 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => round.push(r),
            Err(_) => break,
        }
    }
    Some(round)
}

fn commit_round(shared: &Shared, journal: &Journal<'_>, round: Vec<Request>) {
    let (catalog, stats) = (&shared.catalog, &shared.stats);
    let started = Instant::now();
    let segments = round.len();
    let Some((recs, waiters, sync)) = publish_round(catalog, round) else {
        return;
    };
    if recs.is_empty() {
        return;
    }
    let linked = started.elapsed();
    let synced = shared.store.sync_dirs(&sync).map_err(ServerError::from);
    let dirs_synced = started.elapsed();
    let result = synced.and_then(|()| {
        let _order = shared.index_order.lock().unwrap_or_else(|p| p.into_inner());
        journal
            .publish(&recs)
            .and_then(|()| index_records(catalog, &shared.retention, recs))
    });
    let took = started.elapsed();
    stats.round_seconds.observe(took.as_secs_f64());
    stats.round_segments.observe(segments as f64);
    if took >= SLOW_ROUND {
        // Every upload of the round waited this long: name the step.
        warn!(
            segments,
            link_ms = linked.as_millis() as u64,
            directory_sync_ms = (dirs_synced - linked).as_millis() as u64,
            journal_and_index_ms = (took - dirs_synced).as_millis() as u64,
            "slow group-commit round: the disk took long to sync"
        );
    }
    match result {
        Ok(recs) => {
            for (w, rec) in waiters.into_iter().zip(recs) {
                let _ = w.send(Ok(Committed::Indexed(Box::new(rec))));
            }
        }
        Err(e) => {
            error!(error = %e, segments = waiters.len(), "group commit failed");
            for w in waiters {
                let _ = w.send(Err(retry_later(
                    "could not make the segment durable",
                    &e,
                    matches!(e, ServerError::OutOfSpace(_)),
                )));
            }
        }
    }
}

/// The answer to an upload whose round failed: retry later, once space is
/// freed when the storage is full (RESOURCE_EXHAUSTED), else when the
/// dependency is back (UNAVAILABLE).
fn retry_later(what: &str, e: &dyn std::fmt::Display, full: bool) -> ServerError {
    let m = format!("{what}: {e}; retry");
    if full {
        ServerError::OutOfSpace(m)
    } else {
        ServerError::Unavailable(m)
    }
}

/// Records the write intents of the round's staged objects in one batch,
/// then links each into place. Answers at once the uploads whose object
/// could not be linked (an object of that name exists, or an I/O error),
/// and forgets their intents. Returns the uploads to index, their waiters
/// and the directory syncs their names need; `None` when the intents could
/// not be recorded (every upload of the round has been answered).
#[allow(clippy::type_complexity)]
fn publish_round(
    catalog: &Catalog,
    round: Vec<Request>,
) -> Option<(
    Vec<SegmentRecord>,
    Vec<oneshot::Sender<Result<Committed, ServerError>>>,
    PendingSync,
)> {
    let intents: Vec<_> = round
        .iter()
        .filter(|r| matches!(r.publish, Publish::Staged(_)))
        .map(|r| (&r.rec.segment_id, r.rec.object_key.as_str()))
        .collect();
    if !intents.is_empty() {
        if let Err(e) = catalog.add_pendings(intents) {
            error!(error = %e, segments = round.len(), "recording write intents failed");
            for r in round {
                if let Publish::Staged(staged) = r.publish {
                    staged.discard();
                }
                let _ = r.done.send(Err(retry_later(
                    "could not record the write intent",
                    &e,
                    e.is_out_of_space(),
                )));
            }
            return None;
        }
    }
    // Every staged object of the round is linked at once, then the
    // uploads are answered in their order.
    let mut staged = Vec::new();
    let mut rest = Vec::with_capacity(round.len());
    for r in round {
        match r.publish {
            Publish::Staged(s) => {
                staged.push(s);
                rest.push((r.rec, r.done, true));
            }
            Publish::Published => rest.push((r.rec, r.done, false)),
        }
    }
    let mut published = StagedObject::publish_all(staged).into_iter();
    let mut sync = PendingSync::default();
    let mut recs = Vec::with_capacity(rest.len());
    let mut waiters = Vec::with_capacity(rest.len());
    let mut refused = Vec::new();
    for (rec, done, was_staged) in rest {
        if was_staged {
            let refusal = match published.next() {
                Some(Ok(dirs)) => {
                    sync.merge(dirs);
                    None
                }
                Some(Err(StoreError::AlreadyExists { .. })) => Some(Ok(Committed::Exists)),
                Some(Err(other)) => Some(Err(other.into())),
                None => Some(Err(ServerError::Internal(
                    "the round lost a publish result".into(),
                ))),
            };
            if let Some(answer) = refusal {
                refused.push(rec.segment_id);
                let _ = done.send(answer);
                continue;
            }
        }
        recs.push(rec);
        waiters.push(done);
    }
    if !refused.is_empty() {
        if let Err(e) = catalog.remove_pendings(&refused) {
            // Harmless: the startup recovery drops intents without objects.
            error!(error = %e, "forgetting write intents of refused objects failed");
        }
    }
    Some((recs, waiters, sync))
}
