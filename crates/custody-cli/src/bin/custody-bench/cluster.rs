//! `custody-bench cluster`: the "city scenario" of issue #13. Starts a real
//! multi-process SeaweedFS on loopback (`weed master`, two `weed volume`,
//! `weed filer`, `weed s3`, as in tests/e2e/seaweed.rs) and three `custodyd`
//! nodes on one bucket with a shared key file; simulated cameras upload a
//! small segment each interval through the three nodes (each camera has a
//! home node and fails over to the next on error); one node is killed with
//! SIGKILL midway. Afterwards every acknowledged segment must be listed and
//! readable, with its digest, on every surviving node: anything missing is
//! printed and the command fails. Prints ack latency before and after the
//! kill, the cross-node listing lag, the cameras' failover gap, the nodes'
//! RSS, and the achieved segment rate next to the offered one.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use custody_cli::client::{ts, Client, Upload};
use custody_core::{TimeRange, Timestamp};
use custody_proto::v1 as pb;
use futures::StreamExt;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The S3 identity the gateway is started with (loopback only).
const ACCESS_KEY: &str = "custody-bench";
const SECRET_KEY: &str = "custody-bench-secret";
const BUCKET: &str = "custody";
/// How long SeaweedFS and the nodes may take to come up.
const READY: Duration = Duration::from_secs(90);

/// `custody-bench cluster` arguments.
#[derive(clap::Args)]
pub(super) struct ClusterArgs {
    /// The custodyd binary (default: next to this one).
    #[arg(long)]
    custodyd: Option<PathBuf>,
    /// Simulated cameras, spread evenly over the three nodes.
    #[arg(long, default_value_t = 4000)]
    cameras: usize,
    /// Bytes per segment.
    #[arg(long, default_value_t = 50_000)]
    segment_bytes: usize,
    /// Milliseconds between two segments of one camera (6000 = real time;
    /// less compresses time, each segment still covers 6 s of media).
    #[arg(long, default_value_t = 6000)]
    interval_ms: u64,
    /// How long the cameras upload, in seconds.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// When node 2 is killed with SIGKILL, in seconds (default: halfway).
    #[arg(long)]
    kill_at_secs: Option<u64>,
    /// gRPC channels (HTTP/2 connections) per node shared by the cameras.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Concurrent list/read calls during the final check.
    #[arg(long, default_value_t = 32)]
    check_concurrency: usize,
    /// Working directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A child process in its own process group, SIGKILLed (group and all) on
/// drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr (and stdout, unless `piped_stdout`) to `log`.
    fn spawn(name: &str, cmd: &mut Command, log: &Path, piped_stdout: bool) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let out = File::options().create(true).append(true).open(log)?;
        if !piped_stdout {
            cmd.stdout(out.try_clone()?);
        }
        let child = cmd
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Fails with the end of its log if it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            bail!(
                "{} exited ({st}); end of its log:\n{}",
                self.name,
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        Ok(())
    }

    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on now and not handed out before by this
/// process: the kernel may give a just-released port to the next `bind(0)`,
/// and the servers bind theirs later.
fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// Waits until something listens on loopback `port`, or fails with the
/// log of whichever process exited.
async fn wait_listening(procs: &mut [Proc], port: u16) -> Result<()> {
    let deadline = Instant::now() + READY;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {READY:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A multi-process SeaweedFS on loopback with one bucket; returns its
/// processes (killed on drop) and the S3 endpoint.
async fn start_seaweed(root: &Path) -> Result<(Vec<Proc>, String)> {
    let mut procs: Vec<Proc> = Vec::new();
    let weed = |name: &str, args: Vec<String>| -> Result<Proc> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        Proc::spawn(
            &format!("weed {name}"),
            Command::new("weed")
                .arg("-logtostderr")
                .arg(format!("-config_dir={}", dir.display()))
                .args(&args[..1])
                .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
                .args(&args[1..])
                .current_dir(&dir),
            &dir.join("log"),
            false,
        )
    };
    let ports = || -> Result<(u16, u16)> { Ok((free_port()?, free_port()?)) };
    // A server with a non-default gRPC port is named "ip:http.grpc".
    let (mp, mg) = ports()?;
    let master = format!("127.0.0.1:{mp}.{mg}");
    procs.push(weed(
        "master",
        vec![
            "master".into(),
            format!("-port={mp}"),
            format!("-port.grpc={mg}"),
            "-mdir=.".into(),
            "-peers=none".into(),
            "-telemetry=false".into(),
            "-volumeSizeLimitMB=64".into(),
        ],
    )?);
    wait_listening(&mut procs, mg).await?;
    for i in 0..2 {
        let (vp, vg) = ports()?;
        procs.push(weed(
            &format!("volume{i}"),
            vec![
                "volume".into(),
                format!("-port={vp}"),
                format!("-port.grpc={vg}"),
                "-dir=.".into(),
                "-max=100".into(),
                format!("-master={master}"),
            ],
        )?);
    }
    let (fp, fg) = ports()?;
    let filer = format!("127.0.0.1:{fp}.{fg}");
    let filer_sock = root.join("filer").join("filer.sock");
    procs.push(weed(
        "filer",
        vec![
            "filer".into(),
            format!("-port={fp}"),
            format!("-port.grpc={fg}"),
            format!("-master={master}"),
            "-defaultStoreDir=.".into(),
            format!("-localSocket={}", filer_sock.display()),
        ],
    )?);
    wait_listening(&mut procs, fg).await?;
    let s3_dir = root.join("s3");
    std::fs::create_dir_all(&s3_dir)?;
    let identities = serde_json::json!({
        "identities": [{
            "name": "custody",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    });
    std::fs::write(s3_dir.join("identities.json"), identities.to_string())?;
    let (sp, sg) = ports()?;
    procs.push(weed(
        "s3",
        vec![
            "s3".into(),
            format!("-port={sp}"),
            format!("-port.grpc={sg}"),
            format!("-filer={filer}"),
            format!("-config={}", s3_dir.join("identities.json").display()),
            format!("-localSocket={}", s3_dir.join("s3.sock").display()),
            "-port.iceberg=0".into(),
            "-port.lance=0".into(),
        ],
    )?);
    wait_listening(&mut procs, sp).await?;
    // The bucket, through `weed shell` (no signed S3 request needed here),
    // retried until the filer and master answer.
    let deadline = Instant::now() + READY;
    loop {
        let mut sh = Command::new("weed")
            .args(["-logtostderr", "shell", &format!("-master={master}")])
            .arg(format!("-filer={filer}"))
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting weed shell")?;
        if let Some(mut stdin) = sh.stdin.take() {
            writeln!(
                stdin,
                "s3.bucket.create -name {BUCKET}\ns3.bucket.list\nexit"
            )?;
        }
        let out = sh.wait_with_output()?;
        let listed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim_start().starts_with(BUCKET));
        if listed {
            break;
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if Instant::now() > deadline {
            bail!(
                "could not create bucket {BUCKET}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((procs, format!("http://127.0.0.1:{sp}")))
}

/// Starts node `name` (cluster member, sweeper off) and returns it with its
/// gRPC address (`http://…`).
fn start_node(
    custodyd: &Path,
    dir: &Path,
    endpoint: &str,
    name: &str,
    max_segment: usize,
) -> Result<(Proc, String)> {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = \"s3://{BUCKET}/city\"\ns3_endpoint = \"{endpoint}\"\n\
             s3_region = \"us-east-1\"\ns3_allow_http = true\n\
             [keys]\nkey_file = \"{}\"\n\
             [limits]\nmax_segment_bytes = {}\n\
             [retention]\nsweeper_enabled = false\n\
             [cluster]\nnode_id = \"{name}\"\nheartbeat_interval_ms = 1000\n\
             member_timeout_ms = 10000\njournal_poll_ms = 200\nlease_ms = 10000\n",
            dir.join("keyring.toml").display(),
            max_segment.max(1 << 20)
        ),
    )?;
    let mut node = Proc::spawn(
        name,
        Command::new(custodyd)
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.join(format!("{name}-data")))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .env_remove("CUSTODY_KEKS")
            .stdout(Stdio::piped()),
        &dir.join(format!("{name}.log")),
        true,
    )?;
    let stdout = node.child.stdout.take().context("custodyd stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let Some(banner) = lines.next().transpose()? else {
        node.check_alive()?;
        bail!("{name} closed its stdout before its banner");
    };
    let addr = banner
        .strip_prefix("custodyd listening on ")
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("unexpected banner {banner:?}"))?
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    Ok((node, format!("http://{addr}")))
}

fn rss_mib_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One acknowledged segment.
#[derive(Clone)]
struct Ack {
    camera: usize,
    /// The node that acknowledged it.
    node: usize,
    /// Its number in the camera's sequence (media start: 6 s × index).
    index: u64,
    sha256: Vec<u8>,
    len: usize,
    /// When it was acknowledged, since the cameras started.
    at: Duration,
    /// Duration of the call that succeeded.
    call: Duration,
    /// From when the segment was due to its acknowledgement (failed
    /// attempts on other nodes included).
    due_to_ack: Duration,
}

/// What the cameras share.
struct Shared {
    /// `clients[node][k]`: a channel to node `node`.
    clients: Vec<Vec<Client>>,
    acks: Mutex<HashMap<String, Ack>>,
    /// The latest acknowledgement, for the lag sampler.
    last: Mutex<Option<(String, Ack)>>,
    failed_calls: std::sync::atomic::AtomicU64,
    stop: AtomicBool,
    begin: Instant,
    base: Vec<u8>,
    epoch: Timestamp,
}

impl Shared {
    fn segment(&self, camera: usize, i: u64) -> Vec<u8> {
        let mut b = self.base.clone();
        let tag = format!("camera {camera} segment {i} ");
        let n = tag.len().min(b.len());
        b[..n].copy_from_slice(&tag.as_bytes()[..n]);
        b
    }

    fn upload(&self, camera: usize, i: u64) -> Result<Upload> {
        let start = self.epoch.saturating_add_nanos(i as i64 * 6_000_000_000);
        Ok(Upload {
            camera: format!("cam-{camera:05}"),
            stream: "main".into(),
            range: TimeRange::new(start, start.saturating_add_nanos(6_000_000_000))?,
            media_type: "video/mp2t".into(),
            sequence: None,
        })
    }
}

/// One camera: a segment every `interval` (offset by `phase`) until `run`
/// has passed, to its home node, failing over to the next node on error
/// (the same segment, again). The acknowledgements go into `shared`.
async fn camera(
    shared: Arc<Shared>,
    c: usize,
    phase: Duration,
    interval: Duration,
    run: Duration,
) -> Result<()> {
    let nodes = shared.clients.len();
    let mut node = c % nodes;
    let lane = (c / nodes) % shared.clients[0].len();
    let mut next_due = shared.begin + phase;
    let mut i = 0u64;
    loop {
        if next_due >= shared.begin + run {
            return Ok(());
        }
        tokio::time::sleep_until(next_due.into()).await;
        let due = next_due;
        let data = shared.segment(c, i);
        let upload = shared.upload(c, i)?;
        loop {
            let t = Instant::now();
            match shared.clients[node][lane]
                .put_bytes(&upload, data.clone())
                .await
            {
                Ok(r) => {
                    let now = Instant::now();
                    let ack = Ack {
                        camera: c,
                        node,
                        index: i,
                        sha256: r.sha256.clone(),
                        len: data.len(),
                        at: now - shared.begin,
                        call: now - t,
                        due_to_ack: now - due,
                    };
                    if let Ok(mut last) = shared.last.lock() {
                        *last = Some((r.segment_id.clone(), ack.clone()));
                    }
                    if let Ok(mut m) = shared.acks.lock() {
                        m.insert(r.segment_id, ack);
                    }
                    break;
                }
                Err(_) => {
                    shared.failed_calls.fetch_add(1, Ordering::Relaxed);
                    node = (node + 1) % nodes;
                    if shared.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        i += 1;
        // A camera that fell behind sends its next segment at once.
        next_due = (next_due + interval).max(Instant::now());
    }
}

/// Every segment `client`'s node lists for `camera` in `[from, to)`: id →
/// SHA-256 (hex).
async fn listed(
    client: &Client,
    camera: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let r = match client
            .archive()
            .list_segments(pb::ListSegmentsRequest {
                camera_id: camera.into(),
                start: Some(ts(from)),
                end: Some(ts(to)),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(out),
            Err(s) => bail!("list {camera}: {s}"),
        };
        out.extend(r.segments.into_iter().map(|s| (s.segment_id, s.sha256)));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        token = r.next_page_token;
    }
}

/// The whole plaintext of segment `id` through `client`'s node.
async fn read_all(client: &Client, id: &str) -> Result<Vec<u8>> {
    let mut s = client
        .archive()
        .read_segment(pb::ReadSegmentRequest {
            segment_id: id.into(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        out.extend(m?.data);
    }
    Ok(out)
}

/// Until the cameras stop: takes the latest acknowledgement, polls another
/// live node's listing until it shows that segment, and records the time
/// from the acknowledgement (since the start) to then.
async fn lag_sampler(shared: Arc<Shared>, killed: Arc<Mutex<Option<usize>>>) -> Vec<Duration> {
    let mut lags = Vec::new();
    let nodes = shared.clients.len();
    while !shared.stop.load(Ordering::Relaxed) {
        let last = shared.last.lock().ok().and_then(|mut l| l.take());
        let Some((id, ack)) = last else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let dead = killed.lock().ok().and_then(|k| *k);
        let Some(target) = (1..nodes)
            .map(|d| (ack.node + d) % nodes)
            .find(|n| Some(*n) != dead)
        else {
            continue;
        };
        let Ok(upload) = shared.upload(ack.camera, ack.index) else {
            continue;
        };
        let client = &shared.clients[target][0];
        let acked_at = shared.begin + ack.at;
        let give_up = Instant::now() + Duration::from_secs(60);
        while Instant::now() < give_up && !shared.stop.load(Ordering::Relaxed) {
            match listed(
                client,
                &upload.camera,
                upload.range.start(),
                upload.range.end(),
            )
            .await
            {
                Ok(m) if m.contains_key(&id) => {
                    lags.push(acked_at.elapsed());
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                // The target died under us: drop this sample.
                Err(_) => break,
            }
        }
    }
    lags
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// "p50 / p99 / max (n)" of `v`.
fn dist(mut v: Vec<Duration>) -> String {
    v.sort();
    if v.is_empty() {
        return "- (0 samples)".into();
    }
    format!(
        "{} / {} / {} (n={})",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99)),
        ms(v[v.len() - 1]),
        v.len()
    )
}

/// Checks that `client`'s node lists (waiting up to `limit` for it to catch
/// up) and reads back every segment in `acks`; returns the problems found
/// and the time it took to list everything.
async fn check_node(
    client: &Client,
    acks: &HashMap<String, Ack>,
    shared: &Shared,
    cameras: usize,
    concurrency: usize,
    limit: Duration,
) -> (Vec<String>, Duration) {
    let began = Instant::now();
    let (from, to) = (
        shared.epoch,
        shared.epoch.saturating_add_nanos(1_000_000 * 1_000_000_000),
    );
    let mut problems = Vec::new();
    loop {
        let lists: Vec<Result<BTreeMap<String, String>>> = futures::stream::iter(0..cameras)
            .map(|c| {
                let camera = format!("cam-{c:05}");
                async move { listed(client, &camera, from, to).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut seen = BTreeMap::new();
        problems.clear();
        for l in lists {
            match l {
                Ok(m) => seen.extend(m),
                Err(e) => problems.push(format!("listing failed: {e:#}")),
            }
        }
        for (id, a) in acks {
            match seen.get(id) {
                None => problems.push(format!(
                    "MISSING {id} (cam-{:05} segment {}, acknowledged by node n{} at {:.2?})",
                    a.camera,
                    a.index,
                    a.node + 1,
                    a.at
                )),
                Some(sha) if *sha != hex::encode(&a.sha256) => {
                    problems.push(format!("{id} listed with digest {sha}"))
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() || began.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed_in = began.elapsed();
    let reads: Vec<Option<String>> = futures::stream::iter(acks.iter())
        .map(|(id, a)| async move {
            match read_all(client, id).await {
                Ok(d) if d.len() == a.len && Sha256::digest(&d).as_slice() == a.sha256 => None,
                Ok(d) => Some(format!("UNREADABLE {id}: {} bytes, other digest", d.len())),
                Err(e) => Some(format!("UNREADABLE {id}: {e:#}")),
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    problems.extend(reads.into_iter().flatten());
    (problems, listed_in)
}

/// Runs the city scenario and prints its table; fails when an acknowledged
/// segment is missing or unreadable on a surviving node.
pub(super) async fn cluster_bench(a: ClusterArgs) -> Result<()> {
    let custodyd = match a.custodyd {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory of custody-bench")?
            .join("custodyd"),
    };
    if a.cameras == 0 || a.interval_ms == 0 || a.secs == 0 || a.channels == 0 {
        bail!("--cameras, --interval-ms, --secs and --channels must be positive");
    }
    let scratch = a.dir.is_none();
    let dir = a.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("custody-bench-cluster-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let load_before = loadavg();
    let t = Instant::now();
    let (seaweed, endpoint) = start_seaweed(&dir.join("seaweed")).await?;
    // The first node creates the shared key file; the others load it.
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(start_node(
            &custodyd,
            &dir,
            &endpoint,
            name,
            a.segment_bytes,
        )?);
    }
    let startup = t.elapsed();
    let addrs: Vec<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
    let pids: Vec<u32> = nodes.iter().map(|(p, _)| p.child.id()).collect();
    eprintln!(
        "seaweedfs (master, 2 volume servers, filer, s3) at {endpoint} and custodyd n1 {} n2 {} n3 {} up in {startup:.1?}",
        addrs[0], addrs[1], addrs[2]
    );
    let clients = addrs
        .iter()
        .map(|addr| (0..a.channels).map(|_| Client::new(addr)).collect())
        .collect::<Result<Vec<Vec<Client>>, _>>()?;
    // Wait until every node takes an upload.
    let probe = Upload {
        camera: "probe".into(),
        stream: "main".into(),
        range: TimeRange::new(Timestamp::from_secs(1_000), Timestamp::from_secs(1_006))?,
        media_type: "video/mp2t".into(),
        sequence: None,
    };
    for c in &clients {
        let deadline = Instant::now() + READY;
        while let Err(e) = c[0].put_bytes(&probe, b"probe".to_vec()).await {
            if Instant::now() > deadline {
                bail!("{} takes no upload: {e}", c[0].address());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut base = vec![0u8; a.segment_bytes];
    rand::thread_rng().fill_bytes(&mut base);
    let interval = Duration::from_millis(a.interval_ms);
    let run = Duration::from_secs(a.secs);
    let kill_after = Duration::from_secs(a.kill_at_secs.unwrap_or(a.secs / 2));
    let shared = Arc::new(Shared {
        clients,
        acks: Mutex::new(HashMap::new()),
        last: Mutex::new(None),
        failed_calls: std::sync::atomic::AtomicU64::new(0),
        stop: AtomicBool::new(false),
        begin: Instant::now() + Duration::from_millis(200),
        base,
        epoch: Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?,
    });
    let killed = Arc::new(Mutex::new(None));
    let phase = |c: usize| interval.mul_f64(c as f64 / a.cameras as f64);
    let cams: Vec<_> = (0..a.cameras)
        .map(|c| tokio::spawn(camera(shared.clone(), c, phase(c), interval, run)))
        .collect();
    let sampler = tokio::spawn(lag_sampler(shared.clone(), killed.clone()));
    let mut peak = [0f64; 3];
    let mut kill_at = None;
    while shared.begin.elapsed() < run {
        if kill_at.is_none() && shared.begin.elapsed() >= kill_after {
            if let Ok(mut k) = killed.lock() {
                *k = Some(1);
            }
            nodes[1].0.kill();
            kill_at = Some(shared.begin.elapsed());
            eprintln!("killed n2 (SIGKILL) at {:.1?}", shared.begin.elapsed());
        }
        for (i, pid) in pids.iter().enumerate() {
            if kill_at.is_none() || i != 1 {
                peak[i] = peak[i].max(rss_mib_of(*pid));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    for c in cams {
        c.await??;
    }
    let drain = stopped.elapsed();
    let lags = sampler.await?;
    let rss_end: Vec<f64> = pids.iter().map(|p| rss_mib_of(*p)).collect();
    let load_after_run = loadavg();
    let kill_at = kill_at.unwrap_or(run);
    let acks = shared
        .acks
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    eprintln!(
        "{} segments acknowledged; checking the survivors",
        acks.len()
    );

    // Every acknowledged segment on every survivor.
    let mut problems = Vec::new();
    let mut catch_up = Vec::new();
    for n in [0usize, 2] {
        let (p, took) = check_node(
            &shared.clients[n][0],
            &acks,
            &shared,
            a.cameras,
            a.check_concurrency,
            Duration::from_secs(120),
        )
        .await;
        catch_up.push(took);
        problems.extend(p.into_iter().map(|p| format!("n{}: {p}", n + 1)));
    }

    // Figures.
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let (mut due_before, mut due_after) = (Vec::new(), Vec::new());
    let mut per_camera: Vec<Vec<Duration>> = vec![Vec::new(); a.cameras];
    let mut late = 0usize;
    for ack in acks.values() {
        if ack.at < kill_at {
            before.push(ack.call);
            due_before.push(ack.due_to_ack);
        } else {
            after.push(ack.call);
            due_after.push(ack.due_to_ack);
        }
        if ack.due_to_ack > interval {
            late += 1;
        }
        per_camera[ack.camera].push(ack.at);
    }
    // The gap between the last ack before the kill and the first after it.
    let (mut gap_killed, mut gap_other) = (Vec::new(), Vec::new());
    let mut stalled = 0usize;
    for (c, mut at) in per_camera.into_iter().enumerate() {
        at.sort();
        let prev = at.iter().rev().find(|t| **t < kill_at).copied();
        let next = at.iter().find(|t| **t >= kill_at).copied();
        let gap = match (prev, next) {
            (Some(p), Some(n)) => n - p,
            (Some(p), None) => {
                stalled += 1;
                run.saturating_sub(p)
            }
            _ => continue,
        };
        if c % 3 == 1 {
            gap_killed.push(gap);
        } else {
            gap_other.push(gap);
        }
    }
    let offered: u64 = (0..a.cameras)
        .map(|c| {
            let p = phase(c);
            if p >= run {
                0
            } else {
                ((run - p).as_nanos().div_ceil(interval.as_nanos())) as u64
            }
        })
        .sum();
    let offered_rate = a.cameras as f64 / interval.as_secs_f64();
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let sustained = acks.len() as f64 >= offered as f64 * 0.99;

    println!(
        "cluster (city scenario): SeaweedFS as separate processes (master, 2 volume servers, filer, s3) + 3 custodyd nodes on one bucket, all on loopback; \
         {} cameras, a {} B segment every {} ms each ({} channels per node), {} s, n2 SIGKILLed at {:.1} s; load average {load_before} before, {load_after_run} after the run",
        a.cameras, a.segment_bytes, a.interval_ms, a.channels, a.secs, kill_at.as_secs_f64()
    );
    let row = |k: &str, v: String| println!("{k:<52} {v}");
    row(
        "segments acknowledged / due in the run",
        format!(
            "{} / {offered} ({} failed calls, {} acked > 1 interval after due)",
            acks.len(),
            shared.failed_calls.load(Ordering::Relaxed),
            late
        ),
    );
    row(
        "segments/s achieved (offered)",
        format!(
            "{:.1} ({offered_rate:.1}); before kill {:.1}, after {:.1} -> {}",
            rate(acks.len(), run),
            rate(before.len(), kill_at),
            rate(after.len(), run.saturating_sub(kill_at)),
            if sustained {
                "sustained"
            } else {
                "NOT sustained"
            }
        ),
    );
    row(
        "ack latency, call p50 / p99 / max, before kill",
        dist(before),
    );
    row("ack latency, call p50 / p99 / max, after kill", dist(after));
    row("due -> ack p50 / p99 / max, before kill", dist(due_before));
    row("due -> ack p50 / p99 / max, after kill", dist(due_after));
    row("listing lag A ack -> B lists, p50 / p99 / max", dist(lags));
    row(
        "gap around kill, n2's cameras p50 / p99 / max",
        dist(gap_killed.clone()),
    );
    row(
        "gap around kill, other cameras p50 / p99 / max",
        dist(gap_other.clone()),
    );
    let extra = |v: &[Duration]| {
        let mut e: Vec<Duration> = v.iter().map(|g| g.saturating_sub(interval)).collect();
        e.sort();
        ms(percentile(&e, 0.5)) + " / " + &ms(e.last().copied().unwrap_or_default())
    };
    row(
        "  the same minus the interval p50 / max, n2's / other",
        format!("{} ; {}", extra(&gap_killed), extra(&gap_other)),
    );
    row(
        "cameras with no ack after the kill",
        format!("{stalled} of {}", a.cameras),
    );
    row(
        "custodyd RSS end of load (peak), n1 / n3",
        format!(
            "{:.0} ({:.0}) / {:.0} ({:.0}) MiB; n2 peak before kill {:.0} MiB",
            rss_end[0], peak[0], rss_end[2], peak[2], peak[1]
        ),
    );
    row(
        "after stop: in-flight drain; survivors list all in",
        format!(
            "{drain:.1?}; n1 {:.1?}, n3 {:.1?}",
            catch_up[0], catch_up[1]
        ),
    );
    row(
        "every ack listed + read back on n1 and n3",
        if problems.is_empty() {
            format!("yes ({} segments each)", acks.len())
        } else {
            format!("NO: {} problems", problems.len())
        },
    );
    row("load average after the check", loadavg());
    drop(nodes);
    drop(seaweed);
    if !problems.is_empty() {
        eprintln!("!!! ACKNOWLEDGED SEGMENTS MISSING OR UNREADABLE ON A SURVIVOR (a bug):");
        for p in problems.iter().take(50) {
            eprintln!("!!!   {p}");
        }
        bail!(
            "{} acknowledged segments missing or unreadable; data kept in {}",
            problems.len(),
            dir.display()
        );
    }
    if scratch {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
