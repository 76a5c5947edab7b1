//! Evidence bundles: the decrypted footage of a hold (or a camera × range)
//! with a manifest signed by the node's Ed25519 key, in open formats only, so
//! a court's expert can check it offline with `sha256sum` and `openssl`.
//!
//! A bundle is a directory:
//! ```text
//! segments/<camera>/<stream>_<start>_<segment id>.ts   decrypted segments
//! SHA256SUMS            `sha256sum -c` list of the segments, README.txt, signing.pub.pem
//! README.txt            how to check the bundle
//! signing.pub.pem       the node's public key (also in the store: signing/<key id>.pub)
//! manifest.json         camera, range, hold and release, SHA-256 of every file, audit records
//! manifest.json.sig     raw 64-byte Ed25519 signature of manifest.json
//! ```
//! The server produces every file (it holds the key); clients write them.

use bytes::Bytes;
use custody_catalog::SegmentRecord;
use custody_core::{CameraId, HoldCameras, HoldId, TimeRange, Timestamp};
use custody_crypto::SigningKey;
use custody_store::{ObjectPath, StoreError};
use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::{HoldState, Node, ServerError};

/// Store prefix of the published public signing keys.
const SIGNING_PREFIX: &str = "signing";
/// The manifest's format name.
const FORMAT: &str = "custody-evidence-bundle/1";

/// What footage an evidence bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceScope {
    /// Every segment a hold covers.
    Hold(HoldId),
    /// One camera's segments overlapping a range.
    Range {
        /// The camera.
        camera: CameraId,
        /// The time range.
        range: TimeRange,
    },
}

/// One piece of a bundle stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundlePart {
    /// Starts a file: its relative path and size.
    File {
        /// Relative path, `/`-separated.
        path: String,
        /// Size in bytes.
        size: u64,
        /// Bytes of all the bundle's segment files (on segment files; 0 on the others).
        total: u64,
    },
    /// The next bytes of the current file.
    Data(Bytes),
}

/// The store key of a published public signing key.
pub fn signing_key_path(key_id: &str) -> ObjectPath {
    ObjectPath::from_iter([SIGNING_PREFIX, &format!("{key_id}.pub")])
}

fn compact(t: Timestamp) -> String {
    t.to_datetime().format("%Y%m%dT%H%M%S%.fZ").to_string()
}

fn extension(media_type: &str) -> &'static str {
    match media_type {
        "video/mp2t" => "ts",
        "video/mp4" => "mp4",
        "video/x-matroska" => "mkv",
        _ => "bin",
    }
}

fn segment_path(r: &SegmentRecord) -> String {
    format!(
        "segments/{}/{}_{}_{}.{}",
        r.camera,
        r.stream,
        compact(r.range.start()),
        r.segment_id,
        extension(r.media_type.as_str())
    )
}

fn hold_json(s: &HoldState) -> (Value, Value) {
    let h = &s.hold;
    let cameras = match &h.cameras {
        HoldCameras::All => json!("all"),
        HoldCameras::List(l) => json!(l.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    let hold = json!({
        "hold_id": h.id.to_string(),
        "cameras": cameras,
        "start": h.start.to_string(),
        "end": h.end.map(|e| e.to_string()),
        "case_id": h.case_id,
        "reason": h.reason,
        "placed_by": h.placed_by,
        "placed_at": h.placed_at.to_string(),
    });
    let release = s.release.as_ref().map_or(Value::Null, |r| {
        json!({
            "hold_id": r.hold_id.to_string(),
            "released_by": r.released_by,
            "reason": r.reason,
            "released_at": r.released_at.to_string(),
        })
    });
    (hold, release)
}

fn readme(key_id: &str, scope: &str) -> String {
    format!(
        "Custody evidence bundle ({FORMAT})
{scope}

Files
  segments/...        the footage, decrypted, exactly as the cameras delivered it
  SHA256SUMS          SHA-256 of every segment, README.txt and signing.pub.pem
  manifest.json       what the bundle holds: cameras, time range, the hold and its
                      release, the SHA-256 and size of every file, audit records
  manifest.json.sig   Ed25519 signature (64 raw bytes) of manifest.json
  signing.pub.pem     the archive node's public key, id {key_id}; the archive
                      publishes the same key in its store as signing/{key_id}.pub

How to check it with standard tools (in this directory)
  1. The signature of the manifest (OpenSSL 3):
       openssl pkeyutl -verify -pubin -inkey signing.pub.pem -rawin \\
         -in manifest.json -sigfile manifest.json.sig
     prints \"Signature Verified Successfully\". Compare signing.pub.pem with the
     key the archive operator publishes (signing/{key_id}.pub in the store).
  2. The files:
       sha256sum -c SHA256SUMS
     prints OK for every file.
  3. SHA256SUMS itself is listed with its SHA-256 in manifest.json (files[]),
     so step 1 covers it: compare the output of `sha256sum SHA256SUMS` with the
     manifest entry for SHA256SUMS.
  4. No file may be present that manifest.json does not list (other than
     manifest.json and manifest.json.sig).

`custody evidence verify DIR` does all of this offline and names any file
added, removed or changed. To archive the bundle as one file: tar cf bundle.tar DIR
"
    )
}

impl Node {
    /// The audit records about `cameras` for an evidence manifest: every
    /// authentic record that names one of them (or every camera), oldest
    /// first — who ingested, listed, read, exported, held and released that
    /// footage — each with the audit object it is sealed in.
    pub async fn audit_records_for(
        &self,
        cameras: &[CameraId],
        _range: TimeRange,
    ) -> Result<Vec<Value>, ServerError> {
        self.audit().flush().await?;
        let records = crate::audit::read_records(&self.store, &self.keyring, 1).await?;
        Ok(records
            .into_iter()
            .filter(|(r, _)| cameras.iter().any(|c| r.concerns_camera(c.as_str())))
            .map(|(r, object)| {
                let mut v = serde_json::to_value(&r).unwrap_or(Value::Null);
                v["object"] = Value::String(object);
                v
            })
            .collect())
    }

    /// The node's evidence-signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Publishes the public half of the signing key in the store
    /// (create-only: a key already published is left as it is).
    pub async fn publish_signing_key(&self) -> Result<(), ServerError> {
        let path = signing_key_path(&self.signing.key_id());
        match self
            .store
            .put_create_only(&path, Bytes::from(self.signing.public_pem()))
            .await
        {
            Ok(()) => {
                info!(key = %path, "published the evidence signing key");
                Ok(())
            }
            Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The segments of a scope, in camera and time order, with the hold.
    async fn evidence_segments(
        &self,
        scope: &EvidenceScope,
    ) -> Result<
        (
            Vec<SegmentRecord>,
            Option<HoldState>,
            Vec<CameraId>,
            TimeRange,
        ),
        ServerError,
    > {
        match scope {
            EvidenceScope::Hold(id) => {
                self.sync_retention_view().await?;
                let state = self.hold(id).await?;
                let h = &state.hold;
                let cameras = self.hold_cameras(h)?;
                let mut segs = Vec::new();
                for c in &cameras {
                    segs.extend(
                        self.catalog
                            .camera_segments(c)?
                            .into_iter()
                            .filter(|r| h.covers(&r.camera, &r.range)),
                    );
                }
                let end = h
                    .end
                    .or_else(|| segs.iter().map(|r| r.range.end()).max())
                    .unwrap_or_else(|| self.clock.now())
                    .max(h.start.saturating_add_nanos(1));
                let range = TimeRange::new(h.start, end)?;
                Ok((segs, Some(state), cameras, range))
            }
            EvidenceScope::Range { camera, range } => {
                range.check_span(self.limits.max_export_span(), "max_export_span_secs")?;
                let segs = self
                    .catalog
                    .camera_segments(camera)?
                    .into_iter()
                    .filter(|r| r.range.overlaps(range))
                    .collect();
                Ok((segs, None, vec![camera.clone()], *range))
            }
        }
    }

    /// Streams an evidence bundle. Every segment's header is authenticated
    /// before the first byte goes out; every segment's bytes are checked
    /// against its footer digest as they stream (a failure ends the stream
    /// with DATA_LOSS). Fails with NOT_FOUND when the scope holds no footage.
    pub async fn export_evidence(
        &self,
        scope: EvidenceScope,
        principal: &str,
    ) -> Result<BoxStream<'static, Result<BundlePart, ServerError>>, ServerError> {
        let (records, hold, cameras, range) = self.evidence_segments(&scope).await?;
        if records.is_empty() {
            return Err(ServerError::NotFound(format!(
                "no footage to export for {}",
                match &scope {
                    EvidenceScope::Hold(id) => format!("hold {id}"),
                    EvidenceScope::Range { camera, range } => format!("camera {camera} in {range}"),
                }
            )));
        }
        if let Err(e) = self.publish_signing_key().await {
            warn!(error = %e, "could not publish the evidence signing key");
        }
        let mut opened = Vec::with_capacity(records.len());
        for r in &records {
            opened.push(self.open_segment(&r.segment_id).await?);
        }
        let audit = self.audit_records_for(&cameras, range).await?;
        let node = self.clone();
        let principal = if principal.trim().is_empty() {
            "unauthenticated@loopback".to_string()
        } else {
            principal.to_string()
        };
        let total: u64 = opened.iter().map(|s| s.record.size).sum();
        let stream = async_stream::try_stream! {
            let mut files = Vec::new();
            let mut sums = String::new();
            for seg in opened {
                let rec = seg.record.clone();
                let path = segment_path(&rec);
                yield BundlePart::File { path: path.clone(), size: rec.size, total };
                let mut h = Sha256::new();
                let len = seg.opened.plaintext_len();
                let mut pieces = node.read_plaintext(seg, 0..len);
                while let Some(piece) = pieces.next().await {
                    let piece = piece?;
                    h.update(&piece);
                    yield BundlePart::Data(piece);
                }
                let sha = hex::encode(h.finalize());
                sums.push_str(&format!("{sha}  {path}\n"));
                files.push(json!({
                    "path": path,
                    "kind": "segment",
                    "size": rec.size,
                    "sha256": sha,
                    "segment_id": rec.segment_id.to_string(),
                    "camera": rec.camera.to_string(),
                    "stream": rec.stream.to_string(),
                    "start": rec.range.start().to_string(),
                    "end": rec.range.end().to_string(),
                    "sequence": rec.sequence,
                    "media_type": rec.media_type.as_str(),
                    "ingested_at": rec.ingested_at.to_string(),
                }));
            }
            let key = &node.signing;
            let key_id = key.key_id();
            let scope_text = match &hold {
                Some(h) => format!("Hold {} (case {}), cameras {}, {range}", h.hold.id, h.hold.case_id,
                    cameras.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
                None => format!("Camera {}, {range}", cameras[0]),
            };
            let extra = [
                ("README.txt", "readme", readme(&key_id, &scope_text).into_bytes()),
                ("signing.pub.pem", "public_key", key.public_pem().into_bytes()),
            ];
            let mut small = Vec::new();
            for (path, kind, bytes) in extra {
                let sha = hex::encode(Sha256::digest(&bytes));
                sums.push_str(&format!("{sha}  {path}\n"));
                files.push(json!({"path": path, "kind": kind, "size": bytes.len(), "sha256": sha}));
                small.push((path, bytes));
            }
            let sums = sums.into_bytes();
            files.push(json!({"path": "SHA256SUMS", "kind": "checksums", "size": sums.len(),
                "sha256": hex::encode(Sha256::digest(&sums))}));
            small.push(("SHA256SUMS", sums));
            let (hold_v, release_v) = hold.as_ref().map_or((Value::Null, Value::Null), hold_json);
            let manifest = json!({
                "format": FORMAT,
                "created_at": node.clock.now().to_string(),
                "exported_by": principal,
                "store_url": node.store.url(),
                "signing_key": {
                    "algorithm": "Ed25519",
                    "key_id": key_id,
                    "public_key_file": "signing.pub.pem",
                    "store_key": signing_key_path(&key_id).to_string(),
                    "signature_file": "manifest.json.sig",
                },
                "scope": {
                    "hold_id": hold.as_ref().map(|h| h.hold.id.to_string()),
                    "cameras": cameras.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "start": range.start().to_string(),
                    "end": range.end().to_string(),
                },
                "hold": hold_v,
                "release": release_v,
                "files": files,
                "audit_records": audit,
            });
            let mut manifest = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| ServerError::Internal(format!("manifest: {e}")))?;
            manifest.push(b'\n');
            let sig = key.sign(&manifest).to_vec();
            small.push(("manifest.json", manifest));
            small.push(("manifest.json.sig", sig));
            for (path, bytes) in small {
                yield BundlePart::File { path: path.to_string(), size: bytes.len() as u64, total: 0 };
                yield BundlePart::Data(Bytes::from(bytes));
            }
        };
        Ok(stream.boxed())
    }
}
