//! `PolicyService`, `HoldService` and `RetentionService`.

use custody_core::{
    CameraId, Hold, HoldCameras, HoldId, Policy, PolicyScope, PolicyVersion, ScopeKey,
};
use custody_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::audit::{audited, Durability, Target};
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

impl RetentionApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn set_policy_inner(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
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
    async fn get_policy_inner(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
        let scope = scope_from(request.into_inner().scope)?;
        let key: ScopeKey = scope.key();
        let v = self
            .node
            .policy(&key)
            .ok_or_else(|| Status::not_found(format!("no policy set for {key}")))?;
        Ok(Response::new(version_to(&v)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_policies_inner(
        &self,
        _request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: self.node.policies().iter().map(version_to).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn resolve_policy_inner(
        &self,
        request: Request<pb::ResolvePolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
        let camera = CameraId::parse(&request.into_inner().camera_id).map_err(ServerError::from)?;
        let v = self.node.resolve_policy(&camera).ok_or_else(|| {
            Status::not_found(format!(
                "no policy applies to camera {camera}: its footage is kept until one does"
            ))
        })?;
        Ok(Response::new(version_to(&v)))
    }
}

impl RetentionApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn create_hold_inner(
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
    async fn release_hold_inner(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::HoldRecord>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
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
    async fn get_hold_inner(
        &self,
        request: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::HoldRecord>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
        let id = hold_id(&request.into_inner().hold_id)?;
        Ok(Response::new(hold_to(&self.node.hold(&id).await?)))
    }

    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn list_holds_inner(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        // Records written through other nodes of a cluster bind this one at once.
        self.node.sync_retention_view().await?;
        let all = request.into_inner().include_released;
        Ok(Response::new(pb::ListHoldsResponse {
            holds: self.node.holds(all).await.iter().map(hold_to).collect(),
        }))
    }
}

impl RetentionApi {
    #[tracing::instrument(skip_all, fields(peer = ?request.remote_addr()))]
    async fn sweep_inner(
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

fn scope_target(s: &Option<pb::PolicyScope>) -> Target {
    let s = s.clone().unwrap_or_default();
    let mut t = Target::camera(&s.camera_id);
    t.cameras.extend(s.group_cameras.iter().cloned());
    t.detail = if !s.camera_id.is_empty() {
        format!("scope camera {}", s.camera_id)
    } else if !s.group.is_empty() {
        format!("scope group {} prefix {:?}", s.group, s.group_prefix)
    } else {
        "scope default".to_string()
    };
    t
}

impl RetentionApi {
    /// Records the outcome of one call and passes it on.
    async fn audited<T>(
        &self,
        caller: &Caller,
        claimed: &str,
        action: &str,
        target: Target,
        durability: Durability,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let p = caller.recorded_principal(claimed);
        audited(&self.node, caller, p, action, target, durability, result).await
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for RetentionApi {
    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.get_ref();
        let claimed = r.principal.clone();
        let mut target = scope_target(&r.scope);
        if let Some(p) = &r.policy {
            target.detail.push_str(&format!(
                "; retain_for {}s floor {:?} ceiling {:?} locked {}",
                p.retain_for_secs, p.floor_secs, p.ceiling_secs, p.locked
            ));
        }
        let result = self.set_policy_inner(request).await;
        if let Ok(r) = &result {
            if let Some(v) = &r.get_ref().policy {
                target.detail.push_str(&format!("; version {}", v.version));
            }
        }
        self.audited(
            &caller,
            &claimed,
            "policy.set",
            target,
            Durability::Durable,
            result,
        )
        .await
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let caller = Caller::of(&request);
        let target = scope_target(&request.get_ref().scope);
        let result = self.get_policy_inner(request).await;
        self.audited(
            &caller,
            "",
            "policy.get",
            target,
            Durability::Grouped,
            result,
        )
        .await
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let caller = Caller::of(&request);
        let result = self.list_policies_inner(request).await;
        self.audited(
            &caller,
            "",
            "policy.list",
            Target::default(),
            Durability::Grouped,
            result,
        )
        .await
    }

    async fn resolve_policy(
        &self,
        request: Request<pb::ResolvePolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let caller = Caller::of(&request);
        let target = Target::camera(&request.get_ref().camera_id);
        let result = self.resolve_policy_inner(request).await;
        self.audited(
            &caller,
            "",
            "policy.resolve",
            target,
            Durability::Grouped,
            result,
        )
        .await
    }
}

#[tonic::async_trait]
impl pb::hold_service_server::HoldService for RetentionApi {
    async fn create_hold(
        &self,
        request: Request<pb::CreateHoldRequest>,
    ) -> Result<Response<pb::CreateHoldResponse>, Status> {
        let caller = Caller::of(&request);
        let r = request.get_ref();
        let claimed = r.principal.clone();
        let mut target = Target {
            cameras: if r.all_cameras {
                vec!["*".to_string()]
            } else {
                r.camera_ids.clone()
            },
            detail: format!(
                "case {:?} reason {:?} {}",
                r.case_id,
                r.reason,
                super::audit::range_detail(&r.start, &r.end)
            ),
            ..Default::default()
        };
        let result = self.create_hold_inner(request).await;
        if let Ok(r) = &result {
            if let Some(h) = &r.get_ref().hold {
                target.hold = h.hold_id.clone();
            }
        }
        self.audited(
            &caller,
            &claimed,
            "hold.create",
            target,
            Durability::Durable,
            result,
        )
        .await
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::HoldRecord>, Status> {
        let caller = Caller::of(&request);
        let r = request.get_ref();
        let claimed = r.principal.clone();
        let mut target = Target {
            hold: r.hold_id.clone(),
            detail: format!("reason {:?}", r.reason),
            ..Default::default()
        };
        let result = self.release_hold_inner(request).await;
        if let Ok(r) = &result {
            let h = r.get_ref();
            target.cameras = if h.all_cameras {
                vec!["*".to_string()]
            } else {
                h.camera_ids.clone()
            };
        }
        self.audited(
            &caller,
            &claimed,
            "hold.release",
            target,
            Durability::Durable,
            result,
        )
        .await
    }

    async fn get_hold(
        &self,
        request: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::HoldRecord>, Status> {
        let caller = Caller::of(&request);
        let target = Target {
            hold: request.get_ref().hold_id.clone(),
            ..Default::default()
        };
        let result = self.get_hold_inner(request).await;
        self.audited(&caller, "", "hold.get", target, Durability::Grouped, result)
            .await
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let caller = Caller::of(&request);
        let target = Target {
            detail: format!("include_released {}", request.get_ref().include_released),
            ..Default::default()
        };
        let result = self.list_holds_inner(request).await;
        self.audited(
            &caller,
            "",
            "hold.list",
            target,
            Durability::Grouped,
            result,
        )
        .await
    }
}

#[tonic::async_trait]
impl pb::retention_service_server::RetentionService for RetentionApi {
    async fn sweep(
        &self,
        request: Request<pb::SweepRequest>,
    ) -> Result<Response<pb::SweepResponse>, Status> {
        let caller = Caller::of(&request);
        let dry_run = request.get_ref().dry_run;
        let result = self.sweep_inner(request).await;
        let target = Target {
            detail: match &result {
                Ok(r) => format!(
                    "dry_run {dry_run}; {} deleted, {} kept by hold",
                    r.get_ref().deleted.len(),
                    r.get_ref().kept_by_hold
                ),
                Err(_) => format!("dry_run {dry_run}"),
            },
            ..Default::default()
        };
        self.audited(
            &caller,
            "",
            "retention.sweep",
            target,
            Durability::Durable,
            result,
        )
        .await
    }
}
