//! Instants and half-open time ranges.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// An instant, in nanoseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The earliest representable instant.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// The latest representable instant.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// From nanoseconds since the epoch.
    pub const fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// From whole seconds since the epoch (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000_000))
    }

    /// From seconds and nanoseconds, as in `google.protobuf.Timestamp`.
    pub fn from_parts(secs: i64, nanos: i32) -> Result<Self, InvalidInput> {
        secs.checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(i64::from(nanos)))
            .map(Timestamp)
            .ok_or_else(|| InvalidInput::TimestampOutOfRange(format!("{secs}s+{nanos}ns")))
    }

    /// Parses RFC 3339 (`2026-11-24T10:00:00Z`).
    pub fn parse_rfc3339(s: &str) -> Result<Self, InvalidInput> {
        let dt = DateTime::parse_from_rfc3339(s).map_err(|_| InvalidInput::Id {
            kind: "timestamp",
            value: s.chars().take(64).collect(),
            rule: "expected RFC 3339, e.g. 2026-11-24T10:00:00Z",
        })?;
        dt.timestamp_nanos_opt()
            .map(Timestamp)
            .ok_or_else(|| InvalidInput::TimestampOutOfRange(s.to_string()))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// `(seconds, nanoseconds)` as in `google.protobuf.Timestamp`.
    pub const fn to_parts(self) -> (i64, i32) {
        (
            self.0.div_euclid(1_000_000_000),
            self.0.rem_euclid(1_000_000_000) as i32,
        )
    }

    /// This instant plus a number of nanoseconds (saturating).
    pub const fn saturating_add_nanos(self, nanos: i64) -> Self {
        Timestamp(self.0.saturating_add(nanos))
    }

    /// This instant plus a duration (saturating).
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        let n = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.saturating_add_nanos(n)
    }

    /// Key bytes that sort like the instant (big-endian, sign bit flipped).
    pub const fn to_sortable_bytes(self) -> [u8; 8] {
        ((self.0 as u64) ^ (1 << 63)).to_be_bytes()
    }

    /// Inverse of [`Timestamp::to_sortable_bytes`].
    pub const fn from_sortable_bytes(b: [u8; 8]) -> Self {
        Timestamp((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
    }

    /// As a chrono UTC date-time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        )
    }
}

/// A half-open range of instants `[start, end)`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TimeRange {
    start: Timestamp,
    end: Timestamp,
}

impl TimeRange {
    /// A range; refused unless `end > start`.
    pub fn new(start: Timestamp, end: Timestamp) -> Result<Self, InvalidInput> {
        if end <= start {
            return Err(InvalidInput::EmptyRange {
                start: start.to_string(),
                end: end.to_string(),
            });
        }
        Ok(TimeRange { start, end })
    }

    /// Inclusive start.
    pub const fn start(&self) -> Timestamp {
        self.start
    }

    /// Exclusive end.
    pub const fn end(&self) -> Timestamp {
        self.end
    }

    /// Length in nanoseconds.
    pub const fn span_nanos(&self) -> i64 {
        self.end.0.saturating_sub(self.start.0)
    }

    /// Whether the two ranges share at least one instant.
    pub fn overlaps(&self, other: &TimeRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether `t` lies in the range.
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }

    /// Refuses the range if it is longer than `max` (named `limit_name` in config).
    pub fn check_span(
        &self,
        max: std::time::Duration,
        limit_name: &'static str,
    ) -> Result<(), InvalidInput> {
        let max_n = i64::try_from(max.as_nanos()).unwrap_or(i64::MAX);
        if self.span_nanos() > max_n {
            return Err(InvalidInput::SpanTooLong {
                limit_name,
                span_secs: self.span_nanos() / 1_000_000_000,
                max_secs: max_n / 1_000_000_000,
            });
        }
        Ok(())
    }
}

impl fmt::Display for TimeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_and_inverted_ranges_are_refused() {
        let t = Timestamp::from_secs(10);
        assert!(TimeRange::new(t, t).is_err());
        assert!(TimeRange::new(t, Timestamp::from_secs(9)).is_err());
        assert!(TimeRange::new(t, Timestamp::from_secs(11)).is_ok());
    }

    #[test]
    fn span_limit_is_enforced() {
        let r = TimeRange::new(Timestamp::from_secs(0), Timestamp::from_secs(3601)).unwrap();
        let err = r
            .check_span(std::time::Duration::from_secs(3600), "max_query_span")
            .unwrap_err();
        assert!(err.to_string().contains("max_query_span"));
        assert!(r
            .check_span(std::time::Duration::from_secs(3601), "x")
            .is_ok());
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-24T10:00:00.5Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-24T10:00:00.500Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    proptest! {
        #[test]
        fn sortable_bytes_preserve_order(a in any::<i64>(), b in any::<i64>()) {
            let (ta, tb) = (Timestamp::from_nanos(a), Timestamp::from_nanos(b));
            prop_assert_eq!(ta.cmp(&tb), ta.to_sortable_bytes().cmp(&tb.to_sortable_bytes()));
            prop_assert_eq!(Timestamp::from_sortable_bytes(ta.to_sortable_bytes()), ta);
        }

        #[test]
        fn parts_round_trip(n in any::<i64>()) {
            let t = Timestamp::from_nanos(n);
            let (s, ns) = t.to_parts();
            prop_assert_eq!(Timestamp::from_parts(s, ns).unwrap(), t);
        }

        #[test]
        fn overlap_is_symmetric(a in 0i64..100, la in 1i64..50, b in 0i64..100, lb in 1i64..50) {
            let r1 = TimeRange::new(Timestamp::from_nanos(a), Timestamp::from_nanos(a + la)).unwrap();
            let r2 = TimeRange::new(Timestamp::from_nanos(b), Timestamp::from_nanos(b + lb)).unwrap();
            prop_assert_eq!(r1.overlaps(&r2), r2.overlaps(&r1));
            let brute = (a..a + la).any(|t| (b..b + lb).contains(&t));
            prop_assert_eq!(r1.overlaps(&r2), brute);
        }
    }
}
