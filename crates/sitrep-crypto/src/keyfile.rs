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

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use zeroize::Zeroizing;

use crate::{HpkeSecretKey, SigningKey, VerifyingKey};

/// PEM label (RFC 7468) of a PKCS#8 private key.
const PRIVATE_KEY: &str = "PRIVATE KEY";
/// PEM label (RFC 7468) of a SubjectPublicKeyInfo.
const PUBLIC_KEY: &str = "PUBLIC KEY";

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

/// Reads a key file whose first PEM block must be labelled `label`, the PEM kind of
/// `T`, and decodes that block with rustls-pki-types.
fn read_pem<T: PemObject>(path: &Path, label: &str) -> Result<T, KeyFileError> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| err(path, e.to_string()))?);
    // rustls-pki-types skips blocks of other kinds without saying what they were, so
    // the label is checked here first, for a message that names what the file holds.
    match first_label(&text) {
        None => return Err(err(path, format!("not PEM: no -----BEGIN {label}----- line"))),
        Some(found) if found != label => {
            return Err(err(path, format!("PEM block is {found:?}, want {label:?}")));
        }
        Some(_) => {}
    }
    T::from_pem_slice(&text).map_err(|e| err(path, format!("not PEM: {e}")))
}

/// The label of the first `-----BEGIN <label>-----` line, cut to 64 characters.
/// Labels are never secret; they are only shown in errors.
fn first_label(text: &[u8]) -> Option<String> {
    text.split(|b| *b == b'\n' || *b == b'\r').find_map(|line| {
        let label = line
            .strip_prefix(b"-----BEGIN ")?
            .trim_ascii_end()
            .strip_suffix(b"-----")?;
        Some(String::from_utf8_lossy(label).chars().take(64).collect())
    })
}

/// Writes one PEM block labelled `label` to a new file.
///
/// Encoding uses the `pem` crate: rustls-pki-types (1.x) only decodes PEM.
fn write_pem(path: &Path, label: &str, der: &[u8], private: bool) -> Result<(), KeyFileError> {
    // `Pem` takes its own copy of the DER and would not zero it: take it back and zero
    // it. The encoded text is zeroed on drop.
    let block = pem::Pem::new(label, der.to_vec());
    let text = Zeroizing::new(pem::encode(&block));
    drop(Zeroizing::new(block.into_contents()));
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
    let der = Zeroizing::new(read_pem::<PrivatePkcs8KeyDer<'static>>(path, PRIVATE_KEY)?);
    SigningKey::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| err(path, e.to_string()))
}

/// Writes an Ed25519 signing key, mode `0600`; refuses to overwrite.
///
/// # Errors
/// [`KeyFileError`] if the file exists or cannot be written.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    write_pem(path, PRIVATE_KEY, key.pkcs8(), true)
}

/// Reads an X25519 HPKE private key (PKCS#8 PEM).
///
/// # Errors
/// [`KeyFileError`] if the file is missing, not PEM or not an X25519 key.
pub fn read_hpke_key(path: &Path) -> Result<HpkeSecretKey, KeyFileError> {
    let der = Zeroizing::new(read_pem::<PrivatePkcs8KeyDer<'static>>(path, PRIVATE_KEY)?);
    let raw = der
        .secret_pkcs8_der()
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
    write_pem(path, PRIVATE_KEY, &der, true)
}

/// Reads an Ed25519 public key (SPKI PEM), e.g. the administrator's `admin.pub`.
///
/// # Errors
/// [`KeyFileError`] if the file is missing, not PEM or not an Ed25519 key.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyFileError> {
    let der = read_pem::<SubjectPublicKeyInfoDer<'static>>(path, PUBLIC_KEY)?;
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
    write_pem(path, PUBLIC_KEY, &der, false)
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

    #[test]
    fn a_key_file_with_another_pem_block_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let want = |label: &str, wanted: &str| format!("PEM block is {label:?}, want {wanted:?}");

        // What `ssh-keygen` writes: PEM armour around a key that is not PKCS#8. An
        // unknown label, which rustls-pki-types alone would skip without naming.
        let ssh = dir.path().join("id_ed25519");
        std::fs::write(
            &ssh,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .expect("write");
        let e = read_signing_key(&ssh).expect_err("not PKCS#8");
        assert_eq!(e.path, ssh);
        assert_eq!(e.problem, want("OPENSSH PRIVATE KEY", PRIVATE_KEY));
        assert!(e.to_string().contains("id_ed25519"), "{e}");
        let e = read_hpke_key(&ssh).expect_err("not PKCS#8");
        assert_eq!(e.problem, want("OPENSSH PRIVATE KEY", PRIVATE_KEY));

        // Known labels of the wrong kind: a public key where a private key is wanted,
        // and the other way round.
        let sk = SigningKey::generate().expect("rng");
        let (private, public) = (dir.path().join("s.key"), dir.path().join("s.pub"));
        write_signing_key(&private, &sk).expect("write");
        write_verifying_key(&public, &sk.verifying_key()).expect("write");
        let e = read_signing_key(&public).expect_err("a public key is no private key");
        assert_eq!(e.problem, want(PUBLIC_KEY, PRIVATE_KEY));
        let e = read_verifying_key(&private).expect_err("a private key is no public key");
        assert_eq!(e.problem, want(PRIVATE_KEY, PUBLIC_KEY));

        // No PEM at all, and a broken block of the right kind.
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "not a key\n").expect("write");
        let e = read_signing_key(&junk).expect_err("no PEM");
        assert_eq!(e.problem, "not PEM: no -----BEGIN PRIVATE KEY----- line");
        let torn = dir.path().join("torn.key");
        std::fs::write(&torn, "-----BEGIN PRIVATE KEY-----\nMC4CAQAw\n").expect("write");
        let e = read_signing_key(&torn).expect_err("no END line");
        assert!(e.problem.starts_with("not PEM: "), "{e}");
    }
}
