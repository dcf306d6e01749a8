//! Key files: PEM with standard DER inside, so `openssl pkey` can read them.
//!
//! - Ed25519 private key: `PRIVATE KEY`, PKCS#8 (RFC 8410).
//! - X25519 private key: `PRIVATE KEY`, PKCS#8 (RFC 8410).
//! - Ed25519 public key: `PUBLIC KEY`, SubjectPublicKeyInfo (RFC 8410).
//!
//! Private key files are created with mode `0600` and never overwritten.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{HpkeSecretKey, SigningKey, VerifyingKey};

/// PKCS#8 prefix of an X25519 private key (OID 1.3.101.110), before the 32 key bytes.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];
/// SPKI prefix of an Ed25519 public key (OID 1.3.101.112), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key file could not be read or written. Names the file and the problem;
/// never contains key material.
#[derive(Debug, thiserror::Error)]
#[error("key file {}: {problem}", path.display())]
pub struct KeyFileError {
    /// The file.
    pub path: PathBuf,
    /// What was wrong.
    pub problem: String,
}

fn err(path: &Path, problem: impl Into<String>) -> KeyFileError {
    KeyFileError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn read_pem(path: &Path, tag: &str) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| err(path, e.to_string()))?);
    let pem = pem::parse(text.as_slice()).map_err(|e| err(path, format!("not PEM: {e}")))?;
    if pem.tag() != tag {
        return Err(err(path, format!("PEM block is {:?}, want {tag:?}", pem.tag())));
    }
    Ok(Zeroizing::new(pem.into_contents()))
}

fn write_pem(path: &Path, tag: &str, der: &[u8], private: bool) -> Result<(), KeyFileError> {
    let text = Zeroizing::new(pem::encode(&pem::Pem::new(tag, der.to_vec())));
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = opts.open(path).map_err(|e| err(path, e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(path, e.to_string()))
}

/// Reads an Ed25519 signing key (PKCS#8 PEM).
///
/// # Errors
/// [`KeyFileError`] if the file is missing, not PEM or not an Ed25519 key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let der = read_pem(path, "PRIVATE KEY")?;
    SigningKey::from_pkcs8(&der).map_err(|e| err(path, e.to_string()))
}

/// Writes an Ed25519 signing key, mode `0600`; refuses to overwrite.
///
/// # Errors
/// [`KeyFileError`] if the file exists or cannot be written.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    write_pem(path, "PRIVATE KEY", key.pkcs8(), true)
}

/// Reads an X25519 HPKE private key (PKCS#8 PEM).
///
/// # Errors
/// [`KeyFileError`] if the file is missing, not PEM or not an X25519 key.
pub fn read_hpke_key(path: &Path) -> Result<HpkeSecretKey, KeyFileError> {
    let der = read_pem(path, "PRIVATE KEY")?;
    let raw = der
        .strip_prefix(&X25519_PKCS8_PREFIX[..])
        .ok_or_else(|| err(path, "not an X25519 PKCS#8 private key"))?;
    HpkeSecretKey::from_bytes(raw).map_err(|e| err(path, e.to_string()))
}

/// Writes an X25519 HPKE private key, mode `0600`; refuses to overwrite.
///
/// # Errors
/// [`KeyFileError`] if the file exists or cannot be written.
pub fn write_hpke_key(path: &Path, key: &HpkeSecretKey) -> Result<(), KeyFileError> {
    let mut der = Zeroizing::new(X25519_PKCS8_PREFIX.to_vec());
    der.extend_from_slice(key.as_bytes());
    write_pem(path, "PRIVATE KEY", &der, true)
}

/// Reads an Ed25519 public key (SPKI PEM), e.g. the administrator's `admin.pub`.
///
/// # Errors
/// [`KeyFileError`] if the file is missing, not PEM or not an Ed25519 key.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyFileError> {
    let der = read_pem(path, "PUBLIC KEY")?;
    let raw = der
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or_else(|| err(path, "not an Ed25519 public key"))?;
    VerifyingKey::from_bytes(raw).map_err(|e| err(path, e.to_string()))
}

/// Writes an Ed25519 public key (SPKI PEM); refuses to overwrite.
///
/// # Errors
/// [`KeyFileError`] if the file exists or cannot be written.
pub fn write_verifying_key(path: &Path, key: &VerifyingKey) -> Result<(), KeyFileError> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    write_pem(path, "PUBLIC KEY", &der, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip_through_files_with_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sk = SigningKey::generate().expect("rng");
        let hk = HpkeSecretKey::generate().expect("rng");
        let (a, b, c) = (
            dir.path().join("s.key"),
            dir.path().join("h.key"),
            dir.path().join("s.pub"),
        );
        write_signing_key(&a, &sk).expect("write");
        write_hpke_key(&b, &hk).expect("write");
        write_verifying_key(&c, &sk.verifying_key()).expect("write");
        assert_eq!(
            read_signing_key(&a).expect("read").verifying_key(),
            sk.verifying_key()
        );
        assert_eq!(read_hpke_key(&b).expect("read").public_key(), hk.public_key());
        assert_eq!(read_verifying_key(&c).expect("read"), sk.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&a).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwrite a key.
        assert!(write_signing_key(&a, &sk).is_err());
        // Wrong kinds are refused with the file named.
        let e = read_hpke_key(&a).expect_err("ed25519 is not x25519");
        assert!(e.to_string().contains("s.key"), "{e}");
        assert!(read_signing_key(&c).is_err());
        assert!(read_verifying_key(&dir.path().join("missing")).is_err());
    }
}
