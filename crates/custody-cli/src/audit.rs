//! `custody audit`: list records through the server, and verify the chain
//! or save its head offline, straight from the store with a key file (no
//! server needed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use custody_audit::{verify, TrustedHead, VerifyReport, AUDIT_PREFIX};
use custody_core::Timestamp;
use custody_crypto::Keyring;
use custody_proto::v1 as pb;
use custody_proto::v1::audit_service_client::AuditServiceClient;
use custody_store::{ObjectPath, Store, StoreConfig};
use futures::TryStreamExt;
use serde_json::{json, Value};

use crate::client::{ts, Client};
use crate::progress::{Progress, Unit};

/// `custody audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit records (through the server), oldest first.
    Ls {
        /// Only records concerning this camera.
        #[arg(long)]
        camera: Option<String>,
        /// Only records of this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only this action or those under it (`hold` matches `hold.create`).
        #[arg(long)]
        action: Option<String>,
        /// Only records at or after this instant (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this instant (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Verify the chain offline, from the store and the key file. Exits
    /// non-zero and names every edited, removed, reordered, inserted or
    /// truncated record.
    Verify {
        /// The store directory or bucket, and the key file.
        #[command(flatten)]
        store: StoreArgs,
        /// A head saved earlier with `custody audit head`: records cut after it are noticed.
        #[arg(long)]
        head: Option<PathBuf>,
    },
    /// Verify the chain offline and print its head (JSON) to keep for a later `verify --head`.
    Head {
        /// The store directory or bucket, and the key file.
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where the chain is, and the keys that sealed it.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Store: a directory (the data dir or its `objects`), file://, or s3://bucket[/prefix].
    #[arg(long)]
    store: String,
    /// Key file (TOML keyring) holding the KEKs that sealed the records.
    #[arg(long)]
    key_file: PathBuf,
    /// S3 endpoint, for S3-compatible stores.
    #[arg(long, default_value = "")]
    s3_endpoint: String,
    /// S3 region.
    #[arg(long, default_value = "")]
    s3_region: String,
    /// Allow plain HTTP to the S3 endpoint.
    #[arg(long)]
    s3_allow_http: bool,
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn parse_ts(s: &Option<String>) -> Result<Option<prost_types::Timestamp>> {
    s.as_deref()
        .map(|s| Ok(ts(Timestamp::parse_rfc3339(s)?)))
        .transpose()
}

/// Runs an audit subcommand.
pub async fn audit(client: &Client, cmd: AuditCommand, json_out: bool) -> Result<()> {
    match cmd {
        AuditCommand::Ls {
            camera,
            principal,
            action,
            since,
            until,
        } => {
            let mut c = AuditServiceClient::new(client.channel());
            let mut req = pb::ListAuditRecordsRequest {
                camera_id: camera.unwrap_or_default(),
                principal: principal.unwrap_or_default(),
                action: action.unwrap_or_default(),
                since: parse_ts(&since)?,
                until: parse_ts(&until)?,
                page_size: 0,
                page_token: String::new(),
            };
            let mut all = Vec::new();
            loop {
                let r = c
                    .list_audit_records(req.clone())
                    .await
                    .map_err(status)?
                    .into_inner();
                for rec in &r.records {
                    if !json_out {
                        println!("{}", record_line(rec));
                    }
                }
                all.extend(r.records);
                if r.next_page_token.is_empty() {
                    break;
                }
                req.page_token = r.next_page_token;
            }
            if json_out {
                println!("{}", Value::Array(all.iter().map(record_json).collect()));
            }
            Ok(())
        }
        AuditCommand::Verify { store, head } => {
            let trusted = match &head {
                Some(p) => Some(read_head(p)?),
                None => None,
            };
            let report = verify_store(&store, trusted.as_ref(), json_out).await?;
            if json_out {
                println!("{}", report_json(&report));
            } else if report.ok() {
                println!(
                    "audit chain OK: {} records in {} batches, {} heads; last record {} digest {}",
                    report.records,
                    report.batches,
                    report.heads,
                    report.last_seq,
                    report.last_digest
                );
            } else {
                println!(
                    "audit chain FAILED: {} problem(s) ({} authentic records in place)",
                    report.problems.len(),
                    report.records
                );
                for p in &report.problems {
                    println!("  {p}");
                }
            }
            if !report.ok() {
                bail!(
                    "audit chain verification failed: {}",
                    report
                        .problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Ok(())
        }
        AuditCommand::Head { store } => {
            let report = verify_store(&store, None, json_out).await?;
            if !report.ok() {
                for p in &report.problems {
                    eprintln!("  {p}");
                }
                bail!("the chain does not verify; no head written");
            }
            println!(
                "{}",
                json!({
                    "seq": report.last_seq,
                    "digest": report.last_digest,
                    "saved_at": custody_core::Clock::now(&custody_core::SystemClock).to_string(),
                    "store": store.store,
                })
            );
            Ok(())
        }
    }
}

fn read_head(path: &Path) -> Result<TrustedHead> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let seq = v["seq"]
        .as_u64()
        .with_context(|| format!("{}: no seq", path.display()))?;
    let digest = v["digest"]
        .as_str()
        .and_then(|d| hex::decode(d).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .with_context(|| format!("{}: digest is not 64 hex digits", path.display()))?;
    Ok(TrustedHead { seq, digest })
}

/// Opens the store named by `args` read-only in spirit: staging goes to a
/// private temporary directory, and a missing local directory is an error
/// (never created). Reading the objects shows a progress bar on a terminal.
async fn verify_store(
    args: &StoreArgs,
    trusted: Option<&TrustedHead>,
    json_out: bool,
) -> Result<VerifyReport> {
    let keyring = Keyring::load_file(&args.key_file)
        .with_context(|| format!("key file {}", args.key_file.display()))?;
    let url = if args.store.contains("://") {
        args.store.clone()
    } else {
        let p = PathBuf::from(&args.store);
        let p = if !p.join(AUDIT_PREFIX).exists() && p.join("objects").exists() {
            p.join("objects")
        } else {
            p
        };
        let p = std::fs::canonicalize(&p)
            .with_context(|| format!("store directory {}", p.display()))?;
        format!("file://{}", p.display())
    };
    if let Some(p) = url.strip_prefix("file://") {
        if !Path::new(p).is_dir() {
            bail!("store directory {p} does not exist");
        }
    }
    let scratch = std::env::temp_dir().join(format!("custody-audit-{}", std::process::id()));
    let config = StoreConfig {
        url,
        s3_endpoint: args.s3_endpoint.clone(),
        s3_region: args.s3_region.clone(),
        s3_allow_http: args.s3_allow_http,
        ..StoreConfig::default()
    };
    let result = async {
        let store = Store::open(&config, &scratch).await?;
        let keys: Vec<ObjectPath> = store
            .list(&ObjectPath::from(AUDIT_PREFIX))
            .map_ok(|o| o.key)
            .try_collect()
            .await?;
        let bar = Progress::new(Unit::Items("objects"), json_out);
        bar.set_length(keys.len() as u64);
        let mut objects = Vec::with_capacity(keys.len());
        for k in keys {
            let bytes = store.get(&k).await?;
            objects.push((k.to_string(), bytes.to_vec()));
            bar.inc(1);
        }
        bar.finish();
        Ok::<_, custody_store::StoreError>(objects)
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    let objects = result.context("reading the audit objects")?;
    Ok(verify(&objects, &keyring, trusted))
}

fn report_json(r: &VerifyReport) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["ok"] = Value::Bool(r.ok());
    if let Some(list) = v["problems"].as_array_mut() {
        for (p, orig) in list.iter_mut().zip(&r.problems) {
            p["text"] = Value::String(orig.to_string());
        }
    }
    v
}

fn ts_str(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| Timestamp::from_parts(t.seconds, t.nanos).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A record as JSON.
pub fn record_json(r: &pb::AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "at": ts_str(&r.at),
        "principal": r.principal,
        "listener": r.listener,
        "action": r.action,
        "cameras": r.camera_ids,
        "segment": r.segment_id,
        "hold": r.hold_id,
        "outcome": r.outcome,
        "reason": r.reason,
        "detail": r.detail,
        "digest": r.digest,
        "prev": r.prev_digest,
        "object": r.object,
        "node": r.node,
    })
}

/// A record as one human line.
pub fn record_line(r: &pb::AuditRecord) -> String {
    let mut target = r.camera_ids.join(",");
    for (k, v) in [("segment", &r.segment_id), ("hold", &r.hold_id)] {
        if !v.is_empty() {
            target.push_str(&format!(" {k} {v}"));
        }
    }
    format!(
        "{:>6}  {}  {:<20} {:<10} {:<22} {:<8} {}{}{}",
        r.seq,
        ts_str(&r.at),
        if r.node.is_empty() {
            r.principal.clone()
        } else {
            format!("{}@{}", r.principal, r.node)
        },
        r.listener,
        r.action,
        r.outcome,
        target,
        if r.detail.is_empty() {
            String::new()
        } else {
            format!("  [{}]", r.detail)
        },
        if r.reason.is_empty() {
            String::new()
        } else {
            format!("  reason: {}", r.reason)
        }
    )
}
