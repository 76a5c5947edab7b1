//! Sealed retention records in the store: `policies/`, `holds/`,
//! `releases/` and `deletions/`.
//!
//! Each record is a JSON payload sealed with the keyring
//! ([`custody_crypto::seal_record`]), written create-only and mirrored in the
//! catalog. The payloads are this module's versioned record structs
//! (`*RecordV1`), never the domain types themselves: the on-bucket format
//! changes only when these structs do, not when a domain type is renamed or
//! reshaped. Every record carries its format version `v`; records written
//! before the field existed have none and are version 1. Unknown versions
//! are refused.

use bytes::Bytes;
use custody_core::{
    CameraId, Hold, HoldCameras, HoldId, InvalidInput, Policy, PolicyScope, PolicyVersion, Release,
    Timestamp,
};
#[cfg(test)]
use custody_core::{SegmentId, TimeRange};
use custody_crypto::{open_record, seal_record, Keyring};
use custody_store::ObjectPath;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::sweep::Deletion;
use super::{blocking, lock};
use crate::{Node, ServerError};

/// Key prefix of policy records.
pub(super) const POLICIES: &str = "policies";
/// Key prefix of hold records.
pub(super) const HOLDS: &str = "holds";
/// Key prefix of release records.
pub(super) const RELEASES: &str = "releases";
/// Key prefix of deletion records.
const DELETIONS: &str = "deletions";

/// The sealing kind of each record (bound into the seal).
const POLICY_KIND: &str = "policy";
const HOLD_KIND: &str = "hold";
const RELEASE_KIND: &str = "release";
const DELETION_KIND: &str = "deletion";

/// The record format version this code writes and reads.
const RECORD_VERSION: u32 = 1;

/// The prefix (`policies`, `holds`, ...) of a record's key.
pub(super) fn kind_of(key: &str) -> &str {
    key.split('/').next().unwrap_or_default()
}

/// Why a record payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(super) enum RecordError {
    /// A record format this code does not know.
    #[error("record format version {found} is not supported (this build reads version {supported}); upgrade the node")]
    UnsupportedVersion {
        /// The version in the record.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// Not a valid JSON record of its kind.
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A field that does not hold a valid value.
    #[error("invalid {field}: {source}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        source: InvalidInput,
    },
}

fn version_1() -> u32 {
    1
}

/// The version field alone, read before the rest of a record.
#[derive(Deserialize)]
struct VersionTag {
    #[serde(default = "version_1")]
    v: u32,
}

fn check_version(found: u32) -> Result<(), RecordError> {
    if found == RECORD_VERSION {
        Ok(())
    } else {
        Err(RecordError::UnsupportedVersion {
            found,
            supported: RECORD_VERSION,
        })
    }
}

/// Decodes one record after checking its version.
fn decode<R: DeserializeOwned>(payload: &[u8]) -> Result<R, RecordError> {
    let tag: VersionTag = serde_json::from_slice(payload)?;
    check_version(tag.v)?;
    Ok(serde_json::from_slice(payload)?)
}

fn camera(field: &'static str, s: String) -> Result<CameraId, RecordError> {
    CameraId::parse(&s).map_err(|source| RecordError::Invalid { field, source })
}

fn cameras(field: &'static str, list: Vec<String>) -> Result<Vec<CameraId>, RecordError> {
    list.into_iter().map(|c| camera(field, c)).collect()
}

fn camera_names(list: &[CameraId]) -> Vec<String> {
    list.iter().map(|c| c.as_str().to_string()).collect()
}

/// `holds/ID.rec`, version 1. Field names are the stored JSON's.
#[derive(Debug, Serialize, Deserialize)]
struct HoldRecordV1 {
    #[serde(default = "version_1")]
    v: u32,
    /// The hold id's 16 bytes, as a JSON array of numbers.
    id: [u8; 16],
    cameras: HoldCamerasV1,
    /// Nanoseconds since the Unix epoch.
    start: i64,
    /// Nanoseconds since the Unix epoch; `null` = open-ended.
    end: Option<i64>,
    case_id: String,
    reason: String,
    placed_by: String,
    /// Nanoseconds since the Unix epoch.
    placed_at: i64,
}

/// The cameras of a hold: `"All"` or `{"List": ["cam", ...]}`.
#[derive(Debug, Serialize, Deserialize)]
enum HoldCamerasV1 {
    All,
    List(Vec<String>),
}

impl From<&Hold> for HoldRecordV1 {
    fn from(h: &Hold) -> Self {
        HoldRecordV1 {
            v: RECORD_VERSION,
            id: *h.id.as_bytes(),
            cameras: match &h.cameras {
                HoldCameras::All => HoldCamerasV1::All,
                HoldCameras::List(l) => HoldCamerasV1::List(camera_names(l)),
            },
            start: h.start.as_nanos(),
            end: h.end.map(Timestamp::as_nanos),
            case_id: h.case_id.clone(),
            reason: h.reason.clone(),
            placed_by: h.placed_by.clone(),
            placed_at: h.placed_at.as_nanos(),
        }
    }
}

impl TryFrom<HoldRecordV1> for Hold {
    type Error = RecordError;

    fn try_from(r: HoldRecordV1) -> Result<Self, RecordError> {
        check_version(r.v)?;
        Ok(Hold {
            id: HoldId::from_bytes(r.id),
            cameras: match r.cameras {
                HoldCamerasV1::All => HoldCameras::All,
                HoldCamerasV1::List(l) => HoldCameras::List(cameras("cameras", l)?),
            },
            start: Timestamp::from_nanos(r.start),
            end: r.end.map(Timestamp::from_nanos),
            case_id: r.case_id,
            reason: r.reason,
            placed_by: r.placed_by,
            placed_at: Timestamp::from_nanos(r.placed_at),
        })
    }
}

/// `releases/ID.rec`, version 1. Field names are the stored JSON's.
#[derive(Debug, Serialize, Deserialize)]
struct ReleaseRecordV1 {
    #[serde(default = "version_1")]
    v: u32,
    /// The released hold's id: 16 bytes, as a JSON array of numbers.
    hold_id: [u8; 16],
    released_by: String,
    reason: String,
    /// Nanoseconds since the Unix epoch.
    released_at: i64,
}

impl From<&Release> for ReleaseRecordV1 {
    fn from(r: &Release) -> Self {
        ReleaseRecordV1 {
            v: RECORD_VERSION,
            hold_id: *r.hold_id.as_bytes(),
            released_by: r.released_by.clone(),
            reason: r.reason.clone(),
            released_at: r.released_at.as_nanos(),
        }
    }
}

impl TryFrom<ReleaseRecordV1> for Release {
    type Error = RecordError;

    fn try_from(r: ReleaseRecordV1) -> Result<Self, RecordError> {
        check_version(r.v)?;
        Ok(Release {
            hold_id: HoldId::from_bytes(r.hold_id),
            released_by: r.released_by,
            reason: r.reason,
            released_at: Timestamp::from_nanos(r.released_at),
        })
    }
}

/// `policies/EFFECTIVE_AT-VERSION.rec`, version 1. Field names are the
/// stored JSON's.
#[derive(Debug, Serialize, Deserialize)]
struct PolicyRecordV1 {
    #[serde(default = "version_1")]
    v: u32,
    scope: PolicyScopeV1,
    version: u64,
    policy: PolicyTermsV1,
    /// Nanoseconds since the Unix epoch.
    effective_at: i64,
    set_by: String,
}

/// A policy's scope: `"Default"`, `{"Group": {...}}` or `{"Camera": "cam"}`.
#[derive(Debug, Serialize, Deserialize)]
enum PolicyScopeV1 {
    Default,
    Group {
        name: String,
        prefix: Option<String>,
        cameras: Vec<String>,
    },
    Camera(String),
}

/// A policy's durations, in seconds, and its lock.
#[derive(Debug, Serialize, Deserialize)]
struct PolicyTermsV1 {
    retain_for_secs: u64,
    floor_secs: Option<u64>,
    ceiling_secs: Option<u64>,
    locked: bool,
}

impl From<&PolicyVersion> for PolicyRecordV1 {
    fn from(p: &PolicyVersion) -> Self {
        PolicyRecordV1 {
            v: RECORD_VERSION,
            scope: match &p.scope {
                PolicyScope::Default => PolicyScopeV1::Default,
                PolicyScope::Group {
                    name,
                    prefix,
                    cameras,
                } => PolicyScopeV1::Group {
                    name: name.clone(),
                    prefix: prefix.clone(),
                    cameras: camera_names(cameras),
                },
                PolicyScope::Camera(c) => PolicyScopeV1::Camera(c.as_str().to_string()),
            },
            version: p.version,
            policy: PolicyTermsV1 {
                retain_for_secs: p.policy.retain_for_secs,
                floor_secs: p.policy.floor_secs,
                ceiling_secs: p.policy.ceiling_secs,
                locked: p.policy.locked,
            },
            effective_at: p.effective_at.as_nanos(),
            set_by: p.set_by.clone(),
        }
    }
}

impl TryFrom<PolicyRecordV1> for PolicyVersion {
    type Error = RecordError;

    fn try_from(r: PolicyRecordV1) -> Result<Self, RecordError> {
        check_version(r.v)?;
        Ok(PolicyVersion {
            scope: match r.scope {
                PolicyScopeV1::Default => PolicyScope::Default,
                PolicyScopeV1::Group {
                    name,
                    prefix,
                    cameras: list,
                } => PolicyScope::Group {
                    name,
                    prefix,
                    cameras: cameras("scope.cameras", list)?,
                },
                PolicyScopeV1::Camera(c) => PolicyScope::Camera(camera("scope", c)?),
            },
            version: r.version,
            policy: Policy {
                retain_for_secs: r.policy.retain_for_secs,
                floor_secs: r.policy.floor_secs,
                ceiling_secs: r.policy.ceiling_secs,
                locked: r.policy.locked,
            },
            effective_at: Timestamp::from_nanos(r.effective_at),
            set_by: r.set_by,
        })
    }
}

/// One entry of `deletions/DAY/NANOS-RANDOM.rec` (a JSON array of these,
/// one per segment a sweep batch deleted), version 1. Field names are the
/// stored JSON's.
#[derive(Debug, Serialize, Deserialize)]
struct DeletionRecordV1 {
    #[serde(default = "version_1")]
    v: u32,
    /// The segment id's 16 bytes, as a JSON array of numbers.
    segment_id: [u8; 16],
    camera: String,
    range: RangeV1,
    object_key: String,
    size: u64,
    sha256: String,
    /// Nanoseconds since the Unix epoch.
    expired_at: i64,
    policy_scope: String,
    policy_version: u64,
    /// Nanoseconds since the Unix epoch.
    deleted_at: i64,
}

/// A time range `[start, end)`, in nanoseconds since the Unix epoch.
#[derive(Debug, Serialize, Deserialize)]
struct RangeV1 {
    start: i64,
    end: i64,
}

impl From<&Deletion> for DeletionRecordV1 {
    fn from(d: &Deletion) -> Self {
        DeletionRecordV1 {
            v: RECORD_VERSION,
            segment_id: *d.segment_id.as_bytes(),
            camera: d.camera.as_str().to_string(),
            range: RangeV1 {
                start: d.range.start().as_nanos(),
                end: d.range.end().as_nanos(),
            },
            object_key: d.object_key.clone(),
            size: d.size,
            sha256: d.sha256.clone(),
            expired_at: d.expired_at.as_nanos(),
            policy_scope: d.policy_scope.clone(),
            policy_version: d.policy_version,
            deleted_at: d.deleted_at.as_nanos(),
        }
    }
}

// Nothing reads deletion records back yet; the decoder pins their format.
#[cfg(test)]
impl TryFrom<DeletionRecordV1> for Deletion {
    type Error = RecordError;

    fn try_from(r: DeletionRecordV1) -> Result<Self, RecordError> {
        check_version(r.v)?;
        Ok(Deletion {
            segment_id: SegmentId::from_bytes(r.segment_id),
            camera: camera("camera", r.camera)?,
            range: TimeRange::new(
                Timestamp::from_nanos(r.range.start),
                Timestamp::from_nanos(r.range.end),
            )
            .map_err(|source| RecordError::Invalid {
                field: "range",
                source,
            })?,
            object_key: r.object_key,
            size: r.size,
            sha256: r.sha256,
            expired_at: Timestamp::from_nanos(r.expired_at),
            policy_scope: r.policy_scope,
            policy_version: r.policy_version,
            deleted_at: Timestamp::from_nanos(r.deleted_at),
        })
    }
}

fn encode<R: Serialize>(record: &R) -> Result<Vec<u8>, ServerError> {
    serde_json::to_vec(record).map_err(|e| ServerError::Internal(e.to_string()))
}

fn decode_hold(payload: &[u8]) -> Result<Hold, RecordError> {
    Hold::try_from(decode::<HoldRecordV1>(payload)?)
}

fn decode_release(payload: &[u8]) -> Result<Release, RecordError> {
    Release::try_from(decode::<ReleaseRecordV1>(payload)?)
}

fn decode_policy(payload: &[u8]) -> Result<PolicyVersion, RecordError> {
    PolicyVersion::try_from(decode::<PolicyRecordV1>(payload)?)
}

#[cfg(test)]
fn decode_deletions(payload: &[u8]) -> Result<Vec<Deletion>, RecordError> {
    let tags: Vec<VersionTag> = serde_json::from_slice(payload)?;
    for tag in &tags {
        check_version(tag.v)?;
    }
    let records: Vec<DeletionRecordV1> = serde_json::from_slice(payload)?;
    records.into_iter().map(Deletion::try_from).collect()
}

/// A record read back from the store.
pub(super) enum StoredRecord {
    Policy(PolicyVersion),
    Hold(Hold),
    Release(Release),
}

/// Opens and decodes the sealed record stored under `key`. `None` for keys
/// outside `policies/`, `holds/` and `releases/`.
pub(super) fn open(
    keyring: &Keyring,
    key: &str,
    sealed: &[u8],
) -> Result<Option<StoredRecord>, ServerError> {
    let kind = match kind_of(key) {
        POLICIES => POLICY_KIND,
        HOLDS => HOLD_KIND,
        RELEASES => RELEASE_KIND,
        _ => return Ok(None),
    };
    let bad = |e: &dyn std::fmt::Display| ServerError::DataLoss(format!("record {key}: {e}"));
    let payload = open_record(keyring, kind, sealed).map_err(|e| bad(&e))?;
    let record = match kind {
        POLICY_KIND => decode_policy(&payload).map(StoredRecord::Policy),
        HOLD_KIND => decode_hold(&payload).map(StoredRecord::Hold),
        _ => decode_release(&payload).map(StoredRecord::Release),
    };
    record.map(Some).map_err(|e| bad(&e))
}

impl Node {
    /// Writes a policy version's record (`policies/EFFECTIVE_AT-VERSION.rec`).
    pub(super) async fn put_policy(&self, v: &PolicyVersion) -> Result<(), ServerError> {
        let name = format!("{:020}-{}.rec", v.effective_at.as_nanos(), v.version);
        let payload = encode(&PolicyRecordV1::from(v))?;
        self.put_sealed(&[POLICIES, &name], POLICY_KIND, &payload)
            .await
    }

    /// Writes a hold's record (`holds/ID.rec`).
    pub(super) async fn put_hold(&self, h: &Hold) -> Result<(), ServerError> {
        let payload = encode(&HoldRecordV1::from(h))?;
        self.put_sealed(&[HOLDS, &format!("{}.rec", h.id)], HOLD_KIND, &payload)
            .await
    }

    /// Writes a release's record (`releases/ID.rec`); `AlreadyExists` if the
    /// hold was released before.
    pub(super) async fn put_release(&self, r: &Release) -> Result<(), ServerError> {
        let payload = encode(&ReleaseRecordV1::from(r))?;
        self.put_sealed(
            &[RELEASES, &format!("{}.rec", r.hold_id)],
            RELEASE_KIND,
            &payload,
        )
        .await
    }

    /// Writes the deletion record of one sweep batch under a fresh name
    /// (`deletions/DAY/NANOS-RANDOM.rec`), retrying a name collision.
    pub(super) async fn put_deletions(
        &self,
        now: Timestamp,
        deleted: &[Deletion],
    ) -> Result<(), ServerError> {
        let records: Vec<DeletionRecordV1> = deleted.iter().map(DeletionRecordV1::from).collect();
        let payload = encode(&records)?;
        let day = now.to_datetime().format("%Y-%m-%d").to_string();
        let mut last = None;
        for _ in 0..3 {
            let mut suffix = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
            let name = format!("{:020}-{}.rec", now.as_nanos(), hex::encode(suffix));
            match self
                .put_sealed(&[DELETIONS, &day, &name], DELETION_KIND, &payload)
                .await
            {
                Err(e @ ServerError::AlreadyExists(_)) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ServerError::Internal("deletion record not written".into())))
    }

    /// Seals a payload and writes it create-only (durable on return), then
    /// mirrors it in the catalog and marks its key as applied.
    async fn put_sealed(
        &self,
        parts: &[&str],
        kind: &str,
        payload: &[u8],
    ) -> Result<(), ServerError> {
        let sealed = Bytes::from(seal_record(self.keyring.active(), kind, payload)?);
        let key = ObjectPath::from_iter(parts.iter().copied());
        match self.store.put_create_only(&key, sealed.clone()).await {
            Ok(()) => {}
            Err(custody_store::StoreError::AlreadyExists { key }) => {
                return Err(ServerError::AlreadyExists(format!(
                    "record {key} already exists"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        let catalog = self.catalog.clone();
        let mirror_key = key.to_string();
        blocking(move || Ok(catalog.put_record(&mirror_key, &sealed)?)).await?;
        lock(&self.retention.known).insert(key.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Payloads exactly as written before records were versioned (the domain
    // types serialised directly, no `v`), produced once by that code. They
    // must keep decoding: the bucket is full of them.
    const HOLD_LIST: &str = r#"{"id":[1,35,69,103,137,171,205,239,254,220,186,152,118,84,50,16],"cameras":{"List":["dock.2","lobby-1"]},"start":1764000000000000000,"end":1764003600500000000,"case_id":"CASE-2026-0042","reason":"Subpoena \"A\"\nline two\tcafé","placed_by":"alice@example.org","placed_at":1764072000123456789}"#;
    const HOLD_ALL: &str = r#"{"id":[255,255,255,255,255,255,255,255,255,255,255,255,255,255,255,255],"cameras":"All","start":-5,"end":null,"case_id":"c","reason":"r","placed_by":"unauthenticated@loopback","placed_at":0}"#;
    const RELEASE: &str = r#"{"hold_id":[1,35,69,103,137,171,205,239,254,220,186,152,118,84,50,16],"released_by":"bob@example.org","reason":"case closed","released_at":1764158400000000001}"#;
    const POLICY_GROUP: &str = r#"{"scope":{"Group":{"name":"garage","prefix":"gar-","cameras":["lobby-1","dock.2"]}},"version":3,"policy":{"retain_for_secs":2592000,"floor_secs":604800,"ceiling_secs":7776000,"locked":true},"effective_at":1764000000000000007,"set_by":"carol@example.org"}"#;
    const POLICY_DEFAULT: &str = r#"{"scope":"Default","version":1,"policy":{"retain_for_secs":86400,"floor_secs":null,"ceiling_secs":null,"locked":false},"effective_at":1700000000000000000,"set_by":"unauthenticated@loopback"}"#;
    const POLICY_CAMERA: &str = r#"{"scope":{"Camera":"lobby-1"},"version":2,"policy":{"retain_for_secs":3600,"floor_secs":null,"ceiling_secs":7200,"locked":false},"effective_at":1700000000000000001,"set_by":"dave"}"#;
    const DELETIONS: &str = r#"[{"segment_id":[160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175],"camera":"lobby-1","range":{"start":1763000000000000000,"end":1763000006000000000},"object_key":"segments/lobby-1/main/2025/11/13/x.seg","size":1048576,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","expired_at":1763086406000000000,"policy_scope":"default scope","policy_version":1,"deleted_at":1764072000000000000},{"segment_id":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"camera":"dock.2","range":{"start":10,"end":20},"object_key":"segments/dock.2/sub/y.seg","size":0,"sha256":"00","expired_at":30,"policy_scope":"group garage","policy_version":3,"deleted_at":40}]"#;

    fn cam(s: &str) -> CameraId {
        CameraId::parse(s).expect("test camera id")
    }

    fn ts(nanos: i64) -> Timestamp {
        Timestamp::from_nanos(nanos)
    }

    const ID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32,
        0x10,
    ];

    fn hold_list() -> Hold {
        Hold {
            id: HoldId::from_bytes(ID),
            cameras: HoldCameras::List(vec![cam("dock.2"), cam("lobby-1")]),
            start: ts(1_764_000_000_000_000_000),
            end: Some(ts(1_764_003_600_500_000_000)),
            case_id: "CASE-2026-0042".into(),
            reason: "Subpoena \"A\"\nline two\tcafé".into(),
            placed_by: "alice@example.org".into(),
            placed_at: ts(1_764_072_000_123_456_789),
        }
    }

    fn hold_all() -> Hold {
        Hold {
            id: HoldId::from_bytes([0xff; 16]),
            cameras: HoldCameras::All,
            start: ts(-5),
            end: None,
            case_id: "c".into(),
            reason: "r".into(),
            placed_by: "unauthenticated@loopback".into(),
            placed_at: ts(0),
        }
    }

    fn release() -> Release {
        Release {
            hold_id: HoldId::from_bytes(ID),
            released_by: "bob@example.org".into(),
            reason: "case closed".into(),
            released_at: ts(1_764_158_400_000_000_001),
        }
    }

    fn policy_group() -> PolicyVersion {
        PolicyVersion {
            scope: PolicyScope::Group {
                name: "garage".into(),
                prefix: Some("gar-".into()),
                cameras: vec![cam("lobby-1"), cam("dock.2")],
            },
            version: 3,
            policy: Policy {
                retain_for_secs: 2_592_000,
                floor_secs: Some(604_800),
                ceiling_secs: Some(7_776_000),
                locked: true,
            },
            effective_at: ts(1_764_000_000_000_000_007),
            set_by: "carol@example.org".into(),
        }
    }

    fn policy_default() -> PolicyVersion {
        PolicyVersion {
            scope: PolicyScope::Default,
            version: 1,
            policy: Policy {
                retain_for_secs: 86_400,
                floor_secs: None,
                ceiling_secs: None,
                locked: false,
            },
            effective_at: ts(1_700_000_000_000_000_000),
            set_by: "unauthenticated@loopback".into(),
        }
    }

    fn policy_camera() -> PolicyVersion {
        PolicyVersion {
            scope: PolicyScope::Camera(cam("lobby-1")),
            version: 2,
            policy: Policy {
                retain_for_secs: 3_600,
                floor_secs: None,
                ceiling_secs: Some(7_200),
                locked: false,
            },
            effective_at: ts(1_700_000_000_000_000_001),
            set_by: "dave".into(),
        }
    }

    fn deletions() -> Vec<Deletion> {
        let range = |s, e| TimeRange::new(ts(s), ts(e)).expect("test range");
        vec![
            Deletion {
                segment_id: SegmentId::from_bytes([
                    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac,
                    0xad, 0xae, 0xaf,
                ]),
                camera: cam("lobby-1"),
                range: range(1_763_000_000_000_000_000, 1_763_000_006_000_000_000),
                object_key: "segments/lobby-1/main/2025/11/13/x.seg".into(),
                size: 1_048_576,
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                expired_at: ts(1_763_086_406_000_000_000),
                policy_scope: "default scope".into(),
                policy_version: 1,
                deleted_at: ts(1_764_072_000_000_000_000),
            },
            Deletion {
                segment_id: SegmentId::from_bytes([0; 16]),
                camera: cam("dock.2"),
                range: range(10, 20),
                object_key: "segments/dock.2/sub/y.seg".into(),
                size: 0,
                sha256: "00".into(),
                expired_at: ts(30),
                policy_scope: "group garage".into(),
                policy_version: 3,
                deleted_at: ts(40),
            },
        ]
    }

    /// `json` with `"v":1,` first in every record object (the objects whose
    /// first field is `first`).
    fn with_version(json: &str, first: &str) -> String {
        json.replace(&format!("{{\"{first}\""), &format!("{{\"v\":1,\"{first}\""))
    }

    #[test]
    fn records_written_before_versioning_decode() {
        assert_eq!(decode_hold(HOLD_LIST.as_bytes()).unwrap(), hold_list());
        assert_eq!(decode_hold(HOLD_ALL.as_bytes()).unwrap(), hold_all());
        assert_eq!(decode_release(RELEASE.as_bytes()).unwrap(), release());
        assert_eq!(
            decode_policy(POLICY_GROUP.as_bytes()).unwrap(),
            policy_group()
        );
        assert_eq!(
            decode_policy(POLICY_DEFAULT.as_bytes()).unwrap(),
            policy_default()
        );
        assert_eq!(
            decode_policy(POLICY_CAMERA.as_bytes()).unwrap(),
            policy_camera()
        );
        assert_eq!(decode_deletions(DELETIONS.as_bytes()).unwrap(), deletions());
    }

    #[test]
    fn records_are_written_as_before_plus_version() {
        let enc = |r: Result<Vec<u8>, ServerError>| String::from_utf8(r.unwrap()).unwrap();
        assert_eq!(
            enc(encode(&HoldRecordV1::from(&hold_list()))),
            with_version(HOLD_LIST, "id")
        );
        assert_eq!(
            enc(encode(&HoldRecordV1::from(&hold_all()))),
            with_version(HOLD_ALL, "id")
        );
        assert_eq!(
            enc(encode(&ReleaseRecordV1::from(&release()))),
            with_version(RELEASE, "hold_id")
        );
        for (p, json) in [
            (policy_group(), POLICY_GROUP),
            (policy_default(), POLICY_DEFAULT),
            (policy_camera(), POLICY_CAMERA),
        ] {
            assert_eq!(
                enc(encode(&PolicyRecordV1::from(&p))),
                with_version(json, "scope")
            );
        }
        let dels: Vec<DeletionRecordV1> = deletions().iter().map(DeletionRecordV1::from).collect();
        assert_eq!(enc(encode(&dels)), with_version(DELETIONS, "segment_id"));
    }

    #[test]
    fn records_round_trip() {
        let h = hold_list();
        let p = encode(&HoldRecordV1::from(&h)).unwrap();
        assert_eq!(decode_hold(&p).unwrap(), h);
        let r = release();
        let p = encode(&ReleaseRecordV1::from(&r)).unwrap();
        assert_eq!(decode_release(&p).unwrap(), r);
        for v in [policy_group(), policy_default(), policy_camera()] {
            let p = encode(&PolicyRecordV1::from(&v)).unwrap();
            assert_eq!(decode_policy(&p).unwrap(), v);
        }
        let d = deletions();
        let recs: Vec<DeletionRecordV1> = d.iter().map(DeletionRecordV1::from).collect();
        assert_eq!(decode_deletions(&encode(&recs).unwrap()).unwrap(), d);
    }

    #[test]
    fn unknown_versions_are_refused() {
        let v2 = |json: &str| json.replacen('{', "{\"v\":2,", 1);
        for e in [
            decode_hold(v2(HOLD_LIST).as_bytes()).unwrap_err(),
            decode_release(v2(RELEASE).as_bytes()).unwrap_err(),
            decode_policy(v2(POLICY_DEFAULT).as_bytes()).unwrap_err(),
            decode_deletions(v2(DELETIONS).as_bytes()).unwrap_err(),
            // A future version need not look like version 1 at all.
            decode_hold(br#"{"v":2,"hold":{}}"#).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    RecordError::UnsupportedVersion {
                        found: 2,
                        supported: 1
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains("version 2 is not supported"), "{e}");
        }
        assert!(matches!(
            decode_hold(HOLD_LIST.replacen('{', "{\"v\":0,", 1).as_bytes()),
            Err(RecordError::UnsupportedVersion { found: 0, .. })
        ));
    }

    #[test]
    fn invalid_camera_ids_are_refused() {
        let bad = HOLD_LIST.replace("dock.2", "-dock");
        assert!(matches!(
            decode_hold(bad.as_bytes()),
            Err(RecordError::Invalid {
                field: "cameras",
                ..
            })
        ));
    }
}
