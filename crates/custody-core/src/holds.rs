//! Legal holds and the coverage index.
//!
//! This module owns the hold and release records (their validation) and
//! [`HoldIndex`], which answers "is this footage held, and by which hold?" in
//! logarithmic time. A segment is held while any active hold overlaps any part
//! of it; which holds are active (not released) is the caller's to decide.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::retention::MAX_PRINCIPAL_LEN;
use crate::{CameraId, InvalidInput, TimeRange, Timestamp};

/// Longest case id accepted, in characters.
pub const MAX_CASE_ID_LEN: usize = 128;
/// Longest hold or release reason accepted, in characters.
pub const MAX_REASON_LEN: usize = 1024;

/// Why a hold or a release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// A camera list with no cameras (use [`HoldCameras::All`] for every camera).
    #[error("the hold's camera list is empty; list at least one camera or hold all cameras")]
    EmptyCameraList,
    /// A camera list that is not sorted and free of duplicates.
    #[error("the hold's camera list must be sorted and free of duplicates (build it with HoldCameras::list)")]
    UnsortedCameraList,
    /// A hold whose end is not after its start.
    #[error("hold end {end} is not after its start {start}")]
    EndNotAfterStart {
        /// Start, RFC 3339.
        start: String,
        /// End, RFC 3339.
        end: String,
    },
    /// A text field that is empty or too long.
    #[error("{field} must be 1..={max} characters, got {len}")]
    TextLength {
        /// The field.
        field: &'static str,
        /// Its length in characters.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A text field holding control characters.
    #[error("{field} must not contain control characters")]
    ControlCharacter {
        /// The field.
        field: &'static str,
    },
}

/// A hold id: 128 random bits (drawn by the caller), written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HoldId([u8; 16]);

impl HoldId {
    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::Id {
            kind: "hold id",
            value: s.chars().take(80).collect(),
            rule: "32 lowercase hex digits",
        };
        if s.len() != 32
            || !s
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id).map_err(|_| bad())?;
        Ok(HoldId(id))
    }

    /// From raw (random) bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        HoldId(b)
    }

    /// Raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The cameras a hold covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HoldCameras {
    /// Every camera, including cameras added later.
    All,
    /// These cameras: sorted, without duplicates, not empty.
    List(Vec<CameraId>),
}

impl HoldCameras {
    /// A list of cameras, sorted and deduplicated; refused if empty.
    pub fn list(cameras: impl IntoIterator<Item = CameraId>) -> Result<Self, HoldError> {
        let mut v: Vec<CameraId> = cameras.into_iter().collect();
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err(HoldError::EmptyCameraList);
        }
        Ok(HoldCameras::List(v))
    }

    /// Checks that a list is non-empty, sorted and free of duplicates.
    pub fn validate(&self) -> Result<(), HoldError> {
        match self {
            HoldCameras::All => Ok(()),
            HoldCameras::List(v) if v.is_empty() => Err(HoldError::EmptyCameraList),
            HoldCameras::List(v) if v.windows(2).any(|w| w[0] >= w[1]) => {
                Err(HoldError::UnsortedCameraList)
            }
            HoldCameras::List(_) => Ok(()),
        }
    }

    /// Whether `camera` is covered.
    pub fn includes(&self, camera: &CameraId) -> bool {
        match self {
            HoldCameras::All => true,
            HoldCameras::List(v) => v.contains(camera),
        }
    }
}

/// A legal hold: keeps the covered footage regardless of retention until released.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hold {
    /// The hold's id.
    pub id: HoldId,
    /// The cameras covered.
    pub cameras: HoldCameras,
    /// Start of the covered time, inclusive.
    pub start: Timestamp,
    /// End of the covered time, exclusive; `None` = open-ended (covers future footage).
    pub end: Option<Timestamp>,
    /// The case this hold serves: 1..=128 characters, no control characters.
    pub case_id: String,
    /// Why: 1..=1024 characters, no control characters other than newline and tab.
    pub reason: String,
    /// The principal who placed it.
    pub placed_by: String,
    /// When it was placed.
    pub placed_at: Timestamp,
}

impl Hold {
    /// Checks the cameras, `end > start`, and the text fields.
    pub fn validate(&self) -> Result<(), HoldError> {
        self.cameras.validate()?;
        if let Some(end) = self.end.filter(|&e| e <= self.start) {
            return Err(HoldError::EndNotAfterStart {
                start: self.start.to_string(),
                end: end.to_string(),
            });
        }
        check_text("case_id", &self.case_id, MAX_CASE_ID_LEN, false)?;
        check_text("reason", &self.reason, MAX_REASON_LEN, true)?;
        check_principal("placed_by", &self.placed_by)
    }

    /// Whether the hold's time `[start, end)` overlaps `range`.
    pub fn overlaps(&self, range: &TimeRange) -> bool {
        self.start < range.end() && self.end.is_none_or(|e| range.start() < e)
    }

    /// Whether the hold covers any part of `range` on `camera`.
    pub fn covers(&self, camera: &CameraId, range: &TimeRange) -> bool {
        self.cameras.includes(camera) && self.overlaps(range)
    }
}

/// The release of a hold; a separate record, the hold stays on record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Release {
    /// The released hold.
    pub hold_id: HoldId,
    /// The principal who released it.
    pub released_by: String,
    /// Why: 1..=1024 characters, no control characters other than newline and tab.
    pub reason: String,
    /// When it was released.
    pub released_at: Timestamp,
}

impl Release {
    /// Checks the text fields.
    pub fn validate(&self) -> Result<(), HoldError> {
        check_principal("released_by", &self.released_by)?;
        check_text("reason", &self.reason, MAX_REASON_LEN, true)
    }
}

fn check_text(field: &'static str, s: &str, max: usize, multiline: bool) -> Result<(), HoldError> {
    let len = s.chars().count();
    if !(1..=max).contains(&len) {
        return Err(HoldError::TextLength { field, len, max });
    }
    if s.chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\t')))
    {
        return Err(HoldError::ControlCharacter { field });
    }
    Ok(())
}

fn check_principal(field: &'static str, s: &str) -> Result<(), HoldError> {
    check_text(field, s, MAX_PRINCIPAL_LEN, false)
}

/// Holds of one lane (one camera, or all cameras), sorted by start.
#[derive(Debug, Clone, Default)]
struct Lane {
    /// `(start, end, id)` sorted; an open end is `Timestamp::MAX`.
    holds: Vec<(Timestamp, Timestamp, HoldId)>,
    /// `max_end[i]`: the largest end among `holds[..=i]` and its hold.
    max_end: Vec<(Timestamp, HoldId)>,
}

impl Lane {
    fn seal(&mut self) {
        self.holds.sort();
        self.max_end.clear();
        let mut best: Option<(Timestamp, HoldId)> = None;
        for &(_, end, id) in &self.holds {
            let b = match best {
                Some(b) if b.0 >= end => b,
                _ => (end, id),
            };
            best = Some(b);
            self.max_end.push(b);
        }
    }

    fn covering(&self, range: &TimeRange) -> Option<HoldId> {
        let k = self.holds.partition_point(|h| h.0 < range.end());
        let (end, id) = *self.max_end.get(k.checked_sub(1)?)?;
        (end > range.start()).then_some(id)
    }

    fn covering_all(&self, range: &TimeRange, out: &mut Vec<HoldId>) {
        let k = self.holds.partition_point(|h| h.0 < range.end());
        out.extend(
            self.holds[..k]
                .iter()
                .filter(|h| h.1 > range.start())
                .map(|h| h.2),
        );
    }
}

/// Index of the active holds: which hold, if any, covers footage of a camera.
#[derive(Debug, Clone, Default)]
pub struct HoldIndex {
    cameras: BTreeMap<CameraId, Lane>,
    all: Lane,
    len: usize,
}

impl HoldIndex {
    /// Indexes `holds`, which the caller has filtered to the active (unreleased) ones.
    pub fn build<'a>(holds: impl IntoIterator<Item = &'a Hold>) -> Self {
        let mut ix = HoldIndex::default();
        for h in holds {
            ix.len += 1;
            let entry = (h.start, h.end.unwrap_or(Timestamp::MAX), h.id);
            match &h.cameras {
                HoldCameras::All => ix.all.holds.push(entry),
                HoldCameras::List(cams) => {
                    for c in cams {
                        ix.cameras.entry(c.clone()).or_default().holds.push(entry);
                    }
                }
            }
        }
        ix.all.seal();
        ix.cameras.values_mut().for_each(Lane::seal);
        ix
    }

    /// A hold covering any part of `range` on `camera`, if one does, in O(log n).
    pub fn covering(&self, camera: &CameraId, range: &TimeRange) -> Option<HoldId> {
        self.cameras
            .get(camera)
            .and_then(|l| l.covering(range))
            .or_else(|| self.all.covering(range))
    }

    /// Every hold covering any part of `range` on `camera`, sorted by id (O(n)).
    pub fn covering_all(&self, camera: &CameraId, range: &TimeRange) -> Vec<HoldId> {
        let mut out = Vec::new();
        if let Some(l) = self.cameras.get(camera) {
            l.covering_all(range, &mut out);
        }
        self.all.covering_all(range, &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// Number of holds indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no hold is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cam(s: &str) -> CameraId {
        CameraId::parse(s).unwrap()
    }

    fn range(a: i64, b: i64) -> TimeRange {
        TimeRange::new(Timestamp::from_nanos(a), Timestamp::from_nanos(b)).unwrap()
    }

    fn hold(id: u8, cameras: HoldCameras, start: i64, end: Option<i64>) -> Hold {
        Hold {
            id: HoldId::from_bytes([id; 16]),
            cameras,
            start: Timestamp::from_nanos(start),
            end: end.map(Timestamp::from_nanos),
            case_id: "CASE-1".into(),
            reason: "subpoena".into(),
            placed_by: "legal".into(),
            placed_at: Timestamp::from_nanos(0),
        }
    }

    #[test]
    fn hold_ids_round_trip() {
        let id = HoldId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(HoldId::parse(&id.to_string()).unwrap(), id);
        assert!(HoldId::parse(&"AB".repeat(16)).is_err());
        assert!(HoldId::parse("ab").is_err());
    }

    #[test]
    fn validation() {
        let list = HoldCameras::list([cam("b"), cam("a"), cam("b")]).unwrap();
        assert_eq!(list, HoldCameras::List(vec![cam("a"), cam("b")]));
        assert_eq!(HoldCameras::list([]), Err(HoldError::EmptyCameraList));
        assert_eq!(
            HoldCameras::List(vec![cam("b"), cam("a")]).validate(),
            Err(HoldError::UnsortedCameraList)
        );
        let mut h = hold(1, HoldCameras::All, 10, Some(10));
        assert!(matches!(
            h.validate(),
            Err(HoldError::EndNotAfterStart { .. })
        ));
        h.end = None;
        assert!(h.validate().is_ok());
        h.case_id = "x".repeat(129);
        assert!(h.validate().unwrap_err().to_string().contains("case_id"));
        h.case_id = "a\nb".into();
        assert_eq!(
            h.validate(),
            Err(HoldError::ControlCharacter { field: "case_id" })
        );
        h.case_id = "ok".into();
        h.reason = "line one\nline two".into();
        assert!(h.validate().is_ok());
        h.placed_by = String::new();
        assert!(h.validate().unwrap_err().to_string().contains("placed_by"));
        let r = Release {
            hold_id: h.id,
            released_by: "legal".into(),
            reason: String::new(),
            released_at: Timestamp::from_nanos(5),
        };
        assert!(r.validate().unwrap_err().to_string().contains("reason"));
    }

    #[test]
    fn index_finds_covering_holds() {
        let holds = [
            hold(1, HoldCameras::list([cam("a")]).unwrap(), 0, Some(10)),
            hold(
                2,
                HoldCameras::list([cam("a"), cam("b")]).unwrap(),
                20,
                None,
            ),
            hold(3, HoldCameras::All, 100, Some(110)),
        ];
        let ix = HoldIndex::build(&holds);
        assert_eq!(ix.len(), 3);
        let (a, b, c) = (cam("a"), cam("b"), cam("c"));
        assert_eq!(ix.covering(&a, &range(5, 6)), Some(holds[0].id));
        assert_eq!(ix.covering(&a, &range(10, 20)), None);
        assert_eq!(ix.covering(&a, &range(19, 21)), Some(holds[1].id));
        assert_eq!(
            ix.covering(&b, &range(1_000_000, 1_000_001)),
            Some(holds[1].id)
        );
        assert_eq!(ix.covering(&c, &range(105, 200)), Some(holds[2].id));
        assert_eq!(ix.covering(&c, &range(110, 200)), None);
        assert_eq!(
            ix.covering_all(&a, &range(0, 105)),
            vec![holds[0].id, holds[1].id, holds[2].id]
        );
        assert!(HoldIndex::build([]).is_empty());
    }

    fn arb_hold() -> impl Strategy<Value = Hold> {
        (
            any::<u8>(),
            proptest::option::of(proptest::collection::vec(0usize..4, 1..4)),
            0i64..100,
            proptest::option::of(1i64..40),
        )
            .prop_map(|(id, cams, start, len)| {
                let names = ["a", "b", "c", "d"];
                let cameras = match cams {
                    None => HoldCameras::All,
                    Some(v) => HoldCameras::list(v.into_iter().map(|i| cam(names[i]))).unwrap(),
                };
                hold(id, cameras, start, len.map(|l| start + l))
            })
    }

    proptest! {
        #[test]
        fn covering_agrees_with_brute_force(
            holds in proptest::collection::vec(arb_hold(), 0..30),
            queries in proptest::collection::vec((0usize..5, 0i64..150, 1i64..30), 1..30),
        ) {
            let ix = HoldIndex::build(&holds);
            prop_assert_eq!(ix.len(), holds.len());
            for (ci, s, l) in queries {
                let c = cam(["a", "b", "c", "d", "e"][ci]);
                let r = range(s, s + l);
                let brute: Vec<&Hold> = holds.iter().filter(|h| h.covers(&c, &r)).collect();
                match ix.covering(&c, &r) {
                    None => prop_assert!(brute.is_empty()),
                    Some(id) => prop_assert!(brute.iter().any(|h| h.id == id)),
                }
                let mut ids: Vec<HoldId> = brute.iter().map(|h| h.id).collect();
                ids.sort();
                ids.dedup();
                prop_assert_eq!(ix.covering_all(&c, &r), ids);
            }
        }
    }
}
