//! Coverage-guided fuzz targets for every sitrep decoder of outside bytes
//! (DESIGN §11), run with afl.rs on stable Rust: `fuzz/run`.
//!
//! Each target is a function here that takes arbitrary bytes, does with them
//! what a node does with the same bytes from a peer, a client or a file, and
//! panics (a crash, for AFL) when a decoder panics or a property that must
//! hold of what it accepted does not. The binaries in `src/bin/` wrap them in
//! `afl::fuzz!`; `src/bin/seeds.rs` writes their starting corpora.
//!
//! - [`frame`]: QUIC stream bytes: `sitrep_net::frame::decode_len` and
//!   `decode_body`, frame after frame, and a transfer's envelope bytes as
//!   ingress reads them.
//! - [`envelope`]: an envelope as a hop and its recipients read it (`peek`,
//!   `verify`, `open`, the payload by content type); the same bytes as a bare
//!   header (`HeaderInfo::from_proto`, which the signature check otherwise
//!   hides from the fuzzer) and as `Sealed` bytes signed by their claimed
//!   origin (a member of the roster that misbehaves).
//! - [`roster`]: a signed roster (`Roster::verify`), and the same bytes as a
//!   roster signed by the administrator, so that entry parsing is reached.
//! - [`submit`]: a `POST /v1/reports` body as the API parses and checks it.
//! - [`config`]: a node config file's text, parsed and validated.
//!
//! Keys and the roster are derived from fixed seeds ([`Net`]), so a corpus
//! made by `seeds` stays valid across runs and machines; the clock is fixed at
//! [`NOW`].
//!
//! Not here: the store's segment log (covered by the power-loss simulation
//! in `sitrep-store`), the console's sign-in and feed-subscription bodies,
//! payloads handled past `open` by the feed aggregation.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost::Message as _;
use sitrep_core::envelope::{
    self, ENVELOPE_DOMAIN, HeaderInfo, MAX_CLOCK_SKEW_MS, MAX_LIFETIME_MS, OpenError,
};
use sitrep_core::{Channel, Class, ContentType, MessageId, NodeId, Roster};
use sitrep_crypto::{HpkeSecretKey, SigningKey};
use sitrep_net::frame::{self as wire, PREFIX_LEN};
use sitrep_proto::v1 as pb;

/// The fixed "now" of every target, ms since the epoch (as in the crates'
/// own tests): 2026-09-21.
pub const NOW: i64 = 1_790_000_000_000;
/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;

/// The members of the fuzzing network: id, kind, clearance, roles.
const MEMBERS: [(&str, pb::NodeKind, Class, &[&str]); 5] = [
    ("region-uppsala", pb::NodeKind::Region, Class::Secret, &[]),
    ("nspl-hub", pb::NodeKind::Hub, Class::Secret, &[]),
    (
        "socialstyrelsen",
        pb::NodeKind::Authority,
        Class::Secret,
        &["aggregator"],
    ),
    ("msb", pb::NodeKind::Authority, Class::Secret, &[]),
    ("region-gotland", pb::NodeKind::Region, Class::Sensitive, &[]),
];

/// A member of [`Net`] with its private keys.
#[derive(Debug)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Envelope signing key.
    pub signing: SigningKey,
    /// HPKE key.
    pub hpke: HpkeSecretKey,
}

/// A network whose keys come from fixed seeds: the same bytes on every run.
#[derive(Debug)]
pub struct Net {
    /// The administrator, who signs the roster.
    pub admin: SigningKey,
    /// The members, in [`MEMBERS`] order.
    pub members: Vec<Member>,
    /// The signed roster, encoded (Ed25519 signatures are deterministic).
    pub signed_roster: Vec<u8>,
    /// The roster, verified at [`NOW`].
    pub roster: Roster,
}

/// A PKCS#8 v1 document of an Ed25519 private key: this prefix, then the
/// 32-byte seed (RFC 8410).
const ED25519_PKCS8_V1: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn signing_key(name: &str) -> SigningKey {
    let mut der = ED25519_PKCS8_V1.to_vec();
    der.extend_from_slice(&sitrep_crypto::sha256(
        format!("sitrep-fuzz signing {name}").as_bytes(),
    ));
    SigningKey::from_pkcs8(&der).expect("a PKCS#8 v1 document of 32 seed bytes is an Ed25519 key")
}

fn hpke_key(name: &str) -> HpkeSecretKey {
    HpkeSecretKey::from_bytes(&sitrep_crypto::sha256(
        format!("sitrep-fuzz hpke {name}").as_bytes(),
    ))
    .expect("any 32 bytes are an X25519 private key")
}

impl Net {
    fn build() -> Self {
        let admin = signing_key("admin");
        let members: Vec<Member> = MEMBERS
            .iter()
            .map(|(id, ..)| Member {
                id: NodeId::new(id).expect("the member ids are valid"),
                signing: signing_key(id),
                hpke: hpke_key(id),
            })
            .collect();
        let raw = pb::Roster {
            serial: 7,
            issued_unix_ms: NOW - DAY_MS,
            not_before_unix_ms: NOW - 30 * DAY_MS,
            not_after_unix_ms: NOW + 30 * DAY_MS,
            network: "fuzz".into(),
            nodes: MEMBERS
                .iter()
                .zip(&members)
                .map(|((id, kind, clearance, roles), m)| pb::NodeEntry {
                    id: (*id).into(),
                    name: (*id).into(),
                    kind: *kind as i32,
                    roles: roles.iter().map(|r| (*r).into()).collect(),
                    clearance: clearance.to_proto() as i32,
                    channels: Channel::ALL.iter().map(|c| c.to_proto() as i32).collect(),
                    signing_key: m.signing.verifying_key().as_bytes().to_vec(),
                    hpke_key: m.hpke.public_key().as_bytes().to_vec(),
                    region_code: if id.starts_with("region-uppsala") {
                        "03".into()
                    } else {
                        String::new()
                    },
                })
                .collect(),
        };
        let signed_roster = sitrep_core::roster::sign(&raw, &admin);
        let roster = Roster::verify(&signed_roster, &admin.verifying_key(), None, NOW)
            .expect("the fuzzing roster verifies at NOW");
        Self {
            admin,
            members,
            signed_roster,
            roster,
        }
    }

    /// The member with id `id`.
    #[must_use]
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id.as_str() == id)
    }
}

/// The network, built once per process: call it before `afl::fuzz!` so that
/// the key derivation is not counted in every execution.
pub fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(Net::build)
}

/// The largest frame body a node takes by default (`[limits] max_frame_bytes`).
fn frame_limit() -> usize {
    sitrep_node::config::Limits::default().max_frame_bytes
}

/// Bytes as they arrive on a QUIC stream: frames, each a 4-byte length and a
/// `Frame`, read until the stream would be reset (a length over the limit,
/// a stream that ends inside a frame, a body that does not decode).
pub fn frame(data: &[u8]) {
    let net = net();
    let limit = frame_limit();
    let mut rest = data;
    while let Some((prefix, tail)) = rest.split_first_chunk::<PREFIX_LEN>() {
        let Ok(len) = wire::decode_len(*prefix, limit) else {
            return;
        };
        assert!(
            len <= limit,
            "decode_len let {len} bytes through a limit of {limit}"
        );
        let Some((body, next)) = tail.split_at_checked(len) else {
            return;
        };
        rest = next;
        let Ok(f) = wire::decode_body(body) else {
            return;
        };
        // What we decoded we can send on: it encodes, and reads back the same.
        let encoded = wire::encode_frame(&f).expect("a decoded frame encodes");
        let (again_prefix, again_body) = encoded
            .split_first_chunk::<PREFIX_LEN>()
            .expect("an encoded frame has a prefix");
        assert_eq!(
            wire::decode_len(*again_prefix, usize::MAX).ok(),
            Some(again_body.len())
        );
        assert_eq!(
            wire::decode_body(again_body).ok().as_ref(),
            Some(&f),
            "a frame does not survive encode and decode"
        );
        // A sender reads the answer to its transfer.
        let _ = sitrep_core::ingress::next_hop_answer(f.kind.as_ref());
        // Ingress: the transfer's envelope bytes, read for a refusal's log
        // line and verified.
        if let Some(pb::frame::Kind::Transfer(t)) = &f.kind
            && !t.envelope.is_empty()
        {
            let _ = envelope::peek_header(&t.envelope);
            let _ = receive(net, &t.envelope);
        }
    }
}

/// An envelope's bytes, read four ways: as an envelope (what a hop and its
/// recipients do), as a bare header, and as `Sealed` bytes that the origin
/// they name signs (so that a mutated header, key wrap or payload gets past
/// the signature, as it would from a member of the roster that misbehaves).
pub fn envelope(data: &[u8]) {
    let net = net();
    // Unverified reads, for diagnostics and a sender's re-check: they agree.
    let peeked = envelope::peek(data);
    let header = envelope::peek_header(data);
    assert_eq!(
        peeked.as_ref().map(|(_, h)| h).map_err(Clone::clone),
        header.as_ref().map_err(Clone::clone),
        "peek and peek_header disagree"
    );
    let _ = receive(net, data);
    if let Ok(h) = pb::Header::decode(data) {
        check_header(&h);
    }
    if let Ok(sealed) = pb::Sealed::decode(data)
        && let Ok(h) = pb::Header::decode(sealed.header.as_slice())
        && let Some(origin) = net.member(&h.origin)
    {
        let signed = pb::Envelope {
            sealed: data.to_vec(),
            signature: origin.signing.sign(ENVELOPE_DOMAIN, data).to_vec(),
        }
        .encode_to_vec();
        if let Err(e @ (OpenError::BadSignature(_) | OpenError::UnknownOrigin(_))) = receive(net, &signed) {
            panic!("an envelope signed by its origin's roster key is refused: {e}");
        }
    }
}

/// A header as `HeaderInfo::from_proto` validates it: what it accepts
/// keeps the rules, and survives the trip back to the wire.
fn check_header(h: &pb::Header) {
    let Ok(info) = HeaderInfo::from_proto(h) else {
        return;
    };
    assert!(
        info.expires_ms > info.created_ms && info.expires_ms - info.created_ms <= MAX_LIFETIME_MS,
        "a lifetime out of bounds was accepted: {} .. {}",
        info.created_ms,
        info.expires_ms
    );
    assert!(!info.recipients.is_empty() && info.recipients.len() <= envelope::MAX_RECIPIENTS);
    for (i, r) in info.recipients.iter().enumerate() {
        assert!(!info.recipients[..i].contains(r), "recipient {r} accepted twice");
    }
    assert!(info.author.len() <= envelope::MAX_AUTHOR_BYTES);
    assert_eq!(
        HeaderInfo::from_proto(&info.to_proto()).as_ref(),
        Ok(&info),
        "a valid header does not survive the trip to the wire and back"
    );
}

/// What a hop does with an envelope (verify), then what each member of the
/// network would do as its recipient (open, then decode the payload).
fn receive(net: &Net, bytes: &[u8]) -> Result<(), OpenError> {
    let v = envelope::verify(bytes, &net.roster, NOW)?;
    let h = &v.header;
    assert!(h.created_ms <= NOW + MAX_CLOCK_SKEW_MS && NOW < h.expires_ms);
    assert!(
        net.roster.node(&h.origin).is_some(),
        "verified with no origin in the roster"
    );
    assert_eq!(
        envelope::peek_header(bytes).as_ref(),
        Ok(h),
        "peek_header and verify read different headers"
    );
    check_header(&h.to_proto());
    for m in &net.members {
        match envelope::open(&v, &m.id, &m.hpke) {
            Ok(payload) => {
                assert!(h.is_recipient(&m.id), "{} opened what is not for it", m.id);
                payload_at(net, &v, &payload);
            }
            Err(OpenError::NotARecipient(_)) => {
                assert!(
                    !h.is_recipient(&m.id),
                    "recipient {} refused as not a recipient",
                    m.id
                );
            }
            Err(OpenError::Decrypt) => {}
            Err(e) => panic!("open refused {} with {e}, which verify should have", m.id),
        }
    }
    Ok(())
}

/// A recipient's handling of an opened payload, by content type.
fn payload_at(net: &Net, v: &envelope::Verified, payload: &[u8]) {
    let h = &v.header;
    match h.content_type {
        ContentType::SituationReport => {
            if let Ok(r) = pb::SituationReport::decode(payload) {
                let _ = sitrep_core::report::validate(&r);
            }
        }
        ContentType::Receipt => {
            if let Ok(r) = pb::Receipt::decode(payload) {
                let _ = MessageId::from_slice(&r.message_id);
                let _ = NodeId::new(&r.recipient);
            }
        }
        ContentType::Roster => {
            let _ = Roster::verify(payload, &net.admin.verifying_key(), Some(net.roster.serial), NOW);
        }
        ContentType::Subscribe | ContentType::Unsubscribe => {
            let _ = pb::Subscribe::decode(payload);
        }
        ContentType::FeedUpdate => {
            let _ = pb::NationalRollup::decode(payload);
        }
        ContentType::Subscription => {
            let _ = pb::SubscriptionState::decode(payload);
        }
    }
}

/// A signed roster as a node reads it from its file or a roster message;
/// and the same bytes as a roster the administrator signed, so that the
/// checks after the signature are reached.
pub fn roster(data: &[u8]) {
    let net = net();
    let admin = net.admin.verifying_key();
    if let Ok(r) = Roster::verify(data, &admin, None, NOW) {
        check_roster(&r);
        match Roster::verify(data, &admin, Some(r.serial), NOW) {
            Err(sitrep_core::RosterError::StaleSerial { .. }) => {}
            other => panic!("a roster replaced itself: {other:?}"),
        }
    }
    let signed = pb::SignedRoster {
        roster: data.to_vec(),
        signature: net.admin.sign(sitrep_core::roster::ROSTER_DOMAIN, data).to_vec(),
    }
    .encode_to_vec();
    match Roster::verify(&signed, &admin, Some(net.roster.serial), NOW) {
        Ok(r) => check_roster(&r),
        Err(sitrep_core::RosterError::BadSignature) => {
            panic!("a roster signed by the administrator is refused as badly signed")
        }
        Err(_) => {}
    }
}

fn check_roster(r: &Roster) {
    assert!(r.is_valid_at(NOW), "a roster outside its validity was accepted");
    let mut n = 0;
    for node in r.nodes() {
        n += 1;
        assert_eq!(r.node(&node.id), Some(node));
        assert_eq!(r.node_str(node.id.as_str()), Some(node));
        assert!(!node.channels.is_empty(), "{} is on no channel", node.id);
    }
    assert_eq!(n, r.len());
}

/// A `POST /v1/reports` body, parsed and checked as the API does; for what
/// it accepts, the header the service would seal passes the envelope's own
/// validation once the service's checks (recipients, expiry) have passed, so
/// that nothing the API takes fails later as an internal error.
pub fn submit(data: &[u8]) {
    let net = net();
    let sub = match sitrep_node::api::parse_submit_body(data) {
        Ok(sub) => sub,
        Err(errors) => {
            assert!(!errors.is_empty(), "a body refused without a reason");
            return;
        }
    };
    let sitrep_node::Content::Report(report) = &sub.content else {
        panic!("the API made a submission that is not a report");
    };
    assert_eq!(sitrep_core::report::validate(report), Ok(()));
    let payload = report.encode_to_vec();
    assert_eq!(
        pb::SituationReport::decode(payload.as_slice()).as_ref(),
        Ok(report),
        "a report does not survive encode and decode"
    );
    // The service's checks before sealing (`service::submit_keyed`).
    let r = &sub.recipients;
    let recipients_ok = !r.is_empty()
        && r.len() <= envelope::MAX_RECIPIENTS
        && r.iter().enumerate().all(|(i, x)| !r[..i].contains(x));
    let expires_ms = sub.expires_ms.unwrap_or(NOW + DAY_MS);
    let expiry_ok = expires_ms > NOW && expires_ms - NOW <= MAX_LIFETIME_MS;
    if !(recipients_ok && expiry_ok) {
        return;
    }
    let origin = &net.members[0];
    let header = HeaderInfo {
        id: MessageId::new_v7(NOW, [0; 10]),
        origin: origin.id.clone(),
        author: sub.author.clone(),
        created_ms: NOW,
        expires_ms,
        label: sub.label.clone(),
        precedence: sub.precedence,
        mode: sub.mode,
        content_type: ContentType::SituationReport,
        recipients: sub.recipients.clone(),
        in_reply_to: None,
        roster_serial: net.roster.serial,
    };
    if let Err(e) = HeaderInfo::from_proto(&header.to_proto()) {
        panic!("the API accepted a submission whose header is invalid: {e}");
    }
}

/// Where the config target's relative paths point: a directory with every
/// file the seed configs name (empty: the config only checks that they
/// exist), made once per process.
pub fn config_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let top = std::env::temp_dir().join("sitrep-fuzz-config");
        let base = top.join("node");
        std::fs::create_dir_all(&base).expect("temp dir for the config target");
        for f in ["roster.bin", "admin.pub"] {
            std::fs::write(top.join(f), b"").expect("config target file");
        }
        for f in [
            "signing.key",
            "hpke.key",
            "open-ca.crt",
            "open.crt",
            "open.key",
            "secure-ca.crt",
            "secure.crt",
            "secure.key",
        ] {
            std::fs::write(base.join(f), b"").expect("config target file");
        }
        base
    })
}

/// A node config file's text, parsed and validated as `Config::load` does
/// (no `SITREP_*` overrides); for what it accepts, the limits hold.
pub fn config(data: &[u8]) {
    let base = config_base();
    // The loader reads the file as UTF-8 and stops on anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = sitrep_node::Config::from_toml(text, "file fuzz.toml", base, Vec::new()) else {
        return;
    };
    let l = &c.limits;
    assert!(l.peer_buffer_bytes >= l.max_frame_bytes + 4);
    assert!(l.keep_alive < l.idle_timeout);
    assert!(!c.channels.is_empty());
    let _ = l.quota();
    let _ = l.transport();
}
