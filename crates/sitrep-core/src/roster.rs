//! The signed roster: who is in the network, with what clearance and keys.
//!
//! A node accepts a roster only with a valid administrator signature, a
//! serial higher than the one it has, and a validity window that covers now.

use std::collections::BTreeMap;

use prost::Message as _;
use sitrep_crypto::{HpkePublicKey, SigningKey, VerifyingKey};
use sitrep_proto::v1 as pb;

use crate::policy::Channel;
use crate::{Class, NodeId};

/// Domain-separation prefix of the administrator's roster signature.
pub const ROSTER_DOMAIN: &[u8] = b"sitrep/v1/roster\0";

/// One verified member of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterNode {
    /// Node id.
    pub id: NodeId,
    /// Human name.
    pub name: String,
    /// Kind of organisation.
    pub kind: pb::NodeKind,
    /// Roles, e.g. `aggregator`.
    pub roles: Vec<String>,
    /// Highest class the node may hold.
    pub clearance: Class,
    /// Channels the node is on.
    pub channels: Vec<Channel>,
    /// Key that signs the node's envelopes.
    pub signing_key: VerifyingKey,
    /// Key content keys are sealed to.
    pub hpke_key: HpkePublicKey,
    /// SCB county code, for regions.
    pub region_code: String,
}

impl RosterNode {
    /// Whether the roster puts this node on `channel`.
    #[must_use]
    pub fn is_on(&self, channel: Channel) -> bool {
        self.channels.contains(&channel)
    }

    /// Whether the node has `role`.
    #[must_use]
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// A verified roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// Serial; strictly increasing.
    pub serial: u64,
    /// When it was issued, ms since the epoch.
    pub issued_ms: i64,
    /// Valid from, ms since the epoch.
    pub not_before_ms: i64,
    /// Valid until, ms since the epoch.
    pub not_after_ms: i64,
    /// Network name.
    pub network: String,
    nodes: BTreeMap<NodeId, RosterNode>,
}

/// Why a roster is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// Not a decodable `SignedRoster`/`Roster`.
    #[error("roster does not decode: {0}")]
    Decode(String),
    /// The administrator's signature does not verify.
    #[error("roster signature does not verify against the administrator key")]
    BadSignature,
    /// Serial not higher than the roster in use.
    #[error("roster serial {got} is not higher than the serial in use, {current}")]
    StaleSerial {
        /// The offered serial.
        got: u64,
        /// The serial in use.
        current: u64,
    },
    /// Validity starts in the future.
    #[error("roster is not valid before {not_before_ms} (now {now_ms})")]
    NotYetValid {
        /// Start of validity.
        not_before_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// Validity has ended.
    #[error("roster expired at {not_after_ms} (now {now_ms})")]
    Expired {
        /// End of validity.
        not_after_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// An entry is invalid.
    #[error("roster entry {index} ({id}): {problem}")]
    BadEntry {
        /// Position in the roster.
        index: usize,
        /// The id as written.
        id: String,
        /// What was wrong.
        problem: String,
    },
    /// Two entries with the same id.
    #[error("roster lists node {0} twice")]
    DuplicateNode(String),
}

impl Roster {
    /// Verifies an encoded `SignedRoster`: signature by `admin`, a serial
    /// above `current_serial` (if a roster is in use), validity covering
    /// `now_ms`, and every entry well formed.
    ///
    /// # Errors
    /// [`RosterError`] naming the first problem.
    pub fn verify(
        signed: &[u8],
        admin: &VerifyingKey,
        current_serial: Option<u64>,
        now_ms: i64,
    ) -> Result<Self, RosterError> {
        let signed = pb::SignedRoster::decode(signed).map_err(|e| RosterError::Decode(e.to_string()))?;
        admin
            .verify(ROSTER_DOMAIN, &signed.roster, &signed.signature)
            .map_err(|_| RosterError::BadSignature)?;
        let raw =
            pb::Roster::decode(signed.roster.as_slice()).map_err(|e| RosterError::Decode(e.to_string()))?;
        if let Some(current) = current_serial
            && raw.serial <= current
        {
            return Err(RosterError::StaleSerial {
                got: raw.serial,
                current,
            });
        }
        if now_ms < raw.not_before_unix_ms {
            return Err(RosterError::NotYetValid {
                not_before_ms: raw.not_before_unix_ms,
                now_ms,
            });
        }
        if now_ms >= raw.not_after_unix_ms {
            return Err(RosterError::Expired {
                not_after_ms: raw.not_after_unix_ms,
                now_ms,
            });
        }
        let mut nodes = BTreeMap::new();
        for (index, entry) in raw.nodes.iter().enumerate() {
            let node = parse_entry(entry).map_err(|problem| RosterError::BadEntry {
                index,
                id: entry.id.escape_default().to_string(),
                problem,
            })?;
            if nodes.insert(node.id.clone(), node).is_some() {
                return Err(RosterError::DuplicateNode(entry.id.clone()));
            }
        }
        Ok(Self {
            serial: raw.serial,
            issued_ms: raw.issued_unix_ms,
            not_before_ms: raw.not_before_unix_ms,
            not_after_ms: raw.not_after_unix_ms,
            network: raw.network,
            nodes,
        })
    }

    /// Whether the roster's validity covers `now_ms`.
    #[must_use]
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        (self.not_before_ms..self.not_after_ms).contains(&now_ms)
    }

    /// The entry for `id`.
    #[must_use]
    pub fn node(&self, id: &NodeId) -> Option<&RosterNode> {
        self.nodes.get(id)
    }

    /// The entry for an id given as a string.
    #[must_use]
    pub fn node_str(&self, id: &str) -> Option<&RosterNode> {
        NodeId::new(id).ok().and_then(|id| self.nodes.get(&id))
    }

    /// All entries, ordered by id.
    pub fn nodes(&self) -> impl Iterator<Item = &RosterNode> {
        self.nodes.values()
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the roster is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn parse_entry(e: &pb::NodeEntry) -> Result<RosterNode, String> {
    let id = NodeId::new(&e.id).map_err(|err| err.to_string())?;
    let kind = pb::NodeKind::try_from(e.kind)
        .ok()
        .filter(|k| *k != pb::NodeKind::Unspecified)
        .ok_or_else(|| format!("kind {} is unknown or unspecified", e.kind))?;
    let clearance = Class::from_proto(e.clearance)
        .ok_or_else(|| format!("clearance {} is unknown or unspecified", e.clearance))?;
    let mut channels = Vec::new();
    for c in &e.channels {
        let ch = Channel::from_proto(*c).ok_or_else(|| format!("channel {c} is unknown or unspecified"))?;
        if !channels.contains(&ch) {
            channels.push(ch);
        }
    }
    if channels.is_empty() {
        return Err("is on no channel".into());
    }
    let signing_key = VerifyingKey::from_bytes(&e.signing_key).map_err(|err| err.to_string())?;
    let hpke_key = HpkePublicKey::from_bytes(&e.hpke_key).map_err(|err| err.to_string())?;
    Ok(RosterNode {
        id,
        name: e.name.clone(),
        kind,
        roles: e.roles.clone(),
        clearance,
        channels,
        signing_key,
        hpke_key,
        region_code: e.region_code.clone(),
    })
}

/// Signs an encoded `Roster` with the administrator key; returns the encoded
/// `SignedRoster`. What `sitrep roster sign` and `sitrep dev-pki` do.
#[must_use]
pub fn sign(roster: &pb::Roster, admin: &SigningKey) -> Vec<u8> {
    let bytes = roster.encode_to_vec();
    let signature = admin.sign(ROSTER_DOMAIN, &bytes).to_vec();
    pb::SignedRoster {
        roster: bytes,
        signature,
    }
    .encode_to_vec()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sitrep_crypto::HpkeSecretKey;

    pub(crate) const NOW: i64 = 1_790_000_000_000;
    const DAY: i64 = 86_400_000;

    pub(crate) fn entry(id: &str, clearance: Class, sk: &SigningKey, hk: &HpkeSecretKey) -> pb::NodeEntry {
        pb::NodeEntry {
            id: id.into(),
            name: id.into(),
            kind: pb::NodeKind::Region as i32,
            roles: vec![],
            clearance: clearance.to_proto() as i32,
            channels: vec![pb::ChannelId::ChannelOpen as i32],
            signing_key: sk.verifying_key().as_bytes().to_vec(),
            hpke_key: hk.public_key().as_bytes().to_vec(),
            region_code: String::new(),
        }
    }

    fn raw(serial: u64) -> pb::Roster {
        let sk = SigningKey::generate().expect("rng");
        let hk = HpkeSecretKey::generate().expect("rng");
        pb::Roster {
            serial,
            issued_unix_ms: NOW - DAY,
            not_before_unix_ms: NOW - DAY,
            not_after_unix_ms: NOW + DAY,
            nodes: vec![entry("region-uppsala", Class::Sensitive, &sk, &hk)],
            network: "test".into(),
        }
    }

    #[test]
    fn a_good_roster_verifies() {
        let admin = SigningKey::generate().expect("rng");
        let signed = sign(&raw(3), &admin);
        let r = Roster::verify(&signed, &admin.verifying_key(), Some(2), NOW).expect("valid");
        assert_eq!(r.serial, 3);
        assert_eq!(r.len(), 1);
        assert!(r.node_str("region-uppsala").is_some());
        assert!(r.node_str("msb").is_none());
    }

    #[test]
    fn a_roster_with_a_bad_signature_is_refused() {
        let admin = SigningKey::generate().expect("rng");
        let mut signed = pb::SignedRoster::decode(sign(&raw(3), &admin).as_slice()).expect("decode");
        signed.signature[5] ^= 1;
        assert_eq!(
            Roster::verify(&signed.encode_to_vec(), &admin.verifying_key(), None, NOW),
            Err(RosterError::BadSignature)
        );
        // Signed by someone else.
        let mallory = SigningKey::generate().expect("rng");
        assert_eq!(
            Roster::verify(&sign(&raw(3), &mallory), &admin.verifying_key(), None, NOW),
            Err(RosterError::BadSignature)
        );
        // Content changed after signing.
        let mut signed = pb::SignedRoster::decode(sign(&raw(3), &admin).as_slice()).expect("decode");
        let mut r = pb::Roster::decode(signed.roster.as_slice()).expect("decode");
        r.nodes[0].clearance = Class::TopSecret.to_proto() as i32;
        signed.roster = r.encode_to_vec();
        assert_eq!(
            Roster::verify(&signed.encode_to_vec(), &admin.verifying_key(), None, NOW),
            Err(RosterError::BadSignature)
        );
    }

    #[test]
    fn an_older_or_equal_serial_is_refused() {
        let admin = SigningKey::generate().expect("rng");
        let signed = sign(&raw(3), &admin);
        assert_eq!(
            Roster::verify(&signed, &admin.verifying_key(), Some(3), NOW),
            Err(RosterError::StaleSerial { got: 3, current: 3 })
        );
        assert_eq!(
            Roster::verify(&signed, &admin.verifying_key(), Some(7), NOW),
            Err(RosterError::StaleSerial { got: 3, current: 7 })
        );
    }

    #[test]
    fn a_roster_outside_its_validity_is_refused() {
        let admin = SigningKey::generate().expect("rng");
        let signed = sign(&raw(1), &admin);
        assert!(matches!(
            Roster::verify(&signed, &admin.verifying_key(), None, NOW + DAY),
            Err(RosterError::Expired { .. })
        ));
        assert!(matches!(
            Roster::verify(&signed, &admin.verifying_key(), None, NOW - 2 * DAY),
            Err(RosterError::NotYetValid { .. })
        ));
    }

    #[test]
    fn bad_entries_are_refused() {
        let admin = SigningKey::generate().expect("rng");
        let mut r = raw(1);
        r.nodes.push(r.nodes[0].clone());
        assert_eq!(
            Roster::verify(&sign(&r, &admin), &admin.verifying_key(), None, NOW),
            Err(RosterError::DuplicateNode("region-uppsala".into()))
        );
        let mut r = raw(1);
        r.nodes[0].clearance = 0;
        assert!(matches!(
            Roster::verify(&sign(&r, &admin), &admin.verifying_key(), None, NOW),
            Err(RosterError::BadEntry { index: 0, .. })
        ));
        let mut r = raw(1);
        r.nodes[0].signing_key.pop();
        assert!(matches!(
            Roster::verify(&sign(&r, &admin), &admin.verifying_key(), None, NOW),
            Err(RosterError::BadEntry { .. })
        ));
        let mut r = raw(1);
        r.nodes[0].id = "Bad Id".into();
        assert!(matches!(
            Roster::verify(&sign(&r, &admin), &admin.verifying_key(), None, NOW),
            Err(RosterError::BadEntry { .. })
        ));
        assert!(matches!(
            Roster::verify(b"\xff\xff", &admin.verifying_key(), None, NOW),
            Err(RosterError::Decode(_))
        ));
    }
}
