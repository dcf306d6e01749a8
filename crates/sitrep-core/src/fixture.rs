//! A network of nodes with fresh keys and a signed roster, for tests and
//! benchmarks. Compiled only with the `test-support` feature.

use sitrep_crypto::{HpkeSecretKey, SigningKey};
use sitrep_proto::v1 as pb;

use crate::policy::Channel;
use crate::{Class, NodeId, Roster};

/// A node of a [`Fixture`]: its id and private keys.
#[derive(Debug)]
pub struct FixtureNode {
    /// Node id.
    pub id: NodeId,
    /// Envelope signing key.
    pub signing: SigningKey,
    /// HPKE key.
    pub hpke: HpkeSecretKey,
}

/// A roster of nodes with their private keys.
#[derive(Debug)]
pub struct Fixture {
    /// The administrator key that signed the roster.
    pub admin: SigningKey,
    /// The nodes, in the order given.
    pub nodes: Vec<FixtureNode>,
    /// The roster as wire message.
    pub raw: pb::Roster,
    /// The signed roster, encoded.
    pub signed: Vec<u8>,
    /// The verified roster.
    pub roster: Roster,
}

/// One day in ms.
pub const DAY_MS: i64 = 86_400_000;

impl Fixture {
    /// Nodes `(id, clearance)` on both channels, roster valid ±30 days around `now_ms`.
    ///
    /// # Panics
    /// On an invalid id or a failing RNG: this is test code.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn new(nodes: &[(&str, Class)], now_ms: i64) -> Self {
        let admin = SigningKey::generate().expect("rng");
        let mut keyed = Vec::new();
        let mut entries = Vec::new();
        for (id, clearance) in nodes {
            let n = FixtureNode {
                id: NodeId::new(id).expect("valid fixture id"),
                signing: SigningKey::generate().expect("rng"),
                hpke: HpkeSecretKey::generate().expect("rng"),
            };
            entries.push(pb::NodeEntry {
                id: (*id).into(),
                name: (*id).into(),
                kind: pb::NodeKind::Region as i32,
                roles: vec![],
                clearance: clearance.to_proto() as i32,
                channels: Channel::ALL.iter().map(|c| c.to_proto() as i32).collect(),
                signing_key: n.signing.verifying_key().as_bytes().to_vec(),
                hpke_key: n.hpke.public_key().as_bytes().to_vec(),
                region_code: String::new(),
            });
            keyed.push(n);
        }
        let raw = pb::Roster {
            serial: 1,
            issued_unix_ms: now_ms,
            not_before_unix_ms: now_ms - 30 * DAY_MS,
            not_after_unix_ms: now_ms + 30 * DAY_MS,
            nodes: entries,
            network: "fixture".into(),
        };
        let signed = crate::roster::sign(&raw, &admin);
        let roster =
            Roster::verify(&signed, &admin.verifying_key(), None, now_ms).expect("fixture roster verifies");
        Self {
            admin,
            nodes: keyed,
            raw,
            signed,
            roster,
        }
    }

    /// Another roster for the same nodes and keys, signed by the same
    /// administrator: a copy of [`Fixture::raw`] changed by `edit` (change
    /// clearances or channels, drop nodes). Valid at the fixture's `now_ms`.
    ///
    /// # Panics
    /// If the edited roster does not verify: this is test code.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn roster_with(&self, edit: impl FnOnce(&mut pb::Roster)) -> Roster {
        let mut raw = self.raw.clone();
        edit(&mut raw);
        let signed = crate::roster::sign(&raw, &self.admin);
        Roster::verify(
            &signed,
            &self.admin.verifying_key(),
            None,
            self.raw.issued_unix_ms,
        )
        .expect("edited fixture roster verifies")
    }

    /// The node with `id`.
    ///
    /// # Panics
    /// If there is none: this is test code.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn node(&self, id: &str) -> &FixtureNode {
        self.nodes
            .iter()
            .find(|n| n.id.as_str() == id)
            .expect("fixture node exists")
    }
}
