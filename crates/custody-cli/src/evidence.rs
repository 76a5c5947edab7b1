//! `custody evidence export` writes a signed evidence bundle streamed by the
//! server; `custody evidence verify` checks one offline (signature, every
//! file's SHA-256 and size, nothing added or removed) and names what differs.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::evidence_service_client::EvidenceServiceClient;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::client::{ts, Client};
use crate::progress::{Progress, Unit};

/// The manifest of a bundle.
pub const MANIFEST: &str = "manifest.json";
/// The raw Ed25519 signature of the manifest.
pub const SIGNATURE: &str = "manifest.json.sig";
/// The public key the bundle was signed with.
pub const PUBLIC_KEY: &str = "signing.pub.pem";

/// `custody evidence ...`
#[derive(Subcommand)]
pub enum EvidenceCommand {
    /// Export a hold's footage (or a camera × range) as a signed bundle directory.
    Export {
        /// The hold whose footage to export.
        #[arg(long)]
        hold: Option<String>,
        /// Or one camera...
        #[arg(long)]
        camera: Option<String>,
        /// ...from this instant (RFC 3339)...
        #[arg(long)]
        from: Option<String>,
        /// ...to this instant (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Bundle directory to create (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Principal recorded in the manifest (until mTLS identities exist).
        #[arg(long, default_value = "")]
        principal: String,
    },
    /// Check a bundle offline: signature, files, nothing added or removed.
    Verify {
        /// Bundle directory.
        dir: PathBuf,
        /// The node's public key (PEM) to require, e.g. fetched from the
        /// store's signing/ prefix; default: the bundle's signing.pub.pem.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
}

/// A bundle path from the server, refused unless it is plainly relative.
fn safe_path(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    if p.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("the server sent an unsafe bundle path {p:?}");
    }
    Ok(path.to_path_buf())
}

/// The bundle directory `out` names, without trailing slashes or `.`
/// components (`case-0042/` is `case-0042`), and its sibling `NAME.partial`.
fn bundle_paths(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let out: PathBuf = out.components().collect();
    let Some(name) = out.file_name() else {
        bail!(
            "--out {} does not name a directory to create; give e.g. --out case-0042",
            out.display()
        );
    };
    let mut partial = name.to_owned();
    partial.push(".partial");
    let partial = out.with_file_name(partial);
    Ok((out, partial))
}

/// Refuses an `out` that exists, unless it is an empty directory.
fn check_target(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", out.display())),
        Ok(m) if m.is_dir() => {
            let mut entries =
                std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty; give a new (or empty) directory",
                    out.display()
                );
            }
            Ok(())
        }
        Ok(_) => bail!(
            "{} exists and is not a directory; give a new (or empty) directory",
            out.display()
        ),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C, SIGTERM).
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Writes the bundle streamed by the server into `out`: into `NAME.partial`
/// next to it first, checked, then renamed to `out` (a new or empty
/// directory). On any failure, and on Ctrl-C or SIGTERM, the partial
/// directory is removed: a failed export leaves neither a bundle nor a
/// half-written one. Returns the final path, files, bytes and the check.
async fn export(
    client: &Client,
    req: pb::ExportEvidenceRequest,
    out: &Path,
    json_out: bool,
) -> Result<(PathBuf, u64, u64, VerifyReport)> {
    let (out, partial) = bundle_paths(out)?;
    check_target(&out)?;
    if std::fs::symlink_metadata(&partial).is_ok() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {} left by an earlier export", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let result = tokio::select! {
        r = write_checked(client, req, &partial, &out, json_out) => r,
        () = interrupted() => Err(anyhow::anyhow!("interrupted; nothing exported")),
    };
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    let (files, bytes, check) = result?;
    Ok((out, files, bytes, check))
}

/// Writes the bundle into `partial`, verifies it there, and renames it to `out`.
async fn write_checked(
    client: &Client,
    req: pb::ExportEvidenceRequest,
    partial: &Path,
    out: &Path,
    json_out: bool,
) -> Result<(u64, u64, VerifyReport)> {
    let (files, bytes) = write_bundle(client, req, partial, json_out).await?;
    let check = verify_bundle(partial, None)?;
    if !check.ok {
        bail!(
            "the written bundle does not verify: {}",
            serde_json::to_string(&check)?
        );
    }
    // Checked again just before: the target may have been filled meanwhile.
    check_target(out)?;
    std::fs::rename(partial, out)
        .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    Ok((files, bytes, check))
}

/// Writes the streamed files into `dir`, with a progress bar over the
/// segment bytes when the server says their total (and stderr is a terminal).
async fn write_bundle(
    client: &Client,
    req: pb::ExportEvidenceRequest,
    dir: &Path,
    json_out: bool,
) -> Result<(u64, u64)> {
    let bar = Progress::new(Unit::Bytes, json_out);
    // The bar counts the segment files' bytes when the server gives their
    // total (the small files after them are not counted), else every byte.
    let (mut told_total, mut counted) = (false, true);
    let mut stream = EvidenceServiceClient::new(client.channel())
        .max_decoding_message_size(64 << 20)
        .export_evidence(req)
        .await
        .map_err(|e| anyhow::anyhow!("{:?}: {}", e.code(), e.message()))?
        .into_inner();
    let mut current: Option<(PathBuf, std::fs::File, u64, u64)> = None;
    let (mut files, mut bytes) = (0u64, 0u64);
    let close = |cur: Option<(PathBuf, std::fs::File, u64, u64)>| -> Result<()> {
        if let Some((path, f, want, got)) = cur {
            if want != got {
                bail!("{}: expected {want} bytes, got {got}", path.display());
            }
            f.sync_all()?;
        }
        Ok(())
    };
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|e| anyhow::anyhow!("{:?}: {}", e.code(), e.message()))?;
        match msg.part {
            Some(pb::export_evidence_response::Part::File(f)) => {
                close(current.take())?;
                let rel = safe_path(&f.path)?;
                let path = dir.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                files += 1;
                if f.segment_bytes_total > 0 {
                    bar.set_length(f.segment_bytes_total);
                    told_total = true;
                }
                counted = !told_total || f.segment_bytes_total > 0;
                bar.set_message(format!("{files} files"));
                current = Some((path, file, f.size, 0));
            }
            Some(pb::export_evidence_response::Part::Data(d)) => {
                let Some((path, file, _, got)) = current.as_mut() else {
                    bail!("the server sent data before naming a file");
                };
                file.write_all(&d)
                    .with_context(|| format!("writing {}", path.display()))?;
                *got += d.len() as u64;
                bytes += d.len() as u64;
                if counted {
                    bar.inc(d.len() as u64);
                }
            }
            None => {}
        }
    }
    close(current.take())?;
    if !dir.join(SIGNATURE).exists() {
        bail!("the server ended the bundle before its signature");
    }
    Ok((files, bytes))
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Whether the bundle is intact and authentic.
    pub ok: bool,
    /// The signing key id named in the manifest.
    pub key_id: String,
    /// Whether the manifest's signature verifies.
    pub signature_ok: bool,
    /// Files listed in the manifest and checked.
    pub files_checked: u64,
    /// Files present but not listed in the manifest.
    pub added: Vec<String>,
    /// Files listed but absent.
    pub removed: Vec<String>,
    /// Files whose bytes differ from the manifest (or signature parts that fail).
    pub changed: Vec<String>,
    /// Other problems, in words.
    pub problems: Vec<String>,
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

fn files_under(root: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.insert(parts.join("/"));
            }
        }
    }
    Ok(out)
}

/// Checks a bundle directory offline.
pub fn verify_bundle(dir: &Path, public_key: Option<&Path>) -> Result<VerifyReport> {
    let mut r = VerifyReport::default();
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let present = files_under(dir)?;
    let manifest_bytes = match std::fs::read(dir.join(MANIFEST)) {
        Ok(b) => b,
        Err(_) => {
            r.removed.push(MANIFEST.to_string());
            r.problems
                .push("no manifest.json: nothing can be checked".into());
            return Ok(r);
        }
    };
    let sig = std::fs::read(dir.join(SIGNATURE)).ok();
    if sig.is_none() {
        r.removed.push(SIGNATURE.to_string());
    }
    let pem = match public_key {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => std::fs::read_to_string(dir.join(PUBLIC_KEY)).ok(),
    };
    if let (Some(pem), Some(sig)) = (&pem, &sig) {
        match custody_crypto::verify_signature(pem, &manifest_bytes, sig) {
            Ok(()) => r.signature_ok = true,
            Err(e) => {
                r.changed.push(format!("{MANIFEST} or {SIGNATURE}"));
                r.problems.push(format!("manifest signature: {e}"));
            }
        }
    } else if pem.is_none() {
        r.problems
            .push("no public key: the signature cannot be checked".into());
    }
    let manifest: serde_json::Value = match serde_json::from_slice(&manifest_bytes) {
        Ok(v) => v,
        Err(e) => {
            r.problems.push(format!("manifest.json is not JSON: {e}"));
            return Ok(r);
        }
    };
    r.key_id = manifest["signing_key"]["key_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(pem) = &pem {
        if let Ok(raw) = custody_crypto::signing::public_key_from_pem(pem) {
            let id = custody_crypto::signing::key_id_of(&raw);
            if id != r.key_id {
                r.problems.push(format!(
                    "the manifest names signing key {}, the public key is {id}",
                    r.key_id
                ));
            }
        }
    }
    let mut listed = BTreeSet::new();
    for f in manifest["files"].as_array().into_iter().flatten() {
        let (Some(path), Some(sha), Some(size)) =
            (f["path"].as_str(), f["sha256"].as_str(), f["size"].as_u64())
        else {
            r.problems
                .push(format!("manifest entry without path, sha256 and size: {f}"));
            continue;
        };
        if safe_path(path).is_err() {
            r.problems
                .push(format!("unsafe path in manifest: {path:?}"));
            continue;
        }
        listed.insert(path.to_string());
        r.files_checked += 1;
        if !present.contains(path) {
            r.removed.push(path.to_string());
            continue;
        }
        let (got, n) = sha256_file(&dir.join(path))?;
        if got != sha || n != size {
            r.changed.push(path.to_string());
        }
    }
    for p in &present {
        if !listed.contains(p) && p != MANIFEST && p != SIGNATURE {
            r.added.push(p.clone());
        }
    }
    r.ok = r.signature_ok
        && r.added.is_empty()
        && r.removed.is_empty()
        && r.changed.is_empty()
        && r.problems.is_empty();
    Ok(r)
}

/// Runs `custody evidence ...`.
pub async fn evidence(client: &Client, cmd: EvidenceCommand, json_out: bool) -> Result<()> {
    match cmd {
        EvidenceCommand::Export {
            hold,
            camera,
            from,
            to,
            out,
            principal,
        } => {
            let parse = |s: Option<String>| -> Result<Option<prost_types::Timestamp>> {
                s.map(|s| Ok(ts(Timestamp::parse_rfc3339(&s)?))).transpose()
            };
            let req = match (hold, camera) {
                (Some(h), None) if from.is_none() && to.is_none() => pb::ExportEvidenceRequest {
                    hold_id: h,
                    principal,
                    ..Default::default()
                },
                (None, Some(c)) if from.is_some() && to.is_some() => pb::ExportEvidenceRequest {
                    camera_id: c,
                    start: parse(from)?,
                    end: parse(to)?,
                    principal,
                    ..Default::default()
                },
                _ => bail!("give --hold ID, or --camera X --from T --to T"),
            };
            let (out, files, bytes, check) = export(client, req, &out, json_out).await?;
            if json_out {
                println!(
                    "{}",
                    json!({"out": out, "files": files, "bytes": bytes, "key_id": check.key_id})
                );
            } else {
                println!(
                    "{}: {files} files, {bytes} bytes, signed by key {}",
                    out.display(),
                    check.key_id
                );
            }
            Ok(())
        }
        EvidenceCommand::Verify { dir, public_key } => {
            let r = verify_bundle(&dir, public_key.as_deref())?;
            if json_out {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.ok {
                println!(
                    "{}: OK — signature by key {} verifies, {} files intact, nothing added or removed",
                    dir.display(),
                    r.key_id,
                    r.files_checked
                );
            } else {
                println!("{}: FAILED", dir.display());
                for p in &r.changed {
                    println!("  changed: {p}");
                }
                for p in &r.added {
                    println!("  added:   {p}");
                }
                for p in &r.removed {
                    println!("  removed: {p}");
                }
                for p in &r.problems {
                    println!("  problem: {p}");
                }
            }
            if !r.ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
