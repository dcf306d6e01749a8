//! Ed25519 signatures over a domain-separation prefix: made with ring,
//! checked with ed25519-dalek (one at a time, or many at once).

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair as _};
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
        VerifyingKey::from_array(key)
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

/// An Ed25519 public key: its 32 bytes, and the point they encode,
/// decompressed once (`None` if they encode no point, or a point of small
/// order: such a key verifies nothing).
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    bytes: [u8; PUBLIC_KEY_LEN],
    point: Option<ed25519_dalek::VerifyingKey>,
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for VerifyingKey {}

impl std::hash::Hash for VerifyingKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

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
        Ok(Self::from_array(key))
    }

    fn from_array(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        let point = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .ok()
            .filter(|p| !p.is_weak());
        Self { bytes, point }
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// Verifies `signature` over `domain || message`: [`verify_batch`] of
    /// one, so that one signature gets the same answer alone as in a batch.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if it does not verify.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let signed = Signed::new(self, domain, message, signature);
        verify_batch(std::slice::from_ref(&signed))
            .pop()
            .unwrap_or(Err(CryptoError::BadSignature))
    }
}

/// One signature to check: by `key`, over `domain || message` (the
/// concatenation is made here, once).
#[derive(Debug, Clone)]
pub struct Signed {
    key: VerifyingKey,
    signed: Vec<u8>,
    signature: Option<ed25519_dalek::Signature>,
}

impl Signed {
    /// A signature to check. One of the wrong length never verifies.
    #[must_use]
    pub fn new(key: &VerifyingKey, domain: &[u8], message: &[u8], signature: &[u8]) -> Self {
        debug_assert_eq!(domain.last(), Some(&0), "domain prefixes end in NUL");
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        Self {
            key: *key,
            signed,
            signature: ed25519_dalek::Signature::from_slice(signature).ok(),
        }
    }
}

/// Checks many signatures at once, one answer per item in order.
///
/// The items that can be checked at all (a key that is a point of large
/// order, a signature of 64 bytes) are checked together with ed25519-dalek's
/// batch equation, which costs about half a single check per signature in
/// batches of 8 or more. If the batch fails, each of its items is checked
/// alone, with the same equation, so that a bad signature fails only
/// itself: a batch holding one bad signature costs about twice a good one.
///
/// The equation is the cofactored one (`[8][s]B = [8]R + [8][k]A`).
/// Signatures made by an honest signer (RFC 8032, as ring signs) pass it
/// exactly when they pass the cofactorless check; only a key holder can
/// make a signature that one accepts and the other refuses, and every
/// check in sitrep uses this one. Keys of small order are refused outright.
#[must_use]
pub fn verify_batch(items: &[Signed]) -> Vec<Result<(), CryptoError>> {
    let mut out: Vec<Result<(), CryptoError>> =
        items.iter().map(|_| Err(CryptoError::BadSignature)).collect();
    let checkable: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].key.point.is_some() && items[i].signature.is_some())
        .collect();
    let check = |which: &[usize]| -> bool {
        let mut messages = Vec::with_capacity(which.len());
        let mut signatures = Vec::with_capacity(which.len());
        let mut keys = Vec::with_capacity(which.len());
        for &i in which {
            let (Some(key), Some(sig)) = (items[i].key.point, items[i].signature) else {
                return false;
            };
            messages.push(items[i].signed.as_slice());
            signatures.push(sig);
            keys.push(key);
        }
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    if checkable.is_empty() {
        return out;
    }
    if check(&checkable) {
        for i in checkable {
            out[i] = Ok(());
        }
    } else if checkable.len() > 1 {
        for i in checkable {
            if check(&[i]) {
                out[i] = Ok(());
            }
        }
    }
    out
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey(")?;
        for b in &self.bytes[..8] {
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
    fn a_batch_answers_each_signature_on_its_own() {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate().expect("rng")).collect();
        let messages: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + usize::from(i) * 200]).collect();
        let mut items: Vec<Signed> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let k = &keys[i % 3];
                Signed::new(&k.verifying_key(), D, m, &k.sign(D, m))
            })
            .collect();
        assert!(verify_batch(&items).iter().all(Result::is_ok), "all good");
        assert!(verify_batch(&[]).is_empty());

        // Four kinds of bad, spread through the batch.
        let sig = keys[0].sign(D, &messages[3]);
        items[3] = Signed::new(&keys[0].verifying_key(), D, b"not what was signed", &sig);
        items[7] = Signed::new(
            &keys[2].verifying_key(),
            D,
            &messages[7],
            &keys[1].sign(D, &messages[7]),
        );
        items[11] = Signed::new(&keys[2].verifying_key(), D, &messages[11], &sig[..63]);
        items[15] = Signed::new(
            &keys[0].verifying_key(),
            b"sitrep/other\0",
            &messages[15],
            &keys[0].sign(D, &messages[15]),
        );
        let answers = verify_batch(&items);
        for (i, a) in answers.iter().enumerate() {
            if [3, 7, 11, 15].contains(&i) {
                assert_eq!(a, &Err(CryptoError::BadSignature), "item {i}");
            } else {
                assert_eq!(a, &Ok(()), "item {i}");
            }
        }
        // Alone, each gets the answer it got in the batch.
        for (item, a) in items.iter().zip(&answers) {
            assert_eq!(&verify_batch(std::slice::from_ref(item)).remove(0), a);
        }
    }

    #[test]
    fn a_key_of_small_order_verifies_nothing() {
        // The identity point as a key: with it, R = [s]B satisfies the
        // equation for every message, without any private key.
        let mut identity = [0u8; PUBLIC_KEY_LEN];
        identity[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).expect("32 bytes");
        let mut forged = [0x66u8; SIGNATURE_LEN];
        forged[0] = 0x58; // R = B, the base point
        forged[32..].fill(0);
        forged[32] = 1; // s = 1
        assert_eq!(
            key.verify(D, b"anything", &forged),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify_batch(&[Signed::new(&key, D, b"anything", &forged)]),
            vec![Err(CryptoError::BadSignature)]
        );
        // Bytes that encode no point at all verify nothing either.
        let mut not_a_point = [0xffu8; PUBLIC_KEY_LEN];
        not_a_point[31] = 0x7f;
        let key = VerifyingKey::from_bytes(&not_a_point).expect("32 bytes");
        assert_eq!(
            key.verify(D, b"anything", &forged),
            Err(CryptoError::BadSignature)
        );
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
