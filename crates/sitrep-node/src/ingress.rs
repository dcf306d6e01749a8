//! Ingress: accept connections, and for every incoming transfer verify,
//! apply label policy, dedup, route, store durably, then answer. A
//! recipient also opens the message and queues a signed receipt to the
//! origin in the same atomic write.

use std::sync::Arc;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft, OpenError, Verified};
use sitrep_core::policy::{Party, PolicyError};
use sitrep_core::routing::check_hop_limit;
use sitrep_core::{Channel, ContentType, MessageId, NodeId};
use sitrep_net::{IncomingTransfer, NetError, PeerConnection, close_code};
use sitrep_proto::v1::{self as pb, RejectCode};
use sitrep_store::{Copy, Ingest, Op, Storage, StoreError};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::node::{NodeError, NodeEvent};
use crate::shared::{Shared, lock};

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
                tracing::info!(peer = %conn.peer(), %channel, remote = %conn.remote_address(), "peer connected");
                shared.counters.inc("connections.accepted");
                conns.spawn(serve_connection(Arc::clone(&shared), channel, conn));
            }
            Some(Err(e)) => {
                shared.refuse("peer");
                shared.audit("refuse", None, None, channel, None, &format!("peer: {e}"));
                tracing::warn!(%channel, error = %e, "refused connection");
                shared.emit(NodeEvent::Refused {
                    reason: "peer".into(),
                    peer: None,
                });
            }
        }
    }
    // In-flight transfers finish (or the endpoint shutdown cuts them).
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(shared: Arc<Shared>, channel: Channel, conn: PeerConnection) {
    let mut transfers = JoinSet::new();
    loop {
        // Reap finished handlers without racing accept_transfer, which must
        // not be cancelled mid-frame (only shutdown cancels it).
        while transfers.try_join_next().is_some() {}
        let next = tokio::select! {
            () = shared.cancel.cancelled() => break,
            next = conn.accept_transfer() => next,
        };
        match next {
            Ok(Some(t)) => {
                transfers.spawn(handle(Arc::clone(&shared), channel, conn.clone(), t));
            }
            Ok(None) => break,
            Err(NetError::FrameTooLarge { len, limit }) => {
                shared.refuse("frame_too_large");
                shared.emit(NodeEvent::Refused {
                    reason: "frame_too_large".into(),
                    peer: Some(conn.peer().clone()),
                });
                shared.audit(
                    "refuse",
                    None,
                    Some(conn.peer()),
                    channel,
                    None,
                    &format!("frame_too_large: {len} > {limit}"),
                );
                tracing::warn!(peer = %conn.peer(), len, limit, "refused frame over the size limit");
            }
            Err(NetError::Decode(e)) => {
                shared.refuse("malformed");
                shared.emit(NodeEvent::Refused {
                    reason: "malformed".into(),
                    peer: Some(conn.peer().clone()),
                });
                shared.audit(
                    "refuse",
                    None,
                    Some(conn.peer()),
                    channel,
                    None,
                    &format!("malformed: {e}"),
                );
                tracing::warn!(peer = %conn.peer(), error = %e, "refused undecodable frame");
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer(), error = %e, "stream failed");
            }
        }
    }
    while transfers.join_next().await.is_some() {}
}

/// A refusal: the answer to send and what to count.
struct Refusal {
    code: RejectCode,
    reason: String,
    permanent: bool,
    counter: &'static str,
    close: bool,
}

impl Refusal {
    fn new(code: RejectCode, counter: &'static str, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            permanent: true,
            counter,
            close: false,
        }
    }
}

impl From<OpenError> for Refusal {
    fn from(e: OpenError) -> Self {
        let code = match &e {
            OpenError::BadSignature(_) => RejectCode::BadSignature,
            OpenError::Expired { .. } => RejectCode::Expired,
            OpenError::UnknownOrigin(_) => RejectCode::UnknownNode,
            OpenError::TooLarge(_) => RejectCode::FrameTooLarge,
            _ => RejectCode::Malformed,
        };
        Self::new(code, e.reason(), e.to_string())
    }
}

impl From<PolicyError> for Refusal {
    fn from(e: PolicyError) -> Self {
        // A label above what this channel may carry is a peer breaking the
        // channel's rules: close its connection too.
        let close = matches!(
            e,
            PolicyError::WrongChannel { .. } | PolicyError::AboveChannelMax { .. }
        );
        Self {
            code: RejectCode::LabelPolicy,
            reason: e.to_string(),
            permanent: true,
            counter: e.reason(),
            close,
        }
    }
}

async fn handle(shared: Arc<Shared>, channel: Channel, conn: PeerConnection, t: IncomingTransfer) {
    let peer = t.peer().clone();
    let answer = match ingest(&shared, channel, &peer, &t.frame).await {
        Ok(id) => pb::Frame {
            kind: Some(pb::frame::Kind::Accepted(pb::Accepted {
                message_id: id.as_bytes().to_vec(),
            })),
        },
        Err(r) => {
            shared.refuse(r.counter);
            // The id and class as claimed: unverified, but what the refusal was about.
            let claimed = match &t.frame.kind {
                Some(pb::frame::Kind::Transfer(tr)) => tr
                    .envelope
                    .as_ref()
                    .and_then(|e| envelope::peek_header(&e.encode_to_vec()).ok()),
                _ => None,
            };
            shared.audit(
                "refuse",
                claimed.as_ref().map(|h| h.id),
                Some(&peer),
                channel,
                claimed.as_ref().map(|h| h.label.class),
                &format!("{}: {}", r.counter, r.reason),
            );
            tracing::warn!(peer = %peer, %channel, reason = r.counter, detail = %r.reason, "refused transfer");
            shared.emit(NodeEvent::Refused {
                reason: r.counter.to_owned(),
                peer: Some(peer.clone()),
            });
            if r.close {
                // The refusal first, acknowledged, then the close with its code.
                let _ = t
                    .respond_then_wait(&rejected(&r), std::time::Duration::from_secs(2))
                    .await;
                conn.close(close_code::POLICY, &r.reason);
                return;
            }
            rejected(&r)
        }
    };
    if let Err(e) = t.respond(&answer).await {
        tracing::debug!(peer = %peer, error = %e, "could not answer transfer");
    }
}

fn rejected(r: &Refusal) -> pb::Frame {
    pb::Frame {
        kind: Some(pb::frame::Kind::Rejected(pb::Rejected {
            code: r.code as i32,
            reason: r.reason.clone(),
            permanent: r.permanent,
        })),
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

async fn ingest(
    shared: &Shared,
    channel: Channel,
    peer: &NodeId,
    frame: &pb::Frame,
) -> Result<MessageId, Refusal> {
    let Some(pb::frame::Kind::Transfer(tr)) = &frame.kind else {
        return Err(Refusal::new(
            RejectCode::Malformed,
            "malformed",
            "expected a Transfer frame",
        ));
    };
    let rt = shared
        .channels
        .get(&channel)
        .ok_or_else(|| Refusal::new(RejectCode::Internal, "internal", "channel not running"))?;
    check_hop_limit(tr.hop_count, shared.limits.hop_limit)
        .map_err(|e| Refusal::new(RejectCode::HopLimit, "hop_limit", e.to_string()))?;
    let env = tr
        .envelope
        .as_ref()
        .ok_or_else(|| Refusal::new(RejectCode::Malformed, "malformed", "transfer without an envelope"))?;
    let bytes = env.encode_to_vec();
    let now = now_ms();
    let roster = shared.roster.get();
    // Signature first: nothing in the header is believed before this.
    let v = envelope::verify(&bytes, &roster, now)?;
    let h = &v.header;
    let class = h.label.class;
    // Ingress policy: the class on this channel, this node, the peer that sent it.
    shared.check_label(&roster, class, channel, &[(Party::PreviousHop, peer)])?;
    let serves: Vec<NodeId> = if tr.serves.is_empty() {
        h.recipients.clone()
    } else {
        let mut s = Vec::new();
        for r in &tr.serves {
            match NodeId::new(r) {
                Ok(r) if h.is_recipient(&r) => s.push(r),
                _ => {
                    return Err(Refusal::new(
                        RejectCode::Malformed,
                        "malformed",
                        format!("serves {r:?}, which is not a recipient"),
                    ));
                }
            }
        }
        s
    };
    // Dedup before any work; the store checks again atomically.
    if rt.store.seen(&h.id).map_err(store_refusal)? {
        return Err(duplicate(h.id));
    }
    let _busy = {
        let mut busy = lock(&shared.ingress_busy);
        if !busy.insert(h.id) {
            let mut r = duplicate(h.id);
            r.permanent = false;
            return Err(r);
        }
        Busy { shared, id: h.id }
    };
    // Routing, and routing-time policy for every next hop and recipient.
    let plan = shared
        .routes
        .plan(&shared.id, channel, &serves)
        .map_err(|e| Refusal::new(RejectCode::NoRoute, "no_route", join(&e)))?;
    let mut parties: Vec<(Party, &NodeId)> = serves.iter().map(|r| (Party::Recipient, r)).collect();
    parties.extend(plan.copies.keys().map(|h| (Party::NextHop, h)));
    for (_, n) in &parties {
        if roster.node(n).is_none() {
            return Err(Refusal::new(
                RejectCode::UnknownNode,
                "unknown_node",
                format!("{n} is not in the roster"),
            ));
        }
    }
    shared.check_label(&roster, class, channel, &parties)?;

    let mut ops = Vec::new();
    let mut notify = plan.copies.keys().cloned().collect::<Vec<_>>();
    let mut delivered = false;
    let mut receipt_for = None;
    let mut inbox = false;
    if plan.local {
        match h.content_type {
            ContentType::Receipt => {
                let r = receipt_of(&v)?;
                let id = MessageId::from_slice(&r.message_id).map_err(|_| malformed("receipt id"))?;
                ops.push(Op::Delivered {
                    id,
                    recipient: h.origin.clone(),
                    delivered_ms: r.delivered_unix_ms,
                });
                receipt_for = Some((id, h.origin.clone()));
            }
            _ => {
                let payload = envelope::open(&v, &shared.id, &shared.hpke)?;
                if h.content_type == ContentType::SituationReport {
                    pb::SituationReport::decode(payload.as_slice())
                        .map_err(|e| malformed(&format!("situation report does not decode: {e}")))?;
                }
                inbox = true;
                delivered = true;
                if h.origin != shared.id {
                    let (receipt_ops, hops) = receipt(shared, &roster, channel, &v, now)?;
                    ops.extend(receipt_ops);
                    notify.extend(hops);
                }
            }
        }
    }
    ops.insert(
        0,
        Op::Ingest(Ingest {
            id: h.id,
            envelope: bytes,
            precedence: h.precedence,
            expires_ms: h.expires_ms,
            now_ms: now,
            hop_count: tr.hop_count,
            copies: plan
                .copies
                .iter()
                .map(|(hop, serves)| Copy {
                    next_hop: hop.clone(),
                    serves: serves.clone(),
                })
                .collect(),
            inbox,
            track: Vec::new(),
        }),
    );
    match rt.store.apply(ops).await {
        Ok(_) => {}
        Err(StoreError::Duplicate(id)) => return Err(duplicate(id)),
        Err(e) => return Err(store_refusal(e)),
    }
    shared.counters.inc("accepted");
    shared.audit("accept", Some(h.id), Some(peer), channel, Some(class), "");
    for hop in notify {
        if let Some(link) = rt.links.get(&hop) {
            link.wake.notify_one();
        }
    }
    if delivered {
        shared.counters.inc("delivered");
        shared.audit("deliver", Some(h.id), Some(peer), channel, Some(class), "");
        tracing::info!(id = %h.id, origin = %h.origin, %channel, class = %class, "delivered");
        shared.emit(NodeEvent::Delivered {
            id: h.id,
            origin: h.origin.clone(),
            channel,
        });
    }
    if let Some((id, recipient)) = receipt_for {
        shared.counters.inc("receipts");
        shared.audit("receipt", Some(id), Some(&recipient), channel, Some(class), "");
        tracing::info!(%id, %recipient, "receipt");
        shared.emit(NodeEvent::Receipt { id, recipient });
    }
    if !plan.copies.is_empty() {
        tracing::debug!(id = %h.id, hops = plan.copies.len(), "queued for forwarding");
    }
    shared.bump();
    Ok(h.id)
}

fn receipt_of(v: &Verified) -> Result<pb::Receipt, Refusal> {
    let payload = v
        .clear_payload()
        .ok_or_else(|| malformed("receipt not in the clear"))?;
    let r = pb::Receipt::decode(payload).map_err(|e| malformed(&format!("receipt does not decode: {e}")))?;
    let h = &v.header;
    // The receipt's signer must be the recipient it speaks for, about the message it answers.
    if r.recipient != h.origin.as_str()
        || h.in_reply_to.map(|m| m.as_bytes().to_vec()) != Some(r.message_id.clone())
    {
        return Err(malformed("receipt does not match its header"));
    }
    Ok(r)
}

/// A signed receipt to the origin of `v`, labelled like it so it returns on
/// the channel the message came on.
fn receipt(
    shared: &Shared,
    roster: &sitrep_core::Roster,
    channel: Channel,
    v: &Verified,
    now: i64,
) -> Result<(Vec<Op>, Vec<NodeId>), Refusal> {
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
    .map_err(|e| Refusal {
        code: RejectCode::Internal,
        reason: format!("cannot seal receipt: {e}"),
        permanent: false,
        counter: "internal",
        close: false,
    })?;
    let plan = shared
        .routes
        .plan(&shared.id, channel, std::slice::from_ref(&h.origin))
        .map_err(|e| {
            Refusal::new(
                RejectCode::NoRoute,
                "no_route",
                format!("no route for the receipt: {}", join(&e)),
            )
        })?;
    let hops: Vec<NodeId> = plan.copies.keys().cloned().collect();
    let op = Op::Ingest(Ingest {
        id: sealed.header.id,
        envelope: sealed.bytes,
        precedence: h.precedence,
        expires_ms,
        now_ms: now,
        hop_count: 0,
        copies: plan
            .copies
            .into_iter()
            .map(|(next_hop, serves)| Copy { next_hop, serves })
            .collect(),
        inbox: false,
        track: Vec::new(),
    });
    Ok((vec![op], hops))
}

fn join<E: std::fmt::Display>(errs: &[E]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn malformed(what: &str) -> Refusal {
    Refusal::new(RejectCode::Malformed, "malformed", what)
}

fn duplicate(id: MessageId) -> Refusal {
    Refusal::new(
        RejectCode::Duplicate,
        "duplicate",
        format!("message {id} was seen before"),
    )
}

fn store_refusal(e: StoreError) -> Refusal {
    Refusal {
        code: RejectCode::StoreFull,
        reason: format!("store unavailable: {e}"),
        permanent: false,
        counter: "store",
        close: false,
    }
}
