//! Prometheus metrics of a node, served as `GET /metrics` (OpenMetrics text,
//! encoded by `prometheus-client`) on listeners that have the `node` or the
//! `metrics` service, and nowhere else (invariant 7).
//!
//! This module owns the [`Metrics`] registry of a [`Node`]: counters and
//! histograms that the request paths bump with one call each (ingest, reads,
//! the sweeper, the audit writer), and the gauges filled from the node's own
//! state at each scrape (catalog size, holds, refusal counts, the audit
//! queue, process RSS). Who may scrape is decided by the listener's gate
//! ([`crate::authz`]); this module only answers.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

use crate::{ListenerConfig, Node, ServerConfig, ServerError};

/// The path of the scrape endpoint.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// The content type of what [`render`] returns.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `listener` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByListener {
    listener: String,
}

/// `listener` and `reason` labels (refusals).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByReason {
    listener: String,
    reason: String,
}

/// `listener` and gRPC `code` labels (failed ingests).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByCode {
    listener: String,
    code: String,
}

/// A `kind` label (store errors).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByKind {
    kind: String,
}

/// A `dir` label (the node's data file systems: `catalog`, `objects`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByDir {
    dir: String,
}

/// An `outcome` label (sweeps).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOutcome {
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to ~65 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Store request errors by kind since the process started. The conversion
/// of every store error into a [`ServerError`] counts here, which has no
/// node at hand: one process serves one node, so these are process-wide,
/// like the RSS.
static STORE_ERRORS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
/// The `kind` label of each slot of [`STORE_ERRORS`].
const STORE_ERROR_KINDS: [&str; 3] = ["backend", "io", "config"];

/// Counts one failed store request (a backend or I/O failure, not an
/// expected answer such as "not found" or "already exists").
pub(crate) fn store_error(e: &custody_store::StoreError) {
    use custody_store::StoreError as S;
    let slot = match e {
        S::Backend { .. } => 0,
        S::Io { .. } => 1,
        S::Config(_) => 2,
        _ => return,
    };
    STORE_ERRORS[slot].fetch_add(1, Ordering::Relaxed);
}

/// The audit writer's figures, shared between the writer task and the
/// registry (each metric is a handle to one shared value).
#[derive(Clone, Debug)]
pub(crate) struct AuditStats {
    /// Seconds per batch write (object and head).
    pub(crate) flush_seconds: Histogram,
    /// Batch writes that failed (the batch is retried).
    pub(crate) flush_failures: Counter,
    /// Unix time of the last successful batch write.
    pub(crate) last_flush: Gauge,
    /// Whether the last batch write failed (records are waiting for the
    /// store): reads are then refused rather than served unaudited.
    pub(crate) failing: Arc<AtomicBool>,
}

impl Default for AuditStats {
    fn default() -> Self {
        AuditStats {
            flush_seconds: latency(),
            flush_failures: Counter::default(),
            last_flush: Gauge::default(),
            failing: Arc::default(),
        }
    }
}

impl AuditStats {
    /// Records one batch write that took `elapsed` and succeeded or not.
    pub(crate) fn flushed(&self, started: Instant, ok: bool, now_unix: i64) {
        self.failing.store(!ok, Ordering::Relaxed);
        if ok {
            self.flush_seconds.observe(started.elapsed().as_secs_f64());
            self.last_flush.set(now_unix);
        } else {
            self.flush_failures.inc();
        }
    }
}

/// The group commit's figures, shared between the commit thread and the
/// registry.
#[derive(Clone, Debug)]
pub(crate) struct CommitStats {
    /// Seconds per round (links, directory syncs, journal, synced index batch).
    pub(crate) round_seconds: Histogram,
    /// Segments per round.
    pub(crate) round_segments: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            round_seconds: latency(),
            round_segments: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        }
    }
}

/// A node's metrics. Cheap to clone; clones share everything.
#[derive(Clone)]
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// One scrape at a time: the gauges are set, then encoded.
    scrape: Mutex<()>,
    ingest_segments: Family<ByListener, Counter>,
    ingest_bytes: Family<ByListener, Counter>,
    ingest_duplicates: Family<ByListener, Counter>,
    ingest_failures: Family<ByCode, Counter>,
    ingest_seconds: HistogramFamily<ByListener>,
    read_seconds: HistogramFamily<ByListener>,
    refusals: Family<ByReason, Counter>,
    store_errors: Family<ByKind, Counter>,
    catalog_segments: Gauge,
    catalog_bytes: Gauge,
    catalog_cameras: Gauge,
    holds_active: Gauge,
    sweeps: Family<ByOutcome, Counter>,
    sweep_deleted: Counter,
    sweep_kept_by_hold: Gauge,
    sweep_lag: Gauge<f64, AtomicU64>,
    sweep_last_run: Gauge,
    audit_queue: Gauge,
    disk_free: Family<ByDir, Gauge>,
    rss: Gauge,
    certificate_not_after: Family<ByListener, Gauge>,
    /// `as_of` (unix seconds) of the last sweep that went through the whole
    /// expiry list: everything unheld that expired before it is gone.
    swept_through: AtomicI64,
    /// When this node started (unix seconds): the lag before the first sweep.
    started: i64,
}

impl Metrics {
    /// The registry of a node opened with `config`, whose audit writer
    /// reports into `audit`.
    pub(crate) fn new(
        config: &ServerConfig,
        audit: &AuditStats,
        commit: &CommitStats,
        now_unix: i64,
    ) -> Metrics {
        let mut r = Registry::default();
        let hist = || HistogramFamily::new_with_constructor(latency as fn() -> Histogram);
        let inner = Inner {
            registry: Registry::default(),
            scrape: Mutex::new(()),
            ingest_segments: Family::default(),
            ingest_bytes: Family::default(),
            ingest_duplicates: Family::default(),
            ingest_failures: Family::default(),
            ingest_seconds: hist(),
            read_seconds: hist(),
            refusals: Family::default(),
            store_errors: Family::default(),
            catalog_segments: Gauge::default(),
            catalog_bytes: Gauge::default(),
            catalog_cameras: Gauge::default(),
            holds_active: Gauge::default(),
            sweeps: Family::default(),
            sweep_deleted: Counter::default(),
            sweep_kept_by_hold: Gauge::default(),
            sweep_lag: Gauge::default(),
            sweep_last_run: Gauge::default(),
            audit_queue: Gauge::default(),
            disk_free: Family::default(),
            rss: Gauge::default(),
            certificate_not_after: Family::default(),
            swept_through: AtomicI64::new(0),
            started: now_unix,
        };
        let i = &inner;
        r.register(
            "custody_ingest_segments",
            "Segments stored by ingest (duplicates not included), per listener",
            i.ingest_segments.clone(),
        );
        r.register(
            "custody_ingest_bytes",
            "Plaintext bytes of the segments stored by ingest, per listener",
            i.ingest_bytes.clone(),
        );
        r.register(
            "custody_ingest_duplicates",
            "Uploads answered as retries of a segment already stored, per listener",
            i.ingest_duplicates.clone(),
        );
        r.register(
            "custody_ingest_failures",
            "Uploads that failed, per listener and gRPC status code",
            i.ingest_failures.clone(),
        );
        r.register(
            "custody_ingest_duration_seconds",
            "Time from the start of an upload to its acknowledgement (durable), per listener",
            i.ingest_seconds.clone(),
        );
        r.register(
            "custody_read_duration_seconds",
            "Time from a ReadSegment request to its last byte sent, per listener",
            i.read_seconds.clone(),
        );
        r.register(
            "custody_refusals",
            "Refused requests and TLS handshakes, per listener and reason",
            i.refusals.clone(),
        );
        r.register(
            "custody_store_errors",
            "Failed object store requests since the process started, by kind",
            i.store_errors.clone(),
        );
        r.register(
            "custody_catalog_segments",
            "Segments in the index",
            i.catalog_segments.clone(),
        );
        r.register(
            "custody_catalog_bytes",
            "Plaintext bytes of the segments in the index",
            i.catalog_bytes.clone(),
        );
        r.register(
            "custody_catalog_cameras",
            "Cameras with footage in the index",
            i.catalog_cameras.clone(),
        );
        r.register(
            "custody_holds_active",
            "Legal holds placed and not released",
            i.holds_active.clone(),
        );
        r.register(
            "custody_sweeps",
            "Sweeps finished, by outcome (complete, fenced: stopped by a stale hold view, failed)",
            i.sweeps.clone(),
        );
        r.register(
            "custody_sweep_deleted_segments",
            "Expired segments the sweeper deleted",
            i.sweep_deleted.clone(),
        );
        r.register(
            "custody_sweep_kept_by_hold_segments",
            "Expired segments the last complete sweep kept because a hold covers them",
            i.sweep_kept_by_hold.clone(),
        );
        r.register(
            "custody_sweep_lag_seconds",
            "How far the sweeper is behind the expiry list: every unheld segment that expired \
             more than this long ago is deleted (now minus the as-of time of the last complete sweep)",
            i.sweep_lag.clone(),
        );
        r.register(
            "custody_sweep_last_run_timestamp_seconds",
            "Unix time at which the last sweep (of any outcome) finished",
            i.sweep_last_run.clone(),
        );
        let interval = Gauge::<i64, AtomicI64>::default();
        interval.set(config.retention.sweep_interval_secs as i64);
        r.register(
            "custody_sweep_interval_seconds",
            "[retention] sweep_interval_secs",
            interval,
        );
        let fence = Gauge::<i64, AtomicI64>::default();
        fence.set(config.retention.hold_fence_secs as i64);
        r.register(
            "custody_hold_fence_seconds",
            "[retention] hold_fence_secs",
            fence,
        );
        let enabled = Gauge::<i64, AtomicI64>::default();
        enabled.set(i64::from(config.retention.sweeper_enabled));
        r.register(
            "custody_sweeper_enabled",
            "1 when the sweeper runs ([retention] sweeper_enabled)",
            enabled,
        );
        r.register(
            "custody_disk_free_bytes",
            "Bytes free on the file system of the catalog (dir=catalog) and of a local store (dir=objects)",
            i.disk_free.clone(),
        );
        let reserve = Gauge::<i64, AtomicI64>::default();
        reserve.set(i64::try_from(config.limits.min_free_bytes).unwrap_or(i64::MAX));
        r.register(
            "custody_disk_reserve_bytes",
            "Bytes kept free for the audit log, holds and retention ([limits] min_free_bytes): \
             uploads are refused below it",
            reserve,
        );
        r.register(
            "custody_audit_queue_depth",
            "Requests waiting for the audit writer",
            i.audit_queue.clone(),
        );
        r.register(
            "custody_commit_round_duration_seconds",
            "Time of one group-commit round: linking its objects, syncing their directories, \
             journaling and the synced index batch (every upload of the round waits for it)",
            commit.round_seconds.clone(),
        );
        r.register(
            "custody_commit_round_segments",
            "Segments acknowledged together by one group-commit round",
            commit.round_segments.clone(),
        );
        r.register(
            "custody_audit_flush_duration_seconds",
            "Time to write one audit batch and its head to the store",
            audit.flush_seconds.clone(),
        );
        r.register(
            "custody_audit_flush_failures",
            "Audit batch writes that failed (the records are retried)",
            audit.flush_failures.clone(),
        );
        r.register(
            "custody_audit_last_flush_timestamp_seconds",
            "Unix time of the last successful audit batch write",
            audit.last_flush.clone(),
        );
        r.register(
            "custody_listener_certificate_not_after_timestamp_seconds",
            "Unix time at which the listener's TLS certificate expires",
            i.certificate_not_after.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            i.rss.clone(),
        );
        let mut inner = inner;
        inner.registry = r;
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// One upload on `listener` that started at `started` ended with
    /// `result`: (plaintext bytes, duplicate) or the status it failed with.
    pub(crate) fn ingested(
        &self,
        listener: &str,
        started: Instant,
        result: Result<(u64, bool), tonic::Code>,
    ) {
        let i = &self.inner;
        let l = ByListener {
            listener: listener.to_string(),
        };
        match result {
            Ok((_, true)) => {
                i.ingest_duplicates.get_or_create(&l).inc();
            }
            Ok((bytes, false)) => {
                i.ingest_segments.get_or_create(&l).inc();
                i.ingest_bytes.get_or_create(&l).inc_by(bytes);
                i.ingest_seconds
                    .get_or_create(&l)
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(code) => {
                i.ingest_failures
                    .get_or_create(&ByCode {
                        listener: listener.to_string(),
                        code: format!("{code:?}"),
                    })
                    .inc();
            }
        }
    }

    /// `stream` (a read's response) observed into the read latency of
    /// `listener` when it ends: from `started` to the last message.
    pub(crate) fn timed_read<T: Send + 'static>(
        &self,
        listener: &str,
        started: Instant,
        stream: Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>,
    ) -> Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>> {
        let hist = self.inner.read_seconds.get_or_create_owned(&ByListener {
            listener: listener.to_string(),
        });
        let done = futures::stream::once(async move {
            hist.observe(started.elapsed().as_secs_f64());
        })
        .filter_map(|()| async { None });
        Box::pin(stream.chain(done))
    }

    /// A sweep that started at `as_of_unix` finished at `now`: `Ok` with
    /// (expired segments kept by holds, stopped by the fence), or failed.
    pub(crate) fn swept(&self, as_of_unix: i64, result: Result<(u64, bool), ()>, now: i64) {
        let i = &self.inner;
        let outcome = match result {
            Ok((kept, fenced)) => {
                if fenced {
                    "fenced"
                } else {
                    i.sweep_kept_by_hold.set(kept as i64);
                    i.swept_through.fetch_max(as_of_unix, Ordering::Relaxed);
                    "complete"
                }
            }
            Err(()) => "failed",
        };
        i.sweeps
            .get_or_create(&ByOutcome {
                outcome: outcome.to_string(),
            })
            .inc();
        i.sweep_last_run.set(now);
    }

    /// Seconds at `now` since the as-of time of the last complete sweep (or
    /// since the node started, before one).
    fn sweep_lag(&self, now: i64) -> i64 {
        let through = match self.inner.swept_through.load(Ordering::Relaxed) {
            0 => self.inner.started,
            t => t,
        };
        (now - through).max(0)
    }

    /// A sweep batch deleted `deleted` segments.
    pub(crate) fn deleted(&self, deleted: usize) {
        self.inner.sweep_deleted.inc_by(deleted as u64);
    }

    /// A listener starts serving: its ingest and read series start at zero
    /// (so `increase()` sees the first event), and the expiry of its TLS
    /// certificate is exported (one that cannot be parsed is logged and left
    /// out).
    pub(crate) fn listener_started(&self, listener: &ListenerConfig) {
        let i = &self.inner;
        let l = ByListener {
            listener: listener.name.clone(),
        };
        if listener.services.contains(&crate::ServiceKind::Ingest) {
            drop(i.ingest_segments.get_or_create(&l));
            drop(i.ingest_bytes.get_or_create(&l));
            drop(i.ingest_duplicates.get_or_create(&l));
            drop(i.ingest_seconds.get_or_create(&l));
        }
        if listener.services.contains(&crate::ServiceKind::Archive) {
            drop(i.read_seconds.get_or_create(&l));
        }
        let Some(tls) = &listener.tls else { return };
        match certificate_not_after(&tls.cert) {
            Ok(not_after) => {
                self.inner
                    .certificate_not_after
                    .get_or_create(&ByListener {
                        listener: listener.name.clone(),
                    })
                    .set(not_after);
            }
            Err(e) => {
                tracing::warn!(listener = listener.name, error = %e, "certificate expiry not exported")
            }
        }
    }
}

/// The expiry (unix seconds) of the first certificate in the PEM file at `path`.
fn certificate_not_after(path: &std::path::Path) -> Result<i64, ServerError> {
    let bad = |e: &dyn std::fmt::Display| {
        ServerError::FailedPrecondition(format!("certificate {}: {e}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| bad(&e))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(&e))?;
    let cert = pem.parse_x509().map_err(|e| bad(&e))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Resident memory of this process in bytes (`VmRSS` of `/proc/self/status`),
/// or `None` where there is no such file.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Brings a counter family up to `target` counts (sources that only grow).
fn catch_up<L: Clone + std::hash::Hash + Eq>(family: &Family<L, Counter>, label: &L, target: u64) {
    let c = family.get_or_create(label);
    let have = c.get();
    if target > have {
        c.inc_by(target - have);
    }
}

/// The node's metrics in the OpenMetrics text format, gauges read now.
pub(crate) async fn render(node: &Node) -> Result<String, ServerError> {
    let catalog = node.catalog.clone();
    let cameras =
        tokio::task::spawn_blocking(move || catalog.map_cameras(|c| (c.segments(), c.bytes())))
            .await
            .map_err(|e| ServerError::Internal(format!("metrics: {e}")))??;
    let holds = node.holds(false).await.len();
    let denials = node.denials.snapshot();
    let now = node.clock.now().to_parts().0;
    let m = &node.metrics.inner;
    let _one = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
    m.catalog_cameras.set(cameras.len() as i64);
    m.catalog_segments
        .set(cameras.iter().map(|c| c.0).sum::<u64>() as i64);
    m.catalog_bytes
        .set(cameras.iter().map(|c| c.1).sum::<u64>() as i64);
    m.holds_active.set(holds as i64);
    for ((listener, reason), n) in denials {
        catch_up(&m.refusals, &ByReason { listener, reason }, n);
    }
    for (slot, kind) in STORE_ERROR_KINDS.iter().enumerate() {
        let n = STORE_ERRORS[slot].load(Ordering::Relaxed);
        catch_up(
            &m.store_errors,
            &ByKind {
                kind: (*kind).to_string(),
            },
            n,
        );
    }
    m.sweep_lag.set(node.metrics.sweep_lag(now) as f64);
    m.audit_queue.set(node.audit.queue_depth() as i64);
    for (dir, path) in node.data_dirs() {
        if let Some(free) = crate::node::free_bytes(path) {
            m.disk_free
                .get_or_create(&ByDir {
                    dir: dir.to_string(),
                })
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
    }
    if let Some(rss) = resident_bytes() {
        m.rss.set(rss);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry)
        .map_err(|e| ServerError::Internal(format!("metrics encoding: {e}")))?;
    Ok(out)
}

/// Adds `GET /metrics` for `node` to a listener's routes.
pub(crate) fn add_route(routes: &mut tonic::service::Routes, node: Node) {
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.route(
        METRICS_PATH,
        axum::routing::get(move || {
            let node = node.clone();
            async move { scrape(&node).await }
        }),
    );
}

async fn scrape(node: &Node) -> http::Response<axum::body::Body> {
    let (status, content_type, body) = match render(node).await {
        Ok(text) => (http::StatusCode::OK, CONTENT_TYPE, text),
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            )
        }
    };
    let mut resp = http::Response::new(axum::body::Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_counted_by_kind_and_expected_answers_are_not() {
        let before: Vec<u64> = STORE_ERRORS
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        store_error(&custody_store::StoreError::NotFound { key: "k".into() });
        store_error(&custody_store::StoreError::Config("bad".into()));
        store_error(&custody_store::StoreError::Io {
            path: "p".into(),
            source: std::io::Error::other("disk"),
        });
        let after: Vec<u64> = STORE_ERRORS
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        // Other tests of this process may count too: at least ours.
        assert!(after[1] > before[1] && after[2] > before[2]);
    }

    #[test]
    fn only_complete_sweeps_move_the_lag_forward() {
        let m = Metrics::new(
            &ServerConfig::default(),
            &AuditStats::default(),
            &CommitStats::default(),
            1000,
        );
        assert_eq!(m.sweep_lag(1100), 100, "before any sweep: since the start");
        m.swept(1500, Ok((3, false)), 1600);
        assert_eq!(m.sweep_lag(1700), 200);
        m.swept(1800, Ok((0, true)), 1900); // stopped at the hold fence
        m.swept(2000, Err(()), 2100);
        assert_eq!(m.sweep_lag(2200), 700);
        assert_eq!(m.inner.sweep_kept_by_hold.get(), 3);
        let runs = |o: &str| {
            m.inner
                .sweeps
                .get_or_create(&ByOutcome {
                    outcome: o.to_string(),
                })
                .get()
        };
        assert_eq!(
            (runs("complete"), runs("fenced"), runs("failed")),
            (1, 1, 1)
        );
    }

    #[test]
    fn resident_memory_is_read() {
        assert!(resident_bytes().is_some_and(|b| b > 1024 * 1024));
    }
}
