//! The `custody` client as an operator uses it: output to stdout, evidence
//! directories, progress while watching, chunk sizes the server accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::Digest;

use crate::testkit::{self, Server};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

/// RFC 3339 of now plus `secs`.
fn now_plus(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Runs `custody --server ADDR ARGS` in `cwd`.
fn custody_in(server: &Server, cwd: &Path, args: &[&str]) -> Output {
    Command::new(testkit::CUSTODY)
        .current_dir(cwd)
        .arg("--server")
        .arg(&server.addr)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run custody")
}

/// Runs `cmd` to completion, failing the test (and killing it) if it is
/// still running after `limit`: a command that retries forever fails instead of hanging.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} was still running after {limit:?}");
        }
    }
}

/// Every file or directory under `dir` whose name ends in `.partial`.
fn partials_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.to_string_lossy().ends_with(".partial") {
                out.push(p.clone());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Uploads `files` as consecutive 2 s segments of `camera` starting a minute
/// ago; returns their segment ids.
fn ingest_files(server: &Server, camera: &str, files: &[PathBuf]) -> (String, Vec<String>) {
    let start = now_plus(-60);
    let mut args = vec![
        "--json".to_string(),
        "ingest".into(),
        "--camera".into(),
        camera.into(),
        "--start".into(),
        start.clone(),
        "--segment-duration".into(),
        "2".into(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ids = server
        .custody_ok(&args)
        .lines()
        .map(|l| json(l)["segment_id"].as_str().unwrap().to_string())
        .collect();
    (start, ids)
}

/// `-o -` is stdout: the segment's bytes and nothing else go there (the
/// summary goes to stderr), and no file named `-` appears.
#[test]
fn get_and_export_with_dash_output_write_to_stdout_only() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let files = testkit::ffmpeg_segments(&tmp.path().join("ts"), 2, 2);
    let (start, ids) = ingest_files(&server, "cam-g", &files);
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();

    for json_flag in [false, true] {
        let mut args = vec!["get", &ids[0], "-o", "-"];
        if json_flag {
            args.insert(0, "--json");
        }
        let out = custody_in(&server, &cwd, &args);
        assert!(
            out.status.success(),
            "custody {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let original = std::fs::read(&files[0]).unwrap();
        assert_eq!(
            out.stdout.len(),
            original.len(),
            "stdout carries exactly the segment ({args:?})"
        );
        assert!(out.stdout == original, "stdout is the segment's bytes");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&original.len().to_string()),
            "the summary goes to stderr: {stderr}"
        );
    }

    let to = now_plus(-56);
    let out = custody_in(
        &server,
        &cwd,
        &["export", "cam-g", "--from", &start, "--to", &to, "-o", "-"],
    );
    assert!(
        out.status.success(),
        "custody export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
    assert_eq!(out.stdout[0], 0x47, "stdout starts with an MPEG-TS packet");
    assert_eq!(out.stdout.len() % 188, 0, "stdout is whole MPEG-TS packets");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 segments"));

    let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().flatten().collect();
    assert!(left.is_empty(), "-o - wrote files: {left:?}");
}

/// `--out case-0042/` (trailing slash) creates the bundle `case-0042`; an
/// existing non-empty target is refused by name, an empty one is used; no
/// export, failed or not, leaves a `.partial` directory behind.
#[test]
fn evidence_export_takes_a_trailing_slash_and_never_leaves_a_partial_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let files = testkit::ffmpeg_segments(&tmp.path().join("ts"), 2, 2);
    let (start, _) = ingest_files(&server, "cam-x", &files);
    let hold = json(&server.custody_ok(&[
        "--json",
        "hold",
        "create",
        "--cameras",
        "cam-x",
        "--from",
        &start,
        "--to",
        &now_plus(-56),
        "--case",
        "CASE-0042",
        "--reason",
        "trailing slash",
        "--principal",
        "investigator:bob",
    ]));
    let hold_id = hold["hold"]["hold_id"].as_str().unwrap().to_string();
    let cases = tmp.path().join("cases");
    std::fs::create_dir_all(&cases).unwrap();
    let export = |out: &str| {
        let out = format!("{}/{out}", cases.display());
        server.custody(&["evidence", "export", "--hold", &hold_id, "--out", &out])
    };
    let verify = |dir: &Path| {
        server
            .custody(&["evidence", "verify", dir.to_str().unwrap()])
            .status
            .success()
    };

    let out = export("case-0042/");
    assert!(
        out.status.success(),
        "export to case-0042/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = cases.join("case-0042");
    assert!(bundle.join("manifest.json").is_file());
    assert!(verify(&bundle));
    assert_eq!(partials_under(&cases), Vec::<PathBuf>::new());

    // A non-empty target is refused by name and left as it was.
    for target in ["case-0042/", "case-0042"] {
        let out = export(target);
        assert!(!out.status.success(), "overwrote a bundle via {target}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("case-0042") && stderr.contains("not empty"),
            "{stderr}"
        );
        assert!(verify(&bundle));
        assert_eq!(partials_under(&cases), Vec::<PathBuf>::new());
    }

    // An empty directory (e.g. made by `mkdir`) is filled.
    std::fs::create_dir_all(cases.join("empty")).unwrap();
    let out = export("empty/");
    assert!(
        out.status.success(),
        "export to an empty directory: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(verify(&cases.join("empty")));

    // A file is not a bundle directory.
    std::fs::write(cases.join("a-file"), b"x").unwrap();
    let out = export("a-file/");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));

    // A refused export (unknown hold) leaves nothing.
    let out = server.custody(&[
        "evidence",
        "export",
        "--hold",
        "0123456789abcdef0123456789abcdef",
        "--out",
        &format!("{}/none/", cases.display()),
    ]);
    assert!(!out.status.success());
    assert!(!cases.join("none").exists());
    assert_eq!(partials_under(&cases), Vec::<PathBuf>::new());
}

/// Large (lossless) H.264 segments of 2 s, bigger than 256 KiB each.
fn large_segments(dir: &Path, n: u32) -> Vec<PathBuf> {
    testkit::require("ffmpeg");
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=1280x720:rate=25:duration={}", 2 * n))
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0"])
        .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
        .args([
            "-f",
            "segment",
            "-segment_time",
            "2",
            "-reset_timestamps",
            "0",
        ])
        .arg(dir.join("big-%03d.ts"))
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed");
    let files: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("big-{i:03}.ts"))).collect();
    for f in &files {
        assert!(f.is_file(), "ffmpeg made no {}", f.display());
    }
    files
}

/// A server whose `limits.max_message_bytes` is below the client's default
/// chunk: `ingest --watch --once` steps its chunks down and stores segments
/// several times that limit; an empty segment (refused for good, naming
/// `limits.min_segment_bytes`) is reported and skipped, not retried, and
/// makes the exit code non-zero. One line per settled segment on stdout.
#[test]
fn watch_fits_chunks_to_the_server_limit_and_skips_refused_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("custodyd.toml");
    std::fs::write(&config, "[limits]\nmax_message_bytes = 262144\n").unwrap();
    let server = Server::start(&tmp.path().join("data"), Some(&config));

    // ffmpeg's layout: strftime-named segments and its CSV list, one empty.
    let cam = tmp.path().join("cam");
    let big = large_segments(&tmp.path().join("src"), 2);
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    let name = |s: i64| {
        format!(
            "c-{}.ts",
            (t0 + chrono::Duration::seconds(s)).format("%Y%m%d-%H%M%S")
        )
    };
    std::fs::create_dir_all(&cam).unwrap();
    let names = [name(0), name(2), name(4)];
    std::fs::copy(&big[0], cam.join(&names[0])).unwrap();
    std::fs::write(cam.join(&names[1]), b"").unwrap();
    std::fs::copy(&big[1], cam.join(&names[2])).unwrap();
    for f in [&names[0], &names[2]] {
        let len = std::fs::metadata(cam.join(f)).unwrap().len();
        assert!(len > 2 * 262_144, "{f} is only {len} bytes");
    }
    std::fs::write(
        cam.join("segments.csv"),
        format!(
            "{},0.000000,2.000000\n{},2.000000,4.000000\n{},4.000000,6.000000\n",
            names[0], names[1], names[2]
        ),
    )
    .unwrap();

    let watch_once = || {
        let mut cmd = Command::new(testkit::CUSTODY);
        cmd.arg("--server")
            .arg(&server.addr)
            .args(["ingest", "--watch"])
            .arg(&cam)
            .args(["--camera", "cam-c", "--once"])
            .env("RUST_LOG", "warn");
        output_within(cmd, Duration::from_secs(120))
    };
    let out = watch_once();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "a refused segment makes --once fail\n{stdout}\n{stderr}"
    );
    let uploaded: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("uploaded cam-c "))
        .collect();
    assert_eq!(uploaded.len(), 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("FAILED cam-c "))
        .collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(
        failed[0].contains(&names[1]) && failed[0].contains("min_segment_bytes"),
        "{}",
        failed[0]
    );
    // Each uploaded line names its file, size and segment id; the server
    // holds exactly the file's bytes (its size and SHA-256 in the catalog).
    let listed = json(&server.custody_ok(&[
        "--json",
        "ls",
        "cam-c",
        "--from",
        &(t0 - chrono::Duration::minutes(1)).to_rfc3339(),
        "--to",
        &(t0 + chrono::Duration::minutes(1)).to_rfc3339(),
    ]));
    let listed = listed.as_array().expect("segment list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (line, file) in uploaded.iter().zip([&names[0], &names[2]]) {
        let bytes = std::fs::read(cam.join(file)).unwrap();
        assert!(
            line.contains(&format!(" {} bytes segment ", bytes.len()))
                && line.ends_with(&format!("({file})")),
            "{line}"
        );
        let id = line
            .split(" bytes segment ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("segment id");
        let seg = listed
            .iter()
            .find(|s| s["segment_id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"));
        assert_eq!(seg["size_bytes"], bytes.len() as u64);
        assert_eq!(
            seg["sha256"],
            hex::encode(sha2::Sha256::digest(&bytes)),
            "stored bytes differ for {file}"
        );
    }

    // The refusal was recorded: a second run retries nothing and succeeds.
    let again = watch_once();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        stdout.starts_with("0 uploaded, 0 already stored, 0 rejected"),
        "{stdout}"
    );
}

/// Runs `custodyd` with RUST_LOG=info and stderr into a file until a
/// request has been served and it has stopped; returns the log.
fn custodyd_log_to_file(dir: &Path) -> String {
    let log = dir.join("custodyd.log");
    let mut child = Command::new(testkit::CUSTODYD)
        .args(["--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("CUSTODY_KEKS")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn custodyd");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("custodyd listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_string();
    let out = Command::new(testkit::CUSTODY)
        .args(["--server", &format!("http://{addr}"), "ls"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

/// Logs written to a file (not a terminal) carry no ANSI colour codes.
#[test]
fn custodyd_logs_to_a_file_without_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let log = custodyd_log_to_file(tmp.path());
    assert!(log.contains("INFO"), "nothing logged at info: {log:?}");
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in the log file: {log:?}"
    );
}

/// The client's logs too.
#[test]
fn custody_logs_to_a_file_without_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), None);
    let log = tmp.path().join("custody.log");
    let status = Command::new(testkit::CUSTODY)
        .args(["--server", &server.addr, "ls"])
        .env("RUST_LOG", "trace")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "nothing logged: {log:?}"
    );
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in the log file: {log:?}"
    );
}
