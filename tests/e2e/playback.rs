//! HLS playback: a real `custodyd` serving `playback` on a mutual-TLS
//! listener and on a plaintext loopback listener; ffmpeg-made H.264 MPEG-TS
//! segments with a recording gap; ffprobe, ffmpeg and curl as the clients
//! over mutual TLS; hls.js in headless Chromium as the browser.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::testkit::{self, ffmpeg_segments, require, Daemon, CUSTODY};

/// One HTTP exchange made with curl.
pub(crate) struct Fetched {
    pub(crate) status: u16,
    /// Header names lowercased.
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

/// `GET url` with curl; over https as principal `name` of `certs` (its
/// `NAME.pem`/`NAME.key`, the server verified against `ca.pem`). `Err` with
/// curl's message when no HTTP answer came (e.g. a refused handshake).
pub(crate) fn curl(
    url: &str,
    tls: Option<(&Path, &str)>,
    headers: &[&str],
) -> Result<Fetched, String> {
    let tmp = tempfile::tempdir().unwrap();
    let (head, body) = (tmp.path().join("head"), tmp.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body);
    if let Some((certs, name)) = tls {
        cmd.arg("--cacert")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("{name}.pem")))
            .arg("--key")
            .arg(certs.join(format!("{name}.key")));
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("curl is required for this test (apt-get install curl)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let head = std::fs::read_to_string(head).unwrap();
    // The last response's head (after any 100 Continue).
    let block = head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default()
        .to_string();
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Fetched {
        status,
        headers,
        body: std::fs::read(body).unwrap_or_default(),
    })
}

/// A playlist path of `camera`'s main stream over `[from, to)`.
pub(crate) fn playlist_path(camera: &str, from: &str, to: &str) -> String {
    format!("/playback/v1/cameras/{camera}/main/index.m3u8?from={from}&to={to}")
}

const T0: &str = "2026-01-01T10:00:00Z";
const FROM: &str = "2026-01-01T09:59:00Z";
const TO: &str = "2026-01-01T10:01:00Z";

/// A node with a mutual-TLS listener `secure` (archive, playback) and a
/// plaintext loopback listener `local` (everything the test drives, and
/// playback for the browser), small chunks so ranges cross chunk
/// boundaries, and a one-hour playlist limit.
struct Node {
    _daemon: Daemon,
    tmp: tempfile::TempDir,
    certs: PathBuf,
    addrs: BTreeMap<String, String>,
}

impl Node {
    fn start() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let certs = tmp.path().join("certs");
        testkit::certs_init(&certs, &["cam-a"], &["op:operator", "aud:auditor"]);
        let tls = format!(
            "tls = {{ cert = {:?}, key = {:?}, client_ca = {:?} }}",
            certs.join("server.pem"),
            certs.join("server.key"),
            certs.join("ca.pem")
        );
        let cfg = tmp.path().join("custodyd.toml");
        std::fs::write(
            &cfg,
            format!(
                "chunk_size = 4096\n[limits]\nmax_export_span_secs = 3600\n\
                 [[listeners]]\nname = \"secure\"\naddr = \"127.0.0.1:0\"\nservices = [\"archive\", \"playback\"]\n{tls}\n\
                 [retention]\npolicy_grace_secs = 0\n\
                 [[listeners]]\nname = \"local\"\naddr = \"127.0.0.1:0\"\nservices = [\"ingest\", \"archive\", \"audit\", \"playback\", \"policy\", \"hold\", \"retention\"]\n"
            ),
        )
        .unwrap();
        let (daemon, addrs) = testkit::start_listeners(&cfg, &tmp.path().join("data"), 2);
        Node {
            _daemon: daemon,
            tmp,
            certs,
            addrs,
        }
    }

    fn local(&self) -> String {
        format!("http://{}", self.addrs["local"])
    }

    fn secure(&self) -> String {
        format!("https://{}", self.addrs["secure"])
    }

    /// `custody` on the plaintext loopback listener.
    fn custody(&self, args: &[&str]) -> String {
        let out = Command::new(CUSTODY)
            .arg("--server")
            .arg(self.local())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "custody {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Five 2 s segments of which the middle one was never recorded: four
    /// stored, at T0, T0+2, (gap), T0+6, T0+8. Returns the stored files.
    fn ingest_with_gap(&self) -> Vec<PathBuf> {
        let files = ffmpeg_segments(&self.tmp.path().join("ts"), 5, 2);
        let f = |i: usize| files[i].to_str().unwrap().to_string();
        for (start, pair) in [(T0, [f(0), f(1)]), ("2026-01-01T10:00:06Z", [f(3), f(4)])] {
            self.custody(&[
                "ingest",
                &pair[0],
                &pair[1],
                "--camera",
                "cam-1",
                "--start",
                start,
                "--segment-duration",
                "2",
            ]);
        }
        vec![
            files[0].clone(),
            files[1].clone(),
            files[3].clone(),
            files[4].clone(),
        ]
    }
}

/// Frames ffprobe decodes in a file or URL (extra args before the input).
fn ffprobe_frames(extra: &[&str], input: &str) -> u64 {
    require("ffprobe");
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(extra)
        .args([
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {input}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // MPEG-TS lists the stream under its program too: the first line counts.
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe frame count {text:?}"))
}

/// ffmpeg's and ffprobe's TLS options for principal `name`.
fn ff_tls(certs: &Path, name: &str) -> Vec<String> {
    vec![
        "-ca_file".into(),
        certs.join("ca.pem").display().to_string(),
        "-cert_file".into(),
        certs.join(format!("{name}.pem")).display().to_string(),
        "-key_file".into(),
        certs.join(format!("{name}.key")).display().to_string(),
        "-tls_verify".into(),
        "1".into(),
    ]
}

/// The segment URIs of a playlist, in order.
fn segment_uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_a_range_with_a_gap_over_mutual_tls_and_others_are_refused() {
    let node = Node::start();
    let files = node.ingest_with_gap();
    let url = format!("{}{}", node.secure(), playlist_path("cam-1", FROM, TO));

    // The playlist: four real durations, one discontinuity at the gap, VOD.
    let p = curl(&url, Some((&node.certs, "op")), &[]).unwrap();
    let text = String::from_utf8(p.body).unwrap();
    assert_eq!(p.status, 200, "{text}");
    assert_eq!(
        p.headers["content-type"], "application/vnd.apple.mpegurl",
        "{text}"
    );
    assert_eq!(text.matches("#EXTINF:2.000,").count(), 4, "{text}");
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    assert!(
        text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.ends_with("#EXT-X-ENDLIST\n"),
        "{text}"
    );
    let uris = segment_uris(&text);
    assert_eq!(uris.len(), 4);
    let gap = text.find("#EXT-X-DISCONTINUITY").unwrap();
    assert!(!text[gap..].contains(&uris[1]) && text[gap..].contains(&uris[2]));

    // Every frame of the range decodes, counted against the source.
    let source: u64 = files
        .iter()
        .map(|f| ffprobe_frames(&[], f.to_str().unwrap()))
        .sum();
    assert_eq!(source, 4 * 50, "testsrc at 25 fps, 2 s segments");
    // ffmpeg with its TLS options (ca_file/cert_file/key_file) over mutual
    // TLS, reading every segment URI the playlist names. (ffmpeg's HLS
    // demuxer passes only headers, proxy, user agent, cookies, referer and
    // timeouts on to its segment requests, never the TLS options: given the
    // playlist URL alone, it fetches the playlist over mutual TLS and the
    // first segment's handshake is refused for want of a certificate.)
    let tls = ff_tls(&node.certs, "op");
    let tls_args: Vec<&str> = tls.iter().map(String::as_str).collect();
    let mut over_mtls = 0;
    for uri in &uris {
        over_mtls += ffprobe_frames(&tls_args, &format!("{}{uri}", node.secure()));
    }
    assert_eq!(over_mtls, source, "frames decoded over mutual TLS");
    // ffprobe and ffmpeg's HLS demuxer play the playlist itself, with its
    // discontinuity, from the loopback listener (the same routes).
    let local_url = format!("{}{}", node.local(), playlist_path("cam-1", FROM, TO));
    assert_eq!(ffprobe_frames(&[], &local_url), source, "ffprobe over HLS");
    require("ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error"])
        .args(["-i", &local_url, "-map", "0:v", "-f", "framecrc", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u64;
    assert_eq!(frames, source, "frames decoded by ffmpeg over HLS");

    // A camera certificate is refused by the gate, with who and why.
    let refused = curl(&url, Some((&node.certs, "cam-a")), &[]).unwrap();
    let why = String::from_utf8_lossy(&refused.body).to_string();
    assert_eq!(refused.status, 403, "{why}");
    assert!(
        why.contains("cam-a") && why.contains("needs one of the roles operator, investigator"),
        "{why}"
    );
    let seg_url = format!("{}{}", node.secure(), uris[0]);
    assert_eq!(
        curl(&seg_url, Some((&node.certs, "cam-a")), &[])
            .unwrap()
            .status,
        403
    );
    // An auditor may list but not read segments: refused too.
    assert_eq!(
        curl(&url, Some((&node.certs, "aud")), &[]).unwrap().status,
        403
    );
    // A certificate from another CA, or none, never gets an HTTP answer.
    let stranger = node.tmp.path().join("stranger");
    testkit::certs_init(&stranger, &[], &["op:operator"]);
    let e = curl(&url, Some((&stranger, "op")), &[]).err();
    assert!(e.is_some(), "a foreign certificate was answered");
    let mut no_cert = Command::new("curl");
    no_cert
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(node.certs.join("ca.pem"))
        .arg(&url);
    assert!(!no_cert.output().unwrap().status.success());
    let mut foreign = Command::new("ffprobe");
    foreign
        .args(["-v", "error"])
        .args(ff_tls(&stranger, "op"))
        .arg(&url);
    assert!(!foreign.output().unwrap().status.success());

    // Every playlist and segment served, and the refusals, are audited.
    let records: serde_json::Value =
        serde_json::from_str(&node.custody(&["--json", "audit", "ls", "--action", "playback"]))
            .unwrap();
    let records = records.as_array().unwrap();
    let count = |action: &str, principal: &str, outcome: &str| {
        records
            .iter()
            .filter(|r| {
                r["action"] == action && r["principal"] == principal && r["outcome"] == outcome
            })
            .count()
    };
    assert!(count("playback.playlist", "op", "ok") >= 1, "{records:?}");
    assert!(
        count("playback.playlist", "local", "ok") >= 2,
        "{records:?}"
    );
    assert!(count("playback.segment", "op", "ok") >= 4, "{records:?}");
    assert!(count("playback.segment", "local", "ok") >= 8, "{records:?}");
    let refusals: serde_json::Value =
        serde_json::from_str(&node.custody(&["--json", "audit", "ls", "--principal", "cam-a"]))
            .unwrap();
    assert!(
        refusals.as_array().unwrap().len() >= 2
            && refusals
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] == "refused"),
        "{refusals}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_return_exactly_the_requested_plaintext() {
    let node = Node::start();
    let files = node.ingest_with_gap();
    let url = format!("{}{}", node.secure(), playlist_path("cam-1", FROM, TO));
    let text = String::from_utf8(curl(&url, Some((&node.certs, "op")), &[]).unwrap().body).unwrap();
    let uri = &segment_uris(&text)[2];
    let source = std::fs::read(&files[2]).unwrap();
    let len = source.len();
    assert!(len > 3 * 4096, "the segment spans several chunks");
    let seg = format!("{}{uri}", node.secure());
    let get = |range: Option<String>| {
        let h = range.map(|r| format!("Range: {r}"));
        let headers: Vec<&str> = h.iter().map(String::as_str).collect();
        curl(&seg, Some((&node.certs, "op")), &headers).unwrap()
    };

    let whole = get(None);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.headers["content-type"], "video/mp2t");
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    assert!(whole.body == source, "whole segment differs");
    // Across chunk boundaries, within one chunk, open-ended, suffix.
    for (spec, want) in [
        ("bytes=4000-12345".to_string(), 4000..12346),
        ("bytes=5-9".to_string(), 5..10),
        (format!("bytes={}-", len - 777), len - 777..len),
        ("bytes=-1000".to_string(), len - 1000..len),
        (format!("bytes=100-{}", len + 5000), 100..len),
    ] {
        let r = get(Some(spec.clone()));
        assert_eq!(r.status, 206, "{spec}");
        assert_eq!(
            r.headers["content-range"],
            format!("bytes {}-{}/{len}", want.start, want.end - 1),
            "{spec}"
        );
        assert!(r.body == source[want.clone()], "{spec}: wrong bytes");
    }
    let r = get(Some(format!("bytes={len}-")));
    assert_eq!(r.status, 416);
    assert_eq!(r.headers["content-range"], format!("bytes */{len}"));
    let r = get(Some("bytes=9-3".to_string()));
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // The same over the plaintext loopback listener.
    let local = curl(
        &format!("{}{uri}", node.local()),
        None,
        &["Range: bytes=4000-12345"],
    )
    .unwrap();
    assert_eq!(local.status, 206);
    assert!(local.body == source[4000..12346]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_playlist_requests_get_precise_errors_and_empty_ranges_are_gaps() {
    let node = Node::start();
    node.ingest_with_gap();
    let get = |path: &str| {
        let r = curl(&format!("{}{path}", node.local()), None, &[]).unwrap();
        (r.status, String::from_utf8_lossy(&r.body).to_string())
    };
    for (path, status, says) in [
        (
            "/playback/v1/cameras/cam-1/main/index.m3u8".to_string(),
            400,
            "needs both from and to",
        ),
        (playlist_path("cam-1", TO, FROM), 400, "is not after start"),
        (
            playlist_path("cam-1", "2026-01-01T08:00:00Z", TO),
            400,
            "max_export_span_secs",
        ),
        (playlist_path("cam-1", "yesterday", TO), 400, "RFC 3339"),
        (playlist_path("Cam%201", FROM, TO), 400, "camera"),
        ("/playback/v1/segments/nothex".to_string(), 400, "segment"),
        (
            format!("/playback/v1/segments/{}", "0".repeat(32)),
            404,
            "not found",
        ),
        (
            "/playback/v1/nothing".to_string(),
            404,
            "no playback resource",
        ),
    ] {
        let (got, body) = get(&path);
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // Nothing recorded (or all of it expired and deleted): an empty VOD
    // playlist, not an error page.
    let (status, body) = get(&playlist_path(
        "cam-1",
        "2026-01-01T11:00:00Z",
        "2026-01-01T11:10:00Z",
    ));
    assert_eq!(status, 200, "{body}");
    // `custody play` prints the URL of the same playlist.
    let url = node.custody(&["play", "cam-1", "--from", FROM, "--to", TO]);
    let played = curl(url.trim(), None, &[]).unwrap();
    assert_eq!(played.status, 200, "{url}");
    assert_eq!(
        String::from_utf8_lossy(&played.body)
            .matches("#EXTINF")
            .count(),
        4
    );
    assert!(
        !body.contains("#EXTINF") && body.ends_with("#EXT-X-ENDLIST\n"),
        "{body}"
    );
}

/// Expired footage the sweeper deleted is a gap in the playlist, not an
/// error; held footage plays exactly as unheld footage does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_deleted_footage_is_a_gap_and_holds_change_nothing() {
    let node = Node::start();
    let files = node.ingest_with_gap();
    let url = format!("{}{}", node.local(), playlist_path("cam-1", FROM, TO));
    let before = String::from_utf8(curl(&url, None, &[]).unwrap().body).unwrap();
    let uris = segment_uris(&before);
    assert_eq!(uris.len(), 4);
    // Hold the first and the last segment; everything expires now.
    for (from, to) in [
        ("2026-01-01T10:00:00Z", "2026-01-01T10:00:01Z"),
        ("2026-01-01T10:00:09Z", "2026-01-01T10:00:10Z"),
    ] {
        node.custody(&[
            "hold",
            "create",
            "--cameras",
            "cam-1",
            "--from",
            from,
            "--to",
            to,
            "--case",
            "CASE-7",
            "--reason",
            "playback test",
            "--principal",
            "investigator:bob",
        ]);
    }
    // Holding changes nothing that is played.
    let held = String::from_utf8(curl(&url, None, &[]).unwrap().body).unwrap();
    assert_eq!(held, before);
    node.custody(&[
        "policy",
        "set",
        "--camera",
        "cam-1",
        "--retain-for",
        "1s",
        "--principal",
        "admin:alice",
    ]);
    let sweep: serde_json::Value =
        serde_json::from_str(&node.custody(&["--json", "sweep"])).unwrap();
    assert_eq!(sweep["kept_by_hold"], 2, "{sweep}");
    // The two unheld segments are gone: two segments left, a gap between.
    let after = curl(&url, None, &[]).unwrap();
    let text = String::from_utf8(after.body).unwrap();
    assert_eq!(after.status, 200, "{text}");
    assert_eq!(
        segment_uris(&text),
        vec![uris[0].clone(), uris[3].clone()],
        "{text}"
    );
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1, "{text}");
    let kept: u64 = [&files[0], &files[3]]
        .iter()
        .map(|f| ffprobe_frames(&[], f.to_str().unwrap()))
        .sum();
    assert_eq!(ffprobe_frames(&[], &url), kept);
    // A deleted segment's URI (from an old playlist) is not found.
    let gone = curl(&format!("{}{}", node.local(), uris[1]), None, &[]).unwrap();
    assert_eq!(gone.status, 404, "{}", String::from_utf8_lossy(&gone.body));
}

/// A tiny HTTP endpoint the browser page reports to: each request's query
/// string, as it arrives.
fn report_sink() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let query = line
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.split_once('?'))
                .map(|(_, q)| q.to_string())
                .unwrap_or_default();
            let _ = conn.write_all(
                b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
            );
            if tx.send(query).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// The hls.js that `scripts/setup --test` installs (never fetched at run time).
fn hls_js() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/web/node_modules/hls.js/dist/hls.min.js");
    assert!(
        p.is_file(),
        "hls.js is required for this test: run ./scripts/setup --test (npm install in tests/web)"
    );
    p
}

/// Plays `playlist` with hls.js in headless Chromium until `currentTime`
/// reaches `until` seconds, and returns what the page reported (`t=…`
/// progress, `error=…` for any error event). Mutual TLS in a headless
/// browser needs a client certificate store, so the callers play from the
/// plaintext loopback listener (the same routes, the local user); the page
/// is a local file, so Chromium runs with web security off to fetch from
/// that origin. hls.js comes from tests/web/node_modules, loaded from disk.
fn play_in_chromium(dir: &Path, playlist: &str, until: f64) -> Vec<String> {
    let hls = hls_js();
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is required for this test: run ./scripts/setup --test");
    let (port, reports) = report_sink();
    let page = dir.join("play.html");
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><html><body><video id="v" muted playsinline></video>
<script src="file://{hls}"></script>
<script>
const report = (q) => fetch("http://127.0.0.1:{port}/r?" + q, {{mode: "no-cors"}}).catch(() => {{}});
const v = document.getElementById("v");
if (!Hls.isSupported()) {{ report("error=" + encodeURIComponent("hls.js: MSE not supported")); }}
const hls = new Hls({{enableWorker: false}});
hls.on(Hls.Events.ERROR, (e, d) => report("error=" + encodeURIComponent(d.type + " " + d.details + " fatal=" + d.fatal)));
v.addEventListener("error", () => report("error=" + encodeURIComponent("video " + (v.error && v.error.message))));
let last = -1;
v.addEventListener("timeupdate", () => {{
  if (v.currentTime - last >= 0.5) {{ last = v.currentTime; report("t=" + v.currentTime.toFixed(2)); }}
}});
hls.loadSource({playlist:?});
hls.attachMedia(v);
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch((e) => report("error=" + encodeURIComponent("play: " + e))));
</script></body></html>"#,
            hls = hls.display(),
        ),
    )
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-web-security",
            "--allow-file-access-from-files",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium");
    // Until currentTime reaches `until`, any error report, or the deadline.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(q) = reports.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        seen.push(q.clone());
        let reached = q
            .strip_prefix("t=")
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(|t| t >= until);
        if q.starts_with("error=") || reached {
            break;
        }
    }
    let _ = browser.kill();
    let _ = browser.wait();
    seen
}

/// Asserts that the reports show playback reaching `until` through several
/// steps, with no error event.
fn assert_played(seen: &[String], until: f64) {
    let times: Vec<f64> = seen
        .iter()
        .filter_map(|q| q.strip_prefix("t=")?.parse().ok())
        .collect();
    assert!(
        !seen.iter().any(|q| q.starts_with("error="))
            && times.len() >= 3
            && times.last().is_some_and(|t| *t >= until),
        "hls.js did not play to {until} s: reports {seen:?}"
    );
}

/// hls.js plays the MPEG-TS range across its recording gap (the third
/// segment starts at 4 s of playlist time, after the discontinuity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_in_headless_chromium_plays_the_range() {
    let node = Node::start();
    node.ingest_with_gap();
    let playlist = format!("{}{}", node.local(), playlist_path("cam-1", FROM, TO));
    let seen = play_in_chromium(node.tmp.path(), &playlist, 5.5);
    assert_played(&seen, 5.5);
}

/// `n` fragmented MP4 segments of `secs` seconds as ffmpeg's segment muxer
/// cuts them for HLS (each a file of its own: ftyp, moov, then moof/mdat).
fn ffmpeg_fmp4_segments(dir: &Path, n: u32, secs: u32) -> Vec<PathBuf> {
    require("ffmpeg");
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=size=320x240:rate=25:duration={}",
            n * secs
        ))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
        .args(["-f", "segment", "-segment_time"])
        .arg(secs.to_string())
        .args([
            "-reset_timestamps",
            "0",
            "-segment_format",
            "mp4",
            "-segment_format_options",
            "movflags=+frag_keyframe+empty_moov+default_base_moof",
        ])
        .arg(dir.join("seg-%03d.mp4"))
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
        .collect();
    files.sort();
    assert_eq!(files.len(), n as usize);
    files
}

/// Fragmented MP4: each segment's ftyp+moov is its EXT-X-MAP, its media
/// starts at the first moof; the two parts are exactly the stored bytes,
/// and hls.js plays the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_mp4_gets_its_init_sections_and_plays_in_hls_js() {
    let node = Node::start();
    let files = ffmpeg_fmp4_segments(&node.tmp.path().join("mp4"), 3, 2);
    let mut args = vec!["ingest".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(
        [
            "--camera",
            "cam-m",
            "--start",
            T0,
            "--segment-duration",
            "2",
        ]
        .map(String::from),
    );
    node.custody(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let playlist = format!("{}{}", node.local(), playlist_path("cam-m", FROM, TO));
    let text = String::from_utf8(curl(&playlist, None, &[]).unwrap().body).unwrap();
    assert_eq!(text.matches("#EXT-X-MAP:URI=").count(), 3, "{text}");
    let media = segment_uris(&text);
    assert_eq!(media.len(), 3);
    for (file, uri) in files.iter().zip(&media) {
        assert!(uri.ends_with("/media.mp4"), "{uri}");
        let init = curl(
            &format!("{}{}", node.local(), uri.replace("/media.mp4", "/init.mp4")),
            None,
            &[],
        )
        .unwrap();
        let body = curl(&format!("{}{uri}", node.local()), None, &[]).unwrap();
        assert_eq!((init.status, body.status), (200, 200));
        assert_eq!(&init.body[4..8], b"ftyp");
        assert_eq!(&body.body[4..8], b"moof");
        let whole = std::fs::read(file).unwrap();
        assert!(
            [init.body.as_slice(), body.body.as_slice()].concat() == whole,
            "init + media is the stored segment"
        );
        let joined = node.tmp.path().join("joined.mp4");
        std::fs::write(&joined, [init.body, body.body].concat()).unwrap();
        assert_eq!(ffprobe_frames(&[], joined.to_str().unwrap()), 50);
    }
    let seen = play_in_chromium(node.tmp.path(), &playlist, 4.5);
    assert_played(&seen, 4.5);
}
