//! Ingress: accept connections and, for every incoming transfer, gather the
//! inputs of the decision (verification, dedup), let
//! `sitrep_core::ingress::decide` decide, and carry it out: open the payload
//! if it is for us, seal the receipt, store everything in one atomic write,
//! then answer. A refusal is answered, then carried out by
//! [`Shared::refused`](crate::shared::Shared::refused).
//!
//! Not here: the rules (`sitrep_core::ingress`, `policy`, `routing`), the
//! transport (`sitrep_net`), the store (`sitrep_store`).

use std::sync::Arc;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft, Verified};
use sitrep_core::ingress::{Accepted, Arrival, Decision, Local, Refusal, RefuseReason, Seen, Verification};
use sitrep_core::{Channel, ContentType, MessageId, NodeId, Roster};
use sitrep_net::{IncomingStream, IncomingTransfer, NetError, PeerConnection, close_code};
use sitrep_proto::v1 as pb;
use sitrep_store::{Copy, Ingest, Op, Storage, StoreError};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::event::NodeEvent;
use crate::metrics::{Direction, Event};
use crate::shared::{ChannelRt, Refused, ReportInput, Shared, lock, shown};

/// Receipts live at least a day, so they come back after an outage.
const RECEIPT_MIN_LIFETIME_MS: i64 = 86_400_000;

pub(crate) async fn accept_loop(shared: Arc<Shared>, channel: Channel) -> Result<(), NodeError> {
    let Some(rt) = shared.channels.get(&channel) else {
        return Ok(());
    };
    let mut conns = JoinSet::new();
    loop {
        let next = tokio::select! {
            () = shared.cancel.cancelled() => break,
            next = rt.endpoint.accept() => next,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match next {
            None => break,
            Some(Ok(conn)) => {
                tracing::info!(peer = %shown(channel, conn.peer()), %channel, remote = %shown(channel, conn.remote_address()), "peer connected");
                shared.counters.inc(Event::ConnectionsAccepted);
                conns.spawn(serve_connection(Arc::clone(&shared), channel, conn));
            }
            // A handshake that timed out or was reset is the network, not
            // a peer breaking the rules (a TLS refusal either way is
            // `NetError::Refused`): counted apart from refusals.
            Some(Err(e @ (NetError::Connection(_) | NetError::Stream(_)))) => {
                tracing::debug!(%channel, error = %shown(channel, &e.to_string()), "incoming connection failed");
                shared.counters.inc(Event::ConnectionsFailed);
            }
            Some(Err(e)) => shared.refused(&Refused {
                direction: Direction::Ingress,
                reason: RefuseReason::Peer,
                detail: &e.to_string(),
                peer: None,
                channel,
                id: None,
                class: None,
            }),
        }
    }
    // In-flight transfers finish (or the endpoint shutdown cuts them).
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Accepts the connection's streams; each is read and handled in its own
/// task (QUIC's stream limit bounds how many), so a slow or stalled stream
/// holds up no other.
async fn serve_connection(shared: Arc<Shared>, channel: Channel, conn: PeerConnection) {
    let mut transfers = JoinSet::new();
    loop {
        while transfers.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = shared.cancel.cancelled() => break,
            stream = conn.accept_stream() => stream,
        };
        let Some(stream) = stream else { break };
        transfers.spawn(read_and_handle(
            Arc::clone(&shared),
            channel,
            conn.clone(),
            stream,
        ));
    }
    while transfers.join_next().await.is_some() {}
}

async fn read_and_handle(
    shared: Arc<Shared>,
    channel: Channel,
    conn: PeerConnection,
    stream: IncomingStream,
) {
    let (reason, detail) = match stream.read().await {
        Ok(Some(t)) => return handle(shared, channel, conn, t).await,
        Ok(None) => return,
        Err(NetError::FrameTooLarge { len, limit }) => {
            (RefuseReason::FrameTooLarge, format!("{len} > {limit}"))
        }
        Err(NetError::Decode(e)) => (RefuseReason::Malformed, e.clone()),
        Err(e) => {
            tracing::debug!(peer = %shown(channel, conn.peer()), %channel, error = %e, "stream failed");
            return;
        }
    };
    shared.refused(&Refused {
        direction: Direction::Ingress,
        reason,
        detail: &detail,
        peer: Some(conn.peer()),
        channel,
        id: None,
        class: None,
    });
}

async fn handle(shared: Arc<Shared>, channel: Channel, conn: PeerConnection, t: IncomingTransfer) {
    let peer = t.peer().clone();
    let refusal = match ingest(&shared, channel, &peer, &t.frame).await {
        Ok(id) => {
            let accepted = pb::Frame {
                kind: Some(pb::frame::Kind::Accepted(pb::Accepted {
                    message_id: id.as_bytes().to_vec(),
                })),
            };
            if let Err(e) = t.respond(&accepted).await {
                tracing::debug!(peer = %shown(channel, &peer), %channel, error = %e, "could not answer transfer");
            }
            return;
        }
        Err(r) => r,
    };
    // The id and class as claimed: unverified, but what the refusal was about.
    let claimed = match &t.frame.kind {
        Some(pb::frame::Kind::Transfer(tr)) => envelope::peek_header(&tr.envelope).ok(),
        _ => None,
    };
    shared.refused(&Refused {
        direction: Direction::Ingress,
        reason: refusal.reason,
        detail: &refusal.detail,
        peer: Some(&peer),
        channel,
        id: claimed.as_ref().map(|h| h.id),
        class: claimed.as_ref().map(|h| h.label.class),
    });
    let answer = pb::Frame {
        kind: Some(pb::frame::Kind::Rejected(pb::Rejected {
            code: refusal.code as i32,
            reason: refusal.detail.clone(),
            permanent: refusal.permanent,
        })),
    };
    if refusal.close {
        // The refusal first, acknowledged, then the close with its code.
        let _ = t
            .respond_then_wait(&answer, std::time::Duration::from_secs(2))
            .await;
        conn.close(close_code::POLICY, &refusal.detail);
    } else if let Err(e) = t.respond(&answer).await {
        tracing::debug!(peer = %shown(channel, &peer), %channel, error = %e, "could not answer transfer");
    }
}

/// Marks an id as being handled; a concurrent retransmission is refused as
/// a transient duplicate and retried later.
struct Busy<'a> {
    shared: &'a Shared,
    id: MessageId,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.shared.ingress_busy).remove(&self.id);
    }
}

/// The dedup input of the decision, holding the id as busy when it is new.
fn seen<'a>(shared: &'a Shared, rt: &ChannelRt, id: MessageId) -> (Seen, Option<Busy<'a>>) {
    match rt.store.seen(&id) {
        Err(e) => return (Seen::Unavailable(e.to_string()), None),
        Ok(true) => return (Seen::Durable, None),
        Ok(false) => {}
    }
    if lock(&shared.ingress_busy).insert(id) {
        (Seen::New, Some(Busy { shared, id }))
    } else {
        (Seen::Pending, None)
    }
}

async fn ingest(
    shared: &Shared,
    channel: Channel,
    peer: &NodeId,
    frame: &pb::Frame,
) -> Result<MessageId, Refusal> {
    let Some(pb::frame::Kind::Transfer(tr)) = &frame.kind else {
        return Err(Refusal::malformed("expected a Transfer frame"));
    };
    let rt = shared
        .channels
        .get(&channel)
        .ok_or_else(|| Refusal::internal("channel not running"))?;
    // The bytes as the origin signed them (never re-encoded).
    let bytes = (!tr.envelope.is_empty()).then(|| tr.envelope.clone());
    let now = now_ms();
    let roster = shared.roster.get();
    // Signature first: nothing in the header is believed before this.
    let verified = match &bytes {
        None => None,
        Some(b) => Some(
            shared
                .verifier
                .verify(b, &roster, now)
                .await
                .map_err(|_| Refusal::internal("the signature check did not finish; try again"))?,
        ),
    };
    let (seen_now, _busy) = match &verified {
        Some(Ok(v)) => seen(shared, rt, v.header.id),
        _ => (Seen::New, None),
    };
    let ctx = shared.context(channel, &roster);
    let arrival = Arrival {
        previous_hop: peer,
        hop_count: tr.hop_count,
        envelope: match &verified {
            None => Verification::Missing,
            Some(Ok(v)) => Verification::Valid(&v.header),
            Some(Err(e)) => Verification::Invalid(e),
        },
        serves: &tr.serves,
        seen: seen_now,
    };
    let accepted = match sitrep_core::ingress::decide(&ctx, &arrival) {
        Decision::Refuse(r) => return Err(r),
        Decision::Accept(a) => a,
    };
    let (Some(Ok(v)), Some(bytes)) = (verified, bytes) else {
        return Err(Refusal::internal("accepted without a verified envelope"));
    };
    carry_out(shared, rt, peer, &roster, v, bytes, tr.hop_count, accepted, now).await
}

/// Does what an accepted decision says: opens and checks what is for us,
/// seals the receipt, stores it all in one atomic write, then counts,
/// audits, wakes the links and emits.
#[allow(clippy::too_many_arguments)]
async fn carry_out(
    shared: &Shared,
    rt: &ChannelRt,
    peer: &NodeId,
    roster: &Roster,
    v: Verified,
    bytes: Vec<u8>,
    hop_count: u32,
    accepted: Accepted,
    now: i64,
) -> Result<MessageId, Refusal> {
    let h = &v.header;
    let class = h.label.class;
    let channel = rt.channel;
    let mut ops = Vec::new();
    let mut notify: Vec<NodeId> = accepted.copies.keys().cloned().collect();
    let mut receipt_for = None;
    let inbox = matches!(accepted.local, Some(Local::Inbox { .. }));
    let mut report = None;
    match accepted.local {
        None => {}
        Some(Local::ReceiptForUs) => {
            let r = receipt_of(&v)?;
            let id = MessageId::from_slice(&r.message_id).map_err(|_| Refusal::malformed("receipt id"))?;
            ops.push(Op::Delivered {
                id,
                recipient: h.origin.clone(),
                delivered_ms: r.delivered_unix_ms,
            });
            receipt_for = Some((id, h.origin.clone()));
        }
        Some(Local::Inbox { receipt }) => {
            let payload = envelope::open(&v, &shared.id, &shared.hpke)?;
            if h.content_type == ContentType::SituationReport {
                report = Some(
                    pb::SituationReport::decode(payload.as_slice())
                        .map_err(|e| Refusal::malformed(format!("situation report does not decode: {e}")))?,
                );
            }
            if let Some(route) = receipt {
                let sealed = seal_receipt(shared, roster, &v, now)?;
                let copies = route?;
                notify.extend(copies.keys().cloned());
                let (id, envelope, expires_ms) = sealed;
                ops.push(Op::Ingest(Ingest {
                    id,
                    envelope,
                    precedence: h.precedence,
                    expires_ms,
                    now_ms: now,
                    hop_count: 0,
                    copies: Copy::per_hop(copies),
                    inbox: false,
                    track: Vec::new(),
                    submission: None,
                }));
            }
        }
    }
    // Only an aggregator keeps reports for feeds (and needs their digest).
    let for_feeds = report
        .filter(|_| shared.builds_feeds())
        .map(|report| ReportInput {
            report,
            envelope_sha256: sitrep_crypto::sha256(&bytes),
            received_ms: now,
        });
    ops.insert(
        0,
        Op::Ingest(Ingest {
            id: h.id,
            envelope: bytes,
            precedence: h.precedence,
            expires_ms: h.expires_ms,
            now_ms: now,
            hop_count,
            copies: Copy::per_hop(accepted.copies),
            inbox,
            track: Vec::new(),
            submission: None,
        }),
    );
    match rt.store.apply(ops).await {
        Ok(_) => {}
        Err(StoreError::Duplicate(id)) => return Err(Refusal::duplicate(id, true)),
        Err(e) => return Err(Refusal::store(e)),
    }
    shared.counters.inc(Event::Accepted);
    shared.audit("accept", Some(h.id), Some(peer), channel, Some(class), "");
    shared.wake_links(channel, &notify);
    if inbox {
        shared.counters.inc(Event::Delivered);
        shared.audit("deliver", Some(h.id), Some(peer), channel, Some(class), "");
        tracing::info!(id = %shown(channel, h.id), origin = %shown(channel, &h.origin), %channel, class = %class, "delivered");
        if let Some(input) = for_feeds {
            shared.offer_report(h, channel, input);
        }
        if matches!(
            h.content_type,
            ContentType::Subscribe
                | ContentType::Unsubscribe
                | ContentType::FeedUpdate
                | ContentType::Subscription
        ) {
            // The feeds task reads it from the inbox.
            shared.feeds.wake.notify_one();
        }
        shared.emit(NodeEvent::Delivered {
            id: h.id,
            origin: h.origin.clone(),
            channel,
        });
    }
    if let Some((id, recipient)) = receipt_for {
        shared.counters.inc(Event::Receipts);
        shared.audit("receipt", Some(id), Some(&recipient), channel, Some(class), "");
        tracing::info!(id = %shown(channel, id), recipient = %shown(channel, &recipient), %channel, "receipt");
        shared.emit(NodeEvent::Receipt { id, recipient });
    }
    shared.bump();
    Ok(h.id)
}

/// The receipt in `v`, checked against its header: signed by the recipient
/// it speaks for, about the message it answers.
fn receipt_of(v: &Verified) -> Result<pb::Receipt, Refusal> {
    let payload = v
        .clear_payload()
        .ok_or_else(|| Refusal::malformed("receipt not in the clear"))?;
    let r = pb::Receipt::decode(payload)
        .map_err(|e| Refusal::malformed(format!("receipt does not decode: {e}")))?;
    let h = &v.header;
    if r.recipient != h.origin.as_str()
        || h.in_reply_to.map(|m| m.as_bytes().to_vec()) != Some(r.message_id.clone())
    {
        return Err(Refusal::malformed("receipt does not match its header"));
    }
    Ok(r)
}

/// A signed receipt to the origin of `v`, labelled like it so it returns on
/// the channel the message came on: (id, envelope, expiry).
fn seal_receipt(
    shared: &Shared,
    roster: &Roster,
    v: &Verified,
    now: i64,
) -> Result<(MessageId, Vec<u8>, i64), Refusal> {
    let h = &v.header;
    let body = pb::Receipt {
        message_id: h.id.as_bytes().to_vec(),
        recipient: shared.id.to_string(),
        delivered_unix_ms: now,
    }
    .encode_to_vec();
    let expires_ms = h.expires_ms.max(now + RECEIPT_MIN_LIFETIME_MS);
    let sealed = envelope::seal(
        &Draft {
            origin: shared.id.clone(),
            author: String::new(),
            label: h.label.clone(),
            precedence: h.precedence,
            mode: h.mode,
            content_type: ContentType::Receipt,
            recipients: vec![h.origin.clone()],
            in_reply_to: Some(h.id),
            expires_ms,
            payload: &body,
        },
        &shared.signing,
        roster,
        now,
    )
    .map_err(|e| Refusal::internal(format!("cannot seal receipt: {e}")))?;
    Ok((sealed.header.id, sealed.bytes, expires_ms))
}
