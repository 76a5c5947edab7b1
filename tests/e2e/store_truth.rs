//! The store is the truth, whatever happens to the index or the client:
//! stored footage is never overwritten (also after the index is lost), a
//! lost index is rebuilt before serving (or the node refuses to start), a
//! frozen uploader does not hold its segment forever, a segment longer than
//! today's limits is still found, and retries are held to the same claims
//! as first uploads.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use custody_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::testkit::{
    chunk, eventually, files_under, finish, header, put, put_bytes, read_all, secs, stored_objects,
    Server, CUSTODYD,
};

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("custodyd.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Asserts `e` has `code` and a message naming `text`.
fn assert_refused(e: &tonic::Status, code: Code, text: &str) {
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(text), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_footage_is_never_overwritten_after_the_index_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let mut server = Server::start(&data, None);
    let first = put_bytes(&server, "cam-1", secs(0), secs(6), &a)
        .await
        .unwrap();
    assert!(!first.duplicate);
    server.custody_ok(&[
        "hold",
        "create",
        "--cameras",
        "cam-1",
        "--from",
        "2026-01-01T10:00:00Z",
        "--to",
        "2026-01-01T10:00:06Z",
        "--case",
        "CASE-1",
        "--reason",
        "evidence",
    ]);
    server.stop();
    std::fs::remove_dir_all(data.join("catalog")).unwrap();

    // The node notices the empty index over a full store and rebuilds
    // before it answers anything.
    let server = Server::start(&data, None);
    let cams = server.custody_ok(&["--json", "ls"]);
    assert!(
        cams.contains("cam-1"),
        "camera missing after restart: {cams}"
    );

    // Other bytes under the same id: refused, same and different end.
    for end in [secs(6), secs(5)] {
        let e = put_bytes(&server, "cam-1", secs(0), end, &b)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(e.message().contains("never replaced"), "{}", e.message());
    }
    // The same bytes again: a duplicate, answered with the stored receipt.
    let again = put_bytes(&server, "cam-1", secs(0), secs(6), &a)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.segment_id, first.segment_id);
    assert_eq!(read_all(&server, &first.segment_id).await.unwrap(), a);
    assert_eq!(stored_objects(&data).len(), 1, "one id, one object");

    // A rebuild finds exactly one object and no conflict.
    drop(server);
    let out = Command::new(CUSTODYD)
        .arg("--data-dir")
        .arg(&data)
        .args(["catalog", "rebuild"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 segments indexed"), "{stdout}");
    assert!(stdout.contains("0 segment id conflicts"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_before_serving_or_the_node_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, None);
    for i in 0..5 {
        put_bytes(
            &server,
            "cam-2",
            secs(i * 6),
            secs(i * 6 + 6),
            &[i as u8 + 1; 5000],
        )
        .await
        .unwrap();
    }
    server.stop();
    std::fs::remove_dir_all(data.join("catalog")).unwrap();

    // Refuse, naming the command, when told not to rebuild by itself.
    let config = write_config(tmp.path(), "[catalog]\nrebuild_on_start = false\n");
    let out = Command::new(CUSTODYD)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started over a lost index: {stderr}");
    assert!(stderr.contains("custodyd catalog rebuild"), "{stderr}");
    // Refusing wrote nothing that makes the next start believe the index is whole.
    let out = Command::new(CUSTODYD)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "second start over the lost index was allowed"
    );

    // The default rebuilds, logging what it does, before the first answer.
    let server = Server::start(&data, None);
    let listed = server.custody_ok(&[
        "--json",
        "ls",
        "cam-2",
        "--from",
        "2026-01-01T10:00:00Z",
        "--to",
        "2026-01-01T11:00:00Z",
    ]);
    assert_eq!(listed.matches("segment_id").count(), 5, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_uploader_does_not_hold_its_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), "[limits]\nupload_idle_timeout_secs = 5\n");
    let server = Server::start(&data, Some(&config));
    let payload = vec![7u8; 1 << 20];

    // A real client process (Python grpcio, raw protobuf bytes) sends the
    // header and 1 MiB, then is frozen with SIGSTOP.
    let msgs = [header("cam-3", secs(0), secs(6)), chunk(&payload)];
    let hex: Vec<String> = msgs
        .iter()
        .map(|m| hex::encode(m.encode_to_vec()))
        .collect();
    let script = r#"
import sys, grpc
addr = sys.argv[1]
msgs = []
for line in sys.stdin:
    if not line.strip():
        break
    msgs.append(bytes.fromhex(line.strip()))
def requests():
    for m in msgs:
        yield m
    print("sent", flush=True)
    sys.stdin.readline()
ch = grpc.insecure_channel(addr)
call = ch.stream_unary("/custody.v1.IngestService/PutSegment",
                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    call(requests(), timeout=600)
except Exception as e:
    print("ended", e, flush=True)
"#;
    let mut client = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server.addr.trim_start_matches("http://"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with grpcio (scripts/setup --test installs it)");
    // The messages, hex, one per line, then a blank line; stdin stays open.
    let mut stdin = client.stdin.take().unwrap();
    for h in &hex {
        writeln!(stdin, "{h}").unwrap();
    }
    writeln!(stdin).unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "sent");
    // The server holds the upload: an upload of the same segment that
    // sends only its header is refused as in progress (one that got past the
    // claim would be refused for ending early instead, storing nothing).
    eventually(
        Duration::from_secs(4),
        "the frozen upload holds its segment",
        || {
            let server = &server;
            async move {
                let e = put(server, vec![header("cam-3", secs(0), secs(6))])
                    .await
                    .unwrap_err();
                match e.code() {
                    Code::Aborted => Some(()),
                    Code::InvalidArgument => None,
                    _ => panic!("unexpected {e:?}"),
                }
            }
        },
    )
    .await;
    let stopped = Command::new("kill")
        .args(["-STOP", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let staging = data.join("staging");

    // A retry through another path is refused while the claim is held...
    let body = vec![9u8; 4096];
    let e = put_bytes(&server, "cam-3", secs(0), secs(6), &body)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    // ...and succeeds once the idle timeout released it, with the frozen
    // client's staging file gone.
    let stored = eventually(
        Duration::from_secs(30),
        "retry after the idle timeout",
        || {
            let server = &server;
            let body = &body;
            async move {
                match put_bytes(server, "cam-3", secs(0), secs(6), body).await {
                    Ok(r) => Some(r),
                    Err(e) if e.code() == Code::Aborted => None,
                    Err(e) => panic!("retry failed: {e:?}"),
                }
            }
        },
    )
    .await;
    assert!(!stored.duplicate);
    assert_eq!(read_all(&server, &stored.segment_id).await.unwrap(), body);
    assert!(
        files_under(&staging).is_empty(),
        "staging left behind: {:?}",
        files_under(&staging)
    );
    let _ = Command::new("kill")
        .args(["-KILL", &client.id().to_string()])
        .status();
    let _ = client.wait();
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_longer_than_todays_limit_is_still_found() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, None);
    let long = put_bytes(&server, "cam-4", secs(0), secs(600), &[3u8; 10_000])
        .await
        .unwrap();
    drop(server);
    let config = write_config(tmp.path(), "[limits]\nmax_segment_duration_secs = 60\n");
    let server = Server::start(&data, Some(&config));
    let page = server
        .archive()
        .await
        .list_segments(pb::ListSegmentsRequest {
            camera_id: "cam-4".into(),
            start: Some(crate::testkit::ts(secs(300))),
            end: Some(crate::testkit::ts(secs(310))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.segments.len(), 1);
    assert_eq!(page.segments[0].segment_id, long.segment_id);
    // New uploads obey the new limit.
    let e = put_bytes(&server, "cam-4", secs(1000), secs(1100), &[1u8; 100])
        .await
        .unwrap_err();
    assert_refused(&e, Code::InvalidArgument, "max_segment_duration_secs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_held_to_the_same_claims_and_empty_segments_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, None);
    let bytes = vec![5u8; 20_000];
    put_bytes(&server, "cam-5", secs(0), secs(6), &bytes)
        .await
        .unwrap();
    let wrong: [u8; 32] = Sha256::digest(b"other").into();

    // Wrong finish digest on a retry of stored bytes.
    let e = put(
        &server,
        vec![
            header("cam-5", secs(0), secs(6)),
            chunk(&bytes),
            finish(Some(wrong)),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("finish sha256"), "{}", e.message());

    // Wrong header digest and wrong declared size on a retry.
    let mut h = header("cam-5", secs(0), secs(6));
    if let Some(pb::put_segment_request::Part::Header(x)) = &mut h.part {
        x.sha256 = wrong.to_vec();
    }
    let e = put(&server, vec![h, chunk(&bytes), finish(None)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("header sha256"), "{}", e.message());
    let mut h = header("cam-5", secs(0), secs(6));
    if let Some(pb::put_segment_request::Part::Header(x)) = &mut h.part {
        x.size_bytes = Some(19_999);
    }
    let e = put(&server, vec![h, chunk(&bytes), finish(None)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("declared size"), "{}", e.message());

    // A zero-byte segment: refused, naming the limit, nothing stored.
    let before = stored_objects(&data).len();
    let e = put(
        &server,
        vec![header("cam-5", secs(60), secs(66)), finish(None)],
    )
    .await
    .unwrap_err();
    assert_refused(&e, Code::InvalidArgument, "limits.min_segment_bytes");
    assert_eq!(stored_objects(&data).len(), before);

    // A message over the size limit names the limit.
    let e = put(
        &server,
        vec![
            header("cam-5", secs(120), secs(126)),
            chunk(&vec![1u8; 5 << 20]),
            finish(None),
        ],
    )
    .await
    .unwrap_err();
    assert_refused(&e, Code::InvalidArgument, "limits.max_message_bytes");
    assert_eq!(stored_objects(&data).len(), before);

    // A unary request over the limit too (tonic refuses it before any
    // handler runs).
    let e = server
        .archive()
        .await
        .list_segments(pb::ListSegmentsRequest {
            camera_id: "x".repeat(5 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(&e, Code::InvalidArgument, "limits.max_message_bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_exports_fit_a_lowered_message_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "[limits]\nmax_message_bytes = 262144\n");
    let server = Server::start(&tmp.path().join("data"), Some(&config));
    let data: Vec<u8> = (0..900_000u32).map(|i| (i % 253) as u8).collect();
    let r = put_bytes(&server, "cam-6", secs(0), secs(6), &data)
        .await
        .unwrap();
    assert_eq!(read_all(&server, &r.segment_id).await.unwrap(), data);
    let out = tmp.path().join("clip.ts");
    server.custody_ok(&[
        "export",
        "cam-6",
        "--from",
        "2026-01-01T10:00:00Z",
        "--to",
        "2026-01-01T10:00:06Z",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}
