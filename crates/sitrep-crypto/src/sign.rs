//! Ed25519 signatures over a domain-separation prefix: made with ring,
//! checked with ed25519-zebra (one at a time, or many at once).

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

/// An Ed25519 public key: its 32 bytes, and, if they encode a point of
/// large order, that point ready for checks (`None` otherwise: such a key
/// verifies nothing).
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    bytes: [u8; PUBLIC_KEY_LEN],
    point: Option<ed25519_zebra::VerificationKey>,
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
        // ZIP-215 takes keys of small order (consensus needs it); with one
        // as a key anybody could make a signature that verifies: not here.
        let large = curve25519_dalek::edwards::CompressedEdwardsY(bytes)
            .decompress()
            .is_some_and(|p| !p.is_small_order());
        let point = large
            .then(|| ed25519_zebra::VerificationKey::try_from(bytes).ok())
            .flatten();
        Self { bytes, point }
    }

    /// The raw 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// Verifies `signature` over `domain || message`, with the equation
    /// [`verify_batch`] uses, so that a signature gets the same answer alone
    /// as in any batch.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if it does not verify.
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        Signed::new(self, domain, message, signature).check().map(|_| ())
    }
}

/// A signature that verified: only [`Signed::check`] and [`verify_batch`]
/// make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Valid(());

/// One signature to check: by `key`, over `domain || message` (the
/// concatenation is made here, once).
#[derive(Clone)]
pub struct Signed {
    key: VerifyingKey,
    signed: Vec<u8>,
    /// `None` if it cannot verify: not 64 bytes, or `s` not below the group
    /// order (refused here, so that it cannot fail a batch it is in).
    signature: Option<ed25519_zebra::Signature>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the signed bytes: they can be megabytes.
        f.debug_struct("Signed")
            .field("key", &self.key)
            .field("signed_bytes", &self.signed.len())
            .finish_non_exhaustive()
    }
}

impl Signed {
    /// A signature to check.
    #[must_use]
    pub fn new(key: &VerifyingKey, domain: &[u8], message: &[u8], signature: &[u8]) -> Self {
        debug_assert_eq!(domain.last(), Some(&0), "domain prefixes end in NUL");
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        let signature = <[u8; SIGNATURE_LEN]>::try_from(signature)
            .ok()
            .filter(|sig| {
                let mut s = [0u8; 32];
                s.copy_from_slice(&sig[32..]);
                bool::from(curve25519_dalek::Scalar::from_canonical_bytes(s).is_some())
            })
            .map(|sig| ed25519_zebra::Signature::from_bytes(&sig));
        Self {
            key: *key,
            signed,
            signature,
        }
    }

    /// How many bytes are signed (what checking it hashes).
    #[must_use]
    pub fn len(&self) -> usize {
        self.signed.len()
    }

    /// Whether nothing is signed (never, with a domain prefix).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.signed.is_empty()
    }

    /// Checks this signature alone, with the equation [`verify_batch`] uses.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if it does not verify.
    pub fn check(&self) -> Result<Valid, CryptoError> {
        match (&self.key.point, &self.signature) {
            (Some(key), Some(sig)) => key
                .verify(sig, &self.signed)
                .map(|()| Valid(()))
                .map_err(|_| CryptoError::BadSignature),
            _ => Err(CryptoError::BadSignature),
        }
    }
}

/// Checks many signatures at once, one answer per item, in order.
///
/// The equation is ZIP-215's cofactored one, `[8][s]B = [8]R + [8][k]A`,
/// alone ([`VerifyingKey::verify`]) and in a batch (ed25519-zebra, random
/// coefficients from the OS): with it a batch accepts exactly the
/// signatures each of which is accepted alone, whatever else is in the
/// batch (for the cofactorless check, as ring's and ed25519-dalek's batch
/// are, that does not hold). A signature an honest signer makes (RFC 8032,
/// as ring signs) passes it exactly when it passes ring's check; only a key
/// holder can make one that the two answer differently, and every check in
/// sitrep uses this one.
///
/// Items that cannot verify (a key of small order or not a point, a
/// signature of the wrong length or with `s` out of range) are answered
/// without joining the batch. If the batch fails, each of its signatures is
/// checked alone, so that a bad signature fails only itself: such a batch
/// costs about what single checks of all its signatures would, plus the
/// batch (about 1.5× single checks, 3× a good batch).
///
/// # Panics
/// If the OS random generator fails (the batch's coefficients must be
/// unpredictable); the node's verifier answers its waiters with a
/// transient refusal then.
#[must_use]
pub fn verify_batch(items: &[Signed]) -> Vec<Result<Valid, CryptoError>> {
    let mut out: Vec<Result<Valid, CryptoError>> =
        items.iter().map(|_| Err(CryptoError::BadSignature)).collect();
    let checkable: Vec<(usize, ed25519_zebra::VerificationKey, ed25519_zebra::Signature)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| Some((i, item.key.point?, item.signature?)))
        .collect();
    match checkable.as_slice() {
        [] => {}
        [(i, ..)] => out[*i] = items[*i].check(),
        _ => {
            let mut batch = ed25519_zebra::batch::Verifier::new();
            for (i, key, sig) in &checkable {
                batch.queue((
                    ed25519_zebra::VerificationKeyBytes::from(*key),
                    *sig,
                    &items[*i].signed,
                ));
            }
            let rng = getrandom::rand_core::UnwrapErr(getrandom::SysRng);
            let all_good = batch.verify(rng).is_ok();
            for (i, ..) in &checkable {
                // A failed batch: each alone (halving costs more when many are bad).
                out[*i] = if all_good {
                    Ok(Valid(()))
                } else {
                    items[*i].check()
                };
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
                assert_eq!(a, &Ok(Valid(())), "item {i}");
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
        // The forgery does satisfy the equation: a key of large order would be needed to refuse it.
        let curve_says = curve25519_dalek::edwards::CompressedEdwardsY(identity)
            .decompress()
            .is_some_and(|p| p.is_small_order());
        assert!(curve_says, "the identity is of small order");
        assert_eq!(
            key.verify(D, b"anything", &forged),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify_batch(&[Signed::new(&key, D, b"anything", &forged)]),
            vec![Err(CryptoError::BadSignature)]
        );
        // Bytes that encode no point verify nothing either.
        let not_a_point = (2u8..)
            .map(|y| {
                let mut b = [0u8; PUBLIC_KEY_LEN];
                b[0] = y;
                b
            })
            .find(|b| {
                curve25519_dalek::edwards::CompressedEdwardsY(*b)
                    .decompress()
                    .is_none()
            })
            .expect("some small y is on no point");
        let key = VerifyingKey::from_bytes(&not_a_point).expect("32 bytes");
        assert_eq!(
            key.verify(D, b"anything", &forged),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn honest_signatures_get_ring_s_answer() {
        // An independent check of ours: ring's own verification.
        let key = SigningKey::generate().expect("rng");
        let other = SigningKey::generate().expect("rng");
        for len in [0usize, 1, 200, 4386] {
            let m = vec![0x5a_u8; len];
            let sig = key.sign(D, &m);
            let mut bad = sig;
            bad[10] ^= 1;
            for (k, sig, msg) in [
                (&key, &sig, &m[..]),
                (&key, &bad, &m[..]),
                (&other, &sig, &m[..]),
                (&key, &sig, &b"other"[..]),
            ] {
                let ring_says = ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ED25519,
                    k.verifying_key().as_bytes(),
                )
                .verify(&[D, msg].concat(), sig)
                .is_ok();
                assert_eq!(
                    k.verifying_key().verify(D, msg, sig).is_ok(),
                    ring_says,
                    "len {len}"
                );
            }
        }
    }

    /// A signature whose `R` carries a point of order 2, made with the
    /// private scalar: valid under the cofactored equation, not under the
    /// cofactorless one. With a cofactorless batch its answer would depend
    /// on its random coefficient (whatever else is in the batch); here it
    /// must be the same alone and in every batch.
    #[test]
    fn a_signature_with_a_small_order_part_gets_one_answer_alone_and_in_any_batch() {
        use curve25519_dalek::{EdwardsPoint, Scalar, edwards::CompressedEdwardsY};
        let wide = || {
            let mut b = [0u8; 64];
            crate::random_bytes(&mut b).expect("rng");
            Scalar::from_bytes_mod_order_wide(&b)
        };
        let a = wide();
        let public = EdwardsPoint::mul_base(&a).compress().to_bytes();
        let key = VerifyingKey::from_bytes(&public).expect("32 bytes");
        // (0, -1): the point of order 2.
        let mut t2 = [0xffu8; 32];
        t2[0] = 0xec;
        t2[31] = 0x7f;
        let t2 = CompressedEdwardsY(t2).decompress().expect("a point");
        assert!(t2.is_small_order() && t2 != EdwardsPoint::default());
        let sign_with_torsion = |msg: &[u8]| -> [u8; 64] {
            let r = wide();
            let big_r = (EdwardsPoint::mul_base(&r) + t2).compress().to_bytes();
            let signed = [D, msg].concat();
            let h = ring::digest::digest(
                &ring::digest::SHA512,
                &[&big_r[..], &public[..], &signed].concat(),
            );
            let mut hb = [0u8; 64];
            hb.copy_from_slice(h.as_ref());
            let s = r + Scalar::from_bytes_mod_order_wide(&hb) * a;
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&big_r);
            sig[32..].copy_from_slice(s.as_bytes());
            sig
        };
        let honest = SigningKey::generate().expect("rng");
        let odd: Vec<Signed> = (0..8u8)
            .map(|i| {
                let m = vec![i; 300];
                Signed::new(&key, D, &m, &sign_with_torsion(&m))
            })
            .collect();
        for item in &odd {
            assert_eq!(item.check(), Ok(Valid(())), "cofactored: valid alone");
        }
        // In batches with honest signatures, many times over (fresh coefficients each time).
        for round in 0..16usize {
            let mut items: Vec<Signed> = (0..6u8)
                .map(|i| {
                    let m = vec![i ^ 0x55; 100];
                    Signed::new(&honest.verifying_key(), D, &m, &honest.sign(D, &m))
                })
                .collect();
            items.insert(round % 6, odd[round % 8].clone());
            items.push(odd[(round + 3) % 8].clone());
            assert!(verify_batch(&items).iter().all(Result::is_ok), "round {round}");
        }
        // And ring, cofactorless, refuses it: the two checks differ only on such signatures.
        let ring_says = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(
                &[D, &odd[0].signed[D.len()..]].concat(),
                &sign_with_torsion(&odd[0].signed[D.len()..]),
            )
            .is_ok();
        assert!(!ring_says);
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
