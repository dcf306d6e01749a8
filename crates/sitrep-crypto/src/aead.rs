//! Payload encryption: AES-256-GCM (ring) under a fresh content key per message.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{CryptoError, random_bytes};

/// Length of a content key.
pub const KEY_LEN: usize = 32;
/// Length of the GCM tag appended to each ciphertext.
pub const TAG_LEN: usize = 16;

/// A 256-bit content key, used for exactly one payload.
///
/// Because every key encrypts exactly one message, the nonce is fixed at
/// zero: (key, nonce) never repeats, which is all GCM needs.
pub struct ContentKey(Zeroizing<[u8; KEY_LEN]>);

impl ContentKey {
    /// A fresh random key.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(key.as_mut())?;
        Ok(Self(key))
    }

    /// Wraps key bytes recovered from a key wrap.
    ///
    /// # Errors
    /// [`CryptoError::Open`] if `bytes` is not 32 bytes long (a key wrap
    /// that decrypts to anything else was not made by us).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::Open)?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// The raw key, for sealing it to recipients.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.0.as_ref()).map_err(|_| CryptoError::Seal)?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Encrypts `plaintext` with `aad` as associated data; returns
    /// ciphertext with the tag appended. Use each key for one message only.
    ///
    /// # Errors
    /// [`CryptoError::Seal`] if ring refuses (it does not for valid sizes).
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.aead()?
            .seal_in_place_append_tag(zero_nonce(), Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Seal)?;
        Ok(buf)
    }

    /// Decrypts and authenticates `ciphertext` (tag appended) with `aad`.
    ///
    /// # Errors
    /// [`CryptoError::Open`] if the key, the ciphertext or `aad` is wrong.
    pub fn decrypt(&self, aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .aead()?
            .open_in_place(zero_nonce(), Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| CryptoError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; NONCE_LEN])
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_tamper_fails() {
        let key = ContentKey::generate().expect("rng");
        let ct = key.encrypt(b"header", b"payload").expect("seal");
        assert_eq!(ct.len(), 7 + TAG_LEN);
        assert_eq!(key.decrypt(b"header", &ct).expect("open").as_slice(), b"payload");
        assert_eq!(key.decrypt(b"headex", &ct).map(|_| ()), Err(CryptoError::Open));
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                key.decrypt(b"header", &bad).map(|_| ()),
                Err(CryptoError::Open),
                "byte {i}"
            );
        }
        let other = ContentKey::generate().expect("rng");
        assert_eq!(other.decrypt(b"header", &ct).map(|_| ()), Err(CryptoError::Open));
    }
}
