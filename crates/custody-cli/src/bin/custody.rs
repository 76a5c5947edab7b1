//! `custody`: the Custody command-line client.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use custody_cli::client::{describe, media_type_for, ts, Client, ClientTls, Upload};
use custody_cli::output;
use custody_cli::progress::{Progress, Unit};
use custody_cli::watch::{watch, SegmentEvent, WatchConfig};
use custody_core::{TimeRange, Timestamp};
use custody_proto::v1 as pb;
use custody_proto::v1::node_service_client::NodeServiceClient;
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Client for a Custody archive.
#[derive(Parser)]
#[command(name = "custody", version)]
struct Cli {
    /// Server address; for a cluster, several separated by commas (calls
    /// fail over to the next when one stops answering).
    #[arg(
        long,
        global = true,
        env = "CUSTODY_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// CA certificate (PEM) to verify an https:// server with.
    #[arg(long, global = true, env = "CUSTODY_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "CUSTODY_CERT")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "CUSTODY_KEY")]
    key: Option<PathBuf>,
    /// Name to verify the server certificate against, if not the address's host.
    #[arg(long, global = true, env = "CUSTODY_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members as the node at --server sees them.
    Status,
}

#[derive(Subcommand)]
enum Command {
    /// Upload segment files, or follow ffmpeg's segment list with --watch.
    Ingest(IngestArgs),
    /// List cameras, or a camera's segments in a time range.
    Ls {
        /// Camera id; without it, list cameras.
        camera: Option<String>,
        /// Start of the range (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// End of the range (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only this stream.
        #[arg(long, default_value = "")]
        stream: String,
    },
    /// Write a segment's decrypted bytes to a file (or stdout with -o -).
    Get {
        /// Segment id.
        segment_id: String,
        /// Output file; `-` for stdout.
        #[arg(short, long)]
        output: PathBuf,
        /// First byte to read.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read (0: to the end).
        #[arg(long, default_value_t = 0)]
        length: u64,
    },
    /// Export a camera's footage in a time range as one MPEG-TS file.
    Export {
        /// Camera id.
        camera: String,
        /// Start (RFC 3339).
        #[arg(long)]
        from: String,
        /// End (RFC 3339).
        #[arg(long)]
        to: String,
        /// Stream.
        #[arg(long, default_value = "main")]
        stream: String,
        /// Output file; `-` for stdout.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Retention policies.
    Policy {
        #[command(subcommand)]
        command: custody_cli::retention::PolicyCommand,
    },
    /// Legal holds.
    Hold {
        #[command(subcommand)]
        command: custody_cli::retention::HoldCommand,
    },
    /// Delete expired, unheld footage now (or show what would go with --dry-run).
    Sweep {
        /// Only report.
        #[arg(long)]
        dry_run: bool,
    },
    /// The server's listeners and refused-request counts.
    Status,
    /// The cluster: members, liveness, duties, and this node's lag behind each.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Certificates for a deployment: CA, server, cameras, people; revocation.
    Certs {
        #[command(subcommand)]
        command: custody_cli::certs::CertsCommand,
    },
    /// The audit chain: list records, verify it offline, save its head.
    Audit {
        #[command(subcommand)]
        command: custody_cli::audit::AuditCommand,
    },
    /// Retention compliance reports computed from the store.
    Compliance {
        #[command(subcommand)]
        command: custody_cli::compliance::ComplianceCommand,
    },
    /// Signed evidence bundles: export, and verify offline.
    Evidence {
        #[command(subcommand)]
        command: custody_cli::evidence::EvidenceCommand,
    },
    /// Print the HLS playlist URL of a camera's footage in a time range
    /// (served by listeners with the playback service); --open plays it.
    Play(custody_cli::play::PlayArgs),
    /// Key-encryption key files.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new key file (mode 0600) with one fresh key.
    Init {
        /// Key file to create.
        #[arg(long, default_value = "data/keys/keyring.toml")]
        key_file: PathBuf,
    },
    /// Add a fresh key and make it the one new segments use.
    Rotate {
        /// Key file.
        #[arg(long, default_value = "data/keys/keyring.toml")]
        key_file: PathBuf,
        /// Id of the new key.
        #[arg(long)]
        id: String,
    },
}

#[derive(ClapArgs)]
struct IngestArgs {
    /// Segment files, uploaded in order.
    files: Vec<PathBuf>,
    /// Camera id.
    #[arg(long)]
    camera: String,
    /// Stream name.
    #[arg(long, default_value = "main")]
    stream: String,
    /// Start of the first file (RFC 3339).
    #[arg(long)]
    start: Option<String>,
    /// End of the (single) file (RFC 3339).
    #[arg(long)]
    end: Option<String>,
    /// Duration of each file in seconds, for several consecutive files.
    #[arg(long)]
    segment_duration: Option<f64>,
    /// Media type (default: from the file extension).
    #[arg(long)]
    media_type: Option<String>,
    /// Sequence number (single file).
    #[arg(long)]
    sequence: Option<u64>,
    /// Follow ffmpeg's segment list in this directory.
    #[arg(long)]
    watch: Option<PathBuf>,
    /// The CSV segment list (default: WATCH/segments.csv).
    #[arg(long)]
    list: Option<PathBuf>,
    /// strftime format of the time in segment file names.
    #[arg(long, default_value = "%Y%m%d-%H%M%S")]
    name_time_format: String,
    /// Delete local files once stored.
    #[arg(long)]
    delete_after_upload: bool,
    /// Upload what is listed now and exit instead of following.
    #[arg(long)]
    once: bool,
}

fn parse_ts(s: &str) -> Result<Timestamp> {
    Ok(Timestamp::parse_rfc3339(s)?)
}

fn range_of(from: &Option<String>, to: &Option<String>) -> Result<TimeRange> {
    let (Some(f), Some(t)) = (from, to) else {
        bail!("give both --from and --to (RFC 3339)");
    };
    Ok(TimeRange::new(parse_ts(f)?, parse_ts(t)?)?)
}

async fn ingest(client: &Client, a: IngestArgs, json_out: bool) -> Result<()> {
    if let Some(dir) = a.watch {
        let cfg = WatchConfig {
            list: a.list.unwrap_or_else(|| dir.join("segments.csv")),
            dir,
            camera: a.camera,
            stream: a.stream,
            name_time_format: a.name_time_format,
            delete_after_upload: a.delete_after_upload,
            once: a.once,
            poll: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        };
        // One line per settled segment as it happens (JSON lines while
        // following; with --once and --json, one document at the end).
        let mut settled = Vec::new();
        let bar = Progress::new(Unit::Items("segments"), json_out);
        let mut count = 0u64;
        let mut on_segment = |e: &SegmentEvent| {
            count += 1;
            bar.set_length(count + e.pending as u64);
            bar.set_position(count);
            if json_out && a.once {
                settled.push(e.json());
                return;
            }
            let line = if json_out {
                e.json().to_string()
            } else {
                e.line()
            };
            bar.suspend(|| {
                let mut out = std::io::stdout().lock();
                // A closed stdout must not stop the uploads.
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            });
        };
        let r = watch(client, &cfg, &mut on_segment)
            .await
            .map_err(anyhow::Error::msg)?;
        bar.finish();
        if json_out {
            println!(
                "{}",
                json!({"uploaded": r.uploaded, "duplicates": r.duplicates, "rejected": r.rejected,
                       "segments": settled})
            );
        } else {
            println!(
                "{} uploaded, {} already stored, {} rejected",
                r.uploaded,
                r.duplicates,
                r.rejected.len()
            );
            for (f, why) in &r.rejected {
                println!("  rejected {f}: {why}");
            }
        }
        return if r.rejected.is_empty() {
            Ok(())
        } else {
            bail!("some segments were rejected")
        };
    }
    if a.files.is_empty() {
        bail!("give segment files, or --watch DIR");
    }
    let start = parse_ts(a.start.as_deref().context("--start is required")?)?;
    let ranges: Vec<TimeRange> = match (&a.end, a.segment_duration) {
        (Some(end), None) if a.files.len() == 1 => vec![TimeRange::new(start, parse_ts(end)?)?],
        (None, Some(d)) if d > 0.0 => {
            let step = (d * 1e9).round() as i64;
            (0..a.files.len() as i64)
                .map(|i| {
                    TimeRange::new(
                        start.saturating_add_nanos(i * step),
                        start.saturating_add_nanos((i + 1) * step),
                    )
                })
                .collect::<Result<_, _>>()?
        }
        _ => bail!("give --end for one file, or --segment-duration SECONDS for consecutive files"),
    };
    // Several files: a bar over their bytes (a file that cannot be read is
    // named by its upload below). One file needs none.
    let no_bar = json_out || a.files.len() < 2;
    let bar = Progress::new(Unit::Bytes, no_bar);
    let size = |f: &PathBuf| std::fs::metadata(f).map_or(0, |m| m.len());
    bar.set_length(a.files.iter().map(size).sum());
    for (i, (file, range)) in a.files.iter().zip(ranges).enumerate() {
        let u = Upload {
            camera: a.camera.clone(),
            stream: a.stream.clone(),
            range,
            media_type: a
                .media_type
                .clone()
                .unwrap_or_else(|| media_type_for(file).to_string()),
            sequence: if a.files.len() == 1 {
                a.sequence
            } else {
                a.sequence.map(|s| s + i as u64)
            },
        };
        let r = client
            .put_file(&u, file)
            .await
            .with_context(|| format!("uploading {}", file.display()))?;
        bar.inc(size(file));
        bar.suspend(|| {
            if json_out {
                println!(
                    "{}",
                    json!({"file": file, "segment_id": r.segment_id, "size_bytes": r.size_bytes,
                           "stored_bytes": r.stored_bytes, "sha256": hex::encode(&r.sha256), "duplicate": r.duplicate})
                );
            } else {
                println!(
                    "{} {} {} B sha256 {}{}",
                    file.display(),
                    r.segment_id,
                    r.size_bytes,
                    hex::encode(&r.sha256),
                    if r.duplicate { " (already stored)" } else { "" }
                );
            }
        });
    }
    bar.finish();
    Ok(())
}

/// Whether `-o PATH` means stdout.
fn is_stdout(output: &Path) -> bool {
    output.as_os_str() == "-"
}

/// Writes the streamed bytes to `output`: stdout for `-`; else a
/// `PATH.partial` file renamed into place when complete, removed on any failure.
async fn write_stream<S>(s: S, output: &Path) -> Result<u64>
where
    S: futures::Stream<Item = Result<bytes::Bytes, tonic::Status>> + Unpin,
{
    if is_stdout(output) {
        return copy_to_stdout(s).await;
    }
    let mut tmp = output.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let result = async {
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let n = copy_stream(s, &mut f, &tmp.display().to_string()).await?;
        f.flush().await?;
        f.sync_all().await?;
        drop(f);
        tokio::fs::rename(&tmp, output)
            .await
            .with_context(|| format!("renaming {} to {}", tmp.display(), output.display()))?;
        Ok(n)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn copy_to_stdout<S>(mut s: S) -> Result<u64>
where
    S: futures::Stream<Item = Result<bytes::Bytes, tonic::Status>> + Unpin,
{
    let mut n = 0u64;
    while let Some(piece) = s.next().await {
        let piece = piece.map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        std::io::stdout()
            .write_all(&piece)
            .context("writing stdout")?;
        n += piece.len() as u64;
    }
    std::io::stdout().flush().context("writing stdout")?;
    Ok(n)
}

async fn copy_stream<S, W>(mut s: S, out: &mut W, name: &str) -> Result<u64>
where
    S: futures::Stream<Item = Result<bytes::Bytes, tonic::Status>> + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut n = 0u64;
    while let Some(piece) = s.next().await {
        let piece = piece.map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        out.write_all(&piece)
            .await
            .with_context(|| format!("writing {name}"))?;
        n += piece.len() as u64;
    }
    Ok(n)
}

/// Reports what `get`/`export` wrote: on stdout, or on stderr when the
/// bytes themselves went to stdout.
fn report_written(output: &Path, json_line: serde_json::Value, human: String, json_out: bool) {
    let line = if json_out {
        json_line.to_string()
    } else {
        human
    };
    if is_stdout(output) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    custody_cli::logging::init("warn");
    let cli = Cli::parse();
    if let Command::Certs { command } = cli.command {
        return custody_cli::certs::run(command, cli.json);
    }
    let tls = client_tls(cli.ca, cli.cert, cli.key, cli.tls_server_name)?;
    if let Command::Play(a) = cli.command {
        let player_tls = tls.map(|t| custody_cli::play::PlayerTls {
            ca: t.ca,
            cert: t.cert,
            key: t.key,
        });
        return custody_cli::play::play(&cli.server, player_tls.as_ref(), a, cli.json);
    }
    let client = Client::connect(&cli.server, tls.as_ref())?;
    run(&client, cli.command, cli.json).await
}

/// The mutual TLS settings: all of `--ca`, `--cert` and `--key`, or none.
fn client_tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> Result<Option<ClientTls>> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(ClientTls {
            ca,
            cert,
            key,
            server_name,
        })),
        _ => anyhow::bail!("mutual TLS needs all of --ca, --cert and --key"),
    }
}

/// Runs one subcommand against the server (`certs` is handled before connecting).
async fn run(client: &Client, command: Command, json_out: bool) -> Result<()> {
    match command {
        Command::Ingest(a) => ingest(client, a, json_out).await,
        Command::Ls { camera: None, .. } => list_cameras(client, json_out).await,
        Command::Ls {
            camera: Some(camera),
            from,
            to,
            stream,
        } => list_segments(client, camera, range_of(&from, &to)?, stream, json_out).await,
        Command::Get {
            segment_id,
            output,
            offset,
            length,
        } => get_segment(client, segment_id, &output, offset, length, json_out).await,
        Command::Export {
            camera,
            from,
            to,
            stream,
            output,
        } => {
            let range = range_of(&Some(from), &Some(to))?;
            export_clip(client, camera, range, stream, &output, json_out).await
        }
        Command::Policy { command } => {
            custody_cli::retention::policy(client, command, json_out).await
        }
        Command::Hold { command } => custody_cli::retention::hold(client, command, json_out).await,
        Command::Sweep { dry_run } => {
            custody_cli::retention::sweep(client, dry_run, json_out).await
        }
        // Handled in main, before connecting.
        Command::Certs { .. } | Command::Play(_) => Ok(()),
        Command::Status => show_status(client, json_out).await,
        Command::Cluster {
            command: ClusterCommand::Status,
        } => show_cluster(client, json_out).await,
        Command::Audit { command } => custody_cli::audit::audit(client, command, json_out).await,
        Command::Compliance { command } => {
            custody_cli::compliance::compliance(client, command, json_out).await
        }
        Command::Evidence { command } => {
            custody_cli::evidence::evidence(client, command, json_out).await
        }
        Command::Keys { command } => keys(command),
    }
}

/// An RPC failure as an error, in words.
fn rpc_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", describe(&e))
}

/// `custody ls`: the cameras the archive holds footage of.
async fn list_cameras(client: &Client, json_out: bool) -> Result<()> {
    let r = client
        .archive()
        .list_cameras(pb::ListCamerasRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_out {
        println!(
            "{}",
            serde_json::Value::Array(r.cameras.iter().map(output::camera_json).collect())
        );
    } else {
        for c in &r.cameras {
            println!("{}", output::camera_line(c));
        }
    }
    Ok(())
}

/// `custody ls CAMERA`: the camera's segments in `range`, page by page.
async fn list_segments(
    client: &Client,
    camera: String,
    range: TimeRange,
    stream: String,
    json_out: bool,
) -> Result<()> {
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let r = client
            .archive()
            .list_segments(pb::ListSegmentsRequest {
                camera_id: camera.clone(),
                stream: stream.clone(),
                start: Some(ts(range.start())),
                end: Some(ts(range.end())),
                page_size: 0,
                page_token: token.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        for s in &r.segments {
            if !json_out {
                println!("{}", output::segment_line(s));
            }
        }
        all.extend(r.segments);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    if json_out {
        println!(
            "{}",
            serde_json::Value::Array(all.iter().map(output::segment_json).collect())
        );
    }
    Ok(())
}

/// `custody get`: a segment's decrypted bytes (or a byte range of them) to `output`.
async fn get_segment(
    client: &Client,
    segment_id: String,
    output: &Path,
    offset: u64,
    length: u64,
    json_out: bool,
) -> Result<()> {
    let s = client
        .archive()
        .read_segment(pb::ReadSegmentRequest {
            segment_id: segment_id.clone(),
            offset,
            length,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .map(|m| m.map(|m| m.data));
    let n = write_stream(s, output).await?;
    report_written(
        output,
        json!({"segment_id": segment_id, "bytes": n, "output": output}),
        format!("{segment_id}: {n} bytes → {}", output.display()),
        json_out,
    );
    Ok(())
}

/// `custody export`: a camera's footage in `range` as one MPEG-TS file at `output`.
async fn export_clip(
    client: &Client,
    camera: String,
    range: TimeRange,
    stream: String,
    output: &Path,
    json_out: bool,
) -> Result<()> {
    let s = client
        .archive()
        .export_clip(pb::ExportClipRequest {
            camera_id: camera.clone(),
            stream,
            start: Some(ts(range.start())),
            end: Some(ts(range.end())),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut segments = 0usize;
    let s = s.map(|m| {
        m.map(|m| {
            segments += m.segments.len();
            m.data
        })
    });
    let n = write_stream(s, output).await?;
    report_written(
        output,
        json!({"camera_id": camera, "segments": segments, "bytes": n, "output": output}),
        format!(
            "{camera} {range}: {segments} segments, {n} bytes → {}",
            output.display()
        ),
        json_out,
    );
    Ok(())
}

/// `custody cluster status`: members, liveness, duties and lag.
async fn show_cluster(client: &Client, json_out: bool) -> Result<()> {
    let r = NodeServiceClient::new(client.channel())
        .get_cluster_status(pb::GetClusterStatusRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_out {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| {
                serde_json::json!({"node_id": m.node_id, "advertise": m.advertise, "alive": m.alive,
                    "heartbeat_age_ms": m.heartbeat_age_ms, "duties": m.duties,
                    "journal_head": m.journal_head, "applied": m.applied,
                    "lag_batches": m.lag_batches, "version": m.version, "started_at": m.started_at})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "node_id": r.node_id, "members": members })
        );
        return Ok(());
    }
    if r.node_id.is_empty() {
        println!("{} runs alone (no [cluster] section)", client.address());
        return Ok(());
    }
    println!("as seen by {} ({}):", r.node_id, client.address());
    for m in &r.members {
        println!(
            "{:<16} {:<5} heartbeat {:>6} ms ago  journal {:>8}  applied {:>8}  lag {:>5}  duties: {:<10} {}",
            m.node_id,
            if m.alive { "up" } else { "DOWN" },
            m.heartbeat_age_ms,
            m.journal_head,
            m.applied,
            m.lag_batches,
            if m.duties.is_empty() { "-".to_string() } else { m.duties.join(",") },
            m.advertise.join(",")
        );
    }
    Ok(())
}

/// `custody status`: the server's listeners and their refused-request counts.
async fn show_status(client: &Client, json_out: bool) -> Result<()> {
    let r = NodeServiceClient::new(client.channel())
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json_out {
        let ls: Vec<_> = r
            .listeners
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "addr": l.addr, "services": l.services,
                    "mtls": l.mtls, "refusals": l.refusals})
            })
            .collect();
        println!("{}", serde_json::json!({ "listeners": ls }));
    } else {
        for l in &r.listeners {
            let refused: Vec<String> = l.refusals.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "{:<12} {:<22} {:<9} refused: {}  services: {}",
                l.name,
                l.addr,
                if l.mtls { "mtls" } else { "plaintext" },
                if refused.is_empty() {
                    "none".to_string()
                } else {
                    refused.join(" ")
                },
                l.services.join(",")
            );
        }
    }
    Ok(())
}

/// `custody keys`: create a key file, or rotate its active key.
fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Init { key_file } => {
            let k = custody_crypto::Keyring::create_file(&key_file)?;
            println!(
                "created {} (mode 0600) with key {}",
                key_file.display(),
                k.active().id()
            );
        }
        KeysCommand::Rotate { key_file, id } => {
            let mut k = custody_crypto::Keyring::load_file(&key_file)?;
            k.rotate(custody_crypto::KeyId::parse(&id)?)?;
            k.save(&key_file)?;
            println!(
                "{}: new segments now use key {id}; restart custodyd to apply",
                key_file.display()
            );
        }
    }
    Ok(())
}
