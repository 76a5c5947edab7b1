//! The `custodyd` configuration file (TOML). Every field has a default, so an
//! empty file (or none) starts a loopback node on `./data`.

use std::path::{Path, PathBuf};

use custody_core::Limits;
use custody_store::StoreConfig;
use serde::{Deserialize, Serialize};

use crate::identity::{default_rules, IdentityRule};
use crate::ServerError;

/// Where the key-encryption keys come from. Field names are the `[keys]` config keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Key file (TOML keyring, mode 0600). Empty means `{data_dir}/keys/keyring.toml`,
    /// created on first start. Ignored when the environment variable below is set.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding `id:hex[,id:hex...]` (first is active).
    pub env_var: String,
}

/// Retention enforcement. Field names are the `[retention]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How often the sweeper deletes expired, unheld footage, in seconds.
    pub sweep_interval_secs: u64,
    /// The hold fence F, in seconds: the sweeper deletes only while its view
    /// of the holds is younger than this, and a hold is acknowledged only
    /// once every member node has it or F has passed.
    pub hold_fence_secs: u64,
    /// Shortening a policy never deletes footage sooner than the change plus
    /// this many seconds.
    pub policy_grace_secs: u64,
    /// Run the sweeper at all (turn off only for maintenance).
    pub sweeper_enabled: bool,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            sweep_interval_secs: 60,
            hold_fence_secs: 30,
            policy_grace_secs: 24 * 3600,
            sweeper_enabled: true,
        }
    }
}

impl RetentionConfig {
    /// The hold fence as a duration.
    pub fn hold_fence(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hold_fence_secs)
    }

    /// The grace period as a duration.
    pub fn policy_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.policy_grace_secs)
    }
}

/// The audit chain. Field names are the `[audit]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Reads are group-committed: their records reach the store at most this
    /// many milliseconds after the request (a mutation's record is durable
    /// before the mutation is acknowledged; a clean shutdown flushes).
    pub flush_interval_ms: u64,
    /// Most records in one batch object.
    pub max_batch_records: usize,
    /// Records waiting for the writer before requests wait for room.
    pub queue_capacity: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            flush_interval_ms: 200,
            max_batch_records: 1000,
            queue_capacity: 10_000,
        }
    }
}

/// Compliance reports. Field names are the `[compliance]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceConfig {
    /// A hole longer than this between consecutive segments of a camera
    /// stream is reported as a recording gap, in seconds.
    pub gap_tolerance_secs: u64,
    /// Segment objects a report reads at once.
    pub scan_concurrency: usize,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        ComplianceConfig {
            gap_tolerance_secs: 2,
            scan_concurrency: 32,
        }
    }
}

/// The node's catalog. Field names are the `[catalog]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// When the catalog is not known to index the store (it was lost,
    /// recreated, or written by another layout version) and the store holds
    /// footage: rebuild it from the store before serving (true), or refuse
    /// to start, naming `custodyd catalog rebuild` (false).
    pub rebuild_on_start: bool,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            rebuild_on_start: true,
        }
    }
}

/// A gRPC service that a listener can expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// `custody.v1.IngestService`: cameras push segments.
    Ingest,
    /// `custody.v1.ArchiveService`: list, read, export.
    Archive,
    /// `custody.v1.PolicyService`: retention policies.
    Policy,
    /// `custody.v1.HoldService`: legal holds.
    Hold,
    /// `custody.v1.RetentionService`: sweeps.
    Retention,
    /// `custody.v1.NodeService`: listeners and refusal counts.
    Node,
    /// `custody.v1.AuditService`: the audit log.
    Audit,
    /// `custody.v1.ComplianceService`: compliance reports.
    Compliance,
    /// `custody.v1.EvidenceService`: signed evidence bundles.
    Evidence,
    /// HLS playback over HTTP (`/playback/v1/...`, not gRPC): playlists and
    /// decrypted segments for whoever may `ReadSegment`.
    Playback,
    /// Prometheus metrics over HTTP (`GET /metrics`, not gRPC); also served
    /// wherever `node` is.
    Metrics,
}

impl ServiceKind {
    /// Every service.
    pub const ALL: [ServiceKind; 11] = [
        ServiceKind::Ingest,
        ServiceKind::Archive,
        ServiceKind::Policy,
        ServiceKind::Hold,
        ServiceKind::Retention,
        ServiceKind::Node,
        ServiceKind::Audit,
        ServiceKind::Compliance,
        ServiceKind::Evidence,
        ServiceKind::Playback,
        ServiceKind::Metrics,
    ];

    /// The fully qualified gRPC service name; for an HTTP service (see
    /// [`ServiceKind::is_grpc`]) the first segment of its paths.
    pub fn grpc_name(self) -> &'static str {
        match self {
            ServiceKind::Ingest => "custody.v1.IngestService",
            ServiceKind::Archive => "custody.v1.ArchiveService",
            ServiceKind::Policy => "custody.v1.PolicyService",
            ServiceKind::Hold => "custody.v1.HoldService",
            ServiceKind::Retention => "custody.v1.RetentionService",
            ServiceKind::Node => "custody.v1.NodeService",
            ServiceKind::Audit => "custody.v1.AuditService",
            ServiceKind::Compliance => "custody.v1.ComplianceService",
            ServiceKind::Evidence => "custody.v1.EvidenceService",
            ServiceKind::Playback => "playback",
            ServiceKind::Metrics => "metrics",
        }
    }

    /// Whether this is a gRPC service (listed by reflection and health).
    pub fn is_grpc(self) -> bool {
        !matches!(self, ServiceKind::Playback | ServiceKind::Metrics)
    }

    /// Whether this service puts HTTP routes on its listener (which then
    /// also speaks HTTP/1.1): the HTTP services, and `node`, which brings
    /// `GET /metrics` along.
    pub fn has_http_routes(self) -> bool {
        !self.is_grpc() || self == ServiceKind::Node
    }

    /// Whether a listener with `services` serves `GET /metrics`.
    pub fn serves_metrics(services: &[ServiceKind]) -> bool {
        services
            .iter()
            .any(|s| matches!(s, ServiceKind::Metrics | ServiceKind::Node))
    }
}

/// A listener's TLS identity and the CA bundle its clients' certificates must
/// chain to (mutual TLS: a client without a valid certificate is refused in
/// the handshake). Field names are the `[listeners.tls]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// Who callers are and what they may do. Field names are the `[auth]` config keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Rules mapping a client certificate's subject/SANs to roles (union of
    /// all matches). The default: a `urn:custody:role:ROLE` SAN URI grants ROLE.
    pub rules: Vec<IdentityRule>,
    /// Deny list of revoked certificate serials (hex, one per line), re-read
    /// when it changes. Unreadable means every certificate is refused.
    pub revoked_serials_file: Option<PathBuf>,
    /// Whether a supervisor may release a hold it placed itself.
    pub supervisors_release_own_holds: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            rules: default_rules(),
            revoked_serials_file: None,
            supervisors_release_own_holds: false,
        }
    }
}

/// One network listener. Field names are the `[[listeners]]` config keys.
/// Health checking and reflection are on every listener; reflection lists
/// only what the listener serves, and a service not listed does not exist
/// there (UNIMPLEMENTED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name, e.g. `cameras`, `operators`, `admin`.
    pub name: String,
    /// Address to bind, e.g. `10.20.0.1:7421`. Without TLS it must be loopback.
    pub addr: String,
    /// Services exposed on this listener.
    pub services: Vec<ServiceKind>,
    /// TLS identity and client CA; required unless `addr` is loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Directory for the catalog, staging files, keys and (by default) objects.
    pub data_dir: PathBuf,
    /// Address of the single gRPC listener used when `listeners` is empty
    /// (every service, loopback only).
    pub listen: String,
    /// Listeners, one per network segment, each with its own services.
    pub listeners: Vec<ListenerConfig>,
    /// Plaintext bytes per encrypted chunk of a segment container.
    pub chunk_size: u32,
    /// Object store.
    pub store: StoreConfig,
    /// Key-encryption keys.
    pub keys: KeysConfig,
    /// Input limits.
    pub limits: Limits,
    /// Retention enforcement.
    pub retention: RetentionConfig,
    /// Identities and roles.
    pub auth: AuthConfig,
    /// The audit chain.
    pub audit: AuditConfig,
    /// Compliance reports.
    pub compliance: ComplianceConfig,
    /// The catalog.
    pub catalog: CatalogConfig,
    /// Membership of a cluster of nodes on one bucket; absent for a single
    /// node.
    pub cluster: Option<custody_cluster::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("data"),
            listen: "127.0.0.1:7420".to_string(),
            listeners: Vec::new(),
            chunk_size: custody_crypto::DEFAULT_CHUNK_SIZE,
            store: StoreConfig::default(),
            keys: KeysConfig {
                key_file: None,
                env_var: "CUSTODY_KEKS".to_string(),
            },
            limits: Limits::default(),
            retention: RetentionConfig::default(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            compliance: ComplianceConfig::default(),
            catalog: CatalogConfig::default(),
            cluster: None,
        }
    }
}

impl ServerConfig {
    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<ServerConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The key file in use.
    pub fn key_file(&self) -> PathBuf {
        self.keys
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys").join("keyring.toml"))
    }

    /// The node's Ed25519 evidence-signing key: `signing-ed25519.key` next
    /// to the key file (created with mode 0600 on first start).
    pub fn signing_key_file(&self) -> PathBuf {
        self.key_file().parent().map_or_else(
            || PathBuf::from("signing-ed25519.key"),
            |d| d.join("signing-ed25519.key"),
        )
    }

    /// The listeners to open: `listeners`, or one loopback listener on
    /// `listen` with every service. Refuses duplicate names, empty service
    /// lists and plaintext on a non-loopback address.
    pub fn effective_listeners(&self) -> Result<Vec<ListenerConfig>, ServerError> {
        let bad = ServerError::FailedPrecondition;
        let listeners = if self.listeners.is_empty() {
            vec![ListenerConfig {
                name: "local".to_string(),
                addr: self.listen.clone(),
                services: ServiceKind::ALL.to_vec(),
                tls: None,
            }]
        } else {
            self.listeners.clone()
        };
        let mut names = std::collections::HashSet::new();
        for l in &listeners {
            if !names.insert(l.name.as_str()) {
                return Err(bad(format!("listener name {:?} is used twice", l.name)));
            }
            if l.services.is_empty() {
                return Err(bad(format!("listener {:?} exposes no services", l.name)));
            }
            let addrs: Vec<std::net::SocketAddr> =
                std::net::ToSocketAddrs::to_socket_addrs(&l.addr)
                    .map_err(|e| bad(format!("listener {:?}: address {:?}: {e}", l.name, l.addr)))?
                    .collect();
            if l.tls.is_none() && (addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()))
            {
                return Err(bad(format!(
                    "listener {:?} binds {} without TLS: plaintext is allowed only on loopback; add [listeners.tls] with cert, key and client_ca",
                    l.name, l.addr
                )));
            }
        }
        Ok(listeners)
    }

    /// The catalog directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join("catalog")
    }

    /// Resolves relative paths against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(k) = &mut self.keys.key_file {
            resolve(k);
        }
        if let Some(r) = &mut self.auth.revoked_serials_file {
            resolve(r);
        }
        for l in &mut self.listeners {
            if let Some(t) = &mut l.tls {
                resolve(&mut t.cert);
                resolve(&mut t.key);
                resolve(&mut t.client_ca);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_loopback_defaults() {
        let c = ServerConfig::from_toml("").unwrap();
        assert_eq!(c, ServerConfig::default());
        assert!(c.listen.starts_with("127.0.0.1:"));
    }

    #[test]
    fn listeners_are_validated() {
        let c = ServerConfig::default();
        let l = c.effective_listeners().unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].services, ServiceKind::ALL.to_vec());
        let c = ServerConfig::from_toml(
            "[[listeners]]\nname = \"cameras\"\naddr = \"127.0.0.1:0\"\nservices = [\"ingest\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.effective_listeners().unwrap()[0].services,
            vec![ServiceKind::Ingest]
        );
        let public = ServerConfig::from_toml(
            "[[listeners]]\nname = \"cameras\"\naddr = \"0.0.0.0:7421\"\nservices = [\"ingest\"]\n",
        )
        .unwrap();
        assert!(public
            .effective_listeners()
            .unwrap_err()
            .to_string()
            .contains("only on loopback"));
        let tls = ServerConfig::from_toml(
            "[[listeners]]\nname = \"cameras\"\naddr = \"0.0.0.0:7421\"\nservices = [\"ingest\"]\ntls = { cert = \"s.pem\", key = \"s.key\", client_ca = \"ca.pem\" }\n",
        )
        .unwrap();
        assert_eq!(tls.effective_listeners().unwrap().len(), 1);
        assert!(ServerConfig::from_toml(
            "[[listeners]]\nname = \"x\"\naddr = \"127.0.0.1:0\"\nservices = [\"admin\"]\n"
        )
        .is_err());
        let dup = ServerConfig::from_toml(
            "[[listeners]]\nname = \"x\"\naddr = \"127.0.0.1:0\"\nservices = [\"ingest\"]\n[[listeners]]\nname = \"x\"\naddr = \"127.0.0.1:0\"\nservices = [\"archive\"]\n",
        )
        .unwrap();
        assert!(dup.effective_listeners().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(ServerConfig::from_toml("lisen = \"x\"").is_err());
        assert!(ServerConfig::from_toml("[limits]\nmax_segment_byte = 1").is_err());
    }
}

#[cfg(test)]
mod deploy_example {
    use super::*;

    #[test]
    fn deploy_example_config_loads_and_matches_defaults() {
        let text = include_str!("../../../deploy/custodyd.toml");
        let c = ServerConfig::from_toml(text).expect("deploy/custodyd.toml parses");
        assert_eq!(
            c,
            ServerConfig::default(),
            "the example documents the defaults"
        );
    }

    #[test]
    fn three_networks_example_is_valid() {
        let text = include_str!("../../../deploy/three-networks.toml");
        let c = ServerConfig::from_toml(text).expect("deploy/three-networks.toml parses");
        let l = c.effective_listeners().expect("its listeners are valid");
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|l| l.tls.is_some()));
        assert!(c.auth.revoked_serials_file.is_some());
    }
}
