//! Mutual TLS, identities and roles on the three-network deployment of
//! `deploy/three-networks.toml` (loopback addresses, certificates made by
//! `custody certs init`): the authorization matrix of
//! `docs/authorization.md` — every role × every RPC × every listener — and
//! the rules around it: camera binding, expired, revoked and missing client
//! certificates, plaintext to a TLS port, four eyes on holds, principals
//! taken from certificates, refusals counted.

use crate::testkit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use custody_cli::client::{Client, ClientTls, Upload};
use custody_core::{TimeRange, Timestamp};
use custody_proto::v1 as pb;
use custody_server::{Role, ServerConfig};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

/// The principal `custody certs init` issues for each role in this test.
fn principal(role: Role) -> &'static str {
    match role {
        Role::Camera => "cam-a",
        Role::Operator => "op",
        Role::Investigator => "inv",
        Role::Supervisor => "sup",
        Role::Auditor => "aud",
        Role::Admin => "adm",
    }
}

/// The table in docs/authorization.md: RPC → roles allowed.
fn documented_matrix() -> BTreeMap<String, BTreeSet<Role>> {
    let doc = include_str!("../../docs/authorization.md");
    let header: Vec<&str> = doc
        .lines()
        .find(|l| l.starts_with("| RPC |"))
        .expect("table header in docs/authorization.md")
        .split('|')
        .map(str::trim)
        .collect();
    let mut m = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), header.len(), "malformed row {line:?}");
        let rpc = cells[1].trim_matches('`').to_string();
        let roles = (2..cells.len() - 1)
            .filter(|&i| !cells[i].is_empty())
            .map(|i| Role::parse(header[i]).unwrap_or_else(|| panic!("role {:?}", header[i])))
            .collect();
        assert!(m.insert(rpc, roles).is_none(), "duplicate row {line:?}");
    }
    m
}

/// Every custody.v1 RPC the server's API defines.
fn api_rpcs() -> BTreeSet<String> {
    let fds = prost_types::FileDescriptorSet::decode(custody_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = BTreeSet::new();
    for f in fds.file {
        let pkg = f.package().to_string();
        for s in &f.service {
            for m in &s.method {
                out.insert(format!("{pkg}.{}/{}", s.name(), m.name()));
            }
        }
    }
    out
}

/// Calls `rpc` with one empty message, whatever its shape (unary and
/// streaming calls are the same on the wire), and returns the final status.
async fn raw_call(channel: Channel, rpc: &str) -> Result<(), tonic::Status> {
    let mut g = tonic::client::Grpc::new(channel);
    g.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::try_from(format!("/{rpc}")).expect("rpc path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut stream = g
        .streaming(
            tonic::Request::new(futures::stream::iter([()])),
            path,
            codec,
        )
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

struct Deployment {
    _tmp: tempfile::TempDir,
    _daemon: testkit::Daemon,
    certs: std::path::PathBuf,
    revoked: std::path::PathBuf,
    addrs: BTreeMap<String, String>,
    config: ServerConfig,
}

fn deploy(users: &[&str]) -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    testkit::certs_init(&certs, &["cam-a", "cam-b"], users);
    let revoked = tmp.path().join("revoked.txt");
    std::fs::write(&revoked, "# none yet\n").unwrap();
    let mut config =
        ServerConfig::from_toml(include_str!("../../deploy/three-networks.toml")).unwrap();
    for l in &mut config.listeners {
        l.addr = "127.0.0.1:0".to_string();
        let tls = l.tls.as_mut().expect("every deployed listener has TLS");
        tls.cert = certs.join("server.pem");
        tls.key = certs.join("server.key");
        tls.client_ca = certs.join("ca.pem");
    }
    config.auth.revoked_serials_file = Some(revoked.clone());
    let cfg = tmp.path().join("custodyd.toml");
    std::fs::write(&cfg, toml::to_string(&config).unwrap()).unwrap();
    let (daemon, addrs) =
        testkit::start_listeners(&cfg, &tmp.path().join("data"), config.listeners.len());
    Deployment {
        _tmp: tmp,
        _daemon: daemon,
        certs,
        revoked,
        addrs,
        config,
    }
}

const USERS: &[&str] = &[
    "op:operator",
    "inv:investigator",
    "sup:supervisor",
    "aud:auditor",
    "adm:admin",
    "boss:investigator+supervisor",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_every_rpc_every_listener_is_as_documented() {
    let matrix = documented_matrix();
    assert_eq!(
        matrix.keys().cloned().collect::<BTreeSet<_>>(),
        api_rpcs(),
        "docs/authorization.md must list exactly the RPCs of proto/"
    );
    for (rpc, roles) in &matrix {
        let coded: BTreeSet<Role> = custody_server::authz::allowed_roles(rpc)
            .unwrap_or(&[])
            .iter()
            .copied()
            .collect();
        assert_eq!(&coded, roles, "{rpc}: server table differs from the docs");
    }
    let d = deploy(USERS);
    let mut checked = 0;
    for listener in &d.config.listeners {
        let addr = &d.addrs[&listener.name];
        for role in Role::ALL {
            let ch = testkit::tls_channel(addr, &d.certs, principal(role))
                .await
                .unwrap();
            for (rpc, allowed) in &matrix {
                let served = listener
                    .services
                    .iter()
                    .any(|s| rpc.starts_with(&format!("{}/", s.grpc_name())));
                let got = match raw_call(ch.clone(), rpc).await {
                    Err(s) if s.code() == Code::Unimplemented => "absent",
                    Err(s) if s.code() == Code::PermissionDenied => {
                        assert!(
                            s.message().contains(principal(role))
                                && s.message().contains("needs one of the roles"),
                            "refusal says who and why: {s:?}"
                        );
                        "denied"
                    }
                    Ok(()) | Err(_) => "allowed",
                };
                let want = if !served {
                    "absent"
                } else if allowed.contains(&role) {
                    "allowed"
                } else {
                    "denied"
                };
                assert_eq!(got, want, "{role} calling {rpc} on {}", listener.name);
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        d.config.listeners.len() * Role::ALL.len() * matrix.len()
    );
    check_playback_matrix(&d);

    // Refusals are counted per listener and reason.
    let out = testkit::custody_tls(&d.addrs["admin"], &d.certs, "adm", &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let denied_on = |name: &str| -> u64 {
        status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()["refusals"]["role"]
            .as_u64()
            .unwrap_or(0)
    };
    // On the cameras listener only PutSegment exists: five roles refused once each.
    assert_eq!(denied_on("cameras"), 5, "{status}");
    assert!(
        denied_on("operators") > 0 && denied_on("admin") > 0,
        "{status}"
    );
}

/// The playback table of docs/authorization.md: HTTP path → roles allowed.
fn documented_playback() -> BTreeMap<String, BTreeSet<Role>> {
    let doc = include_str!("../../docs/authorization.md");
    let header: Vec<&str> = doc
        .lines()
        .find(|l| l.starts_with("| HTTP |"))
        .expect("playback table in docs/authorization.md")
        .split('|')
        .map(str::trim)
        .collect();
    let mut m = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| GET `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), header.len(), "malformed row {line:?}");
        let path = cells[1].trim_start_matches("GET").trim().trim_matches('`');
        let roles = (2..cells.len() - 1)
            .filter(|&i| !cells[i].is_empty())
            .map(|i| Role::parse(header[i]).unwrap_or_else(|| panic!("role {:?}", header[i])))
            .collect();
        m.insert(path.to_string(), roles);
    }
    assert_eq!(m.len(), 2, "a playlist row and a segment row");
    m
}

/// Every role × every playback path × every listener, over HTTPS with the
/// role's certificate: absent (404) where `playback` is not served, else
/// allowed or refused (403, saying who and why) exactly as documented.
fn check_playback_matrix(d: &Deployment) {
    let coded: BTreeSet<Role> =
        custody_server::authz::allowed_roles(custody_server::authz::PLAYBACK_RPC)
            .unwrap_or(&[])
            .iter()
            .copied()
            .collect();
    let mut checked = 0;
    for (path, allowed) in documented_playback() {
        assert_eq!(allowed, coded, "{path}: playback follows ReadSegment");
        let concrete = path
            .replace("{camera}", "cam-a")
            .replace("{stream}", "main")
            .replace("{segment}", &"0".repeat(32))
            .replace(
                "index.m3u8",
                "index.m3u8?from=2026-01-01T10:00:00Z&to=2026-01-01T10:01:00Z",
            );
        for listener in &d.config.listeners {
            let served = listener
                .services
                .contains(&custody_server::ServiceKind::Playback);
            let url = format!("https://{}{concrete}", d.addrs[&listener.name]);
            for role in Role::ALL {
                let r = crate::playback::curl(&url, Some((&d.certs, principal(role))), &[])
                    .unwrap_or_else(|e| panic!("{role} GET {url}: {e}"));
                let body = String::from_utf8_lossy(&r.body);
                let got = match r.status {
                    404 if body.contains("is not served on listener") => "absent",
                    403 => {
                        assert!(
                            body.contains(principal(role))
                                && body.contains("needs one of the roles"),
                            "refusal says who and why: {body}"
                        );
                        "denied"
                    }
                    _ => "allowed",
                };
                let want = if !served {
                    "absent"
                } else if allowed.contains(&role) {
                    "allowed"
                } else {
                    "denied"
                };
                assert_eq!(got, want, "{role} GET {path} on {}: {body}", listener.name);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * d.config.listeners.len() * Role::ALL.len());
}

/// `custody certs issue --dir DIR ARGS...` with the CA in `dir`.
fn certs_issue(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(testkit::CUSTODY)
        .args(["certs", "issue", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn upload(camera: &str) -> Upload {
    Upload {
        camera: camera.to_string(),
        stream: "main".to_string(),
        range: TimeRange::new(
            Timestamp::from_secs(1_700_000_000),
            Timestamp::from_secs(1_700_000_002),
        )
        .unwrap(),
        media_type: "video/mp2t".to_string(),
        sequence: None,
    }
}

fn client(d: &Deployment, listener: &str, name: &str) -> Client {
    Client::connect(
        &format!("https://{}", d.addrs[listener]),
        Some(&ClientTls {
            ca: d.certs.join("ca.pem"),
            cert: d.certs.join(format!("{name}.pem")),
            key: d.certs.join(format!("{name}.key")),
            server_name: Some("localhost".to_string()),
        }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_checked_beyond_roles() {
    let d = deploy(USERS);

    // A camera certificate ingests for its own camera only.
    let cam_a = client(&d, "cameras", "cam-a");
    cam_a
        .put_bytes(&upload("cam-a"), b"segment of camera a".to_vec())
        .await
        .expect("cam-a ingests for cam-a");
    let e = cam_a
        .put_bytes(&upload("cam-b"), b"forged footage".to_vec())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("PermissionDenied") && msg.contains("cam-a") && msg.contains("cam-b"),
        "{msg}"
    );
    let op = testkit::custody_tls(&d.addrs["operators"], &d.certs, "op", &["ls", "--json"]);
    let cams: serde_json::Value = serde_json::from_slice(&op.stdout).unwrap();
    let ids: Vec<&str> = cams
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["camera_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cam-a"], "the refused upload stored nothing");

    // An expired certificate is refused in the handshake.
    let issue = certs_issue(
        &d.certs,
        &[
            "--name",
            "old-op",
            "--role",
            "operator",
            "--not-after",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let expired = match testkit::tls_channel(&d.addrs["operators"], &d.certs, "old-op").await {
        Err(e) => e,
        Ok(ch) => raw_call(ch, "custody.v1.ArchiveService/ListCameras")
            .await
            .expect_err("an expired certificate must be refused")
            .to_string(),
    };
    assert!(!expired.is_empty());

    // A certificate that expires while its connection stays open is refused
    // from then on (the handshake alone would not notice).
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let issue = certs_issue(
        &d.certs,
        &[
            "--name",
            "brief-op",
            "--role",
            "operator",
            "--not-after",
            &soon,
        ],
    );
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let brief = testkit::tls_channel(&d.addrs["operators"], &d.certs, "brief-op")
        .await
        .unwrap();
    raw_call(brief.clone(), "custody.v1.ArchiveService/ListCameras")
        .await
        .expect("valid until {soon}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        match raw_call(brief.clone(), "custody.v1.ArchiveService/ListCameras").await {
            Err(s) if s.code() == Code::PermissionDenied => break s,
            Ok(()) => {}
            Err(s) => panic!("expected a refusal on the open connection, got {s:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never refused after {soon}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(refused.message().contains("expired"), "{refused:?}");

    // A revoked certificate works until its serial is on the deny list,
    // which the running server picks up without a restart.
    let issue = certs_issue(&d.certs, &["--name", "lost-laptop", "--role", "operator"]);
    assert!(issue.status.success());
    let lost = testkit::tls_channel(&d.addrs["operators"], &d.certs, "lost-laptop")
        .await
        .unwrap();
    raw_call(lost.clone(), "custody.v1.ArchiveService/ListCameras")
        .await
        .expect("not revoked yet");
    let out = std::process::Command::new(testkit::CUSTODY)
        .args(["certs", "revoke", "--list"])
        .arg(&d.revoked)
        .arg(d.certs.join("lost-laptop.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = raw_call(lost, "custody.v1.ArchiveService/ListCameras")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    raw_call(
        testkit::tls_channel(&d.addrs["operators"], &d.certs, "op")
            .await
            .unwrap(),
        "custody.v1.ArchiveService/ListCameras",
    )
    .await
    .expect("other certificates are unaffected");

    // No client certificate: refused on an mTLS listener.
    let ca_only = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(d.certs.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    let anon = tonic::transport::Endpoint::from_shared(format!("https://{}", d.addrs["operators"]))
        .unwrap()
        .tls_config(ca_only)
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = anon {
        let e = raw_call(ch, "custody.v1.ArchiveService/ListCameras")
            .await
            .expect_err("a client without a certificate must be refused");
        assert_ne!(e.code(), Code::Ok);
    }

    // Plaintext to a TLS port fails cleanly (and quickly), and the listener
    // keeps serving.
    let plain = Client::new(&format!("http://{}", d.addrs["operators"])).unwrap();
    let e = plain
        .archive()
        .list_cameras(pb::ListCamerasRequest {})
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    let cli = testkit::custody_tls(&d.addrs["operators"], &d.certs, "op", &["ls"]);
    assert!(cli.status.success());

    // Every refused handshake above is counted per listener and reason, and
    // lands in the audit chain (aggregated per peer and reason).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status =
            testkit::custody_tls(&d.addrs["admin"], &d.certs, "adm", &["status", "--json"]);
        let status = String::from_utf8_lossy(&status.stdout).to_string();
        let audit = testkit::custody_tls(
            &d.addrs["operators"],
            &d.certs,
            "aud",
            &["--json", "audit", "ls", "--action", "tls.handshake"],
        );
        let audit = String::from_utf8_lossy(&audit.stdout).to_string();
        let counted = ["tls-expired-certificate", "tls-protocol"]
            .iter()
            .all(|r| status.contains(r));
        let audited = audit.contains("tls-expired-certificate") && audit.contains("peer:127.0.0.1");
        if counted && audited {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "handshake refusals not counted/audited.\nstatus: {status}\naudit: {audit}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // Four eyes: the principal comes from the certificate, not the request,
    // and a supervisor cannot release a hold it placed itself.
    let created = testkit::custody_tls(
        &d.addrs["operators"],
        &d.certs,
        "boss",
        &[
            "hold",
            "create",
            "--case",
            "C-1",
            "--cameras",
            "cam-a",
            "--from",
            "2023-11-14T00:00:00Z",
            "--reason",
            "test",
            "--principal",
            "mallory",
            "--json",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let hold: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let hold_id = hold["hold"]["hold_id"].as_str().unwrap().to_string();
    assert_eq!(hold["hold"]["placed_by"], "boss", "{hold}");
    let own = testkit::custody_tls(
        &d.addrs["operators"],
        &d.certs,
        "boss",
        &["hold", "release", &hold_id, "--reason", "done"],
    );
    assert!(!own.status.success());
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(
        err.contains("PermissionDenied") && err.contains("another supervisor"),
        "{err}"
    );
    let other = testkit::custody_tls(
        &d.addrs["operators"],
        &d.certs,
        "sup",
        &[
            "hold",
            "release",
            &hold_id,
            "--reason",
            "case closed",
            "--json",
        ],
    );
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let released: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(released["released_by"], "sup", "{released}");

    let status = testkit::custody_tls(&d.addrs["admin"], &d.certs, "adm", &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let refusals = |name: &str| {
        status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()["refusals"]
            .clone()
    };
    assert_eq!(refusals("cameras")["camera-binding"], 1, "{status}");
    assert_eq!(refusals("operators")["revoked"], 1, "{status}");
    assert_eq!(refusals("operators")["own-hold"], 1, "{status}");

    // Refusals are in the audit chain too, under the certificate's principal
    // and the listener they arrived on.
    let audit = |principal: &str| -> Vec<serde_json::Value> {
        let out = testkit::custody_tls(
            &d.addrs["operators"],
            &d.certs,
            "aud",
            &["--json", "audit", "ls", "--principal", principal],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .or_else(|| v["records"].as_array())
            .expect("records")
            .clone()
    };
    let lost = audit("lost-laptop");
    assert!(
        lost.iter().any(|r| r["outcome"] == "refused"
            && r["listener"] == "operators"
            && r["reason"].as_str().unwrap().contains("revoked")),
        "{lost:?}"
    );
    let cam = audit("cam-a");
    assert!(
        cam.iter().any(|r| r["outcome"] == "refused"
            && r["listener"] == "cameras"
            && r["cameras"] == serde_json::json!(["cam-b"])),
        "{cam:?}"
    );
    let boss = audit("boss");
    assert!(
        boss.iter()
            .any(|r| r["action"] == "hold.create" && r["outcome"] == "ok"),
        "{boss:?}"
    );
}

#[test]
fn certs_init_refuses_to_replace_a_ca_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    testkit::certs_init(&dir, &["cam-1"], &["alice:operator"]);
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let again = std::process::Command::new(testkit::CUSTODY)
        .args(["certs", "init", "--dir"])
        .arg(&dir)
        .args(["--server-host", "localhost"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a CA"));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for k in ["ca.key", "server.key", "cam-1.key", "alice.key"] {
            let mode = std::fs::metadata(dir.join(k)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{k} must be private");
        }
    }
    let bad = certs_issue(&dir, &["--name", "../evil", "--role", "operator"]);
    assert!(!bad.status.success());
    let show = std::process::Command::new(testkit::CUSTODY)
        .args(["--json", "certs", "show"])
        .arg(dir.join("cam-1.pem"))
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(j["principal"], "cam-1");
    assert_eq!(j["cameras"], serde_json::json!(["cam-1"]));
    assert_eq!(j["ou"], serde_json::json!(["camera"]));
}
