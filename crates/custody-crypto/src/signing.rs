//! The node's Ed25519 signing key: it signs evidence manifests so that a
//! court's expert can check them offline with standard tools (`openssl
//! pkeyutl -verify -rawin`). The private half is a 0600 file next to the
//! keyring (32-byte seed, hex); the public half is exported as a PEM
//! `SubjectPublicKeyInfo` and identified by a key id (the first 16 hex digits
//! of the SHA-256 of the raw 32-byte public key).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use base64::Engine;
use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};

use crate::keyring::{
    check_private, create_private_dir, io_err, open_private_new, parent_dir, sync_dir,
};
use crate::CryptoError;

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A node's Ed25519 signing key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> SigningKey {
        let seed: [u8; 32] = rand::random();
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key file (refusing one accessible by group or others), or
    /// creates it (mode 0600, parent 0700) with a fresh key.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<SigningKey, CryptoError> {
        let path = path.as_ref();
        match File::open(path) {
            Ok(mut file) => {
                let md = file.metadata().map_err(io_err(path))?;
                check_private(path, &md)?;
                let mut text = String::new();
                (&mut file)
                    .take(256)
                    .read_to_string(&mut text)
                    .map_err(io_err(path))?;
                let bad = |reason: String| CryptoError::InvalidKeyring {
                    origin: path.display().to_string(),
                    reason,
                };
                let seed: [u8; 32] = hex::decode(text.trim())
                    .map_err(|e| bad(format!("signing key: {e}")))?
                    .try_into()
                    .map_err(|_| bad("signing key: expected 64 hex digits".to_string()))?;
                Ok(SigningKey {
                    key: ed25519_dalek::SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let key = SigningKey::generate();
                let dir = parent_dir(path);
                create_private_dir(dir)?;
                let mut file = match open_private_new(path) {
                    Ok(f) => f,
                    // Lost a race with another creator: use its file.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return SigningKey::load_or_create(path)
                    }
                    Err(e) => return Err(io_err(path)(e)),
                };
                let text = format!("{}\n", hex::encode(key.key.to_bytes()));
                if let Err(e) = file
                    .write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                {
                    drop(file);
                    let _ = std::fs::remove_file(path);
                    return Err(io_err(path)(e));
                }
                sync_dir(dir)?;
                Ok(key)
            }
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// The raw 32-byte public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The key id: the first 16 hex digits of SHA-256(public key).
    pub fn key_id(&self) -> String {
        key_id_of(&self.public_bytes())
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), as openssl reads it.
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.public_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// Signs `message` (pure Ed25519, RFC 8032): 64 raw bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(message).to_bytes()
    }
}

/// The key id of a raw 32-byte Ed25519 public key.
pub fn key_id_of(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The raw 32-byte key of an Ed25519 public key in PEM.
pub fn public_key_from_pem(pem: &str) -> Result<[u8; 32], CryptoError> {
    let bad = |m: &str| CryptoError::InvalidPublicKey(m.to_string());
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PUBLIC KEY-----")
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("PEM body is not base64"))?;
    if der.len() != SPKI_PREFIX.len() + 32 || der[..SPKI_PREFIX.len()] != SPKI_PREFIX {
        return Err(bad("not an Ed25519 SubjectPublicKeyInfo"));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&der[SPKI_PREFIX.len()..]);
    Ok(key)
}

/// Checks a raw 64-byte Ed25519 signature of `message` under a PEM public key.
pub fn verify_signature(pem: &str, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let public = public_key_from_pem(pem)?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
        .map_err(|e| CryptoError::InvalidPublicKey(e.to_string()))?;
    let sig: [u8; SIGNATURE_LEN] = signature.try_into().map_err(|_| {
        CryptoError::BadSignature(format!(
            "expected {SIGNATURE_LEN} raw bytes, got {}",
            signature.len()
        ))
    })?;
    key.verify(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| CryptoError::BadSignature("wrong key or changed message".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("signing.key");
        let k = SigningKey::load_or_create(&path).unwrap();
        let again = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(k.public_bytes(), again.public_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let pem = k.public_pem();
        assert_eq!(public_key_from_pem(&pem).unwrap(), k.public_bytes());
        let sig = k.sign(b"manifest");
        verify_signature(&pem, b"manifest", &sig).unwrap();
        assert!(verify_signature(&pem, b"manifest!", &sig).is_err());
        let other = SigningKey::generate().public_pem();
        assert!(verify_signature(&other, b"manifest", &sig).is_err());
        assert!(verify_signature(&pem, b"manifest", &sig[..63]).is_err());
        assert_eq!(k.key_id().len(), 16);
    }
}
