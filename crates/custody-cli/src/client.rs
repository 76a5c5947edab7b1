//! Connecting to a server and uploading segments.

use std::path::Path;
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

/// Bytes per upload message.
pub const UPLOAD_CHUNK: usize = 1024 * 1024;

/// A connection to a Custody server.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
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
    /// Whether retrying later may succeed (server down or busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status(s) => matches!(
                s.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::ResourceExhausted
            ),
            ClientError::Io { .. } | ClientError::Address(_) | ClientError::Tls(_) => false,
        }
    }
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

    /// A client for `addr`: `http://` plaintext (loopback servers), or
    /// `https://` with mutual TLS from `tls`. Connects lazily, so a server
    /// that is down is reported per call (and retried by callers that want to).
    pub fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<Client, ClientError> {
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
        Ok(Client {
            channel: endpoint.connect_lazy(),
        })
    }

    /// The underlying channel, for any service client.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The archive API.
    pub fn archive(&self) -> ArchiveServiceClient<Channel> {
        ArchiveServiceClient::new(self.channel.clone()).max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The ingest API.
    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
    }

    /// Uploads the bytes in `data`.
    pub async fn put_bytes(
        &self,
        u: &Upload,
        data: Vec<u8>,
    ) -> Result<pb::PutSegmentResponse, ClientError> {
        let sha: [u8; 32] = Sha256::digest(&data).into();
        let mut msgs = vec![header_msg(u, Some(data.len() as u64))];
        for c in data.chunks(UPLOAD_CHUNK) {
            msgs.push(pb::PutSegmentRequest {
                part: Some(Part::Chunk(c.to_vec())),
            });
        }
        msgs.push(finish_msg(sha));
        let resp = self
            .ingest()
            .put_segment(futures::stream::iter(msgs))
            .await?;
        Ok(resp.into_inner())
    }

    /// Streams a file to the server without holding it in memory.
    pub async fn put_file(
        &self,
        u: &Upload,
        path: &Path,
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
                let mut buf = vec![0u8; UPLOAD_CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                h.update(&buf);
                if tx
                    .send(pb::PutSegmentRequest {
                        part: Some(Part::Chunk(buf)),
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

fn finish_msg(sha: [u8; 32]) -> pb::PutSegmentRequest {
    pb::PutSegmentRequest {
        part: Some(Part::Finish(pb::SegmentFinish {
            sha256: sha.to_vec(),
        })),
    }
}
