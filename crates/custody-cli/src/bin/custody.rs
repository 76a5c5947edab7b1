//! `custody`: the Custody command-line client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use custody_cli::client::{describe, media_type_for, ts, Client, ClientTls, Upload};
use custody_cli::output;
use custody_cli::watch::{watch, WatchConfig};
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
    /// Server address.
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
        /// Output file.
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
        /// Output file.
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
        let r = watch(client, &cfg).await.map_err(anyhow::Error::msg)?;
        if json_out {
            println!(
                "{}",
                json!({"uploaded": r.uploaded, "duplicates": r.duplicates, "rejected": r.rejected})
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
    }
    Ok(())
}

async fn write_stream<S>(mut s: S, output: &PathBuf) -> Result<u64>
where
    S: futures::Stream<Item = Result<Vec<u8>, tonic::Status>> + Unpin,
{
    let tmp = output.with_extension("partial");
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut n = 0u64;
    while let Some(piece) = s.next().await {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => {
                drop(f);
                let _ = tokio::fs::remove_file(&tmp).await;
                bail!("{}", describe(&e));
            }
        };
        n += piece.len() as u64;
        f.write_all(&piece).await?;
    }
    f.flush().await?;
    f.sync_all().await?;
    tokio::fs::rename(&tmp, output).await?;
    Ok(n)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Certs { command } = cli.command {
        return custody_cli::certs::run(command, cli.json);
    }
    let tls = match (cli.ca, cli.cert, cli.key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca,
            cert,
            key,
            server_name: cli.tls_server_name,
        }),
        _ => anyhow::bail!("mutual TLS needs all of --ca, --cert and --key"),
    };
    let client = Client::connect(&cli.server, tls.as_ref())?;
    let status = |e: tonic::Status| anyhow::anyhow!("{}", describe(&e));
    match cli.command {
        Command::Ingest(a) => ingest(&client, a, cli.json).await?,
        Command::Ls { camera: None, .. } => {
            let r = client
                .archive()
                .list_cameras(pb::ListCamerasRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if cli.json {
                println!(
                    "{}",
                    serde_json::Value::Array(r.cameras.iter().map(output::camera_json).collect())
                );
            } else {
                for c in &r.cameras {
                    println!("{}", output::camera_line(c));
                }
            }
        }
        Command::Ls {
            camera: Some(camera),
            from,
            to,
            stream,
        } => {
            let range = range_of(&from, &to)?;
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
                    .map_err(status)?
                    .into_inner();
                for s in &r.segments {
                    if !cli.json {
                        println!("{}", output::segment_line(s));
                    }
                }
                all.extend(r.segments);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::Value::Array(all.iter().map(output::segment_json).collect())
                );
            }
        }
        Command::Get {
            segment_id,
            output,
            offset,
            length,
        } => {
            let s = client
                .archive()
                .read_segment(pb::ReadSegmentRequest {
                    segment_id: segment_id.clone(),
                    offset,
                    length,
                })
                .await
                .map_err(status)?
                .into_inner()
                .map(|m| m.map(|m| m.data));
            let n = write_stream(s, &output).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"segment_id": segment_id, "bytes": n, "output": output})
                );
            } else {
                println!("{segment_id}: {n} bytes → {}", output.display());
            }
        }
        Command::Export {
            camera,
            from,
            to,
            stream,
            output,
        } => {
            let range = range_of(&Some(from), &Some(to))?;
            let s = client
                .archive()
                .export_clip(pb::ExportClipRequest {
                    camera_id: camera.clone(),
                    stream,
                    start: Some(ts(range.start())),
                    end: Some(ts(range.end())),
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut segments = 0usize;
            let s = s.map(|m| {
                m.map(|m| {
                    segments += m.segments.len();
                    m.data
                })
            });
            let n = write_stream(s, &output).await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"camera_id": camera, "segments": segments, "bytes": n, "output": output})
                );
            } else {
                println!(
                    "{camera} {range}: {segments} segments, {n} bytes → {}",
                    output.display()
                );
            }
        }
        Command::Policy { command } => {
            custody_cli::retention::policy(&client, command, cli.json).await?
        }
        Command::Hold { command } => {
            custody_cli::retention::hold(&client, command, cli.json).await?
        }
        Command::Sweep { dry_run } => {
            custody_cli::retention::sweep(&client, dry_run, cli.json).await?
        }
        // Handled above, before connecting.
        Command::Certs { .. } => {}
        Command::Status => {
            let r = NodeServiceClient::new(client.channel())
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if cli.json {
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
                    let refused: Vec<String> =
                        l.refusals.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
        }
        Command::Audit { command } => custody_cli::audit::audit(&client, command, cli.json).await?,
        Command::Compliance { command } => {
            custody_cli::compliance::compliance(&client, command, cli.json).await?
        }
        Command::Evidence { command } => {
            custody_cli::evidence::evidence(&client, command, cli.json).await?
        }
        Command::Keys {
            command: KeysCommand::Init { key_file },
        } => {
            let k = custody_crypto::Keyring::create_file(&key_file)?;
            println!(
                "created {} (mode 0600) with key {}",
                key_file.display(),
                k.active().id()
            );
        }
        Command::Keys {
            command: KeysCommand::Rotate { key_file, id },
        } => {
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
