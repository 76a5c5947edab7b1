//! Key-encryption keys (KEKs): validated key ids, the in-memory keyring with
//! its active key, the 0600 TOML key file (create, load, atomic save) and the
//! `id:hex[,id:hex...]` environment form.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use custody_core::{Clock, SystemClock, Timestamp};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::Deserialize;

use crate::CryptoError;

/// Longest key id accepted.
pub const MAX_KEY_ID_LEN: usize = 32;

/// Largest key file read (a keyring of thousands of keys fits easily).
const MAX_KEY_FILE_LEN: u64 = 1024 * 1024;

/// Where a keyring parsed by [`Keyring::from_env_value`] came from, in errors.
const ENV_ORIGIN: &str = "environment value";

/// A key id: 1..=32 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Parses and validates a key id.
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if s.len() > MAX_KEY_ID_LEN || !first_ok || !rest_ok {
            return Err(CryptoError::InvalidKeyId(s.chars().take(64).collect()));
        }
        Ok(KeyId(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key-encryption key: 32 secret bytes under an id. `Debug` never shows the key.
#[derive(Clone)]
pub struct Kek {
    id: KeyId,
    key: [u8; 32],
    created: Option<Timestamp>,
}

impl Kek {
    /// A KEK from known key bytes (no creation time).
    pub fn new(id: KeyId, key: [u8; 32]) -> Self {
        Kek {
            id,
            key,
            created: None,
        }
    }

    /// A fresh random KEK from the OS RNG, created now.
    pub fn generate(id: KeyId) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Kek {
            id,
            key,
            created: Some(SystemClock.now()),
        }
    }

    /// The key's id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// When the key was created, if recorded.
    pub fn created(&self) -> Option<Timestamp> {
        self.created
    }

    /// The secret key bytes (crate-internal only).
    pub(crate) fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("created", &self.created)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The set of KEKs the archive can decrypt with, and the one it encrypts with.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: BTreeMap<KeyId, Kek>,
    /// A copy of the active entry of `keys`, so lookups cannot fail.
    active: Kek,
}

/// The key file as stored (TOML).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    active: String,
    keys: Vec<KeyFileEntry>,
}

/// One `[[keys]]` entry of the key file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    id: String,
    key: String,
    created: Option<String>,
}

impl Keyring {
    /// A keyring holding one fresh random key, which is active.
    pub fn generate(id: KeyId) -> Keyring {
        Self::single(Kek::generate(id))
    }

    fn single(kek: Kek) -> Keyring {
        let mut keys = BTreeMap::new();
        keys.insert(kek.id.clone(), kek.clone());
        Keyring { keys, active: kek }
    }

    /// The active key (used for new segments and records).
    pub fn active(&self) -> &Kek {
        &self.active
    }

    /// The key with this id, if present.
    pub fn get(&self, id: &KeyId) -> Option<&Kek> {
        self.keys.get(id)
    }

    /// All key ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> + '_ {
        self.keys.keys()
    }

    /// Adds a fresh random key under `new_id` and makes it active; old keys stay
    /// for decryption. Refuses an id already present.
    pub fn rotate(&mut self, new_id: KeyId) -> Result<(), CryptoError> {
        if self.keys.contains_key(&new_id) {
            return Err(CryptoError::DuplicateKeyId(new_id));
        }
        let kek = Kek::generate(new_id);
        self.keys.insert(kek.id.clone(), kek.clone());
        self.active = kek;
        Ok(())
    }

    /// Parses `id:hex64[,id:hex64...]`; the first key is active.
    pub fn from_env_value(s: &str) -> Result<Keyring, CryptoError> {
        let bad = |reason: String| CryptoError::InvalidKeyring {
            origin: ENV_ORIGIN.to_string(),
            reason,
        };
        let mut keys = BTreeMap::new();
        let mut first: Option<Kek> = None;
        for (i, part) in s.split(',').enumerate() {
            let part = part.trim();
            let (id, hex_key) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("entry {} is not of the form id:hex64", i + 1)))?;
            let id = KeyId::parse(id.trim()).map_err(|e| bad(e.to_string()))?;
            let key = decode_key(hex_key.trim(), ENV_ORIGIN, &id)?;
            let kek = Kek::new(id.clone(), key);
            if keys.insert(id.clone(), kek.clone()).is_some() {
                return Err(bad(format!("key id {id} appears twice")));
            }
            first.get_or_insert(kek);
        }
        let active = first.ok_or_else(|| bad("no keys".to_string()))?;
        Ok(Keyring { keys, active })
    }

    /// Loads a key file, refusing one accessible by group or others.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Keyring, CryptoError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_err(path))?;
        let md = file.metadata().map_err(io_err(path))?;
        check_private(path, &md)?;
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(path))?;
        let origin = path.display().to_string();
        if bytes.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(CryptoError::InvalidKeyring {
                origin,
                reason: format!("larger than {MAX_KEY_FILE_LEN} bytes"),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| CryptoError::InvalidKeyring {
            origin: origin.clone(),
            reason: "not UTF-8".to_string(),
        })?;
        Self::from_toml(&text, &origin)
    }

    /// Creates a new key file holding one fresh key `k1` (mode 0600, parent
    /// directories created 0700). Refuses to overwrite an existing file.
    pub fn create_file(path: impl AsRef<Path>) -> Result<Keyring, CryptoError> {
        let path = path.as_ref();
        let ring = Keyring::generate(KeyId("k1".to_string()));
        let dir = parent_dir(path);
        create_private_dir(dir)?;
        let mut file = open_private_new(path).map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                CryptoError::KeyFileExists(path.to_path_buf())
            } else {
                io_err(path)(e)
            }
        })?;
        let written = file
            .write_all(ring.to_toml().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            drop(file);
            // Best effort: do not leave a half-written key file behind.
            let _ = std::fs::remove_file(path);
            return Err(io_err(path)(e));
        }
        sync_dir(dir)?;
        Ok(ring)
    }

    /// Loads the key file if it exists, else creates it with one fresh key.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Keyring, CryptoError> {
        let path = path.as_ref();
        match Self::load_file(path) {
            Err(CryptoError::KeyFileIo { source, .. }) if source.kind() == ErrorKind::NotFound => {
                match Self::create_file(path) {
                    // Lost a race with another creator: use its file.
                    Err(CryptoError::KeyFileExists(_)) => Self::load_file(path),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Writes the keyring to `path` atomically: a 0600 temporary file in the
    /// same directory, fsynced, renamed over `path`, then the directory fsynced.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CryptoError> {
        let path = path.as_ref();
        let dir = parent_dir(path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keyring".to_string());
        let tmp = dir.join(format!(".{name}.tmp-{:016x}", OsRng.next_u64()));
        let result = (|| {
            let mut file = open_private_new(&tmp).map_err(io_err(&tmp))?;
            file.write_all(self.to_toml().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err(&tmp))?;
            drop(file);
            std::fs::rename(&tmp, path).map_err(io_err(path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        sync_dir(dir)
    }

    /// The key file text. Every value is from a validated charset (key id,
    /// hex, RFC 3339), so no TOML escaping is needed.
    fn to_toml(&self) -> String {
        let mut s = format!("active = \"{}\"\n", self.active.id);
        for kek in self.keys.values() {
            s.push_str(&format!(
                "\n[[keys]]\nid = \"{}\"\nkey = \"{}\"\n",
                kek.id,
                hex::encode(kek.key)
            ));
            if let Some(t) = kek.created {
                s.push_str(&format!("created = \"{t}\"\n"));
            }
        }
        s
    }

    fn from_toml(text: &str, origin: &str) -> Result<Keyring, CryptoError> {
        let bad = |reason: String| CryptoError::InvalidKeyring {
            origin: origin.to_string(),
            reason,
        };
        // `message()` only: the full error quotes the offending line, which may hold a key.
        let file: KeyFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let mut keys = BTreeMap::new();
        for entry in file.keys {
            let id = KeyId::parse(&entry.id).map_err(|e| bad(e.to_string()))?;
            let key = decode_key(&entry.key, origin, &id)?;
            let created = entry
                .created
                .map(|c| Timestamp::parse_rfc3339(&c))
                .transpose()
                .map_err(|e| bad(format!("key {id}: created: {e}")))?;
            let kek = Kek {
                id: id.clone(),
                key,
                created,
            };
            if keys.insert(id.clone(), kek).is_some() {
                return Err(bad(format!("key id {id} appears twice")));
            }
        }
        let active_id = KeyId::parse(&file.active).map_err(|e| bad(format!("active: {e}")))?;
        let active = keys
            .get(&active_id)
            .cloned()
            .ok_or_else(|| bad(format!("active key {active_id} is not among the keys")))?;
        Ok(Keyring { keys, active })
    }
}

/// Decodes 64 hex digits into key `id` of the keyring from `origin`; the
/// error never echoes the input.
fn decode_key(hex_key: &str, origin: &str, id: &KeyId) -> Result<[u8; 32], CryptoError> {
    let bad = |why: &str| CryptoError::InvalidKeyring {
        origin: origin.to_string(),
        reason: format!("key {id}: {why}"),
    };
    if hex_key.len() != 64 {
        return Err(bad(&format!(
            "expected 64 hex digits (32 bytes), got {} characters",
            hex_key.len()
        )));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).map_err(|_| bad("not hex"))?;
    Ok(key)
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::KeyFileIo {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(unix)]
pub(crate) fn check_private(path: &Path, md: &std::fs::Metadata) -> Result<(), CryptoError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_private(_path: &Path, _md: &std::fs::Metadata) -> Result<(), CryptoError> {
    Ok(())
}

pub(crate) fn open_private_new(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), CryptoError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Makes a rename or create in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CryptoError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_ids() {
        for ok in ["k1", "K", "2026-01.key_a", &"x".repeat(32)] {
            assert_eq!(KeyId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "-k", ".k", "k 1", "k/1", "k:1", "ké", &"x".repeat(33)] {
            assert!(
                matches!(KeyId::parse(bad), Err(CryptoError::InvalidKeyId(_))),
                "{bad}"
            );
        }
        assert_eq!(id("k7").to_string(), "k7");
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let ring = Keyring::generate(id("k1"));
        let hex_key = hex::encode(ring.active().key_bytes());
        assert!(!format!("{:?}", ring.active()).contains(&hex_key));
        assert!(!format!("{ring:?}").contains(&hex_key));
    }

    #[cfg(unix)]
    #[test]
    fn create_file_is_private_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/keys/keyring.toml");
        let ring = Keyring::create_file(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(ring.active().id().as_str(), "k1");
        assert!(ring.active().created().is_some());
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            Keyring::create_file(&path),
            Err(CryptoError::KeyFileExists(p)) if p == path
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before, "file untouched");
        let loaded = Keyring::load_file(&path).unwrap();
        assert_eq!(loaded.active().key_bytes(), ring.active().key_bytes());
        assert_eq!(loaded.active().created(), ring.active().created());
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_group_or_world_readable_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.toml");
        Keyring::create_file(&path).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = Keyring::load_file(&path).unwrap_err();
            assert!(
                matches!(&err, CryptoError::KeyFilePermissions { path: p, mode } if *p == path && *mode == bad),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string()) && msg.contains(&format!("{bad:04o}")),
                "{msg}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Keyring::load_file(&path).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn save_and_load_round_trip_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.toml");
        let mut ring = Keyring::create_file(&path).unwrap();
        ring.rotate(id("k2")).unwrap();
        assert!(matches!(
            ring.rotate(id("k1")),
            Err(CryptoError::DuplicateKeyId(k)) if k.as_str() == "k1"
        ));
        ring.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let loaded = Keyring::load_file(&path).unwrap();
        assert_eq!(loaded.active().id().as_str(), "k2");
        assert_eq!(
            loaded.ids().collect::<Vec<_>>(),
            ring.ids().collect::<Vec<_>>()
        );
        for k in ring.ids() {
            assert_eq!(
                loaded.get(k).unwrap().key_bytes(),
                ring.get(k).unwrap().key_bytes()
            );
        }
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn load_or_create_creates_once_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.toml");
        let a = Keyring::load_or_create(&path).unwrap();
        let b = Keyring::load_or_create(&path).unwrap();
        assert_eq!(a.active().key_bytes(), b.active().key_bytes());
    }

    fn parse(text: &str) -> Result<Keyring, CryptoError> {
        Keyring::from_toml(text, "test")
    }

    fn is_invalid(r: Result<Keyring, CryptoError>) -> bool {
        matches!(r, Err(CryptoError::InvalidKeyring { .. }))
    }

    #[test]
    fn key_file_contents_are_validated() {
        let k = "ab".repeat(32);
        let ok = format!("active = \"k1\"\n[[keys]]\nid = \"k1\"\nkey = \"{k}\"\n");
        let ring = parse(&ok).unwrap();
        assert_eq!(ring.active().key_bytes(), &[0xab; 32]);
        assert_eq!(ring.active().created(), None, "created is optional");

        let with_created = format!("{ok}created = \"2026-01-02T03:04:05Z\"\n");
        assert!(parse(&with_created).unwrap().active().created().is_some());
        assert!(is_invalid(parse(&format!("{ok}created = \"yesterday\"\n"))));
        assert!(is_invalid(parse(
            &ok.replace("active = \"k1\"", "active = \"k2\"")
        )));
        assert!(is_invalid(parse(&format!(
            "{ok}[[keys]]\nid = \"k1\"\nkey = \"{k}\"\n"
        ))));
        assert!(is_invalid(parse(&ok.replace(&k, &k[..62]))));
        assert!(is_invalid(parse(&ok.replace(&k, &"zz".repeat(32)))));
        assert!(is_invalid(parse(&ok.replace("id = \"k1\"", "id = \"-k\""))));
        assert!(is_invalid(parse(&format!("{ok}extra = 1\n"))));
        assert!(is_invalid(parse("active = \"k1\"\nkeys = []\n")));
        assert!(is_invalid(parse("not toml")));
        // Reasons never echo key material.
        let err = parse(&ok.replace(&k, &format!("{}g", &k[..63]))).unwrap_err();
        assert!(!err.to_string().contains(&k[..63]), "{err}");
    }

    #[test]
    fn bad_keys_name_the_origin_and_key() {
        let k1 = id("k1");
        let short = decode_key("ab", "test", &k1).unwrap_err();
        assert_eq!(
            short.to_string(),
            "invalid keyring in test: key k1: expected 64 hex digits (32 bytes), got 2 characters"
        );
        let not_hex = decode_key(&"zz".repeat(32), ENV_ORIGIN, &k1).unwrap_err();
        assert_eq!(
            not_hex.to_string(),
            "invalid keyring in environment value: key k1: not hex"
        );
    }

    #[test]
    fn saved_text_parses_back() {
        let mut ring = Keyring::generate(id("a"));
        ring.rotate(id("b.2")).unwrap();
        let back = parse(&ring.to_toml()).unwrap();
        assert_eq!(back.active().id().as_str(), "b.2");
        assert_eq!(
            back.get(&id("a")).unwrap().key_bytes(),
            ring.get(&id("a")).unwrap().key_bytes()
        );
    }

    #[test]
    fn env_values() {
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        let ring = Keyring::from_env_value(&format!("k2:{b}, k1:{a}")).unwrap();
        assert_eq!(ring.active().id().as_str(), "k2", "first is active");
        assert_eq!(ring.active().key_bytes(), &[0x22; 32]);
        assert_eq!(ring.get(&id("k1")).unwrap().key_bytes(), &[0x11; 32]);
        assert_eq!(ring.ids().count(), 2);
        assert!(Keyring::from_env_value(&format!("solo:{a}")).is_ok());

        for bad in [
            String::new(),
            "k1".to_string(),
            format!("k1:{}", &a[..62]),
            format!("k1:{}", "xy".repeat(32)),
            format!("k1:{a},k1:{b}"),
            format!("-k:{a}"),
            format!("k1:{a},"),
        ] {
            let err = Keyring::from_env_value(&bad).unwrap_err();
            assert!(matches!(err, CryptoError::InvalidKeyring { .. }), "{bad}");
            assert!(!err.to_string().contains(&a[..40]), "{err}");
        }
    }
}
