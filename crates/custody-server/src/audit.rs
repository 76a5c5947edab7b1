//! The node's audit writer: one task that numbers, chains, seals and writes
//! the audit records of this node to the store (`custody-audit` owns the
//! format and verification).
//!
//! - **Group commit.** Records queue on a bounded channel. The writer takes
//!   whatever is queued and writes it as one create-only batch object, then
//!   a head (checkpoint). A batch waits at most `[audit] flush_interval_ms`
//!   for company, and not at all when a caller waits for durability.
//! - **Mutations** (holds, releases, policies, deletions) are recorded
//!   *after* they took effect and *before* they are acknowledged: the record
//!   then states the real outcome (ok, or refused/failed with the reason),
//!   and a crash in between leaves an unacknowledged mutation whose own
//!   sealed object (`holds/`, `policies/`, ...) still names who did it.
//!   Sweep deletions are the exception: recorded before the objects go
//!   (intent-first), so no segment leaves the store unrecorded.
//!   Reads are group-committed; [`AuditLog::close`] flushes on shutdown.
//! - **Store out** (a full disk, an unreachable bucket): the writer keeps
//!   the records and retries every `RETRY_MIN`; until a batch is written
//!   again, reads of footage are refused rather than served unaudited
//!   ([`AuditLog::record_read`]).
//! - **Resume.** On start the writer lists `audit/` in the store and
//!   continues after the last batch, so the chain survives the loss of the
//!   catalog. The create-only write is a compare-and-swap on the sequence
//!   number: when another writer took it, the writer re-reads the tail and
//!   renumbers.
//! - **Several writers** (cluster nodes): each batch is preceded by a
//!   create-only claim on its first sequence number (`audit/claims/`), so
//!   writers cannot fork the chain with batches of different lengths; a
//!   claim left without its batch for [`VOID_AFTER`] (its writer died) is
//!   filled with `audit.void` records by the next writer. Every record names
//!   the node that wrote it.
//! - **Key operations** are seen at start: the last head records the
//!   keyring's ids and active key; differences become `key.*` records.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use custody_audit::{
    batch_key, claim_key, head_key, open_batch, open_claim, open_head, parse_key, seal_batch,
    seal_claim, seal_head, AuditError, AuditRecord, Digest, Head, ObjectName, Outcome,
    AUDIT_PREFIX, GENESIS,
};
use custody_core::Clock;
use custody_crypto::Keyring;
use custody_store::{ObjectPath, Store, StoreError};
use futures::TryStreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::metrics::AuditStats;
use crate::{AuditConfig, Caller, Node, ServerError};

/// Shortest wait before retrying records a failed write left behind.
const RETRY_MIN: Duration = Duration::from_millis(500);

/// Principal of records the node writes on its own behalf.
pub(crate) const NODE_PRINCIPAL: &str = "custodyd";

/// What happened, before the writer numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who.
    pub principal: String,
    /// Listener, or `node` for the node's own actions.
    pub listener: String,
    /// What, e.g. `hold.create`.
    pub action: String,
    /// Cameras concerned.
    pub cameras: Vec<String>,
    /// Segment concerned.
    pub segment: String,
    /// Hold concerned.
    pub hold: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or failed.
    pub reason: String,
    /// Anything else worth keeping.
    pub detail: String,
}

impl AuditEvent {
    /// An event of `caller` doing `action`, ok so far, with no target.
    pub fn new(caller: &Caller, action: &str) -> AuditEvent {
        AuditEvent::by(&caller.principal, &caller.listener, action)
    }

    /// An event of the node itself.
    pub fn node(action: &str) -> AuditEvent {
        AuditEvent::by(NODE_PRINCIPAL, "node", action)
    }

    fn by(principal: &str, listener: &str, action: &str) -> AuditEvent {
        AuditEvent {
            principal: principal.to_string(),
            listener: listener.to_string(),
            action: action.to_string(),
            cameras: Vec::new(),
            segment: String::new(),
            hold: String::new(),
            outcome: Outcome::Ok,
            reason: String::new(),
            detail: String::new(),
        }
    }
}

/// Why a batch of records was not written. Cloneable: every waiter on the
/// batch gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AuditWriteError {
    /// The records could not be sealed.
    #[error(transparent)]
    Seal(Arc<AuditError>),
    /// The store refused or failed the write.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// Re-reading the chain's tail after losing a sequence number failed.
    #[error(transparent)]
    Resume(Arc<ServerError>),
    /// Other writers took the sequence number on every attempt.
    #[error("audit sequence contended {MAX_ATTEMPTS} times")]
    Contended,
}

type Ack = oneshot::Sender<Result<u64, AuditWriteError>>;

enum Cmd {
    /// Records, with a waiter for their durability.
    Records(Vec<AuditEvent>, Option<Ack>),
    /// Flush everything queued before this.
    Flush(Ack),
}

/// The audit log of a node: a handle to its writer task. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Cmd>,
    /// The writer's figures, for the metrics.
    stats: AuditStats,
}

/// Where the chain stood when the writer started.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resumed {
    /// The latest readable head.
    pub(crate) head: Option<Head>,
}

impl AuditLog {
    /// Resumes the chain in `store` and starts the writer.
    pub(crate) async fn start(
        store: Store,
        keyring: Arc<Keyring>,
        clock: Arc<dyn Clock>,
        config: AuditConfig,
        node: String,
    ) -> Result<(AuditLog, Resumed), ServerError> {
        if config.max_batch_records == 0 || config.queue_capacity == 0 {
            return Err(ServerError::FailedPrecondition(
                "[audit] max_batch_records and queue_capacity must be at least 1".into(),
            ));
        }
        let mut w = Writer {
            dangling: std::collections::HashMap::new(),
            store,
            keyring,
            clock,
            node,
            next_seq: 1,
            prev: GENESIS,
            config: config.clone(),
            stats: AuditStats::default(),
        };
        let resumed = w.resume().await?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let stats = w.stats.clone();
        tokio::spawn(w.run(rx));
        Ok((AuditLog { tx, stats }, resumed))
    }

    /// The writer's figures (batch write latency and failures).
    pub(crate) fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Requests queued for the writer and not yet taken.
    pub(crate) fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    async fn send(&self, cmd: Cmd) -> Result<(), ServerError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| ServerError::Unavailable("the audit writer has stopped".into()))
    }

    /// Records `events` and returns once they are durable in the store.
    pub async fn record_durable(&self, events: Vec<AuditEvent>) -> Result<u64, ServerError> {
        let (ack, done) = oneshot::channel();
        self.send(Cmd::Records(events, Some(ack))).await?;
        done.await
            .map_err(|_| ServerError::Unavailable("the audit writer has stopped".into()))?
            .map_err(|e| ServerError::Unavailable(format!("audit record not durable: {e}")))
    }

    /// Records `event` in the next group commit (within `flush_interval_ms`);
    /// waits only for room in the queue.
    pub async fn record(&self, event: AuditEvent) {
        if let Err(e) = self.send(Cmd::Records(vec![event], None)).await {
            error!(error = %e, "audit record dropped");
        }
    }

    /// Records the event of a read (anything that touches footage) in the
    /// next group commit. While the writer's last batch failed (the store is
    /// full or unreachable), a read that would be served is refused instead
    /// (invariant 6: nothing is served unaudited): its record says so, is
    /// waited for, and the error names why.
    pub async fn record_read(&self, mut event: AuditEvent) -> Result<(), ServerError> {
        let failing = self
            .stats
            .failing
            .load(std::sync::atomic::Ordering::Relaxed);
        if !failing || event.outcome != Outcome::Ok {
            self.record(event).await;
            return Ok(());
        }
        event.outcome = Outcome::Failed;
        event.reason = "not served: the audit log could not be written".into();
        let why = match self.record_durable(vec![event]).await {
            Ok(_) => "the audit log could not be written until now".to_string(),
            Err(e) => e.to_string(),
        };
        Err(ServerError::Unavailable(why))
    }

    /// Returns once every record queued before the call is durable.
    pub async fn flush(&self) -> Result<(), ServerError> {
        let (ack, done) = oneshot::channel();
        self.send(Cmd::Flush(ack)).await?;
        done.await
            .map_err(|_| ServerError::Unavailable("the audit writer has stopped".into()))?
            .map(|_| ())
            .map_err(|e| ServerError::Unavailable(format!("audit flush failed: {e}")))
    }

    /// Clean shutdown: records `node.stop` and flushes everything before it.
    pub async fn close(&self) -> Result<(), ServerError> {
        self.record_durable(vec![AuditEvent::node("node.stop")])
            .await
            .map(|_| ())
    }
}

/// Attempts at writing one batch before giving up (each after re-reading
/// the chain's tail).
const MAX_ATTEMPTS: usize = 20;
/// How long a claim may stay without its batch, as this writer observes it,
/// before it is voided (its writer died between claim and batch).
pub(crate) const VOID_AFTER: Duration = Duration::from_secs(10);
/// Pause before re-reading a tail that another writer is still writing.
const CLAIM_WAIT: Duration = Duration::from_millis(100);

/// What one look at the next claim found.
enum Settled {
    /// No claim on the next sequence number: write.
    Ready,
    /// The tail moved on (a claimed batch appeared, or was voided).
    Advanced,
    /// A claimed batch is still being written.
    Wait,
}

struct Writer {
    /// Claims seen without their batch, and when this writer first saw them.
    dangling: std::collections::HashMap<u64, std::time::Instant>,
    store: Store,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    /// The cluster node id written into every record ("" alone).
    node: String,
    next_seq: u64,
    prev: Digest,
    config: AuditConfig,
    stats: AuditStats,
}

impl Writer {
    /// Finds the end of the chain in the store.
    async fn resume(&mut self) -> Result<Resumed, ServerError> {
        let keys: Vec<String> = self
            .store
            .list(&ObjectPath::from(AUDIT_PREFIX))
            .map_ok(|o| o.key.to_string())
            .try_collect()
            .await?;
        let mut last_batch: Option<(u64, String)> = None;
        let mut last_head: Option<(u64, String)> = None;
        for k in keys {
            match parse_key(&k) {
                Some(ObjectName::Batch { last, .. })
                    if last_batch.as_ref().is_none_or(|(s, _)| last > *s) =>
                {
                    last_batch = Some((last, k));
                }
                Some(ObjectName::Head { seq })
                    if last_head.as_ref().is_none_or(|(s, _)| seq > *s) =>
                {
                    last_head = Some((seq, k));
                }
                _ => {}
            }
        }
        self.next_seq = 1;
        self.prev = GENESIS;
        if let Some((last, key)) = last_batch {
            self.next_seq = last + 1;
            let bytes = self.store.get(&ObjectPath::from(key.as_str())).await?;
            let records = open_batch(&self.keyring, &bytes).authentic();
            match records.iter().find(|r| r.seq == last) {
                Some(r) => self.prev = r.digest(),
                None => warn!(object = key, "the last audit record does not verify; the chain continues after it unlinked (custody audit verify names it)"),
            }
        }
        let mut resumed = Resumed::default();
        if let Some((seq, key)) = last_head {
            let bytes = self.store.get(&ObjectPath::from(key.as_str())).await?;
            match open_head(&self.keyring, &bytes) {
                Ok(h) => {
                    if seq >= self.next_seq {
                        warn!(head = seq, chain_end = self.next_seq - 1, "an audit head names records the store no longer has: the tail was cut (custody audit verify names it)");
                    }
                    resumed.head = Some(h);
                }
                Err(e) => warn!(object = key, error = %e, "latest audit head fails verification"),
            }
        }
        info!(next_seq = self.next_seq, "audit chain resumed");
        Ok(resumed)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let max = self.config.max_batch_records;
        let mut carried: Vec<AuditEvent> = Vec::new();
        // After a failed write, the next attempt waits until then, whatever
        // arrives meanwhile (one attempt and one log line per RETRY_MIN
        // while the store is out, not one per record).
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            // Records a failed write left behind are retried after an interval
            // even when nothing new arrives.
            let cmd = if carried.is_empty() {
                match rx.recv().await {
                    Some(c) => Some(c),
                    None => break,
                }
            } else {
                match tokio::time::timeout(interval.max(RETRY_MIN), rx.recv()).await {
                    Ok(Some(c)) => Some(c),
                    Ok(None) => break,
                    Err(_) => None,
                }
            };
            let mut events = std::mem::take(&mut carried);
            let mut acks: Vec<Ack> = Vec::new();
            let mut urgent = false;
            let mut take = |cmd: Cmd, events: &mut Vec<AuditEvent>, urgent: &mut bool| match cmd {
                Cmd::Records(e, ack) => {
                    events.extend(e);
                    if let Some(a) = ack {
                        acks.push(a);
                        *urgent = true;
                    }
                }
                Cmd::Flush(a) => {
                    acks.push(a);
                    *urgent = true;
                }
            };
            if let Some(cmd) = cmd {
                take(cmd, &mut events, &mut urgent);
            }
            let now = tokio::time::Instant::now();
            let deadline = (now + interval).max(retry_at.unwrap_or(now));
            let mut open = true;
            while (!urgent || retry_at.is_some_and(|t| tokio::time::Instant::now() < t))
                && events.len() < max
            {
                tokio::select! {
                    c = rx.recv() => match c {
                        Some(c) => take(c, &mut events, &mut urgent),
                        None => { open = false; break; }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            // Whatever is already queued joins this batch.
            while events.len() < max {
                match rx.try_recv() {
                    Ok(c) => take(c, &mut events, &mut urgent),
                    Err(_) => break,
                }
            }
            let result = if events.is_empty() {
                Ok(self.next_seq - 1)
            } else {
                let started = std::time::Instant::now();
                let written = self.write(&events).await;
                let now = self.clock.now().to_parts().0;
                self.stats.flushed(started, written.is_ok(), now);
                written
            };
            match &result {
                Ok(_) => {
                    if retry_at.take().is_some() {
                        warn!(records = events.len(), "audit batches are written again");
                    }
                }
                Err(e) => {
                    retry_at = Some(tokio::time::Instant::now() + RETRY_MIN);
                    error!(error = %e, records = events.len(), "audit batch not written; reads are refused until one is (retrying every {RETRY_MIN:?})");
                    carried = events;
                    let cap = self.config.queue_capacity;
                    if carried.len() > cap {
                        let lost = carried.len() - cap;
                        error!(
                            lost,
                            "audit records dropped: the store is unavailable and the queue is full"
                        );
                        carried.drain(..lost);
                    }
                }
            }
            for a in acks {
                let _ = a.send(result.clone());
            }
            if !open {
                break;
            }
        }
        if !carried.is_empty() {
            if let Err(e) = self.write(&carried).await {
                error!(error = %e, records = carried.len(), "audit records lost at shutdown");
            }
        }
    }

    /// Writes `events` as the next batch; returns the last sequence number.
    async fn write(&mut self, events: &[AuditEvent]) -> Result<u64, AuditWriteError> {
        for _attempt in 0..MAX_ATTEMPTS {
            if !self.node.is_empty() {
                self.settle_tail().await?;
            }
            let at = self.clock.now().to_string();
            let mut prev = self.prev;
            let records: Vec<AuditRecord> = events
                .iter()
                .zip(self.next_seq..)
                .map(|(e, seq)| {
                    let r = AuditRecord {
                        seq,
                        prev: hex::encode(prev),
                        at: at.clone(),
                        principal: e.principal.clone(),
                        listener: e.listener.clone(),
                        action: e.action.clone(),
                        cameras: e.cameras.clone(),
                        segment: e.segment.clone(),
                        hold: e.hold.clone(),
                        outcome: e.outcome,
                        reason: e.reason.clone(),
                        detail: e.detail.clone(),
                        node: self.node.clone(),
                    };
                    prev = r.digest();
                    r
                })
                .collect();
            let first = self.next_seq;
            let last = first + records.len() as u64 - 1;
            let key = batch_key(first, last);
            let sealed = seal_batch(self.keyring.active(), &records)
                .map_err(|e| AuditWriteError::Seal(Arc::new(e)))?;
            let path = ObjectPath::from(key.as_str());
            if !self.node.is_empty() {
                let claim = seal_claim(self.keyring.active(), &key)
                    .map_err(|e| AuditWriteError::Seal(Arc::new(e)))?;
                let claim_path = ObjectPath::from(claim_key(first).as_str());
                match self
                    .store
                    .put_create_only(&claim_path, Bytes::from(claim))
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::AlreadyExists { .. }) => {
                        debug!(
                            first,
                            "audit sequence claimed by another writer; renumbering"
                        );
                        self.resume()
                            .await
                            .map_err(|e| AuditWriteError::Resume(Arc::new(e)))?;
                        continue;
                    }
                    Err(e) => {
                        crate::metrics::store_error(&e);
                        return Err(AuditWriteError::Store(Arc::new(e)));
                    }
                }
            }
            match self.store.put_create_only(&path, Bytes::from(sealed)).await {
                Ok(()) => {}
                Err(StoreError::AlreadyExists { .. }) => {
                    // Ours from an attempt that timed out, or another writer's.
                    let theirs = self
                        .store
                        .get(&path)
                        .await
                        .ok()
                        .map(|b| open_batch(&self.keyring, &b).authentic());
                    if theirs.as_ref() != Some(&records) {
                        warn!(
                            object = key,
                            "audit sequence taken by another writer; renumbering"
                        );
                        self.resume()
                            .await
                            .map_err(|e| AuditWriteError::Resume(Arc::new(e)))?;
                        continue;
                    }
                }
                Err(e) => {
                    crate::metrics::store_error(&e);
                    return Err(AuditWriteError::Store(Arc::new(e)));
                }
            }
            self.next_seq = last + 1;
            self.prev = prev;
            self.write_head(last, key).await;
            return Ok(last);
        }
        Err(AuditWriteError::Contended)
    }

    /// Several writers: waits until no other writer is between its claim on
    /// the next sequence number and its batch (voiding the claim of one that
    /// died), so the tail this writer continues from is final.
    async fn settle_tail(&mut self) -> Result<(), AuditWriteError> {
        let deadline = std::time::Instant::now() + 2 * VOID_AFTER;
        loop {
            match self.settle_claims().await? {
                Settled::Ready => return Ok(()),
                Settled::Advanced => {}
                Settled::Wait => tokio::time::sleep(CLAIM_WAIT).await,
            }
            if std::time::Instant::now() > deadline {
                return Err(AuditWriteError::Contended);
            }
        }
    }

    /// Several writers: one step of [`Writer::settle_tail`]. Returns `false` when another writer claimed the next batch
    /// and has not written it yet (wait and call again); a claim left
    /// without its batch for [`VOID_AFTER`] is filled with `audit.void`
    /// records first.
    async fn settle_claims(&mut self) -> Result<Settled, AuditWriteError> {
        let resume_err = |e: ServerError| AuditWriteError::Resume(Arc::new(e));
        let store_err = |e: StoreError| AuditWriteError::Store(Arc::new(e));
        let claim_path = ObjectPath::from(claim_key(self.next_seq).as_str());
        let claim = match self.store.get(&claim_path).await {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => return Ok(Settled::Ready),
            Err(e) => return Err(store_err(e)),
        };
        // Someone claimed the next batch: is it written yet?
        let batch =
            open_claim(&self.keyring, &claim).map_err(|e| AuditWriteError::Seal(Arc::new(e)))?;
        let Some(ObjectName::Batch { first, last }) = parse_key(&batch) else {
            return Err(AuditWriteError::Seal(Arc::new(AuditError::Payload(
                format!("claim {claim_path} names {batch}, not a batch"),
            ))));
        };
        match self.store.head(&ObjectPath::from(batch.as_str())).await {
            Ok(_) => {
                self.dangling.remove(&first);
                self.resume().await.map_err(resume_err)?;
                return Ok(Settled::Advanced);
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        let seen = *self
            .dangling
            .entry(first)
            .or_insert_with(std::time::Instant::now);
        if seen.elapsed() < VOID_AFTER {
            return Ok(Settled::Wait);
        }
        // Its writer died between claim and batch: fill the claimed numbers
        // so the chain has no hole, then continue after them.
        let at = self.clock.now().to_string();
        let mut prev = self.prev;
        let records: Vec<AuditRecord> = (first..=last)
            .map(|seq| {
                let r = AuditRecord {
                    seq,
                    prev: hex::encode(prev),
                    at: at.clone(),
                    principal: crate::audit::NODE_PRINCIPAL.to_string(),
                    listener: "node".into(),
                    action: "audit.void".into(),
                    cameras: Vec::new(),
                    segment: String::new(),
                    hold: String::new(),
                    outcome: custody_audit::Outcome::Failed,
                    reason: format!(
                        "claimed in {claim_path} and never written (its writer stopped)"
                    ),
                    detail: String::new(),
                    node: self.node.clone(),
                };
                prev = r.digest();
                r
            })
            .collect();
        let sealed = seal_batch(self.keyring.active(), &records)
            .map_err(|e| AuditWriteError::Seal(Arc::new(e)))?;
        match self
            .store
            .put_create_only(&ObjectPath::from(batch.as_str()), Bytes::from(sealed))
            .await
        {
            Ok(()) => {
                warn!(first, last, claim = %claim_path, "voided an audit claim whose writer never wrote its batch")
            }
            // The claimer wrote it after all.
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        self.dangling.remove(&first);
        self.resume().await.map_err(resume_err)?;
        Ok(Settled::Advanced)
    }

    /// Writes the checkpoint after a batch; a failure is logged, not fatal
    /// (the next batch writes a newer one).
    async fn write_head(&self, seq: u64, object: String) {
        let head = Head {
            seq,
            digest: hex::encode(self.prev),
            at: self.clock.now().to_string(),
            object,
            keys: self.keyring.ids().map(|k| k.to_string()).collect(),
            active_key: self.keyring.active().id().to_string(),
        };
        let result = match seal_head(self.keyring.active(), &head) {
            Ok(b) => self
                .store
                .put_create_only(&ObjectPath::from(head_key(seq).as_str()), Bytes::from(b))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            warn!(seq, error = %e, "audit head not written");
        }
    }
}

/// The `key.*` records for what changed in the keyring since `head`.
pub(crate) fn key_events(keyring: &Keyring, head: Option<&Head>) -> Vec<AuditEvent> {
    let now: Vec<String> = keyring.ids().map(|k| k.to_string()).collect();
    let active = keyring.active().id().to_string();
    let (before, before_active) = match head {
        Some(h) if !h.active_key.is_empty() => (h.keys.clone(), h.active_key.clone()),
        _ => (Vec::new(), String::new()),
    };
    let mut out = Vec::new();
    for k in now.iter().filter(|k| !before.contains(k)) {
        let mut e = AuditEvent::node("key.add");
        e.detail = format!("KEK {k} is in the keyring");
        out.push(e);
    }
    for k in before.iter().filter(|k| !now.contains(k)) {
        let mut e = AuditEvent::node("key.remove");
        e.detail = format!("KEK {k} is no longer in the keyring");
        out.push(e);
    }
    if active != before_active {
        let mut e = AuditEvent::node("key.activate");
        e.detail = if before_active.is_empty() {
            format!("active KEK {active}")
        } else {
            format!("active KEK {before_active} -> {active}")
        };
        out.push(e);
    }
    out
}

/// Reads every authentic record in the store with `seq >= from`, oldest
/// first (objects that fail verification are skipped: `verify` names them).
pub(crate) async fn read_records(
    store: &Store,
    keyring: &Keyring,
    from: u64,
) -> Result<Vec<(AuditRecord, String)>, ServerError> {
    let mut batches: Vec<(u64, u64, String)> = store
        .list(&ObjectPath::from(AUDIT_PREFIX))
        .try_filter_map(|o| async move {
            let k = o.key.to_string();
            Ok(match parse_key(&k) {
                Some(ObjectName::Batch { first, last }) if last >= from => Some((first, last, k)),
                _ => None,
            })
        })
        .try_collect()
        .await?;
    batches.sort();
    let mut out = Vec::new();
    for (first, last, key) in batches {
        let bytes = store.get(&ObjectPath::from(key.as_str())).await?;
        let opened = open_batch(keyring, &bytes);
        let total = opened.records.len();
        let records = opened.authentic();
        if records.len() != total {
            warn!(
                object = key,
                skipped = total - records.len(),
                "audit records fail verification; skipped (custody audit verify names them)"
            );
        }
        out.extend(
            records
                .into_iter()
                .filter(|r| r.seq >= from && (first..=last).contains(&r.seq))
                .map(|r| (r, key.clone())),
        );
    }
    Ok(out)
}

/// Every object under `audit/`, for verification.
pub(crate) async fn read_objects(store: &Store) -> Result<Vec<(String, Vec<u8>)>, ServerError> {
    let keys: Vec<ObjectPath> = store
        .list(&ObjectPath::from(AUDIT_PREFIX))
        .map_ok(|o| o.key)
        .try_collect()
        .await?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let bytes = store.get(&k).await?;
        out.push((k.to_string(), bytes.to_vec()));
    }
    Ok(out)
}

impl Node {
    /// The node's audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Records a refused request (e.g. an authorization denial), group-committed.
    pub async fn audit_refusal(&self, caller: &Caller, method: &str, reason: &str) {
        let mut e = AuditEvent::new(caller, method);
        e.outcome = Outcome::Refused;
        e.reason = reason.to_string();
        self.audit.record(e).await;
    }
}

#[cfg(test)]
mod tests {
    use custody_core::{ManualClock, Timestamp};
    use custody_crypto::KeyId;

    use super::*;

    fn ring(ids: &[&str]) -> Keyring {
        let mut k = Keyring::generate(KeyId::parse(ids[0]).unwrap());
        for id in &ids[1..] {
            k.rotate(KeyId::parse(id).unwrap()).unwrap();
        }
        k
    }

    fn actions(events: &[AuditEvent]) -> Vec<(&str, &str)> {
        events
            .iter()
            .map(|e| (e.action.as_str(), e.detail.as_str()))
            .collect()
    }

    #[test]
    fn key_changes_since_the_last_head_become_records() {
        let k = ring(&["k1"]);
        assert_eq!(
            actions(&key_events(&k, None)),
            [
                ("key.add", "KEK k1 is in the keyring"),
                ("key.activate", "active KEK k1")
            ]
        );
        let head = Head {
            seq: 9,
            digest: String::new(),
            at: String::new(),
            object: String::new(),
            keys: vec!["k1".into(), "k0".into()],
            active_key: "k1".into(),
        };
        let mut same = ring(&["k0", "k1"]);
        assert_eq!(same.active().id().as_str(), "k1");
        assert!(key_events(&same, Some(&head)).is_empty());
        same.rotate(KeyId::parse("k2").unwrap()).unwrap();
        assert_eq!(
            actions(&key_events(&same, Some(&head))),
            [
                ("key.add", "KEK k2 is in the keyring"),
                ("key.activate", "active KEK k1 -> k2")
            ]
        );
        let dropped = ring(&["k1"]);
        assert_eq!(
            actions(&key_events(&dropped, Some(&head))),
            [("key.remove", "KEK k0 is no longer in the keyring")]
        );
    }

    #[tokio::test]
    async fn the_chain_resumes_from_the_store_and_reads_are_flushed() {
        let store = Store::memory();
        let keyring = Arc::new(ring(&["k1"]));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp::from_secs(1_000)));
        let config = AuditConfig {
            flush_interval_ms: 60_000,
            ..Default::default()
        };
        let (log, resumed) = AuditLog::start(
            store.clone(),
            keyring.clone(),
            clock.clone(),
            config.clone(),
            String::new(),
        )
        .await
        .unwrap();
        assert!(resumed.head.is_none());
        // Group-committed reads wait for company; a flush writes them at once.
        for i in 0..5 {
            let mut e = AuditEvent::node("archive.read_segment");
            e.segment = format!("s{i}");
            log.record(e).await;
        }
        log.flush().await.unwrap();
        assert_eq!(
            log.record_durable(vec![AuditEvent::node("hold.create")])
                .await
                .unwrap(),
            6
        );
        let recs = read_records(&store, &keyring, 1).await.unwrap();
        assert_eq!(recs.len(), 6);
        assert_eq!(recs[0].1, batch_key(1, 5));
        // A second writer (a restart without the catalog) continues the chain.
        let (log2, resumed) =
            AuditLog::start(store.clone(), keyring.clone(), clock, config, "n1".into())
                .await
                .unwrap();
        assert_eq!(resumed.head.map(|h| h.seq), Some(6));
        assert_eq!(
            log2.record_durable(vec![AuditEvent::node("node.start")])
                .await
                .unwrap(),
            7
        );
        // The first writer's next sequence number was taken: it renumbers.
        assert_eq!(
            log.record_durable(vec![AuditEvent::node("hold.release")])
                .await
                .unwrap(),
            8
        );
        let objects = read_objects(&store).await.unwrap();
        let report = custody_audit::verify(&objects, &keyring, None);
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.last_seq, 8);
    }
}
