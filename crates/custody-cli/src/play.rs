//! `custody play`: the HLS playlist URL of a camera stream × time range on a
//! listener that serves `playback`, and (with `--open`) a player started on it
//! with the client's mutual-TLS identity.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use custody_core::{CameraId, StreamName, TimeRange, Timestamp};
use serde_json::json;

/// `custody play` arguments.
#[derive(Args, Debug)]
pub struct PlayArgs {
    /// Camera id.
    pub camera: String,
    /// Start (RFC 3339).
    #[arg(long)]
    pub from: String,
    /// End (RFC 3339).
    #[arg(long)]
    pub to: String,
    /// Stream.
    #[arg(long, default_value = "main")]
    pub stream: String,
    /// Start ffplay (or mpv) on the playlist.
    #[arg(long)]
    pub open: bool,
}

/// The client's mutual-TLS files, passed on to the player.
#[derive(Debug, Clone)]
pub struct PlayerTls {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client key (PEM).
    pub key: PathBuf,
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The playlist URL on `server` (`http://` or `https://HOST:PORT`) of
/// `camera`/`stream` over `range`.
pub fn playlist_url(
    server: &str,
    camera: &CameraId,
    stream: &StreamName,
    range: &TimeRange,
) -> Result<String> {
    let base = server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--server must be an http:// or https:// address, not {server:?}");
    }
    Ok(format!(
        "{base}/playback/v1/cameras/{}/{}/index.m3u8?from={}&to={}",
        encode(camera.as_str()),
        encode(stream.as_str()),
        encode(&range.start().to_string()),
        encode(&range.end().to_string())
    ))
}

/// The player command for `url`: ffplay if installed, else mpv.
fn player(url: &str, tls: Option<&PlayerTls>) -> Option<Command> {
    let found = |p: &str| {
        Command::new(p)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
            || Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    };
    if found("ffplay") {
        let mut c = Command::new("ffplay");
        c.args(["-hide_banner", "-autoexit"]);
        if let Some(t) = tls {
            c.arg("-ca_file").arg(&t.ca);
            c.arg("-cert_file").arg(&t.cert);
            c.arg("-key_file").arg(&t.key);
            c.args(["-tls_verify", "1"]);
        }
        c.arg(url);
        return Some(c);
    }
    if found("mpv") {
        let mut c = Command::new("mpv");
        if let Some(t) = tls {
            c.arg(format!("--tls-ca-file={}", t.ca.display()));
            c.arg(format!("--tls-cert-file={}", t.cert.display()));
            c.arg(format!("--tls-key-file={}", t.key.display()));
            c.arg("--tls-verify=yes");
        }
        c.arg(url);
        return Some(c);
    }
    None
}

/// Prints the playlist URL (JSON with `--json`) and, with `--open`, plays it.
pub fn play(server: &str, tls: Option<&PlayerTls>, a: PlayArgs, json_out: bool) -> Result<()> {
    let camera = CameraId::parse(&a.camera)?;
    let stream = StreamName::parse(&a.stream)?;
    let range = TimeRange::new(
        Timestamp::parse_rfc3339(&a.from).context("--from")?,
        Timestamp::parse_rfc3339(&a.to).context("--to")?,
    )?;
    let url = playlist_url(server, &camera, &stream, &range)?;
    if json_out {
        println!("{}", json!({ "url": url }));
    } else {
        println!("{url}");
    }
    if a.open {
        if tls.is_some() {
            eprintln!(
                "note: ffmpeg-based players send the client certificate for the playlist only, \
                 not for its segments; play from a loopback listener if segments are refused"
            );
        }
        let Some(mut cmd) = player(&url, tls) else {
            bail!("--open needs ffplay (apt-get install ffmpeg) or mpv on the PATH");
        };
        let status = cmd.status().context("starting the player")?;
        if !status.success() {
            bail!("the player exited with {status}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_escapes_times_and_names() {
        let range = TimeRange::new(
            Timestamp::parse_rfc3339("2026-01-01T10:00:00Z").unwrap(),
            Timestamp::parse_rfc3339("2026-01-01T10:00:30.5Z").unwrap(),
        )
        .unwrap();
        let url = playlist_url(
            "https://127.0.0.1:7421/",
            &CameraId::parse("cam-1").unwrap(),
            &StreamName::main(),
            &range,
        )
        .unwrap();
        assert_eq!(
            url,
            "https://127.0.0.1:7421/playback/v1/cameras/cam-1/main/index.m3u8?from=2026-01-01T10%3A00%3A00Z&to=2026-01-01T10%3A00%3A30.500Z"
        );
        assert!(playlist_url(
            "127.0.0.1:7421",
            &CameraId::parse("c").unwrap(),
            &StreamName::main(),
            &range
        )
        .is_err());
    }
}
