//! Compliance reports with the real server and a real store directory:
//! a clean archive reports no violation; violations planted behind the
//! server's back (a held object deleted, a held object with a flipped byte,
//! the index entry of expired unheld footage dropped, an orphan index entry)
//! are reported exactly, with the right kinds, in JSON and in an HTML report
//! that headless Chromium renders offline with one row per violation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testkit::{ffmpeg_segments, stored_objects, Server};
use custody_core::{Clock, SegmentId, SystemClock, Timestamp};
use custody_proto::v1 as pb;
use custody_proto::v1::compliance_service_client::ComplianceServiceClient;
use futures::StreamExt;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

/// The sweeper is off so that planted expired footage stays; the sweep bound
/// is 1 s + 1 s.
fn config(dir: &Path) -> PathBuf {
    let p = dir.join("custodyd.toml");
    std::fs::write(
        &p,
        "[retention]\nsweeper_enabled = false\nsweep_interval_secs = 1\nhold_fence_secs = 1\npolicy_grace_secs = 0\n\
         [compliance]\ngap_tolerance_secs = 2\n",
    )
    .unwrap();
    p
}

fn ingest(server: &Server, camera: &str, files: &[PathBuf], start: Timestamp) -> Vec<String> {
    let mut args = vec![
        "--json".to_string(),
        "ingest".to_string(),
        "--camera".to_string(),
        camera.to_string(),
        "--start".to_string(),
        start.to_string(),
        "--segment-duration".to_string(),
        "2".to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server
        .custody_ok(&args)
        .lines()
        .map(|l| json(l)["segment_id"].as_str().unwrap().to_string())
        .collect()
}

fn secs(t: Timestamp, s: i64) -> Timestamp {
    t.saturating_add_nanos(s * 1_000_000_000)
}

/// `(kind, camera, segment id)` of every violation of a JSON report.
fn violations(report: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for v in report["violations"].as_array().unwrap() {
        for s in v["segments"].as_array().unwrap() {
            out.insert((
                v["kind"].as_str().unwrap().to_string(),
                v["camera_id"].as_str().unwrap().to_string(),
                s["segment_id"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn object_of(data_dir: &Path, id: &str) -> PathBuf {
    stored_objects(data_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().contains(id))
        .unwrap_or_else(|| panic!("no object for {id}"))
}

/// Headless Chromium's rendered DOM of a local file, with the network cut off.
fn chromium_dom(html: &Path, profile: &Path) -> String {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("chromium is required for this test: run ./scripts/setup --test (apt-get install chromium)");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_violations_are_reported_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, Some(&cfg));
    let files = ffmpeg_segments(&tmp.path().join("ts"), 4, 2);
    let now = SystemClock.now();
    // Judge two minutes ahead, so that "now" is the same for every report.
    let as_of = secs(now, 120).to_string();

    for cam in ["cam-a", "cam-b"] {
        server.custody_ok(&[
            "policy",
            "set",
            "--camera",
            cam,
            "--retain-for",
            "1h",
            "--principal",
            "admin:alice",
        ]);
    }
    // cam-a: four 2 s segments a minute ago, the first two held.
    let a = ingest(&server, "cam-a", &files, secs(now, -60));
    let hold = json(&server.custody_ok(&[
        "--json",
        "hold",
        "create",
        "--cameras",
        "cam-a",
        "--from",
        &secs(now, -60).to_string(),
        "--to",
        &secs(now, -57).to_string(),
        "--case",
        "CASE-7",
        "--reason",
        "incident at gate 2",
        "--principal",
        "investigator:bob",
    ]));
    assert_eq!(hold["covered_segments"], 2, "{hold}");
    let hold_id = hold["hold"]["hold_id"].as_str().unwrap().to_string();
    // cam-c (no policy): two segments with a 10 s hole between them.
    ingest(&server, "cam-c", &files[..1], secs(now, -40));
    ingest(&server, "cam-c", &files[1..2], secs(now, -28));

    // A clean archive: no violation, in either mode.
    for deep in [false, true] {
        let mut args = vec!["--json", "compliance", "report", "--as-of", &as_of];
        if deep {
            args.push("--deep");
        }
        let clean = json(&server.custody_ok(&args));
        assert_eq!(violations(&clean), BTreeSet::new(), "{clean}");
        assert_eq!(clean["objects_scanned"], 6);
        assert_eq!(clean["index_entries"], 6);
        assert_eq!(clean["deep"], deep);
        let cam_a = &clean["cameras"][0];
        assert_eq!(cam_a["camera_id"], "cam-a");
        assert_eq!(cam_a["segments"], 4);
        assert_eq!(cam_a["held_segments"], 2);
        assert!(cam_a["policy"].as_str().unwrap().contains("retain 3600 s"));
        assert!(cam_a["next_expiry"].is_string(), "{cam_a}");
        assert_eq!(cam_a["gaps"].as_array().unwrap().len(), 0);
        let cam_c = &clean["cameras"][1];
        assert_eq!(cam_c["camera_id"], "cam-c");
        assert_eq!(cam_c["policy"], "");
        let gaps = cam_c["gaps"].as_array().unwrap();
        assert_eq!(gaps.len(), 1, "{cam_c}");
        assert_eq!(gaps[0]["start"], secs(now, -38).to_string());
        assert_eq!(gaps[0]["end"], secs(now, -28).to_string());
        // The audit chain is verified from the store as part of the report.
        assert_eq!(clean["audit"]["verified"], true, "{}", clean["audit"]);
        assert!(clean["audit"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("intact: "));
    }

    // cam-b: footage that ended three hours ago: expired, unheld.
    let b = ingest(&server, "cam-b", &files[..1], secs(now, -3 * 3600));
    // Behind the server's back: drop cam-b's index entry...
    server.kill9();
    {
        let catalog = custody_catalog::Catalog::open(&data.join("catalog")).unwrap();
        let id = SegmentId::parse(&b[0]).unwrap();
        assert!(catalog.delete_segment(&id).unwrap().is_some());
    }
    // ...delete a held object, flip a byte in the middle of another held
    // one, and delete an unheld one (leaving its index entry orphaned).
    std::fs::remove_file(object_of(&data, &a[0])).unwrap();
    let flipped = object_of(&data, &a[1]);
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&flipped, bytes).unwrap();
    std::fs::remove_file(object_of(&data, &a[3])).unwrap();
    let server = Server::start(&data, Some(&cfg));

    let html = tmp.path().join("report.html");
    let deep = json(&server.custody_ok(&[
        "--json",
        "compliance",
        "report",
        "--as-of",
        &as_of,
        "--deep",
        "--html",
        html.to_str().unwrap(),
    ]));
    let planted: BTreeSet<(String, String, String)> = [
        ("held_missing", "cam-a", &a[0]),
        ("held_corrupt", "cam-a", &a[1]),
        ("missing_object", "cam-a", &a[3]),
        ("expired_unindexed", "cam-b", &b[0]),
    ]
    .into_iter()
    .map(|(k, c, id)| (k.to_string(), c.to_string(), id.to_string()))
    .collect();
    assert_eq!(violations(&deep), planted, "{deep}");
    for v in deep["violations"].as_array().unwrap() {
        let seg = &v["segments"][0];
        assert!(seg["object_key"].as_str().unwrap().starts_with("segments/"));
        if v["kind"].as_str().unwrap().starts_with("held_") {
            assert_eq!(seg["hold_ids"][0], hold_id.as_str(), "{v}");
        }
    }
    // Header mode checks headers only: the flipped body byte goes unnoticed.
    let header = json(&server.custody_ok(&["--json", "compliance", "report", "--as-of", &as_of]));
    let mut expected = planted.clone();
    expected.retain(|(k, _, _)| k != "held_corrupt");
    assert_eq!(violations(&header), expected, "{header}");
    // One camera only.
    let only_b = json(&server.custody_ok(&[
        "--json",
        "compliance",
        "report",
        "--as-of",
        &as_of,
        "--camera",
        "cam-b",
    ]));
    assert_eq!(
        violations(&only_b),
        [(
            "expired_unindexed".to_string(),
            "cam-b".to_string(),
            b[0].clone()
        )]
        .into(),
    );
    assert_eq!(only_b["cameras"].as_array().unwrap().len(), 1);

    // The HTML report: self-contained, one row per planted violation.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
    let dom = chromium_dom(&html, &tmp.path().join("chromium-profile"));
    assert_eq!(
        dom.matches("class=\"violation\"").count(),
        planted.len(),
        "{dom}"
    );
    for (kind, _, id) in &planted {
        assert!(dom.contains(kind.as_str()) && dom.contains(id.as_str()));
    }
    assert!(dom.contains(&as_of) && dom.contains("file://") && dom.contains("intact: "));

    // The human summary.
    let text = server.custody_ok(&["compliance", "report", "--as-of", &as_of]);
    assert!(text.contains("3 violation(s)"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_streams_progress_then_the_report_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let files = ffmpeg_segments(&tmp.path().join("ts"), 3, 2);
    ingest(&server, "cam-p", &files, secs(SystemClock.now(), -30));

    let mut client = ComplianceServiceClient::connect(server.addr.clone())
        .await
        .unwrap();
    let mut stream = client
        .run_report(pb::RunReportRequest {
            camera_ids: vec![],
            as_of: None,
            deep: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut progress = Vec::new();
    let mut report = None;
    while let Some(m) = stream.next().await {
        match m.unwrap().event.unwrap() {
            pb::run_report_response::Event::Progress(p) => {
                assert!(report.is_none(), "progress after the report");
                progress.push(p);
            }
            pb::run_report_response::Event::Report(r) => report = Some(r),
        }
    }
    let report = report.expect("a report");
    assert!(report.violations.is_empty());
    assert_eq!(report.objects_scanned, 3);
    let last = progress.last().expect("progress messages");
    assert_eq!((last.scanned, last.total), (3, 3));
    assert!(last.bytes_read > 0);
    assert!(progress.windows(2).all(|w| w[0].scanned <= w[1].scanned));

    let bad = client
        .run_report(pb::RunReportRequest {
            camera_ids: vec!["no spaces allowed".into()],
            as_of: None,
            deep: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let bad = client
        .run_report(pb::RunReportRequest {
            camera_ids: vec![],
            as_of: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            deep: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
}
