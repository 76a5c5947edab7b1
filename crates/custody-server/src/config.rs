//! The `custodyd` configuration file (TOML). Every field has a default, so an
//! empty file (or none) starts a loopback node on `./data`.

use std::path::{Path, PathBuf};

use custody_core::Limits;
use custody_store::StoreConfig;
use serde::{Deserialize, Serialize};

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

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Directory for the catalog, staging files, keys and (by default) objects.
    pub data_dir: PathBuf,
    /// Address of the gRPC listener.
    pub listen: String,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("data"),
            listen: "127.0.0.1:7420".to_string(),
            chunk_size: custody_crypto::DEFAULT_CHUNK_SIZE,
            store: StoreConfig::default(),
            keys: KeysConfig {
                key_file: None,
                env_var: "CUSTODY_KEKS".to_string(),
            },
            limits: Limits::default(),
            retention: RetentionConfig::default(),
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

    /// The catalog directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join("catalog")
    }

    /// Resolves relative paths against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        if let Some(k) = &self.keys.key_file {
            if k.is_relative() {
                self.keys.key_file = Some(base.join(k));
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
}
