//! A cluster: separate `custodyd` processes on one bucket of a real,
//! multi-process SeaweedFS on loopback. Any node ingests any camera and
//! answers for every camera; a node killed with SIGKILL under load loses no
//! acknowledged segment and its cameras go on through the others; the node
//! restarted, a fresh node with an empty index, and the whole cluster
//! restarted all serve everything acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::archive_service_client::ArchiveServiceClient;
use custody_proto::v1::ingest_service_client::IngestServiceClient;
use custody_proto::v1::node_service_client::NodeServiceClient;
use sha2::{Digest, Sha256};

use crate::seaweed::Seaweed;
use crate::testkit::{chunk, finish, header, read_from, secs, Server};

/// One test cluster's files: a shared key file and one config per node.
pub(crate) struct Nodes {
    pub(crate) sw: Seaweed,
    pub(crate) dir: tempfile::TempDir,
}

impl Nodes {
    pub(crate) async fn new() -> Nodes {
        Nodes {
            sw: Seaweed::start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, node: &str) -> PathBuf {
        self.config_with(node, "[retention]\nsweeper_enabled = false\n")
    }

    /// A node's config with `retention` as its `[retention]` section.
    pub(crate) fn config_with(&self, node: &str, retention: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{node}.toml"));
        let keys = self.dir.path().join("keyring.toml");
        std::fs::write(
            &path,
            format!(
                "{}[keys]\nkey_file = \"{}\"\n{retention}\
                 [cluster]\nnode_id = \"{node}\"\nheartbeat_interval_ms = 500\n\
                 member_timeout_ms = 3000\njournal_poll_ms = 100\nlease_ms = 3000\n",
                self.sw.store_toml("city"),
                keys.display()
            ),
        )
        .unwrap();
        path
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}-data"))
    }

    fn start(&self, node: &str) -> Server {
        Server::start(&self.data_dir(node), Some(&self.config(node)))
    }

    /// Verifies the one audit chain in the bucket offline (`custody audit
    /// verify`); panics with the report when it fails.
    pub(crate) fn verify_audit_chain(&self) {
        let keys = self.dir.path().join("keyring.toml");
        let out = crate::testkit::custody_offline(&[
            "audit",
            "verify",
            "--store",
            &format!("s3://{}/city", self.sw.bucket),
            "--key-file",
            keys.to_str().unwrap(),
            "--s3-endpoint",
            &self.sw.endpoint,
            "--s3-region",
            crate::seaweed::REGION,
            "--s3-allow-http",
        ]);
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `node` with `retention` as its `[retention]` section.
    pub(crate) fn start_with(&self, node: &str, retention: &str) -> Server {
        Server::start(
            &self.data_dir(node),
            Some(&self.config_with(node, retention)),
        )
    }
}

/// A segment as the test knows it: where it was acknowledged and its bytes.
#[derive(Clone)]
struct Acked {
    camera: String,
    /// The node that acknowledged it.
    by: String,
    sha256: Vec<u8>,
    len: usize,
}

fn segment_bytes(camera: &str, i: u64) -> Vec<u8> {
    let mut b = format!("{camera} segment {i} ").into_bytes();
    b.resize(20_000 + (i as usize % 7) * 3_000, (i % 251) as u8);
    b
}

async fn put(
    addr: &str,
    camera: &str,
    start: Timestamp,
    data: &[u8],
) -> Result<pb::PutSegmentResponse, tonic::Status> {
    put_range(
        addr,
        camera,
        start,
        start.saturating_add_nanos(6_000_000_000),
        data,
    )
    .await
}

/// Uploads `data` as `camera`'s segment over `[start, end)` through `addr`.
pub(crate) async fn put_range(
    addr: &str,
    camera: &str,
    start: Timestamp,
    end: Timestamp,
    data: &[u8],
) -> Result<pb::PutSegmentResponse, tonic::Status> {
    let mut client = IngestServiceClient::connect(addr.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut msgs = vec![header(camera, start, end)];
    msgs.extend(data.chunks(64_000).map(chunk));
    msgs.push(finish(Some(Sha256::digest(data).into())));
    client
        .put_segment(futures::stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// Every segment id a node lists for `camera`, with its SHA-256 (hex).
async fn listed(addr: &str, camera: &str) -> BTreeMap<String, String> {
    let mut client = ArchiveServiceClient::connect(addr.to_string())
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let r = match client
            .list_segments(pb::ListSegmentsRequest {
                camera_id: camera.into(),
                start: Some(crate::testkit::ts(secs(0))),
                end: Some(crate::testkit::ts(secs(86_400))),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return out,
            Err(s) => panic!("list {camera} on {addr}: {s}"),
        };
        for s in r.segments {
            out.insert(s.segment_id, s.sha256);
        }
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

/// Waits until `addr` lists every acknowledged segment; returns how long
/// that took. Panics with what is missing after `limit`.
async fn wait_all_listed(addr: &str, acked: &BTreeMap<String, Acked>, limit: Duration) -> Duration {
    let began = Instant::now();
    let cameras: BTreeSet<&str> = acked.values().map(|a| a.camera.as_str()).collect();
    loop {
        let mut seen = BTreeMap::new();
        for c in &cameras {
            seen.extend(listed(addr, c).await);
        }
        let missing: Vec<&String> = acked.keys().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() {
            for (id, a) in acked {
                assert_eq!(
                    seen[id],
                    hex::encode(&a.sha256),
                    "{addr} lists {id} with another digest"
                );
            }
            return began.elapsed();
        }
        if began.elapsed() > limit {
            let id = missing[0];
            let by_id = read_from(addr, id).await.map(|d| d.len());
            let status = NodeServiceClient::connect(addr.to_string())
                .await
                .unwrap()
                .get_cluster_status(pb::GetClusterStatusRequest {})
                .await
                .map(|s| s.into_inner());
            eprintln!("cluster status of {addr}: {status:?}");
            eprintln!("acknowledged {id} by {}", acked[id].by);
            panic!(
                "{addr} still misses {} of {} acknowledged segments after {limit:?}, e.g. {id} of {} \
                 (read by id there: {by_id:?}); missing: {:?}",
                missing.len(),
                acked.len(),
                acked[id].camera,
                &missing[..missing.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every acknowledged segment through `addr` and checks its bytes.
async fn check_readable(addr: &str, acked: &BTreeMap<String, Acked>) {
    for (id, a) in acked {
        let data = read_from(addr, id)
            .await
            .unwrap_or_else(|e| panic!("read {id} ({}) on {addr}: {e}", a.camera));
        assert_eq!(data.len(), a.len, "{id} on {addr}");
        assert_eq!(Sha256::digest(&data).to_vec(), a.sha256, "{id} on {addr}");
    }
}

pub(crate) async fn cluster_status(addr: &str) -> pb::ClusterStatus {
    NodeServiceClient::connect(addr.to_string())
        .await
        .unwrap()
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Uploads segments of `camera` one after another (a camera every few
/// milliseconds rather than 6 s), to the first address that answers, moving
/// to the next on failure, until `stop`; records what was acknowledged and
/// how long the longest gap between two acknowledgements was.
async fn camera_loop(
    addrs: Vec<String>,
    camera: String,
    acked: Arc<Mutex<BTreeMap<String, Acked>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Duration) {
    let mut i = 0u64;
    let mut node = 0usize;
    let mut last_ack = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let data = segment_bytes(&camera, i);
        let start = secs(1_000 + i as i64 * 6);
        match put(&addrs[node], &camera, start, &data).await {
            Ok(r) => {
                longest_gap = longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
                acked.lock().unwrap().insert(
                    r.segment_id,
                    Acked {
                        camera: camera.clone(),
                        by: addrs[node].clone(),
                        sha256: r.sha256,
                        len: data.len(),
                    },
                );
                i += 1;
            }
            // The node is gone or busy: the same segment goes to the next.
            Err(_) => node = (node + 1) % addrs.len(),
        }
    }
    (i, longest_gap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_one_bucket_survive_a_kill_and_rebuild() {
    let nodes = Nodes::new().await;
    // The first node creates the shared key file; the others load it.
    let n1 = nodes.start("n1");
    let mut n2 = nodes.start("n2");
    let n3 = nodes.start("n3");
    let (a1, a2, a3) = (n1.addr.clone(), n2.addr.clone(), n3.addr.clone());
    eprintln!("n1 {a1}, n2 {a2}, n3 {a3}");

    // Acknowledged on n1, readable on n3 at once (n3 catches up on a miss).
    let first = segment_bytes("cam-first", 0);
    let r = put(&a1, "cam-first", secs(100), &first).await.unwrap();
    assert!(!r.duplicate);
    assert_eq!(read_from(&a3, &r.segment_id).await.unwrap(), first);
    // The same segment through n2: one object, answered as a duplicate.
    let again = put(&a2, "cam-first", secs(100), &first).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.segment_id, r.segment_id);
    // Other bytes for that id through n3: refused, nothing replaced.
    let other = put(&a3, "cam-first", secs(100), b"other bytes")
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other}");
    assert_eq!(read_from(&a2, &r.segment_id).await.unwrap(), first);

    // Listing lag: acknowledged on one node → listed by the others.
    let mut lags = Vec::new();
    for i in 0..20u64 {
        let (from, to) = [(&a1, &a2), (&a2, &a3), (&a3, &a1)][i as usize % 3];
        let data = segment_bytes("cam-lag", i);
        let r = put(from, "cam-lag", secs(200 + 6 * i as i64), &data)
            .await
            .unwrap();
        let one = BTreeMap::from([(
            r.segment_id,
            Acked {
                camera: "cam-lag".into(),
                by: from.clone(),
                sha256: r.sha256,
                len: data.len(),
            },
        )]);
        lags.push(wait_all_listed(to, &one, Duration::from_secs(30)).await);
    }
    lags.sort();
    eprintln!(
        "listing lag across nodes over {} segments: p50 {:?}, max {:?}",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );

    // Cameras uploading through all three; n2 is killed mid-way.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    acked.lock().unwrap().insert(
        r.segment_id.clone(),
        Acked {
            camera: "cam-first".into(),
            by: a1.clone(),
            sha256: r.sha256.clone(),
            len: first.len(),
        },
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let orders = [
        vec![a1.clone(), a2.clone(), a3.clone()],
        vec![a2.clone(), a3.clone(), a1.clone()],
        vec![a3.clone(), a1.clone(), a2.clone()],
    ];
    let mut cams = Vec::new();
    for c in 0..6usize {
        cams.push(tokio::spawn(camera_loop(
            orders[c % 3].clone(),
            format!("cam-{c}"),
            acked.clone(),
            stop.clone(),
        )));
    }
    let count = |acked: &Arc<Mutex<BTreeMap<String, Acked>>>| acked.lock().unwrap().len();
    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count(&acked) < n {
                assert!(
                    Instant::now() < deadline,
                    "uploads stalled at {}",
                    count(&acked)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(60).await;
    n2.kill9();
    let at_kill = count(&acked);
    wait_for(at_kill + 120).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    for (c, t) in cams.into_iter().enumerate() {
        let (n, gap) = t.await.unwrap();
        assert!(n > 0, "camera {c} stored nothing");
        longest = longest.max(gap);
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} segments acknowledged ({at_kill} before the kill); longest gap between two acknowledgements of one camera: {longest:?}",
        acked.len()
    );

    // Every acknowledged segment is listed and readable on the survivors.
    for addr in [&a1, &a3] {
        wait_all_listed(addr, &acked, Duration::from_secs(30)).await;
        check_readable(addr, &acked).await;
    }
    // No partial segment: whatever a survivor lists reads whole.
    for c in 0..6 {
        for (id, sha) in listed(&a1, &format!("cam-{c}")).await {
            let data = read_from(&a1, &id).await.unwrap();
            assert_eq!(hex::encode(Sha256::digest(&data)), sha, "{id}");
        }
    }
    // The survivors see n2 down, by the store's clock.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cluster_status(&a1).await;
        assert_eq!(s.node_id, "n1");
        let by_id: BTreeMap<&str, &pb::ClusterMember> =
            s.members.iter().map(|m| (m.node_id.as_str(), m)).collect();
        assert!(by_id["n1"].alive && by_id["n3"].alive, "{s:?}");
        if !by_id["n2"].alive {
            break;
        }
        assert!(Instant::now() < deadline, "n2 still shown alive: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `custody ingest --watch` given a dead node first fails over to the next.
    let watched = nodes.dir.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let mut list = String::new();
    for i in 0..3u32 {
        let file = format!("cam-20260101-1300{:02}.ts", i * 2);
        std::fs::write(watched.join(&file), vec![i as u8 + 7; 30_000]).unwrap();
        list.push_str(&format!("{file},{}.0,{}.0\n", i * 2, i * 2 + 2));
    }
    std::fs::write(watched.join("segments.csv"), list).unwrap();
    let out = std::process::Command::new(crate::testkit::CUSTODY)
        .args([
            "--server",
            &format!("{a2},{a1}"),
            "--json",
            "ingest",
            "--watch",
        ])
        .arg(&watched)
        .args(["--camera", "cam-watch", "--once"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "watch with failover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Listed by another node within the journal lag.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let watched_ids = listed(&a3, "cam-watch").await;
        if watched_ids.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{watched_ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // n2 back on its own index: it catches up on what others stored.
    let n2 = n2.restart();
    wait_all_listed(&n2.addr, &acked, Duration::from_secs(30)).await;
    check_readable(&n2.addr, &acked).await;

    // A fresh node with an empty index rebuilds from the bucket and serves.
    let n4 = nodes.start("n4");
    wait_all_listed(&n4.addr, &acked, Duration::from_secs(60)).await;
    check_readable(&n4.addr, &acked).await;
    let s = cluster_status(&n4.addr).await;
    assert_eq!(s.members.len(), 4, "{s:?}");

    // A second process claiming n1's id cannot write into n1's journal.
    let twin_dir = nodes.dir.path().join("twin-data");
    let twin = Server::start(&twin_dir, Some(&nodes.config("n1")));
    put(&a1, "cam-twin", secs(5_000), b"from the real n1")
        .await
        .unwrap();
    let refused = put(&twin.addr, "cam-twin", secs(5_006), b"from the twin")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(
        refused
            .message()
            .contains("another process is running as node n1"),
        "{refused}"
    );
    drop(twin);

    // The whole cluster restarted: everything is there.
    drop((n1, n2, n3, n4));
    let restarted: Vec<Server> = ["n1", "n2", "n3"].iter().map(|n| nodes.start(n)).collect();
    for (name, s) in ["n1", "n2", "n3"].iter().zip(&restarted) {
        eprintln!("checking restarted {name} at {}", s.addr);
        wait_all_listed(&s.addr, &acked, Duration::from_secs(30)).await;
    }
    check_readable(&restarted[2].addr, &acked).await;

    // A compliance report from any node counts, from the bucket, the
    // footage every node stored; an evidence export from any node holds a
    // camera's segments whichever node took them.
    let report = crate::testkit::json(&restarted[1].custody_ok(&[
        "--json",
        "compliance",
        "report",
        "--as-of",
        &crate::testkit::now().to_string(),
    ]));
    for c in 0..6 {
        let camera = format!("cam-{c}");
        let want = acked.values().filter(|a| a.camera == camera).count() as u64;
        let got = report["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["camera_id"] == camera.as_str())
            .and_then(|r| r["segments"].as_u64())
            .unwrap_or(0);
        assert!(
            got >= want,
            "{camera}: report counts {got}, {want} acknowledged"
        );
    }
    let bundle = nodes.dir.path().join("bundle");
    restarted[0].custody_ok(&[
        "evidence",
        "export",
        "--camera",
        "cam-1",
        "--from",
        &secs(0).to_string(),
        "--to",
        &secs(3_600).to_string(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    let manifest =
        crate::testkit::json(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap());
    let exported = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "segment")
        .count();
    assert_eq!(exported, listed(&restarted[0].addr, "cam-1").await.len());

    // One audit chain across every node, the SIGKILLed ones included.
    nodes.verify_audit_chain();
}

/// The three-node example in `deploy/cluster/` parses, and its nodes differ
/// only where they must.
#[test]
fn deploy_cluster_example_is_a_valid_three_node_cluster() {
    let configs = [
        include_str!("../../deploy/cluster/node1.toml"),
        include_str!("../../deploy/cluster/node2.toml"),
        include_str!("../../deploy/cluster/node3.toml"),
    ];
    let mut ids = BTreeSet::new();
    let mut stores = BTreeSet::new();
    for text in configs {
        let config = custody_server::ServerConfig::from_toml(text).unwrap();
        let cluster = config.cluster.as_ref().expect("a [cluster] section");
        ids.insert(cluster.validate().unwrap().to_string());
        stores.insert(format!("{:?}", config.store));
        assert!(config.store.url.starts_with("s3://"));
    }
    assert_eq!(ids.len(), 3, "one node id each");
    assert_eq!(stores.len(), 1, "one bucket");
}
