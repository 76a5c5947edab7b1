//! `custody-bench playback`: HLS playback next to `ReadSegment` on one
//! `custodyd` process (started here, plaintext loopback, so that its RSS is
//! the server's alone): time to first byte of a 6 s segment, MB/s of a large
//! segment, and the server's RSS while many players stream at once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use custody_cli::client::{Client, Upload};
use custody_core::{TimeRange, Timestamp};
use custody_proto::v1 as pb;
use futures::StreamExt;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `custody-bench playback` arguments.
#[derive(clap::Args)]
pub(super) struct PlaybackArgs {
    /// The custodyd binary (default: next to this one).
    #[arg(long)]
    custodyd: Option<PathBuf>,
    /// Size of the large segment, in MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: u64,
    /// Size of the 6 s segment, in bytes (6 s at 4 Mbit/s).
    #[arg(long, default_value_t = 3_000_000)]
    small_bytes: usize,
    /// Requests timed for time to first byte, per path.
    #[arg(long, default_value_t = 50)]
    ttfb_runs: usize,
    /// Full reads of the large segment, per path (the best is shown).
    #[arg(long, default_value_t = 3)]
    big_runs: usize,
    /// Players streaming the large segment at once, for the RSS figure.
    #[arg(long, default_value_t = 50)]
    players: usize,
    /// How long the players stream, in seconds.
    #[arg(long, default_value_t = 10)]
    player_secs: u64,
    /// Working directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The `custodyd` child, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident set size of process `pid`, in MiB.
fn rss_mib_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Starts `custodyd` on `dir` with one plaintext loopback listener serving
/// ingest, archive and playback; returns it and its address.
fn start(custodyd: &Path, dir: &Path, max_segment: u64) -> Result<(Daemon, String)> {
    let cfg = dir.join("custodyd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[limits]\nmax_segment_bytes = {max_segment}\n\
             [[listeners]]\nname = \"bench\"\naddr = \"127.0.0.1:0\"\nservices = [\"ingest\", \"archive\", \"playback\"]\n"
        ),
    )?;
    let mut child = Command::new(custodyd)
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .env_remove("CUSTODY_KEKS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", custodyd.display()))?;
    let stdout = child.stdout.take().context("custodyd stdout")?;
    let daemon = Daemon(child);
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines
        .next()
        .context("custodyd exited before its banner")??;
    let addr = banner
        .strip_prefix("custodyd listening on ")
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("unexpected banner {banner:?}"))?
        .to_string();
    // Keep draining its stdout so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((daemon, addr))
}

/// Writes `len` random bytes to `path`, 8 MiB at a time.
fn random_file(path: &Path, len: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 8 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rand::thread_rng().fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// One HTTP/1.1 GET on a new connection: time to the first body byte, body
/// bytes read and the total time. Stops reading at `until`, if given.
async fn http_get(
    addr: &str,
    path: &str,
    until: Option<Instant>,
) -> Result<(Duration, u64, Duration)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut first = None;
    let mut body = 0u64;
    loop {
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if first.is_none() {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "GET {path}: {}",
                        String::from_utf8_lossy(&head[..end.min(200)])
                    );
                }
                let rest = (head.len() - end - 4) as u64;
                if rest > 0 {
                    first = Some(t0.elapsed());
                    body += rest;
                }
            }
            continue;
        }
        body += n as u64;
    }
    // A body whose first bytes came with the headers, or one read after them.
    let first = first.unwrap_or_else(|| t0.elapsed());
    Ok((first, body, t0.elapsed()))
}

/// A whole `ReadSegment` over an established channel: time to the first
/// data byte, bytes and total time.
async fn read_segment(client: &Client, id: &str) -> Result<(Duration, u64, Duration)> {
    let t0 = Instant::now();
    let mut s = client
        .archive()
        .read_segment(pb::ReadSegmentRequest {
            segment_id: id.to_string(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut first = None;
    let mut bytes = 0u64;
    while let Some(m) = s.next().await {
        let m = m?;
        if !m.data.is_empty() && first.is_none() {
            first = Some(t0.elapsed());
        }
        bytes += m.data.len() as u64;
    }
    Ok((first.unwrap_or_default(), bytes, t0.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs the playback benchmark and prints its table.
pub(super) async fn playback_bench(a: PlaybackArgs) -> Result<()> {
    let custodyd = match a.custodyd {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory of custody-bench")?
            .join("custodyd"),
    };
    let scratch = a.dir.is_none();
    let dir = a.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("custody-bench-playback-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let big_len = a.big_mib << 20;
    let (daemon, addr) = start(
        &custodyd,
        &dir,
        big_len.max(a.small_bytes as u64) + (1 << 20),
    )?;
    let pid = daemon.0.id();
    let client = Client::new(&format!("http://{addr}"))?;

    // The segments: a 6 s one and a large one (random bytes: the timing
    // does not depend on the content).
    let t0 = Timestamp::parse_rfc3339("2026-01-01T10:00:00Z")?;
    let upload = |camera: &str, secs: i64| -> Result<Upload> {
        Ok(Upload {
            camera: camera.to_string(),
            stream: "main".to_string(),
            range: TimeRange::new(t0, t0.saturating_add_nanos(secs * 1_000_000_000))?,
            media_type: "video/mp2t".to_string(),
            sequence: None,
        })
    };
    let small_file = dir.join("six.ts");
    random_file(&small_file, a.small_bytes as u64)?;
    let small = client
        .put_file(&upload("bench-six", 6)?, &small_file)
        .await?
        .segment_id;
    let big_file = dir.join("big.ts");
    random_file(&big_file, big_len)?;
    let t = Instant::now();
    let big = client
        .put_file(&upload("bench-big", 300)?, &big_file)
        .await?
        .segment_id;
    let ingest_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&big_file)?;
    let hls = |id: &str| format!("/playback/v1/segments/{id}/media.ts");

    // Time to first byte of the 6 s segment.
    let mut h = Vec::new();
    let mut g = Vec::new();
    for _ in 0..a.ttfb_runs {
        h.push(http_get(&addr, &hls(&small), None).await?.0);
        g.push(read_segment(&client, &small).await?.0);
    }
    h.sort();
    g.sort();

    // MB/s of the large segment.
    let mbs = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let (mut best_h, mut best_g) = (0f64, 0f64);
    for _ in 0..a.big_runs {
        let (_, n, d) = http_get(&addr, &hls(&big), None).await?;
        if n != big_len {
            bail!("HLS read {n} of {big_len} bytes");
        }
        best_h = best_h.max(mbs(n, d));
        let (_, n, d) = read_segment(&client, &big).await?;
        if n != big_len {
            bail!("ReadSegment read {n} of {big_len} bytes");
        }
        best_g = best_g.max(mbs(n, d));
    }

    // RSS while many players stream the large segment at once.
    let idle = rss_mib_of(pid);
    let until = Instant::now() + Duration::from_secs(a.player_secs);
    let players: Vec<_> = (0..a.players)
        .map(|_| {
            let addr = addr.clone();
            let path = hls(&big);
            tokio::spawn(async move { http_get(&addr, &path, Some(until)).await })
        })
        .collect();
    let mut peak = idle;
    while Instant::now() < until {
        peak = peak.max(rss_mib_of(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut streamed = 0u64;
    for p in players {
        streamed += p.await??.1;
    }

    println!(
        "playback: custodyd pid {pid} on {addr} (plaintext loopback); HLS = HTTP/1.1 GET on a new connection, ReadSegment = gRPC on one channel"
    );
    println!("{:<44} {:>22} {:>22}", "", "HLS segment GET", "ReadSegment");
    println!(
        "{:<44} {:>22} {:>22}",
        format!("first byte, 6 s segment ({} B) p50", a.small_bytes),
        ms(percentile(&h, 0.5)),
        ms(percentile(&g, 0.5))
    );
    println!(
        "{:<44} {:>22} {:>22}",
        format!("first byte, 6 s segment, p99 of {}", a.ttfb_runs),
        ms(percentile(&h, 0.99)),
        ms(percentile(&g, 0.99))
    );
    println!(
        "{:<44} {:>22} {:>22}",
        format!("MB/s, {} MiB segment (best of {})", a.big_mib, a.big_runs),
        format!("{best_h:.0}"),
        format!("{best_g:.0}")
    );
    println!(
        "RSS of custodyd: {idle:.0} MiB idle, {peak:.0} MiB peak while {} players streamed the {} MiB segment for {} s ({:.0} MB/s together); ingest of it took {ingest_secs:.1} s",
        a.players,
        a.big_mib,
        a.player_secs,
        streamed as f64 / a.player_secs as f64 / 1e6
    );
    drop(daemon);
    if scratch {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
