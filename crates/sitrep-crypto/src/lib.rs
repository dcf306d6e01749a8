//! Message cryptography for sitrep, built from audited primitives only.
//!
//! - [`sign`]: Ed25519 signing (ring) and verification (ed25519-zebra, one
//!   at a time or in batches), always over a domain-separation prefix so a
//!   signature made for one purpose (an envelope) can never be replayed as
//!   another (a roster).
//! - [`hpke`](mod@seal): sealing a content key to a recipient's static X25519 key
//!   with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//!   ChaCha20-Poly1305). ring cannot do static-key X25519, hence the `hpke` crate.
//! - [`aead`]: AES-256-GCM with ring for payloads, under a fresh key per message.
//! - [`keyfile`]: reading and writing key files (PEM, PKCS#8 / SPKI), with
//!   private keys written `0600`.
//!
//! Not here: what is signed or sealed (`sitrep-core`), and anything async or
//! networked. Secret key material is held in [`zeroize::Zeroizing`] buffers
//! and is never printed: `Debug` on secret types shows only the public part.

pub mod aead;
pub mod keyfile;
pub mod seal;
pub mod sign;

pub use aead::ContentKey;
pub use seal::{HpkePublicKey, HpkeSecretKey};
pub use sign::{SigningKey, VerifyingKey};

use ring::rand::{SecureRandom, SystemRandom};

/// Errors from the primitives. Deliberately coarse where detail would help
/// an attacker (a failed open says only that it failed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A key had the wrong length or encoding.
    #[error("malformed {what} key: {problem}")]
    BadKey {
        /// Which key: "Ed25519 public", "X25519 private", ...
        what: &'static str,
        /// What was wrong.
        problem: String,
    },
    /// HPKE encapsulation or AEAD encryption failed.
    #[error("sealing failed")]
    Seal,
    /// HPKE decapsulation or AEAD decryption failed: wrong key, or the
    /// ciphertext, its associated data or its key wrap was altered.
    #[error("decryption failed")]
    Open,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Rng,
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`CryptoError::Rng`] if the OS generator fails.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(buf).map_err(|_| CryptoError::Rng)
}

/// SHA-256 of `data`.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
