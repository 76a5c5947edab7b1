//! Group commit of ingests: uploads that finished writing their objects at
//! about the same time share one round of directory fsyncs and one synced
//! RocksDB batch, as databases share a log flush. A segment is acknowledged
//! only after its round completed (invariant 5), so under load the disk
//! pays one index sync for many segments instead of one each.

use std::sync::{mpsc, Arc};
use std::thread;

use custody_catalog::{Catalog, SegmentRecord};
use custody_store::{PendingSync, Store};
use tokio::sync::oneshot;
use tracing::error;

use crate::cluster::{ClusterLink, JournalEntryV1};
use crate::retention::{index_records, Retention};
use crate::ServerError;

/// Most segments committed in one round.
const MAX_ROUND: usize = 512;

struct Request {
    rec: SegmentRecord,
    sync: PendingSync,
    done: oneshot::Sender<Result<SegmentRecord, ServerError>>,
}

/// The commit queue of a node: one thread that takes every request that is
/// ready, makes their objects' names durable, then indexes them all in one
/// synced batch. When the last handle goes, the thread is stopped and
/// joined, so the catalog it holds is closed before the process exits.
#[derive(Clone)]
pub(crate) struct Committer {
    inner: Arc<Inner>,
}

struct Inner {
    tx: std::sync::Mutex<Option<mpsc::SyncSender<Request>>>,
    thread: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
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
    ) -> Result<Committer, ServerError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(4 * MAX_ROUND);
        let runtime = tokio::runtime::Handle::current();
        let thread = thread::Builder::new()
            .name("custody-commit".into())
            .spawn(move || {
                let journal = Journal {
                    cluster: &*cluster,
                    runtime,
                };
                run(&store, &catalog, &retention, &journal, rx)
            })
            .map_err(|e| ServerError::Internal(format!("starting the commit thread: {e}")))?;
        Ok(Committer {
            inner: Arc::new(Inner {
                tx: std::sync::Mutex::new(Some(tx)),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    /// Makes `rec`'s object durable under its name and indexes it; returns
    /// once both are durable.
    pub(crate) async fn commit(
        &self,
        rec: SegmentRecord,
        sync: PendingSync,
    ) -> Result<SegmentRecord, ServerError> {
        let (done, wait) = oneshot::channel();
        let tx = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ServerError::Unavailable("the node is shutting down".into()))?;
        let stopped = || ServerError::Unavailable("the commit thread stopped".into());
        match tx.try_send(Request { rec, sync, done }) {
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

fn run(
    store: &Store,
    catalog: &Catalog,
    retention: &Retention,
    journal: &Journal<'_>,
    rx: mpsc::Receiver<Request>,
) {
    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        while round.len() < MAX_ROUND {
            match rx.try_recv() {
                Ok(r) => round.push(r),
                Err(_) => break,
            }
        }
        let mut sync = PendingSync::default();
        let mut recs = Vec::with_capacity(round.len());
        let mut waiters = Vec::with_capacity(round.len());
        for r in round {
            sync.merge(r.sync);
            recs.push(r.rec);
            waiters.push(r.done);
        }
        let result = store
            .sync_dirs(&sync)
            .map_err(ServerError::from)
            .and_then(|()| journal.publish(&recs))
            .and_then(|()| index_records(catalog, retention, recs));
        match result {
            Ok(recs) => {
                for (w, rec) in waiters.into_iter().zip(recs) {
                    let _ = w.send(Ok(rec));
                }
            }
            Err(e) => {
                error!(error = %e, segments = waiters.len(), "group commit failed");
                for w in waiters {
                    let _ = w.send(Err(ServerError::Unavailable(format!(
                        "could not make the segment durable: {e}; retry"
                    ))));
                }
            }
        }
    }
}
