//! `custody certs`: a small certificate authority for one deployment. It
//! issues the server's TLS identity and one client certificate per principal
//! (a camera, an operator, an investigator…), with its roles as
//! `urn:custody:role:ROLE` and bound cameras as `urn:custody:camera:ID` SAN
//! URIs, as the server's default identity rules expect (the subject OU
//! repeats the roles for people to read).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use custody_server::identity::{CertIdentity, CAMERA_SAN_PREFIX, ROLE_SAN_PREFIX};
use custody_server::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// Errors issuing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// File I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The request is not possible as given.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What one certificate is for.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Principal (the subject CN); also the file name stem.
    pub name: String,
    /// Roles (subject OUs).
    pub roles: Vec<Role>,
    /// Cameras bound to the certificate.
    pub cameras: Vec<String>,
    /// DNS names and IP addresses (server certificates).
    pub hosts: Vec<String>,
    /// A server certificate (TLS server auth) rather than a client one.
    pub server: bool,
}

/// Validity of issued certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (minus an hour of clock skew) for `days`.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// An issued certificate: its files and serial number.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Principal.
    pub name: String,
    /// Certificate file (PEM).
    pub cert: PathBuf,
    /// Private key file (PEM, mode 0600).
    pub key: PathBuf,
    /// Serial number (lowercase hex), as a revocation list names it.
    pub serial: String,
}

fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = o.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn valid_name(name: &str) -> Result<(), CertError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(CertError::Invalid(format!(
            "principal name {name:?}: use 1-64 characters from A-Z a-z 0-9 - _ ."
        )));
    }
    Ok(())
}

/// Creates a new CA in `dir` (`ca.pem`, `ca.key`). Refuses to replace one.
pub fn create_ca(dir: &Path, name: &str, validity: Validity) -> Result<PathBuf, CertError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name
        .push(DnType::OrganizationName, "Custody");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    let cert = p.self_signed(&key)?;
    let ca_key = dir.join("ca.key");
    if ca_key.exists() {
        return Err(CertError::Invalid(format!(
            "{} exists: this directory already has a CA (use `custody certs issue`)",
            ca_key.display()
        )));
    }
    write_new(&ca_key, key.serialize_pem().as_bytes(), true)?;
    let ca_pem = dir.join("ca.pem");
    write_new(&ca_pem, cert.pem().as_bytes(), false)?;
    Ok(ca_pem)
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    b[0] |= 0x10;
    SerialNumber::from_slice(&b)
}

/// Issues a certificate for `subject`, signed by the CA in `dir`, into `dir`.
pub fn issue(dir: &Path, subject: &Subject, validity: Validity) -> Result<Issued, CertError> {
    valid_name(&subject.name)?;
    if subject.roles.contains(&Role::Camera) == subject.cameras.is_empty() && !subject.server {
        return Err(CertError::Invalid(
            "a camera certificate needs --camera IDs, and only camera certificates bind cameras"
                .to_string(),
        ));
    }
    for c in &subject.cameras {
        custody_core::CameraId::parse(c).map_err(|e| CertError::Invalid(e.to_string()))?;
    }
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, subject.name.as_str());
    // One OU for people to read; the roles the server checks are SAN URIs.
    let ou = if subject.server {
        "server".to_string()
    } else {
        subject
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("+")
    };
    if !ou.is_empty() {
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, ou);
    }
    for r in &subject.roles {
        p.subject_alt_names
            .push(SanType::URI(format!("{ROLE_SAN_PREFIX}{r}").try_into()?));
    }
    for h in &subject.hosts {
        p.subject_alt_names.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.as_str().try_into()?),
        });
    }
    for c in &subject.cameras {
        p.subject_alt_names
            .push(SanType::URI(format!("{CAMERA_SAN_PREFIX}{c}").try_into()?));
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if subject.server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer)?;
    let key_path = dir.join(format!("{}.key", subject.name));
    let cert_path = dir.join(format!("{}.pem", subject.name));
    if key_path.exists() || cert_path.exists() {
        return Err(CertError::Invalid(format!(
            "{} already has a certificate in {}",
            subject.name,
            dir.display()
        )));
    }
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    let serial = CertIdentity::from_der(cert.der())
        .map_err(|e| CertError::Invalid(e.to_string()))?
        .serial;
    Ok(Issued {
        name: subject.name.clone(),
        cert: cert_path,
        key: key_path,
        serial,
    })
}

/// What a PEM certificate file says: its identity and validity.
pub fn show(path: &Path) -> Result<(CertIdentity, String, String), CertError> {
    let text = std::fs::read(path).map_err(io(path))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|e| {
        CertError::Invalid(format!("{}: not a PEM certificate: {e}", path.display()))
    })?;
    let id =
        CertIdentity::from_der(&pem.contents).map_err(|e| CertError::Invalid(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| CertError::Invalid(format!("{}: {e}", path.display())))?;
    let v = cert.validity();
    Ok((id, v.not_before.to_string(), v.not_after.to_string()))
}

/// Adds serials to a revocation list file (created if missing), atomically
/// (temporary file, fsync, rename), so a running server never reads half a
/// list. Returns the serials added.
pub fn revoke(list: &Path, serials: &[String]) -> Result<Vec<String>, CertError> {
    let mut text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Revoked client certificate serials (hex), one per line.\n".to_string()
        }
        Err(e) => return Err(io(list)(e)),
    };
    let present: std::collections::HashSet<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(custody_server::identity::normalize_serial)
        .collect();
    let mut added = Vec::new();
    for s in serials {
        let n = custody_server::identity::normalize_serial(s);
        if !present.contains(&n) && !added.contains(&n) {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&n);
            text.push('\n');
            added.push(n);
        }
    }
    let tmp = list.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, text.as_bytes(), false)?;
    std::fs::rename(&tmp, list).map_err(io(list))?;
    Ok(added)
}

/// `custody certs` subcommands.
#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA and certificates for a server and a set of principals.
    Init {
        /// Directory for the CA and certificates (created; an existing CA is never replaced).
        #[arg(long)]
        dir: PathBuf,
        /// Host names and IP addresses of the server certificate (repeat).
        #[arg(long = "server-host", required = true)]
        server_hosts: Vec<String>,
        /// A camera certificate (repeat): `ID` binds camera ID.
        #[arg(long = "camera")]
        cameras: Vec<String>,
        /// A person or system (repeat): `NAME:ROLE[+ROLE...]`, e.g. `alice:operator`.
        #[arg(long = "user")]
        users: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue one more certificate with the CA in --dir.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// Principal name (certificate CN and file name).
        #[arg(long)]
        name: String,
        /// Role (repeat).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Camera bound to the certificate (repeat; camera role).
        #[arg(long = "camera")]
        cameras: Vec<String>,
        /// A server certificate for these host names / IPs instead of a client one.
        #[arg(long = "server-host")]
        server_hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Validity end instead (RFC 3339); a past instant issues an expired certificate.
        #[arg(long)]
        not_after: Option<String>,
    },
    /// Show what a certificate grants: principal, roles, cameras, serial, validity.
    Show {
        /// Certificate (PEM).
        cert: PathBuf,
    },
    /// Revoke certificates: add their serials to the server's deny list
    /// (`auth.revoked_serials_file`); a running server applies it on the next request.
    Revoke {
        /// The deny list file.
        #[arg(long)]
        list: PathBuf,
        /// Certificate files (PEM) or serial numbers (hex).
        targets: Vec<String>,
    },
}

fn parse_user(spec: &str) -> Result<(String, Vec<Role>), CertError> {
    let (name, roles) = spec
        .split_once(':')
        .ok_or_else(|| CertError::Invalid(format!("--user {spec:?}: expected NAME:ROLE[+ROLE]")))?;
    let roles = roles
        .split('+')
        .map(|r| {
            Role::parse(r).ok_or_else(|| {
                CertError::Invalid(format!(
                    "--user {spec:?}: unknown role {r:?} (roles: {})",
                    Role::ALL.map(|r| r.as_str()).join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), roles))
}

fn issued_json(i: &Issued, roles: &[Role], cameras: &[String]) -> serde_json::Value {
    serde_json::json!({
        "name": i.name,
        "cert": i.cert,
        "key": i.key,
        "serial": i.serial,
        "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "cameras": cameras,
    })
}

/// Runs a `custody certs` subcommand.
pub fn run(cmd: CertsCommand, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init {
            dir,
            server_hosts,
            cameras,
            users,
            days,
        } => {
            let validity = Validity::days(days);
            let users = users
                .iter()
                .map(|u| parse_user(u))
                .collect::<Result<Vec<_>, _>>()?;
            let ca = create_ca(&dir, "Custody CA", validity)?;
            let mut out = Vec::new();
            let server = Subject {
                name: "server".into(),
                roles: vec![],
                cameras: vec![],
                hosts: server_hosts,
                server: true,
            };
            out.push(issued_json(&issue(&dir, &server, validity)?, &[], &[]));
            for c in &cameras {
                let s = Subject {
                    name: c.clone(),
                    roles: vec![Role::Camera],
                    cameras: vec![c.clone()],
                    hosts: vec![],
                    server: false,
                };
                out.push(issued_json(
                    &issue(&dir, &s, validity)?,
                    &s.roles,
                    &s.cameras,
                ));
            }
            for (name, roles) in users {
                let s = Subject {
                    name,
                    roles,
                    cameras: vec![],
                    hosts: vec![],
                    server: false,
                };
                out.push(issued_json(&issue(&dir, &s, validity)?, &s.roles, &[]));
            }
            if json_out {
                println!("{}", serde_json::json!({"ca": ca, "certificates": out}));
            } else {
                println!(
                    "CA {} (keep {} offline)",
                    ca.display(),
                    dir.join("ca.key").display()
                );
                for c in &out {
                    println!(
                        "  {:<16} serial {}  roles {}",
                        c["name"].as_str().unwrap_or(""),
                        c["serial"].as_str().unwrap_or(""),
                        c["roles"]
                    );
                }
            }
        }
        CertsCommand::Issue {
            dir,
            name,
            roles,
            cameras,
            server_hosts,
            days,
            not_after,
        } => {
            let roles = roles
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| anyhow::anyhow!("--role {r:?}: unknown role"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut validity = Validity::days(days);
            if let Some(t) = not_after {
                let t = OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| anyhow::anyhow!("--not-after {t:?}: {e}"))?;
                validity.not_after = t;
                validity.not_before = validity.not_before.min(t - Duration::days(1));
            }
            let s = Subject {
                name,
                roles,
                cameras,
                server: !server_hosts.is_empty(),
                hosts: server_hosts,
            };
            let i = issue(&dir, &s, validity)?;
            if json_out {
                println!("{}", issued_json(&i, &s.roles, &s.cameras));
            } else {
                println!(
                    "issued {} ({}) serial {}",
                    i.cert.display(),
                    i.key.display(),
                    i.serial
                );
            }
        }
        CertsCommand::Show { cert } => {
            let (id, not_before, not_after) = show(&cert)?;
            let j = serde_json::json!({
                "principal": id.principal(),
                "ou": id.ous,
                "sans": id.sans,
                "cameras": id.cameras,
                "serial": id.serial,
                "not_before": not_before,
                "not_after": not_after,
            });
            if json_out {
                println!("{j}");
            } else {
                println!(
                    "{}  ou {}  cameras {}  serial {}  valid {not_before} .. {not_after}",
                    id.principal(),
                    id.ous.join(","),
                    id.cameras.iter().cloned().collect::<Vec<_>>().join(","),
                    id.serial
                );
            }
        }
        CertsCommand::Revoke { list, targets } => {
            let serials = targets
                .iter()
                .map(|t| {
                    if Path::new(t).is_file() {
                        show(Path::new(t)).map(|(id, _, _)| id.serial)
                    } else if !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
                    {
                        Ok(t.clone())
                    } else {
                        Err(CertError::Invalid(format!(
                            "{t:?} is neither a certificate file nor a hex serial"
                        )))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let added = revoke(&list, &serials)?;
            if json_out {
                println!("{}", serde_json::json!({"list": list, "added": added}));
            } else {
                println!(
                    "{}: revoked {} (already listed: {})",
                    list.display(),
                    if added.is_empty() {
                        "nothing new".to_string()
                    } else {
                        added.join(", ")
                    },
                    serials.len() - added.len()
                );
            }
        }
    }
    Ok(())
}
