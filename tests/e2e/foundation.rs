//! End-to-end tests of the foundation: real `custodyd` processes, the real
//! `custody` client, ffmpeg-made H.264 MPEG-TS segments, a real store directory.

use crate::testkit;

use std::collections::HashSet;
use std::process::Command;

use crate::testkit::{
    chunk, ffmpeg_segments, ffprobe_duration, files_under, finish, header, json, put, put_bytes,
    read_all, secs, stored_objects, t0, ts, Server,
};
use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::put_segment_request::Part;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::Code;

/// 32-byte aligned blocks of `input` that appear anywhere in `haystack`.
fn plaintext_runs(input: &[u8], stored: &[Vec<u8>]) -> usize {
    const W: usize = 32;
    let mut windows: HashSet<&[u8]> = HashSet::new();
    for s in stored {
        for w in s.windows(W) {
            windows.insert(w);
        }
    }
    input
        .chunks_exact(W)
        .filter(|b| b.iter().any(|&x| x != b[0])) // constant runs (padding) say nothing
        .filter(|b| windows.contains(*b))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_segments_round_trip_list_read_export() {
    let tmp = tempfile::tempdir().unwrap();
    let files = ffmpeg_segments(&tmp.path().join("src"), 3, 2);
    let data_dir = tmp.path().join("data");
    let server = Server::start(&data_dir, None);

    let mut args = vec!["--json", "ingest"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let start = t0().to_string();
    args.extend([
        "--camera",
        "cam-001",
        "--start",
        &start,
        "--segment-duration",
        "2",
    ]);
    let out = server.custody_ok(&args);
    let ids: Vec<String> = out
        .lines()
        .map(|l| json(l)["segment_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);

    // Listing by time range: [2.5 s, 3.5 s) overlaps only the second segment.
    let (a, b) = (
        secs(2).saturating_add_nanos(500_000_000).to_string(),
        secs(3).saturating_add_nanos(500_000_000).to_string(),
    );
    let listed = json(&server.custody_ok(&["--json", "ls", "cam-001", "--from", &a, "--to", &b]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["segment_id"], ids[1].as_str());
    let all = json(&server.custody_ok(&[
        "--json",
        "ls",
        "cam-001",
        "--from",
        &secs(-60).to_string(),
        "--to",
        &secs(60).to_string(),
    ]));
    assert_eq!(all.as_array().unwrap().len(), 3);
    let cams = json(&server.custody_ok(&["--json", "ls"]));
    assert_eq!(cams[0]["camera_id"], "cam-001");
    assert_eq!(cams[0]["segments"], 3);

    // Byte-identical reads, whole and ranged.
    for (id, file) in ids.iter().zip(&files) {
        let original = std::fs::read(file).unwrap();
        let out = tmp.path().join(format!("{id}.ts"));
        server.custody_ok(&["get", id, "-o", out.to_str().unwrap()]);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            original,
            "segment {id} differs"
        );
        let part = tmp.path().join(format!("{id}.part.ts"));
        let (off, len) = (original.len() / 3 + 1, original.len() / 3);
        server.custody_ok(&[
            "get",
            id,
            "-o",
            part.to_str().unwrap(),
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
        ]);
        assert_eq!(std::fs::read(&part).unwrap(), original[off..off + len]);
    }

    // The exported clip is valid MPEG-TS of the right duration.
    let clip = tmp.path().join("clip.ts");
    server.custody_ok(&[
        "export",
        "cam-001",
        "--from",
        &t0().to_string(),
        "--to",
        &secs(6).to_string(),
        "-o",
        clip.to_str().unwrap(),
    ]);
    let d = ffprobe_duration(&clip);
    assert!((d - 6.0).abs() < 0.5, "clip lasts {d} s, expected 6");

    // No stored file holds a plaintext run of the input.
    // (A staging file of an audit write may vanish between listing and reading.)
    let stored: Vec<Vec<u8>> = files_under(&data_dir)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    assert!(stored_objects(&data_dir).len() == 3);
    for f in &files {
        let input = std::fs::read(f).unwrap();
        assert_eq!(
            plaintext_runs(&input, &stored),
            0,
            "plaintext of {} found at rest",
            f.display()
        );
    }
    // The check itself can fail: the input does contain itself.
    assert!(
        plaintext_runs(
            &std::fs::read(&files[0]).unwrap(),
            &[std::fs::read(&files[0]).unwrap()]
        ) > 100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_status_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("custodyd.toml");
    std::fs::write(&config, "[limits]\nmax_segment_bytes = 100000\nmax_segment_duration_secs = 60\nmax_query_span_secs = 3600\n").unwrap();
    let server = Server::start(&tmp.path().join("data"), Some(&config));
    let data = vec![7u8; 5000];
    let sha: [u8; 32] = Sha256::digest(&data).into();

    let cases: Vec<(&str, Vec<pb::PutSegmentRequest>, Code, &str)> = vec![
        (
            "end before start",
            vec![
                header("cam-1", secs(6), secs(0)),
                chunk(&data),
                finish(None),
            ],
            Code::InvalidArgument,
            "not after start",
        ),
        (
            "end equals start",
            vec![
                header("cam-1", secs(6), secs(6)),
                chunk(&data),
                finish(None),
            ],
            Code::InvalidArgument,
            "not after start",
        ),
        (
            "too long",
            vec![
                header("cam-1", secs(0), secs(61)),
                chunk(&data),
                finish(None),
            ],
            Code::InvalidArgument,
            "max_segment_duration_secs",
        ),
        (
            "too large",
            vec![
                header("cam-1", secs(0), secs(6)),
                chunk(&vec![1u8; 60000]),
                chunk(&vec![1u8; 60000]),
                finish(None),
            ],
            Code::InvalidArgument,
            "max_segment_bytes",
        ),
        (
            "cut off",
            vec![header("cam-1", secs(0), secs(6)), chunk(&data)],
            Code::InvalidArgument,
            "without its finish",
        ),
        (
            "wrong digest",
            vec![
                header("cam-1", secs(0), secs(6)),
                chunk(&data),
                finish(Some([0u8; 32])),
            ],
            Code::InvalidArgument,
            "does not match",
        ),
        (
            "malformed camera",
            vec![
                header("cam/../1", secs(0), secs(6)),
                chunk(&data),
                finish(Some(sha)),
            ],
            Code::InvalidArgument,
            "camera id",
        ),
        (
            "no header",
            vec![chunk(&data), finish(None)],
            Code::InvalidArgument,
            "header",
        ),
        (
            "from the future",
            vec![
                header("cam-1", secs(400 * 86400), secs(400 * 86400 + 6)),
                chunk(&data),
                finish(Some(sha)),
            ],
            Code::InvalidArgument,
            "max_clock_skew_secs",
        ),
        (
            "short digest",
            vec![
                header("cam-1", secs(0), secs(6)),
                chunk(&data),
                pb::PutSegmentRequest {
                    part: Some(Part::Finish(pb::SegmentFinish {
                        sha256: vec![1, 2, 3],
                    })),
                },
            ],
            Code::InvalidArgument,
            "32 bytes",
        ),
    ];
    for (name, msgs, code, needle) in cases {
        let err = put(&server, msgs).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{name}: message {:?} lacks {needle:?}",
            err.message()
        );
    }

    let mut archive = server.archive().await;
    let list = |camera: &str, a: Timestamp, b: Timestamp| pb::ListSegmentsRequest {
        camera_id: camera.into(),
        start: Some(ts(a)),
        end: Some(ts(b)),
        ..Default::default()
    };
    let e = archive
        .list_segments(list("cam-1", secs(0), secs(10)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = archive
        .list_segments(list("bad camera", secs(0), secs(10)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = archive
        .read_segment(pb::ReadSegmentRequest {
            segment_id: "xyz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = archive
        .read_segment(pb::ReadSegmentRequest {
            segment_id: "0".repeat(32),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Nothing was stored by any of it.
    assert!(archive
        .list_cameras(pb::ListCamerasRequest {})
        .await
        .unwrap()
        .into_inner()
        .cameras
        .is_empty());
    assert!(stored_objects(&server.data_dir).is_empty());
    // Audit records of these refusals are being written (staged) meanwhile;
    // an abandoned upload's staging file would never go away.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !files_under(&server.data_dir.join("staging")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "staging files left: {:?}",
            files_under(&server.data_dir.join("staging"))
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A good upload still works, and range checks apply to listings.
    let ok = put_bytes(&server, "cam-1", secs(0), secs(6), &data)
        .await
        .unwrap();
    assert_eq!(ok.size_bytes, 5000);
    let e = archive
        .list_segments(list("cam-1", secs(0), secs(3601)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max_query_span_secs"));
    let e = archive
        .list_segments(list("cam-1", secs(10), secs(0)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = archive
        .read_segment(pb::ReadSegmentRequest {
            segment_id: ok.segment_id.clone(),
            offset: 5001,
            length: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_upload_is_idempotent_and_conflicts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let a = put_bytes(&server, "cam-1", secs(0), secs(6), &data)
        .await
        .unwrap();
    let b = put_bytes(&server, "cam-1", secs(0), secs(6), &data)
        .await
        .unwrap();
    assert_eq!(a.segment_id, b.segment_id);
    assert!(!a.duplicate && b.duplicate);
    let e = put_bytes(&server, "cam-1", secs(0), secs(6), b"other bytes")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(stored_objects(&server.data_dir).len(), 1);
    assert_eq!(read_all(&server, &a.segment_id).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_swapped_objects_are_data_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let a = put_bytes(&server, "cam-a", secs(0), secs(6), &vec![1u8; 200_000])
        .await
        .unwrap();
    let b = put_bytes(&server, "cam-b", secs(0), secs(6), &vec![2u8; 200_000])
        .await
        .unwrap();
    let c = put_bytes(&server, "cam-c", secs(0), secs(6), &vec![3u8; 200_000])
        .await
        .unwrap();
    let objects = stored_objects(&server.data_dir);
    let find = |cam: &str| {
        objects
            .iter()
            .find(|p| p.to_str().unwrap().contains(&format!("/{cam}/")))
            .unwrap()
            .clone()
    };
    let (pa, pb_, pc) = (find("cam-a"), find("cam-b"), find("cam-c"));
    // Swap a and b.
    let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb_).unwrap());
    std::fs::write(&pa, &bb).unwrap();
    std::fs::write(&pb_, &ba).unwrap();
    // Flip one byte in the middle of c.
    let mut bc = std::fs::read(&pc).unwrap();
    let mid = bc.len() / 2;
    bc[mid] ^= 0x40;
    std::fs::write(&pc, &bc).unwrap();
    for id in [&a.segment_id, &b.segment_id, &c.segment_id] {
        let e = read_all(&server, id).await.unwrap_err();
        assert_eq!(e.code(), Code::DataLoss, "{id}: {e:?}");
    }
    // A missing object is data loss too.
    std::fs::remove_file(&pc).unwrap();
    assert_eq!(
        read_all(&server, &c.segment_id).await.unwrap_err().code(),
        Code::DataLoss
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_rebuild_gives_identical_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let server = Server::start(&data_dir, None);
    for cam in ["cam-1", "cam-2"] {
        for i in 0..7 {
            let bytes: Vec<u8> = (0..50_000u32).map(|x| (x as u8) ^ (i as u8)).collect();
            put_bytes(&server, cam, secs(i * 6), secs(i * 6 + 6), &bytes)
                .await
                .unwrap();
        }
    }
    let snapshot = |s: &Server| {
        let cams = s.custody_ok(&["--json", "ls"]);
        let a = s.custody_ok(&[
            "--json",
            "ls",
            "cam-1",
            "--from",
            &secs(-10).to_string(),
            "--to",
            &secs(100).to_string(),
        ]);
        let b = s.custody_ok(&[
            "--json",
            "ls",
            "cam-2",
            "--from",
            &secs(7).to_string(),
            "--to",
            &secs(20).to_string(),
        ]);
        (cams, a, b)
    };
    let before = snapshot(&server);
    let mut server = server;
    server.kill9();
    std::fs::remove_dir_all(data_dir.join("catalog")).unwrap();
    let out = Command::new(testkit::CUSTODYD)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "catalog",
            "rebuild",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("14 segments indexed"));
    let server = Server::start(&data_dir, None);
    assert_eq!(snapshot(&server), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_standard_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "custody.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected {msg:?}")
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "custody.v1.IngestService",
        "custody.v1.ArchiveService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(s), "{s} missing from {names:?}");
    }
}

/// ffmpeg's segment muxer writes real-time segments named by wall clock; the
/// watcher starts before the server, retries until it is up, uploads each
/// closed segment with its real time range, and re-running it stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_ffmpeg_segment_list_through_server_downtime() {
    testkit::require("ffmpeg");
    let tmp = tempfile::tempdir().unwrap();
    let cam_dir = tmp.path().join("cam");
    std::fs::create_dir_all(&cam_dir).unwrap();
    // Reserve a port for the server-to-be so the watcher can target it first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{port}");
    let mut watcher = Command::new(testkit::CUSTODY)
        .args([
            "--server",
            &addr,
            "ingest",
            "--watch",
            cam_dir.to_str().unwrap(),
            "--camera",
            "cam-w",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ffmpeg = Command::new("ffmpeg")
        .current_dir(&cam_dir)
        .env("TZ", "UTC")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25:duration=6",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-f",
            "segment",
            "-segment_time",
            "2",
        ])
        .args([
            "-segment_list",
            "segments.csv",
            "-segment_list_type",
            "csv",
            "-strftime",
            "1",
            "w-%Y%m%d-%H%M%S.ts",
        ])
        .status()
        .unwrap();
    assert!(ffmpeg.success());
    let listed = std::fs::read_to_string(cam_dir.join("segments.csv")).unwrap();
    let n = listed.lines().count();
    assert!(n >= 3, "ffmpeg listed {n} segments");
    // Only now does the server come up, on the port the watcher is retrying.
    let data_dir = tmp.path().join("data");
    let server = {
        let mut cmd = Command::new(testkit::CUSTODYD);
        cmd.args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert!(line.contains("listening"), "{line}");
        Server {
            child,
            addr: addr.clone(),
            data_dir: data_dir.clone(),
            config: None,
        }
    };
    // Wait (bounded) for the watcher to catch up: the condition, not the time, ends the wait.
    let now = custody_core::Clock::now(&custody_core::SystemClock);
    let from = now.saturating_add_nanos(-86_400_000_000_000).to_string();
    let to = now.saturating_add_nanos(86_400_000_000_000);
    let mut segments = Vec::new();
    for _ in 0..300 {
        let out = server.custody(&[
            "--json",
            "ls",
            "cam-w",
            "--from",
            &from,
            "--to",
            &to.to_string(),
        ]);
        if out.status.success() {
            segments = json(&String::from_utf8_lossy(&out.stdout))
                .as_array()
                .unwrap()
                .clone();
            if segments.len() == n {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(
        segments.len(),
        n,
        "watcher stored {} of {n} segments",
        segments.len()
    );
    // Real, contiguous time ranges taken from the names and the list.
    for w in segments.windows(2) {
        assert_eq!(w[0]["end"], w[1]["start"], "ranges do not tile: {w:?}");
    }
    let first_name = listed.lines().next().unwrap().split(',').next().unwrap();
    let stamp = first_name[2..17].replace('-', "T"); // w-YYYYmmdd-HHMMSS.ts
    let start = segments[0]["start"]
        .as_str()
        .unwrap()
        .replace(['-', ':'], "");
    assert_eq!(
        start[..15],
        stamp,
        "first segment starts at its file's wall-clock time"
    );
    let watch_once = || {
        server.custody_ok(&[
            "--json",
            "ingest",
            "--watch",
            cam_dir.to_str().unwrap(),
            "--camera",
            "cam-w",
            "--once",
        ])
    };
    // Running again uploads nothing (state file); without the state file the
    // server answers every upload as a duplicate: nothing stored twice.
    let again = watch_once();
    assert_eq!(json(&again)["uploaded"], 0);
    assert_eq!(json(&again)["duplicates"], 0);
    std::fs::remove_file(cam_dir.join(custody_cli::watch::STATE_FILE)).unwrap();
    let again = watch_once();
    assert_eq!(json(&again)["uploaded"], 0);
    assert_eq!(json(&again)["duplicates"], n);
    assert_eq!(stored_objects(&data_dir).len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_store_directory_is_not_recreated_under_a_full_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = Server::start(&data_dir, None);
    put_bytes(&server, "cam-1", secs(0), secs(6), b"footage")
        .await
        .unwrap();
    server.kill9();
    // The disk holding the objects is "unmounted".
    std::fs::rename(data_dir.join("objects"), tmp.path().join("unmounted")).unwrap();
    let out = Command::new(testkit::CUSTODYD)
        .args([
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the disk mounted"), "{err}");
    assert!(
        !data_dir.join("objects").exists(),
        "an empty store directory was created"
    );
    // Mounted again, everything is there.
    std::fs::rename(tmp.path().join("unmounted"), data_dir.join("objects")).unwrap();
    let server = Server::start(&data_dir, None);
    let cams = json(&server.custody_ok(&["--json", "ls"]));
    assert_eq!(cams[0]["segments"], 1);
}
