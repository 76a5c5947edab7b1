//! Progress bars of the long `custody` commands (ingest of many files,
//! compliance report, evidence export, offline audit verify): on a terminal
//! (a pseudo-terminal made by util-linux `script`) they show a bar with
//! rate and ETA on stderr; piped, or with `--json`, nothing but the
//! command's own output is printed.

use crate::testkit;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `custody ARGS` with stdin, stdout and stderr on a pseudo-terminal;
/// returns everything the terminal showed.
fn on_terminal(args: &[String]) -> String {
    let quoted: Vec<String> = std::iter::once(testkit::CUSTODY.to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "custody {args:?} on a terminal: {text}"
    );
    text
}

/// `custody ARGS` with stdout and stderr piped.
fn piped(args: &[String]) -> Output {
    let out = Command::new(testkit::CUSTODY)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run custody");
    assert!(
        out.status.success(),
        "custody {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What a drawn bar always contains (the rate has `/s`).
fn has_bar(text: &str) -> bool {
    text.contains("ETA") && text.contains("/s")
}

/// Nothing of a bar: no ETA, no carriage return (but the terminal's own
/// before each newline), no escape sequence.
fn assert_no_bar(what: &str, text: &str) {
    let text = text.replace("\r\n", "\n");
    assert!(
        !text.contains("ETA") && !text.contains('\r') && !text.contains('\x1b'),
        "{what} printed progress: {text:?}"
    );
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn bars_show_rate_and_eta_on_a_terminal_and_nothing_when_piped_or_json() {
    let script = Command::new("script").arg("--version").output();
    assert!(
        script.is_ok_and(|o| o.status.success()),
        "util-linux script is required for this test: run scripts/setup --test (apt-get install bsdutils)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = testkit::Server::start(&data, None);
    let s = ["--server", server.addr.as_str()];
    let files: Vec<PathBuf> = (0..3)
        .map(|i| {
            let f = tmp.path().join(format!("s{i}.ts"));
            std::fs::write(&f, vec![i as u8 + 7; 50_000 + i * 1000]).unwrap();
            f
        })
        .collect();
    let ingest = |json: bool| {
        let mut a = args(&s);
        if json {
            a.push("--json".into());
        }
        a.push("ingest".into());
        a.extend(files.iter().map(|f| f.display().to_string()));
        a.extend(args(&[
            "--camera",
            "cam-p",
            "--start",
            "2026-01-01T10:00:00Z",
            "--segment-duration",
            "2",
        ]));
        a
    };

    // Ingest of several files.
    let out = piped(&ingest(false));
    assert_no_bar("ingest (piped)", &String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let tty = on_terminal(&ingest(false));
    assert!(has_bar(&tty), "ingest on a terminal shows no bar: {tty:?}");
    let tty = on_terminal(&ingest(true));
    assert_no_bar("ingest --json (terminal)", &tty);
    assert_eq!(tty.lines().count(), 3, "{tty:?}");

    // Ingest of a directory that ffmpeg's segment muxer filled.
    let watched = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let mut list = String::new();
        for i in 0..3u32 {
            let file = format!("cam-20260101-1200{:02}.ts", i * 2);
            std::fs::write(dir.join(&file), vec![i as u8 + 1; 20_000]).unwrap();
            list.push_str(&format!("{file},{}.0,{}.0\n", i * 2, i * 2 + 2));
        }
        std::fs::write(dir.join("segments.csv"), list).unwrap();
        let mut a = args(&s);
        a.extend(args(&["ingest", "--camera", "cam-w", "--once", "--watch"]));
        a.push(dir.display().to_string());
        a
    };
    let out = piped(&watched("w1"));
    assert_no_bar(
        "ingest --watch (piped)",
        &String::from_utf8_lossy(&out.stderr),
    );
    let tty = on_terminal(&watched("w2"));
    assert!(
        has_bar(&tty) && tty.contains("segments"),
        "ingest --watch: {tty:?}"
    );
    let mut json = watched("w3");
    json.insert(2, "--json".into());
    assert_no_bar("ingest --watch --json (terminal)", &on_terminal(&json));

    // Compliance report.
    let report = |json: bool| {
        let mut a = args(&s);
        if json {
            a.push("--json".into());
        }
        a.extend(args(&["compliance", "report"]));
        a
    };
    let out = piped(&report(false));
    assert_no_bar(
        "compliance report (piped)",
        &String::from_utf8_lossy(&out.stderr),
    );
    let tty = on_terminal(&report(false));
    assert!(has_bar(&tty) && tty.contains("objects"), "report: {tty:?}");
    let tty = on_terminal(&report(true));
    assert_no_bar("compliance report --json (terminal)", &tty);
    serde_json::from_str::<serde_json::Value>(tty.trim()).expect("only the JSON report");

    // Evidence export.
    let export = |json: bool, out: &Path| {
        let mut a = args(&s);
        if json {
            a.push("--json".into());
        }
        a.extend(args(&[
            "evidence",
            "export",
            "--camera",
            "cam-p",
            "--from",
            "2026-01-01T10:00:00Z",
            "--to",
            "2026-01-01T10:00:06Z",
            "--out",
        ]));
        a.push(out.display().to_string());
        a
    };
    let out = piped(&export(false, &tmp.path().join("b1")));
    assert_no_bar(
        "evidence export (piped)",
        &String::from_utf8_lossy(&out.stderr),
    );
    let tty = on_terminal(&export(false, &tmp.path().join("b2")));
    assert!(has_bar(&tty), "evidence export: {tty:?}");
    let tty = on_terminal(&export(true, &tmp.path().join("b3")));
    assert_no_bar("evidence export --json (terminal)", &tty);

    // Offline audit verification.
    let verify = |json: bool| {
        let mut a = Vec::new();
        if json {
            a.push("--json".to_string());
        }
        a.extend(args(&["audit", "verify", "--store"]));
        a.push(data.display().to_string());
        a.push("--key-file".into());
        a.push(data.join("keys/keyring.toml").display().to_string());
        a
    };
    let out = piped(&verify(false));
    assert_no_bar(
        "audit verify (piped)",
        &String::from_utf8_lossy(&out.stderr),
    );
    let tty = on_terminal(&verify(false));
    assert!(
        has_bar(&tty) && tty.contains("objects"),
        "audit verify: {tty:?}"
    );
    let tty = on_terminal(&verify(true));
    assert_no_bar("audit verify --json (terminal)", &tty);
}
