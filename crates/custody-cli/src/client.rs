//! Connecting to a server and uploading segments.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use custody_core::{TimeRange, Timestamp};
use custody_proto::v1 as pb;
use custody_proto::v1::archive_service_client::ArchiveServiceClient;
use custody_proto::v1::ingest_service_client::IngestServiceClient;
use custody_proto::v1::put_segment_request::Part;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// Bytes per upload message to start with: a quarter of the server's default
/// `limits.max_message_bytes` (4 MiB), so the protobuf framing always fits.
pub const UPLOAD_CHUNK: usize = 1024 * 1024;

/// The smallest upload chunk the client steps down to when the server
/// refuses a message as too large.
pub const MIN_UPLOAD_CHUNK: usize = 64 * 1024;

/// A connection to a Custody server, or to any of several nodes of a
/// cluster: calls go to one node at a time, and [`Client::fail_over`] moves
/// them to the next one when it stops answering.
#[derive(Clone)]
pub struct Client {
    /// One lazily connected channel per node address, in the order given.
    nodes: Arc<Vec<(String, Channel)>>,
    /// Index into `nodes` of the node calls go to.
    current: Arc<AtomicUsize>,
    /// Bytes per upload message, lowered for good (for this client and its
    /// clones) once the server refuses a message as too large.
    chunk: Arc<AtomicUsize>,
}

/// What describes one segment to upload.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Camera id.
    pub camera: String,
    /// Stream name.
    pub stream: String,
    /// Time range.
    pub range: TimeRange,
    /// Media type.
    pub media_type: String,
    /// Sequence number.
    pub sequence: Option<u64>,
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused or failed the call.
    #[error("{}", describe(.0))]
    Status(#[from] Status),
    /// Local I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Bad address.
    #[error("invalid server address {0}")]
    Address(String),
    /// TLS settings are incomplete or unusable.
    #[error("tls: {0}")]
    Tls(String),
}

impl ClientError {
    /// Whether retrying the same request later may succeed: the server is
    /// down, busy or restarting, or the connection broke (UNAVAILABLE,
    /// ABORTED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED other than a message
    /// size refusal, and the UNKNOWN/CANCELLED that transport failures
    /// surface as). A refusal of the request itself
    /// (INVALID_ARGUMENT, ALREADY_EXISTS, PERMISSION_DENIED,
    /// FAILED_PRECONDITION, ...) is permanent: sending it again gets the same answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status(s) => {
                !is_message_too_large(s)
                    && matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::DeadlineExceeded
                            | Code::Aborted
                            | Code::Cancelled
                            | Code::ResourceExhausted
                    )
            }
            ClientError::Io { .. } | ClientError::Address(_) | ClientError::Tls(_) => false,
        }
    }
}

/// Whether the server refused a message as larger than it accepts
/// (`limits.max_message_bytes`, or gRPC's own decoding limit).
pub fn is_message_too_large(status: &Status) -> bool {
    if !matches!(
        status.code(),
        Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
    ) {
        return false;
    }
    let m = status.message().to_ascii_lowercase();
    m.contains("max_message_bytes")
        || m.contains("message length too large")
        || m.contains("message too large")
        || m.contains("message size")
}

/// The limit a message-size refusal names: `limits.max_message_bytes = N`
/// (custodyd) or `the limit is: N bytes` (gRPC's decoder).
fn limit_named_in(message: &str) -> Option<usize> {
    ["max_message_bytes = ", "the limit is: "]
        .iter()
        .find_map(|marker| {
            let rest = &message[message.find(marker)? + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
}

/// The chunk size to retry with after `current` was refused as too large:
/// just under the limit the refusal names (leaving room for the message's
/// framing), else a quarter of `current`; never below [`MIN_UPLOAD_CHUNK`].
/// `None` when nothing smaller is left to try.
pub fn smaller_chunk(current: usize, refusal: &Status) -> Option<usize> {
    const FRAMING: usize = 1024;
    const ROUND: usize = 16 * 1024;
    let next = limit_named_in(refusal.message())
        .map(|limit| limit.saturating_sub(FRAMING) / ROUND * ROUND)
        .filter(|c| *c < current)
        .unwrap_or(current / 4)
        .max(MIN_UPLOAD_CHUNK);
    (next < current).then_some(next)
}

/// A status as people read it: code, message and, for transport failures,
/// the underlying cause (e.g. `Network is unreachable`).
pub fn describe(status: &Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The media type for a file name, by extension.
pub fn media_type_for(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("ts") => "video/mp2t",
        Some("mp4") | Some("m4s") => "video/mp4",
        Some("mkv") => "video/x-matroska",
        _ => "application/octet-stream",
    }
}

/// Wire timestamp of an instant.
pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

/// A client's mutual-TLS material: the CA that signed the server's
/// certificate, and the client's own certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// CA bundle to verify the server with.
    pub ca: std::path::PathBuf,
    /// Client certificate.
    pub cert: std::path::PathBuf,
    /// Client private key.
    pub key: std::path::PathBuf,
    /// Name to verify the server certificate against, when not the URL's host.
    pub server_name: Option<String>,
}

impl Client {
    /// A plaintext client for `addr` (`http://host:port`); see [`Client::connect`].
    pub fn new(addr: &str) -> Result<Client, ClientError> {
        Client::connect(addr, None)
    }

    /// A client for `addrs`: one address, or several separated by commas
    /// (the nodes of a cluster, tried in that order). Each is `http://`
    /// plaintext (loopback servers) or `https://` with mutual TLS from
    /// `tls`. Connects lazily, so a server that is down is reported per call
    /// (and retried, or failed over, by callers that want to).
    pub fn connect(addrs: &str, tls: Option<&ClientTls>) -> Result<Client, ClientError> {
        let nodes = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| Ok((a.to_string(), Self::channel_to(a, tls)?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        if nodes.is_empty() {
            return Err(ClientError::Address(addrs.to_string()));
        }
        Ok(Client {
            nodes: Arc::new(nodes),
            current: Arc::new(AtomicUsize::new(0)),
            chunk: Arc::new(AtomicUsize::new(UPLOAD_CHUNK)),
        })
    }

    /// The address calls go to now.
    pub fn address(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].0
    }

    /// Moves calls to the next node, when several were given; returns its
    /// address, or `None` with a single node.
    pub fn fail_over(&self) -> Option<&str> {
        if self.nodes.len() < 2 {
            return None;
        }
        let next = (self.current.fetch_add(1, Ordering::Relaxed) + 1) % self.nodes.len();
        Some(&self.nodes[next].0)
    }

    fn channel_to(addr: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
        let mut endpoint = Endpoint::from_shared(addr.to_string())
            .map_err(|_| ClientError::Address(addr.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024);
        let https = addr.starts_with("https://");
        match (https, tls) {
            (true, Some(t)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|source| ClientError::Io {
                        path: p.display().to_string(),
                        source,
                    })
                };
                let mut cfg = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&t.ca)?))
                    .identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
                if let Some(n) = &t.server_name {
                    cfg = cfg.domain_name(n.clone());
                }
                endpoint = endpoint
                    .tls_config(cfg)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
            }
            (true, None) => {
                return Err(ClientError::Tls(format!(
                    "{addr} needs a client certificate: pass --ca, --cert and --key (or CUSTODY_CA, CUSTODY_CERT, CUSTODY_KEY)"
                )))
            }
            (false, Some(_)) => {
                return Err(ClientError::Tls(format!(
                    "certificates given but {addr} is not an https:// address"
                )))
            }
            (false, None) => {}
        }
        Ok(endpoint.connect_lazy())
    }

    /// The channel to the current node, for any service client.
    pub fn channel(&self) -> Channel {
        self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()]
            .1
            .clone()
    }

    /// The archive API.
    pub fn archive(&self) -> ArchiveServiceClient<Channel> {
        ArchiveServiceClient::new(self.channel()).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The ingest API.
    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel())
    }

    /// Bytes per upload message this client currently sends.
    pub fn upload_chunk(&self) -> usize {
        self.chunk.load(Ordering::Relaxed)
    }

    /// Runs `attempt` with the current chunk size; when the server refuses a
    /// message as too large, lowers the chunk size (for later uploads too)
    /// and tries again, down to [`MIN_UPLOAD_CHUNK`].
    async fn with_fitting_chunks<F, Fut>(
        &self,
        mut attempt: F,
    ) -> Result<pb::PutSegmentResponse, ClientError>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<pb::PutSegmentResponse, ClientError>>,
    {
        loop {
            let chunk = self.upload_chunk();
            match attempt(chunk).await {
                Err(ClientError::Status(s)) if is_message_too_large(&s) => {
                    let Some(next) = smaller_chunk(chunk, &s) else {
                        return Err(ClientError::Status(s));
                    };
                    tracing::warn!(
                        from = chunk,
                        to = next,
                        refusal = %describe(&s),
                        "the server refused an upload message as too large; retrying with smaller chunks"
                    );
                    // Another upload may have lowered it further meanwhile.
                    self.chunk.fetch_min(next, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    /// Uploads the bytes in `data`.
    pub async fn put_bytes(
        &self,
        u: &Upload,
        data: Vec<u8>,
    ) -> Result<pb::PutSegmentResponse, ClientError> {
        let data = bytes::Bytes::from(data);
        self.with_fitting_chunks(|chunk| {
            let msgs =
                std::iter::once(header_msg(u, Some(data.len() as u64))).chain(HashedPieces {
                    data: data.clone(),
                    at: 0,
                    chunk,
                    hasher: Some(Sha256::new()),
                });
            let mut ingest = self.ingest();
            async move {
                Ok(ingest
                    .put_segment(futures::stream::iter(msgs))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Streams a file to the server without holding it in memory.
    pub async fn put_file(
        &self,
        u: &Upload,
        path: &Path,
    ) -> Result<pb::PutSegmentResponse, ClientError> {
        self.with_fitting_chunks(|chunk| self.put_file_chunked(u, path, chunk))
            .await
    }

    async fn put_file_chunked(
        &self,
        u: &Upload,
        path: &Path,
        chunk: usize,
    ) -> Result<pb::PutSegmentResponse, ClientError> {
        let io = |source| ClientError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let header = header_msg(u, Some(size));
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::PutSegmentRequest>(4);
        let reader = tokio::spawn(async move {
            let mut h = Sha256::new();
            if tx.send(header).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; chunk];
                let n = read_full(&mut file, &mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                h.update(&buf);
                if tx
                    .send(pb::PutSegmentRequest {
                        part: Some(Part::Chunk(buf.into())),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            let _ = tx.send(finish_msg(h.finalize().into())).await;
            Ok::<(), std::io::Error>(())
        });
        let result = self
            .ingest()
            .put_segment(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io(e)),
            Err(e) => return Err(io(std::io::Error::other(e))),
        }
        Ok(result?.into_inner())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn header_msg(u: &Upload, size: Option<u64>) -> pb::PutSegmentRequest {
    pb::PutSegmentRequest {
        part: Some(Part::Header(pb::SegmentHeader {
            camera_id: u.camera.clone(),
            stream: u.stream.clone(),
            start: Some(ts(u.range.start())),
            end: Some(ts(u.range.end())),
            media_type: u.media_type.clone(),
            sequence: u.sequence,
            sha256: Vec::new(),
            size_bytes: size,
        })),
    }
}

/// The chunk messages of an upload held in memory, then its finish
/// message. Pieces are slices of one buffer, not copies, and each is hashed
/// as it is sent: the hash does not delay the upload's first byte, and the
/// client hashes while the server seals what it already sent.
struct HashedPieces {
    data: bytes::Bytes,
    at: usize,
    chunk: usize,
    /// `None` once the finish message was yielded.
    hasher: Option<Sha256>,
}

impl Iterator for HashedPieces {
    type Item = pb::PutSegmentRequest;

    fn next(&mut self) -> Option<pb::PutSegmentRequest> {
        if self.at < self.data.len() {
            let end = (self.at + self.chunk.max(1)).min(self.data.len());
            let piece = self.data.slice(self.at..end);
            self.at = end;
            if let Some(h) = &mut self.hasher {
                h.update(&piece);
            }
            return Some(pb::PutSegmentRequest {
                part: Some(Part::Chunk(piece)),
            });
        }
        self.hasher.take().map(|h| finish_msg(h.finalize().into()))
    }
}

fn finish_msg(sha: [u8; 32]) -> pb::PutSegmentRequest {
    pb::PutSegmentRequest {
        part: Some(Part::Finish(pb::SegmentFinish {
            sha256: sha.to_vec(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces put the data back together, in order, each at most one
    /// chunk, and the finish message (last, once) carries the whole's hash.
    #[test]
    fn hashed_pieces_cover_the_data_then_finish_with_its_hash() {
        for (len, chunk) in [(0usize, 4usize), (1, 4), (10, 4), (12, 4), (12, 100)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let msgs: Vec<_> = HashedPieces {
                data: bytes::Bytes::from(data.clone()),
                at: 0,
                chunk,
                hasher: Some(Sha256::new()),
            }
            .collect();
            let (last, pieces) = msgs.split_last().expect("a finish message");
            let mut joined = Vec::new();
            for m in pieces {
                let Some(Part::Chunk(c)) = &m.part else {
                    panic!("a chunk before the finish: {m:?}");
                };
                assert!(!c.is_empty() && c.len() <= chunk);
                joined.extend_from_slice(c);
            }
            assert_eq!(joined, data);
            let Some(Part::Finish(f)) = &last.part else {
                panic!("the last message finishes: {last:?}");
            };
            assert_eq!(f.sha256, Sha256::digest(&data).to_vec());
        }
    }

    #[test]
    fn size_refusals_are_recognised_and_permanent() {
        let custodyd = Status::invalid_argument(
            "a message of the upload is larger than limits.max_message_bytes = 262144 (Error, decoded message length too large: found 1048581 bytes, the limit is: 262144 bytes); send smaller chunks; nothing stored",
        );
        assert!(is_message_too_large(&custodyd));
        assert!(!ClientError::Status(custodyd).is_retryable());
        let grpc = Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        assert!(is_message_too_large(&grpc));
        let busy = Status::resource_exhausted("too many uploads in progress");
        assert!(!is_message_too_large(&busy));
        assert!(ClientError::Status(busy).is_retryable());
        assert!(!is_message_too_large(&Status::invalid_argument(
            "segment of 0 bytes is below limits.min_segment_bytes = 1"
        )));
        for code in [
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::FailedPrecondition,
        ] {
            assert!(!ClientError::Status(Status::new(code, "no")).is_retryable());
        }
        for code in [Code::Unavailable, Code::Aborted, Code::DeadlineExceeded] {
            assert!(ClientError::Status(Status::new(code, "later")).is_retryable());
        }
    }

    #[test]
    fn chunks_shrink_to_fit_the_named_limit_else_by_quarters_to_a_floor() {
        let named = |limit: usize| {
            Status::invalid_argument(format!(
                "a message of the upload is larger than limits.max_message_bytes = {limit} (...)"
            ))
        };
        // Just under the named limit, leaving room for the framing.
        let next = smaller_chunk(UPLOAD_CHUNK, &named(262_144)).unwrap();
        assert!((MIN_UPLOAD_CHUNK..262_144 - 16).contains(&next), "{next}");
        // gRPC's own wording names the limit too.
        let grpc = Status::out_of_range(
            "Error, decoded message length too large: found 1048581 bytes, the limit is: 524288 bytes",
        );
        let next = smaller_chunk(UPLOAD_CHUNK, &grpc).unwrap();
        assert!((262_145..524_288).contains(&next), "{next}");
        // No limit named: a quarter at a time, then the floor, then give up.
        let vague = Status::resource_exhausted("message size over the limit");
        assert_eq!(smaller_chunk(UPLOAD_CHUNK, &vague), Some(256 * 1024));
        assert_eq!(smaller_chunk(256 * 1024, &vague), Some(MIN_UPLOAD_CHUNK));
        assert_eq!(smaller_chunk(MIN_UPLOAD_CHUNK, &vague), None);
        // A limit below the floor still stops at the floor.
        assert_eq!(
            smaller_chunk(UPLOAD_CHUNK, &named(10_000)),
            Some(MIN_UPLOAD_CHUNK)
        );
        assert_eq!(smaller_chunk(MIN_UPLOAD_CHUNK, &named(10_000)), None);
    }
}
