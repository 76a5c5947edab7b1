//! Evidence bundles with the real server: a hold's footage exported as a
//! signed directory verifies offline (with `custody evidence verify`, and
//! with `sha256sum -c` and `openssl pkeyutl`); changing, adding or removing
//! any file makes verification fail naming it; the segments play (ffprobe).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testkit::{ffmpeg_segments, ffprobe_duration, files_under, Server};
use custody_core::{Clock, SystemClock, Timestamp};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

fn secs(t: Timestamp, s: i64) -> Timestamp {
    t.saturating_add_nanos(s * 1_000_000_000)
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// Runs `custody evidence verify` on `dir`: (success, stdout).
fn verify(server: &Server, dir: &Path) -> (bool, String) {
    let out = server.custody(&["evidence", "verify", dir.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_bundle_exports_verifies_and_names_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, None);
    let files = ffmpeg_segments(&tmp.path().join("ts"), 3, 2);
    let start = secs(SystemClock.now(), -60);
    let mut args = vec![
        "--json".to_string(),
        "ingest".into(),
        "--camera".into(),
        "cam-e".into(),
        "--start".into(),
        start.to_string(),
        "--segment-duration".into(),
        "2".into(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ids: Vec<String> = server
        .custody_ok(&args)
        .lines()
        .map(|l| json(l)["segment_id"].as_str().unwrap().to_string())
        .collect();
    let hold = json(&server.custody_ok(&[
        "--json",
        "hold",
        "create",
        "--cameras",
        "cam-e",
        "--from",
        &start.to_string(),
        "--to",
        &secs(start, 3).to_string(),
        "--case",
        "CASE-2026-0099",
        "--reason",
        "theft at platform 3",
        "--principal",
        "investigator:bob",
    ]));
    let hold_id = hold["hold"]["hold_id"].as_str().unwrap().to_string();

    let bundle = tmp.path().join("bundle");
    let out = json(&server.custody_ok(&[
        "--json",
        "evidence",
        "export",
        "--hold",
        &hold_id,
        "--out",
        bundle.to_str().unwrap(),
        "--principal",
        "investigator:bob",
    ]));
    let key_id = out["key_id"].as_str().unwrap().to_string();
    let (ok, text) = verify(&server, &bundle);
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");

    // The manifest: scope, hold, files, key, audit records.
    let manifest = json(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap());
    assert_eq!(manifest["scope"]["hold_id"], hold_id.as_str());
    assert_eq!(manifest["scope"]["cameras"][0], "cam-e");
    assert_eq!(manifest["hold"]["case_id"], "CASE-2026-0099");
    assert_eq!(manifest["release"], serde_json::Value::Null);
    // The footage's chain of custody: its ingest and the hold, from the audit chain.
    let actions: Vec<&str> = manifest["audit_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["object"].as_str().unwrap().starts_with("audit/"), "{r}");
            r["action"].as_str().unwrap()
        })
        .collect();
    assert!(actions.contains(&"ingest.put_segment"), "{actions:?}");
    assert!(actions.contains(&"hold.create"), "{actions:?}");
    assert_eq!(manifest["signing_key"]["key_id"], key_id.as_str());
    assert!(manifest["exported_by"]
        .as_str()
        .unwrap()
        .contains("investigator:bob"));
    let segs: Vec<&serde_json::Value> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "segment")
        .collect();
    assert_eq!(segs.len(), 2, "the hold covers the first two segments");
    // Decrypted bytes are the camera's bytes, and they play.
    for (f, (id, original)) in segs.iter().zip(ids.iter().zip(&files)) {
        assert_eq!(f["segment_id"], id.as_str());
        let path = bundle.join(f["path"].as_str().unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(original).unwrap()
        );
        let d = ffprobe_duration(&path);
        assert!((1.5..2.5).contains(&d), "{} lasts {d} s", path.display());
    }
    // The public key is the one published in the store.
    let published = data
        .join("objects")
        .join("signing")
        .join(format!("{key_id}.pub"));
    assert_eq!(
        std::fs::read(&published).unwrap(),
        std::fs::read(bundle.join("signing.pub.pem")).unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = data.join("keys").join("signing-ed25519.key");
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Standard tools: sha256sum and openssl.
    let sums = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&bundle)
        .output()
        .expect("sha256sum");
    assert!(
        sums.status.success(),
        "{}",
        String::from_utf8_lossy(&sums.stdout)
    );
    let openssl_verify = |dir: &Path| {
        Command::new("openssl")
            .args([
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                "signing.pub.pem",
                "-rawin",
                "-in",
                "manifest.json",
                "-sigfile",
                "manifest.json.sig",
            ])
            .current_dir(dir)
            .output()
            .expect("openssl")
    };
    if openssl_available() {
        let o = openssl_verify(&bundle);
        assert!(
            o.status.success(),
            "openssl: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!("openssl not installed: skipping the openssl check of the signature");
    }

    // Tampering: every change is named.
    let seg_path = segs[0]["path"].as_str().unwrap().to_string();
    type Tamper = Box<dyn Fn(&Path)>;
    let seg = seg_path.clone();
    let cases: Vec<(&str, String, Tamper)> = vec![
        (
            "changed",
            seg_path.clone(),
            Box::new(move |d: &Path| {
                let p = d.join(&seg);
                let mut b = std::fs::read(&p).unwrap();
                b[1000] ^= 0x80;
                std::fs::write(&p, b).unwrap();
            }),
        ),
        (
            "added",
            "segments/cam-e/extra.ts".to_string(),
            Box::new(|d: &Path| std::fs::write(d.join("segments/cam-e/extra.ts"), b"x").unwrap()),
        ),
        (
            "removed",
            segs[1]["path"].as_str().unwrap().to_string(),
            Box::new({
                let p = segs[1]["path"].as_str().unwrap().to_string();
                move |d: &Path| std::fs::remove_file(d.join(&p)).unwrap()
            }),
        ),
        (
            "changed",
            "README.txt".to_string(),
            Box::new(|d: &Path| std::fs::write(d.join("README.txt"), b"trust me").unwrap()),
        ),
        (
            "changed",
            "SHA256SUMS".to_string(),
            Box::new(|d: &Path| {
                let p = d.join("SHA256SUMS");
                let mut s = std::fs::read_to_string(&p).unwrap();
                s.push_str("00  nothing\n");
                std::fs::write(p, s).unwrap();
            }),
        ),
        (
            "changed",
            "manifest.json".to_string(),
            Box::new(|d: &Path| {
                let p = d.join("manifest.json");
                let s = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("CASE-2026-0099", "CASE-2026-0098");
                std::fs::write(p, s).unwrap();
            }),
        ),
        (
            "removed",
            "manifest.json.sig".to_string(),
            Box::new(|d: &Path| std::fs::remove_file(d.join("manifest.json.sig")).unwrap()),
        ),
    ];
    for (i, (what, name, tamper)) in cases.iter().enumerate() {
        let copy: PathBuf = tmp.path().join(format!("tampered-{i}"));
        copy_dir(&bundle, &copy);
        assert!(verify(&server, &copy).0, "a faithful copy verifies");
        tamper(&copy);
        let (ok, text) = verify(&server, &copy);
        assert!(!ok, "{what} {name}: verify passed: {text}");
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{what}:")) && l.contains(name.as_str())),
            "{what} {name} not named: {text}"
        );
        if name == "manifest.json" && openssl_available() {
            assert!(!openssl_verify(&copy).status.success());
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }

    // After release, the release record is in the manifest; a camera × range
    // export takes every overlapping segment.
    server.custody_ok(&[
        "hold",
        "release",
        &hold_id,
        "--reason",
        "case closed",
        "--principal",
        "supervisor:carol",
    ]);
    let again = tmp.path().join("bundle-2");
    server.custody_ok(&[
        "evidence",
        "export",
        "--hold",
        &hold_id,
        "--out",
        again.to_str().unwrap(),
    ]);
    let m2 = json(&std::fs::read_to_string(again.join("manifest.json")).unwrap());
    assert!(m2["release"]["released_by"]
        .as_str()
        .unwrap()
        .contains("supervisor:carol"));
    let by_range = tmp.path().join("bundle-3");
    server.custody_ok(&[
        "evidence",
        "export",
        "--camera",
        "cam-e",
        "--from",
        &start.to_string(),
        "--to",
        &secs(start, 6).to_string(),
        "--out",
        by_range.to_str().unwrap(),
    ]);
    assert!(verify(&server, &by_range).0);
    let m3 = json(&std::fs::read_to_string(by_range.join("manifest.json")).unwrap());
    assert_eq!(
        m3["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "segment")
            .count(),
        3
    );

    // Bad requests change nothing.
    let out = server.custody(&[
        "evidence",
        "export",
        "--hold",
        "0123456789abcdef0123456789abcdef",
        "--out",
        tmp.path().join("none").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    assert!(!tmp.path().join("none").exists() && !tmp.path().join("none.partial").exists());
    let out = server.custody(&[
        "evidence",
        "export",
        "--hold",
        &hold_id,
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "refuses to overwrite a bundle");
}
