//! Refusals at real nodes (DESIGN §5 properties 1, 2, 6, 8): a peer or a frame that
//! breaks a rule gets the specific refusal, the refusing node counts it, and nothing is
//! stored or forwarded.
//!
//! Each test plays a misbehaving peer with an endpoint that presents a real (or foreign)
//! certificate, against `line()`: region-uppsala → nspl-hub → socialstyrelsen. Where a
//! refusal is followed by a transfer that is accepted, that shows the refusal was for the
//! one thing broken and that the node keeps serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft};
use sitrep_core::{Channel, Class, ContentType, Label, MessageId, Mode, NodeId, Precedence};
use sitrep_net::{
    ChannelEndpoint, NetError, PeerConnection, PeerPolicy, TlsIdentity, TransportLimits, close_code,
};
use sitrep_node::{Node, NodeEvent};
use sitrep_proto::v1::{Envelope, Frame, RejectCode, Transfer, frame::Kind};
use sitrep_testkit::{TestNet, line, wait_until};
use tokio::sync::broadcast;

const REGION: &str = "region-uppsala";
const HUB: &str = "nspl-hub";
const AUTHORITY: &str = "socialstyrelsen";
const LONG: Duration = Duration::from_secs(60);
const HOUR_MS: i64 = 3_600_000;

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

/// A situation report sealed and signed by region-uppsala's real keys for
/// socialstyrelsen, created at `created_ms` and expiring at `expires_ms`.
fn sealed_report(net: &TestNet, created_ms: i64, expires_ms: i64) -> (MessageId, Envelope) {
    let payload = sitrep_core::report::example_uppsala(created_ms).encode_to_vec();
    let (signing, _) = net.keys(REGION);
    let sealed = envelope::seal(
        &Draft {
            origin: n(REGION),
            author: "TiB Region Uppsala".into(),
            label: Label::new(Class::Sensitive),
            precedence: Precedence::Priority,
            mode: Mode::Exercise,
            content_type: ContentType::SituationReport,
            recipients: vec![n(AUTHORITY)],
            in_reply_to: None,
            expires_ms,
            payload: &payload,
        },
        &signing,
        &net.roster(),
        created_ms,
    )
    .expect("seal");
    let env = Envelope::decode(sealed.bytes.as_slice()).expect("a sealed envelope decodes");
    (sealed.header.id, env)
}

/// A valid report, as `sealed_report`, created now with a day to live.
fn valid_report(net: &TestNet) -> (MessageId, Envelope) {
    let now = sitrep_node::clock::now_ms();
    sealed_report(net, now, now + 24 * HOUR_MS)
}

fn transfer(env: &Envelope, hop_count: u32) -> Frame {
    Frame {
        kind: Some(Kind::Transfer(Transfer {
            envelope: env.encode_to_vec(),
            hop_count,
            serves: Vec::new(),
        })),
    }
}

/// Connects `ep` to node `to` on the open channel; must succeed.
async fn connect(ep: &ChannelEndpoint, net: &TestNet, to: &str) -> PeerConnection {
    let addr = net.addr(to, Channel::Open).expect("node listens on open");
    ep.connect(&n(to), addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"))
}

/// Sends `frame` and returns the answer, which must come.
async fn send(conn: &PeerConnection, frame: &Frame) -> Frame {
    tokio::time::timeout(LONG, conn.transfer(frame, 0))
        .await
        .expect("an answer within the timeout")
        .unwrap_or_else(|e| panic!("transfer failed instead of being answered: {e}"))
}

/// Connects and sends one transfer, expecting the connect or the transfer to fail.
async fn connect_and_send_fails(ep: &ChannelEndpoint, net: &TestNet, to: &str, frame: &Frame) -> NetError {
    let addr = net.addr(to, Channel::Open).expect("node listens on open");
    let attempt = async {
        let conn = ep.connect(&n(to), addr).await?;
        conn.transfer(frame, 0).await
    };
    match tokio::time::timeout(LONG, attempt)
        .await
        .expect("the attempt ends within the timeout")
    {
        Ok(answer) => panic!("a refused peer got an answer: {answer:?}"),
        Err(e) => e,
    }
}

fn assert_rejected(answer: &Frame, code: RejectCode) {
    match &answer.kind {
        Some(Kind::Rejected(r)) => {
            assert_eq!(r.code(), code, "rejected for another reason: {r:?}");
            assert!(r.permanent, "a {code:?} refusal is permanent: {r:?}");
        }
        other => panic!("expected Rejected {code:?}, got {other:?}"),
    }
}

fn assert_accepted(answer: &Frame, id: &MessageId) {
    match &answer.kind {
        Some(Kind::Accepted(a)) => assert_eq!(a.message_id, id.as_bytes().to_vec()),
        other => panic!("expected Accepted {id}, got {other:?}"),
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

fn only(counter: &str, value: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([(counter.to_owned(), value)])
}

fn queued(node: &Node) -> u64 {
    node.outboxes().iter().map(|(_, h)| h.depth).sum()
}

fn inbox_ids(node: &Node) -> Vec<MessageId> {
    node.inbox(Channel::Open, 0, 100)
        .expect("inbox")
        .into_iter()
        .map(|r| r.header.id)
        .collect()
}

/// Nothing of the refused message anywhere: no node has it in a dedup set, nothing is
/// queued, neither the hub nor the authority accepted anything, the authority's inbox is
/// empty.
fn assert_nothing_kept(net: &TestNet, id: Option<&MessageId>) {
    for name in [REGION, HUB, AUTHORITY] {
        let node = net.node(name);
        if let Some(id) = id {
            assert!(!node.has_seen(id).expect("dedup lookup"), "{name} stored {id}");
        }
        assert_eq!(queued(node), 0, "{name} queued something: {:?}", node.outboxes());
    }
    for name in [HUB, AUTHORITY] {
        assert_eq!(
            net.node(name).counters().get("accepted"),
            0,
            "{name} accepted something"
        );
    }
    assert!(
        inbox_ids(net.node(AUTHORITY)).is_empty(),
        "the authority got a message"
    );
}

/// Waits for a `Refused` event with `reason` (refused connections are not counted
/// through the state watch, only through events).
async fn refusal_event(events: &mut broadcast::Receiver<NodeEvent>, reason: &str) {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Refused { reason: r, .. }) if r == reason => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
            }
        }
    };
    tokio::time::timeout(LONG, wait)
        .await
        .unwrap_or_else(|_| panic!("no refusal {reason:?} within {LONG:?}"));
}

/// Lets any authenticated node talk, like the testkit's impersonating endpoints.
#[derive(Debug)]
struct AllowAll;

impl PeerPolicy for AllowAll {
    fn check(&self, _: Channel, _: &NodeId) -> Result<(), String> {
        Ok(())
    }
}

// 1. Peers are authenticated: a certificate from another CA.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let net = TestNet::start(&line()).await;
    let other = TestNet::prepare(&line());
    let hub = net.node(HUB);
    let mut events = hub.events();
    let (id, env) = valid_report(&net);

    let stranger = other.impersonate(REGION, Channel::Open);
    let err = connect_and_send_fails(&stranger, &net, HUB, &transfer(&env, 1)).await;
    // The stranger trusts only its own CA, so it turns the hub down in the handshake.
    assert!(
        matches!(err, NetError::Refused { .. } | NetError::Connect { .. }),
        "unexpected error: {err}"
    );

    refusal_event(&mut events, "peer").await;
    assert_eq!(refusals(hub), only("refused.peer", 1));
    assert_nothing_kept(&net, Some(&id));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_by_the_hub() {
    let net = TestNet::start(&line()).await;
    let other = TestNet::prepare(&line());
    let hub = net.node(HUB);
    let mut events = hub.events();
    let (id, env) = valid_report(&net);

    // Trusts the hub's CA, so the hub's certificate verifies and only the hub's check of
    // the client certificate (region-uppsala's, but issued by the other CA) can refuse.
    let foreign = other.pki().join(REGION);
    let identity = TlsIdentity::load(
        &net.pki().join(REGION).join("open-ca.crt"),
        &foreign.join("open.crt"),
        &foreign.join("open.key"),
    )
    .expect("identity");
    let stranger = ChannelEndpoint::bind(
        Channel::Open,
        n(REGION),
        "127.0.0.1:0".parse().expect("addr"),
        &identity,
        TransportLimits::default(),
        Arc::new(AllowAll),
        None,
    )
    .expect("bind");
    let err = connect_and_send_fails(&stranger, &net, HUB, &transfer(&env, 1)).await;
    // The hub's TLS alert; never the stranger refusing the hub.
    assert!(
        matches!(err, NetError::Connect { .. } | NetError::Connection(_)),
        "unexpected error: {err}"
    );

    refusal_event(&mut events, "peer").await;
    assert_eq!(refusals(hub), only("refused.peer", 1));
    assert_nothing_kept(&net, Some(&id));
    net.shutdown().await;
}

// 1. Peers are authenticated: a valid certificate of a node that is not the configured peer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_of_a_node_that_is_not_a_configured_peer_is_refused() {
    let net = TestNet::start(&line()).await;
    let authority = net.node(AUTHORITY);
    let mut events = authority.events();
    let (id, env) = valid_report(&net);

    // region-uppsala's real certificate, but socialstyrelsen's only peer is the hub.
    let region = net.impersonate(REGION, Channel::Open);
    let err = connect_and_send_fails(&region, &net, AUTHORITY, &transfer(&env, 1)).await;
    match &err {
        NetError::ClosedByPeer { code, reason } => {
            assert_eq!(*code, u64::from(close_code::REFUSED_PEER), "{err}");
            assert!(reason.contains("not a configured peer"), "{err}");
        }
        NetError::Connect { reason, .. } => assert!(reason.contains("not a configured peer"), "{err}"),
        other => panic!("unexpected error: {other}"),
    }

    refusal_event(&mut events, "peer").await;
    assert_eq!(refusals(authority), only("refused.peer", 1));
    assert!(refusals(net.node(HUB)).is_empty());
    assert_nothing_kept(&net, Some(&id));
    net.shutdown().await;
}

// 8. Bounded resources: a frame over the size limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_and_the_connection_keeps_serving() {
    let net = TestNet::start(&line()).await;
    let hub = net.node(HUB);
    let authority = net.node(AUTHORITY);
    let region = net.impersonate(REGION, Channel::Open);
    let conn = connect(&region, &net, HUB).await;

    let huge = Envelope {
        sealed: vec![0; 5 << 20],
        signature: vec![0; 64],
    };
    let frame = transfer(&huge, 1);
    assert!(frame.encoded_len() > sitrep_net::DEFAULT_MAX_FRAME_BYTES);
    assert_rejected(&send(&conn, &frame).await, RejectCode::FrameTooLarge);
    assert_nothing_kept(&net, None);

    // The same connection still carries a valid transfer. The hub counts the refusal
    // before it reads the next stream, so after this answer the count is settled.
    let (id, env) = valid_report(&net);
    assert_accepted(&send(&conn, &transfer(&env, 1)).await, &id);
    assert_eq!(refusals(hub), only("refused.frame_too_large", 1));
    wait_until(authority, LONG, "the valid report at the authority", || {
        !inbox_ids(authority).is_empty()
    })
    .await
    .expect("delivered");
    assert_eq!(inbox_ids(authority), vec![id]);
    net.shutdown().await;
}

// 2. Signature first: a broken signature.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_with_a_broken_signature_is_refused() {
    let net = TestNet::start(&line()).await;
    let hub = net.node(HUB);
    let region = net.impersonate(REGION, Channel::Open);
    let conn = connect(&region, &net, HUB).await;

    let (id, env) = valid_report(&net);
    let mut broken = env.clone();
    let i = broken.signature.len() / 2;
    broken.signature[i] ^= 0x01;
    assert_rejected(
        &send(&conn, &transfer(&broken, 1)).await,
        RejectCode::BadSignature,
    );
    assert_eq!(refusals(hub), only("refused.bad_signature", 1));
    assert_nothing_kept(&net, Some(&id));

    // The signature was the only thing wrong: the intact envelope is accepted.
    assert_accepted(&send(&conn, &transfer(&env, 1)).await, &id);
    net.shutdown().await;
}

// 6. No replay, also after a restart: at the hub.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_envelope_is_refused_also_after_the_hub_restarts() {
    let mut net = TestNet::start(&line()).await;
    let region = net.impersonate(REGION, Channel::Open);
    let (id, env) = valid_report(&net);
    let frame = transfer(&env, 1);
    {
        let hub = net.node(HUB);
        let authority = net.node(AUTHORITY);
        let conn = connect(&region, &net, HUB).await;
        assert_accepted(&send(&conn, &frame).await, &id);
        wait_until(authority, LONG, "the report at the authority", || {
            inbox_ids(authority).len() == 1
        })
        .await
        .expect("delivered");
        // Let the traffic settle: the report handed on, and the authority's receipt
        // through the hub to region-uppsala, so nothing is in flight at the restart.
        wait_until(hub, LONG, "the report and its receipt handed on", || {
            hub.counters().get("forwarded") == 2 && queued(hub) == 0
        })
        .await
        .expect("forwarded");
        wait_until(authority, LONG, "the authority's receipt handed on", || {
            queued(authority) == 0
        })
        .await
        .expect("receipt forwarded");

        assert_rejected(&send(&conn, &frame).await, RejectCode::Duplicate);
        assert_eq!(refusals(hub), only("refused.duplicate", 1));
        assert!(hub.has_seen(&id).expect("dedup lookup"));
    }

    net.restart(HUB).await;
    let hub = net.node(HUB);
    let conn = connect(&region, &net, HUB).await;
    assert_rejected(&send(&conn, &frame).await, RejectCode::Duplicate);
    assert_eq!(refusals(hub), only("refused.duplicate", 1));
    assert_eq!(hub.counters().get("accepted"), 0);
    assert_eq!(queued(hub), 0);
    assert_eq!(inbox_ids(net.node(AUTHORITY)), vec![id]);
    net.shutdown().await;
}

// 6. No replay, also after a restart: at the recipient, which must deliver once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_the_recipient_is_not_delivered_again_also_after_it_restarts() {
    let mut net = TestNet::start(&line()).await;
    let (id, env) = valid_report(&net);
    {
        let authority = net.node(AUTHORITY);
        let conn = connect(&net.impersonate(REGION, Channel::Open), &net, HUB).await;
        assert_accepted(&send(&conn, &transfer(&env, 1)).await, &id);
        wait_until(authority, LONG, "the report at the authority", || {
            inbox_ids(authority).len() == 1
        })
        .await
        .expect("delivered");
        let real_hub = net.node(HUB);
        wait_until(real_hub, LONG, "the report and its receipt handed on", || {
            real_hub.counters().get("forwarded") == 2 && queued(real_hub) == 0
        })
        .await
        .expect("forwarded");
        wait_until(authority, LONG, "the authority's receipt handed on", || {
            queued(authority) == 0
        })
        .await
        .expect("receipt forwarded");
    }
    // The hub's own copy, replayed straight to the authority as the hub would send it.
    let hub = net.impersonate(HUB, Channel::Open);
    let frame = transfer(&env, 2);
    let conn = connect(&hub, &net, AUTHORITY).await;
    assert_rejected(&send(&conn, &frame).await, RejectCode::Duplicate);
    assert_eq!(refusals(net.node(AUTHORITY)), only("refused.duplicate", 1));
    assert_eq!(net.node(AUTHORITY).counters().get("delivered"), 1);

    net.restart(AUTHORITY).await;
    let authority = net.node(AUTHORITY);
    let conn = connect(&hub, &net, AUTHORITY).await;
    assert_rejected(&send(&conn, &frame).await, RejectCode::Duplicate);
    assert_eq!(refusals(authority), only("refused.duplicate", 1));
    assert_eq!(authority.counters().get("delivered"), 0);
    assert_eq!(inbox_ids(authority), vec![id]);
    net.shutdown().await;
}

// 2. Signature first, then expiry: an expired envelope.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_envelope_is_refused() {
    let net = TestNet::start(&line()).await;
    let hub = net.node(HUB);
    let region = net.impersonate(REGION, Channel::Open);
    let conn = connect(&region, &net, HUB).await;

    let now = sitrep_node::clock::now_ms();
    let (id, env) = sealed_report(&net, now - 2 * HOUR_MS, now - HOUR_MS);
    assert_rejected(&send(&conn, &transfer(&env, 1)).await, RejectCode::Expired);
    assert_eq!(refusals(hub), only("refused.expired", 1));
    assert_nothing_kept(&net, Some(&id));

    // The same connection carries an unexpired one.
    let (id, env) = valid_report(&net);
    assert_accepted(&send(&conn, &transfer(&env, 1)).await, &id);
    net.shutdown().await;
}

// Routing: a hop count over the limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_count_over_the_limit_is_refused() {
    let net = TestNet::start(&line()).await;
    let hub = net.node(HUB);
    let region = net.impersonate(REGION, Channel::Open);
    let conn = connect(&region, &net, HUB).await;
    let limit = net.config(HUB).limits.hop_limit;
    assert_eq!(limit, sitrep_core::routing::DEFAULT_HOP_LIMIT);

    let (id, env) = valid_report(&net);
    assert_rejected(
        &send(&conn, &transfer(&env, limit + 1)).await,
        RejectCode::HopLimit,
    );
    assert_eq!(refusals(hub), only("refused.hop_limit", 1));
    assert_nothing_kept(&net, Some(&id));

    // The hop count was the only thing wrong, and the limit itself is allowed.
    assert_accepted(&send(&conn, &transfer(&env, limit)).await, &id);
    net.shutdown().await;
}
