//! Authorization: which roles may call which RPC (the table documented in
//! `docs/authorization.md`, which the authorization matrix test reads), and
//! the per-listener gate that identifies the caller of every request, checks
//! the table and counts refusals.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Service};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tracing::warn;

use crate::identity::{CertIdentity, IdentityRule, RevocationList};
use crate::{Caller, Role, ServiceKind};

use Role::*;

/// The roles allowed to call `service/method` (e.g.
/// `custody.v1.HoldService/CreateHold`), or `None` for an RPC this table does
/// not know (refused: unknown means denied).
pub fn allowed_roles(rpc: &str) -> Option<&'static [Role]> {
    const READERS: &[Role] = &[Operator, Investigator, Supervisor, Auditor, Admin];
    Some(match rpc {
        "custody.v1.IngestService/PutSegment" => &[Camera],
        "custody.v1.ArchiveService/ListCameras" => READERS,
        "custody.v1.ArchiveService/ListSegments" => &[Operator, Investigator, Supervisor, Auditor],
        "custody.v1.ArchiveService/ReadSegment" | "custody.v1.ArchiveService/ExportClip" => {
            &[Operator, Investigator]
        }
        "custody.v1.PolicyService/SetPolicy" => &[Admin],
        "custody.v1.PolicyService/GetPolicy"
        | "custody.v1.PolicyService/ListPolicies"
        | "custody.v1.PolicyService/ResolvePolicy" => READERS,
        "custody.v1.HoldService/CreateHold" => &[Investigator],
        "custody.v1.HoldService/ReleaseHold" => &[Supervisor],
        "custody.v1.HoldService/GetHold" | "custody.v1.HoldService/ListHolds" => {
            &[Investigator, Supervisor, Auditor, Admin]
        }
        "custody.v1.RetentionService/Sweep" => &[Admin],
        "custody.v1.NodeService/GetStatus" => &[Auditor, Admin],
        "custody.v1.NodeService/GetClusterStatus" => &[Auditor, Admin],
        "custody.v1.AuditService/ListAuditRecords" => &[Auditor],
        "custody.v1.AuditService/VerifyAuditChain" => &[Auditor, Admin],
        "custody.v1.ComplianceService/RunReport" => &[Auditor, Admin],
        "custody.v1.EvidenceService/ExportEvidence" => &[Investigator],
        _ => return None,
    })
}

/// The RPC whose roles may play footage over HLS (`playback` listeners):
/// whoever may read a segment may watch it.
pub const PLAYBACK_RPC: &str = "custody.v1.ArchiveService/ReadSegment";

/// The RPC whose roles may scrape `GET /metrics` (listeners with `node` or
/// `metrics`): whoever may read the node's status may read its figures.
pub const METRICS_RPC: &str = "custody.v1.NodeService/GetStatus";

/// Services every authenticated caller may use: health and reflection.
fn is_open_service(service: &str) -> bool {
    service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.")
}

/// Refusals per listener and reason, for the status RPC and logs.
#[derive(Debug, Default)]
pub struct Denials {
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

impl Denials {
    /// Counts one refusal; returns the new count for this listener and reason.
    pub fn count(&self, listener: &str, reason: &str) -> u64 {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c
            .entry((listener.to_string(), reason.to_string()))
            .or_default();
        *n += 1;
        *n
    }

    /// Every count: (listener, reason) → refusals.
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a listener's gate needs to know.
pub struct GateConfig {
    /// Listener name.
    pub listener: String,
    /// Services the listener serves (others fall through to UNIMPLEMENTED).
    pub services: Vec<ServiceKind>,
    /// Whether callers present verified client certificates (mTLS).
    pub mtls: bool,
    /// Identity rules.
    pub rules: Vec<IdentityRule>,
    /// Revoked serials.
    pub revoked: Arc<RevocationList>,
    /// Refusal counters.
    pub denials: Arc<Denials>,
    /// The node, whose audit chain records every refusal.
    pub node: crate::Node,
}

/// A refusal: the reason class (counted) and the message returned.
struct Refusal {
    kind: &'static str,
    message: String,
}

/// A refused request: who (when known) and why.
struct Denial {
    caller: Option<Caller>,
    refusal: Refusal,
}

fn deny(caller: Option<Caller>, refusal: Refusal) -> Box<Denial> {
    Box::new(Denial { caller, refusal })
}

impl GateConfig {
    /// Identifies the caller of a request and checks it may call the RPC at `path`.
    fn admit<B>(&self, req: &http::Request<B>) -> Result<Caller, Box<Denial>> {
        let caller = if self.mtls {
            self.certificate_caller(req)?
        } else {
            Caller::local(&self.listener)
        };
        let path = req.uri().path();
        // Playback (HTTP) is allowed to whoever may read segments.
        let playback = crate::playback::is_playback_path(path);
        let metrics = path == crate::metrics::METRICS_PATH;
        let rpc = if playback {
            PLAYBACK_RPC
        } else if metrics {
            METRICS_RPC
        } else {
            path.trim_start_matches('/')
        };
        let service = rpc.split('/').next().unwrap_or("");
        if !playback
            && !metrics
            && (is_open_service(service) || !self.services.iter().any(|s| s.grpc_name() == service))
        {
            // Health and reflection are open; a service this listener does
            // not serve does not exist here, and the router says so.
            return Ok(caller);
        }
        let Some(allowed) = allowed_roles(rpc) else {
            return Err(deny(
                Some(caller),
                Refusal {
                    kind: "unknown-rpc",
                    message: format!("{rpc} has no authorization rule: refused"),
                },
            ));
        };
        if allowed.iter().any(|r| caller.has(*r)) {
            return Ok(caller);
        }
        let have: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
        let need: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        let what = if playback {
            format!("play footage (GET {path}, allowed to those who may call {rpc})")
        } else if metrics {
            format!("read metrics (GET {path}, allowed to those who may call {rpc})")
        } else {
            format!("call {rpc}")
        };
        let message = format!(
            "{} (roles: {}) may not {what}: it needs one of the roles {}",
            caller.principal,
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            },
            need.join(", ")
        );
        Err(deny(
            Some(caller),
            Refusal {
                kind: "role",
                message,
            },
        ))
    }

    fn certificate_caller<B>(&self, req: &http::Request<B>) -> Result<Caller, Box<Denial>> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(deny(
                None,
                Refusal {
                    kind: "no-certificate",
                    message: format!(
                        "listener {} requires a client certificate (mutual TLS)",
                        self.listener
                    ),
                },
            ));
        };
        let id = CertIdentity::from_der(leaf.as_ref()).map_err(|e| {
            deny(
                None,
                Refusal {
                    kind: "bad-certificate",
                    message: e.to_string(),
                },
            )
        })?;
        let caller = id.caller(&self.rules, &self.listener);
        // The handshake checked validity when the connection opened; an
        // HTTP/2 connection can outlive its certificate.
        let now = self.node.clock.now().to_parts().0;
        if now > id.not_after {
            return Err(deny(
                Some(caller),
                Refusal {
                    kind: "expired",
                    message: format!(
                        "certificate of {} (serial {}) expired during this connection",
                        id.principal(),
                        id.serial
                    ),
                },
            ));
        }
        match self.revoked.is_revoked(&id.serial) {
            Ok(false) => Ok(caller),
            Ok(true) => Err(deny(
                Some(caller),
                Refusal {
                    kind: "revoked",
                    message: format!(
                        "certificate of {} (serial {}) is revoked",
                        id.principal(),
                        id.serial
                    ),
                },
            )),
            Err(e) => Err(deny(
                Some(caller),
                Refusal {
                    kind: "revocation-list",
                    message: format!("{e}: refusing every certificate until it is readable"),
                },
            )),
        }
    }
}

/// A request message over the size limit is refused by tonic's decoder with
/// OUT_OF_RANGE "decoded message length too large" before any handler runs:
/// turn that into INVALID_ARGUMENT naming the configured limit, like every
/// other limit.
fn name_size_refusal<R: Default>(resp: http::Response<R>, max: usize) -> http::Response<R> {
    let status = resp.headers().get("grpc-status").map(|v| v.as_bytes());
    let message = resp
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace("%20", " ");
    if status == Some(b"11") && message.contains("message length too large") {
        return Status::invalid_argument(format!(
            "a request message is larger than limits.max_message_bytes = {max} ({message}); nothing done"
        ))
        .into_http();
    }
    resp
}

/// The gate in front of one listener's routes.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    config: Arc<GateConfig>,
}

impl<S> Gate<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: Arc<GateConfig>) -> Gate<S> {
        Gate { inner, config }
    }
}

/// A plain-text HTTP answer (playback paths are not gRPC).
fn http_text(status: http::StatusCode, message: &str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(axum::body::Body::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let playback = crate::playback::is_playback_path(req.uri().path());
        if playback && !self.config.services.contains(&ServiceKind::Playback) {
            // Not configured here: it does not exist (invariant 7).
            let message = format!(
                "{} is not served on listener {} (it has no playback service)",
                req.uri().path(),
                self.config.listener
            );
            let response = http_text(http::StatusCode::NOT_FOUND, &message);
            return Box::pin(async move { Ok(response) });
        }
        let metrics = req.uri().path() == crate::metrics::METRICS_PATH;
        if metrics && !ServiceKind::serves_metrics(&self.config.services) {
            // Not configured here: it does not exist (invariant 7).
            let message = format!(
                "/metrics is not served on listener {} (it has neither node nor metrics)",
                self.config.listener
            );
            let response = http_text(http::StatusCode::NOT_FOUND, &message);
            return Box::pin(async move { Ok(response) });
        }
        match self.config.admit(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let max = self.config.node.limits().max_message_bytes;
                let fut = self.inner.call(req);
                Box::pin(async move { fut.await.map(|r| name_size_refusal(r, max)) })
            }
            Err(denial) => {
                let Denial { caller, refusal } = *denial;
                let c = &self.config;
                let n = c.denials.count(&c.listener, refusal.kind);
                warn!(
                    listener = c.listener,
                    rpc = req.uri().path(),
                    principal = caller.as_ref().map(|c| c.principal.as_str()).unwrap_or("-"),
                    reason = refusal.kind,
                    refusals = n,
                    "refused: {}",
                    refusal.message
                );
                let caller = caller.unwrap_or_else(|| Caller {
                    principal: "unidentified".to_string(),
                    listener: c.listener.clone(),
                    roles: Default::default(),
                    cameras: crate::CameraScope::Only(Default::default()),
                    serial: None,
                });
                let rpc = if playback || metrics {
                    format!("GET {}", req.uri().path())
                } else {
                    req.uri().path().trim_start_matches('/').to_string()
                };
                let node = c.node.clone();
                let response = if playback || metrics {
                    http_text(http::StatusCode::FORBIDDEN, &refusal.message)
                } else {
                    Status::permission_denied(refusal.message.clone()).into_http()
                };
                Box::pin(async move {
                    node.audit_refusal(&caller, &rpc, &refusal.message).await;
                    Ok(response)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_used_and_unknown_rpcs_are_refused() {
        assert!(allowed_roles("custody.v1.HoldService/Nope").is_none());
        let rpcs = [
            "custody.v1.IngestService/PutSegment",
            "custody.v1.HoldService/CreateHold",
            "custody.v1.HoldService/ReleaseHold",
            "custody.v1.PolicyService/SetPolicy",
            "custody.v1.NodeService/GetStatus",
            "custody.v1.ArchiveService/ReadSegment",
        ];
        for role in Role::ALL {
            assert!(
                rpcs.iter()
                    .any(|r| allowed_roles(r).unwrap().contains(&role)),
                "{role} can do nothing"
            );
        }
    }
}
