//! `custody policy`, `custody hold` and `custody sweep`.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::hold_service_client::HoldServiceClient;
use custody_proto::v1::policy_service_client::PolicyServiceClient;
use custody_proto::v1::retention_service_client::RetentionServiceClient;
use serde_json::{json, Value};

use crate::client::{ts, Client};

/// Parses `30d`, `12h`, `15m`, `90s` or plain seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('d') => (&s[..s.len() - 1], 86_400),
        Some('h') => (&s[..s.len() - 1], 3_600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}: use e.g. 30d, 12h, 15m, 90s"))?;
    n.checked_mul(mult).context("duration too long")
}

fn human_secs(s: u64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn ts_str(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| Timestamp::from_parts(t.seconds, t.nanos).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Which cameras a policy applies to.
#[derive(Args, Clone)]
pub struct ScopeArgs {
    /// One camera.
    #[arg(long, conflicts_with = "group")]
    camera: Option<String>,
    /// A named camera group.
    #[arg(long)]
    group: Option<String>,
    /// Group members by camera id prefix.
    #[arg(long, requires = "group")]
    prefix: Option<String>,
    /// Group members by id (comma-separated).
    #[arg(long, requires = "group", value_delimiter = ',')]
    members: Vec<String>,
}

impl ScopeArgs {
    fn to_pb(&self) -> pb::PolicyScope {
        pb::PolicyScope {
            camera_id: self.camera.clone().unwrap_or_default(),
            group: self.group.clone().unwrap_or_default(),
            group_prefix: self.prefix.clone().unwrap_or_default(),
            group_cameras: self.members.clone(),
        }
    }
}

/// `custody policy ...`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set the policy of the default scope, a group (--group) or a camera (--camera).
    Set {
        /// The cameras the policy applies to.
        #[command(flatten)]
        scope: ScopeArgs,
        /// Keep footage this long after a segment ends (30d, 12h, 90s...).
        #[arg(long)]
        retain_for: String,
        /// Minimum retention; with --lock it can only be lengthened.
        #[arg(long)]
        floor: Option<String>,
        /// Maximum retention of unheld footage (privacy law).
        #[arg(long)]
        ceiling: Option<String>,
        /// Lock the floor (irreversible).
        #[arg(long)]
        lock: bool,
        /// Principal recorded with the change.
        #[arg(long, env = "CUSTODY_PRINCIPAL", default_value = "")]
        principal: String,
    },
    /// Show the policy of a scope.
    Get {
        /// The cameras the policy applies to.
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// List every scope's policy.
    Ls,
    /// Show the policy in force for a camera.
    Resolve {
        /// Camera id.
        camera: String,
    },
}

/// `custody hold ...`
#[derive(Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold on cameras × a time range.
    Create {
        /// Cameras (comma-separated).
        #[arg(long, value_delimiter = ',', required_unless_present = "all")]
        cameras: Vec<String>,
        /// Every camera, present and future.
        #[arg(long, conflicts_with = "cameras")]
        all: bool,
        /// Allow cameras with no footage yet.
        #[arg(long)]
        future_cameras: bool,
        /// Start (RFC 3339).
        #[arg(long)]
        from: String,
        /// End (RFC 3339); omit for an open-ended hold.
        #[arg(long)]
        to: Option<String>,
        /// Case id.
        #[arg(long)]
        case: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Principal placing the hold.
        #[arg(long, env = "CUSTODY_PRINCIPAL", default_value = "")]
        principal: String,
    },
    /// Release a hold.
    Release {
        /// Hold id.
        hold_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Principal releasing the hold.
        #[arg(long, env = "CUSTODY_PRINCIPAL", default_value = "")]
        principal: String,
    },
    /// Show one hold.
    Show {
        /// Hold id.
        hold_id: String,
    },
    /// List holds.
    Ls {
        /// Include released holds.
        #[arg(long)]
        all: bool,
    },
}

fn policy_json(v: &pb::PolicyVersion) -> Value {
    let p = v.policy.unwrap_or_default();
    json!({
        "scope": scope_name(v.scope.as_ref()),
        "version": v.version,
        "retain_for_secs": p.retain_for_secs,
        "floor_secs": p.floor_secs,
        "ceiling_secs": p.ceiling_secs,
        "locked": p.locked,
        "effective_at": ts_str(&v.effective_at),
        "set_by": v.set_by,
    })
}

fn scope_name(s: Option<&pb::PolicyScope>) -> String {
    match s {
        Some(s) if !s.camera_id.is_empty() => format!("camera {}", s.camera_id),
        Some(s) if !s.group.is_empty() => format!("group {}", s.group),
        _ => "default".to_string(),
    }
}

fn policy_line(v: &pb::PolicyVersion) -> String {
    let p = v.policy.unwrap_or_default();
    format!(
        "{:<24} v{:<3} retain {}{}{}{}  set by {} at {}",
        scope_name(v.scope.as_ref()),
        v.version,
        human_secs(p.retain_for_secs),
        p.floor_secs
            .map(|f| format!(", floor {}", human_secs(f)))
            .unwrap_or_default(),
        p.ceiling_secs
            .map(|c| format!(", ceiling {}", human_secs(c)))
            .unwrap_or_default(),
        if p.locked { " (locked)" } else { "" },
        v.set_by,
        ts_str(&v.effective_at)
    )
}

fn hold_json(h: &pb::HoldRecord) -> Value {
    json!({
        "hold_id": h.hold_id, "camera_ids": h.camera_ids, "all_cameras": h.all_cameras,
        "start": ts_str(&h.start), "end": ts_str(&h.end), "case_id": h.case_id, "reason": h.reason,
        "placed_by": h.placed_by, "placed_at": ts_str(&h.placed_at), "released": h.released,
        "released_by": h.released_by, "release_reason": h.release_reason, "released_at": ts_str(&h.released_at),
    })
}

fn hold_line(h: &pb::HoldRecord) -> String {
    let cams = if h.all_cameras {
        "all cameras".to_string()
    } else {
        h.camera_ids.join(",")
    };
    let end = if h.end.is_some() {
        ts_str(&h.end)
    } else {
        "open-ended".into()
    };
    let state = if h.released {
        format!(
            "RELEASED by {} at {} ({})",
            h.released_by,
            ts_str(&h.released_at),
            h.release_reason
        )
    } else {
        "ACTIVE".to_string()
    };
    format!(
        "{}  case {}  {}  {} → {}  placed by {} at {}  {}",
        h.hold_id,
        h.case_id,
        cams,
        ts_str(&h.start),
        end,
        h.placed_by,
        ts_str(&h.placed_at),
        state
    )
}

fn print_hold(h: &pb::HoldRecord, json_out: bool) {
    if json_out {
        println!("{}", hold_json(h));
    } else {
        println!("{}", hold_line(h));
    }
}

fn print_policy(v: &pb::PolicyVersion, json_out: bool) {
    if json_out {
        println!("{}", policy_json(v));
    } else {
        println!("{}", policy_line(v));
    }
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", crate::client::describe(&e))
}

/// Runs `custody policy ...`.
pub async fn policy(client: &Client, cmd: PolicyCommand, json_out: bool) -> Result<()> {
    let mut c = PolicyServiceClient::new(client.channel());
    match cmd {
        PolicyCommand::Set {
            scope,
            retain_for,
            floor,
            ceiling,
            lock,
            principal,
        } => {
            let r = c
                .set_policy(pb::SetPolicyRequest {
                    scope: Some(scope.to_pb()),
                    policy: Some(pb::Policy {
                        retain_for_secs: parse_duration_secs(&retain_for)?,
                        floor_secs: floor.as_deref().map(parse_duration_secs).transpose()?,
                        ceiling_secs: ceiling.as_deref().map(parse_duration_secs).transpose()?,
                        locked: lock,
                    }),
                    principal,
                })
                .await
                .map_err(status)?
                .into_inner();
            let v = r.policy.unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"policy": policy_json(&v), "expiring_segments": r.expiring_segments,
                           "expiring_bytes": r.expiring_bytes, "first_expiry": ts_str(&r.first_expiry)})
                );
            } else {
                println!("{}", policy_line(&v));
                if r.expiring_segments > 0 {
                    println!(
                        "this change makes {} segments ({} bytes) expire sooner; the first goes at {}",
                        r.expiring_segments,
                        r.expiring_bytes,
                        ts_str(&r.first_expiry)
                    );
                }
            }
        }
        PolicyCommand::Get { scope } => {
            let v = c
                .get_policy(pb::GetPolicyRequest {
                    scope: Some(scope.to_pb()),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_policy(&v, json_out);
        }
        PolicyCommand::Ls => {
            let r = c
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    Value::Array(r.policies.iter().map(policy_json).collect())
                );
            } else {
                r.policies
                    .iter()
                    .for_each(|v| println!("{}", policy_line(v)));
            }
        }
        PolicyCommand::Resolve { camera } => {
            let v = c
                .resolve_policy(pb::ResolvePolicyRequest { camera_id: camera })
                .await
                .map_err(status)?
                .into_inner();
            print_policy(&v, json_out);
        }
    }
    Ok(())
}

/// Runs `custody hold ...`.
pub async fn hold(client: &Client, cmd: HoldCommand, json_out: bool) -> Result<()> {
    let mut c = HoldServiceClient::new(client.channel());
    match cmd {
        HoldCommand::Create {
            cameras,
            all,
            future_cameras,
            from,
            to,
            case,
            reason,
            principal,
        } => {
            let start = Timestamp::parse_rfc3339(&from)?;
            let end = to.as_deref().map(Timestamp::parse_rfc3339).transpose()?;
            let r = c
                .create_hold(pb::CreateHoldRequest {
                    camera_ids: cameras,
                    all_cameras: all,
                    future_cameras,
                    start: Some(ts(start)),
                    end: end.map(ts),
                    case_id: case,
                    reason,
                    principal,
                })
                .await
                .map_err(status)?
                .into_inner();
            let h = r.hold.clone().unwrap_or_default();
            let span = |s: &pb::CoveredSpan| json!({"camera_id": s.camera_id, "start": ts_str(&s.start), "end": ts_str(&s.end), "segments": s.segments, "bytes": s.bytes});
            if json_out {
                println!(
                    "{}",
                    json!({"hold": hold_json(&h), "covered_segments": r.covered_segments, "covered_bytes": r.covered_bytes,
                           "spans": r.spans.iter().map(span).collect::<Vec<_>>(),
                           "missing": r.missing.iter().map(span).collect::<Vec<_>>()})
                );
            } else {
                println!("{}", hold_line(&h));
                println!(
                    "covers {} segments, {} bytes",
                    r.covered_segments, r.covered_bytes
                );
                for s in &r.spans {
                    println!(
                        "  held    {} {} → {} ({} segments)",
                        s.camera_id,
                        ts_str(&s.start),
                        ts_str(&s.end),
                        s.segments
                    );
                }
                for s in &r.missing {
                    println!(
                        "  missing {} {} → {} (no footage: never recorded or already deleted)",
                        s.camera_id,
                        ts_str(&s.start),
                        ts_str(&s.end)
                    );
                }
            }
        }
        HoldCommand::Release {
            hold_id,
            reason,
            principal,
        } => {
            let h = c
                .release_hold(pb::ReleaseHoldRequest {
                    hold_id,
                    reason,
                    principal,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_hold(&h, json_out);
        }
        HoldCommand::Show { hold_id } => {
            let h = c
                .get_hold(pb::GetHoldRequest { hold_id })
                .await
                .map_err(status)?
                .into_inner();
            print_hold(&h, json_out);
        }
        HoldCommand::Ls { all } => {
            let r = c
                .list_holds(pb::ListHoldsRequest {
                    include_released: all,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                println!("{}", Value::Array(r.holds.iter().map(hold_json).collect()));
            } else {
                r.holds.iter().for_each(|h| println!("{}", hold_line(h)));
            }
        }
    }
    Ok(())
}

/// Runs `custody sweep [--dry-run]`.
pub async fn sweep(client: &Client, dry_run: bool, json_out: bool) -> Result<()> {
    let mut c = RetentionServiceClient::new(client.channel());
    let r = c
        .sweep(pb::SweepRequest { dry_run })
        .await
        .map_err(status)?
        .into_inner();
    let item = |i: &pb::SweepItem| {
        json!({"segment_id": i.segment_id, "camera_id": i.camera_id, "end": ts_str(&i.end),
        "expired_at": ts_str(&i.expired_at), "policy_scope": i.policy_scope, "policy_version": i.policy_version, "bytes": i.bytes})
    };
    if json_out {
        println!(
            "{}",
            json!({"dry_run": r.dry_run, "deleted": r.deleted.iter().map(item).collect::<Vec<_>>(), "kept_by_hold": r.kept_by_hold})
        );
        return Ok(());
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} segments; {} expired segments kept by holds",
        r.deleted.len(),
        r.kept_by_hold
    );
    for i in &r.deleted {
        println!(
            "  {} {} ended {} expired {} under {} v{}",
            i.segment_id,
            i.camera_id,
            ts_str(&i.end),
            ts_str(&i.expired_at),
            i.policy_scope,
            i.policy_version
        );
    }
    Ok(())
}
