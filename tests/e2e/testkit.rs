//! Test helpers shared by the end-to-end tests: real `custodyd` processes on
//! free loopback ports, the `custody` client binary, ffmpeg-made segments.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::archive_service_client::ArchiveServiceClient;
use custody_proto::v1::ingest_service_client::IngestServiceClient;
use custody_proto::v1::put_segment_request::Part;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

pub(crate) const CUSTODYD: &str = env!("CARGO_BIN_EXE_custodyd");
pub(crate) const CUSTODY: &str = env!("CARGO_BIN_EXE_custody");

/// A running `custodyd`, killed when dropped.
pub(crate) struct Server {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
}

impl Server {
    /// Starts `custodyd` on `data_dir` with an optional config file, on a free port.
    pub(crate) fn start(data_dir: &Path, config: Option<&Path>) -> Server {
        let mut cmd = Command::new(CUSTODYD);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env_remove("CUSTODY_KEKS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn custodyd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read custodyd banner");
        let addr = line
            .trim()
            .strip_prefix("custodyd listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected custodyd banner {line:?}"))
            .to_string();
        Server {
            child,
            addr: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
        }
    }

    /// SIGKILL, no chance to clean up.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean shutdown) and waits for the exit; asserts it was clean.
    pub(crate) fn stop(&mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM custodyd");
        let status = self.child.wait().expect("wait for custodyd");
        assert!(status.success(), "custodyd exited with {status}");
    }

    /// Kills and starts again on the same data dir (new port).
    pub(crate) fn restart(mut self) -> Server {
        self.kill9();
        Server::start(&self.data_dir.clone(), self.config.clone().as_deref())
    }

    pub(crate) async fn archive(&self) -> ArchiveServiceClient<Channel> {
        ArchiveServiceClient::connect(self.addr.clone())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
    }

    pub(crate) async fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::connect(self.addr.clone())
            .await
            .expect("connect")
    }

    /// Runs the `custody` client against this server.
    pub(crate) fn custody(&self, args: &[&str]) -> Output {
        let out = Command::new(CUSTODY)
            .arg("--server")
            .arg(&self.addr)
            .args(args)
            .output()
            .expect("run custody");
        out
    }

    /// Runs `custody`, asserts success and returns stdout.
    pub(crate) fn custody_ok(&self, args: &[&str]) -> String {
        let out = self.custody(args);
        assert!(
            out.status.success(),
            "custody {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `custody` client with no server (offline subcommands).
pub(crate) fn custody_offline(args: &[&str]) -> Output {
    Command::new(CUSTODY)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run custody")
}

/// Panics with an install hint when a tool is missing.
pub(crate) fn require(tool: &str) {
    let ok = Command::new(tool)
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is required for this test: run ./scripts/setup (apt-get install ffmpeg)"
    );
}

/// `n` H.264 MPEG-TS segments of `secs` seconds each from ffmpeg's test source.
pub(crate) fn ffmpeg_segments(dir: &Path, n: u32, secs: u32) -> Vec<PathBuf> {
    require("ffmpeg");
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=size=320x240:rate=25:duration={}",
            n * secs
        ))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
        ])
        .args(["-f", "segment", "-segment_time"])
        .arg(secs.to_string())
        .args(["-reset_timestamps", "0"])
        .arg(dir.join("seg-%03d.ts"))
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ts"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        n as usize,
        "ffmpeg made {} segments",
        files.len()
    );
    files
}

/// Duration of a media file according to ffprobe, in seconds.
pub(crate) fn ffprobe_duration(file: &Path) -> f64 {
    require("ffprobe");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=nw=1:nk=1",
        ])
        .arg(file)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe rejected {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("duration")
}

/// Every regular file under `dir`.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Segment objects (`.cseg`) under a data dir.
pub(crate) fn stored_objects(data_dir: &Path) -> Vec<PathBuf> {
    files_under(&data_dir.join("objects"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cseg"))
        .collect()
}

/// A domain instant as a wire timestamp.
pub(crate) fn ts(t: custody_core::Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

/// Reads a whole segment over gRPC.
pub(crate) async fn read_all(server: &Server, id: &str) -> Result<Vec<u8>, tonic::Status> {
    read_from(&server.addr, id).await
}

/// Reads a whole segment over gRPC from the server at `addr`; a server that
/// cannot be reached is `UNAVAILABLE`.
pub(crate) async fn read_from(addr: &str, id: &str) -> Result<Vec<u8>, tonic::Status> {
    use futures::StreamExt;
    let mut s = ArchiveServiceClient::connect(addr.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .max_decoding_message_size(64 << 20)
        .read_segment(custody_proto::v1::ReadSegmentRequest {
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

/// The wall clock now.
pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Timestamp::from_parts(d.as_secs() as i64, d.subsec_nanos() as i32).unwrap()
}

/// A `custodyd` with several listeners, killed when dropped.
pub(crate) struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `custodyd --config` and returns the bound `host:port` of each of
/// its `n` listeners by name (read from its banner lines).
pub(crate) fn start_listeners(
    config: &Path,
    data_dir: &Path,
    n: usize,
) -> (Daemon, std::collections::BTreeMap<String, String>) {
    start_listeners_with(Command::new(CUSTODYD), config, data_dir, n)
}

/// As [`start_listeners`], with a prepared command (e.g. `ip netns exec NS custodyd`).
pub(crate) fn start_listeners_with(
    mut cmd: Command,
    config: &Path,
    data_dir: &Path,
    n: usize,
) -> (Daemon, std::collections::BTreeMap<String, String>) {
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .env_remove("CUSTODY_KEKS")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn custodyd");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addrs = std::collections::BTreeMap::new();
    for _ in 0..n {
        let line = lines
            .next()
            .expect("custodyd exited before its banner")
            .expect("banner");
        let mut words = line
            .strip_prefix("custodyd listening on ")
            .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
            .split_whitespace();
        let addr = words.next().expect("address").to_string();
        let name = words
            .next()
            .and_then(|w| w.strip_prefix("name="))
            .expect("name=")
            .to_string();
        addrs.insert(name, addr);
    }
    (Daemon(child), addrs)
}

/// `custody certs init` into `dir` for a loopback server, with the given
/// cameras and `NAME:ROLE` users.
pub(crate) fn certs_init(dir: &Path, cameras: &[&str], users: &[&str]) {
    let mut cmd = Command::new(CUSTODY);
    cmd.args(["certs", "init", "--dir"]).arg(dir).args([
        "--server-host",
        "localhost",
        "--server-host",
        "127.0.0.1",
    ]);
    for c in cameras {
        cmd.args(["--camera", c]);
    }
    for u in users {
        cmd.args(["--user", u]);
    }
    let out = cmd.output().expect("run custody certs init");
    assert!(
        out.status.success(),
        "custody certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mutual-TLS channel to `https://{addr}` as principal `name` (its
/// `NAME.pem`/`NAME.key` in `certs`), verifying the server as `localhost`.
pub(crate) async fn tls_channel(addr: &str, certs: &Path, name: &str) -> Result<Channel, String> {
    let read = |f: String| std::fs::read(certs.join(f)).expect("read certificate file");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(
            "ca.pem".to_string(),
        )))
        .identity(tonic::transport::Identity::from_pem(
            read(format!("{name}.pem")),
            read(format!("{name}.key")),
        ))
        .domain_name("localhost");
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Runs `custody` against `https://{addr}` as principal `name`.
pub(crate) fn custody_tls(addr: &str, certs: &Path, name: &str, args: &[&str]) -> Output {
    Command::new(CUSTODY)
        .arg("--server")
        .arg(format!("https://{addr}"))
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{name}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{name}.key")))
        .args(["--tls-server-name", "localhost"])
        .args(args)
        .output()
        .expect("run custody")
}

// Building uploads by hand (for bad input and retries).

/// 2026-01-01T10:00:00Z, the epoch of hand-made uploads.
pub(crate) fn t0() -> Timestamp {
    Timestamp::parse_rfc3339("2026-01-01T10:00:00Z").unwrap()
}

pub(crate) fn secs(s: i64) -> Timestamp {
    t0().saturating_add_nanos(s * 1_000_000_000)
}

pub(crate) fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

pub(crate) fn header(camera: &str, start: Timestamp, end: Timestamp) -> pb::PutSegmentRequest {
    pb::PutSegmentRequest {
        part: Some(Part::Header(pb::SegmentHeader {
            camera_id: camera.into(),
            stream: "main".into(),
            start: Some(ts(start)),
            end: Some(ts(end)),
            media_type: "video/mp2t".into(),
            ..Default::default()
        })),
    }
}

pub(crate) fn chunk(b: &[u8]) -> pb::PutSegmentRequest {
    pb::PutSegmentRequest {
        part: Some(Part::Chunk(bytes::Bytes::copy_from_slice(b))),
    }
}

pub(crate) fn finish(sha: Option<[u8; 32]>) -> pb::PutSegmentRequest {
    pb::PutSegmentRequest {
        part: Some(Part::Finish(pb::SegmentFinish {
            sha256: sha.map(|s| s.to_vec()).unwrap_or_default(),
        })),
    }
}

pub(crate) async fn put(
    server: &Server,
    msgs: Vec<pb::PutSegmentRequest>,
) -> Result<pb::PutSegmentResponse, tonic::Status> {
    server
        .ingest()
        .await
        .put_segment(futures::stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn put_bytes(
    server: &Server,
    camera: &str,
    start: Timestamp,
    end: Timestamp,
    data: &[u8],
) -> Result<pb::PutSegmentResponse, tonic::Status> {
    let mut msgs = vec![header(camera, start, end)];
    msgs.extend(data.chunks(100_000).map(chunk));
    msgs.push(finish(Some(Sha256::digest(data).into())));
    put(server, msgs).await
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`
/// (then fails, naming `what`).
pub(crate) async fn eventually<T, F, Fut>(limit: std::time::Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `custody audit verify` on a data dir: (success, stdout + stderr).
pub(crate) fn audit_verify(data: &Path, head: Option<&Path>) -> (bool, String) {
    let store = data.to_str().unwrap();
    let key = data.join("keys/keyring.toml");
    let mut args = vec![
        "audit",
        "verify",
        "--store",
        store,
        "--key-file",
        key.to_str().unwrap(),
    ];
    if let Some(h) = head {
        args.extend(["--head", h.to_str().unwrap()]);
    }
    let out = custody_offline(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
