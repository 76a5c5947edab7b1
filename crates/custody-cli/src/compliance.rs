//! `custody compliance report`: runs a report on the server with a progress
//! bar on stderr (terminal only, not with `--json`), and prints it as a human summary, JSON, or a self-contained
//! HTML file an auditor can open and archive.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use custody_core::Timestamp;
use custody_proto::v1 as pb;
use custody_proto::v1::compliance_service_client::ComplianceServiceClient;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::{ts, Client};
use crate::progress::{Progress, Unit};

/// `custody compliance ...`
#[derive(Subcommand)]
pub enum ComplianceCommand {
    /// Scan the store and report retention compliance.
    Report {
        /// Only this camera (repeat for several); default: every camera.
        #[arg(long = "camera")]
        cameras: Vec<String>,
        /// Judge as of this instant (RFC 3339); default: now.
        #[arg(long)]
        as_of: Option<String>,
        /// Authenticate every object's bytes, not only headers.
        #[arg(long)]
        deep: bool,
        /// Also write the report as a self-contained HTML file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

fn t(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| Timestamp::from_parts(t.seconds, t.nanos).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The snake_case name of a violation kind (`held_missing`, ...).
pub fn kind_name(kind: i32) -> String {
    pb::ViolationKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("VIOLATION_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("kind_{kind}"))
}

/// A report as JSON.
pub fn report_json(r: &pb::ComplianceReport) -> Value {
    let audit = r.audit.clone().unwrap_or_default();
    json!({
        "generated_at": t(&r.generated_at),
        "as_of": t(&r.as_of),
        "store_url": r.store_url,
        "deep": r.deep,
        "requested_cameras": r.requested_cameras,
        "objects_scanned": r.objects_scanned,
        "index_entries": r.index_entries,
        "bytes_read": r.bytes_read,
        "sweep_bound_secs": r.sweep_bound_secs,
        "gap_tolerance_secs": r.gap_tolerance_secs,
        "cameras": r.cameras.iter().map(|c| json!({
            "camera_id": c.camera_id,
            "policy": c.policy,
            "segments": c.segments,
            "bytes": c.bytes,
            "held_segments": c.held_segments,
            "held_bytes": c.held_bytes,
            "next_expiry": c.next_expiry.as_ref().map(|_| t(&c.next_expiry)),
            "gaps": c.gaps.iter().map(|g| json!({
                "stream": g.stream, "start": t(&g.start), "end": t(&g.end),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "violations": r.violations.iter().map(|v| json!({
            "kind": kind_name(v.kind),
            "camera_id": v.camera_id,
            "detail": v.detail,
            "segments": v.segments.iter().map(|s| json!({
                "segment_id": s.segment_id,
                "stream": s.stream,
                "start": t(&s.start),
                "end": t(&s.end),
                "object_key": s.object_key,
                "expires_at": s.expires_at.as_ref().map(|_| t(&s.expires_at)),
                "hold_ids": s.hold_ids,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "audit": {"verified": audit.verified, "detail": audit.detail},
    })
}

/// A report as a human summary.
pub fn report_text(r: &pb::ComplianceReport) -> String {
    let mut s = String::new();
    let audit = r.audit.clone().unwrap_or_default();
    s.push_str(&format!(
        "Compliance report as of {} ({} mode), store {}\n{} objects scanned, {} index entries, {} bytes read; sweep bound {} s\n\n",
        t(&r.as_of),
        if r.deep { "deep" } else { "header" },
        r.store_url,
        r.objects_scanned,
        r.index_entries,
        r.bytes_read,
        r.sweep_bound_secs,
    ));
    for c in &r.cameras {
        s.push_str(&format!(
            "{:<20} {:>7} segments {:>14} B, held {} ({} B), next expiry {}, policy: {}\n",
            c.camera_id,
            c.segments,
            c.bytes,
            c.held_segments,
            c.held_bytes,
            c.next_expiry
                .as_ref()
                .map_or_else(|| "-".to_string(), |_| t(&c.next_expiry)),
            if c.policy.is_empty() {
                "none (kept forever)"
            } else {
                &c.policy
            },
        ));
        for g in &c.gaps {
            s.push_str(&format!(
                "    gap {} {} → {}\n",
                g.stream,
                t(&g.start),
                t(&g.end)
            ));
        }
    }
    s.push_str(&format!("\n{} violation(s)\n", r.violations.len()));
    for v in &r.violations {
        for seg in &v.segments {
            s.push_str(&format!(
                "  {:<18} {} {} {} → {}  {}\n      {}\n",
                kind_name(v.kind),
                v.camera_id,
                seg.segment_id,
                t(&seg.start),
                t(&seg.end),
                v.detail,
                seg.object_key
            ));
        }
    }
    s.push_str(&format!(
        "\naudit chain: {}{}\n",
        if audit.verified { "verified; " } else { "" },
        audit.detail
    ));
    s
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A report as one self-contained HTML page (inline CSS, no script, no
/// external resource): one `<tr class="violation">` per violated segment.
pub fn report_html(r: &pb::ComplianceReport) -> String {
    let audit = r.audit.clone().unwrap_or_default();
    let mut h = String::new();
    h.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <title>Custody compliance report</title>\n<style>\n\
         body{font-family:sans-serif;margin:2em;color:#111}\n\
         table{border-collapse:collapse;margin:1em 0;font-size:0.9em}\n\
         th,td{border:1px solid #999;padding:0.3em 0.6em;text-align:left;vertical-align:top}\n\
         th{background:#eee}\n.ok{color:#060}.bad{color:#a00;font-weight:bold}\n\
         code{font-size:0.85em}\n</style></head><body>\n<h1>Custody compliance report</h1>\n",
    );
    h.push_str("<table class=\"meta\">\n");
    let cams = if r.requested_cameras.is_empty() {
        "all".to_string()
    } else {
        r.requested_cameras.join(", ")
    };
    for (k, v) in [
        ("Generated at", t(&r.generated_at)),
        ("As of", t(&r.as_of)),
        ("Store", r.store_url.clone()),
        ("Cameras", cams),
        (
            "Mode",
            if r.deep {
                "deep (every byte authenticated)".to_string()
            } else {
                "header (every header authenticated)".to_string()
            },
        ),
        ("Objects scanned", r.objects_scanned.to_string()),
        ("Index entries", r.index_entries.to_string()),
        ("Sweep bound", format!("{} s", r.sweep_bound_secs)),
        ("Gap tolerance", format!("{} s", r.gap_tolerance_secs)),
        (
            "Audit chain",
            format!(
                "{}{}",
                if audit.verified { "verified: " } else { "" },
                audit.detail
            ),
        ),
    ] {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            esc(k),
            esc(&v)
        ));
    }
    h.push_str("</table>\n");
    let n = r.violations.iter().map(|v| v.segments.len()).sum::<usize>();
    h.push_str(&format!(
        "<h2>Violations</h2>\n<p class=\"{}\" id=\"violation-count\">{n} violation(s)</p>\n",
        if n == 0 { "ok" } else { "bad" }
    ));
    h.push_str("<table id=\"violations\">\n<tr><th>Kind</th><th>Camera</th><th>Stream</th><th>Start</th><th>End</th><th>Segment</th><th>Expires</th><th>Holds</th><th>Detail</th><th>Object key</th></tr>\n");
    for v in &r.violations {
        let kind = kind_name(v.kind);
        for s in &v.segments {
            h.push_str(&format!(
                "<tr class=\"violation\" data-kind=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
                esc(&kind),
                esc(&kind),
                esc(&v.camera_id),
                esc(&s.stream),
                esc(&t(&s.start)),
                esc(&t(&s.end)),
                esc(&s.segment_id),
                esc(&t(&s.expires_at)),
                esc(&s.hold_ids.join(", ")),
                esc(&v.detail),
                esc(&s.object_key),
            ));
        }
    }
    h.push_str("</table>\n<h2>Cameras</h2>\n<table id=\"cameras\">\n<tr><th>Camera</th><th>Policy in force</th><th>Segments</th><th>Bytes</th><th>Held segments</th><th>Held bytes</th><th>Next expiry</th><th>Recording gaps</th></tr>\n");
    for c in &r.cameras {
        let gaps = if c.gaps.is_empty() {
            "none".to_string()
        } else {
            c.gaps
                .iter()
                .map(|g| esc(&format!("{} {} → {}", g.stream, t(&g.start), t(&g.end))))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        h.push_str(&format!(
            "<tr class=\"camera\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&c.camera_id),
            esc(if c.policy.is_empty() { "none (kept forever)" } else { &c.policy }),
            c.segments,
            c.bytes,
            c.held_segments,
            c.held_bytes,
            esc(&t(&c.next_expiry)),
            gaps,
        ));
    }
    h.push_str("</table>\n<p>Computed from the object store itself, compared with the index. \
                Kinds: expired_unheld / expired_unindexed (unheld footage past its expiry plus the sweep bound), \
                past_ceiling (past its policy's privacy ceiling), held_missing / held_corrupt (held footage missing or failing authentication), \
                corrupt, unindexed_object, missing_object, foreign_object.</p>\n</body></html>\n");
    h
}

/// Shows a report's progress as the server streams it: objects examined
/// out of the total, with the stored bytes read so far.
fn show(bar: &Progress, p: &pb::ReportProgress) {
    bar.set_length(p.total);
    bar.set_position(p.scanned);
    bar.set_message(format!("({:.1} MB read)", p.bytes_read as f64 / 1e6));
}

/// Runs `custody compliance ...`.
pub async fn compliance(client: &Client, cmd: ComplianceCommand, json_out: bool) -> Result<()> {
    let ComplianceCommand::Report {
        cameras,
        as_of,
        deep,
        html,
    } = cmd;
    let as_of = as_of
        .map(|s| Timestamp::parse_rfc3339(&s).map(ts))
        .transpose()?;
    let mut stream = ComplianceServiceClient::new(client.channel())
        .max_decoding_message_size(256 << 20)
        .run_report(pb::RunReportRequest {
            camera_ids: cameras,
            as_of,
            deep,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{:?}: {}", e.code(), e.message()))?
        .into_inner();
    let bar = Progress::new(Unit::Items("objects"), json_out);
    let mut report = None;
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|e| {
            bar.finish();
            anyhow::anyhow!("{:?}: {}", e.code(), e.message())
        })?;
        match msg.event {
            Some(pb::run_report_response::Event::Progress(p)) => show(&bar, &p),
            Some(pb::run_report_response::Event::Report(r)) => report = Some(r),
            None => {}
        }
    }
    bar.finish();
    let Some(report) = report else {
        bail!("the server ended the report stream without a report");
    };
    if let Some(path) = &html {
        std::fs::write(path, report_html(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json_out {
        println!("{}", report_json(&report));
    } else {
        print!("{}", report_text(&report));
        if let Some(path) = &html {
            println!("HTML report: {}", path.display());
        }
    }
    Ok(())
}
