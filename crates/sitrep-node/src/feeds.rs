//! The feeds task (DESIGN §8): one per node. It follows each channel's
//! inbox for feed messages and, at an aggregator, publishes.
//!
//! - **At the aggregator**: a `SUBSCRIBE` or `UNSUBSCRIBE` in the inbox is
//!   checked against the roster (role `subscriber`, on the feed's channel,
//!   cleared for the feed's highest input class, known regions) and
//!   recorded in the channel's subscriptions file, or refused with a
//!   signed `SUBSCRIPTION` answer the subscriber can read. Each feed is
//!   rebuilt when a newer report arrives, when a `stale` or `overdue` flag
//!   is due to flip, and at start; a roll-up whose content changed gets a
//!   new sequence and is sealed as a `FEED_UPDATE` to each subscriber (its
//!   region filter applied) through the store-and-forward path, at most
//!   once per `feed_min_interval`. A newer update replaces one still
//!   queued for the same subscriber. The roster is checked again on every
//!   round: a subscriber it no longer allows is ended and told so.
//! - **At a subscriber**: each `FEED_UPDATE` in the inbox is checked (from
//!   an aggregator of the roster, the roll-up's label within the
//!   envelope's, its mode the envelope's) and kept if newer; a
//!   `SUBSCRIPTION` answer marks the request refused or ended.
//!
//! Not here: the roll-up rules (`sitrep_core::feed`), the files and the
//! held roll-ups (`feedstate`), the HTTP side (`api::feeds`).

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft};
use sitrep_core::feed::{FeedSpec, next_flip, restrict, same_content};
use sitrep_core::policy::Party;
use sitrep_core::{Channel, Class, ContentType, Label, MessageId, Mode, NodeId, Precedence, Roster};
use sitrep_proto::v1 as pb;
use sitrep_store::{Copy, InboxEntry, Ingest, Op, Storage, StoreError};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::feedstate::{self, Held, Request, RequestState, Requests, Subscription, Subscriptions};
use crate::service::Service;
use crate::shared::{ReportInput, Sent, Shared, lock, shown};

/// Inbox entries read per page.
const PAGE: usize = 256;

/// Loads the feed state files and spawns the task (which takes the
/// reports already in the inbox into the feeds in its first round).
///
/// # Errors
/// A state file that cannot be read.
pub(crate) fn start(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<Result<(), NodeError>>,
) -> Result<(), NodeError> {
    for (channel, rt) in &shared.channels {
        let subs: Subscriptions = feedstate::load(&Subscriptions::file(&rt.dir))
            .map_err(|e| NodeError::config(&format!("channels.{channel}.store"), e))?;
        let reqs: Requests = feedstate::load(&Requests::file(&rt.dir))
            .map_err(|e| NodeError::config(&format!("channels.{channel}.store"), e))?;
        lock(&shared.feeds.subscriptions).insert(*channel, subs);
        lock(&shared.feeds.requests).insert(*channel, reqs);
    }
    tasks.spawn(run(Arc::clone(shared)));
    Ok(())
}

async fn run(shared: Arc<Shared>) -> Result<(), NodeError> {
    let mut task = Task {
        service: Service::new(Arc::clone(&shared)),
        shared,
        tail: BTreeMap::new(),
        changed_at: BTreeMap::new(),
        catching_up: true,
        reports_read: 0,
    };
    loop {
        let next = match task.round().await {
            Ok(next) => next,
            Err(StoreError::Closed) => return Ok(()),
            Err(e) => {
                // A store that failed refuses writes for good; the node
                // reports it unready. Keep serving what is held.
                tracing::error!(error = %e, "feeds round failed");
                Some(Instant::now() + std::time::Duration::from_secs(5))
            }
        };
        let s = &task.shared;
        tokio::select! {
            () = s.cancel.cancelled() => return Ok(()),
            () = s.feeds.wake.notified() => {}
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Task {
    shared: Arc<Shared>,
    service: Service,
    /// Inbox cursor read up to, per channel (from 0 at start: what a
    /// subscriber holds is rebuilt from its inbox).
    tail: BTreeMap<Channel, u64>,
    /// When each feed's content last changed, for the minimum interval.
    changed_at: BTreeMap<String, Instant>,
    /// Until the first round has read the whole inbox: the reports in it
    /// are the aggregator's durable state and are taken into the feeds
    /// (later ones are offered by ingress as they arrive). Nothing is
    /// published before.
    catching_up: bool,
    reports_read: usize,
}

/// One channel's store job: its ops, and what each message sent was.
type Job = (Vec<Op>, Vec<(Outgoing, Sent)>);

/// A message to seal and queue: what the feeds task sends.
struct Outgoing {
    channel: Channel,
    to: NodeId,
    label: Label,
    mode: Mode,
    content_type: ContentType,
    payload: Vec<u8>,
    in_reply_to: Option<MessageId>,
    /// For a `FEED_UPDATE`: the feed and sequence (recorded as sent).
    update: Option<(String, u64)>,
}

impl Task {
    /// One round: read new feed messages, check the subscriptions against
    /// the roster, publish. Returns when the next round is due at the
    /// latest (a flag flip, the end of a minimum interval).
    async fn round(&mut self) -> Result<Option<Instant>, StoreError> {
        let mut out = Vec::new();
        // Only a node that builds feeds or asked for one has feed messages
        // to read (a node that subscribes later starts from its first entry).
        let asked = lock(&self.shared.feeds.requests)
            .values()
            .any(|r| !r.requests.is_empty());
        if self.shared.builds_feeds() || asked {
            for channel in self.shared.channels.keys().copied().collect::<Vec<_>>() {
                self.read_inbox(channel, &mut out).await?;
            }
        }
        if self.catching_up {
            self.catching_up = false;
            if self.shared.builds_feeds() {
                tracing::info!(
                    feeds = self.shared.feeds.specs.len(),
                    reports = self.reports_read,
                    "feeds loaded from the inbox"
                );
            }
        }
        let mut next = None;
        if self.shared.builds_feeds() {
            self.check_roster(&mut out);
            next = self.publish(&mut out);
        }
        self.send(out).await?;
        Ok(next)
    }

    async fn read_inbox(&mut self, channel: Channel, out: &mut Vec<Outgoing>) -> Result<(), StoreError> {
        loop {
            let after = self.tail.get(&channel).copied().unwrap_or(0);
            let shared = Arc::clone(&self.shared);
            let page = tokio::task::spawn_blocking(move || {
                shared
                    .channels
                    .get(&channel)
                    .map_or(Ok(Vec::new()), |rt| rt.store.inbox_after(after, PAGE))
            })
            .await
            .map_err(|_| StoreError::Closed)??;
            let Some(last) = page.last() else { return Ok(()) };
            self.tail.insert(channel, last.cursor);
            for entry in &page {
                self.entry(channel, entry, out);
            }
        }
    }

    /// One inbox entry: only feed messages are opened.
    fn entry(&mut self, channel: Channel, entry: &InboxEntry, out: &mut Vec<Outgoing>) {
        let Ok(peek) = envelope::peek_header(&entry.envelope) else {
            return;
        };
        let applied = lock(&self.shared.feeds.subscriptions)
            .get(&channel)
            .map_or(0, |s| s.cursor);
        let wanted = match peek.content_type {
            ContentType::Subscribe | ContentType::Unsubscribe => {
                self.shared.builds_feeds() && entry.cursor > applied
            }
            ContentType::FeedUpdate | ContentType::Subscription => true,
            ContentType::SituationReport => self.catching_up && self.shared.builds_feeds(),
            _ => false,
        };
        if !wanted {
            return;
        }
        let roster = self.shared.roster.get();
        let Some(r) = self.service.open_entry(channel, &roster, entry) else {
            return;
        };
        match r.header.content_type {
            ContentType::Subscribe | ContentType::Unsubscribe => {
                self.request(channel, entry.cursor, &roster, &r, out);
            }
            ContentType::FeedUpdate => self.update(channel, &roster, &r),
            ContentType::Subscription => self.answer(channel, &r),
            ContentType::SituationReport => {
                if let Ok(report) = pb::SituationReport::decode(r.payload.as_slice()) {
                    self.reports_read += 1;
                    let input = ReportInput {
                        report,
                        envelope_sha256: r.envelope_sha256,
                        received_ms: r.received_ms,
                    };
                    self.shared.offer_report(&r.header, channel, input);
                }
            }
            _ => {}
        }
    }

    /// A SUBSCRIBE or UNSUBSCRIBE at the aggregator.
    fn request(
        &mut self,
        channel: Channel,
        cursor: u64,
        roster: &Roster,
        r: &crate::service::Received,
        out: &mut Vec<Outgoing>,
    ) {
        let shared = &*self.shared;
        let from = r.header.origin.clone();
        let subscribe = r.header.content_type == ContentType::Subscribe;
        let answer = |state: pb::subscription_state::State, feed: &str, reason: String| Outgoing {
            channel,
            to: from.clone(),
            label: r.header.label.clone(),
            mode: r.header.mode,
            content_type: ContentType::Subscription,
            payload: pb::SubscriptionState {
                feed: feed.to_owned(),
                state: state as i32,
                reason,
                request_id: r.header.id.as_bytes().to_vec(),
            }
            .encode_to_vec(),
            in_reply_to: Some(r.header.id),
            update: None,
        };
        let req = match pb::Subscribe::decode(r.payload.as_slice()) {
            Ok(req) => req,
            Err(e) => {
                out.push(answer(
                    pb::subscription_state::State::Refused,
                    "",
                    format!("the request does not decode: {e}"),
                ));
                self.save_cursor(channel, cursor);
                return;
            }
        };
        let mut subs = lock(&shared.feeds.subscriptions);
        let table = subs.entry(channel).or_default();
        table.cursor = cursor;
        if subscribe {
            match admit(roster, &shared.feeds.specs, channel, &from, &req) {
                Ok(()) => {
                    table.put(Subscription {
                        feed: req.feed.clone(),
                        subscriber: from.to_string(),
                        regions: req.regions.clone(),
                        since_ms: now_ms(),
                    });
                    // The current roll-up goes out in this round.
                    lock(&shared.feeds.sent).remove(&(req.feed.clone(), from.clone()));
                    shared.audit(
                        "subscribe",
                        Some(r.header.id),
                        Some(&from),
                        channel,
                        None,
                        &req.feed,
                    );
                    tracing::info!(feed = %req.feed, subscriber = %shown(channel, &from), %channel, "subscribed");
                }
                Err(why) => {
                    shared.audit(
                        "subscribe-refused",
                        Some(r.header.id),
                        Some(&from),
                        channel,
                        None,
                        &why,
                    );
                    tracing::warn!(feed = %req.feed, subscriber = %shown(channel, &from), %channel, reason = %why, "subscription refused");
                    out.push(answer(pb::subscription_state::State::Refused, &req.feed, why));
                }
            }
        } else {
            let had = table.remove(&req.feed, &from);
            lock(&shared.feeds.sent).remove(&(req.feed.clone(), from.clone()));
            shared.audit(
                "unsubscribe",
                Some(r.header.id),
                Some(&from),
                channel,
                None,
                &req.feed,
            );
            tracing::info!(feed = %req.feed, subscriber = %shown(channel, &from), %channel, had, "unsubscribed");
            out.push(answer(
                pb::subscription_state::State::Ended,
                &req.feed,
                if had {
                    "unsubscribed at your request".to_owned()
                } else {
                    "there was no such subscription".to_owned()
                },
            ));
        }
        let snapshot = table.clone();
        drop(subs);
        self.persist(channel, &snapshot);
    }

    fn save_cursor(&self, channel: Channel, cursor: u64) {
        let snapshot = {
            let mut subs = lock(&self.shared.feeds.subscriptions);
            let table = subs.entry(channel).or_default();
            table.cursor = cursor;
            table.clone()
        };
        self.persist(channel, &snapshot);
    }

    fn persist(&self, channel: Channel, table: &Subscriptions) {
        if let Some(rt) = self.shared.channels.get(&channel)
            && let Err(e) = feedstate::save(&Subscriptions::file(&rt.dir), table)
        {
            tracing::error!(%channel, error = %e, "cannot save the feed subscriptions");
        }
    }

    /// Ends every subscription the roster no longer allows, and tells the
    /// subscriber if any channel still reaches it.
    fn check_roster(&mut self, out: &mut Vec<Outgoing>) {
        let shared = &*self.shared;
        let roster = shared.roster.get();
        let mut changed = Vec::new();
        {
            let mut subs = lock(&shared.feeds.subscriptions);
            for (channel, table) in subs.iter_mut() {
                let mut ended = Vec::new();
                for s in &table.subscriptions {
                    let Ok(who) = NodeId::new(&s.subscriber) else {
                        continue;
                    };
                    let req = pb::Subscribe {
                        feed: s.feed.clone(),
                        regions: s.regions.clone(),
                    };
                    if let Err(why) = admit(&roster, &shared.feeds.specs, *channel, &who, &req) {
                        ended.push((s.feed.clone(), who, why));
                    }
                }
                for (feed, who, why) in ended {
                    table.remove(&feed, &who);
                    lock(&shared.feeds.sent).remove(&(feed.clone(), who.clone()));
                    shared.audit("subscription-ended", None, Some(&who), *channel, None, &why);
                    tracing::warn!(%feed, subscriber = %shown(*channel, &who), channel = %channel, reason = %why, "subscription ended");
                    // Told on the feed's channel if it still may be, else
                    // on the open channel.
                    let on = if roster.node(&who).is_some_and(|n| n.is_on(*channel)) {
                        *channel
                    } else {
                        Channel::Open
                    };
                    out.push(Outgoing {
                        channel: on,
                        to: who,
                        label: Label::new(on.floor()),
                        mode: Mode::Actual,
                        content_type: ContentType::Subscription,
                        payload: pb::SubscriptionState {
                            feed,
                            state: pb::subscription_state::State::Ended as i32,
                            reason: why,
                            request_id: Vec::new(),
                        }
                        .encode_to_vec(),
                        in_reply_to: None,
                        update: None,
                    });
                    changed.push(*channel);
                }
            }
        }
        changed.dedup();
        for channel in changed {
            let snapshot = lock(&shared.feeds.subscriptions)
                .get(&channel)
                .cloned()
                .unwrap_or_default();
            self.persist(channel, &snapshot);
        }
    }

    /// Rebuilds each feed (unless within its minimum interval), keeps a
    /// changed roll-up under a new sequence, and queues it for every
    /// subscriber that does not have it yet.
    fn publish(&mut self, out: &mut Vec<Outgoing>) -> Option<Instant> {
        let shared = &*self.shared;
        let regions = self.service.regions();
        let now = now_ms();
        let mut next: Option<Instant> = None;
        let mut soonest = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        for spec in &shared.feeds.specs {
            let wait_until = self
                .changed_at
                .get(&spec.name)
                .map(|t| *t + shared.limits.feed_min_interval);
            if let Some(until) = wait_until.filter(|u| *u > Instant::now()) {
                soonest(until);
            } else {
                let mut built = self.service.rollup(spec, &regions, now, 0);
                let mut held = lock(&shared.feeds.held);
                let h = held
                    .entry(spec.name.clone())
                    .or_insert_with(|| Held::new(spec.channel, now));
                if !h.latest().is_some_and(|l| same_content(l, &built)) {
                    let micros = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
                    built.sequence = h.latest().map_or(0, |l| l.sequence).saturating_add(1).max(micros);
                    h.offer(built, now);
                    drop(held);
                    shared.feeds.updated();
                    self.changed_at.insert(spec.name.clone(), Instant::now());
                    shared.bump();
                }
            }
            let Some(latest) = lock(&shared.feeds.held)
                .get(&spec.name)
                .and_then(|h| h.latest().cloned())
            else {
                continue;
            };
            if let Some(flip) = next_flip(spec, &latest) {
                let wait = u64::try_from(flip.saturating_sub(now_ms())).unwrap_or(0);
                soonest(Instant::now() + std::time::Duration::from_millis(wait));
            }
            let subscribers: Vec<Subscription> = lock(&shared.feeds.subscriptions)
                .get(&spec.channel)
                .map(|t| {
                    t.subscriptions
                        .iter()
                        .filter(|s| s.feed == spec.name)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let sent = lock(&shared.feeds.sent);
            for s in subscribers {
                let Ok(to) = NodeId::new(&s.subscriber) else {
                    continue;
                };
                if sent
                    .get(&(spec.name.clone(), to.clone()))
                    .is_some_and(|x| x.sequence >= latest.sequence)
                {
                    continue;
                }
                out.push(update_for(spec, &latest, &s.regions, to));
            }
        }
        next
    }

    /// Seals and queues `out`, one store job per channel; a newer update
    /// replaces one still queued for the same subscriber.
    async fn send(&mut self, out: Vec<Outgoing>) -> Result<(), StoreError> {
        if out.is_empty() {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let roster = shared.roster.get();
        let now = now_ms();
        let mut jobs: BTreeMap<Channel, Job> = BTreeMap::new();
        for o in out {
            let (ingest, hops) = match seal(&shared, &roster, &o, now) {
                Ok(x) => x,
                Err(why) => {
                    tracing::warn!(to = %shown(o.channel, &o.to), channel = %o.channel, content = %o.content_type, reason = %why, "feed message not sent");
                    if let Some((feed, sequence)) = &o.update {
                        // Not retried until the feed changes again.
                        lock(&shared.feeds.sent).insert(
                            (feed.clone(), o.to.clone()),
                            Sent {
                                id: MessageId::new_v7(0, [0; 10]),
                                channel: o.channel,
                                sequence: *sequence,
                                hops: Vec::new(),
                                sent_ms: now,
                            },
                        );
                    }
                    continue;
                }
            };
            let job = jobs.entry(o.channel).or_default();
            if let Some((feed, _)) = &o.update
                && let Some(prev) = lock(&shared.feeds.sent).get(&(feed.clone(), o.to.clone()))
                && prev.channel == o.channel
            {
                for hop in &prev.hops {
                    job.0.push(Op::Rejected {
                        id: prev.id,
                        next_hop: hop.clone(),
                        reason: "superseded by a newer update of the feed".to_owned(),
                        now_ms: now,
                    });
                }
            }
            let sent = Sent {
                id: ingest.id,
                channel: o.channel,
                sequence: o.update.as_ref().map_or(0, |u| u.1),
                hops,
                sent_ms: now,
            };
            job.0.push(Op::Ingest(ingest));
            job.1.push((o, sent));
        }
        for (channel, (ops, sent)) in jobs {
            let Some(rt) = shared.channels.get(&channel) else {
                continue;
            };
            rt.store.apply(ops).await?;
            let mut hops = Vec::new();
            for (o, s) in sent {
                hops.extend(s.hops.iter().cloned());
                shared.audit(
                    if o.update.is_some() {
                        "feed-update"
                    } else {
                        "subscription"
                    },
                    Some(s.id),
                    Some(&o.to),
                    channel,
                    Some(o.label.class),
                    o.update.as_ref().map_or("", |u| u.0.as_str()),
                );
                if let Some((feed, _)) = o.update {
                    lock(&shared.feeds.sent).insert((feed, o.to), s);
                }
            }
            shared.wake_links(channel, &hops);
        }
        shared.bump();
        Ok(())
    }

    /// A FEED_UPDATE at a subscriber: kept if it checks out and is newer.
    fn update(&mut self, channel: Channel, roster: &Roster, r: &crate::service::Received) {
        let shared = &*self.shared;
        let h = &r.header;
        let rollup = match pb::NationalRollup::decode(r.payload.as_slice()) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(id = %shown(channel, h.id), origin = %shown(channel, &h.origin), %channel, error = %e, "feed update does not decode");
                return;
            }
        };
        if let Err(why) = check_update(roster, h, &rollup) {
            tracing::warn!(id = %shown(channel, h.id), origin = %shown(channel, &h.origin), %channel, feed = %rollup.feed, reason = %why, "feed update not taken");
            return;
        }
        let feed = rollup.feed.clone();
        let taken = {
            let mut held = lock(&shared.feeds.held);
            let slot = held
                .entry(feed.clone())
                .or_insert_with(|| Held::new(channel, r.received_ms));
            slot.channel == channel && slot.offer(rollup, r.received_ms)
        };
        if taken {
            shared.feeds.updated();
            shared.bump();
        }
        self.mark(channel, &feed, &h.origin, |req| {
            (req.state == RequestState::Pending).then(|| (RequestState::Active, String::new()))
        });
    }

    /// A SUBSCRIPTION answer at a subscriber.
    fn answer(&mut self, channel: Channel, r: &crate::service::Received) {
        let Ok(a) = pb::SubscriptionState::decode(r.payload.as_slice()) else {
            return;
        };
        let state = match pb::subscription_state::State::try_from(a.state) {
            Ok(pb::subscription_state::State::Refused) => RequestState::Refused,
            Ok(pb::subscription_state::State::Ended) => RequestState::Ended,
            _ => return,
        };
        let request = MessageId::from_slice(&a.request_id).ok().map(|i| i.to_string());
        tracing::info!(feed = %a.feed, aggregator = %shown(channel, &r.header.origin), %channel, state = state.as_str(), reason = %a.reason, "subscription answered");
        self.mark(channel, &a.feed, &r.header.origin, |req| {
            // An answer to an earlier request does not undo a later one.
            let current = request.as_deref().is_none_or(|id| id == req.request_id);
            current.then(|| (state, a.reason.clone()))
        });
    }

    /// Changes the request for (feed, aggregator) as `f` says, and saves.
    fn mark(
        &self,
        channel: Channel,
        feed: &str,
        aggregator: &NodeId,
        f: impl FnOnce(&Request) -> Option<(RequestState, String)>,
    ) {
        let snapshot = {
            let mut reqs = lock(&self.shared.feeds.requests);
            let Some(req) = reqs.get_mut(&channel).and_then(|r| r.get_mut(feed, aggregator)) else {
                return;
            };
            let Some((state, reason)) = f(req) else { return };
            req.state = state;
            req.reason = reason;
            req.updated_ms = now_ms();
            reqs.get(&channel).cloned().unwrap_or_default()
        };
        if let Some(rt) = self.shared.channels.get(&channel)
            && let Err(e) = feedstate::save(&Requests::file(&rt.dir), &snapshot)
        {
            tracing::error!(%channel, error = %e, "cannot save the feed requests");
        }
        self.shared.bump();
    }
}

/// The update of `spec` for one subscriber: its regions only, labelled by
/// the roll-up's high-water mark raised to the channel's floor (a secure
/// feed travels on the secure channel whatever went in).
fn update_for(spec: &FeedSpec, latest: &pb::NationalRollup, regions: &[String], to: NodeId) -> Outgoing {
    let r = restrict(latest, regions);
    let mut label = Label::from_proto(r.label.as_ref()).unwrap_or_else(|_| Label::new(spec.max_class));
    label.class = label.class.max(spec.channel.floor());
    Outgoing {
        channel: spec.channel,
        to,
        label,
        mode: spec.mode,
        content_type: ContentType::FeedUpdate,
        payload: r.encode_to_vec(),
        in_reply_to: None,
        update: Some((spec.name.clone(), latest.sequence)),
    }
}

/// Whether `who` may subscribe to `req` on `channel`: a feed of that name
/// on that channel, the `subscriber` role, on the channel, cleared for the
/// feed's highest input class, and regions the roster knows.
///
/// # Errors
/// Why not, in words the subscriber can act on.
pub(crate) fn admit(
    roster: &Roster,
    specs: &[FeedSpec],
    channel: Channel,
    who: &NodeId,
    req: &pb::Subscribe,
) -> Result<(), String> {
    let Some(spec) = specs.iter().find(|f| f.name == req.feed && f.channel == channel) else {
        return Err(format!("no feed named {:?} on the {channel} channel", req.feed));
    };
    let Some(node) = roster.node(who) else {
        return Err(format!("{who} is not in the roster"));
    };
    if !node.has_role("subscriber") {
        return Err(format!("the roster does not give {who} the subscriber role"));
    }
    if !node.is_on(channel) {
        return Err(format!("{who} is not on the {channel} channel in the roster"));
    }
    if node.clearance < spec.max_class {
        return Err(format!(
            "{who} is cleared for {}, and feed {} takes inputs up to {}",
            node.clearance, spec.name, spec.max_class
        ));
    }
    let known: Vec<&str> = roster
        .nodes()
        .map(|n| n.region_code.as_str())
        .filter(|c| !c.is_empty())
        .collect();
    if let Some(r) = req.regions.iter().find(|r| !known.contains(&r.as_str())) {
        return Err(format!("no region with county code {r:?} in the roster"));
    }
    Ok(())
}

/// Checks a received roll-up against its envelope: from an aggregator of
/// the roster that built it, its label within the envelope's, its mode the
/// envelope's.
fn check_update(roster: &Roster, h: &sitrep_core::HeaderInfo, r: &pb::NationalRollup) -> Result<(), String> {
    if r.aggregator != h.origin.as_str() {
        return Err(format!("built by {} but sent by {}", r.aggregator, h.origin));
    }
    if !roster.node(&h.origin).is_some_and(|n| n.has_role("aggregator")) {
        return Err(format!("{} is not an aggregator in the roster", h.origin));
    }
    let label = Label::from_proto(r.label.as_ref()).map_err(|e| format!("roll-up label: {e}"))?;
    if label.class > h.label.class || !label.caveats.iter().all(|c| h.label.caveats.contains(c)) {
        return Err(format!(
            "roll-up labelled {} above its envelope's {}",
            label.class, h.label.class
        ));
    }
    if r.mode != h.mode.to_proto() as i32 {
        return Err("roll-up mode is not its envelope's".to_owned());
    }
    Ok(())
}

/// Seals `o` to its recipient after the label checks every point applies,
/// and the store job that queues it: (ingest, next hops).
fn seal(shared: &Shared, roster: &Roster, o: &Outgoing, now: i64) -> Result<(Ingest, Vec<NodeId>), String> {
    let class: Class = o.label.class;
    shared
        .check_label(roster, class, o.channel, &[(Party::Recipient, &o.to)])
        .map_err(|e| e.to_string())?;
    let recipients = vec![o.to.clone()];
    let plan = shared
        .routes
        .plan(&shared.id, o.channel, &recipients)
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    let hops: Vec<(Party, &NodeId)> = plan.copies.keys().map(|h| (Party::NextHop, h)).collect();
    shared
        .check_label(roster, class, o.channel, &hops)
        .map_err(|e| e.to_string())?;
    let expires_ms =
        now.saturating_add(i64::try_from(shared.limits.default_ttl.as_millis()).unwrap_or(i64::MAX));
    let sealed = envelope::seal(
        &Draft {
            origin: shared.id.clone(),
            author: String::new(),
            label: o.label.clone(),
            precedence: Precedence::Priority,
            mode: o.mode,
            content_type: o.content_type,
            recipients: recipients.clone(),
            in_reply_to: o.in_reply_to,
            expires_ms,
            payload: &o.payload,
        },
        &shared.signing,
        roster,
        now,
    )
    .map_err(|e| format!("cannot seal: {e}"))?;
    let hops: Vec<NodeId> = plan.copies.keys().cloned().collect();
    Ok((
        Ingest {
            id: sealed.header.id,
            envelope: sealed.bytes,
            precedence: Precedence::Priority,
            expires_ms,
            now_ms: now,
            hop_count: 0,
            copies: Copy::per_hop(plan.copies),
            inbox: plan.local,
            track: recipients,
            submission: None,
        },
        hops,
    ))
}
