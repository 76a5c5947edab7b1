//! Crash test: `kill -9` the server at random moments during a stream of
//! uploads; after restart every acknowledged segment reads back byte-identical
//! and nothing unacknowledged is visible half-written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::testkit::{files_under, read_all, ts, Server};
use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::put_segment_request::Part;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

fn payload(i: u64, rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let len = rng.gen_range(1_000..3_000_000);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v[..8].copy_from_slice(&i.to_be_bytes());
    v
}

fn start_of(i: u64) -> Timestamp {
    Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .saturating_add_nanos(i as i64 * 6_000_000_000)
}

async fn upload(
    addr: String,
    i: u64,
    data: Vec<u8>,
) -> Result<pb::PutSegmentResponse, tonic::Status> {
    let mut client = custody_proto::v1::ingest_service_client::IngestServiceClient::connect(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let sha: [u8; 32] = Sha256::digest(&data).into();
    let mut msgs = vec![pb::PutSegmentRequest {
        part: Some(Part::Header(pb::SegmentHeader {
            camera_id: "crash-cam".into(),
            stream: "main".into(),
            start: Some(ts(start_of(i))),
            end: Some(ts(start_of(i + 1))),
            media_type: "video/mp2t".into(),
            ..Default::default()
        })),
    }];
    msgs.extend(data.chunks(256 * 1024).map(|c| pb::PutSegmentRequest {
        part: Some(Part::Chunk(bytes::Bytes::copy_from_slice(c))),
    }));
    msgs.push(pb::PutSegmentRequest {
        part: Some(Part::Finish(pb::SegmentFinish {
            sha256: sha.to_vec(),
        })),
    });
    client
        .put_segment(futures::stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_loses_nothing_acknowledged() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = Server::start(&data_dir, None);
    let attempted: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let mut acked: HashMap<u64, (String, Vec<u8>)> = HashMap::new();
    let mut next = 0u64;
    // Several uploads in flight, so kills land inside group commits that
    // carry more than one segment.
    const UPLOADERS: u64 = 4;
    for round in 0..8 {
        let first = next;
        let mut uploaders = Vec::new();
        for k in 0..UPLOADERS {
            let addr = server.addr.clone();
            let att = attempted.clone();
            let mut task_rng = rand::rngs::StdRng::seed_from_u64(rng.gen());
            uploaders.push(tokio::spawn(async move {
                let mut done = Vec::new();
                let mut i = first + k;
                loop {
                    let data = payload(i, &mut task_rng);
                    att.lock().unwrap().insert(i, data.clone());
                    match upload(addr.clone(), i, data.clone()).await {
                        Ok(r) => done.push((i, r.segment_id, data)),
                        Err(_) => return (done, i),
                    }
                    i += UPLOADERS;
                }
            }));
        }
        // The kill moment is random; correctness never depends on it.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
        server.kill9();
        let mut interrupted = Vec::new();
        for u in uploaders {
            let (done, in_flight) = u.await.unwrap();
            println!(
                "round {round}: {} acknowledged, killed during #{in_flight}",
                done.len()
            );
            for (i, id, data) in done {
                acked.insert(i, (id, data));
            }
            interrupted.push(in_flight);
            next = next.max(in_flight + 1);
        }
        server = server.restart();

        // Every acknowledged segment reads back byte-identical.
        for (i, (id, data)) in &acked {
            let got = read_all(&server, id)
                .await
                .unwrap_or_else(|e| panic!("acked #{i} {id} unreadable: {e:?}"));
            assert!(got == *data, "acked #{i} {id} differs after crash");
        }
        // Everything visible is whole and was attempted: nothing half-written.
        let mut token = String::new();
        loop {
            let r = server
                .archive()
                .await
                .list_segments(pb::ListSegmentsRequest {
                    camera_id: "crash-cam".into(),
                    start: Some(ts(start_of(0))),
                    end: Some(ts(start_of(next + 1))),
                    page_size: 1000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            for s in &r.segments {
                let got = read_all(&server, &s.segment_id)
                    .await
                    .unwrap_or_else(|e| panic!("visible {} unreadable: {e:?}", s.segment_id));
                let i = u64::from_be_bytes(got[..8].try_into().unwrap());
                assert_eq!(
                    attempted.lock().unwrap().get(&i),
                    Some(&got),
                    "visible segment {} is not a whole upload",
                    s.segment_id
                );
            }
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        // The new process stages its own writes (audit records) meanwhile;
        // staging files are named `{pid}-{n}.tmp`.
        let ours = format!("{}-", server.child.id());
        let left: Vec<_> = files_under(&data_dir.join("staging"))
            .into_iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with(&ours))
            .collect();
        assert!(
            left.is_empty(),
            "staging files survived a restart: {left:?}"
        );
        // The interrupted uploads, retried, are each stored exactly once.
        for in_flight in interrupted {
            let data = attempted.lock().unwrap()[&in_flight].clone();
            let r = upload(server.addr.clone(), in_flight, data.clone())
                .await
                .expect("retry after restart");
            if let Some((id, _)) = acked.get(&in_flight) {
                assert_eq!(*id, r.segment_id);
            }
            acked.insert(in_flight, (r.segment_id, data));
        }
    }
    assert!(acked.len() >= 8 * UPLOADERS as usize);
}
