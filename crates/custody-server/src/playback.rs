//! HLS playback (RFC 8216, VOD) over HTTP on listeners that serve
//! `playback`: a playlist of a camera stream × time range built from the
//! catalog, and its segments decrypted on the fly (streamed, `Range`
//! requests decrypting only the chunks they cover). The listener's gate
//! admits whoever may `ReadSegment`; every playlist and segment served (or
//! refused here) is an audit record, group-committed like reads.
//!
//! Paths (the `{segment}` ids are the archive's segment ids):
//! - `GET /playback/v1/cameras/{camera}/{stream}/index.m3u8?from=T&to=T`
//!   (RFC 3339 instants; the span is limited by `limits.max_export_span_secs`)
//! - `GET /playback/v1/segments/{segment}`: the whole plaintext segment
//!   (`.../media.ts` in playlists: players like an extension);
//! - `GET /playback/v1/segments/{segment}/init.mp4` and `.../media.mp4`: a
//!   fragmented MP4 segment split into its initialization section (`ftyp` +
//!   `moov`, named by `#EXT-X-MAP`) and its media (from the first `moof`).

use std::ops::Range;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{
    HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use custody_audit::Outcome;
use custody_catalog::SegmentRecord;
use custody_core::{CameraId, SegmentId, StreamName, TimeRange, Timestamp};
use futures::StreamExt;

use crate::{AuditEvent, Caller, Node, OpenSegment, ServerError};

/// Every playback path starts with this.
pub(crate) const PATH_PREFIX: &str = "/playback/";

/// Consecutive segments further apart (or overlapping by more) than this
/// are separated by `#EXT-X-DISCONTINUITY`: a recording gap, expired and
/// deleted footage, or a recorder restart.
const DISCONTINUITY_TOLERANCE_NANOS: i64 = 100_000_000;

/// MPEG transport stream: played as is.
const MPEG_TS: &str = "video/mp2t";
/// Fragmented MP4: played with `#EXT-X-MAP`.
const MP4: &str = "video/mp4";

/// Top-level MP4 boxes read while looking for the first `moof`.
const MAX_MP4_BOXES: usize = 64;

/// Whether `path` is a playback path.
pub(crate) fn is_playback_path(path: &str) -> bool {
    path.starts_with(PATH_PREFIX)
}

/// The playback routes of a listener that serves `playback`.
pub(crate) fn router(node: Node) -> Router {
    let v1 = Router::new()
        .route("/cameras/{camera}/{stream}/index.m3u8", get(playlist))
        .route("/segments/{segment}", get(whole_segment))
        .route("/segments/{segment}/media.ts", get(whole_segment))
        .route("/segments/{segment}/init.mp4", get(init_section))
        .route("/segments/{segment}/media.mp4", get(media_section))
        .fallback(unknown_path)
        .with_state(node);
    Router::new().nest("/playback/v1", v1)
}

/// An HTTP refusal or failure with a one-line message.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
    /// For 416: the segment's size (`Content-Range: bytes */size`).
    size: Option<u64>,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            size: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The audit outcome: the caller's fault is a refusal.
    fn outcome(&self) -> Outcome {
        if self.status.is_client_error() {
            Outcome::Refused
        } else {
            Outcome::Failed
        }
    }
}

impl From<ServerError> for HttpError {
    fn from(e: ServerError) -> HttpError {
        let status = match &e {
            ServerError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::AlreadyExists(_) | ServerError::Aborted(_) => StatusCode::CONFLICT,
            ServerError::FailedPrecondition(_) => StatusCode::CONFLICT,
            ServerError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ServerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::OutOfSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            ServerError::DataLoss(_) | ServerError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        HttpError::new(status, e.to_string())
    }
}

impl From<custody_core::InvalidInput> for HttpError {
    fn from(e: custody_core::InvalidInput) -> HttpError {
        HttpError::bad_request(e.to_string())
    }
}

impl From<custody_catalog::CatalogError> for HttpError {
    fn from(e: custody_catalog::CatalogError) -> HttpError {
        ServerError::from(e).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (self.status, format!("{}\n", self.message)).into_response();
        if let Some(size) = self.size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
        }
        r
    }
}

/// The caller the gate put in the request (the local user when there is
/// none: in-process use).
fn caller_of(parts: &Parts) -> Caller {
    parts
        .extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller::local("in-process"))
}

/// Records one playback request, group-committed like every read, and
/// returns what to answer: `result`, or 503 when it would be served
/// unaudited (the audit writer is failing and the record did not become
/// durable).
async fn audited<T>(
    node: &Node,
    mut e: AuditEvent,
    result: Result<T, HttpError>,
) -> Result<T, HttpError> {
    if let Err(err) = &result {
        e.outcome = err.outcome();
        e.reason = format!("HTTP {}: {}", err.status.as_u16(), err.message);
    }
    match node.audit().record_read(e).await {
        Err(err) if result.is_ok() => Err(HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("refused: nothing is served unaudited ({err}); retry"),
        )),
        _ => result,
    }
}

async fn unknown_path(State(node): State<Node>, parts: Parts) -> Response {
    let caller = caller_of(&parts);
    let result: Result<Response, HttpError> = Err(HttpError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no playback resource at {}: playlists are /playback/v1/cameras/CAMERA/STREAM/index.m3u8?from=T&to=T",
            parts.uri.path()
        ),
    ));
    let mut e = AuditEvent::new(&caller, "playback.unknown");
    e.detail = parts.uri.path().chars().take(256).collect();
    audited(&node, e, result).await.into_response()
}

// ---------------------------------------------------------------- playlists

/// Decodes `%XX` escapes and `+` (a space in a query string).
fn percent_decode(s: &str) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        HttpError::bad_request(format!("bad percent-escape in query {s:?}"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::bad_request("query is not UTF-8"))
}

/// `from` and `to` of a playlist query, both required, RFC 3339, `to` after `from`.
fn query_range(query: Option<&str>) -> Result<TimeRange, HttpError> {
    let mut from = None;
    let mut to = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "from" => &mut from,
            "to" => &mut to,
            other => {
                return Err(HttpError::bad_request(format!(
                    "unknown query parameter {:?}: a playlist takes from and to (RFC 3339)",
                    other.chars().take(64).collect::<String>()
                )))
            }
        };
        if slot.is_some() {
            return Err(HttpError::bad_request(format!("{k} is given twice")));
        }
        let value = percent_decode(v)?;
        let t = Timestamp::parse_rfc3339(&value)
            .map_err(|e| HttpError::bad_request(format!("{k}: {e}")))?;
        *slot = Some(t);
    }
    let (Some(from), Some(to)) = (from, to) else {
        return Err(HttpError::bad_request(
            "a playlist needs both from and to (RFC 3339, e.g. ?from=2026-11-24T10:00:00Z&to=2026-11-24T11:00:00Z)",
        ));
    };
    Ok(TimeRange::new(from, to)?)
}

/// Seconds of a nanosecond count.
fn secs(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// Whether HLS can play segments of this media type.
fn playable(media_type: &str) -> bool {
    media_type == MPEG_TS || media_type == MP4
}

/// The playlist of `segments` (in time order, one stream).
fn render_playlist(segments: &[SegmentRecord], range: &TimeRange) -> String {
    use std::fmt::Write;
    let target = segments
        .iter()
        .map(|s| secs(s.range.span_nanos()).round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let fmp4 = segments.iter().any(|s| s.media_type.as_str() == MP4);
    let mut p = String::with_capacity(256 + segments.len() * 160);
    p.push_str("#EXTM3U\n");
    // EXT-X-MAP in a playlist without I-frames needs version 6.
    let _ = writeln!(p, "#EXT-X-VERSION:{}", if fmp4 { 6 } else { 3 });
    p.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
    let _ = writeln!(p, "#EXT-X-TARGETDURATION:{target}");
    p.push_str("#EXT-X-MEDIA-SEQUENCE:0\n");
    if segments.is_empty() {
        let _ = writeln!(p, "# no footage in {range}");
    }
    let mut prev: Option<&SegmentRecord> = None;
    for s in segments {
        let discontinuity = prev.is_some_and(|q| {
            (s.range.start().as_nanos() - q.range.end().as_nanos()).abs()
                > DISCONTINUITY_TOLERANCE_NANOS
                || q.media_type != s.media_type
                // Each MP4 segment ffmpeg cuts is a file of its own whose
                // timestamps restart at zero: a new timeline every time.
                || s.media_type.as_str() == MP4
        });
        if discontinuity {
            p.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if prev.is_none() || discontinuity {
            let _ = writeln!(p, "#EXT-X-PROGRAM-DATE-TIME:{}", s.range.start());
        }
        let id = s.segment_id;
        let uri = if s.media_type.as_str() == MP4 {
            // Each segment ffmpeg cuts carries its own moov: its own map.
            let _ = writeln!(p, "#EXT-X-MAP:URI=\"/playback/v1/segments/{id}/init.mp4\"");
            format!("/playback/v1/segments/{id}/media.mp4")
        } else {
            format!("/playback/v1/segments/{id}/media.ts")
        };
        let _ = writeln!(p, "#EXTINF:{:.3},", secs(s.range.span_nanos()));
        p.push_str(&uri);
        p.push('\n');
        prev = Some(s);
    }
    p.push_str("#EXT-X-ENDLIST\n");
    p
}

async fn playlist(
    State(node): State<Node>,
    Path((camera, stream)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    parts: Parts,
) -> Response {
    let caller = caller_of(&parts);
    let mut e = AuditEvent::new(&caller, "playback.playlist");
    e.cameras = vec![camera.chars().take(128).collect()];
    e.detail = format!(
        "stream {:?} {}",
        stream.chars().take(64).collect::<String>(),
        query
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(256)
            .collect::<String>()
    );
    let result = build_playlist(&node, &camera, &stream, query.as_deref()).await;
    let result = result.map(|(text, n)| {
        e.detail.push_str(&format!(": {n} segments"));
        (
            [
                (CONTENT_TYPE, "application/vnd.apple.mpegurl"),
                (CACHE_CONTROL, "no-store"),
            ],
            text,
        )
            .into_response()
    });
    audited(&node, e, result).await.into_response()
}

async fn build_playlist(
    node: &Node,
    camera: &str,
    stream: &str,
    query: Option<&str>,
) -> Result<(String, usize), HttpError> {
    let camera = CameraId::parse(camera)?;
    let stream = StreamName::parse(stream)?;
    let range = query_range(query)?;
    range.check_span(
        node.limits().max_export_span(),
        "limits.max_export_span_secs",
    )?;
    let page = node.limits().max_page_size as usize;
    let mut segments = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let p =
            node.catalog()
                .list_segments(&camera, Some(&stream), &range, page, token.as_deref())?;
        segments.extend(p.segments);
        match p.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    if let Some(bad) = segments.iter().find(|s| !playable(s.media_type.as_str())) {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!(
                "segment {} is {}: HLS plays {MPEG_TS} and fragmented {MP4} only (read it with custody get)",
                bad.segment_id, bad.media_type
            ),
        ));
    }
    segments.sort_by_key(|s| (s.range.start(), s.sequence));
    Ok((render_playlist(&segments, &range), segments.len()))
}

// ---------------------------------------------------------------- segments

/// A request's single byte range over `len` bytes: `None` without a Range
/// header (or with several ranges or another unit, which HTTP lets a server
/// ignore); 416 when it is not satisfiable; 400 when it is malformed.
fn byte_range(headers: &HeaderMap, len: u64) -> Result<Option<Range<u64>>, HttpError> {
    let Some(v) = headers.get(RANGE) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| HttpError::bad_request("Range header is not ASCII"))?
        .trim();
    let Some(spec) = v.strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let malformed = || {
        HttpError::bad_request(format!(
            "malformed Range {v:?}: expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX"
        ))
    };
    let (a, b) = spec.trim().split_once('-').ok_or_else(malformed)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| malformed());
    let unsatisfiable = || HttpError {
        status: StatusCode::RANGE_NOT_SATISFIABLE,
        message: format!("Range {v:?} is outside the {len} bytes of this resource"),
        size: Some(len),
    };
    let range = if a.trim().is_empty() {
        let suffix = num(b)?;
        if suffix == 0 || len == 0 {
            return Err(unsatisfiable());
        }
        len.saturating_sub(suffix)..len
    } else {
        let first = num(a)?;
        let last = if b.trim().is_empty() {
            None
        } else {
            Some(num(b)?)
        };
        if last.is_some_and(|l| l < first) {
            return Err(malformed());
        }
        if first >= len {
            return Err(unsatisfiable());
        }
        first..last.map_or(len, |l| l.saturating_add(1).min(len))
    };
    Ok(Some(range))
}

/// Which part of a stored segment a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Every byte.
    Whole,
    /// A fragmented MP4's `ftyp` + `moov`.
    Init,
    /// A fragmented MP4 from its first `moof`.
    Media,
}

async fn whole_segment(
    State(node): State<Node>,
    Path(segment): Path<String>,
    parts: Parts,
) -> Response {
    serve_segment(node, segment, Part::Whole, parts).await
}

async fn init_section(
    State(node): State<Node>,
    Path(segment): Path<String>,
    parts: Parts,
) -> Response {
    serve_segment(node, segment, Part::Init, parts).await
}

async fn media_section(
    State(node): State<Node>,
    Path(segment): Path<String>,
    parts: Parts,
) -> Response {
    serve_segment(node, segment, Part::Media, parts).await
}

async fn serve_segment(node: Node, segment: String, part: Part, parts: Parts) -> Response {
    let caller = caller_of(&parts);
    let mut e = AuditEvent::new(&caller, "playback.segment");
    e.segment = segment.chars().take(64).collect();
    if let Ok(Some(rec)) = SegmentId::parse(&segment)
        .map_err(ServerError::from)
        .and_then(|id| Ok(node.catalog().get(&id)?))
    {
        e.cameras = vec![rec.camera.to_string()];
    }
    let result = segment_response(&node, &segment, part, &parts.headers).await;
    e.detail = match &result {
        Ok((_, detail)) => detail.clone(),
        Err(_) => format!("{part:?}"),
    };
    let result = result.map(|(r, _)| r);
    audited(&node, e, result).await.into_response()
}

/// The response for one segment part, and the audit detail (bytes served).
async fn segment_response(
    node: &Node,
    segment: &str,
    part: Part,
    headers: &HeaderMap,
) -> Result<(Response, String), HttpError> {
    let id = SegmentId::parse(segment)?;
    let seg = node.open_segment(&id).await?;
    let len = seg.record.size;
    let media_type = seg.record.media_type.as_str().to_string();
    if part != Part::Whole && media_type != MP4 {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("segment {id} is {media_type}: only {MP4} segments have init and media parts"),
        ));
    }
    // The part as a window of the plaintext.
    let window = match part {
        Part::Whole => 0..len,
        Part::Init | Part::Media => {
            let moof = first_moof(node, &seg).await?;
            if part == Part::Init {
                0..moof
            } else {
                moof..len
            }
        }
    };
    let part_len = window.end - window.start;
    let requested = byte_range(headers, part_len)?;
    let (status, within) = match &requested {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..part_len),
    };
    let plain = window.start + within.start..window.start + within.end;
    let detail = format!(
        "{part:?} bytes {}-{} of {len}",
        plain.start,
        plain.end.saturating_sub(1)
    );
    let body = if plain.is_empty() {
        Body::empty()
    } else {
        Body::from_stream(node.read_plaintext(seg, plain.clone()).map(move |piece| {
            piece.map_err(|e| std::io::Error::other(format!("segment {id}: {e}")))
        }))
    };
    let content_type = match part {
        Part::Whole => media_type,
        Part::Init | Part::Media => MP4.to_string(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    let value = |s: String| {
        HeaderValue::from_str(&s).map_err(|e| HttpError::from(ServerError::Internal(e.to_string())))
    };
    h.insert(CONTENT_TYPE, value(content_type)?);
    h.insert(
        CONTENT_LENGTH,
        value((within.end - within.start).to_string())?,
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    if requested.is_some() {
        h.insert(
            CONTENT_RANGE,
            value(format!(
                "bytes {}-{}/{part_len}",
                within.start,
                within.end.saturating_sub(1)
            ))?,
        );
    }
    Ok((r, detail))
}

/// Reads `range` of a segment's plaintext into memory (a few bytes: box headers).
async fn read_small(
    node: &Node,
    seg: &OpenSegment,
    range: Range<u64>,
) -> Result<Vec<u8>, HttpError> {
    let again = OpenSegment {
        record: seg.record.clone(),
        opened: seg.opened.clone(),
        object_len: seg.object_len,
    };
    let mut out = Vec::new();
    let mut pieces = node.read_plaintext(again, range);
    while let Some(p) = pieces.next().await {
        out.extend_from_slice(&p?);
    }
    Ok(out)
}

/// The plaintext offset of a fragmented MP4's first `moof` box: what comes
/// before it (`ftyp`, `moov`, ...) is the initialization section.
async fn first_moof(node: &Node, seg: &OpenSegment) -> Result<u64, HttpError> {
    let len = seg.record.size;
    let id = seg.record.segment_id;
    let not_fragmented = |why: String| {
        HttpError::new(
            StatusCode::CONFLICT,
            format!("segment {id} is not a fragmented MP4 ({why}); HLS cannot play it"),
        )
    };
    let mut at = 0u64;
    for _ in 0..MAX_MP4_BOXES {
        if at + 8 > len {
            break;
        }
        let head = read_small(node, seg, at..(at + 16).min(len)).await?;
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let kind = &head[4..8];
        if kind == b"moof" {
            return Ok(at);
        }
        if kind == b"mdat" {
            return Err(not_fragmented(format!("mdat at byte {at} before any moof")));
        }
        let size = match size32 {
            0 => {
                return Err(not_fragmented(format!(
                    "a box at byte {at} runs to the end"
                )))
            }
            1 if head.len() >= 16 => u64::from_be_bytes([
                head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
            ]),
            n => n,
        };
        if size < 8 {
            return Err(not_fragmented(format!(
                "a box of {size} bytes at byte {at}"
            )));
        }
        at = at.saturating_add(size);
    }
    Err(not_fragmented("no moof box".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(range: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_str(range).unwrap());
        h
    }

    #[test]
    fn ranges_are_parsed_clamped_and_refused_precisely() {
        let r = |s: &str| byte_range(&headers(s), 1000);
        assert_eq!(byte_range(&HeaderMap::new(), 1000).unwrap(), None);
        assert_eq!(r("bytes=0-99").unwrap(), Some(0..100));
        assert_eq!(r("bytes=990-").unwrap(), Some(990..1000));
        assert_eq!(r("bytes=-10").unwrap(), Some(990..1000));
        assert_eq!(r("bytes=-5000").unwrap(), Some(0..1000));
        assert_eq!(r("bytes=900-5000").unwrap(), Some(900..1000));
        assert_eq!(r("bytes=0-1,5-6").unwrap(), None);
        assert_eq!(r("items=0-1").unwrap(), None);
        let e = r("bytes=1000-").unwrap_err();
        assert_eq!(e.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(e.size, Some(1000));
        assert_eq!(
            r("bytes=-0").unwrap_err().status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(r("bytes=5-2").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(r("bytes=x-2").unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn query_needs_both_ends_in_order() {
        let ok = query_range(Some(
            "from=2026-01-01T10:00:00Z&to=2026-01-01T10%3A00%3A10%2B00%3A00",
        ))
        .unwrap();
        assert_eq!(ok.span_nanos(), 10_000_000_000);
        for (q, says) in [
            (None, "needs both"),
            (Some("from=2026-01-01T10:00:00Z"), "needs both"),
            (
                Some("from=2026-01-01T10:00:10Z&to=2026-01-01T10:00:00Z"),
                "",
            ),
            (Some("from=yesterday&to=2026-01-01T10:00:00Z"), "RFC 3339"),
            (
                Some("from=2026-01-01T10:00:00Z&from=2026-01-01T10:00:00Z"),
                "twice",
            ),
            (
                Some("since=2026-01-01T10:00:00Z"),
                "unknown query parameter",
            ),
        ] {
            let e = query_range(q).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q:?}");
            assert!(e.message.contains(says), "{q:?}: {}", e.message);
        }
    }

    fn record(start: i64, end: i64, media_type: &str) -> SegmentRecord {
        let camera = CameraId::parse("cam-1").unwrap();
        let stream = StreamName::main();
        let t = |s| Timestamp::from_secs(1_800_000_000 + s);
        SegmentRecord {
            segment_id: SegmentId::derive(&camera, &stream, t(start), 0),
            camera,
            stream,
            range: TimeRange::new(t(start), t(end)).unwrap(),
            sequence: 0,
            media_type: custody_core::MediaType::parse(media_type).unwrap(),
            size: 10,
            stored_size: 100,
            sha256: [0; 32],
            key_id: "k1".to_string(),
            ingested_at: t(end),
            object_key: String::new(),
            expires_at: None,
        }
    }

    #[test]
    fn playlist_has_real_durations_and_discontinuities_at_gaps() {
        let segs = [
            record(0, 6, MPEG_TS),
            record(6, 12, MPEG_TS),
            record(30, 37, MPEG_TS),
        ];
        let range = segs[0].range;
        let p = render_playlist(&segs, &range);
        assert!(p.starts_with("#EXTM3U\n"));
        assert!(p.contains("#EXT-X-TARGETDURATION:7\n"));
        assert!(p.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
        assert!(p.ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(p.matches("#EXTINF:6.000,").count(), 2);
        assert_eq!(p.matches("#EXTINF:7.000,").count(), 1);
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY\n").count(), 1);
        // The discontinuity comes right before the segment after the gap.
        let gap = p.find("#EXT-X-DISCONTINUITY").unwrap();
        assert!(p[gap..].contains(&segs[2].segment_id.to_string()));
        assert!(!p[gap..].contains(&segs[1].segment_id.to_string()));
        assert!(!p.contains("EXT-X-MAP"));

        let mp4 = [record(0, 2, MP4), record(2, 4, MP4)];
        let p = render_playlist(&mp4, &range);
        assert_eq!(p.matches("#EXT-X-MAP:URI=").count(), 2);
        assert!(p.contains("#EXT-X-VERSION:6"));
        assert!(p.contains(&format!(
            "/playback/v1/segments/{}/media.mp4",
            mp4[1].segment_id
        )));
        assert_eq!(p.matches("#EXT-X-DISCONTINUITY").count(), 1);
    }
}
