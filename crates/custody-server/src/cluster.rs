//! The server's side of the cluster: what a node tells its peers and learns
//! from them, behind the small [`ClusterLink`] trait. A node without a
//! `[cluster]` section uses [`Solo`], which publishes nothing and is its
//! own only member. A member ([`Member`]) seals every committed round of
//! segments into its journal before they are acknowledged, tails its peers'
//! journals into its own index, and replaces its heartbeat object every
//! interval. Nothing travels node to node: the bucket carries it all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use custody_catalog::{Catalog, SegmentRecord};
use custody_cluster::{
    Batch, ClusterConfig, ClusterError, Heartbeat, Journal, Lease, LeaseGrant, Member as Peer,
    Membership, NodeName,
};
use custody_core::SegmentId;
use custody_crypto::Keyring;
use custody_store::Store;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::retention::{index_records, Retention};
use crate::ServerError;

/// Sealed-record kind of a journal batch.
const JOURNAL_KIND: &str = "journal-v1";
/// Most batches of one peer applied per poll step.
const BATCHES_PER_STEP: usize = 64;
/// Compact this node's journal every this many heartbeats.
const COMPACT_EVERY_BEATS: u64 = 300;
/// The duty of deleting expired footage, held by one node at a time.
pub(crate) const SWEEPER: &str = "sweeper";
/// What the sweeper publishes after each read of the holds.
const FENCE_KEY: &str = "cluster/fence/sweeper";

/// The sweeper's statement that its view of the holds includes every hold
/// written before `view_started` (the store's time, taken before the read
/// began).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FenceMark {
    holder: String,
    epoch: u64,
    view_started: DateTime<Utc>,
}

/// One journaled fact. Versioned: new facts get new variants, never new
/// meanings for old ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum JournalEntryV1 {
    /// A segment was stored and indexed (expiry is recomputed by each
    /// reader from its own view of the policies).
    Stored(Box<SegmentRecord>),
    /// A segment was deleted (retention).
    Deleted(SegmentId),
}

impl JournalEntryV1 {
    /// The entries saying `recs` were stored.
    pub(crate) fn stored(recs: &[SegmentRecord]) -> Vec<JournalEntryV1> {
        recs.iter()
            .map(|r| JournalEntryV1::Stored(Box::new(r.clone())))
            .collect()
    }
}

/// How one member looks from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The member's id.
    pub node_id: String,
    /// Addresses clients reach it on.
    pub advertise: Vec<String>,
    /// Whether its heartbeat is recent (by the store's clock).
    pub alive: bool,
    /// Age of its latest heartbeat in milliseconds.
    pub heartbeat_age_ms: u64,
    /// Duties it holds.
    pub duties: Vec<String>,
    /// Last batch of its journal.
    pub journal_head: u64,
    /// Last batch of its journal applied here.
    pub applied: u64,
    /// Its custodyd version.
    pub version: String,
    /// When it started (its own clock).
    pub started_at: String,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's id; empty for a node without a cluster.
    pub node_id: String,
    /// Every member, this node included.
    pub members: Vec<MemberView>,
}

/// What the node needs from the cluster.
pub(crate) trait ClusterLink: Send + Sync {
    /// Whether segments must be journaled (false for a single node).
    fn journals(&self) -> bool;
    /// Makes `entries` durable in this node's journal; returns once peers
    /// can read them.
    fn publish(&self, entries: Vec<JournalEntryV1>) -> BoxFuture<'_, Result<(), ServerError>>;
    /// Applies every batch peers journaled so far (a lookup that missed
    /// calls this before answering NOT_FOUND).
    fn catch_up(&self) -> BoxFuture<'_, Result<(), ServerError>>;
    /// Members, duties and lag.
    fn view(&self) -> BoxFuture<'_, Result<ClusterView, ServerError>>;
    /// Whether this node may delete expired footage now: always alone; in
    /// a cluster only while it holds a valid grant of the sweeper lease.
    /// Checked before every deletion.
    fn may_sweep(&self) -> bool;
    /// The store's time now (taken by writing a small object), for a
    /// sweeper about to read the holds; `None` alone.
    fn store_now(&self) -> BoxFuture<'_, Result<Option<DateTime<Utc>>, ServerError>>;
    /// The sweeper publishes that its view includes every hold written
    /// before `view_started` (no-op alone).
    fn confirm_fence(&self, view_started: DateTime<Utc>) -> BoxFuture<'_, Result<(), ServerError>>;
    /// Waits until no sweeper anywhere can delete what a hold written at
    /// `written` (store time) covers: the sweeper confirmed a view that
    /// includes it, or there is no live sweeper, or `fence` passed.
    /// Returns at once alone or on the sweeper itself (its local view is
    /// updated before the hold is acknowledged).
    fn await_hold_fence(
        &self,
        written: DateTime<Utc>,
        fence: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), ServerError>>;
    /// Before the index is built from a listing of the bucket: marks every
    /// peer's journal as applied up to its current end, since whatever it
    /// journaled so far is in the bucket the listing reads (and what comes
    /// after is applied from the journals).
    fn mark_heads(&self) -> BoxFuture<'_, Result<(), ServerError>>;
}

/// A node alone: nothing to publish or learn.
pub(crate) struct Solo;

impl ClusterLink for Solo {
    fn journals(&self) -> bool {
        false
    }
    fn publish(&self, _: Vec<JournalEntryV1>) -> BoxFuture<'_, Result<(), ServerError>> {
        async { Ok(()) }.boxed()
    }
    fn catch_up(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        async { Ok(()) }.boxed()
    }
    fn view(&self) -> BoxFuture<'_, Result<ClusterView, ServerError>> {
        async {
            Ok(ClusterView {
                node_id: String::new(),
                members: Vec::new(),
            })
        }
        .boxed()
    }
    fn mark_heads(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        async { Ok(()) }.boxed()
    }
    fn may_sweep(&self) -> bool {
        true
    }
    fn store_now(&self) -> BoxFuture<'_, Result<Option<DateTime<Utc>>, ServerError>> {
        async { Ok(None) }.boxed()
    }
    fn confirm_fence(&self, _: DateTime<Utc>) -> BoxFuture<'_, Result<(), ServerError>> {
        async { Ok(()) }.boxed()
    }
    fn await_hold_fence(
        &self,
        _: DateTime<Utc>,
        _: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), ServerError>> {
        async { Ok(()) }.boxed()
    }
}

impl From<ClusterError> for ServerError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Store(s) => s.into(),
            ClusterError::Config(m) => ServerError::FailedPrecondition(m),
            e @ ClusterError::NodeIdInUse { .. } => ServerError::FailedPrecondition(e.to_string()),
            e @ ClusterError::Corrupt { .. } => ServerError::DataLoss(e.to_string()),
        }
    }
}

struct MemberState {
    /// Last applied batch per peer.
    positions: BTreeMap<String, u64>,
    /// The store's time of this node's latest heartbeat.
    engine_now: Option<DateTime<Utc>>,
    /// Members as of the latest heartbeat.
    members: Vec<Peer>,
    /// Peers whose journal could not be applied (and why).
    stuck: BTreeMap<String, String>,
    /// This node's grant of the sweeper lease, while it holds one.
    grant: Option<LeaseGrant>,
}

/// A cluster member's link.
pub(crate) struct Member {
    me: NodeName,
    config: ClusterConfig,
    store: Store,
    catalog: Catalog,
    retention: Arc<Retention>,
    keyring: Arc<Keyring>,
    journal: Journal,
    membership: Membership,
    /// The sweeper lease (read by every member, taken only by those that
    /// run a sweeper).
    sweeper: Lease,
    /// Whether this node runs a sweeper (`[retention] sweeper_enabled`).
    sweeps: bool,
    started_at: String,
    state: Mutex<MemberState>,
    poll_lock: tokio::sync::Mutex<()>,
}

impl Member {
    /// Joins the cluster: checks the config and the store, opens this
    /// node's journal, checks that the index did not miss compacted
    /// batches, and sends a first heartbeat. Background loops are started
    /// by [`Member::run`].
    pub(crate) async fn join(
        config: &ClusterConfig,
        store: Store,
        catalog: Catalog,
        retention: Arc<Retention>,
        keyring: Arc<Keyring>,
    ) -> Result<Arc<Member>, ServerError> {
        let me = config.validate()?;
        if store.url().starts_with("memory://") {
            return Err(ServerError::FailedPrecondition(
                "a cluster member needs a store its peers share (s3://, or file:// on a shared \
                 file system), not memory://"
                    .into(),
            ));
        }
        // Journals, leases and segments rely on create-only writes: an
        // engine that ignores If-None-Match would let two nodes overwrite
        // each other silently.
        store.probe_conditional_writes().await?;
        let journal = Journal::open(store.clone(), me.clone()).await?;
        let positions = catalog.journal_positions()?;
        for (peer, after) in &positions {
            let Ok(peer) = NodeName::new(peer) else {
                continue;
            };
            let next = Journal::read_after(&store, &peer, *after, 1).await?;
            if let Some(b) = next.first() {
                if b.seq != after + 1 {
                    return Err(ServerError::FailedPrecondition(format!(
                        "this node's index applied node {peer}'s journal up to batch {after}, but the \
                         journal now starts at batch {} (older batches were compacted while this node \
                         was away): run `custodyd catalog rebuild` before serving",
                        b.seq
                    )));
                }
            }
        }
        let member = Arc::new(Member {
            membership: Membership::new(store.clone(), me.clone(), config.member_timeout()),
            sweeper: Lease::new(store.clone(), SWEEPER, me.clone(), config.lease()),
            sweeps: retention.config.sweeper_enabled,
            me,
            config: config.clone(),
            store,
            catalog,
            retention,
            keyring,
            journal,
            started_at: Utc::now().to_rfc3339(),
            state: Mutex::new(MemberState {
                positions,
                engine_now: None,
                members: Vec::new(),
                stuck: BTreeMap::new(),
                grant: None,
            }),
            poll_lock: tokio::sync::Mutex::new(()),
        });
        member.heartbeat().await?;
        info!(node = %member.me, store = member.store.url(), "joined the cluster");
        Ok(member)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Heartbeats and journal polling until the process ends. Errors are
    /// logged and retried: a node cut off from the bucket keeps serving
    /// reads from its index, and its uploads fail until the bucket returns.
    pub(crate) fn run(self: &Arc<Self>) {
        let beat = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(beat.config.heartbeat_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                if let Err(e) = beat.heartbeat().await {
                    warn!(error = %e, "heartbeat failed");
                    continue;
                }
                if n.is_multiple_of(COMPACT_EVERY_BEATS) {
                    beat.compact().await;
                }
            }
        });
        let poll = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll.config.journal_poll());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = poll.poll().await {
                    warn!(error = %e, "reading peers' journals failed");
                }
            }
        });
    }

    async fn heartbeat(&self) -> Result<(), ServerError> {
        let hb = {
            let state = self.state();
            Heartbeat {
                node: self.me.clone(),
                advertise: self.config.advertise.clone(),
                started_at: self.started_at.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                journal_head: 0,
                applied: state.positions.clone(),
                duties: if state.grant.as_ref().is_some_and(LeaseGrant::is_valid) {
                    vec![SWEEPER.to_string()]
                } else {
                    Vec::new()
                },
            }
        };
        let hb = Heartbeat {
            journal_head: self.journal.head().await,
            ..hb
        };
        let now = self.membership.beat(&hb).await?;
        let members = self.membership.members(now).await?;
        {
            let mut state = self.state();
            state.engine_now = Some(now);
            state.members = members;
        }
        self.hold_sweeper_lease(now).await;
        Ok(())
    }

    /// Takes the sweeper lease when it is free or expired, renews it while
    /// held; on any failure the grant simply runs out (the sweeper stops
    /// before its next deletion).
    async fn hold_sweeper_lease(&self, engine_now: DateTime<Utc>) {
        if !self.sweeps {
            return;
        }
        let lease = &self.sweeper;
        let current = self.state().grant.clone();
        match lease.acquire(current.as_ref(), engine_now).await {
            Ok(Some(grant)) => {
                if current.as_ref().map(|g| g.epoch) != Some(grant.epoch) {
                    info!(node = %self.me, epoch = grant.epoch, "took the sweeper lease");
                }
                self.state().grant = Some(grant);
            }
            Ok(None) => {
                if current.is_some() {
                    warn!(node = %self.me, "lost the sweeper lease");
                }
                self.state().grant = None;
            }
            Err(e) => warn!(error = %e, "could not renew the sweeper lease; it runs out"),
        }
    }

    async fn fence_mark(&self) -> Result<Option<FenceMark>, ServerError> {
        match self
            .store
            .get(&custody_store::ObjectPath::from(FENCE_KEY))
            .await
        {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(custody_store::StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn compact(&self) {
        let Some(now) = self.state().engine_now else {
            return;
        };
        let keep = std::time::Duration::from_secs(self.config.journal_keep_secs);
        match self.journal.compact(now, keep).await {
            Ok(0) => {}
            Ok(n) => info!(batches = n, "compacted this node's journal"),
            Err(e) => warn!(error = %e, "compacting this node's journal failed"),
        }
    }

    /// Applies every peer's batches not applied yet.
    async fn poll(&self) -> Result<(), ServerError> {
        let _one_at_a_time = self.poll_lock.lock().await;
        let nodes = Journal::nodes(&self.store).await?;
        let mut first_err = None;
        for peer in nodes.into_iter().filter(|n| n != &self.me) {
            if let Err(e) = self.poll_peer(&peer).await {
                self.state().stuck.insert(peer.to_string(), e.to_string());
                first_err.get_or_insert(e);
            } else {
                self.state().stuck.remove(peer.as_str());
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn poll_peer(&self, peer: &NodeName) -> Result<(), ServerError> {
        loop {
            let after = self
                .state()
                .positions
                .get(peer.as_str())
                .copied()
                .unwrap_or(0);
            let batches = Journal::read_after(&self.store, peer, after, BATCHES_PER_STEP).await?;
            let n = batches.len();
            if let Some(first) = batches.first() {
                // A catalog that applied nothing of this peer yet was built
                // from the bucket (or over an empty one): what was compacted
                // before is in the bucket, and in it.
                if after > 0 && first.seq != after + 1 {
                    self.catalog.clear_mark()?;
                    error!(peer = %peer, after, first = first.seq,
                        "this node's index missed compacted journal batches; it will rebuild from the bucket at its next start");
                    return Err(ServerError::FailedPrecondition(format!(
                        "index missed batches {}..{} of node {peer}'s journal",
                        after + 1,
                        first.seq - 1
                    )));
                }
            }
            let mut expected = first_expected(after, &batches);
            for batch in batches {
                let seq = batch.seq;
                if seq != expected {
                    // A later batch is listed before an earlier one: wait
                    // for the earlier one rather than skip it for good.
                    warn!(peer = %peer, missing = expected, listed = seq, "journal batch not listed yet; waiting for it");
                    return Ok(());
                }
                expected = seq + 1;
                self.apply(batch).await?;
                self.catalog.set_journal_position(peer.as_str(), seq)?;
                self.state().positions.insert(peer.to_string(), seq);
            }
            if n < BATCHES_PER_STEP {
                return Ok(());
            }
        }
    }

    async fn apply(&self, batch: Batch) -> Result<(), ServerError> {
        let payload = custody_crypto::open_record(&self.keyring, JOURNAL_KIND, &batch.payload)
            .map_err(|e| {
                ServerError::DataLoss(format!(
                    "journal batch {} of node {} fails authentication: {e}",
                    batch.seq, batch.node
                ))
            })?;
        let entries: Vec<JournalEntryV1> = postcard::from_bytes(&payload).map_err(|e| {
            ServerError::DataLoss(format!(
                "journal batch {} of node {} is unreadable: {e}",
                batch.seq, batch.node
            ))
        })?;
        let mut stored = Vec::new();
        let mut deleted = Vec::new();
        for e in entries {
            match e {
                JournalEntryV1::Stored(rec) => stored.push(*rec),
                JournalEntryV1::Deleted(id) => deleted.push(id),
            }
        }
        debug!(peer = %batch.node, seq = batch.seq, stored = stored.len(), deleted = deleted.len(), "applying journal batch");
        let catalog = self.catalog.clone();
        let retention = self.retention.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
            if !stored.is_empty() {
                index_records(&catalog, &retention, stored)?;
            }
            if !deleted.is_empty() {
                catalog.delete_segments(&deleted)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ServerError::Internal(format!("applying a journal batch: {e}")))?
    }
}

impl Member {
    /// Whether no sweeper can delete with a view that lacks a hold the
    /// store wrote at `written`: nobody holds the lease (a future holder
    /// reads the holds after taking it), the lease ran out by the store's
    /// clock (its holder stopped before it did), or the holder confirmed a
    /// view that began after the hold was written. Store times have
    /// one-second resolution and are truncated, so "after" means a later
    /// second.
    async fn no_sweeper_can_miss(&self, written: DateTime<Utc>) -> Result<bool, ServerError> {
        let Some((rec, lease_written)) = self.sweeper.read().await? else {
            return Ok(true);
        };
        let engine_now = self.state().engine_now;
        if let Some(now) = engine_now {
            let age = (now - lease_written).to_std().unwrap_or_default();
            if age > std::time::Duration::from_millis(rec.duration_ms) {
                return Ok(true);
            }
        }
        let Some(mark) = self.fence_mark().await? else {
            return Ok(false);
        };
        Ok(mark.holder == rec.holder.as_str()
            && mark.epoch == rec.epoch
            && mark.view_started.timestamp() > written.timestamp())
    }
}

impl ClusterLink for Member {
    fn journals(&self) -> bool {
        true
    }

    fn publish(&self, entries: Vec<JournalEntryV1>) -> BoxFuture<'_, Result<(), ServerError>> {
        async move {
            if entries.is_empty() {
                return Ok(());
            }
            let payload = postcard::to_allocvec(&entries)
                .map_err(|e| ServerError::Internal(format!("encoding a journal batch: {e}")))?;
            let sealed =
                custody_crypto::seal_record(self.keyring.active(), JOURNAL_KIND, &payload)?;
            self.journal.append(Bytes::from(sealed)).await?;
            Ok(())
        }
        .boxed()
    }

    fn catch_up(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        self.poll().boxed()
    }

    fn may_sweep(&self) -> bool {
        self.state()
            .grant
            .as_ref()
            .is_some_and(LeaseGrant::is_valid)
    }

    fn store_now(&self) -> BoxFuture<'_, Result<Option<DateTime<Utc>>, ServerError>> {
        async move {
            let key = custody_store::ObjectPath::from(format!("cluster/clock/{}", self.me));
            let info = self.store.put_replace(&key, Bytes::new()).await?;
            Ok(Some(info.last_modified))
        }
        .boxed()
    }

    fn confirm_fence(&self, view_started: DateTime<Utc>) -> BoxFuture<'_, Result<(), ServerError>> {
        async move {
            let Some(epoch) = self.state().grant.as_ref().map(|g| g.epoch) else {
                return Ok(());
            };
            let mark = FenceMark {
                holder: self.me.to_string(),
                epoch,
                view_started,
            };
            let bytes = serde_json::to_vec(&mark)
                .map_err(|e| ServerError::Internal(format!("encoding the fence mark: {e}")))?;
            self.store
                .put_replace(
                    &custody_store::ObjectPath::from(FENCE_KEY),
                    Bytes::from(bytes),
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn await_hold_fence(
        &self,
        written: DateTime<Utc>,
        fence: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), ServerError>> {
        async move {
            let deadline = tokio::time::Instant::now() + fence;
            let poll = self.config.journal_poll();
            loop {
                if self.may_sweep() {
                    // This node is the sweeper: its view has the hold.
                    return Ok(());
                }
                if self.no_sweeper_can_miss(written).await? {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    // F passed: every sweeper's view without the hold is stale.
                    return Ok(());
                }
                tokio::time::sleep(poll).await;
            }
        }
        .boxed()
    }

    fn mark_heads(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        async move {
            let _no_poll = self.poll_lock.lock().await;
            for peer in Journal::nodes(&self.store).await? {
                if peer == self.me {
                    continue;
                }
                let head = Journal::last_seq(&self.store, &peer).await?;
                self.catalog.set_journal_position(peer.as_str(), head)?;
                self.state().positions.insert(peer.to_string(), head);
            }
            Ok(())
        }
        .boxed()
    }

    fn view(&self) -> BoxFuture<'_, Result<ClusterView, ServerError>> {
        async move {
            let state = self.state();
            let members = state
                .members
                .iter()
                .map(|m| {
                    let id = m.heartbeat.node.to_string();
                    let applied = if m.heartbeat.node == self.me {
                        m.heartbeat.journal_head
                    } else {
                        state.positions.get(&id).copied().unwrap_or(0)
                    };
                    MemberView {
                        advertise: m.heartbeat.advertise.clone(),
                        alive: m.alive,
                        heartbeat_age_ms: u64::try_from(m.age.as_millis()).unwrap_or(u64::MAX),
                        duties: m.heartbeat.duties.clone(),
                        journal_head: m.heartbeat.journal_head,
                        applied,
                        version: m.heartbeat.version.clone(),
                        started_at: m.heartbeat.started_at.clone(),
                        node_id: id,
                    }
                })
                .collect();
            Ok(ClusterView {
                node_id: self.me.to_string(),
                members,
            })
        }
        .boxed()
    }
}

/// The batch number to apply next: the one after `after`, or, for a peer
/// nothing was applied of yet, the first listed.
fn first_expected(after: u64, batches: &[Batch]) -> u64 {
    match batches.first() {
        Some(b) if after == 0 => b.seq,
        _ => after + 1,
    }
}
