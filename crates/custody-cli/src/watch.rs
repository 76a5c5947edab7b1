//! Following the output of ffmpeg's segment muxer.
//!
//! ffmpeg (`-f segment -segment_list LIST.csv -segment_list_type csv
//! -strftime 1 DIR/cam-%Y%m%d-%H%M%S.ts`) appends a line
//! `filename,start_time,end_time` to the list when it closes a segment, so a
//! listed file is complete. Real time ranges come from the first listed
//! file's name (wall clock, UTC, at second resolution) plus the stream times
//! in the list, so consecutive segments tile time exactly.
//!
//! Each segment is reported as it is settled (uploaded, already stored, or
//! refused for good) through the caller's callback; `custody` prints one line
//! for each.
//!
//! A refusal of the segment itself (INVALID_ARGUMENT, ALREADY_EXISTS,
//! PERMISSION_DENIED, FAILED_PRECONDITION, ...) is permanent: the segment is
//! recorded as rejected, left on disk, and the watch moves on. A server that
//! is down, busy or unreachable (UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED,
//! transport errors) is transient: the same segment is retried with backoff.
//! A message the server finds too large is retried at once with smaller
//! chunks (see [`Client::put_file`]).
//!
//! Each settled segment is appended (and fsync'd) to a state file in the
//! watched directory. A crash between acknowledgement and that append only
//! causes a re-upload, which the server answers as a duplicate (uploads are
//! idempotent by camera, stream and start): nothing is lost or stored twice.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDateTime;
use custody_core::{TimeRange, Timestamp};
use tracing::{info, warn};

use crate::client::{media_type_for, Client, ClientError, Upload};

/// Name of the state file kept in the watched directory.
pub const STATE_FILE: &str = ".custody-uploaded";

/// One closed segment from the list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    /// File name as listed.
    pub file: String,
    /// Stream time of the first frame, seconds.
    pub start: f64,
    /// Stream time after the last frame, seconds.
    pub end: f64,
}

/// Parses ffmpeg's CSV segment list (quoted names allowed).
pub fn parse_csv_list(text: &str) -> Vec<ListEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        // The last two fields are numbers; the name may itself contain commas.
        let mut rs = line.rsplitn(3, ',');
        let (Some(end), Some(start), Some(name)) = (rs.next(), rs.next(), rs.next()) else {
            continue;
        };
        let (Ok(start), Ok(end)) = (start.trim().parse::<f64>(), end.trim().parse::<f64>()) else {
            continue;
        };
        let name = name.trim();
        let name = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .map(|n| n.replace("\"\"", "\""))
            .unwrap_or_else(|| name.to_string());
        out.push(ListEntry {
            file: name,
            start,
            end,
        });
    }
    out
}

/// The wall-clock time embedded in a file name by `-strftime 1`, read with
/// `format` (e.g. `%Y%m%d-%H%M%S`) at the first position where it parses.
pub fn time_in_name(name: &str, format: &str) -> Option<Timestamp> {
    let stem = Path::new(name).file_stem()?.to_str()?;
    (0..stem.len())
        .filter(|i| stem.is_char_boundary(*i))
        .find_map(|i| {
            let (dt, _) = NaiveDateTime::parse_and_remainder(&stem[i..], format).ok()?;
            dt.and_utc()
                .timestamp_nanos_opt()
                .map(Timestamp::from_nanos)
        })
}

/// Why a watch stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The segment list could not be read.
    #[error("{}: {source}", path.display())]
    List {
        /// The list file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The first listed name carries no time in the expected format.
    #[error("no time matching {format:?} in segment name {file:?}")]
    NoTimeInName {
        /// The segment file name.
        file: String,
        /// The expected strftime format.
        format: String,
    },
    /// A listed segment's times make no range.
    #[error("{file}: {source}")]
    BadRange {
        /// The segment file name.
        file: String,
        /// Why the range is invalid.
        #[source]
        source: custody_core::InvalidInput,
    },
    /// The watch's state file could not be written.
    #[error("{}: {source}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
    /// A listed segment file is not on disk.
    #[error("listed segment {0} is missing")]
    Missing(String),
}

/// Real time ranges for the entries, anchored on the first entry's name.
pub fn real_ranges(entries: &[ListEntry], format: &str) -> Result<Vec<TimeRange>, WatchError> {
    let Some(first) = entries.first() else {
        return Ok(Vec::new());
    };
    let t0 = time_in_name(&first.file, format).ok_or_else(|| WatchError::NoTimeInName {
        file: first.file.clone(),
        format: format.to_string(),
    })?;
    let anchor = t0.as_nanos() - secs_to_nanos(first.start);
    entries
        .iter()
        .map(|e| {
            let s = Timestamp::from_nanos(anchor + secs_to_nanos(e.start));
            let t = Timestamp::from_nanos(anchor + secs_to_nanos(e.end));
            TimeRange::new(s, t).map_err(|source| WatchError::BadRange {
                file: e.file.clone(),
                source,
            })
        })
        .collect()
}

fn secs_to_nanos(s: f64) -> i64 {
    (s * 1e9).round() as i64
}

/// Settings of a watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Directory ffmpeg writes segments into.
    pub dir: PathBuf,
    /// The CSV segment list (default `DIR/segments.csv`).
    pub list: PathBuf,
    /// Camera id.
    pub camera: String,
    /// Stream name.
    pub stream: String,
    /// strftime format of the time in segment names.
    pub name_time_format: String,
    /// Delete each local file once the server has acknowledged it.
    pub delete_after_upload: bool,
    /// Stop once everything listed is uploaded, instead of following.
    pub once: bool,
    /// How often to look at the list again.
    pub poll: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

/// How one listed segment was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored by this upload.
    Uploaded,
    /// The server already had it.
    Duplicate,
    /// Refused for good, with the reason; the file is left on disk.
    Failed(String),
}

/// One settled segment, as reported to the caller of [`watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEvent {
    /// File name as listed.
    pub file: String,
    /// Camera id.
    pub camera: String,
    /// Stream name.
    pub stream: String,
    /// Real time range.
    pub range: TimeRange,
    /// Bytes stored (0 when failed).
    pub size_bytes: u64,
    /// Segment id (empty when failed).
    pub segment_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Listed segments still to settle after this one, as of this pass over
    /// the list (for progress).
    pub pending: usize,
}

/// `2026-11-24T10:00:00Z..10:00:02Z`: the end without its date when it is the start's.
pub fn short_range(r: &TimeRange) -> String {
    let (s, e) = (r.start().to_string(), r.end().to_string());
    match (s.split_once('T'), e.split_once('T')) {
        (Some((sd, _)), Some((ed, et))) if sd == ed => format!("{s}..{et}"),
        _ => format!("{s}..{e}"),
    }
}

impl SegmentEvent {
    /// One line for people, e.g.
    /// `uploaded cam-001 2026-11-24T10:00:00Z..10:00:02Z 1234567 bytes segment ID (FILE)`.
    pub fn line(&self) -> String {
        let range = short_range(&self.range);
        match &self.outcome {
            Outcome::Uploaded | Outcome::Duplicate => format!(
                "{} {} {range} {} bytes segment {} ({})",
                if self.outcome == Outcome::Uploaded {
                    "uploaded"
                } else {
                    "duplicate"
                },
                self.camera,
                self.size_bytes,
                self.segment_id,
                self.file
            ),
            Outcome::Failed(why) => {
                format!("FAILED {} {range} ({}): {why}", self.camera, self.file)
            }
        }
    }

    /// The same as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let (status, reason) = match &self.outcome {
            Outcome::Uploaded => ("uploaded", None),
            Outcome::Duplicate => ("duplicate", None),
            Outcome::Failed(why) => ("failed", Some(why.as_str())),
        };
        serde_json::json!({
            "status": status,
            "file": self.file,
            "camera_id": self.camera,
            "stream": self.stream,
            "start": self.range.start().to_string(),
            "end": self.range.end().to_string(),
            "size_bytes": self.size_bytes,
            "segment_id": self.segment_id,
            "reason": reason,
        })
    }
}

/// What a watch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Segments stored by this run.
    pub uploaded: u64,
    /// Segments the server already had.
    pub duplicates: u64,
    /// Segments the server refused for good, with the reason (left on disk).
    pub rejected: Vec<(String, String)>,
}

fn load_state(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split('\t').nth(1).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn append_state(path: &Path, status: &str, name: &str, detail: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{status}\t{name}\t{detail}")?;
    f.sync_all()
}

/// Uploads every closed segment the list names, retrying with backoff while
/// the server is unavailable, and calls `on_segment` as each one is settled;
/// with `once`, returns when the list is drained.
pub async fn watch(
    client: &Client,
    cfg: &WatchConfig,
    on_segment: &mut dyn FnMut(&SegmentEvent),
) -> Result<WatchReport, WatchError> {
    let state_path = cfg.dir.join(STATE_FILE);
    let mut done = load_state(&state_path);
    let mut report = WatchReport::default();
    loop {
        let text = match tokio::fs::read_to_string(&cfg.list).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(WatchError::List {
                    path: cfg.list.clone(),
                    source,
                })
            }
        };
        let entries = parse_csv_list(&text);
        let ranges = real_ranges(&entries, &cfg.name_time_format)?;
        let mut pending = entries.iter().filter(|e| !done.contains(&e.file)).count();
        for (entry, range) in entries.iter().zip(ranges) {
            if done.contains(&entry.file) {
                continue;
            }
            let path = cfg.dir.join(&entry.file);
            let upload = Upload {
                camera: cfg.camera.clone(),
                stream: cfg.stream.clone(),
                range,
                media_type: media_type_for(&path).to_string(),
                sequence: None,
            };
            let mut backoff = Duration::from_millis(200);
            let outcome = loop {
                match client.put_file(&upload, &path).await {
                    Ok(r) => break Ok(r),
                    Err(e) if e.is_retryable() => {
                        // With several nodes, the retry goes to the next one.
                        let node = client.fail_over().unwrap_or(client.address()).to_string();
                        warn!(file = %entry.file, error = %e, retry_in = ?backoff, node, "server unavailable or busy; will retry");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(cfg.max_backoff);
                    }
                    Err(e) => break Err(e),
                }
            };
            let state_err = |source: std::io::Error| WatchError::State {
                path: state_path.clone(),
                source,
            };
            let mut event = SegmentEvent {
                file: entry.file.clone(),
                camera: cfg.camera.clone(),
                stream: cfg.stream.clone(),
                range,
                size_bytes: 0,
                segment_id: String::new(),
                outcome: Outcome::Uploaded,
                pending: 0,
            };
            pending = pending.saturating_sub(1);
            event.pending = pending;
            match outcome {
                Ok(r) => {
                    append_state(&state_path, "stored", &entry.file, &r.segment_id)
                        .map_err(state_err)?;
                    if r.duplicate {
                        report.duplicates += 1;
                        event.outcome = Outcome::Duplicate;
                    } else {
                        report.uploaded += 1;
                    }
                    event.size_bytes = r.size_bytes;
                    event.segment_id = r.segment_id.clone();
                    on_segment(&event);
                    info!(file = %entry.file, segment = %r.segment_id, %range, duplicate = r.duplicate, "uploaded");
                    if cfg.delete_after_upload {
                        if let Err(e) = tokio::fs::remove_file(&path).await {
                            warn!(file = %path.display(), error = %e, "could not delete uploaded file");
                        }
                    }
                }
                Err(ClientError::Io { path: p, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(WatchError::Missing(p));
                }
                Err(e) => {
                    warn!(file = %entry.file, error = %e, "server refused segment; left on disk");
                    let why = e.to_string();
                    append_state(
                        &state_path,
                        "rejected",
                        &entry.file,
                        &why.replace(['\t', '\n', '\r'], " "),
                    )
                    .map_err(state_err)?;
                    event.outcome = Outcome::Failed(why.clone());
                    on_segment(&event);
                    report.rejected.push((entry.file.clone(), why));
                }
            }
            done.insert(entry.file.clone());
        }
        if cfg.once {
            return Ok(report);
        }
        tokio::time::sleep(cfg.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ffmpeg_csv() {
        let e = parse_csv_list(
            "cam-20261124-100000.ts,0.000000,6.000000\n\"a,b.ts\",6.0,12.5\nbroken\n",
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].file, "a,b.ts");
        assert_eq!((e[1].start, e[1].end), (6.0, 12.5));
    }

    #[test]
    fn ranges_tile_from_the_first_name() {
        let e = parse_csv_list("cam-20261124-100000.ts,1.4,7.4\ncam-20261124-100006.ts,7.4,13.4\n");
        let r = real_ranges(&e, "%Y%m%d-%H%M%S").unwrap();
        assert_eq!(
            r[0].start(),
            Timestamp::parse_rfc3339("2026-11-24T10:00:00Z").unwrap()
        );
        assert_eq!(r[0].end(), r[1].start());
        assert_eq!(
            r[1].end(),
            Timestamp::parse_rfc3339("2026-11-24T10:00:12Z").unwrap()
        );
        assert!(real_ranges(&parse_csv_list("nodate.ts,0,1\n"), "%Y%m%d-%H%M%S").is_err());
    }

    #[test]
    fn segment_lines_name_camera_range_size_and_id() {
        let t = |s| Timestamp::parse_rfc3339(s).unwrap();
        let mut e = SegmentEvent {
            file: "c-20261124-100000.ts".into(),
            camera: "cam-001".into(),
            stream: "main".into(),
            range: TimeRange::new(t("2026-11-24T10:00:00Z"), t("2026-11-24T10:00:02Z")).unwrap(),
            size_bytes: 1234567,
            segment_id: "abc".into(),
            outcome: Outcome::Uploaded,
            pending: 0,
        };
        assert_eq!(
            e.line(),
            "uploaded cam-001 2026-11-24T10:00:00Z..10:00:02Z 1234567 bytes segment abc (c-20261124-100000.ts)"
        );
        e.outcome = Outcome::Duplicate;
        assert!(e.line().starts_with("duplicate cam-001 "));
        e.outcome = Outcome::Failed("InvalidArgument: empty".into());
        assert_eq!(
            e.line(),
            "FAILED cam-001 2026-11-24T10:00:00Z..10:00:02Z (c-20261124-100000.ts): InvalidArgument: empty"
        );
        assert_eq!(e.json()["status"], "failed");
        let across_midnight =
            TimeRange::new(t("2026-11-24T23:59:59Z"), t("2026-11-25T00:00:01Z")).unwrap();
        assert_eq!(
            short_range(&across_midnight),
            "2026-11-24T23:59:59Z..2026-11-25T00:00:01Z"
        );
    }
}
