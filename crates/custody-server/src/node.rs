//! A [`Node`]: the store, the catalog and the keyring of one server process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use custody_catalog::{Catalog, CatalogState, SCHEMA_VERSION};
use custody_core::{Clock, Limits, SegmentId, SystemClock};
use custody_crypto::{Keyring, SigningKey};
use custody_store::{ObjectPath, Store};
use futures::StreamExt;
use tracing::{info, warn};

use crate::audit::{key_events, AuditEvent, AuditLog};
use crate::authz::Denials;
use crate::cluster::{ClusterLink, ClusterView, JournalEntryV1, Member, Solo};
use crate::commit::Committer;
use crate::identity::RevocationList;
use crate::retention::Retention;
use crate::{AuthConfig, ComplianceConfig, RebuildReport, ServerConfig, ServerError};

/// One Custody node. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Node {
    pub(crate) store: Store,
    pub(crate) catalog: Catalog,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) limits: Limits,
    pub(crate) chunk_size: u32,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) retention: Arc<Retention>,
    pub(crate) audit: AuditLog,
    pub(crate) compliance: ComplianceConfig,
    /// Signs evidence manifests.
    pub(crate) signing: Arc<SigningKey>,
    inflight: Arc<Mutex<HashSet<SegmentId>>>,
    pub(crate) auth: Arc<AuthConfig>,
    pub(crate) denials: Arc<Denials>,
    /// Prometheus metrics (`GET /metrics`).
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) revoked: Arc<RevocationList>,
    pub(crate) catalog_dir: std::path::PathBuf,
    /// Group commit of ingests.
    pub(crate) committer: Committer,
    /// The cluster this node belongs to ([`Solo`] without one).
    pub(crate) cluster: Arc<dyn ClusterLink>,
    /// The same, as a member, to start its loops once the node is open.
    member: Option<Arc<Member>>,
}

/// Bytes free for unprivileged writers on the file system of `dir`
/// (`None` when it cannot say).
pub(crate) fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    Some(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// Releases an in-flight upload slot when dropped.
pub(crate) struct InflightGuard {
    set: Arc<Mutex<HashSet<SegmentId>>>,
    id: SegmentId,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Loads the keyring the config names: the environment variable if set,
/// else the key file (created with mode 0600 on first start).
pub fn load_keyring(config: &ServerConfig) -> Result<Keyring, ServerError> {
    if !config.keys.env_var.is_empty() {
        if let Ok(v) = std::env::var(&config.keys.env_var) {
            return Keyring::from_env_value(&v).map_err(|e| {
                ServerError::FailedPrecondition(format!("{}: {e}", config.keys.env_var))
            });
        }
    }
    let path = config.key_file();
    Keyring::load_or_create(&path)
        .map_err(|e| ServerError::FailedPrecondition(format!("key file {}: {e}", path.display())))
}

impl Node {
    /// The file systems this node writes locally: the catalog's (with the
    /// audit's staging and the keys) and a local store's.
    pub(crate) fn data_dirs(&self) -> impl Iterator<Item = (&'static str, &std::path::Path)> {
        std::iter::once(("catalog", self.catalog_dir.as_path()))
            .chain(self.store.local_root().map(|root| ("objects", root)))
    }

    /// Opens the node described by `config` and finishes or forgets uploads a
    /// crash interrupted.
    pub async fn open(config: &ServerConfig) -> Result<Node, ServerError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Node::open`], with an injected clock.
    pub async fn open_with_clock(
        config: &ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, ServerError> {
        let node = Self::open_unchecked(config, clock).await?;
        node.ensure_catalog_covers_store(config.catalog.rebuild_on_start)
            .await?;
        node.recover_pending().await?;
        if let Some(member) = &node.member {
            member.run();
        }
        Ok(node)
    }

    /// Deletes the catalog and builds it anew from the store: what
    /// `custodyd catalog rebuild` does. Returns the node and what was found.
    pub async fn rebuild_catalog(
        config: &ServerConfig,
    ) -> Result<(Node, RebuildReport), ServerError> {
        crate::rebuild::destroy_catalog(config)?;
        let node = Self::open_unchecked(config, Arc::new(SystemClock)).await?;
        node.cluster.mark_heads().await?;
        let report = node.reindex_all().await?;
        node.catalog.mark_current()?;
        node.recover_pending().await?;
        Ok((node, report))
    }

    /// A catalog that is not marked as indexing the store (just created
    /// because it was lost, or from another layout) must not serve an
    /// empty view of a full store: the sweeper would miss expired footage
    /// and retries could not be told from new uploads. Rebuild it first, or
    /// refuse to start.
    async fn ensure_catalog_covers_store(&self, rebuild: bool) -> Result<(), ServerError> {
        let state = self.catalog.state()?;
        if state == CatalogState::Current {
            return Ok(());
        }
        // Peers' journals are applied from here on; the listing below
        // covers what they journaled before.
        self.cluster.mark_heads().await?;
        let mut listing = self.store.list(&custody_store::layout::segments_prefix());
        let sample = match listing.next().await {
            Some(obj) => Some(obj?.key),
            None => None,
        };
        drop(listing);
        if let Some(sample) = sample {
            let why = match state {
                CatalogState::Outdated(v) => format!(
                    "the catalog at {} has layout version {v}, this custodyd writes {SCHEMA_VERSION}",
                    self.catalog_dir.display()
                ),
                _ => format!(
                    "the catalog at {} is new (or was lost) but the store {} holds footage (e.g. {sample})",
                    self.catalog_dir.display(),
                    self.store.url()
                ),
            };
            if !rebuild {
                return Err(ServerError::FailedPrecondition(format!(
                    "{why}: run `custodyd catalog rebuild` (with the same --config/--data-dir) before serving, \
                     or set [catalog] rebuild_on_start = true"
                )));
            }
            warn!("{why}: rebuilding it from the store before serving");
            let started = std::time::Instant::now();
            let report = self.reindex_all().await?;
            warn!(
                indexed = report.indexed,
                foreign = report.foreign.len(),
                failed = report.failed.len(),
                conflicts = report.conflicts.len(),
                secs = started.elapsed().as_secs(),
                "catalog rebuilt from the store"
            );
        }
        self.catalog.mark_current()?;
        Ok(())
    }

    /// Opens everything without checking that the catalog covers the store.
    async fn open_unchecked(
        config: &ServerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ServerError::FailedPrecondition(format!("data dir {}: {e}", config.data_dir.display()))
        })?;
        let keyring = load_keyring(config)?;
        let signing_path = config.signing_key_file();
        let signing = SigningKey::load_or_create(&signing_path).map_err(|e| {
            ServerError::FailedPrecondition(format!(
                "signing key file {}: {e}",
                signing_path.display()
            ))
        })?;
        let catalog = Catalog::open(&config.catalog_dir())?;
        // A local store directory that vanished (an unmounted disk) must not
        // be recreated empty under a catalog that still indexes footage.
        let local_root = match config.store.url.as_str() {
            "" => Some(config.data_dir.join("objects")),
            url => url.strip_prefix("file://").map(std::path::PathBuf::from),
        };
        if let Some(root) = local_root {
            let indexed = catalog.map_cameras(|c| c.segments())?.iter().sum::<u64>();
            if indexed > 0 && !root.exists() {
                return Err(ServerError::FailedPrecondition(format!(
                    "store directory {} is missing but the catalog indexes {indexed} segments: is the disk mounted? \
                     (to start over, remove {} too)",
                    root.display(),
                    config.catalog_dir().display()
                )));
            }
        }
        let store = Store::open(&config.store, &config.data_dir).await?;
        if config.chunk_size == 0 || config.chunk_size > custody_crypto::MAX_CHUNK_SIZE {
            return Err(ServerError::FailedPrecondition(format!(
                "chunk_size {} is outside 1..={}",
                config.chunk_size,
                custody_crypto::MAX_CHUNK_SIZE
            )));
        }
        let keyring = Arc::new(keyring);
        let retention = Arc::new(Retention::new(config.retention.clone()));
        let member = match &config.cluster {
            Some(c) => Some(
                Member::join(
                    c,
                    store.clone(),
                    catalog.clone(),
                    retention.clone(),
                    keyring.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let cluster: Arc<dyn ClusterLink> = match &member {
            Some(m) => m.clone(),
            None => Arc::new(Solo),
        };
        let commit_stats = crate::metrics::CommitStats::default();
        let committer = Committer::start(
            store.clone(),
            catalog.clone(),
            retention.clone(),
            cluster.clone(),
            commit_stats.clone(),
        )?;
        let (audit, resumed) = AuditLog::start(
            store.clone(),
            keyring.clone(),
            clock.clone(),
            config.audit.clone(),
            config
                .cluster
                .as_ref()
                .map(|c| c.node_id.clone())
                .unwrap_or_default(),
        )
        .await?;
        let metrics = crate::metrics::Metrics::new(
            config,
            audit.stats(),
            &commit_stats,
            clock.now().to_parts().0,
        );
        let node = Node {
            store,
            catalog,
            keyring,
            limits: config.limits.clone(),
            chunk_size: config.chunk_size,
            clock,
            retention,
            committer,
            cluster,
            member,
            audit,
            compliance: config.compliance.clone(),
            signing: Arc::new(signing),
            inflight: Arc::new(Mutex::new(HashSet::new())),
            auth: Arc::new(config.auth.clone()),
            denials: Arc::new(Denials::default()),
            metrics,
            catalog_dir: config.catalog_dir(),
            revoked: Arc::new(
                RevocationList::open(config.auth.revoked_serials_file.clone())
                    .map_err(|e| ServerError::FailedPrecondition(e.to_string()))?,
            ),
        };
        node.load_retention().await?;
        let mut events = key_events(&node.keyring, resumed.head.as_ref());
        let mut start = AuditEvent::node("node.start");
        start.detail = format!("store {}", node.store.url());
        events.push(start);
        node.audit.record_durable(events).await?;
        if let Err(e) = node.publish_signing_key().await {
            warn!(error = %e, "could not publish the evidence signing key; will retry on export");
        }
        Ok(node)
    }

    /// The node's object store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Refusals counted by the listeners' gates and the handlers.
    pub fn denials(&self) -> &Denials {
        &self.denials
    }

    /// The node's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The cluster as this node sees it: members, duties, lag.
    pub async fn cluster_view(&self) -> Result<ClusterView, ServerError> {
        self.cluster.view().await
    }

    /// Tells peers of segments this node indexed from the store rather than
    /// through its own commit (recovered after a crash, or found stored by
    /// a node that died before journaling them). Best effort: a failure is
    /// logged; peers still find them when they rebuild from the bucket.
    pub(crate) async fn announce(&self, recs: &[custody_catalog::SegmentRecord]) {
        if !self.cluster.journals() || recs.is_empty() {
            return;
        }
        let entries = JournalEntryV1::stored(recs);
        if let Err(e) = self.cluster.publish(entries).await {
            warn!(error = %e, segments = recs.len(), "could not journal segments indexed from the store");
        }
    }

    /// Tells peers that segments were deleted, so their indexes drop them.
    pub(crate) async fn announce_deleted(&self, ids: &[SegmentId]) {
        if !self.cluster.journals() || ids.is_empty() {
            return;
        }
        let entries = ids.iter().copied().map(JournalEntryV1::Deleted).collect();
        if let Err(e) = self.cluster.publish(entries).await {
            warn!(error = %e, segments = ids.len(), "could not journal deletions");
        }
    }

    /// Looks a segment up, asking the peers' journals when the index does
    /// not have it yet (acknowledged on another node moments ago).
    pub(crate) async fn lookup(
        &self,
        id: &SegmentId,
    ) -> Result<Option<custody_catalog::SegmentRecord>, ServerError> {
        if let Some(rec) = self.catalog.get(id)? {
            return Ok(Some(rec));
        }
        if !self.cluster.journals() {
            return Ok(None);
        }
        self.cluster.catch_up().await?;
        Ok(self.catalog.get(id)?)
    }

    /// Whether the index knows `camera`, asking the peers' journals first
    /// when it does not.
    pub(crate) async fn knows_camera(
        &self,
        camera: &custody_core::CameraId,
    ) -> Result<bool, ServerError> {
        if self.catalog.has_camera(camera)? {
            return Ok(true);
        }
        if !self.cluster.journals() {
            return Ok(false);
        }
        self.cluster.catch_up().await?;
        Ok(self.catalog.has_camera(camera)?)
    }

    pub(crate) fn claim(&self, id: SegmentId) -> Option<InflightGuard> {
        let mut set = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id).then(|| InflightGuard {
            set: self.inflight.clone(),
            id,
        })
    }

    /// Write intents left by a crash: an object that made it to the store
    /// whole is indexed (the client will see its retry answered as a
    /// duplicate); anything else is forgotten. Staging files were already
    /// discarded when the store opened. Objects are only ever linked into
    /// place whole, so one that fails authentication was not left by the
    /// crash: it is left where it is, for the compliance report to name.
    async fn recover_pending(&self) -> Result<(), ServerError> {
        for (id, key) in self.catalog.pending()? {
            let path = ObjectPath::from(key.as_str());
            match self.index_object(&path).await {
                Ok(rec) => {
                    info!(segment = %id, key, size = rec.size, "recovered segment stored before a crash");
                    self.announce(std::slice::from_ref(&rec)).await;
                }
                Err(ServerError::NotFound(_)) => {
                    info!(segment = %id, key, "dropped upload interrupted by a crash");
                }
                Err(e @ (ServerError::Unavailable(_) | ServerError::Internal(_))) => return Err(e),
                Err(e) => {
                    warn!(segment = %id, key, error = %e, "object of an interrupted upload is not indexed; left in place");
                }
            }
            self.catalog.remove_pending(&id)?;
        }
        Ok(())
    }
}
