//! `AuditService`, and the one helper every handler uses to leave its record.

use custody_audit::{verify, AuditRecord, Outcome, TrustedHead};
use custody_core::Timestamp;
use custody_proto::v1 as pb;
use tonic::{Code, Request, Response, Status};

use super::convert::{from_proto_ts, to_proto_ts};
use crate::audit::{read_objects, read_records};
use crate::{AuditEvent, Caller, Node, ServerError};

/// How soon an RPC's record must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Before the reply (mutations).
    Durable,
    /// In the next group commit (ingests, whose object is their durable
    /// trace; reads of holds, policies, the audit log and reports).
    Grouped,
    /// A read of footage or of its index: in the next group commit, but
    /// refused while the audit writer is failing, so that no footage is
    /// served unaudited.
    Footage,
}

/// What an RPC touched.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    pub(crate) cameras: Vec<String>,
    pub(crate) segment: String,
    pub(crate) hold: String,
    pub(crate) detail: String,
}

impl Target {
    /// One camera (nothing when `id` is empty).
    pub(crate) fn camera(id: &str) -> Target {
        Target {
            cameras: if id.is_empty() {
                Vec::new()
            } else {
                vec![id.to_string()]
            },
            ..Default::default()
        }
    }
}

/// The outcome a status stands for: the caller's fault is a refusal.
fn outcome_of(s: &Status) -> Outcome {
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

/// Records the outcome of one RPC by `caller` (as `principal`) and passes
/// `result` on. A mutation's success is returned only once its record is
/// durable; if it cannot be made durable the caller gets UNAVAILABLE.
pub(crate) async fn audited<T>(
    node: &Node,
    caller: &Caller,
    principal: String,
    action: &str,
    target: Target,
    durability: Durability,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let mut e = AuditEvent::new(caller, action);
    e.principal = principal;
    e.cameras = target.cameras;
    e.segment = target.segment;
    e.hold = target.hold;
    e.detail = target.detail;
    if let Err(s) = &result {
        e.outcome = outcome_of(s);
        e.reason = format!("{:?}: {}", s.code(), s.message());
    }
    match durability {
        Durability::Grouped => node.audit().record(e).await,
        Durability::Footage => {
            if let Err(err) = node.audit().record_read(e).await {
                if result.is_ok() {
                    return Err(Status::unavailable(format!(
                        "{action} refused: nothing is served unaudited ({err}); retry"
                    )));
                }
            }
        }
        Durability::Durable => {
            if let Err(err) = node.audit().record_durable(vec![e]).await {
                if result.is_ok() {
                    return Err(Status::unavailable(format!(
                        "{action} took effect but its audit record is not durable yet: {err}"
                    )));
                }
            }
        }
    }
    result
}

/// A time range's two ends for a record's detail.
pub(crate) fn range_detail(
    start: &Option<prost_types::Timestamp>,
    end: &Option<prost_types::Timestamp>,
) -> String {
    let f = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(|t| Timestamp::from_parts(t.seconds, t.nanos).ok())
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".to_string())
    };
    format!("{} → {}", f(start), f(end))
}

/// The audit service over a node.
#[derive(Clone)]
pub struct AuditApi {
    node: Node,
}

impl AuditApi {
    /// Serves the audit log of `node`.
    pub fn new(node: Node) -> Self {
        AuditApi { node }
    }

    async fn list(
        &self,
        r: pb::ListAuditRecordsRequest,
    ) -> Result<pb::ListAuditRecordsResponse, ServerError> {
        let limits = self.node.limits();
        let page_size = match r.page_size {
            0 => limits.default_page_size,
            n => n.min(limits.max_page_size),
        } as usize;
        let from: u64 = if r.page_token.is_empty() {
            1
        } else {
            r.page_token
                .parse()
                .map_err(|_| ServerError::Invalid(format!("bad page_token {:?}", r.page_token)))?
        };
        let since = match r.since {
            Some(t) => Some(from_proto_ts(Some(t), "since")?),
            None => None,
        };
        let until = match r.until {
            Some(t) => Some(from_proto_ts(Some(t), "until")?),
            None => None,
        };
        if let (Some(s), Some(u)) = (since, until) {
            if u < s {
                return Err(ServerError::Invalid(format!(
                    "until {u} is before since {s}"
                )));
            }
        }
        // The caller's own earlier requests are in the chain before we read it.
        self.node.audit().flush().await?;
        let records = read_records(self.node.store(), &self.node.keyring, from).await?;
        let mut out = Vec::new();
        let mut next = String::new();
        for (rec, object) in records {
            let at = Timestamp::parse_rfc3339(&rec.at).ok();
            let keep = (r.camera_id.is_empty() || rec.concerns_camera(&r.camera_id))
                && (r.principal.is_empty() || rec.principal == r.principal)
                && (r.action.is_empty() || rec.action_matches(&r.action))
                && since.is_none_or(|s| at.is_some_and(|a| a >= s))
                && until.is_none_or(|u| at.is_some_and(|a| a < u));
            if !keep {
                continue;
            }
            if out.len() == page_size {
                next = rec.seq.to_string();
                break;
            }
            out.push(record_to(&rec, &object));
        }
        Ok(pb::ListAuditRecordsResponse {
            records: out,
            next_page_token: next,
        })
    }

    async fn verify(
        &self,
        r: pb::VerifyAuditChainRequest,
    ) -> Result<pb::VerifyAuditChainResponse, ServerError> {
        let trusted = if r.trusted_head_seq == 0 {
            None
        } else {
            let digest = hex::decode(&r.trusted_head_digest)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| {
                    ServerError::Invalid("trusted_head_digest must be 64 hex digits".into())
                })?;
            Some(TrustedHead {
                seq: r.trusted_head_seq,
                digest,
            })
        };
        self.node.audit().flush().await?;
        let objects = read_objects(self.node.store()).await?;
        let report = verify(&objects, &self.node.keyring, trusted.as_ref());
        Ok(pb::VerifyAuditChainResponse {
            ok: report.ok(),
            records: report.records,
            last_seq: report.last_seq,
            last_digest: report.last_digest.clone(),
            problems: report
                .problems
                .iter()
                .map(|p| pb::AuditProblem {
                    kind: p.kind.as_str().to_string(),
                    first_seq: p.first_seq,
                    last_seq: p.last_seq,
                    object: p.object.clone(),
                    message: p.message.clone(),
                })
                .collect(),
        })
    }
}

fn record_to(r: &AuditRecord, object: &str) -> pb::AuditRecord {
    pb::AuditRecord {
        seq: r.seq,
        prev_digest: r.prev.clone(),
        digest: hex::encode(r.digest()),
        at: Timestamp::parse_rfc3339(&r.at).ok().map(to_proto_ts),
        principal: r.principal.clone(),
        listener: r.listener.clone(),
        action: r.action.clone(),
        camera_ids: r.cameras.clone(),
        segment_id: r.segment.clone(),
        hold_id: r.hold.clone(),
        outcome: r.outcome.as_str().to_string(),
        reason: r.reason.clone(),
        detail: r.detail.clone(),
        object: object.to_string(),
        node: r.node.clone(),
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    #[tracing::instrument(skip_all)]
    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let mut target = Target::camera(&r.camera_id);
        target.detail = format!(
            "principal {:?} action {:?} {}",
            r.principal,
            r.action,
            range_detail(&r.since, &r.until)
        );
        let result = self.list(r).await.map(Response::new).map_err(Status::from);
        let principal = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            principal,
            "audit.list",
            target,
            Durability::Grouped,
            result,
        )
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let result = self.verify(r).await;
        let target = Target {
            detail: match &result {
                Ok(v) => format!("{} records, {} problems", v.records, v.problems.len()),
                Err(_) => String::new(),
            },
            ..Default::default()
        };
        let principal = caller.principal.clone();
        audited(
            &self.node,
            &caller,
            principal,
            "audit.verify",
            target,
            Durability::Grouped,
            result.map(Response::new).map_err(Status::from),
        )
        .await
    }
}
