//! `PolicyService`, `HoldService` and `RetentionService`.

use custody_core::{
    CameraId, Hold, HoldCameras, HoldId, Policy, PolicyScope, PolicyVersion, ScopeKey,
};
use custody_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{from_proto_ts, to_proto_ts};
use crate::{Caller, HoldState, Node, ServerError};

/// Policy, hold and sweep services over a node.
#[derive(Clone)]
pub struct RetentionApi {
    node: Node,
}

impl RetentionApi {
    /// Serves retention for `node`.
    pub fn new(node: Node) -> Self {
        RetentionApi { node }
    }
}

fn scope_from(s: Option<pb::PolicyScope>) -> Result<PolicyScope, ServerError> {
    let s = s.unwrap_or_default();
    match (s.camera_id.is_empty(), s.group.is_empty()) {
        (true, true) => {
            if !s.group_prefix.is_empty() || !s.group_cameras.is_empty() {
                return Err(ServerError::Invalid(
                    "group_prefix and group_cameras need a group name".into(),
                ));
            }
            Ok(PolicyScope::Default)
        }
        (false, true) => Ok(PolicyScope::Camera(CameraId::parse(&s.camera_id)?)),
        (true, false) => Ok(PolicyScope::Group {
            name: s.group,
            prefix: (!s.group_prefix.is_empty()).then_some(s.group_prefix),
            cameras: s
                .group_cameras
                .iter()
                .map(|c| CameraId::parse(c))
                .collect::<Result<_, _>>()?,
        }),
        (false, false) => Err(ServerError::Invalid(
            "scope: give camera_id or group, not both".into(),
        )),
    }
}

fn scope_to(s: &PolicyScope) -> pb::PolicyScope {
    match s {
        PolicyScope::Default => pb::PolicyScope::default(),
        PolicyScope::Camera(c) => pb::PolicyScope {
            camera_id: c.to_string(),
            ..Default::default()
        },
        PolicyScope::Group {
            name,
            prefix,
            cameras,
        } => pb::PolicyScope {
            group: name.clone(),
            group_prefix: prefix.clone().unwrap_or_default(),
            group_cameras: cameras.iter().map(ToString::to_string).collect(),
            ..Default::default()
        },
    }
}

fn version_to(v: &PolicyVersion) -> pb::PolicyVersion {
    pb::PolicyVersion {
        scope: Some(scope_to(&v.scope)),
        version: v.version,
        policy: Some(pb::Policy {
            retain_for_secs: v.policy.retain_for_secs,
            floor_secs: v.policy.floor_secs,
            ceiling_secs: v.policy.ceiling_secs,
            locked: v.policy.locked,
        }),
        effective_at: Some(to_proto_ts(v.effective_at)),
        set_by: v.set_by.clone(),
    }
}

fn hold_to(s: &HoldState) -> pb::HoldRecord {
    let h: &Hold = &s.hold;
    let (cameras, all) = match &h.cameras {
        HoldCameras::All => (Vec::new(), true),
        HoldCameras::List(l) => (l.iter().map(ToString::to_string).collect(), false),
    };
    pb::HoldRecord {
        hold_id: h.id.to_string(),
        camera_ids: cameras,
        all_cameras: all,
        start: Some(to_proto_ts(h.start)),
        end: h.end.map(to_proto_ts),
        case_id: h.case_id.clone(),
        reason: h.reason.clone(),
        placed_by: h.placed_by.clone(),
        placed_at: Some(to_proto_ts(h.placed_at)),
        released: s.release.is_some(),
        released_by: s
            .release
            .as_ref()
            .map(|r| r.released_by.clone())
            .unwrap_or_default(),
        release_reason: s
            .release
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
        released_at: s.release.as_ref().map(|r| to_proto_ts(r.released_at)),
    }
}

fn hold_id(s: &str) -> Result<HoldId, ServerError> {
    Ok(HoldId::parse(s)?)
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for RetentionApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let scope = scope_from(r.scope)?;
        let p = r
            .policy
            .ok_or_else(|| Status::invalid_argument("missing field policy"))?;
        let policy = Policy {
            retain_for_secs: p.retain_for_secs,
            floor_secs: p.floor_secs,
            ceiling_secs: p.ceiling_secs,
            locked: p.locked,
        };
        let (v, effect) = self
            .node
            .set_policy(scope, policy, &caller.recorded_principal(&r.principal))
            .await?;
        Ok(Response::new(pb::SetPolicyResponse {
            policy: Some(version_to(&v)),
            expiring_segments: effect.segments,
            expiring_bytes: effect.bytes,
            first_expiry: effect.earliest.map(to_proto_ts),
        }))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let scope = scope_from(request.into_inner().scope)?;
        let key: ScopeKey = scope.key();
        let v = self
            .node
            .policy(&key)
            .ok_or_else(|| Status::not_found(format!("no policy set for {key}")))?;
        Ok(Response::new(version_to(&v)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_policies(
        &self,
        _request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: self.node.policies().iter().map(version_to).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn resolve_policy(
        &self,
        request: Request<pb::ResolvePolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let camera = CameraId::parse(&request.into_inner().camera_id).map_err(ServerError::from)?;
        let v = self.node.resolve_policy(&camera).ok_or_else(|| {
            Status::not_found(format!(
                "no policy applies to camera {camera}: its footage is kept until one does"
            ))
        })?;
        Ok(Response::new(version_to(&v)))
    }
}

#[tonic::async_trait]
impl pb::hold_service_server::HoldService for RetentionApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn create_hold(
        &self,
        request: Request<pb::CreateHoldRequest>,
    ) -> Result<Response<pb::CreateHoldResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let cameras = match (r.all_cameras, r.camera_ids.is_empty()) {
            (true, true) => HoldCameras::All,
            (false, false) => {
                let ids = r
                    .camera_ids
                    .iter()
                    .map(|c| CameraId::parse(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ServerError::from)?;
                HoldCameras::list(ids).map_err(|e| ServerError::Invalid(e.to_string()))?
            }
            (true, false) => {
                return Err(Status::invalid_argument(
                    "give camera_ids or all_cameras, not both",
                ))
            }
            (false, true) => {
                return Err(Status::invalid_argument(
                    "give camera_ids, or all_cameras = true",
                ))
            }
        };
        let start = from_proto_ts(r.start, "start")?;
        let end = match r.end {
            Some(e) => Some(from_proto_ts(Some(e), "end")?),
            None => None,
        };
        let (hold, cov) = self
            .node
            .create_hold(
                cameras,
                start,
                end,
                r.case_id,
                r.reason,
                &caller.recorded_principal(&r.principal),
                r.future_cameras,
            )
            .await?;
        let span =
            |(c, range, n, b): &(CameraId, custody_core::TimeRange, u64, u64)| pb::CoveredSpan {
                camera_id: c.to_string(),
                start: Some(to_proto_ts(range.start())),
                end: Some(to_proto_ts(range.end())),
                segments: *n,
                bytes: *b,
            };
        Ok(Response::new(pb::CreateHoldResponse {
            hold: Some(hold_to(&HoldState {
                hold,
                release: None,
            })),
            covered_segments: cov.segments,
            covered_bytes: cov.bytes,
            spans: cov.spans.iter().map(span).collect(),
            missing: cov
                .missing
                .iter()
                .map(|(c, r)| span(&(c.clone(), *r, 0, 0)))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::HoldRecord>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let id = hold_id(&r.hold_id)?;
        let principal = caller.recorded_principal(&r.principal);
        if caller.serial.is_some() && !self.node.auth.supervisors_release_own_holds {
            let placed_by = self.node.hold(&id).await?.hold.placed_by;
            if placed_by == principal {
                self.node.denials().count(&caller.listener, "own-hold");
                return Err(Status::permission_denied(format!(
                    "{principal} placed hold {id} and may not release it: another supervisor must \
                     (auth.supervisors_release_own_holds = false)"
                )));
            }
        }
        let s = self.node.release_hold(&id, r.reason, &principal).await?;
        Ok(Response::new(hold_to(&s)))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn get_hold(
        &self,
        request: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::HoldRecord>, Status> {
        let id = hold_id(&request.into_inner().hold_id)?;
        Ok(Response::new(hold_to(&self.node.hold(&id).await?)))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let all = request.into_inner().include_released;
        Ok(Response::new(pb::ListHoldsResponse {
            holds: self.node.holds(all).await.iter().map(hold_to).collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::retention_service_server::RetentionService for RetentionApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn sweep(
        &self,
        request: Request<pb::SweepRequest>,
    ) -> Result<Response<pb::SweepResponse>, Status> {
        let dry_run = request.into_inner().dry_run;
        let r = self.node.sweep(dry_run).await?;
        if r.stopped_by_fence {
            return Err(Status::unavailable(
                "sweep stopped: the hold view could not be refreshed within the fence",
            ));
        }
        Ok(Response::new(pb::SweepResponse {
            deleted: r
                .deleted
                .iter()
                .map(|d| pb::SweepItem {
                    segment_id: d.segment_id.to_string(),
                    camera_id: d.camera.to_string(),
                    end: Some(to_proto_ts(d.range.end())),
                    expired_at: Some(to_proto_ts(d.expired_at)),
                    policy_scope: d.policy_scope.clone(),
                    policy_version: d.policy_version,
                    bytes: d.size,
                })
                .collect(),
            kept_by_hold: r.kept_by_hold,
            dry_run,
        }))
    }
}
