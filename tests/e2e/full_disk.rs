//! A full disk, on a real (small) tmpfs: uploads are refused with
//! RESOURCE_EXHAUSTED while `limits.min_free_bytes` is still free, so reads,
//! holds and the audit log keep working; when the disk fills all the same
//! (another writer), reads are refused rather than served unaudited; once
//! that space is freed reads resume, and once retention frees more (held
//! footage spared) ingest resumes, all without a restart; nothing
//! acknowledged is lost and the audit chain verifies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tonic::Code;

use crate::testkit::{
    audit_verify, eventually, files_under, json, put_bytes, read_all, secs, stored_objects, Server,
};

/// The tmpfs's size and the reserve the node keeps on it.
const DISK_MIB: u64 = 24;
const RESERVE: u64 = 6 * 1024 * 1024;
const SEGMENT: usize = 1_000_000;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes available to unprivileged writers on the file system of `dir`.
fn available(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df output {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// Distinct bytes for segment `i`.
fn payload(i: usize) -> Vec<u8> {
    (0..SEGMENT)
        .map(|j| (j * 31 + i * 7 + j / 997) as u8)
        .collect()
}

/// Writes to `path` until the file system refuses with ENOSPC.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create filler");
    let block = vec![0x5au8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_footage_keeps_the_audit_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={DISK_MIB}m"),
            "custody-test",
        ])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP a_full_disk_refuses_footage_keeps_the_audit_and_recovers: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Mounted(disk.clone());
    let config = tmp.path().join("custodyd.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nmin_free_bytes = {RESERVE}\n\
             [retention]\nsweeper_enabled = false\npolicy_grace_secs = 0\nhold_fence_secs = 1\n"
        ),
    )
    .unwrap();
    let data = disk.join("data");
    let server = Server::start(&data, Some(&config));

    // Uploads until the node refuses: for want of space, naming the limit,
    // with the reserve still (nearly: one upload's size) free.
    let mut acked = Vec::new();
    let refusal = loop {
        let i = acked.len();
        assert!(
            i < DISK_MIB as usize,
            "a {DISK_MIB} MiB disk took {i} MB without a refusal"
        );
        let start = secs(6 * i as i64);
        match put_bytes(
            &server,
            "cam-full",
            start,
            secs(6 * i as i64 + 6),
            &payload(i),
        )
        .await
        {
            Ok(r) => acked.push(r.segment_id),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("limits.min_free_bytes"),
        "{}",
        refusal.message()
    );
    assert!(acked.len() >= 10, "only {} segments fit", acked.len());
    let free = available(&disk);
    assert!(
        free + 2 * SEGMENT as u64 > RESERVE,
        "the reserve was eaten: {free} bytes free"
    );
    // Nothing half-written: one object per acknowledged segment, no staging file.
    assert_eq!(stored_objects(&data).len(), acked.len());
    assert!(files_under(&data.join("staging")).is_empty());

    // On the nearly full disk, footage is still served (and audited) and a
    // hold can be placed.
    for (i, id) in acked.iter().enumerate() {
        assert_eq!(
            read_all(&server, id).await.expect("read while nearly full"),
            payload(i)
        );
    }
    let hold = json(&server.custody_ok(&[
        "--json",
        "hold",
        "create",
        "--cameras",
        "cam-full",
        "--from",
        &secs(0).to_string(),
        "--to",
        &secs(12).to_string(),
        "--case",
        "CASE-FULL-1",
        "--reason",
        "disk full drill",
        "--principal",
        "investigator:eve",
    ]));
    assert_eq!(hold["covered_segments"], 2, "{hold}");

    // Another writer fills the disk: the audit log cannot be written, so
    // reads are refused rather than served unaudited; uploads are refused.
    let filler = disk.join("filler");
    fill(&filler);
    let e = eventually(
        Duration::from_secs(10),
        "a read refused on a full disk",
        || async { read_all(&server, &acked[0]).await.err() },
    )
    .await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("unaudited"), "{}", e.message());
    let e = put_bytes(&server, "cam-full", secs(6_000), secs(6_006), &payload(99))
        .await
        .expect_err("upload on a full disk");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Space is freed: reads and uploads resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    let back = eventually(
        Duration::from_secs(10),
        "reads after space was freed",
        || async { read_all(&server, &acked[0]).await.ok() },
    )
    .await;
    assert_eq!(back, payload(0));
    // Back to the reserve, not past it: footage is still refused until
    // retention frees space. It does, sparing the held segments, and
    // ingest resumes by itself.
    let e = put_bytes(&server, "cam-full", secs(6_000), secs(6_006), &payload(99))
        .await
        .expect_err("upload at the reserve");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    server.custody_ok(&["policy", "set", "--retain-for", "30d"]);
    let swept = json(&server.custody_ok(&["--json", "sweep"]));
    assert_eq!(
        swept["deleted"].as_array().map(Vec::len),
        Some(acked.len() - 2),
        "{swept}"
    );
    let late = put_bytes(&server, "cam-full", secs(6_000), secs(6_006), &payload(99))
        .await
        .expect("upload after retention freed space");
    assert_eq!(
        read_all(&server, &late.segment_id).await.unwrap(),
        payload(99)
    );
    for (i, id) in acked.iter().enumerate() {
        let read = read_all(&server, id).await;
        if i < 2 {
            assert_eq!(read.expect("held segment"), payload(i), "segment {i}");
        } else {
            assert_eq!(
                read.expect_err("expired segment").code(),
                Code::NotFound,
                "segment {i}"
            );
        }
    }

    // The refused read is on record as not served, and the chain verifies.
    let records =
        json(&server.custody_ok(&["--json", "audit", "ls", "--action", "archive.read_segment"]));
    let refused = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["outcome"] == "failed"
                && r["reason"]
                    .as_str()
                    .is_some_and(|m| m.contains("not served"))
        })
        .count();
    assert!(refused >= 1, "no refused read on record: {records}");
    let (ok, out) = audit_verify(&data, None);
    assert!(ok && out.contains("audit chain OK"), "{out}");
}
