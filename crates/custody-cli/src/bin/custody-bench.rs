//! `custody-bench`: ingest throughput through gRPC next to raw fsync'd file
//! writes of the same bytes on the same disk. Prints a table.
//!
//! `cargo run --release -p custody-cli --bin custody-bench -- [--dir DIR]`

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use custody_cli::client::{Client, Upload};
use custody_core::{TimeRange, Timestamp};
use custody_server::{grpc, Node, ServerConfig};
use rand::RngCore;

#[derive(Parser)]
struct Args {
    /// Scratch directory (on the disk to measure); removed afterwards.
    #[arg(long, default_value = "target/bench-scratch")]
    dir: PathBuf,
    /// Total bytes per scenario.
    #[arg(long, default_value_t = 192 * 1024 * 1024)]
    bytes: u64,
    /// Concurrent uploads.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

struct Row {
    name: String,
    segments: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Row {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
    fn sps(&self) -> f64 {
        self.segments as f64 / self.elapsed.as_secs_f64()
    }
}

async fn grpc_ingest(
    client: &Client,
    size: usize,
    count: u64,
    concurrency: usize,
    camera: &str,
) -> Result<Row> {
    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z")?;
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = sem.clone().acquire_owned().await?;
        let client = client.clone();
        let data = payload.clone();
        let camera = camera.to_string();
        tasks.push(tokio::spawn(async move {
            let s = t0.saturating_add_nanos(i as i64 * 6_000_000_000);
            let u = Upload {
                camera,
                stream: "main".into(),
                range: TimeRange::new(s, s.saturating_add_nanos(6_000_000_000))?,
                media_type: "video/mp2t".into(),
                sequence: None,
            };
            let r = client.put_bytes(&u, data).await;
            drop(permit);
            r.map(|_| ()).map_err(anyhow::Error::from)
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Row {
        name: format!("gRPC ingest {}", human(size)),
        segments: count,
        bytes: count * size as u64,
        elapsed: started.elapsed(),
    })
}

fn raw_writes(dir: &std::path::Path, size: usize, count: u64) -> Result<Row> {
    let mut payload = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut payload);
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    for i in 0..count {
        let p = dir.join(format!("{i}.bin"));
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&payload)?;
        f.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Row {
        name: format!("raw fsync'd writes {}", human(size)),
        segments: count,
        bytes: count * size as u64,
        elapsed: started.elapsed(),
    })
}

fn human(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else {
        format!("{} KiB", n >> 10)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    let config = ServerConfig {
        data_dir: args.dir.join("node"),
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let node = Node::open(&config).await.context("opening node")?;
    let bound = grpc::Serving::bind(&config.listen).await?;
    let addr = format!("http://{}", bound.local_addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve(node, bound, async {
        let _ = stop_rx.await;
    }));
    let client = Client::new(&addr)?;

    let mut rows = Vec::new();
    for (size, cam) in [(3_000_000usize, "bench-3mb"), (128 * 1024, "bench-128k")] {
        let count = (args.bytes / size as u64).max(1);
        let g = grpc_ingest(&client, size, count, args.concurrency, cam).await?;
        let r = raw_writes(&args.dir.join(format!("raw-{size}")), size, count)?;
        rows.push((g, r));
    }
    let _ = stop_tx.send(());
    let _ = server.await;

    println!(
        "Custody ingest benchmark ({} per scenario, {} concurrent uploads, dir {})",
        human(args.bytes as usize),
        args.concurrency,
        args.dir.display()
    );
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>12}",
        "scenario", "segments", "MB/s", "seg/s", "vs raw"
    );
    for (g, r) in &rows {
        println!(
            "{:<28} {:>9} {:>10.1} {:>10.1} {:>11.2}x",
            g.name,
            g.segments,
            g.mbps(),
            g.sps(),
            g.mbps() / r.mbps()
        );
        println!(
            "{:<28} {:>9} {:>10.1} {:>10.1} {:>12}",
            r.name,
            r.segments,
            r.mbps(),
            r.sps(),
            "1.00x"
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
