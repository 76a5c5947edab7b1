//! `custody-bench`: prints tables of
//! - `ingest` (default): ingest throughput through gRPC next to raw fsync'd
//!   file writes of the same bytes on the same disk;
//! - `sweep`: sweeper deletions per second over a large expired catalog with
//!   many active holds;
//! - `query`: ListSegments and ListCameras latency (p50/p99, 1 and 16
//!   callers) over a catalog of millions of segments;
//! - `playback`: HLS segment GETs next to ReadSegment (first byte of a 6 s
//!   segment, MB/s of a large one) and custodyd's RSS with 50 players;
//! - `cluster`: the city scenario, cameras through three custodyd nodes on
//!   a SeaweedFS bucket with one node SIGKILLed (ack latency, listing lag,
//!   failover gap, every acknowledged segment checked on the survivors);
//! - `report`: compliance report speed over a large catalogued store (segments/s
//!   in header mode, MB/s in deep mode) next to raw reads of the same files on
//!   the same disk.
//!
//! `source scripts/env.sh && cargo build --workspace --all-targets &&
//! $CUSTODY_BIN_DIR/custody-bench [ingest|query|sweep|report|playback|cluster] [--help]`

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use custody_cli::client::{Client, Upload};
use custody_core::{TimeRange, Timestamp};
use custody_server::{grpc, Node, ServerConfig};
use rand::RngCore;

#[path = "custody-bench/cluster.rs"]
mod cluster;
#[path = "custody-bench/playback.rs"]
mod playback;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Bench>,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// Ingest through gRPC vs raw fsync'd writes.
    Ingest(Args),
    /// Sweeper deletions with many holds.
    Sweep(SweepArgs),
    /// Compliance report scan speed vs raw reads.
    Report(ReportArgs),
    /// Query latency over a large catalog (ListSegments, ListCameras).
    Query(QueryArgs),
    /// HLS playback vs ReadSegment: first byte, MB/s, RSS with many players.
    Playback(playback::PlaybackArgs),
    /// City scenario: cameras through a 3-node cluster on SeaweedFS, one node killed.
    Cluster(cluster::ClusterArgs),
    /// The uploading side of one ingest scenario, in its own process
    /// (started by `ingest`; prints its results for it).
    #[command(hide = true)]
    IngestClient(ClientArgs),
}

/// Where the ingest benchmark's uploads come from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientMode {
    /// A child process (`custody-bench ingest-client`) over loopback: the
    /// node's process does only the node's work.
    Process,
    /// Tasks in the node's own process.
    InProcess,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Server address (`http://127.0.0.1:port`).
    #[arg(long)]
    addr: String,
    /// Bytes per segment.
    #[arg(long)]
    size: usize,
    /// Segments to upload.
    #[arg(long)]
    count: u64,
    /// Uploads in flight.
    #[arg(long)]
    flight: usize,
    /// Camera id.
    #[arg(long)]
    camera: String,
    /// HTTP/2 connections the uploads are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Scratch directory (on the disk to measure); removed afterwards.
    #[arg(long, default_value = "target/bench-scratch-report")]
    dir: PathBuf,
    /// Small segments (1 KiB each) for the header-mode scan.
    #[arg(long, default_value_t = 1_000_000)]
    segments: u64,
    /// Cameras they are spread over.
    #[arg(long, default_value_t = 1_000)]
    cameras: u64,
    /// Bytes of 3 MB segments for the deep-mode scan.
    #[arg(long, default_value_t = 1_000_000_000)]
    deep_bytes: u64,
    /// Objects read at once (the report's `scan_concurrency`, and the raw readers).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(clap::Args)]
struct SweepArgs {
    /// Scratch directory for the catalog (objects are held in memory://).
    #[arg(long, default_value = "target/bench-scratch-sweep")]
    dir: PathBuf,
    /// Expired segments in the catalog.
    #[arg(long, default_value_t = 1_000_000)]
    segments: u64,
    /// Active holds.
    #[arg(long, default_value_t = 10_000)]
    holds: u64,
    /// Cameras the segments are spread over.
    #[arg(long, default_value_t = 4_000)]
    cameras: u64,
    /// Store to delete from: `memory://` measures the sweeper's own cost;
    /// an `s3://bucket/prefix` (with --s3-endpoint) measures it against a
    /// real engine (credentials from AWS_* variables).
    #[arg(long, default_value = "memory://")]
    store: String,
    /// S3 endpoint for an s3:// store (plain http allowed).
    #[arg(long, default_value = "")]
    s3_endpoint: String,
}

#[derive(Parser)]
struct Args {
    /// Scratch directory (on the disk to measure; needs about rounds x 3.5 GB
    /// with the defaults: what the node stores and the raw writers' files
    /// stay until the end, so no scenario pays for an earlier one's
    /// deletions); removed afterwards.
    #[arg(long, default_value = "target/bench-scratch")]
    dir: PathBuf,
    /// Total bytes per scenario.
    #[arg(long, default_value_t = 192 * 1024 * 1024)]
    bytes: u64,
    /// Uploads in flight, one scenario each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16, 64])]
    in_flight: Vec<usize>,
    /// Skip the city scenario.
    #[arg(long)]
    no_city: bool,
    /// City scenario: bytes per segment.
    #[arg(long, default_value_t = 512 * 1024)]
    city_segment_bytes: usize,
    /// City scenario: how much faster than real time (a camera sends a
    /// segment every 6 s / this).
    #[arg(long, default_value_t = 10)]
    city_speedup: u32,
    /// Where the uploads of the throughput scenarios run (the city
    /// scenario always runs in-process).
    #[arg(long, value_enum, default_value_t = ClientMode::Process)]
    client: ClientMode,
    /// With `--client process`: one HTTP/2 connection per upload in flight
    /// (as separate recorders would open) instead of one shared connection.
    #[arg(long)]
    connection_per_upload: bool,
    /// Rounds per scenario: gRPC and raw writes alternate this many times
    /// and the table gives medians (this VM's disk varies 2-3x between
    /// back-to-back runs; a ratio from one pair is noise).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// Scratch directory; removed afterwards.
    #[arg(long, default_value = "target/bench-query")]
    dir: PathBuf,
    /// Segments in the catalog (built through the catalog API).
    #[arg(long, default_value_t = 10_000_000)]
    segments: u64,
    /// Cameras they are spread over.
    #[arg(long, default_value_t = 4_000)]
    cameras: u64,
    /// Calls per measurement.
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
}

/// Latencies of one scenario, for percentiles.
#[derive(Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i.min(self.0.len() - 1)].as_secs_f64() * 1e3
    }
}

/// CPU time (user + system) this process has used so far, in seconds
/// (from /proc, in clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // utime and stime, fields 14 and 15 of proc_pid_stat(5), the 12th and
    // 13th after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set size of this process (the node runs in it), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Row {
    name: String,
    segments: u64,
    bytes: u64,
    elapsed: Duration,
    latencies: Latencies,
    /// CPU seconds of the uploading side, when it ran in its own process.
    client_cpu: Option<f64>,
}

impl Row {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
    fn sps(&self) -> f64 {
        self.segments as f64 / self.elapsed.as_secs_f64()
    }
}

/// Medians of several rounds of one scenario, latencies pooled.
struct Summary {
    mbps: f64,
    sps: f64,
    p50: f64,
    p99: f64,
}

impl Summary {
    fn of(rows: &mut [Row]) -> Summary {
        let mut pooled = Latencies::default();
        for r in rows.iter_mut() {
            pooled.0.append(&mut r.latencies.0);
        }
        Summary {
            mbps: median(&mut rows.iter().map(Row::mbps).collect::<Vec<_>>()),
            sps: median(&mut rows.iter().map(Row::sps).collect::<Vec<_>>()),
            p50: pooled.pct(0.5),
            p99: pooled.pct(0.99),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What one core does per second of the node's per-byte work (sealing with
/// AES-256-GCM and hashing with SHA-256, as an upload is stored) and of the
/// client's (SHA-256 alone), in MB/s: the ceiling the ingest figures are
/// read against.
fn crypto_floor() -> Result<(f64, f64)> {
    use custody_core::{CameraId, MediaType, SegmentId, StreamName};
    use custody_crypto::{Encryptor, Kek, KeyId, SegmentMeta};
    use sha2::{Digest, Sha256};

    let mut piece = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut piece);
    let pieces = 64;
    let camera = CameraId::parse("floor")?;
    let stream = StreamName::main();
    let start = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;
    let meta = SegmentMeta {
        segment_id: SegmentId::derive(&camera, &stream, start, 0),
        camera,
        stream,
        range: TimeRange::new(start, start.saturating_add_nanos(6_000_000_000))?,
        sequence: 0,
        media_type: MediaType::parse("video/mp2t")?,
        created: start,
    };
    let kek = Kek::new(KeyId::parse("floor")?, [7; 32]);
    let (mut enc, _) = Encryptor::new(&kek, &meta, custody_crypto::DEFAULT_CHUNK_SIZE)?;
    let mut out = Vec::with_capacity(piece.len() + 4096);
    let t = Instant::now();
    for _ in 0..pieces {
        out.clear();
        enc.update_into(&piece, &mut out);
    }
    let seal = (pieces * piece.len()) as f64 / 1e6 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut h = Sha256::new();
    for _ in 0..pieces {
        h.update(&piece);
    }
    std::hint::black_box(h.finalize());
    let hash = (pieces * piece.len()) as f64 / 1e6 / t.elapsed().as_secs_f64();
    Ok((seal, hash))
}

/// Uploads `count` segments of `size` random bytes, `concurrency` at a
/// time, spread over `clients` (connections) round-robin.
async fn grpc_ingest(
    clients: &[Client],
    size: usize,
    count: u64,
    concurrency: usize,
    camera: &str,
) -> Result<Row> {
    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = sem.clone().acquire_owned().await?;
        let client = clients[i as usize % clients.len()].clone();
        let data = payload.clone();
        let camera = camera.to_string();
        tasks.push(tokio::spawn(async move {
            let s = t0.saturating_add_nanos(i as i64 * 6_000_000_000);
            let u = Upload {
                camera,
                stream: "main".into(),
                range: TimeRange::new(s, s.saturating_add_nanos(6_000_000_000))?,
                media_type: "video/mp2t".into(),
                sequence: None,
            };
            let sent = Instant::now();
            let r = client.put_bytes(&u, data).await;
            let took = sent.elapsed();
            drop(permit);
            r.map(|_| took).map_err(anyhow::Error::from)
        }));
    }
    let mut latencies = Latencies::default();
    for t in tasks {
        latencies.0.push(t.await??);
    }
    Ok(Row {
        name: format!("gRPC ingest {}", human(size)),
        segments: count,
        bytes: count * size as u64,
        elapsed: started.elapsed(),
        latencies,
        client_cpu: None,
    })
}

/// `custody-bench ingest-client`: runs [`grpc_ingest`] against `addr` and
/// prints `elapsed_us cpu_us`, then one ack latency (µs) per line.
async fn ingest_client(a: ClientArgs) -> Result<()> {
    let clients = (0..a.connections.max(1))
        .map(|_| Client::new(&a.addr))
        .collect::<Result<Vec<_>, _>>()?;
    let cpu0 = cpu_secs();
    let row = grpc_ingest(&clients, a.size, a.count, a.flight, &a.camera).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {}",
        row.elapsed.as_micros(),
        ((cpu_secs() - cpu0) * 1e6) as u64
    )?;
    for l in &row.latencies.0 {
        writeln!(out, "{}", l.as_micros())?;
    }
    Ok(())
}

/// One scenario's uploads from a child `custody-bench ingest-client`
/// process over loopback.
fn grpc_ingest_process(
    addr: &str,
    size: usize,
    count: u64,
    flight: usize,
    camera: &str,
    connections: usize,
) -> Result<Row> {
    let exe = std::env::current_exe().context("locating custody-bench")?;
    let out = std::process::Command::new(exe)
        .args(["ingest-client", "--addr", addr, "--camera", camera])
        .args(["--size", &size.to_string(), "--count", &count.to_string()])
        .args(["--flight", &flight.to_string()])
        .args(["--connections", &connections.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running custody-bench ingest-client")?;
    anyhow::ensure!(
        out.status.success(),
        "custody-bench ingest-client failed: {}",
        out.status
    );
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let first = lines.next().context("ingest-client printed nothing")?;
    let (elapsed, cpu) = first
        .split_once(' ')
        .context("ingest-client: bad first line")?;
    let mut latencies = Latencies::default();
    for l in lines {
        latencies.0.push(Duration::from_micros(l.parse()?));
    }
    Ok(Row {
        name: format!("gRPC ingest {}", human(size)),
        segments: count,
        bytes: count * size as u64,
        elapsed: Duration::from_micros(elapsed.parse()?),
        latencies,
        client_cpu: Some(cpu.parse::<f64>()? / 1e6),
    })
}

/// `count` files of `size` bytes, each written and fsync'd, by `writers`
/// threads at once (the same parallelism as the uploads it is compared
/// with), then the directory fsync'd.
fn raw_writes(dir: &std::path::Path, size: usize, count: u64, writers: usize) -> Result<Row> {
    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    std::fs::create_dir_all(dir)?;
    let payload = std::sync::Arc::new(payload);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers.max(1))
        .map(|_| {
            let (dir, payload, next) = (dir.to_path_buf(), payload.clone(), next.clone());
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        return Ok(lat);
                    }
                    let t = Instant::now();
                    let mut f = std::fs::File::create(dir.join(format!("{i}.bin")))?;
                    f.write_all(&payload)?;
                    f.sync_all()?;
                    lat.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Latencies::default();
    for h in handles {
        let lat = h
            .join()
            .map_err(|_| anyhow::anyhow!("raw writer panicked"))??;
        latencies.0.extend(lat);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Row {
        name: format!("raw fsync'd writes {}", human(size)),
        segments: count,
        bytes: count * size as u64,
        elapsed: started.elapsed(),
        latencies,
        client_cpu: None,
    })
}

fn human(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.0} MB", n as f64 / 1e6)
    } else {
        format!("{} KiB", n >> 10)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Some(Bench::Sweep(a)) => sweep_bench(a).await,
        Some(Bench::Report(a)) => report_bench(a).await,
        Some(Bench::Ingest(a)) => ingest_bench(a).await,
        Some(Bench::Query(a)) => query_bench(a).await,
        Some(Bench::Playback(a)) => playback::playback_bench(a).await,
        Some(Bench::Cluster(a)) => cluster::cluster_bench(a).await,
        Some(Bench::IngestClient(a)) => ingest_client(a).await,
        None => ingest_bench(Args::parse_from(["ingest"])).await,
    }
}

async fn query_bench(a: QueryArgs) -> Result<()> {
    use custody_catalog::Catalog;
    use custody_core::{CameraId, SegmentId, StreamName};
    use custody_proto::v1 as pb;
    use rand::Rng;

    let _ = std::fs::remove_dir_all(&a.dir);
    let config = ServerConfig {
        data_dir: a.dir.join("node"),
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;
    let per_camera = a.segments.div_ceil(a.cameras.max(1));
    let cameras: Vec<CameraId> = (0..a.cameras)
        .map(|i| CameraId::parse(&format!("cam-{i:05}")))
        .collect::<Result<_, _>>()?;
    let built = Instant::now();
    {
        let catalog = Catalog::open(&config.catalog_dir())?;
        let stream = StreamName::main();
        let mut batch = Vec::with_capacity(20_000);
        let mut n = 0u64;
        'outer: for camera in &cameras {
            for j in 0..per_camera {
                if n == a.segments {
                    break 'outer;
                }
                let start = t0.saturating_add_nanos(j as i64 * 6_000_000_000);
                let range = TimeRange::new(start, start.saturating_add_nanos(6_000_000_000))?;
                let id = SegmentId::derive(camera, &stream, start, 0);
                let key = format!("segments/{camera}/main/x/{id}.cseg");
                batch.push(synthetic_record(camera, range, 3_000_000, key, None)?);
                n += 1;
                if batch.len() == batch.capacity() {
                    catalog.put_segments(&batch)?;
                    batch.clear();
                }
            }
        }
        catalog.put_segments(&batch)?;
    }
    let built = built.elapsed();
    // The node refuses a catalog full of footage over a missing store
    // directory (a disk not mounted): this catalog has no objects by design.
    std::fs::create_dir_all(config.data_dir.join("objects"))?;
    let (client, (stop_tx, server)) = serve_node(&config).await?;
    println!(
        "Custody query benchmark: {} segments over {} cameras (catalog built in {:.1} s), {} calls per row",
        a.segments,
        a.cameras,
        built.as_secs_f64(),
        a.calls
    );
    println!(
        "{:<44} {:>8} {:>9} {:>9} {:>10} {:>9}",
        "call", "callers", "p50 ms", "p99 ms", "calls/s", "RSS MiB"
    );
    let span_nanos = (per_camera.saturating_sub(50) as i64).max(1) * 6_000_000_000;
    for callers in [1usize, 16] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let client = client.clone();
            let cameras = cameras.clone();
            let calls = a.calls / callers;
            tasks.push(tokio::spawn(async move {
                let mut archive = client.archive();
                let mut lat = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let (cam, offset) = {
                        let mut rng = rand::thread_rng();
                        (
                            rng.gen_range(0..cameras.len()),
                            rng.gen_range(0..span_nanos),
                        )
                    };
                    let from = t0.saturating_add_nanos(offset);
                    let to = from.saturating_add_nanos(300_000_000_000);
                    let t = Instant::now();
                    let page = archive
                        .list_segments(pb::ListSegmentsRequest {
                            camera_id: cameras[cam].to_string(),
                            start: Some(custody_server::grpc::to_proto_ts(from)),
                            end: Some(custody_server::grpc::to_proto_ts(to)),
                            ..Default::default()
                        })
                        .await?;
                    lat.push(t.elapsed());
                    anyhow::ensure!(
                        page.get_ref().segments.len() >= 49,
                        "a 5-minute window returned {} segments",
                        page.get_ref().segments.len()
                    );
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Latencies::default();
        for t in tasks {
            lat.0.extend(t.await??);
        }
        let rate = lat.0.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:<44} {:>8} {:>9.3} {:>9.3} {:>10.0} {:>9.0}",
            "ListSegments, one camera, 5-minute window",
            callers,
            lat.pct(0.5),
            lat.pct(0.99),
            rate,
            rss_mib()
        );
    }
    let mut archive = client.archive().max_decoding_message_size(64 << 20);
    let mut lat = Latencies::default();
    let started = Instant::now();
    for _ in 0..(a.calls / 10).max(10) {
        let t = Instant::now();
        let r = archive.list_cameras(pb::ListCamerasRequest {}).await?;
        lat.0.push(t.elapsed());
        anyhow::ensure!(
            r.get_ref().cameras.len() as u64 == a.cameras,
            "cameras missing"
        );
    }
    let rate = lat.0.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>8} {:>9.3} {:>9.3} {:>10.0} {:>9.0}",
        format!("ListCameras ({} cameras)", a.cameras),
        1,
        lat.pct(0.5),
        lat.pct(0.99),
        rate,
        rss_mib()
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&a.dir);
    Ok(())
}

async fn sweep_bench(a: SweepArgs) -> Result<()> {
    use custody_core::{
        CameraId, HoldCameras, ManualClock, Policy, PolicyScope, SegmentId, StreamName,
    };
    use custody_store::SegmentKey;

    let _ = std::fs::remove_dir_all(&a.dir);
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;
    let clock = ManualClock::new(t0);
    let mut config = ServerConfig {
        data_dir: a.dir.clone(),
        ..ServerConfig::default()
    };
    config.store.url = a.store.clone();
    config.store.s3_endpoint = a.s3_endpoint.clone();
    config.store.s3_allow_http = a.s3_endpoint.starts_with("http://");
    config.keys.env_var = String::new();
    config.retention.policy_grace_secs = 0;
    config.retention.hold_fence_secs = 3600;
    let node = Node::open_with_clock(&config, std::sync::Arc::new(clock.clone())).await?;
    let day = 86_400u64;
    node.set_policy(
        PolicyScope::Default,
        Policy {
            retain_for_secs: day,
            floor_secs: None,
            ceiling_secs: None,
            locked: false,
        },
        "bench",
    )
    .await?;

    // Segments: 6 s each, per camera consecutive, all ending before t0.
    let per_camera = a.segments.div_ceil(a.cameras);
    let cameras: Vec<CameraId> = (0..a.cameras)
        .map(|i| CameraId::parse(&format!("cam-{i:05}")))
        .collect::<Result<_, _>>()?;
    let base = t0.saturating_add_nanos(-((per_camera as i64 + 10) * 6_000_000_000));
    let populate = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let mut keys = Vec::with_capacity(10_000);
    let stream = StreamName::main();
    let mut n = 0u64;
    'outer: for j in 0..per_camera {
        for camera in &cameras {
            if n == a.segments {
                break 'outer;
            }
            let start = base.saturating_add_nanos(j as i64 * 6_000_000_000);
            let range = TimeRange::new(start, start.saturating_add_nanos(6_000_000_000))?;
            let id = SegmentId::derive(camera, &stream, start, 0);
            let key = SegmentKey {
                camera: camera.clone(),
                stream: stream.clone(),
                start: range.start(),
                sequence: 0,
                segment_id: id,
            }
            .path();
            keys.push(key.clone());
            let expires = range.end().saturating_add(Duration::from_secs(day));
            batch.push(synthetic_record(
                camera,
                range,
                1_000_000,
                key.to_string(),
                Some(expires),
            )?);
            n += 1;
            if batch.len() == 10_000 {
                put_stand_ins(node.store(), std::mem::take(&mut keys)).await?;
                node.catalog().put_segments(&batch)?;
                batch.clear();
            }
        }
    }
    put_stand_ins(node.store(), keys).await?;
    node.catalog().put_segments(&batch)?;
    let populated = populate.elapsed();

    // Holds: each on one camera, a 60 s window somewhere in its footage.
    let holds_started = Instant::now();
    for h in 0..a.holds {
        let camera = cameras[(h % a.cameras) as usize].clone();
        let slot = (h / a.cameras * 97 + h * 13) % per_camera.max(1);
        let start = base.saturating_add_nanos(slot as i64 * 6_000_000_000);
        node.create_hold(
            HoldCameras::List(vec![camera]),
            start,
            Some(start.saturating_add_nanos(60_000_000_000)),
            format!("CASE-{h}"),
            "benchmark".into(),
            "bench",
            false,
        )
        .await?;
    }
    let holds_took = holds_started.elapsed();

    clock.advance(Duration::from_secs(2 * day));
    let started = Instant::now();
    let report = node.sweep(false).await?;
    let took = started.elapsed();
    let deleted = report.deleted.len() as u64;
    println!(
        "Custody sweep benchmark: {} expired segments over {} cameras, {} active holds",
        n, a.cameras, a.holds
    );
    if a.store == "memory://" {
        println!("catalog {} (RocksDB, synced batches); objects in memory:// so the figure is the sweeper's own cost", a.dir.display());
    } else {
        println!(
            "catalog {} (RocksDB, synced batches); objects in {} ({}): deletions against the engine",
            a.dir.display(),
            a.store,
            a.s3_endpoint
        );
    }
    println!(
        "{:<34} {:>12}",
        "populate catalog",
        format!("{:.1} s", populated.as_secs_f64())
    );
    println!(
        "{:<34} {:>12}",
        "place holds (durable records)",
        format!("{:.1} s", holds_took.as_secs_f64())
    );
    println!("{:<34} {:>12}", "segments deleted", deleted);
    println!(
        "{:<34} {:>12}",
        "segments kept by holds", report.kept_by_hold
    );
    println!(
        "{:<34} {:>12}",
        "sweep time",
        format!("{:.1} s", took.as_secs_f64())
    );
    println!(
        "{:<34} {:>12.0}",
        "deletions per second",
        deleted as f64 / took.as_secs_f64()
    );
    println!(
        "{:<34} {:>12.0}",
        "segments examined per second",
        (deleted + report.kept_by_hold) as f64 / took.as_secs_f64()
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&a.dir);
    Ok(())
}

/// Writes a small stand-in object at each key, 32 at a time.
async fn put_stand_ins(
    store: &custody_store::Store,
    keys: Vec<custody_store::ObjectPath>,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(keys)
        .map(|key| async move {
            store
                .put_create_only(&key, b"encrypted bytes stand-in".to_vec().into())
                .await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// A catalog entry for a segment the benchmark did not really ingest
/// (sequence 0, stream `main`, a zero digest).
fn synthetic_record(
    camera: &custody_core::CameraId,
    range: TimeRange,
    size: u64,
    object_key: String,
    expires_at: Option<Timestamp>,
) -> Result<custody_catalog::SegmentRecord> {
    let stream = custody_core::StreamName::main();
    Ok(custody_catalog::SegmentRecord {
        segment_id: custody_core::SegmentId::derive(camera, &stream, range.start(), 0),
        camera: camera.clone(),
        stream,
        range,
        sequence: 0,
        media_type: custody_core::MediaType::parse("video/mp2t")?,
        size,
        stored_size: size + 100,
        sha256: [0; 32],
        key_id: "k1".into(),
        ingested_at: range.end(),
        object_key,
        expires_at,
    })
}

/// A stop switch and the task of a node serving gRPC in this process.
type Serving = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), custody_server::ServerError>>,
);

/// Opens the node of `config`, serves it on a loopback port in this
/// process, and returns a client of it with the means to stop it.
async fn serve_node(config: &ServerConfig) -> Result<(Client, Serving)> {
    let (client, _, serving) = serve_node_at(config).await?;
    Ok((client, serving))
}

/// [`serve_node`], also returning the address served.
async fn serve_node_at(config: &ServerConfig) -> Result<(Client, String, Serving)> {
    let node = Node::open(config).await.context("opening node")?;
    let listener = config
        .effective_listeners()
        .map_err(anyhow::Error::msg)?
        .remove(0);
    let bound = grpc::Serving::bind(listener).await?;
    let addr = format!("http://{}", bound.local_addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve(node, vec![bound], async {
        let _ = stop_rx.await;
    }));
    Ok((Client::new(&addr)?, addr, (stop_tx, server)))
}

async fn ingest_bench(args: Args) -> Result<()> {
    let _ = std::fs::remove_dir_all(&args.dir);
    let config = ServerConfig {
        data_dir: args.dir.join("node"),
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let (client, addr, (stop_tx, server)) = serve_node_at(&config).await?;

    println!(
        "Custody ingest benchmark ({} per scenario, dir {}, {} CPUs); latency is per upload (ack), \
         raw writers run at the same parallelism",
        human(args.bytes as usize),
        args.dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "uploads from {} over {}; node CPU = CPU seconds of the node's process during the scenario{}",
        match args.client {
            ClientMode::Process => "a child process (custody-bench ingest-client) over loopback",
            ClientMode::InProcess => "tasks in the node's process",
        },
        if args.connection_per_upload && args.client == ClientMode::Process {
            "one HTTP/2 connection per upload in flight"
        } else {
            "one HTTP/2 connection"
        },
        match args.client {
            ClientMode::Process => ", client CPU = the uploading process's",
            ClientMode::InProcess => " (client included)",
        }
    );
    let (seal, hash) = crypto_floor()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "per core: sealing + hashing (AES-256-GCM + SHA-256, the node's work per byte) {seal:.0} MB/s, \
         SHA-256 alone (the client's) {hash:.0} MB/s"
    );
    println!(
        "{} rounds per scenario, gRPC and raw alternating; MB/s, seg/s and CPU are medians, \
         vs raw is the median of the rounds' ratios (min-max), latencies are over all rounds",
        args.rounds.max(1)
    );
    println!(
        "CPU ms/seg = CPU of every process taking part (node and client, or the raw writers) per segment; \
         busy = that CPU over the scenario's wall time on all {cores} cores (near 100%: CPU-bound, not disk-bound)"
    );
    println!(
        "{:<26} {:>6} {:>8} {:>9} {:>9} {:>17} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>5}",
        "scenario",
        "flight",
        "segments",
        "MB/s",
        "seg/s",
        "vs raw",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "node CPU",
        "client CPU",
        "CPU ms/seg",
        "busy"
    );
    let mut cam_no = 0;
    let mut best_sps = Vec::new();
    for (size, label) in [(3_000_000usize, "3mb"), (128 * 1024, "128k")] {
        let mut best = 0f64;
        for &flight in &args.in_flight {
            let count = (args.bytes / size as u64).max(flight as u64);
            let mut grpc_rows = Vec::new();
            let mut raw_rows = Vec::new();
            let mut node_cpus = Vec::new();
            let mut raw_cpus = Vec::new();
            for round in 0..args.rounds.max(1) {
                cam_no += 1;
                let cam = format!("bench-{label}-{flight}-{cam_no}");
                let cpu0 = cpu_secs();
                let g = match args.client {
                    ClientMode::InProcess => {
                        grpc_ingest(std::slice::from_ref(&client), size, count, flight, &cam)
                            .await?
                    }
                    ClientMode::Process => {
                        let addr = addr.clone();
                        // Blocking wait off the runtime threads the node serves on.
                        tokio::task::spawn_blocking(move || {
                            let conns = if args.connection_per_upload {
                                flight
                            } else {
                                1
                            };
                            grpc_ingest_process(&addr, size, count, flight, &cam, conns)
                        })
                        .await??
                    }
                };
                node_cpus.push(cpu_secs() - cpu0);
                grpc_rows.push(g);
                // Raw files stay until the benchmark ends, like the
                // node's: a deletion between scenarios would make the next
                // one pay for it (thousands of just-freed inodes that ext4
                // without a journal skips one by one on the next
                // creations, its `recently_deleted` check; and with the
                // `discard` mount option, trims that stall fsyncs).
                let raw_dir = args.dir.join(format!("raw-{size}-{flight}-{round}"));
                let cpu0 = cpu_secs();
                raw_rows.push(raw_writes(&raw_dir, size, count, flight)?);
                raw_cpus.push(cpu_secs() - cpu0);
            }
            let rss = rss_mib();
            let ratios: Vec<f64> = grpc_rows
                .iter()
                .zip(&raw_rows)
                .map(|(g, r)| g.mbps() / r.mbps())
                .collect();
            // CPU per segment and share of the machine, per round.
            let use_of = |rows: &[Row], cpus: &[f64]| {
                let (mut per_seg, mut busy): (Vec<f64>, Vec<f64>) = rows
                    .iter()
                    .zip(cpus)
                    .map(|(row, cpu)| {
                        let total = cpu + row.client_cpu.unwrap_or(0.0);
                        (
                            total * 1e3 / row.segments as f64,
                            total / (row.elapsed.as_secs_f64() * cores as f64),
                        )
                    })
                    .unzip();
                (median(&mut per_seg), median(&mut busy) * 100.0)
            };
            let (g_cpu, g_busy) = use_of(&grpc_rows, &node_cpus);
            let (r_cpu, r_busy) = use_of(&raw_rows, &raw_cpus);
            let g = Summary::of(&mut grpc_rows);
            let r = Summary::of(&mut raw_rows);
            best = best.max(g.sps);
            let mut client_cpus: Vec<f64> = grpc_rows.iter().filter_map(|g| g.client_cpu).collect();
            println!(
                "{:<26} {:>6} {:>8} {:>9.1} {:>9.1} {:>17} {:>9.2} {:>9.2} {:>9.0} {:>8.2}s {:>10} {:>10.3} {:>4.0}%",
                grpc_rows[0].name,
                flight,
                count,
                g.mbps,
                g.sps,
                format!(
                    "{:.2}x ({:.2}-{:.2})",
                    median(&mut ratios.clone()),
                    ratios.iter().cloned().fold(f64::INFINITY, f64::min),
                    ratios.iter().cloned().fold(0.0, f64::max)
                ),
                g.p50,
                g.p99,
                rss,
                median(&mut node_cpus),
                if client_cpus.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.2}s", median(&mut client_cpus))
                },
                g_cpu,
                g_busy
            );
            println!(
                "{:<26} {:>6} {:>8} {:>9.1} {:>9.1} {:>17} {:>9.2} {:>9.2} {:>9} {:>9} {:>10} {:>10.3} {:>4.0}%",
                raw_rows[0].name,
                flight,
                count,
                r.mbps,
                r.sps,
                "1.00x",
                r.p50,
                r.p99,
                "",
                "",
                "",
                r_cpu,
                r_busy
            );
            // What no ingest can avoid beyond a raw write: sealing and
            // hashing on the node, hashing on the client. With every core
            // busy on that alone, ingest could reach cores / floor
            // segments per second: the ratio to raw can be no higher.
            let floor = r_cpu + size as f64 / 1e3 * (1.0 / seal + 1.0 / hash);
            let ceiling = (cores as f64 * 1e3 / floor / r.sps).min(1.0);
            println!(
                "{:<26} {:>6} floor {floor:.3} CPU ms/seg (raw's + sealing and hashing + the client's hash): \
                 {:.0} seg/s on {cores} busy cores, at most {ceiling:.2}x raw",
                "  ceiling",
                flight,
                cores as f64 * 1e3 / floor,
            );
        }
        best_sps.push((size, best));
    }
    for (size, best) in best_sps {
        half_rate(&client, &args, size, best).await?;
    }
    if !args.no_city {
        city(&client, &args).await?;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

/// An open-loop load: upload `i` (of `count`, `size` bytes, camera
/// `i % cameras`) is due at `i / rate` seconds, whether or not earlier ones
/// were acknowledged, as cameras send. Latency counts from the due time, so
/// an upload that starts late because the node fell behind counts its wait.
/// Returns the latencies and the achieved rate.
async fn paced(
    client: &Client,
    prefix: &str,
    cameras: u64,
    size: usize,
    rate: f64,
    count: u64,
    t0: Timestamp,
) -> Result<(Latencies, f64)> {
    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    let payload = std::sync::Arc::new(payload);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, payload) = (client.clone(), payload.clone());
        let camera = format!("{prefix}-{}", i % cameras.max(1));
        // Each camera's segments follow each other in its own time line.
        let s = t0.saturating_add_nanos((i / cameras.max(1)) as i64 * 6_000_000_000);
        tasks.push(tokio::spawn(async move {
            let u = Upload {
                camera,
                stream: "main".into(),
                range: TimeRange::new(s, s.saturating_add_nanos(6_000_000_000))?,
                media_type: "video/mp2t".into(),
                sequence: None,
            };
            client.put_bytes(&u, payload.as_ref().clone()).await?;
            anyhow::Ok(due.elapsed())
        }));
    }
    let mut latencies = Latencies::default();
    for t in tasks {
        latencies.0.push(t.await??);
    }
    let achieved = count as f64 / started.elapsed().as_secs_f64();
    Ok((latencies, achieved))
}

/// The same open-loop schedule as [`paced`], as raw fsync'd file writes
/// (each on a blocking thread): what the disk alone gives at that rate.
async fn raw_paced(dir: &std::path::Path, size: usize, rate: f64, count: u64) -> Result<Latencies> {
    std::fs::create_dir_all(dir)?;
    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    let payload = std::sync::Arc::new(payload);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (path, payload) = (dir.join(format!("{i}.bin")), payload.clone());
        tasks.push(tokio::task::spawn_blocking(move || -> Result<Duration> {
            let mut f = std::fs::File::create(path)?;
            f.write_all(&payload)?;
            f.sync_all()?;
            Ok(due.elapsed())
        }));
    }
    let mut latencies = Latencies::default();
    for t in tasks {
        latencies.0.push(t.await??);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(latencies)
}

/// Ack latency at half the highest rate the throughput scenarios reached
/// for `size`, next to raw writes on the same schedule (the goal:
/// ack p99 < 20 ms at half the maximum rate).
async fn half_rate(client: &Client, args: &Args, size: usize, max_sps: f64) -> Result<()> {
    let rate = max_sps / 2.0;
    let count = ((rate * 5.0) as u64).max(50);
    let t0 = Timestamp::parse_rfc3339("2026-03-01T00:00:00Z")?;
    let prefix = format!("half-{size}");
    let (mut g, achieved) = paced(client, &prefix, 64, size, rate, count, t0).await?;
    let raw_dir = args.dir.join(format!("raw-half-{size}"));
    // Kept until the end, as the throughput scenarios' raw files are.
    let mut r = raw_paced(&raw_dir, size, rate, count).await?;
    println!(
        "half rate, {}: {:.0} seg/s offered ({:.0} achieved, {count} uploads from 64 cameras, open loop): \
         ack p50 {:.2} / p99 {:.2} ms; raw fsync'd writes on the same schedule p50 {:.2} / p99 {:.2} ms; RSS {:.0} MiB",
        human(size),
        rate,
        achieved,
        g.pct(0.5),
        g.pct(0.99),
        r.pct(0.5),
        r.pct(0.99),
        rss_mib()
    );
    Ok(())
}

/// The city scenario: `n` cameras each send a segment every 6 s (compressed
/// by `city_speedup`), for a few rounds; `n` doubles until ack p99 passes
/// 20 ms or the node falls behind. Prints the largest `n` that held, and
/// raw fsync'd writes on the same schedule next to each step.
async fn city(client: &Client, args: &Args) -> Result<()> {
    let period = Duration::from_secs(6) / args.city_speedup.max(1);
    let rounds = 5u64;
    println!(
        "city: each camera sends {} every {:?} (6 s / {}), {rounds} rounds, open loop",
        human(args.city_segment_bytes),
        period,
        args.city_speedup
    );
    println!(
        "{:>8} {:>14} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9}",
        "cameras",
        "real-time eq.",
        "seg/s",
        "p50 ms",
        "p99 ms",
        "raw p50 ms",
        "raw p99 ms",
        "RSS MiB"
    );
    let mut best = 0u64;
    let mut n = 8u64;
    let mut generation = 0i64;
    loop {
        generation += 1;
        let rate = n as f64 / period.as_secs_f64();
        let t0 = Timestamp::parse_rfc3339("2026-02-01T00:00:00Z")?
            .saturating_add_nanos(generation * 1000 * 6_000_000_000);
        let (mut g, achieved) = paced(
            client,
            &format!("city{generation}"),
            n,
            args.city_segment_bytes,
            rate,
            n * rounds,
            t0,
        )
        .await?;
        let raw_dir = args.dir.join(format!("raw-city-{n}"));
        let mut r = raw_paced(&raw_dir, args.city_segment_bytes, rate, n * rounds).await?;
        let (p50, p99) = (g.pct(0.5), g.pct(0.99));
        println!(
            "{:>8} {:>14} {:>9.1} {:>9.2} {:>9.2} {:>11.2} {:>11.2} {:>9.0}",
            n,
            n * u64::from(args.city_speedup),
            achieved,
            p50,
            p99,
            r.pct(0.5),
            r.pct(0.99),
            rss_mib()
        );
        if p99 >= 20.0 {
            break;
        }
        best = n;
        n *= 2;
        if n > 100_000 {
            break;
        }
    }
    println!(
        "city: one node sustains {best} cameras at {}x real time with ack p99 < 20 ms \
         (= {} cameras sending a {} segment every 6 s)",
        args.city_speedup,
        best * u64::from(args.city_speedup),
        human(args.city_segment_bytes)
    );
    Ok(())
}

/// Writes `count` encrypted segments of `size` plaintext bytes for `camera`
/// straight into the store directory (no fsync: this measures reads) and
/// indexes them. Returns the object paths.
#[allow(clippy::too_many_arguments)]
fn populate(
    node: &Node,
    kek: &custody_crypto::Kek,
    root: &std::path::Path,
    cameras: &[custody_core::CameraId],
    count: u64,
    size: usize,
    t0: Timestamp,
) -> Result<Vec<PathBuf>> {
    use custody_catalog::SegmentRecord;
    use custody_core::{MediaType, SegmentId, StreamName};
    use custody_crypto::{Encryptor, SegmentMeta};
    use custody_store::SegmentKey;
    use sha2::{Digest, Sha256};

    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    let sha: [u8; 32] = Sha256::digest(&payload).into();
    let stream = StreamName::main();
    let mut batch = Vec::with_capacity(10_000);
    let mut paths = Vec::with_capacity(count as usize);
    let per_camera = count.div_ceil(cameras.len() as u64);
    let mut made_dirs = std::collections::HashSet::new();
    for i in 0..count {
        let camera = &cameras[(i / per_camera) as usize];
        let j = (i % per_camera) as i64;
        let start = t0.saturating_add_nanos(j * 6_000_000_000);
        let range = TimeRange::new(start, start.saturating_add_nanos(6_000_000_000))?;
        let id = SegmentId::derive(camera, &stream, start, 0);
        let meta = SegmentMeta {
            camera: camera.clone(),
            stream: stream.clone(),
            range,
            segment_id: id,
            sequence: 0,
            media_type: MediaType::parse("video/mp2t")?,
            created: range.end(),
        };
        let (mut enc, mut bytes) = Encryptor::new(kek, &meta, custody_crypto::DEFAULT_CHUNK_SIZE)?;
        bytes.extend(enc.update(&payload));
        bytes.extend(enc.finish().0);
        let key = SegmentKey {
            camera: camera.clone(),
            stream: stream.clone(),
            start: range.start(),
            sequence: 0,
            segment_id: id,
        }
        .path();
        let path = root.join(key.as_ref());
        let dir = path.parent().context("object dir")?.to_path_buf();
        if made_dirs.insert(dir.clone()) {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(&path, &bytes)?;
        paths.push(path);
        batch.push(SegmentRecord {
            segment_id: id,
            camera: camera.clone(),
            stream: stream.clone(),
            range,
            sequence: 0,
            media_type: MediaType::parse("video/mp2t")?,
            size: size as u64,
            stored_size: bytes.len() as u64,
            sha256: sha,
            key_id: kek.id().to_string(),
            ingested_at: range.end(),
            object_key: key.to_string(),
            expires_at: None,
        });
        if batch.len() == 10_000 {
            node.catalog().put_segments(&batch)?;
            batch.clear();
        }
    }
    node.catalog().put_segments(&batch)?;
    Ok(paths)
}

/// Reads `len` bytes (0: all) of every file with `threads` threads: (files, bytes).
fn raw_reads(paths: &[PathBuf], len: usize, threads: usize) -> Result<(u64, u64)> {
    use std::io::Read;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            handles.push(s.spawn(|| -> Result<()> {
                let mut buf = vec![0u8; if len == 0 { 1 << 20 } else { len }];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { return Ok(()) };
                    let mut f = std::fs::File::open(p)?;
                    let mut n = 0u64;
                    loop {
                        let k = f.read(&mut buf)?;
                        n += k as u64;
                        if k == 0 || len != 0 {
                            break;
                        }
                    }
                    bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok((paths.len() as u64, bytes.into_inner()))
}

async fn report_bench(a: ReportArgs) -> Result<()> {
    use custody_core::CameraId;

    let _ = std::fs::remove_dir_all(&a.dir);
    let mut config = ServerConfig {
        data_dir: a.dir.clone(),
        ..ServerConfig::default()
    };
    config.keys.env_var = String::new();
    config.compliance.scan_concurrency = a.concurrency;
    let node = Node::open(&config).await?;
    let keyring = custody_server::load_keyring(&config)?;
    let root = a.dir.join("objects");
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;

    let small_cams: Vec<CameraId> = (0..a.cameras)
        .map(|i| CameraId::parse(&format!("cam-{i:05}")))
        .collect::<Result<_, _>>()?;
    let big_cams = vec![CameraId::parse("deep-cam")?];
    let populate_started = Instant::now();
    let small = populate(
        &node,
        keyring.active(),
        &root,
        &small_cams,
        a.segments,
        1024,
        t0,
    )?;
    let big_size = 3_000_000usize;
    let big_count = (a.deep_bytes / big_size as u64).max(1);
    let big = populate(
        &node,
        keyring.active(),
        &root,
        &big_cams,
        big_count,
        big_size,
        t0,
    )?;
    let populated = populate_started.elapsed();
    let no_progress = |_: custody_server::ScanProgress| {};

    // The listing alone, which every report starts with.
    let started = Instant::now();
    let mut listed = 0u64;
    let mut list = node.store().list(&custody_store::layout::segments_prefix());
    while let Some(o) = futures::StreamExt::next(&mut list).await {
        o?;
        listed += 1;
    }
    let list_took = started.elapsed();

    // Header mode over everything (the deep camera's headers too).
    let started = Instant::now();
    let header = node
        .compliance_report(&[], None, false, &no_progress)
        .await?;
    let header_took = started.elapsed();
    anyhow::ensure!(header.violations.is_empty(), "unexpected violations");
    let started = Instant::now();
    let (raw_n, _) = raw_reads(&small, 1024, a.concurrency)?;
    let raw_header_took = started.elapsed();

    // Deep mode over the 3 MB segments.
    let started = Instant::now();
    let deep = node
        .compliance_report(&big_cams, None, true, &no_progress)
        .await?;
    let deep_took = started.elapsed();
    anyhow::ensure!(deep.violations.is_empty(), "unexpected violations");
    let started = Instant::now();
    let (_, raw_bytes) = raw_reads(&big, 0, a.concurrency)?;
    let raw_deep_took = started.elapsed();

    println!(
        "Custody compliance report benchmark: {} catalogued segments ({} x 1 KiB over {} cameras + {} x 3 MB), dir {}, concurrency {}",
        header.objects_scanned,
        a.segments,
        a.cameras,
        big_count,
        a.dir.display(),
        a.concurrency
    );
    println!("populate (encrypt + write + index, no fsync): {:.1} s; files are in the page cache for every row", populated.as_secs_f64());
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>10}",
        "scenario", "objects", "time s", "segments/s", "MB/s"
    );
    let row = |name: &str, n: u64, bytes: u64, took: Duration| {
        println!(
            "{:<44} {:>10} {:>10.1} {:>12.0} {:>10.1}",
            name,
            n,
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64()
        );
    };
    row(
        "report, header mode (list + auth headers)",
        header.objects_scanned,
        header.bytes_read,
        header_took,
    );
    row(
        "store listing only (part of the above)",
        listed,
        0,
        list_took,
    );
    row(
        "raw: open + read 1 KiB of each small file",
        raw_n,
        raw_n * 1024,
        raw_header_took,
    );
    row(
        "report --deep (decrypt + digest, 3 MB)",
        deep.objects_scanned,
        deep.bytes_read,
        deep_took,
    );
    row(
        "raw: read each 3 MB file whole",
        big.len() as u64,
        raw_bytes,
        raw_deep_took,
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&a.dir);
    Ok(())
}
