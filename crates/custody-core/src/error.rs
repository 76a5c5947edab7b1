//! The one error type of input validation.

/// Why a piece of input was refused. Each variant names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// An identifier does not follow its format.
    #[error("invalid {kind} {value:?}: {rule}")]
    Id {
        /// Which kind of id (camera id, stream, segment id, media type).
        kind: &'static str,
        /// The offending value (truncated for display).
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A time range whose end is not after its start.
    #[error("time range end {end} is not after start {start}")]
    EmptyRange {
        /// Start instant, RFC 3339.
        start: String,
        /// End instant, RFC 3339.
        end: String,
    },
    /// A time range longer than the configured maximum.
    #[error(
        "time range of {span_secs} s exceeds the configured maximum {limit_name} = {max_secs} s"
    )]
    SpanTooLong {
        /// Name of the config limit.
        limit_name: &'static str,
        /// Requested span in seconds.
        span_secs: i64,
        /// The configured maximum in seconds.
        max_secs: i64,
    },
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A timestamp out of the representable range.
    #[error("timestamp {0} is out of range (years 1678..2262)")]
    TimestampOutOfRange(String),
}
