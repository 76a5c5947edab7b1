//! Retention policies and expiry.
//!
//! This module owns which policy governs a camera ([`PolicyBook::resolve`]),
//! which policy changes are allowed (locked floors, ceilings, version order:
//! [`PolicyBook::check_change`]), and when a segment's retention ends
//! ([`PolicyBook::expiry`]). Legal holds are separate ([`crate::HoldIndex`]):
//! an expired segment that is held is still kept.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{CameraId, TimeRange, Timestamp};

/// Longest `retain_for_secs`, `floor_secs` or `ceiling_secs` accepted: 100 years.
pub const MAX_RETENTION_SECS: u64 = 100 * 365 * 24 * 3600;
/// Longest group name accepted.
pub const MAX_GROUP_NAME_LEN: usize = 64;
/// Longest principal name (`set_by`, `placed_by`, `released_by`) accepted.
pub const MAX_PRINCIPAL_LEN: usize = 256;

/// Why a policy or a policy change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A group name breaks the naming rule.
    #[error("group name {name:?} must be 1..=64 characters of [A-Za-z0-9._-]")]
    GroupName {
        /// The offending name (truncated).
        name: String,
    },
    /// A group prefix is not a valid camera id prefix.
    #[error("prefix {prefix:?} of group {group} must be 1..=64 characters of [A-Za-z0-9._-], starting with a letter or digit")]
    GroupPrefix {
        /// The group.
        group: String,
        /// The offending prefix (truncated).
        prefix: String,
    },
    /// A group with neither a prefix nor cameras, which would match nothing.
    #[error("group {group} matches no camera: give a prefix or at least one camera")]
    EmptyGroup {
        /// The group.
        group: String,
    },
    /// `retain_for_secs` is zero.
    #[error("retain_for_secs must be at least 1")]
    RetainForZero,
    /// A duration above [`MAX_RETENTION_SECS`].
    #[error("{field} = {secs} exceeds the maximum of {max} s")]
    DurationTooLong {
        /// `retain_for_secs`, `floor_secs` or `ceiling_secs`.
        field: &'static str,
        /// The requested value.
        secs: u64,
        /// The maximum.
        max: u64,
    },
    /// `locked` without a floor: the lock protects the floor, so one is required.
    #[error("a locked policy needs floor_secs")]
    LockedWithoutFloor,
    /// `ceiling_secs` below `floor_secs`.
    #[error("ceiling_secs = {ceiling} is below floor_secs = {floor}")]
    CeilingBelowFloor {
        /// The floor.
        floor: u64,
        /// The ceiling.
        ceiling: u64,
    },
    /// `retain_for_secs` below `floor_secs`.
    #[error("retain_for_secs = {retain_for} is below floor_secs = {floor}")]
    RetainBelowFloor {
        /// The requested retention.
        retain_for: u64,
        /// The floor.
        floor: u64,
    },
    /// `retain_for_secs` above `ceiling_secs`.
    #[error("retain_for_secs = {retain_for} is above ceiling_secs = {ceiling}")]
    RetainAboveCeiling {
        /// The requested retention.
        retain_for: u64,
        /// The ceiling.
        ceiling: u64,
    },
    /// `set_by` is empty, too long, or holds control characters.
    #[error("set_by must be 1..=256 characters without control characters")]
    SetBy,
    /// Version 0 is reserved for "no policy".
    #[error("version must be at least 1")]
    VersionZero,
    /// A version not above the scope's current version.
    #[error("version {new} for {scope} must be greater than the current version {current}")]
    VersionNotIncreasing {
        /// The scope.
        scope: ScopeKey,
        /// The current version.
        current: u64,
        /// The requested version.
        new: u64,
    },
    /// A change not strictly after the latest recorded change (history is
    /// totally ordered by time; use `max(now, latest + 1 ns)`).
    #[error("effective_at {effective_at} must be after the latest recorded change at {latest}")]
    EffectiveAtNotAfterLatest {
        /// The requested effective time, RFC 3339.
        effective_at: String,
        /// The latest recorded effective time, RFC 3339.
        latest: String,
    },
    /// An attempt to unlock a locked policy.
    #[error("{scope} is locked (version {current}); the lock cannot be removed")]
    LockRemoved {
        /// The scope.
        scope: ScopeKey,
        /// The current (locked) version.
        current: u64,
    },
    /// An attempt to shorten a locked floor.
    #[error("{scope} is locked with floor_secs = {current_floor}; floor_secs = {new_floor} would shorten it")]
    FloorShortened {
        /// The scope.
        scope: ScopeKey,
        /// The locked floor.
        current_floor: u64,
        /// The requested floor (0 when none was given).
        new_floor: u64,
    },
}

/// The identity of a scope: versions with the same key replace each other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScopeKey {
    /// The default scope.
    Default,
    /// A group, by name.
    Group(String),
    /// One camera.
    Camera(CameraId),
}

impl fmt::Display for ScopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeKey::Default => f.write_str("default scope"),
            ScopeKey::Group(n) => write!(f, "group {n}"),
            ScopeKey::Camera(c) => write!(f, "camera {c}"),
        }
    }
}

/// What a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyScope {
    /// Every camera no other scope matches.
    Default,
    /// A named group: the cameras listed plus those whose id starts with `prefix`.
    Group {
        /// 1..=64 characters of `[A-Za-z0-9._-]`; the group's identity.
        name: String,
        /// Cameras whose id starts with this belong to the group.
        prefix: Option<String>,
        /// Cameras that belong to the group explicitly.
        cameras: Vec<CameraId>,
    },
    /// One camera.
    Camera(CameraId),
}

impl PolicyScope {
    /// The scope's identity (a group is identified by its name alone).
    pub fn key(&self) -> ScopeKey {
        match self {
            PolicyScope::Default => ScopeKey::Default,
            PolicyScope::Group { name, .. } => ScopeKey::Group(name.clone()),
            PolicyScope::Camera(c) => ScopeKey::Camera(c.clone()),
        }
    }

    /// Checks the group name, the prefix, and that a group matches something.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let PolicyScope::Group {
            name,
            prefix,
            cameras,
        } = self
        else {
            return Ok(());
        };
        let name_ok = !name.is_empty()
            && name.len() <= MAX_GROUP_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(PolicyError::GroupName {
                name: name.chars().take(80).collect(),
            });
        }
        if let Some(p) = prefix {
            // A non-empty prefix of a valid camera id is itself a valid camera id.
            if CameraId::parse(p).is_err() {
                return Err(PolicyError::GroupPrefix {
                    group: name.clone(),
                    prefix: p.chars().take(80).collect(),
                });
            }
        }
        if prefix.is_none() && cameras.is_empty() {
            return Err(PolicyError::EmptyGroup {
                group: name.clone(),
            });
        }
        Ok(())
    }

    /// Whether this scope applies to `camera` (the default applies to all).
    pub fn matches(&self, camera: &CameraId) -> bool {
        match self {
            PolicyScope::Default => true,
            PolicyScope::Group {
                prefix, cameras, ..
            } => {
                cameras.contains(camera)
                    || prefix
                        .as_deref()
                        .is_some_and(|p| camera.as_str().starts_with(p))
            }
            PolicyScope::Camera(c) => c == camera,
        }
    }
}

impl fmt::Display for PolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key().fmt(f)
    }
}

/// How long footage is kept after a segment ends, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Retention after the segment's end; 1..=[`MAX_RETENTION_SECS`].
    pub retain_for_secs: u64,
    /// Minimum retention. Once `locked`, it can only be lengthened.
    pub floor_secs: Option<u64>,
    /// Maximum retention of unheld footage (privacy law).
    pub ceiling_secs: Option<u64>,
    /// Compliance lock: cannot be removed, and the floor cannot be shortened.
    pub locked: bool,
}

impl Policy {
    /// Checks `1 <= retain_for`, `floor <= retain_for <= ceiling`, the maximum
    /// duration, and that a locked policy has a floor.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.retain_for_secs == 0 {
            return Err(PolicyError::RetainForZero);
        }
        for (field, v) in [
            ("retain_for_secs", Some(self.retain_for_secs)),
            ("floor_secs", self.floor_secs),
            ("ceiling_secs", self.ceiling_secs),
        ] {
            if let Some(secs) = v.filter(|&s| s > MAX_RETENTION_SECS) {
                return Err(PolicyError::DurationTooLong {
                    field,
                    secs,
                    max: MAX_RETENTION_SECS,
                });
            }
        }
        if self.locked && self.floor_secs.is_none() {
            return Err(PolicyError::LockedWithoutFloor);
        }
        if let (Some(floor), Some(ceiling)) = (self.floor_secs, self.ceiling_secs) {
            if ceiling < floor {
                return Err(PolicyError::CeilingBelowFloor { floor, ceiling });
            }
        }
        let retain_for = self.retain_for_secs;
        if let Some(floor) = self.floor_secs.filter(|&f| retain_for < f) {
            return Err(PolicyError::RetainBelowFloor { retain_for, floor });
        }
        if let Some(ceiling) = self.ceiling_secs.filter(|&c| retain_for > c) {
            return Err(PolicyError::RetainAboveCeiling {
                retain_for,
                ceiling,
            });
        }
        Ok(())
    }
}

/// One version of the policy of one scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// What the policy applies to.
    pub scope: PolicyScope,
    /// Increases with every change of the scope; starts at 1.
    pub version: u64,
    /// The policy.
    pub policy: Policy,
    /// When the change took effect; grace periods count from here.
    pub effective_at: Timestamp,
    /// The principal who set it.
    pub set_by: String,
}

impl PolicyVersion {
    /// Checks scope, policy, `version >= 1` and `set_by`.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.scope.validate()?;
        self.policy.validate()?;
        if self.version == 0 {
            return Err(PolicyError::VersionZero);
        }
        if !principal_ok(&self.set_by) {
            return Err(PolicyError::SetBy);
        }
        Ok(())
    }
}

/// Whether `s` is a valid principal name: 1..=256 characters, no control characters.
pub(crate) fn principal_ok(s: &str) -> bool {
    let n = s.chars().count();
    (1..=MAX_PRINCIPAL_LEN).contains(&n) && !s.chars().any(char::is_control)
}

/// When a segment's retention ends, and under which policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// The instant from which the segment may be deleted (if not held).
    pub at: Timestamp,
    /// Version of the policy resolved for the camera now.
    pub policy_version: u64,
    /// Scope of the policy resolved for the camera now.
    pub scope: PolicyScope,
}

/// How much footage a policy change makes expire earlier than before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEffect {
    /// Segments that will expire earlier.
    pub segments: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// When the first of them becomes deletable (never before `now`).
    pub earliest: Option<Timestamp>,
}

/// One point of a camera's resolution timeline: from `at`, `version` (an index
/// into the history, `None` = no policy) governs the camera.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: Timestamp,
    version: Option<usize>,
}

/// The current policy versions of all scopes, and the full history of changes
/// that expiry needs to honour grace periods and locked floors.
#[derive(Debug, Clone, Default)]
pub struct PolicyBook {
    /// Every applied version, in order of application (`effective_at` increasing).
    history: Vec<PolicyVersion>,
    /// Scope → index into `history` of its current version.
    current: BTreeMap<ScopeKey, usize>,
}

impl PolicyBook {
    /// An empty book: no camera has a policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a book from stored versions, in any order and with exact
    /// duplicates allowed: they are sorted by `effective_at` and applied one by one.
    pub fn from_history(
        versions: impl IntoIterator<Item = PolicyVersion>,
    ) -> Result<Self, PolicyError> {
        let mut all: Vec<PolicyVersion> = versions.into_iter().collect();
        all.sort_by_key(|v| (v.effective_at, v.scope.key(), v.version));
        all.dedup();
        let mut book = Self::new();
        for v in all {
            book.apply(v)?;
        }
        Ok(book)
    }

    /// Every applied version, oldest first.
    pub fn history(&self) -> &[PolicyVersion] {
        &self.history
    }

    /// The current version of one scope.
    pub fn current(&self, scope: &ScopeKey) -> Option<&PolicyVersion> {
        self.current.get(scope).map(|&i| &self.history[i])
    }

    /// The current versions of all scopes, ordered by scope.
    pub fn current_versions(&self) -> impl Iterator<Item = &PolicyVersion> + '_ {
        self.current.values().map(|&i| &self.history[i])
    }

    /// The latest `effective_at` recorded; a new change must be later.
    pub fn latest_effective_at(&self) -> Option<Timestamp> {
        self.history.last().map(|v| v.effective_at)
    }

    /// The policy governing `camera` now: its camera scope, else a group that
    /// lists it explicitly, else the prefix group with the longest matching
    /// prefix, else the default (ties between groups go to the smaller name).
    ///
    /// `None` means no policy applies: callers keep the footage forever.
    pub fn resolve(&self, camera: &CameraId) -> Option<&PolicyVersion> {
        resolve_in(&self.history, &self.current, camera).map(|i| &self.history[i])
    }

    /// Whether `new` may be applied: it must be valid, strictly later than the
    /// latest change (of any scope), have a higher version than its scope's current one, and,
    /// if the scope is locked, stay locked with a floor at least as long.
    /// Re-applying the scope's current version unchanged is accepted (a no-op).
    pub fn check_change(&self, new: &PolicyVersion) -> Result<(), PolicyError> {
        new.validate()?;
        let key = new.scope.key();
        let cur = self.current(&key);
        if cur == Some(new) {
            return Ok(());
        }
        if let Some(latest) = self.latest_effective_at() {
            if new.effective_at <= latest {
                return Err(PolicyError::EffectiveAtNotAfterLatest {
                    effective_at: new.effective_at.to_string(),
                    latest: latest.to_string(),
                });
            }
        }
        let Some(cur) = cur else {
            return Ok(());
        };
        if new.version <= cur.version {
            return Err(PolicyError::VersionNotIncreasing {
                scope: key,
                current: cur.version,
                new: new.version,
            });
        }
        if cur.policy.locked {
            if !new.policy.locked {
                return Err(PolicyError::LockRemoved {
                    scope: key,
                    current: cur.version,
                });
            }
            let current_floor = cur.policy.floor_secs.unwrap_or(0);
            let new_floor = new.policy.floor_secs.unwrap_or(0);
            if new_floor < current_floor {
                return Err(PolicyError::FloorShortened {
                    scope: key,
                    current_floor,
                    new_floor,
                });
            }
        }
        Ok(())
    }

    /// Checks `new` ([`PolicyBook::check_change`]) and records it as its scope's
    /// current version.
    pub fn apply(&mut self, new: PolicyVersion) -> Result<(), PolicyError> {
        self.check_change(&new)?;
        let key = new.scope.key();
        if self.current(&key) == Some(&new) {
            return Ok(());
        }
        self.history.push(new);
        self.current.insert(key, self.history.len() - 1);
        Ok(())
    }

    /// When a segment of `camera` ending at `segment_end` may be deleted
    /// (holds aside); `None` if no policy governs the camera now (keep forever).
    ///
    /// Let `t_1 < … < t_n` be the instants at which the policy resolved for the
    /// camera changed (a different scope or version), `P_i` the policy from `t_i`, and `E_0 = ∞`.
    /// With `end = segment_end` and `g = grace`:
    ///
    /// ```text
    /// E_i = ∞                                   if no policy from t_i
    /// E_i = max(end + floor_i,
    ///           min(end + ceiling_i,
    ///               max(end + retain_for_i, min(E_{i-1}, t_i + g))))
    /// at  = max(E_n, end + floor_j for every locked P_j (j < n) with end <= t_{j+1})
    /// ```
    ///
    /// So a change never brings deletion before `min(previous expiry, t_i + g)`
    /// unless the new ceiling (privacy law) forces it; footage is never kept
    /// past `end + ceiling` of the current policy except under a locked floor;
    /// and a locked floor keeps binding footage that had ended while its policy
    /// governed the camera, even after another scope takes over (a retention
    /// obligation outranks the privacy ceiling).
    pub fn expiry(
        &self,
        camera: &CameraId,
        segment_end: Timestamp,
        grace: Duration,
    ) -> Option<Expiry> {
        let steps = timeline(&self.history, camera);
        let at = evaluate(&self.history, &steps, segment_end, grace)?;
        let v = self.resolve(camera)?;
        Some(Expiry {
            at,
            policy_version: v.version,
            scope: v.scope.clone(),
        })
    }

    /// How much of `segments` (camera, range, bytes) would expire earlier if
    /// `new` were applied, counting only segments not already due at `now`
    /// (a segment losing its "keep forever" counts). Refused like
    /// [`PolicyBook::check_change`].
    pub fn expiring_sooner(
        &self,
        new: &PolicyVersion,
        segments: impl Iterator<Item = (CameraId, TimeRange, u64)>,
        now: Timestamp,
        grace: Duration,
    ) -> Result<ChangeEffect, PolicyError> {
        let mut after = self.clone();
        after.apply(new.clone())?;
        let mut cache: HashMap<CameraId, (Vec<Step>, Vec<Step>)> = HashMap::new();
        let mut effect = ChangeEffect::default();
        for (camera, range, bytes) in segments {
            let (old_steps, new_steps) = cache
                .entry(camera)
                .or_insert_with_key(|c| (timeline(&self.history, c), timeline(&after.history, c)));
            let end = range.end();
            let Some(new_at) = evaluate(&after.history, new_steps, end, grace) else {
                continue;
            };
            let sooner = match evaluate(&self.history, old_steps, end, grace) {
                None => true,
                Some(old_at) => new_at < old_at && old_at > now,
            };
            if sooner {
                effect.segments += 1;
                effect.bytes = effect.bytes.saturating_add(bytes);
                let goes = new_at.max(now);
                effect.earliest = Some(effect.earliest.map_or(goes, |e| e.min(goes)));
            }
        }
        Ok(effect)
    }
}

/// `t + secs` seconds, saturating.
fn plus_secs(t: Timestamp, secs: u64) -> Timestamp {
    let s = i64::try_from(secs).unwrap_or(i64::MAX);
    t.saturating_add_nanos(s.saturating_mul(1_000_000_000))
}

/// The history index of the version governing `camera` in the state `current`.
fn resolve_in(
    history: &[PolicyVersion],
    current: &BTreeMap<ScopeKey, usize>,
    camera: &CameraId,
) -> Option<usize> {
    if let Some(&i) = current.get(&ScopeKey::Camera(camera.clone())) {
        return Some(i);
    }
    // Rank: explicit listing first, then longest prefix, then smaller name.
    type Rank<'a> = (u8, std::cmp::Reverse<usize>, &'a str);
    let mut best: Option<(Rank, usize)> = None;
    for &i in current.values() {
        let PolicyScope::Group {
            name,
            prefix,
            cameras,
        } = &history[i].scope
        else {
            continue;
        };
        let rank = if cameras.contains(camera) {
            (0, std::cmp::Reverse(0), name.as_str())
        } else if let Some(p) = prefix.as_deref().filter(|p| camera.as_str().starts_with(p)) {
            (1, std::cmp::Reverse(p.len()), name.as_str())
        } else {
            continue;
        };
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, i));
        }
    }
    best.map(|(_, i)| i)
        .or_else(|| current.get(&ScopeKey::Default).copied())
}

/// The instants at which the version governing `camera` changed, replaying `history`.
fn timeline(history: &[PolicyVersion], camera: &CameraId) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut current = BTreeMap::new();
    let mut last: Option<usize> = None;
    for (i, v) in history.iter().enumerate() {
        current.insert(v.scope.key(), i);
        let now = resolve_in(history, &current, camera);
        if now != last {
            steps.push(Step {
                at: v.effective_at,
                version: now,
            });
            last = now;
        }
    }
    steps
}

/// The formula of [`PolicyBook::expiry`] over a camera's timeline.
fn evaluate(
    history: &[PolicyVersion],
    steps: &[Step],
    end: Timestamp,
    grace: Duration,
) -> Option<Timestamp> {
    let mut e: Option<Timestamp> = None;
    let mut locked_floor: Option<Timestamp> = None;
    for (k, step) in steps.iter().enumerate() {
        let Some(p) = step.version.map(|i| &history[i].policy) else {
            e = None;
            continue;
        };
        let guard = step.at.saturating_add(grace);
        let guard = e.map_or(guard, |prev| prev.min(guard));
        let mut x = plus_secs(end, p.retain_for_secs).max(guard);
        if let Some(c) = p.ceiling_secs {
            x = x.min(plus_secs(end, c));
        }
        if let Some(f) = p.floor_secs {
            x = x.max(plus_secs(end, f));
        }
        e = Some(x);
        if let (true, Some(f), Some(next)) = (p.locked, p.floor_secs, steps.get(k + 1)) {
            if end <= next.at {
                let bound = plus_secs(end, f);
                locked_floor = Some(locked_floor.map_or(bound, |b| b.max(bound)));
            }
        }
    }
    e.map(|x| locked_floor.map_or(x, |f| x.max(f)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400;

    fn cam(s: &str) -> CameraId {
        CameraId::parse(s).unwrap()
    }

    fn policy(retain: u64) -> Policy {
        Policy {
            retain_for_secs: retain,
            floor_secs: None,
            ceiling_secs: None,
            locked: false,
        }
    }

    fn pv(scope: PolicyScope, version: u64, policy: Policy, at: i64) -> PolicyVersion {
        PolicyVersion {
            scope,
            version,
            policy,
            effective_at: Timestamp::from_secs(at),
            set_by: "admin".into(),
        }
    }

    fn group(name: &str, prefix: Option<&str>, cams: &[&str]) -> PolicyScope {
        PolicyScope::Group {
            name: name.into(),
            prefix: prefix.map(Into::into),
            cameras: cams.iter().map(|c| cam(c)).collect(),
        }
    }

    #[test]
    fn policy_validation_names_the_rule() {
        assert_eq!(policy(0).validate(), Err(PolicyError::RetainForZero));
        let p = Policy {
            floor_secs: Some(10),
            ceiling_secs: Some(5),
            ..policy(7)
        };
        assert_eq!(
            p.validate(),
            Err(PolicyError::CeilingBelowFloor {
                floor: 10,
                ceiling: 5
            })
        );
        let p = Policy {
            floor_secs: Some(10),
            ..policy(7)
        };
        assert!(matches!(
            p.validate(),
            Err(PolicyError::RetainBelowFloor { .. })
        ));
        let p = Policy {
            ceiling_secs: Some(5),
            ..policy(7)
        };
        let err = p.validate().unwrap_err();
        assert!(err.to_string().contains("ceiling_secs = 5"), "{err}");
        let p = Policy {
            locked: true,
            ..policy(7)
        };
        assert_eq!(p.validate(), Err(PolicyError::LockedWithoutFloor));
        let p = policy(MAX_RETENTION_SECS + 1);
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("retain_for_secs"));
    }

    #[test]
    fn scope_validation() {
        assert!(group("ok.name-1", Some("cam-"), &[]).validate().is_ok());
        assert!(matches!(
            group("bad name", Some("cam"), &[]).validate(),
            Err(PolicyError::GroupName { .. })
        ));
        assert!(matches!(
            group("g", Some("-x"), &[]).validate(),
            Err(PolicyError::GroupPrefix { .. })
        ));
        assert!(matches!(
            group("g", None, &[]).validate(),
            Err(PolicyError::EmptyGroup { .. })
        ));
    }

    #[test]
    fn resolution_order() {
        let mut b = PolicyBook::new();
        let c1 = cam("cam-1");
        assert!(b.resolve(&c1).is_none());
        b.apply(pv(PolicyScope::Default, 1, policy(1), 1)).unwrap();
        assert_eq!(b.resolve(&c1).unwrap().scope, PolicyScope::Default);
        b.apply(pv(group("b-short", Some("cam"), &[]), 1, policy(2), 2))
            .unwrap();
        b.apply(pv(group("z-long", Some("cam-"), &[]), 1, policy(3), 3))
            .unwrap();
        b.apply(pv(group("a-long", Some("cam-"), &[]), 1, policy(4), 4))
            .unwrap();
        assert_eq!(b.resolve(&c1).unwrap().policy.retain_for_secs, 4);
        assert_eq!(b.resolve(&cam("camx")).unwrap().policy.retain_for_secs, 2);
        b.apply(pv(group("zz-explicit", None, &["cam-1"]), 1, policy(5), 5))
            .unwrap();
        assert_eq!(b.resolve(&c1).unwrap().policy.retain_for_secs, 5);
        b.apply(pv(PolicyScope::Camera(c1.clone()), 1, policy(6), 6))
            .unwrap();
        assert_eq!(b.resolve(&c1).unwrap().policy.retain_for_secs, 6);
        assert_eq!(b.resolve(&cam("other")).unwrap().policy.retain_for_secs, 1);
    }

    #[test]
    fn locked_floor_cannot_be_shortened_or_unlocked() {
        let mut b = PolicyBook::new();
        let locked = Policy {
            floor_secs: Some(30 * DAY),
            locked: true,
            ..policy(30 * DAY)
        };
        b.apply(pv(PolicyScope::Default, 1, locked, 0)).unwrap();
        let shorter = Policy {
            floor_secs: Some(7 * DAY),
            ..locked
        };
        let err = b
            .check_change(&pv(PolicyScope::Default, 2, shorter, 1))
            .unwrap_err();
        assert!(matches!(err, PolicyError::FloorShortened { .. }), "{err}");
        let unlocked = Policy {
            locked: false,
            ..locked
        };
        assert!(matches!(
            b.check_change(&pv(PolicyScope::Default, 2, unlocked, 1)),
            Err(PolicyError::LockRemoved { .. })
        ));
        let longer = Policy {
            floor_secs: Some(60 * DAY),
            retain_for_secs: 60 * DAY,
            ..locked
        };
        assert!(matches!(
            b.check_change(&pv(PolicyScope::Default, 1, longer, 1)),
            Err(PolicyError::VersionNotIncreasing { .. })
        ));
        assert!(matches!(
            b.check_change(&pv(PolicyScope::Default, 2, longer, 0)),
            Err(PolicyError::EffectiveAtNotAfterLatest { .. })
        ));
        b.apply(pv(PolicyScope::Default, 2, longer, 1)).unwrap();
        // Idempotent replay of the current version.
        b.apply(pv(PolicyScope::Default, 2, longer, 1)).unwrap();
        assert_eq!(b.history().len(), 2);
    }

    #[test]
    fn shortening_waits_for_grace_and_ceiling_wins() {
        let c = cam("cam-1");
        let grace = Duration::from_secs(DAY);
        let mut b = PolicyBook::new();
        b.apply(pv(PolicyScope::Default, 1, policy(30 * DAY), 0))
            .unwrap();
        let end = Timestamp::from_secs(0);
        assert_eq!(
            b.expiry(&c, end, grace).unwrap().at,
            Timestamp::from_secs((30 * DAY) as i64)
        );
        // Shorten to 1 day at day 10: kept until day 11 (change + grace).
        let t = (10 * DAY) as i64;
        b.apply(pv(PolicyScope::Default, 2, policy(DAY), t))
            .unwrap();
        let e = b.expiry(&c, end, grace).unwrap();
        assert_eq!(e.at, Timestamp::from_secs(t + DAY as i64));
        assert_eq!(e.policy_version, 2);
        // A privacy ceiling of 2 days wins over the grace period.
        let capped = Policy {
            ceiling_secs: Some(2 * DAY),
            ..policy(DAY)
        };
        b.apply(pv(PolicyScope::Default, 3, capped, t + 1)).unwrap();
        assert_eq!(
            b.expiry(&c, end, grace).unwrap().at,
            Timestamp::from_secs((2 * DAY) as i64)
        );
        // Lengthening applies immediately.
        b.apply(pv(PolicyScope::Default, 4, policy(90 * DAY), t + 2))
            .unwrap();
        assert_eq!(
            b.expiry(&c, end, grace).unwrap().at,
            Timestamp::from_secs((90 * DAY) as i64)
        );
    }

    #[test]
    fn new_policy_on_unpoliced_camera_waits_for_grace() {
        let c = cam("cam-1");
        let mut b = PolicyBook::new();
        b.apply(pv(PolicyScope::Camera(c.clone()), 1, policy(1), 1000))
            .unwrap();
        let e = b.expiry(&c, Timestamp::from_secs(0), Duration::from_secs(50));
        assert_eq!(e.unwrap().at, Timestamp::from_secs(1050));
        assert!(b
            .expiry(&cam("cam-2"), Timestamp::from_secs(0), Duration::ZERO)
            .is_none());
    }

    #[test]
    fn locked_floor_survives_displacement_for_existing_footage() {
        let c = cam("cam-1");
        let mut b = PolicyBook::new();
        let locked = Policy {
            floor_secs: Some(365 * DAY),
            locked: true,
            ..policy(365 * DAY)
        };
        b.apply(pv(PolicyScope::Default, 1, locked, 0)).unwrap();
        let t = (100 * DAY) as i64;
        b.apply(pv(PolicyScope::Camera(c.clone()), 1, policy(DAY), t))
            .unwrap();
        let old = Timestamp::from_secs((50 * DAY) as i64);
        assert_eq!(
            b.expiry(&c, old, Duration::ZERO).unwrap().at,
            Timestamp::from_secs((415 * DAY) as i64)
        );
        // Footage ending after the displacement follows the camera policy.
        let new = Timestamp::from_secs(t + 10);
        assert_eq!(
            b.expiry(&c, new, Duration::ZERO).unwrap().at,
            Timestamp::from_secs(t + 10 + DAY as i64)
        );
    }

    #[test]
    fn expiring_sooner_counts_affected_footage() {
        let grace = Duration::from_secs(DAY);
        let mut b = PolicyBook::new();
        b.apply(pv(PolicyScope::Default, 1, policy(30 * DAY), 0))
            .unwrap();
        let now = Timestamp::from_secs((40 * DAY) as i64);
        let seg = |c: &str, d: u64| {
            let s = Timestamp::from_secs((d * DAY) as i64);
            (
                cam(c),
                TimeRange::new(s, s.saturating_add_nanos(1)).unwrap(),
                100,
            )
        };
        let segs = vec![seg("a", 1), seg("a", 20), seg("b", 35), seg("c", 39)];
        let change = pv(
            group("g", None, &["a", "b"]),
            1,
            policy(DAY),
            now.as_nanos() / 1_000_000_000,
        );
        let eff = b
            .expiring_sooner(&change, segs.into_iter(), now, grace)
            .unwrap();
        // a@1 is already due; a@20 and b@35 go sooner; c is not in the group.
        assert_eq!(eff.segments, 2);
        assert_eq!(eff.bytes, 200);
        assert_eq!(eff.earliest, Some(Timestamp::from_secs((41 * DAY) as i64)));
        // The book itself is unchanged.
        assert_eq!(b.history().len(), 1);
    }

    #[test]
    fn from_history_is_order_independent() {
        let v = vec![
            pv(PolicyScope::Default, 2, policy(5), 10),
            pv(group("g", Some("c"), &[]), 1, policy(3), 11),
            pv(PolicyScope::Default, 1, policy(9), 0),
            pv(PolicyScope::Default, 1, policy(9), 0),
        ];
        let mut rev = v.clone();
        rev.reverse();
        let a = PolicyBook::from_history(v).unwrap();
        let b = PolicyBook::from_history(rev).unwrap();
        assert_eq!(a.history(), b.history());
    }

    fn scopes() -> Vec<PolicyScope> {
        vec![
            PolicyScope::Default,
            group("g1", Some("cam-"), &[]),
            group("g2", None, &["cam-1", "x"]),
            group("g3", Some("cam-1"), &[]),
            group("g1", Some("cam-2"), &["x"]),
            PolicyScope::Camera(cam("cam-1")),
            PolicyScope::Camera(cam("cam-2")),
        ]
    }

    fn cameras() -> Vec<CameraId> {
        ["cam-1", "cam-2", "cam-3", "x", "y"]
            .iter()
            .map(|c| cam(c))
            .collect()
    }

    prop_compose! {
        fn arb_policy()(
            retain in 1u64..100,
            floor in proptest::option::of(0u64..100),
            ceiling in proptest::option::of(1u64..200),
            locked in any::<bool>(),
        ) -> Policy {
            Policy { retain_for_secs: retain, floor_secs: floor, ceiling_secs: ceiling, locked }
        }
    }

    /// (scope index, version bump, policy, time step)
    fn arb_changes() -> impl Strategy<Value = Vec<(usize, u64, Policy, i64)>> {
        proptest::collection::vec((0usize..7, 0u64..3, arb_policy(), 0i64..30), 1..25)
    }

    /// Applies the changes that are accepted; returns the book.
    fn build(changes: &[(usize, u64, Policy, i64)]) -> PolicyBook {
        let scopes = scopes();
        let mut b = PolicyBook::new();
        let mut t = 0;
        for &(s, bump, p, dt) in changes {
            t += dt;
            let scope = scopes[s].clone();
            let version = b.current(&scope.key()).map_or(1, |v| v.version + bump);
            let _ = b.apply(pv(scope, version, p, t));
        }
        b
    }

    proptest! {
        #[test]
        fn locked_floors_never_shorten(changes in arb_changes()) {
            let b = build(&changes);
            let mut last: BTreeMap<ScopeKey, &PolicyVersion> = BTreeMap::new();
            for v in b.history() {
                prop_assert!(v.validate().is_ok());
                if let Some(prev) = last.get(&v.scope.key()) {
                    prop_assert!(v.version > prev.version);
                    if prev.policy.locked {
                        prop_assert!(v.policy.locked);
                        prop_assert!(v.policy.floor_secs >= prev.policy.floor_secs);
                    }
                }
                last.insert(v.scope.key(), v);
            }
        }

        #[test]
        fn expiry_bounds_hold(
            changes in arb_changes(),
            last in (0usize..7, arb_policy(), 0i64..30),
            cam_i in 0usize..5,
            end in -20i64..800,
            grace in 0u64..40,
        ) {
            let before = build(&changes);
            let c = &cameras()[cam_i];
            let end = Timestamp::from_secs(end);
            let grace = Duration::from_secs(grace);
            let old = before.expiry(c, end, grace).map(|e| e.at);

            let mut after = before.clone();
            let (s, p, dt) = last;
            let scope = scopes()[s].clone();
            let version = after.current(&scope.key()).map_or(1, |v| v.version + 1);
            let at = before.latest_effective_at().unwrap_or(Timestamp::from_secs(0))
                .saturating_add(Duration::from_secs(dt as u64));
            let accepted = after.apply(pv(scope, version, p, at.as_nanos() / 1_000_000_000)).is_ok();
            let new = after.expiry(c, end, grace);
            let locked_floors: Vec<Timestamp> = after.history().iter()
                .filter(|v| v.policy.locked && v.scope.matches(c))
                .filter_map(|v| v.policy.floor_secs.map(|f| plus_secs(end, f)))
                .collect();

            match (&new, after.resolve(c)) {
                (None, None) => {}
                (Some(e), Some(cur)) => {
                    let cur = cur.policy;
                    // Never below the current floor.
                    prop_assert!(e.at >= plus_secs(end, cur.floor_secs.unwrap_or(0)));
                    // Never above the current ceiling, unless a locked floor binds.
                    if let Some(ceil) = cur.ceiling_secs {
                        prop_assert!(e.at <= plus_secs(end, ceil) || locked_floors.contains(&e.at));
                    }
                    // Never earlier than min(previous expiry, change + grace), unless the ceiling forces it.
                    if accepted {
                        let mut bound = at.saturating_add(grace);
                        if let Some(o) = old { bound = bound.min(o); }
                        if let Some(ceil) = cur.ceiling_secs { bound = bound.min(plus_secs(end, ceil)); }
                        prop_assert!(e.at >= bound, "at {} < bound {}", e.at, bound);
                    } else {
                        prop_assert_eq!(Some(e.at), old);
                    }
                }
                (n, r) => prop_assert!(false, "expiry {:?} but resolve {:?}", n, r),
            }
        }
    }
}
