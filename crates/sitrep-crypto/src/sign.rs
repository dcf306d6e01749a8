//! Ed25519 signatures (ring) over a domain-separation prefix.

use std::fmt;

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// An Ed25519 private key. The PKCS#8 document it was loaded from is kept
/// zeroized-on-drop so it can be written back to a key file.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl SigningKey {
    /// Generates a fresh key from the system CSPRNG.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| CryptoError::Rng)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Loads a key from a PKCS#8 (v1 or v2) document.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] if the document is not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CryptoError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| CryptoError::BadKey {
            what: "Ed25519 private",
            problem: e.to_string(),
        })?;
        Ok(Self {
            pair,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// The PKCS#8 document, for writing to a key file.
    #[must_use]
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half.
    #[must_use]
    pub fn verifying_key(&self) -> VerifyingKey {
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key.copy_from_slice(self.pair.public_key().as_ref());
        VerifyingKey(key)
    }

    /// Signs `domain || message`. `domain` must end in a NUL byte so that no
    /// domain is a prefix of another.
    #[must_use]
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; SIGNATURE_LEN] {
        debug_assert_eq!(domain.last(), Some(&0), "domain prefixes end in NUL");
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        let sig = self.pair.sign(&buf);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.verifying_key())
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey([u8; PUBLIC_KEY_LEN]);

impl VerifyingKey {
    /// Wraps 32 raw bytes.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] if `bytes` is not 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::BadKey {
            what: "Ed25519 public",
            problem: format!("{} bytes, want {PUBLIC_KEY_LEN}", bytes.len()),
        })?;
        Ok(Self(key))
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Verifies `signature` over `domain || message`.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if it does not verify.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(CryptoError::BadSignature);
        }
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&buf, signature)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &[u8] = b"sitrep/test\0";

    #[test]
    fn sign_verify_roundtrip_and_tamper() {
        let key = SigningKey::generate().expect("rng");
        let sig = key.sign(D, b"hello");
        let pk = key.verifying_key();
        assert_eq!(pk.verify(D, b"hello", &sig), Ok(()));
        assert_eq!(pk.verify(D, b"hellp", &sig), Err(CryptoError::BadSignature));
        assert_eq!(
            pk.verify(b"sitrep/other\0", b"hello", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(pk.verify(D, b"hello", &sig[..63]), Err(CryptoError::BadSignature));
        let other = SigningKey::generate().expect("rng").verifying_key();
        assert_eq!(other.verify(D, b"hello", &sig), Err(CryptoError::BadSignature));
    }

    #[test]
    fn pkcs8_roundtrip_keeps_the_key() {
        let key = SigningKey::generate().expect("rng");
        let again = SigningKey::from_pkcs8(key.pkcs8()).expect("own pkcs8 loads");
        assert_eq!(key.verifying_key(), again.verifying_key());
        assert!(SigningKey::from_pkcs8(&key.pkcs8()[1..]).is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let key = SigningKey::generate().expect("rng");
        let shown = format!("{key:?}");
        assert!(shown.starts_with("SigningKey"));
        let hex: String = key.pkcs8().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[hex.len() - 16..]));
    }
}
