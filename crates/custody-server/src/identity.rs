//! Client certificates to callers: the subject/SAN rules that map a verified
//! certificate to a principal, roles and bound cameras, and the deny list of
//! revoked serial numbers (re-read whenever the file changes, no restart).
//!
//! Chain and validity-period checks happen earlier, in the TLS handshake
//! (rustls, against the listener's client-CA bundle); this module only sees
//! certificates that passed them.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use x509_parser::error::X509Error;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Caller, CameraScope, Role};

/// SAN URI prefix binding a camera id to a certificate: `urn:custody:camera:ID`.
pub const CAMERA_SAN_PREFIX: &str = "urn:custody:camera:";
/// SAN URI prefix naming a role a certificate carries: `urn:custody:role:ROLE`.
pub const ROLE_SAN_PREFIX: &str = "urn:custody:role:";

/// One identity rule (`[[auth.rules]]`): every pattern given must match
/// (`*` matches any run of characters), and the caller gains the rule's roles.
/// A caller's roles are the union over all matching rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRule {
    /// Pattern for the subject common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn: Option<String>,
    /// Pattern for any subject organizational unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ou: Option<String>,
    /// Pattern for any subject alternative name (DNS name, URI, e-mail or IP, as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
    /// Roles granted.
    pub roles: Vec<Role>,
}

impl IdentityRule {
    fn matches(&self, id: &CertIdentity) -> bool {
        let one = |p: &Option<String>, vals: &[String]| match p {
            None => true,
            Some(p) => vals.iter().any(|v| glob(p, v)),
        };
        (self.cn.is_some() || self.ou.is_some() || self.san.is_some())
            && one(&self.cn, std::slice::from_ref(&id.cn))
            && one(&self.ou, &id.ous)
            && one(&self.san, &id.sans)
    }
}

/// The default rules: a `urn:custody:role:ROLE` SAN URI grants ROLE (as
/// `custody certs init` issues certificates; a certificate may carry several).
pub fn default_rules() -> Vec<IdentityRule> {
    Role::ALL
        .into_iter()
        .map(|r| IdentityRule {
            cn: None,
            ou: None,
            san: Some(format!("{ROLE_SAN_PREFIX}{r}")),
            roles: vec![r],
        })
        .collect()
}

/// `*`-only glob match.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Why a certificate could not be read, or the deny list could not be consulted.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The DER bytes are not an X.509 certificate this parser reads.
    #[error("unreadable client certificate: {0}")]
    Certificate(#[source] x509_parser::nom::Err<X509Error>),
    /// The configured revocation list cannot be read (revocation fails closed).
    #[error("revocation list {}: {source}", path.display())]
    RevocationList {
        /// The configured file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject common name (empty if none).
    pub cn: String,
    /// Subject organizational units.
    pub ous: Vec<String>,
    /// Subject alternative names as text.
    pub sans: Vec<String>,
    /// Serial number: lowercase hex, no leading zeros.
    pub serial: String,
    /// Cameras bound by `urn:custody:camera:ID` SAN URIs.
    pub cameras: BTreeSet<String>,
    /// End of the validity period, Unix seconds.
    pub not_after: i64,
}

/// Normalises a serial number: lowercase hex without separators or leading zeros.
pub fn normalize_serial(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let t = hex.trim_start_matches('0');
    if t.is_empty() {
        "0".to_string()
    } else {
        t.to_string()
    }
}

impl CertIdentity {
    /// Reads the identity of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(IdentityError::Certificate)?;
        let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            a.as_str().map(str::to_string).unwrap_or_default()
        };
        let subject = cert.subject();
        let cn = subject
            .iter_common_name()
            .next()
            .map(text)
            .unwrap_or_default();
        let ous = subject.iter_organizational_unit().map(text).collect();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        sans.push((*s).to_string())
                    }
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => sans.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                        16 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(b);
                            sans.push(std::net::Ipv6Addr::from(a).to_string())
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let cameras = sans
            .iter()
            .filter_map(|s| s.strip_prefix(CAMERA_SAN_PREFIX))
            .map(str::to_string)
            .collect();
        Ok(CertIdentity {
            cn,
            ous,
            sans,
            serial: normalize_serial(&cert.raw_serial_as_string()),
            cameras,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The principal: the common name, else the first SAN.
    pub fn principal(&self) -> String {
        if !self.cn.is_empty() {
            self.cn.clone()
        } else {
            self.sans
                .first()
                .cloned()
                .unwrap_or_else(|| format!("serial:{}", self.serial))
        }
    }

    /// The caller this certificate makes on `listener` under `rules`.
    pub fn caller(&self, rules: &[IdentityRule], listener: &str) -> Caller {
        let roles = rules
            .iter()
            .filter(|r| r.matches(self))
            .flat_map(|r| r.roles.iter().copied())
            .collect();
        Caller {
            principal: self.principal(),
            listener: listener.to_string(),
            roles,
            cameras: CameraScope::Only(self.cameras.clone()),
            serial: Some(self.serial.clone()),
        }
    }
}

/// The deny list of revoked certificate serials: a text file with one serial
/// (hex, any case, `:` separators allowed) per line and `#` comments. Checked
/// on every request; re-read when its size, modification time or inode changes.
#[derive(Debug)]
pub struct RevocationList {
    path: Option<PathBuf>,
    state: Mutex<(Option<Stamp>, HashSet<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        ino,
    })
}

impl RevocationList {
    /// A list read from `path` (none: nothing is revoked). A configured file
    /// that cannot be read is an error here, and a refusal of every
    /// certificate later: revocation fails closed.
    pub fn open(path: Option<PathBuf>) -> Result<RevocationList, IdentityError> {
        let list = RevocationList {
            path,
            state: Mutex::new((None, HashSet::new())),
        };
        list.current_contains("")?;
        Ok(list)
    }

    /// Whether `serial` (normalised) is revoked, reloading the file if it changed.
    pub fn is_revoked(&self, serial: &str) -> Result<bool, IdentityError> {
        self.current_contains(serial)
    }

    fn current_contains(&self, serial: &str) -> Result<bool, IdentityError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let err = |source: std::io::Error| IdentityError::RevocationList {
            path: path.clone(),
            source,
        };
        let now = stamp(path).map_err(err)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0.as_ref() != Some(&now) {
            let text = std::fs::read_to_string(path).map_err(err)?;
            let serials = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(normalize_serial)
                .collect();
            *state = (Some(now), serials);
            tracing::info!(path = %path.display(), revoked = state.1.len(), "revocation list loaded");
        }
        Ok(state.1.contains(serial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_only() {
        assert!(glob("cam-*", "cam-001"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXcYYb"));
        assert!(!glob("cam-*", "xcam-1"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn serials_normalise() {
        assert_eq!(normalize_serial("00:0A:ff"), "aff");
        assert_eq!(normalize_serial("0"), "0");
    }

    #[test]
    fn rules_union_roles_and_need_a_pattern() {
        let id = CertIdentity {
            cn: "alice".into(),
            ous: vec!["ops".into()],
            sans: vec![
                "alice@city.example".into(),
                "urn:custody:role:operator".into(),
            ],
            serial: "1".into(),
            cameras: BTreeSet::new(),
            not_after: i64::MAX,
        };
        let mut rules = default_rules();
        rules.push(IdentityRule {
            cn: None,
            ou: None,
            san: Some("*@city.example".into()),
            roles: vec![Role::Auditor],
        });
        rules.push(IdentityRule {
            cn: Some("bob".into()),
            ou: Some("ops".into()),
            san: None,
            roles: vec![Role::Admin],
        });
        rules.push(IdentityRule {
            cn: None,
            ou: None,
            san: None,
            roles: vec![Role::Admin],
        });
        let c = id.caller(&rules, "ops");
        assert_eq!(
            c.roles,
            [Role::Operator, Role::Auditor].into_iter().collect()
        );
        assert_eq!(c.principal, "alice");
        assert!(!c.cameras.allows("cam-1"));
    }

    #[test]
    fn errors_name_what_failed_and_keep_the_source() {
        let e = CertIdentity::from_der(b"not a certificate").unwrap_err();
        assert!(matches!(e, IdentityError::Certificate(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("unreadable client certificate: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("revoked.txt");
        let e = RevocationList::open(Some(p.clone())).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("revocation list {}: ", p.display())),
            "{e}"
        );
        let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            source.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn revocation_list_reloads_on_change_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("revoked.txt");
        std::fs::write(&p, "# revoked\n0A:0B\n").unwrap();
        let l = RevocationList::open(Some(p.clone())).unwrap();
        assert!(l.is_revoked("a0b").unwrap());
        assert!(!l.is_revoked("c").unwrap());
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, "a0b\nc # lost laptop\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert!(l.is_revoked("c").unwrap());
        std::fs::remove_file(&p).unwrap();
        assert!(l.is_revoked("c").is_err());
        assert!(RevocationList::open(Some(p)).is_err());
        assert!(!RevocationList::open(None).unwrap().is_revoked("a").unwrap());
    }
}
