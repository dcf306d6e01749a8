//! Egress: one sender per direct peer and channel. Keeps a connection up
//! (reconnecting with capped exponential backoff and jitter), sends the
//! outbox in precedence order with up to `max_in_flight` transfers at once
//! (a slot is freed as soon as the next hop answers), and drops a copy only
//! when the next hop has taken custody, recording the hand-offs in batches.
//!
//! Not here: whether a copy may go (`sitrep_core::ingress::decide_egress`) or
//! what the next hop's answer means (`sitrep_core::ingress::next_hop_answer`);
//! this module carries those decisions out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use sitrep_core::envelope;
use sitrep_core::ingress::{Egress, NextHopAnswer, RefuseReason, decide_egress, next_hop_answer};
use sitrep_core::{Channel, MessageId, NodeId};
use sitrep_net::PeerConnection;
use sitrep_proto::v1 as pb;
use sitrep_store::{Op, Queued, Storage, StoreError};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::event::NodeEvent;
use crate::metrics::{Direction, Event};
use crate::shared::{ChannelRt, Link, Refused, Shared, lock, shown};

/// 10 s to set up a connection, so a dead address does not stall the link.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Rescan the outbox this often even without a wake-up (retries after a
/// transient refusal, copies a crashed run left behind).
const RESCAN: Duration = Duration::from_secs(1);

/// Capped exponential backoff with ±25 % jitter.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        base.mul_f64(jitter)
    }
}

enum Sent {
    /// The next hop has custody (Accepted, or it already had the message).
    Custody,
    /// Refused for good; the copy is dropped and the recipients marked.
    Refused,
    /// Try again later on this connection.
    Retry,
    /// The connection failed.
    Lost,
}

pub(crate) async fn run(shared: Arc<Shared>, channel: Channel, link: Arc<Link>) -> Result<(), NodeError> {
    let Some(rt) = shared.channels.get(&channel) else {
        return Ok(());
    };
    let mut backoff = Backoff::new(shared.limits.retry_initial, shared.limits.retry_max);
    loop {
        // Connect.
        let generation = *lock(&link.generation);
        let addr = *lock(&link.addr);
        let conn = tokio::select! {
            () = shared.cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(CONNECT_TIMEOUT, rt.endpoint.connect(&link.peer, addr)) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    note_error(channel, &link, e.to_string());
                    if wait(&shared, &link, backoff.next_delay()).await { return Ok(()); }
                    continue;
                }
                Err(_) => {
                    note_error(channel, &link, format!("connect to {addr} timed out"));
                    if wait(&shared, &link, backoff.next_delay()).await { return Ok(()); }
                    continue;
                }
            },
        };
        backoff.reset();
        {
            let mut st = lock(&link.state);
            st.connected = true;
            st.last_seen_ms = Some(now_ms());
            st.rtt = Some(conn.rtt());
            st.last_error = None;
        }
        tracing::info!(peer = %shown(channel, &link.peer), %channel, addr = %shown(channel, addr), "link up");
        shared.bump();
        let stop = send_loop(&shared, channel, &link, &conn, generation).await;
        lock(&link.state).connected = false;
        shared.bump();
        if stop {
            return Ok(());
        }
        if wait(&shared, &link, backoff.next_delay()).await {
            return Ok(());
        }
    }
}

fn note_error(channel: Channel, link: &Link, e: String) {
    tracing::debug!(peer = %shown(channel, &link.peer), %channel, error = %shown(channel, &e), "link down");
    let mut st = lock(&link.state);
    st.connected = false;
    st.last_error = Some(e);
}

/// Sleeps `d` unless woken (address change) or cancelled. True if cancelled.
async fn wait(shared: &Shared, link: &Link, d: Duration) -> bool {
    tokio::select! {
        () = shared.cancel.cancelled() => true,
        () = tokio::time::sleep(d) => false,
        () = link.wake.notified() => false,
    }
}

/// Sends until the connection fails or the node stops. True if stopping.
///
/// A transfer holds one of the link's `max_in_flight` slots from its send
/// until the next hop answers. A copy the next hop took into custody is then
/// *settling*: not sent again, but not holding a slot, while our own
/// custody record (`Forwarded`) is committed together with the others that
/// came back meanwhile, one store job per batch.
async fn send_loop(
    shared: &Arc<Shared>,
    channel: Channel,
    link: &Arc<Link>,
    conn: &PeerConnection,
    generation: u64,
) -> bool {
    let Some(rt) = shared.channels.get(&channel) else {
        return true;
    };
    let mut inflight: HashSet<MessageId> = HashSet::new();
    let mut settling: HashSet<MessageId> = HashSet::new();
    let mut custody_due: Vec<MessageId> = Vec::new();
    let mut tasks: JoinSet<(MessageId, Sent)> = JoinSet::new();
    let mut commits: JoinSet<Committed> = JoinSet::new();
    // The ids of the commit under way, released whatever becomes of it.
    let mut committing: Vec<MessageId> = Vec::new();
    let mut pause = Backoff::new(shared.limits.retry_initial, shared.limits.retry_max);
    let mut paused_until: Option<tokio::time::Instant> = None;
    let mut lost = false;
    let mut heard = Heard::default();
    let stopping = loop {
        heard.check(conn, link);
        if *lock(&link.generation) != generation {
            // The peer moved: transfers on the old connection will never be
            // answered, so fail them now (their copies stay queued) and reconnect.
            conn.close(sitrep_net::close_code::SHUTDOWN, "peer address changed");
            break false;
        }
        if commits.is_empty() && !custody_due.is_empty() {
            committing = std::mem::take(&mut custody_due);
            commits.spawn(commit_custody(
                Arc::clone(shared),
                channel,
                link.peer.clone(),
                committing.clone(),
            ));
        }
        let room = shared.limits.max_in_flight.saturating_sub(inflight.len());
        let may_send = paused_until.is_none_or(|t| tokio::time::Instant::now() >= t);
        // Refill in batches of a quarter window (or when idle): each peek
        // walks the outbox past every copy in flight or settling.
        let batch = (shared.limits.max_in_flight / 4).max(1);
        if room > 0 && (room >= batch || inflight.is_empty()) && may_send && !lost {
            match peek(rt, &link.peer, room, &inflight, &settling).await {
                Ok(batch) => {
                    for q in batch {
                        inflight.insert(q.id);
                        tasks.spawn(send_one(
                            Arc::clone(shared),
                            channel,
                            link.peer.clone(),
                            conn.clone(),
                            q,
                        ));
                    }
                }
                Err(e) => {
                    tracing::error!(peer = %shown(channel, &link.peer), %channel, error = %e, "cannot read outbox")
                }
            }
        }
        if lost && tasks.is_empty() {
            break false;
        }
        tokio::select! {
            () = shared.cancel.cancelled() => break true,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((id, sent)) = done else { continue };
                inflight.remove(&id);
                match sent {
                    Sent::Custody | Sent::Refused => {
                        if matches!(sent, Sent::Custody) {
                            settling.insert(id);
                            custody_due.push(id);
                        }
                        pause.reset();
                        let mut st = lock(&link.state);
                        st.last_seen_ms = Some(now_ms());
                        st.rtt = Some(conn.rtt());
                    }
                    Sent::Retry => {
                        paused_until = Some(tokio::time::Instant::now() + pause.next_delay());
                    }
                    Sent::Lost => lost = true,
                }
            }
            Some(done) = commits.join_next(), if !commits.is_empty() => {
                for id in committing.drain(..) {
                    settling.remove(&id);
                }
                match done {
                    Ok(Committed::Done) => {}
                    Ok(Committed::Closed) => break true,
                    // The copies stay queued and go again, after a pause:
                    // a store that refuses writes would otherwise have them
                    // resent (and answered DUPLICATE) as fast as the link goes.
                    Ok(Committed::Failed) | Err(_) => {
                        paused_until = Some(tokio::time::Instant::now() + pause.next_delay());
                    }
                }
            }
            () = link.wake.notified() => {}
            _ = conn.closed(), if !lost => lost = true,
            () = tokio::time::sleep(RESCAN) => {}
        }
    };
    // Let in-flight transfers finish: their answers decide custody.
    while let Some(done) = tasks.join_next().await {
        if let Ok((id, Sent::Custody)) = done {
            custody_due.push(id);
        }
    }
    while commits.join_next().await.is_some() {}
    if !custody_due.is_empty() {
        commit_custody(Arc::clone(shared), channel, link.peer.clone(), custody_due).await;
    }
    stopping
}

/// When the peer was last heard from on the link's connection: any
/// datagram, a frame or the acknowledgement of a keep-alive, looked at at
/// most every [`HEARD_EVERY`] (the send loop wakes at least every
/// [`RESCAN`]). `/v1/status` says `connected` only while that is recent.
#[derive(Default)]
struct Heard {
    datagrams: u64,
    looked: Option<tokio::time::Instant>,
}

/// How often [`Heard`] looks at the connection's counters.
const HEARD_EVERY: Duration = Duration::from_millis(250);

impl Heard {
    fn check(&mut self, conn: &PeerConnection, link: &Link) {
        let now = tokio::time::Instant::now();
        if self.looked.is_some_and(|t| now < t + HEARD_EVERY) {
            return;
        }
        self.looked = Some(now);
        let n = conn.datagrams_received();
        if n != self.datagrams {
            self.datagrams = n;
            let mut st = lock(&link.state);
            st.last_seen_ms = Some(now_ms());
            st.rtt = Some(conn.rtt());
        }
    }
}

/// Up to `room` queued copies for `peer` that are neither in flight nor
/// settling, read on a blocking thread (index lookups and log reads).
async fn peek(
    rt: &ChannelRt,
    peer: &NodeId,
    room: usize,
    inflight: &HashSet<MessageId>,
    settling: &HashSet<MessageId>,
) -> Result<Vec<Queued>, StoreError> {
    let store = rt.store.clone();
    let peer = peer.clone();
    let skip: HashSet<MessageId> = inflight.union(settling).copied().collect();
    tokio::task::spawn_blocking(move || store.outbox_peek(&peer, room, &|id| skip.contains(id)))
        .await
        .unwrap_or(Err(StoreError::Closed))
}

/// How a batch of custody records went.
enum Committed {
    Done,
    /// The store is closed: the node is stopping.
    Closed,
    /// The store refused: the copies stay queued.
    Failed,
}

/// Records that `peer` took custody of `ids`: one store job, then the
/// audit lines, counters and events. On a store error the copies stay
/// queued: they are sent again and the next hop answers DUPLICATE, which
/// is custody too.
async fn commit_custody(
    shared: Arc<Shared>,
    channel: Channel,
    peer: NodeId,
    ids: Vec<MessageId>,
) -> Committed {
    let Some(rt) = shared.channels.get(&channel) else {
        return Committed::Closed;
    };
    let now = now_ms();
    let ops = ids
        .iter()
        .map(|id| Op::Forwarded {
            id: *id,
            next_hop: peer.clone(),
            now_ms: now,
        })
        .collect();
    match rt.store.apply(ops).await {
        Ok(_) => {
            for id in &ids {
                tracing::debug!(id = %shown(channel, id), next_hop = %shown(channel, &peer), %channel, "forwarded");
                shared.audit("forward", Some(*id), Some(&peer), channel, None, "");
                shared.counters.inc(Event::Forwarded);
                shared.emit(NodeEvent::Forwarded {
                    id: *id,
                    next_hop: peer.clone(),
                });
            }
            shared.bump();
            Committed::Done
        }
        Err(StoreError::Closed) => Committed::Closed,
        Err(e) => {
            tracing::error!(count = ids.len(), error = %e, "cannot record custody hand-off");
            Committed::Failed
        }
    }
}

async fn send_one(
    shared: Arc<Shared>,
    channel: Channel,
    peer: NodeId,
    conn: PeerConnection,
    q: Queued,
) -> (MessageId, Sent) {
    let id = q.id;
    let Some(rt) = shared.channels.get(&channel) else {
        return (id, Sent::Retry);
    };
    // Egress policy, checked again against the roster in force now: a
    // clearance lowered since the copy was queued stops it here.
    let header = match envelope::peek_header(&q.envelope) {
        Ok(header) => header,
        Err(e) => {
            let detail = format!("stored envelope unreadable: {e}");
            return (
                id,
                refuse(&shared, rt, &peer, id, detail, RefuseReason::Malformed).await,
            );
        }
    };
    let roster = shared.roster.get();
    let ctx = shared.context(channel, &roster);
    match decide_egress(
        &ctx,
        &peer,
        &q.serves,
        header.label.class,
        now_ms(),
        header.expires_ms,
    ) {
        Egress::Send => {}
        // The sweeper marks it EXPIRED.
        Egress::Expired => return (id, Sent::Retry),
        Egress::Refuse(r) => return (id, refuse(&shared, rt, &peer, id, r.detail, r.reason).await),
    }
    let frame = pb::Frame {
        kind: Some(pb::frame::Kind::Transfer(pb::Transfer {
            envelope: q.envelope,
            hop_count: q.hop_count + 1,
            serves: q.serves.iter().map(ToString::to_string).collect(),
        })),
    };
    let answer = match conn.transfer(&frame, q.precedence.to_proto() as i32).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(id = %shown(channel, id), peer = %shown(channel, &peer), %channel, error = %e, "transfer failed");
            return (id, Sent::Lost);
        }
    };
    match next_hop_answer(answer.kind.as_ref()) {
        // Accepted, or it already had it (an earlier attempt's answer was lost).
        NextHopAnswer::Custody => (id, Sent::Custody),
        NextHopAnswer::Refused(r) => (id, refuse(&shared, rt, &peer, id, r.detail, r.reason).await),
        NextHopAnswer::Retry => {
            tracing::debug!(id = %shown(channel, id), peer = %shown(channel, &peer), %channel, "next hop asks to retry");
            (id, Sent::Retry)
        }
        NextHopAnswer::ProtocolError => {
            conn.close(sitrep_net::close_code::PROTOCOL, "expected Accepted or Rejected");
            (id, Sent::Lost)
        }
    }
}

/// Drops a copy the next hop (or egress policy) refused for good, then
/// carries the refusal out (counted once the copy is gone, so a waiter on
/// the counter sees the store settled).
async fn refuse(
    shared: &Shared,
    rt: &ChannelRt,
    peer: &NodeId,
    id: MessageId,
    detail: String,
    reason: RefuseReason,
) -> Sent {
    let outcome = match rt
        .store
        .apply(vec![Op::Rejected {
            id,
            next_hop: peer.clone(),
            reason: detail.clone(),
            now_ms: now_ms(),
        }])
        .await
    {
        Ok(_) => Sent::Refused,
        Err(_) => Sent::Retry,
    };
    shared.refused(&Refused {
        direction: Direction::Egress,
        reason,
        detail: &detail,
        peer: Some(peer),
        channel: rt.channel,
        id: Some(id),
        class: None,
    });
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (got, base) in d.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            let base = Duration::from_millis(base);
            assert!(
                *got >= base.mul_f64(0.75) && *got <= base.mul_f64(1.25),
                "{got:?} vs {base:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
