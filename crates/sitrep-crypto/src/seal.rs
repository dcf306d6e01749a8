//! Sealing a content key to one recipient with HPKE (RFC 9180).
//!
//! Suite: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305. The `info` string names sitrep's use and version; the
//! associated data binds the wrap to one message and one recipient.

use std::fmt;

use hpke::{
    Deserializable, Kem as _, OpModeR, OpModeS, Serializable, aead::ChaCha20Poly1305, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use zeroize::Zeroizing;

use crate::{CryptoError, random_bytes};

type Kem = X25519HkdfSha256;

/// Length of an X25519 key, public or private.
pub const KEY_LEN: usize = 32;

/// A recipient's static X25519 private key.
pub struct HpkeSecretKey(Zeroizing<[u8; KEY_LEN]>);

/// A recipient's X25519 public key, as published in the roster.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HpkePublicKey([u8; KEY_LEN]);

/// One sealed content key: the HPKE encapsulated key and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// HPKE `enc` (32 bytes).
    pub enc: Vec<u8>,
    /// The sealed key with its tag.
    pub ciphertext: Vec<u8>,
}

impl HpkeSecretKey {
    /// A fresh random key.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(raw.as_mut())?;
        // Reject the (astronomically unlikely) bytes hpke would not accept.
        Self::from_bytes(raw.as_ref())
    }

    /// Wraps 32 raw private-key bytes.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] on a wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let raw: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::BadKey {
            what: "X25519 private",
            problem: format!("{} bytes, want {KEY_LEN}", bytes.len()),
        })?;
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&raw).map_err(|e| CryptoError::BadKey {
            what: "X25519 private",
            problem: e.to_string(),
        })?;
        Ok(Self(Zeroizing::new(raw)))
    }

    /// The raw private key, for writing to a key file.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn hpke_key(&self) -> Result<<Kem as hpke::Kem>::PrivateKey, CryptoError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(self.0.as_ref()).map_err(|_| CryptoError::Open)
    }

    /// The public half.
    ///
    /// # Panics
    /// Never: the bytes were checked by [`Self::from_bytes`].
    #[must_use]
    pub fn public_key(&self) -> HpkePublicKey {
        #[allow(clippy::expect_used)]
        let sk = self.hpke_key().expect("checked at construction");
        let pk = Kem::sk_to_pk(&sk);
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&pk.to_bytes());
        HpkePublicKey(out)
    }

    /// Opens a key wrap made by [`HpkePublicKey::seal`] with the same `info`
    /// and `aad`.
    ///
    /// # Errors
    /// [`CryptoError::Open`] if the wrap was not made for this key, or `enc`,
    /// the ciphertext, `info` or `aad` differ.
    pub fn open(
        &self,
        info: &[u8],
        aad: &[u8],
        wrapped: &Wrapped,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&wrapped.enc).map_err(|_| CryptoError::Open)?;
        let sk = self.hpke_key()?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            info,
            &wrapped.ciphertext,
            aad,
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Open)
    }
}

impl HpkePublicKey {
    /// Wraps 32 raw public-key bytes.
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] on a wrong length or a key hpke refuses.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let raw: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::BadKey {
            what: "X25519 public",
            problem: format!("{} bytes, want {KEY_LEN}", bytes.len()),
        })?;
        <Kem as hpke::Kem>::PublicKey::from_bytes(&raw).map_err(|e| CryptoError::BadKey {
            what: "X25519 public",
            problem: e.to_string(),
        })?;
        Ok(Self(raw))
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Seals `secret` (a content key) to this recipient.
    ///
    /// # Errors
    /// [`CryptoError::Seal`] if encapsulation fails (e.g. a low-order key).
    pub fn seal(&self, info: &[u8], aad: &[u8], secret: &[u8]) -> Result<Wrapped, CryptoError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&self.0).map_err(|_| CryptoError::Seal)?;
        let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk,
            info,
            secret,
            aad,
        )
        .map_err(|_| CryptoError::Seal)?;
        Ok(Wrapped {
            enc: enc.to_bytes().to_vec(),
            ciphertext,
        })
    }
}

impl fmt::Debug for HpkeSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpkeSecretKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HpkePublicKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_only_for_the_recipient() {
        let alice = HpkeSecretKey::generate().expect("rng");
        let bob = HpkeSecretKey::generate().expect("rng");
        let w = alice
            .public_key()
            .seal(b"info", b"aad", &[7u8; 32])
            .expect("seal");
        assert_eq!(w.enc.len(), 32);
        assert_eq!(
            alice.open(b"info", b"aad", &w).expect("open").as_slice(),
            &[7u8; 32]
        );
        assert_eq!(bob.open(b"info", b"aad", &w).map(|_| ()), Err(CryptoError::Open));
        assert_eq!(
            alice.open(b"info", b"aaX", &w).map(|_| ()),
            Err(CryptoError::Open)
        );
        assert_eq!(
            alice.open(b"infX", b"aad", &w).map(|_| ()),
            Err(CryptoError::Open)
        );
        let mut bad = w.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(
            alice.open(b"info", b"aad", &bad).map(|_| ()),
            Err(CryptoError::Open)
        );
    }

    #[test]
    fn key_bytes_roundtrip() {
        let k = HpkeSecretKey::generate().expect("rng");
        let again = HpkeSecretKey::from_bytes(k.as_bytes()).expect("load");
        assert_eq!(k.public_key(), again.public_key());
        assert!(HpkeSecretKey::from_bytes(&[1u8; 31]).is_err());
        assert!(HpkePublicKey::from_bytes(&[1u8; 33]).is_err());
    }
}
