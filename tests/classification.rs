//! Classification through real nodes (DESIGN §5 properties 4, 5 and 9): the whole label
//! matrix class × arrival channel × next-hop clearance × recipient clearance in one
//! network, and a mixed run showing the open channel never carries a classified message.
//!
//! Every running node has a [`Recorder`] on its endpoints, so the tests see every frame on
//! the wire and can search it for the 16 bytes of a message id.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft};
use sitrep_core::{Channel, Class, ContentType, Label, MessageId, Mode, NodeId, Precedence, Roster};
use sitrep_crypto::SigningKey;
use sitrep_net::frame::{PREFIX_LEN, decode_body};
use sitrep_net::{ChannelEndpoint, Direction, FrameRecorder, NetError, PeerConnection, close_code};
use sitrep_node::{Content, Node, Submission};
use sitrep_proto::v1::{Envelope, Frame, RejectCode, Transfer, frame::Kind};
use sitrep_store::DeliveryState;
use sitrep_testkit::{NodeSpec, TestNet, line, wait_until};

const LONG: Duration = Duration::from_secs(60);
const HOUR_MS: i64 = 3_600_000;

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

/// One recorded frame: channel, direction, peer, wire bytes (length prefix included).
type Recorded = (Channel, Direction, NodeId, Vec<u8>);

/// Keeps every frame an endpoint sent or received.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Recorded>>);

impl FrameRecorder for Recorder {
    fn record(&self, channel: Channel, dir: Direction, peer: &NodeId, frame: &[u8]) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((
            channel,
            dir,
            peer.clone(),
            frame.to_vec(),
        ));
    }
}

impl Recorder {
    fn frames(&self) -> Vec<Recorded> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A set of message ids to look for in raw bytes, at any offset.
#[derive(Debug)]
struct IdSet {
    ids: HashSet<[u8; 16]>,
    /// First four bytes of every id: a cheap filter before the full lookup.
    prefixes: HashSet<[u8; 4]>,
}

impl IdSet {
    fn new<'a>(ids: impl IntoIterator<Item = &'a MessageId>) -> Self {
        let ids: HashSet<[u8; 16]> = ids.into_iter().map(|id| *id.as_bytes()).collect();
        let prefixes = ids.iter().map(|b| [b[0], b[1], b[2], b[3]]).collect();
        Self { ids, prefixes }
    }

    /// Every id of the set whose 16 bytes occur in `bytes`.
    fn find(&self, bytes: &[u8]) -> BTreeSet<[u8; 16]> {
        let mut found = BTreeSet::new();
        for w in bytes.windows(16) {
            if self.prefixes.contains(&[w[0], w[1], w[2], w[3]]) {
                let mut id = [0; 16];
                id.copy_from_slice(w);
                if self.ids.contains(&id) {
                    found.insert(id);
                }
            }
        }
        found
    }
}

/// The class of the envelope in a recorded frame, if it is a Transfer.
fn transfer_class(wire: &[u8]) -> Option<Class> {
    let frame = decode_body(wire.get(PREFIX_LEN..).unwrap_or_default()).expect("a recorded frame decodes");
    match frame.kind {
        Some(Kind::Transfer(t)) => {
            let header = envelope::peek_header(&t.envelope).expect("a recorded header decodes");
            Some(header.label.class)
        }
        _ => None,
    }
}

/// Every `refused.<reason>` counter of `node` that is not zero.
fn refusals(node: &Node) -> BTreeMap<String, u64> {
    node.counters()
        .snapshot()
        .into_iter()
        .filter(|(k, v)| k.starts_with("refused.") && *v > 0)
        .collect()
}

fn queued(node: &Node) -> u64 {
    node.outboxes().iter().map(|(_, h)| h.depth).sum()
}

/// Every message in `node`'s inbox, on either channel: id → (channel it came on, class).
fn inbox(node: &Node) -> BTreeMap<MessageId, (Channel, Class)> {
    let mut out = BTreeMap::new();
    for ch in Channel::ALL {
        for r in node.inbox(ch, 0, 100_000).expect("inbox") {
            out.insert(r.header.id, (r.channel, r.header.label.class));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 1. The label policy matrix.

const ORIGIN: &str = "origin";
/// One relay per class, cleared for that class; index = position in `Class::ALL`.
const RELAYS: [&str; 6] = [
    "relay-open",
    "relay-sensitive",
    "relay-restricted",
    "relay-confidential",
    "relay-secret",
    "relay-top-secret",
];
/// One recipient per class, cleared for that class; index = position in `Class::ALL`.
const DESTS: [&str; 6] = [
    "dest-open",
    "dest-sensitive",
    "dest-restricted",
    "dest-confidential",
    "dest-secret",
    "dest-top-secret",
];

/// The channels a node cleared for `clearance` runs: `open` always, `secure` only if it
/// is cleared for RESTRICTED or above (the secure channel's maximum defaults to
/// min(TOP_SECRET, clearance) and must be at least RESTRICTED).
fn channels_for(clearance: Class) -> Vec<Channel> {
    if clearance >= Class::Restricted {
        vec![Channel::Open, Channel::Secure]
    } else {
        vec![Channel::Open]
    }
}

/// The matrix network. `origin` (TOP_SECRET, both channels) peers with every relay and
/// every recipient; each relay peers with origin and every recipient; each recipient with
/// origin and every relay. Recipients peer with origin (beyond the relays) because a
/// recipient refuses a transfer whose receipt it cannot route, and with several relays
/// per channel it has no default route: the direct peering lets receipts go straight back
/// to origin, so the relays carry only the matrix's transfers.
fn matrix_specs() -> Vec<NodeSpec> {
    let mut specs = vec![NodeSpec {
        id: ORIGIN,
        kind: "REGION",
        clearance: Class::TopSecret,
        channels: vec![Channel::Open, Channel::Secure],
        peers: RELAYS.iter().chain(DESTS.iter()).copied().collect(),
    }];
    for (i, class) in Class::ALL.into_iter().enumerate() {
        specs.push(NodeSpec {
            id: RELAYS[i],
            kind: "HUB",
            clearance: class,
            channels: channels_for(class),
            peers: std::iter::once(ORIGIN).chain(DESTS).collect(),
        });
    }
    for (i, class) in Class::ALL.into_iter().enumerate() {
        specs.push(NodeSpec {
            id: DESTS[i],
            kind: "AUTHORITY",
            clearance: class,
            channels: channels_for(class),
            peers: std::iter::once(ORIGIN).chain(RELAYS).collect(),
        });
    }
    specs
}

/// What one matrix case must come to, from the rules alone (DESIGN §2, §5 property 4),
/// not from the node's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The relay has no listener on that channel: nothing can be sent there.
    Unreachable,
    /// Accepted by the relay and delivered to the recipient.
    Delivered,
    /// Rejected by the relay with `code`, counted as `refused.<counter>`; `close` if the
    /// relay also closes the connection.
    Refused {
        code: RejectCode,
        counter: &'static str,
        close: bool,
    },
}

/// The expected outcome of a message of `class` arriving on `channel` at a relay cleared
/// for `relay`, for a recipient cleared for `dest`. The first broken rule decides:
/// 1. the relay is not on `channel` → unreachable;
/// 2. `class` belongs on the other channel → LABEL_POLICY `wrong_channel`, connection closed;
/// 3. `class` is above the relay's clearance, which on this channel is its channel
///    maximum (min(channel ceiling, clearance)) → LABEL_POLICY `above_channel_max`,
///    connection closed (a peer sending above what the channel may carry here);
/// 4. the recipient is not on `channel` → NO_ROUTE `no_route`: the relay has no peer,
///    static or default route to it on that channel, so routing refuses it before the
///    recipient's label check (which would say LABEL_POLICY `not_on_channel`) is reached;
/// 5. `class` is above the recipient's clearance → LABEL_POLICY `not_cleared`;
///
/// otherwise delivered.
fn want(class: Class, channel: Channel, relay: Class, dest: Class) -> Want {
    if !channels_for(relay).contains(&channel) {
        return Want::Unreachable;
    }
    let label_policy = |counter, close| Want::Refused {
        code: RejectCode::LabelPolicy,
        counter,
        close,
    };
    if class_channel(class) != channel {
        return label_policy("wrong_channel", true);
    }
    let ceiling = match channel {
        Channel::Open => Class::Sensitive,
        Channel::Secure => Class::TopSecret,
    };
    if class > relay.min(ceiling) {
        return label_policy("above_channel_max", true);
    }
    if !channels_for(dest).contains(&channel) {
        return Want::Refused {
            code: RejectCode::NoRoute,
            counter: "no_route",
            close: false,
        };
    }
    if class > dest {
        return label_policy("not_cleared", false);
    }
    Want::Delivered
}

/// One sent case.
#[derive(Debug, Clone, Copy)]
struct Case {
    id: MessageId,
    class: Class,
    channel: Channel,
    relay: usize,
    dest: usize,
    want: Want,
}

/// A situation report of `class` from origin to `dest`, sealed and signed with origin's
/// real keys.
fn seal(roster: &Roster, signing: &SigningKey, class: Class, dest: &str) -> (MessageId, Envelope) {
    let now = sitrep_node::clock::now_ms();
    let payload = sitrep_core::report::example_uppsala(now).encode_to_vec();
    let sealed = envelope::seal(
        &Draft {
            origin: n(ORIGIN),
            author: "matrix".into(),
            label: Label::new(class),
            precedence: Precedence::Priority,
            mode: Mode::Exercise,
            content_type: ContentType::SituationReport,
            recipients: vec![n(dest)],
            in_reply_to: None,
            expires_ms: now + HOUR_MS,
            payload: &payload,
        },
        signing,
        roster,
        now,
    )
    .expect("seal");
    let env = Envelope::decode(sealed.bytes.as_slice()).expect("a sealed envelope decodes");
    (sealed.header.id, env)
}

/// Origin's hop to the relay: hop 1, serving `dest`.
fn transfer(env: Envelope, dest: &str) -> Frame {
    Frame {
        kind: Some(Kind::Transfer(Transfer {
            envelope: env.encode_to_vec(),
            hop_count: 1,
            serves: vec![dest.to_owned()],
        })),
    }
}

/// The counters that went up between two snapshots, by how much.
fn grew(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Checks the relay's answer to a refused case. A refusal that closes the connection
/// answers first and closes right after; the answer is asserted, then the close.
async fn check_refused(
    conn: &PeerConnection,
    answer: Result<Frame, NetError>,
    code: RejectCode,
    close: bool,
    expect_in_reason: &str,
    what: &str,
) {
    match answer {
        Ok(Frame {
            kind: Some(Kind::Rejected(r)),
        }) => {
            assert_eq!(r.code(), code, "{what}: rejected for another reason: {r:?}");
            assert!(r.permanent, "{what}: a policy refusal is permanent: {r:?}");
            assert!(
                r.reason.contains(expect_in_reason),
                "{what}: reason {:?} does not say {expect_in_reason:?}",
                r.reason
            );
        }
        other => panic!("{what}: expected Rejected {code:?}, got {other:?}"),
    }
    if close {
        match tokio::time::timeout(LONG, conn.closed())
            .await
            .expect("closed in time")
        {
            NetError::ClosedByPeer { code, reason } => {
                assert_eq!(code, u64::from(close_code::POLICY), "{what}: {reason}");
                assert!(
                    reason.contains(expect_in_reason),
                    "{what}: close reason {reason:?}"
                );
            }
            other => panic!("{what}: expected a close with the POLICY code, got {other:?}"),
        }
    } else {
        assert!(
            conn.close_reason().is_none(),
            "{what}: the connection must stay open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_policy_matrix_through_real_nodes() {
    // The node ids name their class, in the order of Class::ALL.
    for (i, class) in Class::ALL.into_iter().enumerate() {
        let name = class.as_str().to_lowercase().replace('_', "-");
        assert_eq!(RELAYS[i], format!("relay-{name}"));
        assert_eq!(DESTS[i], format!("dest-{name}"));
    }
    let specs = matrix_specs();
    let mut net = TestNet::prepare(&specs);
    let mut recorders: BTreeMap<&str, Arc<Recorder>> = BTreeMap::new();
    for s in &specs {
        let rec = Arc::new(Recorder::default());
        net.start_node_with(s.id, Some(rec.clone())).await;
        recorders.insert(s.id, rec);
    }
    // Only secure-cleared relays listen on secure.
    for (i, class) in Class::ALL.into_iter().enumerate() {
        assert!(net.addr(RELAYS[i], Channel::Open).is_some());
        assert_eq!(
            net.addr(RELAYS[i], Channel::Secure).is_some(),
            class >= Class::Restricted,
            "{}",
            RELAYS[i]
        );
    }
    let roster = net.roster();
    let (signing, _) = net.keys(ORIGIN);
    // Origin as played by the test, one endpoint per channel.
    let endpoints: BTreeMap<Channel, ChannelEndpoint> = Channel::ALL
        .into_iter()
        .map(|c| (c, net.impersonate(ORIGIN, c)))
        .collect();
    let mut conns: BTreeMap<(usize, Channel), PeerConnection> = BTreeMap::new();
    let mut cases = Vec::new();
    let mut no_listener = 0;
    let mut reconnects = 0;

    for class in Class::ALL {
        for channel in Channel::ALL {
            for (ri, relay_class) in Class::ALL.into_iter().enumerate() {
                for (di, dest_class) in Class::ALL.into_iter().enumerate() {
                    let (relay, dest) = (RELAYS[ri], DESTS[di]);
                    let what = format!("{class} on {channel} via {relay} to {dest}");
                    let want = want(class, channel, relay_class, dest_class);
                    let Some(addr) = net.addr(relay, channel) else {
                        // No listener: nothing can be sent there, which is the policy.
                        assert_eq!(want, Want::Unreachable, "{what}");
                        no_listener += 1;
                        continue;
                    };
                    assert_ne!(want, Want::Unreachable, "{what}");
                    let relay_node = net.node(relay);
                    let conn = match conns.get(&(ri, channel)) {
                        Some(c) => c.clone(),
                        None => {
                            reconnects += 1;
                            let c = endpoints[&channel]
                                .connect(&n(relay), addr)
                                .await
                                .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
                            conns.insert((ri, channel), c.clone());
                            c
                        }
                    };
                    let (id, env) = seal(&roster, &signing, class, dest);
                    let before = refusals(relay_node);
                    let accepted_before = relay_node.counters().get("accepted");
                    let answer = tokio::time::timeout(LONG, conn.transfer(&transfer(env, dest), 0))
                        .await
                        .unwrap_or_else(|_| panic!("{what}: no answer within {LONG:?}"));
                    // The relay counts before it answers: settled now.
                    let counted = grew(&before, &refusals(relay_node));
                    match want {
                        Want::Delivered => {
                            match answer {
                                Ok(Frame {
                                    kind: Some(Kind::Accepted(a)),
                                }) => assert_eq!(a.message_id, id.as_bytes().to_vec(), "{what}"),
                                other => panic!("{what}: expected Accepted, got {other:?}"),
                            }
                            assert!(counted.is_empty(), "{what}: refusals counted: {counted:?}");
                            assert_eq!(relay_node.counters().get("accepted"), accepted_before + 1);
                        }
                        Want::Refused { code, counter, close } => {
                            let says = match counter {
                                "wrong_channel" => {
                                    format!("travels only on the {} channel", class_channel(class))
                                }
                                "above_channel_max" => format!("above the {channel} channel's maximum"),
                                "no_route" => format!("no route to {dest} on the {channel} channel"),
                                "not_cleared" => format!("recipient {dest} is cleared for"),
                                _ => unreachable!(),
                            };
                            check_refused(&conn, answer, code, close, &says, &what).await;
                            assert_eq!(
                                counted,
                                BTreeMap::from([(format!("refused.{counter}"), 1)]),
                                "{what}"
                            );
                            assert_eq!(relay_node.counters().get("accepted"), accepted_before, "{what}");
                            assert!(!relay_node.has_seen(&id).expect("dedup lookup"), "{what}: stored");
                            if close {
                                conns.remove(&(ri, channel));
                            }
                        }
                        Want::Unreachable => unreachable!(),
                    }
                    cases.push(Case {
                        id,
                        class,
                        channel,
                        relay: ri,
                        dest: di,
                        want,
                    });
                }
            }
        }
    }

    // The matrix: 6 classes × 2 channels × 6 relays × 6 recipients.
    let delivered: Vec<&Case> = cases.iter().filter(|c| c.want == Want::Delivered).collect();
    let refused: Vec<&Case> = cases.iter().filter(|c| c.want != Want::Delivered).collect();
    println!(
        "matrix: {} delivered, {} refused, {no_listener} unreachable (no listener), {reconnects} connections",
        delivered.len(),
        refused.len()
    );
    assert!(!delivered.is_empty() && !refused.is_empty());
    assert_eq!(delivered.len() + refused.len() + no_listener, 6 * 2 * 6 * 6);
    // Unreachable: the 2 open-only relays × 6 classes × 6 recipients on secure.
    // Delivered: Σ over classes of (relays cleared) × (recipients cleared) = 6²+5²+4²+3²+2²+1².
    assert_eq!((delivered.len(), refused.len(), no_listener), (91, 269, 72));
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for c in &refused {
        if let Want::Refused { counter, .. } = c.want {
            *by_reason.entry(format!("refused.{counter}")).or_default() += 1;
        }
    }
    println!("refusals by reason: {by_reason:?}");

    // Every delivered case reaches its recipient, on the class's channel, and nothing else
    // reaches any recipient.
    for (di, dest) in DESTS.iter().enumerate() {
        let node = net.node(dest);
        let expect: BTreeMap<MessageId, (Channel, Class)> = delivered
            .iter()
            .filter(|c| c.dest == di)
            .map(|c| (c.id, (c.channel, c.class)))
            .collect();
        wait_until(
            node,
            LONG,
            &format!("{} deliveries at {dest}", expect.len()),
            || inbox(node).len() >= expect.len(),
        )
        .await
        .expect("delivered");
        assert_eq!(inbox(node), expect, "{dest}'s inbox");
    }
    // Receipts back at origin, then every outbox drained: nothing in flight.
    let origin = net.node(ORIGIN);
    wait_until(origin, LONG, "a receipt for every delivery", || {
        origin.counters().get("receipts") == delivered.len() as u64
    })
    .await
    .expect("receipts");
    for s in &specs {
        let node = net.node(s.id);
        wait_until(node, LONG, &format!("{}'s outboxes drained", s.id), || {
            queued(node) == 0
        })
        .await
        .expect("drained");
    }

    // Counters: each relay refused exactly its refused cases, by reason, and took
    // custody of and forwarded exactly its delivered ones; no recipient and not origin
    // refused anything, and no egress check had anything to stop.
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for (ri, relay) in RELAYS.iter().enumerate() {
        let node = net.node(relay);
        let mut expect: BTreeMap<String, u64> = BTreeMap::new();
        for c in refused.iter().filter(|c| c.relay == ri) {
            if let Want::Refused { counter, .. } = c.want {
                *expect.entry(format!("refused.{counter}")).or_default() += 1;
            }
        }
        assert_eq!(refusals(node), expect, "{relay}'s refusals");
        for (k, v) in expect {
            *total.entry(k).or_default() += v;
        }
        let mine = delivered.iter().filter(|c| c.relay == ri).count() as u64;
        assert_eq!(node.counters().get("accepted"), mine, "{relay} accepted");
        // The custody record is visible (outbox drained) a moment before
        // the counter that follows it.
        wait_until(node, LONG, &format!("{relay} counted its forwards"), || {
            node.counters().get("forwarded") >= mine
        })
        .await
        .expect("counted");
        assert_eq!(node.counters().get("forwarded"), mine, "{relay} forwarded");
    }
    assert_eq!(total, by_reason);
    for s in &specs {
        let counters = net.node(s.id).counters().snapshot();
        let egress: Vec<_> = counters
            .keys()
            .filter(|k| k.starts_with("egress_refused."))
            .collect();
        assert!(egress.is_empty(), "{}: {egress:?}", s.id);
        if !s.id.starts_with("relay-") {
            assert!(refusals(net.node(s.id)).is_empty(), "{}: {counters:?}", s.id);
        }
    }

    // Stores: a delivered message is held by its relay and its recipient only; a refused
    // one by no node at all (so no outbox ever had a copy: a copy is written with the id).
    for c in &cases {
        for s in &specs {
            let held = net.node(s.id).has_seen(&c.id).expect("dedup lookup");
            let should = c.want == Want::Delivered && (s.id == RELAYS[c.relay] || s.id == DESTS[c.dest]);
            assert_eq!(held, should, "{} has_seen {:?}: {c:?}", s.id, c.id);
        }
    }

    // The wire. A refused message's id is in exactly one recorded frame: the transfer
    // its relay received from origin. A delivered one is only on the class's channel,
    // only between origin, its relay and its recipient, and its recipient received it
    // from its relay. No node ever sent a transfer on a channel its class does not
    // belong on, or to a peer not cleared for it.
    let all = IdSet::new(cases.iter().map(|c| &c.id));
    let mut hits: BTreeMap<[u8; 16], Vec<(&str, Recorded)>> = BTreeMap::new();
    let clearance: BTreeMap<NodeId, Class> = specs.iter().map(|s| (n(s.id), s.clearance)).collect();
    let mut sent_transfers = 0;
    for (node, rec) in &recorders {
        for frame in rec.frames() {
            let (channel, dir, peer, bytes) = &frame;
            if *dir == Direction::Sent
                && let Some(class) = transfer_class(bytes)
            {
                sent_transfers += 1;
                assert_eq!(class_channel(class), *channel, "{node} sent {class} on {channel}");
                assert!(class <= clearance[peer], "{node} sent {class} to {peer}");
            }
            for id in all.find(bytes) {
                hits.entry(id).or_default().push((*node, frame.clone()));
            }
        }
    }
    // The relays' forwards and the recipients' receipts.
    assert_eq!(sent_transfers, 2 * delivered.len());
    for c in &cases {
        let relay = RELAYS[c.relay];
        let dest = DESTS[c.dest];
        let seen = hits.get(c.id.as_bytes()).map(Vec::as_slice).unwrap_or_default();
        let at = |node: &str, dir, peer: &str| {
            seen.iter()
                .filter(|(who, (ch, d, p, _))| {
                    *who == node && *ch == c.channel && *d == dir && p.as_str() == peer
                })
                .count()
        };
        if c.want == Want::Delivered {
            assert_eq!(at(relay, Direction::Received, ORIGIN), 1, "{c:?}");
            assert_eq!(at(dest, Direction::Received, relay), 1, "{c:?}");
            for (who, (ch, _, peer, _)) in seen {
                assert_eq!(*ch, c.channel, "{c:?} seen by {who} on {ch}");
                assert!([ORIGIN, relay, dest].contains(who), "{c:?} seen by {who}");
                assert!(
                    [ORIGIN, relay, dest].contains(&peer.as_str()),
                    "{c:?} seen with {peer}"
                );
            }
        } else {
            assert_eq!(
                seen.len(),
                1,
                "{c:?} seen: {:?}",
                seen.iter().map(|(w, f)| (w, f.0, f.1, &f.2)).collect::<Vec<_>>()
            );
            assert_eq!(at(relay, Direction::Received, ORIGIN), 1, "{c:?}");
        }
    }
    net.shutdown().await;
}

/// The one channel `class` travels on (DESIGN §2).
fn class_channel(class: Class) -> Channel {
    if class >= Class::Restricted {
        Channel::Secure
    } else {
        Channel::Open
    }
}

// ---------------------------------------------------------------------------------------
// 2. The open channel never carries a classified message.

const REGION: &str = "region-uppsala";
const AUTHORITY: &str = "socialstyrelsen";

fn report(class: Class, precedence: Precedence, number: u32) -> Submission {
    let mut r = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    r.report_number = number;
    Submission {
        author: "TiB Region Uppsala".into(),
        label: Label::new(class),
        precedence,
        mode: Mode::Exercise,
        recipients: vec![n(AUTHORITY)],
        expires_ms: None,
        content: Content::Report(r),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_channel_never_carries_a_classified_message() {
    let specs = line();
    let mut net = TestNet::prepare(&specs);
    let mut recorders: BTreeMap<&str, Arc<Recorder>> = BTreeMap::new();
    for s in &specs {
        let rec = Arc::new(Recorder::default());
        net.start_node_with(s.id, Some(rec.clone())).await;
        recorders.insert(s.id, rec);
    }
    let region = net.node(REGION);
    let authority = net.node(AUTHORITY);

    // 30 OPEN/SENSITIVE and 30 RESTRICTED/SECRET reports, interleaved, mixed precedence.
    let classes = [Class::Sensitive, Class::Restricted, Class::Open, Class::Secret];
    let precedences = [
        Precedence::Routine,
        Precedence::Priority,
        Precedence::Immediate,
        Precedence::Flash,
    ];
    let mut sent: BTreeMap<MessageId, Class> = BTreeMap::new();
    for i in 0..60u32 {
        let class = classes[i as usize % 4];
        let precedence = precedences[(i as usize / 4) % 4];
        let id = region
            .submit(report(class, precedence, i + 1))
            .await
            .unwrap_or_else(|e| panic!("submit {class}: {e}"));
        sent.insert(id, class);
    }
    let open: Vec<MessageId> = sent
        .iter()
        .filter(|(_, c)| class_channel(**c) == Channel::Open)
        .map(|(id, _)| *id)
        .collect();
    let classified: Vec<MessageId> = sent
        .iter()
        .filter(|(_, c)| class_channel(**c) == Channel::Secure)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!((open.len(), classified.len()), (30, 30));

    wait_until(authority, LONG, "60 deliveries", || inbox(authority).len() >= 60)
        .await
        .expect("delivered");
    let got = inbox(authority);
    let expect: BTreeMap<MessageId, (Channel, Class)> = sent
        .iter()
        .map(|(id, c)| (*id, (class_channel(*c), *c)))
        .collect();
    assert_eq!(got, expect, "each report delivered once, on its class's channel");
    wait_until(region, LONG, "60 receipts", || {
        sent.keys().all(|id| {
            region
                .delivery(id)
                .expect("delivery")
                .iter()
                .any(|d| d.state == DeliveryState::Delivered)
        })
    })
    .await
    .expect("receipts");
    for s in &specs {
        let node = net.node(s.id);
        wait_until(node, LONG, &format!("{}'s outboxes drained", s.id), || {
            queued(node) == 0
        })
        .await
        .expect("drained");
    }

    // Search every recorded frame, by every node, in both directions, for the raw id
    // bytes: wherever a header (or a receipt, or an Accepted) put them.
    let open_set = IdSet::new(&open);
    let classified_set = IdSet::new(&classified);
    let all_open: BTreeSet<[u8; 16]> = open.iter().map(|id| *id.as_bytes()).collect();
    let all_classified: BTreeSet<[u8; 16]> = classified.iter().map(|id| *id.as_bytes()).collect();
    for (node, rec) in &recorders {
        let frames = rec.frames();
        let mut on_open = BTreeSet::new();
        let mut on_secure = BTreeSet::new();
        let mut count = BTreeMap::<Channel, usize>::new();
        for (channel, dir, peer, bytes) in &frames {
            *count.entry(*channel).or_default() += 1;
            let class = transfer_class(bytes);
            match channel {
                Channel::Open => {
                    let leaked = classified_set.find(bytes);
                    assert!(
                        leaked.is_empty(),
                        "{node} {dir:?} a frame with {} classified id(s) on open with {peer}",
                        leaked.len()
                    );
                    assert!(
                        class.is_none_or(|c| c <= Class::Sensitive),
                        "{node}: {class:?} on open"
                    );
                    on_open.extend(open_set.find(bytes));
                }
                Channel::Secure => {
                    assert!(open_set.find(bytes).is_empty(), "{node}: an open id on secure");
                    assert!(
                        class.is_none_or(|c| c >= Class::Restricted),
                        "{node}: {class:?} on secure"
                    );
                    on_secure.extend(classified_set.find(bytes));
                }
            }
        }
        // Not vacuous: each node saw every message of each kind on its own channel.
        assert!(
            count[&Channel::Open] > 0 && count[&Channel::Secure] > 0,
            "{node}: {count:?}"
        );
        assert_eq!(on_open, all_open, "{node}: open ids on open frames");
        assert_eq!(
            on_secure, all_classified,
            "{node}: classified ids on secure frames"
        );
        println!("{node}: {count:?} frames recorded");
    }

    // The audit logs: classified ids only in the secure channel's own log,
    // beside its store; the open channel's (node-wide) log never names one.
    for s in &specs {
        net.stop(s.id).await;
    }
    for node in specs.iter().map(|s| s.id) {
        let config = net.config(node);
        let read = |ch: Channel| {
            let path = config.audit_log(ch);
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let (open_log, secure_log) = (read(Channel::Open), read(Channel::Secure));
        assert_ne!(config.audit_log(Channel::Open), config.audit_log(Channel::Secure));
        for id in &classified {
            let id = id.to_string();
            assert!(
                !open_log.contains(&id),
                "{node}: classified {id} in the open audit log"
            );
            assert!(
                secure_log.contains(&id),
                "{node}: classified {id} not in the secure audit log"
            );
        }
        for id in &open {
            let id = id.to_string();
            assert!(open_log.contains(&id), "{node}: {id} not in the open audit log");
            assert!(
                !secure_log.contains(&id),
                "{node}: open {id} in the secure audit log"
            );
        }
    }
    net.shutdown().await;
}
