//! The node's service: what a local user can ask of it, called by both the
//! [`Node`](crate::Node) handle and the HTTP API. Submit (validate, policy,
//! route, seal, store durably), delivery state, the inbox (opened), status
//! (peers, outboxes, disk, expiry) and roster replacement.
//!
//! Not here: the network side (`ingress`, `link`), HTTP (`api`), start-up
//! and shutdown (`node`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft, HeaderInfo, MAX_LIFETIME_MS};
use sitrep_core::policy::Party;
use sitrep_core::report;
use sitrep_core::{
    Channel, Class, ContentType, Label, MessageId, Mode, NodeId, PolicyError, Precedence, Roster,
};
use sitrep_proto::v1 as pb;
use sitrep_store::{Copy, DeliveryRecord, HopStats, Ingest, Op, Storage, StoreError, SubmissionKey};

use crate::clock::now_ms;
use crate::error::{RosterUpdateError, SubmitError};
use crate::event::NodeEvent;
use crate::metrics::{Counters, Event};
use crate::shared::{Shared, lock, shown};

/// What to send.
// A submission is built once per report and moved, never stored in bulk:
// boxing the report would buy nothing but an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Content {
    /// A situation report, validated before sealing.
    Report(pb::SituationReport),
    /// Any other payload, already encoded.
    Raw {
        /// Its content type.
        content_type: ContentType,
        /// The encoded payload.
        payload: Vec<u8>,
    },
}

/// A message to submit.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Person or role submitting.
    pub author: String,
    /// Classification.
    pub label: Label,
    /// Precedence.
    pub precedence: Precedence,
    /// Mode.
    pub mode: Mode,
    /// Recipients.
    pub recipients: Vec<NodeId>,
    /// Expiry, ms since the epoch; `None` for the configured default lifetime.
    pub expires_ms: Option<i64>,
    /// The payload.
    pub content: Content,
}

/// A submission's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Submitted {
    /// The message.
    pub(crate) id: MessageId,
    /// It was stored by an earlier request with the same idempotency key;
    /// this one stored nothing.
    pub(crate) replayed: bool,
}

/// A message in the inbox, opened.
#[derive(Debug, Clone)]
pub struct Received {
    /// Inbox cursor.
    pub cursor: u64,
    /// Channel it came on.
    pub channel: Channel,
    /// The verified header.
    pub header: HeaderInfo,
    /// The decrypted payload.
    pub payload: Vec<u8>,
    /// When it was delivered here.
    pub received_ms: i64,
    /// SHA-256 of the signed envelope as stored.
    pub envelope_sha256: [u8; 32],
}

/// One feed this node builds or asked for, as listed.
#[derive(Debug, Clone)]
pub(crate) struct FeedSummary {
    pub(crate) name: String,
    /// `aggregator` (built here) or `subscriber` (asked for here).
    pub(crate) role: &'static str,
    pub(crate) channel: Channel,
    pub(crate) mode: Mode,
    /// Its configuration, at the aggregator.
    pub(crate) spec: Option<sitrep_core::feed::FeedSpec>,
    pub(crate) aggregator: String,
    /// `publishing`, or the request's state: `pending`, `active`, `refused`, `ended`.
    pub(crate) state: String,
    /// Why it was refused or ended.
    pub(crate) reason: String,
    /// Sequence of the latest roll-up held (0: none yet).
    pub(crate) sequence: u64,
    pub(crate) built_ms: i64,
    pub(crate) regions: u32,
    pub(crate) reporting: u32,
    pub(crate) overdue: u32,
    pub(crate) stale: u32,
    /// Its subscribers, at the aggregator.
    pub(crate) subscribers: Vec<String>,
    /// Update lag, ms: at the aggregator, the age of the oldest update not
    /// yet delivered to its subscriber; at a subscriber, how long the
    /// latest took from being built to arriving.
    pub(crate) lag_ms: i64,
}

/// One source of a roll-up, checked.
#[derive(Debug, Clone)]
pub(crate) struct SourceCheck {
    pub(crate) region_code: String,
    pub(crate) report_id: String,
    /// Empty when it checks out.
    pub(crate) problems: Vec<String>,
}

/// One peer link.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Peer.
    pub peer: NodeId,
    /// Channel.
    pub channel: Channel,
    /// Address dialled.
    pub address: SocketAddr,
    /// Connected now: a connection on which the peer was heard within two
    /// keep-alive intervals (and a second).
    pub connected: bool,
    /// Last successful exchange.
    pub last_seen_ms: Option<i64>,
    /// Round-trip time.
    pub rtt: Option<Duration>,
    /// Last error.
    pub last_error: Option<String>,
}

/// Everything `/v1/status` and `/metrics` show, read at one moment.
#[derive(Debug, Clone)]
pub(crate) struct StatusSnapshot {
    pub(crate) node: NodeId,
    pub(crate) now_ms: i64,
    pub(crate) roster: Arc<Roster>,
    pub(crate) certificates: Vec<(Channel, i64)>,
    pub(crate) peers: Vec<PeerStatus>,
    pub(crate) outboxes: Vec<(Channel, HopStats)>,
    pub(crate) stores: Vec<StoreStatus>,
    pub(crate) feeds: Vec<FeedSummary>,
    /// What each peer holds at each channel's endpoint, against its caps.
    pub(crate) peer_usage: Vec<(Channel, sitrep_net::PeerUsage)>,
}

/// One channel store, as status shows it.
#[derive(Debug, Clone)]
pub(crate) struct StoreStatus {
    pub(crate) channel: Channel,
    pub(crate) disk_bytes: u64,
    /// Why the store refuses writes, once it does.
    pub(crate) failed: Option<String>,
    /// Free bytes on its disk, if known.
    pub(crate) free_bytes: Option<u64>,
    /// Its caps on ingest.
    pub(crate) quota: sitrep_store::Quota,
}

/// The node's operations for local users.
#[derive(Debug, Clone)]
pub(crate) struct Service(Arc<Shared>);

impl Service {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self(shared)
    }

    /// The counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// Seals and queues a message; returns its id once durable.
    pub(crate) async fn submit(&self, sub: Submission) -> Result<MessageId, SubmitError> {
        self.submit_keyed(sub, None).await.map(|s| s.id)
    }

    /// [`Service::submit`] with a client's idempotency key: when `key` was
    /// used before, nothing is stored and the answer is the first message's
    /// id ([`Submitted::replayed`]), or [`SubmitError::KeyReused`] when the
    /// first request was a different one.
    pub(crate) async fn submit_keyed(
        &self,
        sub: Submission,
        key: Option<SubmissionKey>,
    ) -> Result<Submitted, SubmitError> {
        let s = &*self.0;
        let now = now_ms();
        let (content_type, payload) = match &sub.content {
            Content::Report(r) => {
                report::validate(r).map_err(SubmitError::Invalid)?;
                (ContentType::SituationReport, r.encode_to_vec())
            }
            Content::Raw {
                content_type,
                payload,
            } => (*content_type, payload.clone()),
        };
        check_recipients(&sub.recipients)?;
        let expires_ms = sub.expires_ms.unwrap_or_else(|| {
            now.saturating_add(i64::try_from(s.limits.default_ttl.as_millis()).unwrap_or(i64::MAX))
        });
        if expires_ms <= now || expires_ms - now > MAX_LIFETIME_MS {
            return Err(SubmitError::Bad {
                field: "expires",
                problem: format!(
                    "must be in the future and at most {} days away",
                    MAX_LIFETIME_MS / 86_400_000
                ),
            });
        }
        let roster = s.roster.get();
        let class = sub.label.class;
        let channel = Channel::for_class(class);
        // Submit-time policy: the channel, this node, every recipient...
        if let Some(r) = sub.recipients.iter().find(|r| roster.node(r).is_none()) {
            return Err(SubmitError::Bad {
                field: "recipients",
                problem: format!("{r} is not in the roster"),
            });
        }
        let recipients: Vec<(Party, &NodeId)> =
            sub.recipients.iter().map(|r| (Party::Recipient, r)).collect();
        s.check_label(&roster, class, channel, &recipients)?;
        // ...and every next hop.
        let plan = s
            .routes
            .plan(&s.id, channel, &sub.recipients)
            .map_err(SubmitError::NoRoute)?;
        let hops: Vec<(Party, &NodeId)> = plan.copies.keys().map(|h| (Party::NextHop, h)).collect();
        s.check_label(&roster, class, channel, &hops)?;

        let sealed = envelope::seal(
            &Draft {
                origin: s.id.clone(),
                author: sub.author.clone(),
                label: sub.label.clone(),
                precedence: sub.precedence,
                mode: sub.mode,
                content_type,
                recipients: sub.recipients.clone(),
                in_reply_to: None,
                expires_ms,
                payload: &payload,
            },
            &s.signing,
            &roster,
            now,
        )?;
        let id = sealed.header.id;
        let ch = s
            .channels
            .get(&channel)
            .ok_or(SubmitError::Policy(PolicyError::WrongChannel {
                class,
                channel,
                required: channel,
            }))?;
        let ingest = Ingest {
            id,
            envelope: sealed.bytes,
            precedence: sub.precedence,
            expires_ms,
            now_ms: now,
            hop_count: 0,
            copies: Copy::per_hop(plan.copies.clone()),
            inbox: plan.local,
            track: sub.recipients.iter().filter(|r| **r != s.id).cloned().collect(),
            submission: key,
        };
        match ch.store.apply(vec![Op::Ingest(ingest)]).await {
            Ok(_) => {}
            Err(StoreError::Resubmitted {
                id,
                same_request: true,
            }) => {
                tracing::info!(id = %shown(channel, id), "a retried submission answered with its first message");
                return Ok(Submitted { id, replayed: true });
            }
            Err(StoreError::Resubmitted { id, .. }) => return Err(SubmitError::KeyReused(id)),
            Err(e) => return Err(e.into()),
        }
        s.counters.inc(Event::Submitted);
        s.audit("submit", Some(id), None, channel, Some(class), "");
        s.wake_links(channel, plan.copies.keys());
        if plan.local {
            s.emit(NodeEvent::Delivered {
                id,
                origin: s.id.clone(),
                channel,
            });
        }
        s.bump();
        tracing::info!(id = %shown(channel, id), %channel, class = %class, precedence = %sub.precedence, recipients = sub.recipients.len(), "submitted");
        Ok(Submitted { id, replayed: false })
    }

    /// Delivery state per recipient of a message originated here.
    pub(crate) fn delivery(&self, id: &MessageId) -> Result<Vec<DeliveryRecord>, StoreError> {
        for ch in self.0.channels.values() {
            let d = ch.store.delivery(id)?;
            if !d.is_empty() {
                return Ok(d);
            }
        }
        Ok(Vec::new())
    }

    /// Whether any channel store holds `id` in its dedup set.
    pub(crate) fn has_seen(&self, id: &MessageId) -> Result<bool, StoreError> {
        for ch in self.0.channels.values() {
            if ch.store.seen(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Inbox entries after `after` on `channel`, opened. An entry that no
    /// longer opens (its origin left the roster) is skipped and counted.
    pub(crate) fn inbox(
        &self,
        channel: Channel,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Received>, StoreError> {
        let shared = &*self.0;
        let Some(ch) = shared.channels.get(&channel) else {
            return Ok(Vec::new());
        };
        let roster = shared.roster.get();
        Ok(ch
            .store
            .inbox_after(after, limit)?
            .into_iter()
            .filter_map(|e| self.open_entry(channel, &roster, &e))
            .collect())
    }

    /// An inbox entry verified and opened; `None` (counted) if it no
    /// longer opens.
    pub(crate) fn open_entry(
        &self,
        channel: Channel,
        roster: &Roster,
        e: &sitrep_store::InboxEntry,
    ) -> Option<Received> {
        let shared = &*self.0;
        // Verified at ingress; opened now, with the sender's expiry no longer relevant.
        match envelope::verify(&e.envelope, roster, e.received_ms)
            .and_then(|v| envelope::open(&v, &shared.id, &shared.hpke).map(|p| (v.header, p)))
        {
            Ok((header, payload)) => Some(Received {
                cursor: e.cursor,
                channel,
                header,
                payload: payload.to_vec(),
                received_ms: e.received_ms,
                envelope_sha256: sitrep_crypto::sha256(&e.envelope),
            }),
            Err(err) => {
                shared.counters.inc(Event::InboxUnreadable);
                tracing::warn!(id = %shown(channel, e.id), %channel, error = %err, "inbox entry no longer opens");
                None
            }
        }
    }

    /// The roster's regions (code and name), for the feeds' rows.
    pub(crate) fn regions(&self) -> Vec<sitrep_core::feed::Region> {
        self.0
            .roster
            .get()
            .nodes()
            .filter(|n| n.kind == sitrep_proto::v1::NodeKind::Region && !n.region_code.is_empty())
            .map(|n| sitrep_core::feed::Region {
                code: n.region_code.clone(),
                name: n.name.clone(),
            })
            .collect()
    }

    /// The roll-up of `spec` over `regions`, built at `now`.
    pub(crate) fn rollup(
        &self,
        spec: &sitrep_core::feed::FeedSpec,
        regions: &[sitrep_core::feed::Region],
        now: i64,
        sequence: u64,
    ) -> sitrep_proto::v1::NationalRollup {
        let latest = lock(&self.0.feeds.latest);
        sitrep_core::feed::rollup(spec, &latest, regions, self.0.id.as_str(), now, sequence)
    }

    /// The latest roll-up of feed `name` this node holds: published here,
    /// or received; at an aggregator that has not published yet, built
    /// now. `None` if it neither builds nor holds such a feed.
    pub(crate) fn feed(&self, name: &str) -> Option<Arc<sitrep_proto::v1::NationalRollup>> {
        if let Some(l) = lock(&self.0.feeds.held)
            .get(name)
            .and_then(|h| h.latest().cloned())
        {
            return Some(l);
        }
        let spec = self.0.feeds.specs.iter().find(|f| f.name == name)?;
        Some(Arc::new(self.rollup(spec, &self.regions(), now_ms(), 0)))
    }

    /// The roll-ups of feed `name` after sequence `after` (see
    /// `feedstate::Held::after`), and a receiver that changes with every
    /// new one; `None` if this node neither builds nor holds the feed.
    pub(crate) fn feed_after(
        &self,
        name: &str,
        after: u64,
    ) -> Option<Vec<Arc<sitrep_proto::v1::NationalRollup>>> {
        let held = lock(&self.0.feeds.held);
        match held.get(name) {
            Some(h) => Some(h.after(after)),
            None if self.0.feeds.specs.iter().any(|f| f.name == name) => Some(Vec::new()),
            None if lock(&self.0.feeds.requests)
                .values()
                .any(|r| r.requests.iter().any(|q| q.feed == name)) =>
            {
                Some(Vec::new())
            }
            None => None,
        }
    }

    /// Every roll-up of feed `name` held here (the last 256), oldest first.
    pub(crate) fn feed_history(&self, name: &str) -> Vec<Arc<sitrep_proto::v1::NationalRollup>> {
        lock(&self.0.feeds.held)
            .get(name)
            .map(|h| h.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes whenever a held roll-up changes.
    pub(crate) fn feed_updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.feeds.updates.subscribe()
    }

    /// The feeds this node builds and those it asked for, with their state now.
    pub(crate) fn feeds(&self) -> Vec<FeedSummary> {
        let shared = &*self.0;
        // The latest roll-up of each feed and when it came: nothing else is read.
        let held: std::collections::BTreeMap<String, (Option<Arc<pb::NationalRollup>>, i64)> =
            lock(&shared.feeds.held)
                .iter()
                .map(|(name, h)| (name.clone(), (h.latest().cloned(), h.received_ms)))
                .collect();
        let now = now_ms();
        let summary = |name: &str| {
            let h = held.get(name);
            let latest = h.and_then(|h| h.0.clone());
            let t = latest.as_ref().and_then(|r| r.totals).unwrap_or_default();
            (latest, h.map(|h| h.1), t)
        };
        let mut out = Vec::new();
        let subs = lock(&shared.feeds.subscriptions).clone();
        let sent = lock(&shared.feeds.sent).clone();
        for f in &shared.feeds.specs {
            let (latest, _, t) = summary(&f.name);
            let subscribers: Vec<String> = subs
                .get(&f.channel)
                .map(|t| {
                    t.subscriptions
                        .iter()
                        .filter(|s| s.feed == f.name)
                        .map(|s| s.subscriber.clone())
                        .collect()
                })
                .unwrap_or_default();
            // The oldest update not yet delivered to its subscriber.
            let lag_ms = sent
                .iter()
                .filter(|((feed, _), _)| *feed == f.name)
                .filter(|(_, s)| {
                    s.hops.iter().len() > 0
                        && shared.channels.get(&s.channel).is_some_and(|rt| {
                            rt.store.delivery(&s.id).is_ok_and(|d| {
                                d.iter()
                                    .any(|r| r.state != sitrep_store::DeliveryState::Delivered)
                            })
                        })
                })
                .map(|(_, s)| now.saturating_sub(s.sent_ms))
                .max()
                .unwrap_or(0);
            out.push(FeedSummary {
                name: f.name.clone(),
                role: "aggregator",
                channel: f.channel,
                mode: f.mode,
                spec: Some(f.clone()),
                aggregator: shared.id.to_string(),
                state: "publishing".to_owned(),
                reason: String::new(),
                sequence: latest.as_ref().map_or(0, |l| l.sequence),
                built_ms: latest.as_ref().map_or(0, |l| l.built_unix_ms),
                regions: t.regions_total,
                reporting: t.regions_reporting,
                overdue: t.regions_overdue,
                stale: t.regions_stale,
                subscribers,
                lag_ms,
            });
        }
        for (channel, reqs) in lock(&shared.feeds.requests).iter() {
            for r in &reqs.requests {
                let (latest, received, t) = summary(&r.feed);
                out.push(FeedSummary {
                    name: r.feed.clone(),
                    role: "subscriber",
                    channel: *channel,
                    mode: latest
                        .as_ref()
                        .and_then(|l| Mode::from_proto(l.mode))
                        .unwrap_or(Mode::Actual),
                    spec: None,
                    aggregator: r.aggregator.clone(),
                    state: r.state.as_str().to_owned(),
                    reason: r.reason.clone(),
                    sequence: latest.as_ref().map_or(0, |l| l.sequence),
                    built_ms: latest.as_ref().map_or(0, |l| l.built_unix_ms),
                    regions: t.regions_total,
                    reporting: t.regions_reporting,
                    overdue: t.regions_overdue,
                    stale: t.regions_stale,
                    subscribers: Vec::new(),
                    lag_ms: match (&latest, received) {
                        (Some(l), Some(at)) => at.saturating_sub(l.built_unix_ms).max(0),
                        _ => 0,
                    },
                });
            }
        }
        out
    }

    /// Asks `aggregator` (default: the roster's only aggregator) for feed
    /// `name` on `channel`, optionally only some regions: a signed
    /// SUBSCRIBE through the network. The answer comes back as the feed's
    /// first update, or a refusal with its reason (`feeds()` shows it).
    pub(crate) async fn subscribe(
        &self,
        name: &str,
        aggregator: Option<NodeId>,
        channel: Channel,
        regions: Vec<String>,
        unsubscribe: bool,
    ) -> Result<MessageId, SubmitError> {
        let shared = &*self.0;
        let bad = |field: &'static str, problem: String| SubmitError::Bad { field, problem };
        if name.is_empty() || name.len() > 63 {
            return Err(bad("feed", "must be 1 to 63 characters".into()));
        }
        if !shared.channels.contains_key(&channel) {
            return Err(bad(
                "channel",
                format!("this node is not on the {channel} channel"),
            ));
        }
        let aggregator = match aggregator {
            Some(a) => a,
            None => {
                let roster = shared.roster.get();
                let all: Vec<NodeId> = roster
                    .nodes()
                    .filter(|n| n.has_role("aggregator") && n.is_on(channel))
                    .map(|n| n.id.clone())
                    .collect();
                match all.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(bad(
                            "aggregator",
                            format!("no aggregator on the {channel} channel in the roster"),
                        ));
                    }
                    _ => {
                        return Err(bad(
                            "aggregator",
                            "the roster has several aggregators: name one".into(),
                        ));
                    }
                }
            }
        };
        let payload = pb::Subscribe {
            feed: name.to_owned(),
            regions: regions.clone(),
        }
        .encode_to_vec();
        let id = self
            .submit(Submission {
                author: String::new(),
                label: Label::new(channel.floor()),
                precedence: Precedence::Priority,
                mode: Mode::Actual,
                recipients: vec![aggregator.clone()],
                expires_ms: None,
                content: Content::Raw {
                    content_type: if unsubscribe {
                        ContentType::Unsubscribe
                    } else {
                        ContentType::Subscribe
                    },
                    payload,
                },
            })
            .await?;
        let snapshot = {
            let mut reqs = lock(&shared.feeds.requests);
            let table = reqs.entry(channel).or_default();
            table.put(crate::feedstate::Request {
                feed: name.to_owned(),
                aggregator: aggregator.to_string(),
                channel: channel.as_str().to_owned(),
                regions,
                state: if unsubscribe {
                    crate::feedstate::RequestState::Ended
                } else {
                    crate::feedstate::RequestState::Pending
                },
                reason: if unsubscribe {
                    "unsubscribed".into()
                } else {
                    String::new()
                },
                request_id: id.to_string(),
                updated_ms: now_ms(),
            });
            table.clone()
        };
        if let Some(rt) = shared.channels.get(&channel) {
            crate::feedstate::save(&crate::feedstate::Requests::file(&rt.dir), &snapshot).map_err(|e| {
                SubmitError::Store(StoreError::Corrupt {
                    key: "feed-requests.json".into(),
                    detail: e,
                })
            })?;
        }
        shared.bump();
        Ok(id)
    }

    /// The channel and aggregator of a subscription this node asked for.
    pub(crate) fn request_of(&self, name: &str) -> Option<(Channel, NodeId)> {
        lock(&self.0.feeds.requests).iter().find_map(|(c, reqs)| {
            reqs.requests
                .iter()
                .find(|r| r.feed == name && r.state != crate::feedstate::RequestState::Ended)
                .and_then(|r| NodeId::new(&r.aggregator).ok().map(|a| (*c, a)))
        })
    }

    /// Checks every source of `rollup` against this node's inbox: an
    /// envelope with the report's id whose SHA-256 is the source's digest,
    /// whose signature verifies, whose report is the source's, and whose
    /// figures are the row's. One line per source, and whether all passed.
    pub(crate) fn verify(&self, rollup: &pb::NationalRollup) -> Result<Vec<SourceCheck>, StoreError> {
        let shared = &*self.0;
        let mut wanted: std::collections::BTreeMap<Vec<u8>, &pb::RollupSource> =
            rollup.sources.iter().map(|s| (s.report_id.clone(), s)).collect();
        let mut out = Vec::new();
        let roster = shared.roster.get();
        for (channel, ch) in &shared.channels {
            let mut after = 0;
            while !wanted.is_empty() {
                let page = ch.store.inbox_after(after, 500)?;
                let Some(last) = page.last() else { break };
                after = last.cursor;
                for e in &page {
                    let Some(source) = wanted.remove(e.id.as_bytes().as_slice()) else {
                        continue;
                    };
                    let mut problems = Vec::new();
                    if sitrep_crypto::sha256(&e.envelope).as_slice() != source.envelope_sha256.as_slice() {
                        problems.push("the envelope's SHA-256 is not the source's digest".to_owned());
                    }
                    match self.open_entry(*channel, &roster, e) {
                        None => problems.push("the envelope does not verify or open here".to_owned()),
                        Some(r) => match pb::SituationReport::decode(r.payload.as_slice()) {
                            Err(err) => problems.push(format!("not a situation report: {err}")),
                            Ok(report) => {
                                problems.extend(sitrep_core::feed::check_source(rollup, source, &report))
                            }
                        },
                    }
                    out.push(SourceCheck {
                        region_code: source.region_code.clone(),
                        report_id: e.id.to_string(),
                        problems,
                    });
                }
            }
        }
        for (id, source) in wanted {
            out.push(SourceCheck {
                region_code: source.region_code.clone(),
                report_id: MessageId::from_slice(&id).map_or_else(
                    |len| format!("({len} bytes: not a message id)"),
                    |i| i.to_string(),
                ),
                problems: vec!["no envelope with this report id in this node's inbox".to_owned()],
            });
        }
        // Rows that claim a report without naming a source.
        for row in rollup.regions.iter().filter(|r| !r.never_reported) {
            if !rollup.sources.iter().any(|s| s.region_code == row.region_code) {
                out.push(SourceCheck {
                    region_code: row.region_code.clone(),
                    report_id: String::new(),
                    problems: vec!["the row has figures but no source".to_owned()],
                });
            }
        }
        out.sort_by(|a, b| a.region_code.cmp(&b.region_code));
        Ok(out)
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &NodeId {
        &self.0.id
    }

    /// What a report submitted here may carry: each class this node may
    /// send (its channel runs here and its clearance allows it), with the
    /// roster's nodes that policy and routing accept as recipients of it.
    /// The same checks as [`Service::submit`], per recipient.
    pub(crate) fn report_options(&self) -> Vec<(Class, Vec<NodeId>)> {
        let s = &*self.0;
        let roster = s.roster.get();
        let allowed = |class: Class, channel: Channel, to: &NodeId| {
            s.check_label(&roster, class, channel, &[(Party::Recipient, to)])
                .is_ok()
                && s.routes
                    .plan(&s.id, channel, std::slice::from_ref(to))
                    .is_ok_and(|plan| {
                        let hops: Vec<(Party, &NodeId)> =
                            plan.copies.keys().map(|h| (Party::NextHop, h)).collect();
                        s.check_label(&roster, class, channel, &hops).is_ok()
                    })
        };
        Class::ALL
            .into_iter()
            .filter_map(|class| {
                let channel = Channel::for_class(class);
                s.check_label(&roster, class, channel, &[]).ok()?;
                let to = roster
                    .nodes()
                    .filter(|n| n.id != s.id && allowed(class, channel, &n.id))
                    .map(|n| n.id.clone())
                    .collect();
                Some((class, to))
            })
            .collect()
    }

    /// Outbox statistics per channel.
    pub(crate) fn outboxes(&self) -> Vec<(Channel, HopStats)> {
        self.0
            .channels
            .iter()
            .flat_map(|(c, rt)| rt.store.outbox_stats().into_iter().map(move |h| (*c, h)))
            .collect()
    }

    /// Disk use per channel store, bytes.
    pub(crate) fn disk_use(&self) -> Vec<(Channel, u64)> {
        self.0
            .channels
            .iter()
            .map(|(c, rt)| (*c, rt.store.disk_bytes()))
            .collect()
    }

    /// The roster in use.
    pub(crate) fn roster(&self) -> Arc<Roster> {
        self.0.roster.get()
    }

    /// Every peer link. A link is `connected` while it has a connection on
    /// which the peer was heard (a frame, or the acknowledgement of a
    /// keep-alive) within two keep-alive intervals and a second.
    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        let now = now_ms();
        let heard_within = i64::try_from((self.0.limits.keep_alive * 2).as_millis())
            .unwrap_or(i64::MAX)
            .saturating_add(1000);
        let mut out = Vec::new();
        for (channel, rt) in &self.0.channels {
            for link in rt.links.values() {
                let st = lock(&link.state).clone();
                out.push(PeerStatus {
                    peer: link.peer.clone(),
                    channel: *channel,
                    address: *lock(&link.addr),
                    connected: st.connected && st.last_seen_ms.is_some_and(|t| now - t <= heard_within),
                    last_seen_ms: st.last_seen_ms,
                    rtt: st.rtt,
                    last_error: st.last_error,
                });
            }
        }
        out
    }

    /// Everything the status endpoint and the metrics show, read now.
    pub(crate) fn status(&self) -> StatusSnapshot {
        StatusSnapshot {
            node: self.0.id.clone(),
            now_ms: now_ms(),
            roster: self.roster(),
            certificates: self.0.cert_not_after.iter().map(|(c, t)| (*c, *t)).collect(),
            peers: self.peers(),
            outboxes: self.outboxes(),
            stores: self
                .0
                .channels
                .iter()
                .map(|(c, rt)| StoreStatus {
                    channel: *c,
                    disk_bytes: rt.store.disk_bytes(),
                    failed: rt.store.healthy().err(),
                    free_bytes: rt.store.free_bytes(),
                    quota: rt.store.quota(),
                })
                .collect(),
            feeds: self.feeds(),
            peer_usage: self
                .0
                .channels
                .iter()
                .flat_map(|(c, rt)| rt.endpoint.peer_usage().into_iter().map(|u| (*c, u)))
                .collect(),
        }
    }

    /// Whether the node can serve: the roster is valid now and every
    /// channel store takes writes (a store refuses them for good after a
    /// failed fdatasync: restart the node once the disk is fixed).
    pub(crate) fn ready(&self) -> Result<(), String> {
        if !self.0.roster.get().is_valid_at(now_ms()) {
            return Err("roster not valid now".to_owned());
        }
        for rt in self.0.channels.values() {
            rt.store.healthy()?;
            if let Some(why) = rt.audit.failed() {
                return Err(why);
            }
        }
        Ok(())
    }

    /// Points each link at the address `peers` gives its peer, and says
    /// what changed: links moved, and configured peers without a link (or
    /// links without a configured peer), which only a restart adds or
    /// removes.
    pub(crate) fn move_peers(&self, peers: &[crate::config::PeerConfig]) -> PeerChanges {
        let mut changes = PeerChanges::default();
        for p in peers {
            match self.0.channels.get(&p.channel).and_then(|c| c.links.get(&p.id)) {
                Some(link) => {
                    if *lock(&link.addr) != p.address {
                        link.move_to(p.address);
                        changes.moved.push((p.channel, p.id.clone(), p.address));
                    }
                }
                None => changes.not_running.push((p.channel, p.id.clone())),
            }
        }
        for (channel, rt) in &self.0.channels {
            for id in rt.links.keys() {
                if !peers.iter().any(|p| p.channel == *channel && &p.id == id) {
                    changes.not_configured.push((*channel, id.clone()));
                }
            }
        }
        changes
    }

    /// Reads the configured roster file and replaces the roster in use.
    pub(crate) fn reload_roster(&self) -> Result<u64, RosterUpdateError> {
        let bytes = std::fs::read(&self.0.roster_path).map_err(|e| RosterUpdateError::Read(e.to_string()))?;
        self.replace_roster(&bytes)
    }

    /// Replaces the roster with a newer signed one (higher serial, valid
    /// now, signed by the pinned administrator key, still listing this node
    /// with its keys and channels). Queued copies are checked against it
    /// when they are sent.
    pub(crate) fn replace_roster(&self, signed: &[u8]) -> Result<u64, RosterUpdateError> {
        let shared = &*self.0;
        let current = shared.roster.get();
        let new = Roster::verify(signed, &shared.admin, Some(current.serial), now_ms())?;
        let Some(me) = new.node(&shared.id) else {
            return Err(RosterUpdateError::NotForThisNode(format!(
                "does not list {}",
                shared.id
            )));
        };
        if me.signing_key != shared.signing.verifying_key() || me.hpke_key != shared.hpke.public_key() {
            return Err(RosterUpdateError::NotForThisNode(format!(
                "changes the keys of {}",
                shared.id
            )));
        }
        if let Some(c) = shared.channels.keys().find(|c| !me.is_on(**c)) {
            return Err(RosterUpdateError::NotForThisNode(format!(
                "takes {} off the {c} channel",
                shared.id
            )));
        }
        let serial = new.serial;
        shared.roster.set(new);
        shared.counters.inc(Event::RosterReplaced);
        for (channel, rt) in &shared.channels {
            shared.audit(
                "roster",
                None,
                None,
                *channel,
                None,
                &format!("serial {} replaced serial {}", serial, current.serial),
            );
            // Re-check queued copies against the new roster now.
            for link in rt.links.values() {
                link.wake.notify_one();
            }
        }
        tracing::info!(serial, previous = current.serial, "roster replaced");
        // Subscriptions are checked against the new roster.
        shared.feeds.wake.notify_one();
        shared.bump();
        Ok(serial)
    }
}

/// At least one recipient, at most [`envelope::MAX_RECIPIENTS`], none twice.
fn check_recipients(recipients: &[NodeId]) -> Result<(), SubmitError> {
    let bad = |problem: String| SubmitError::Bad {
        field: "recipients",
        problem,
    };
    if recipients.is_empty() {
        return Err(bad("at least one recipient is required".into()));
    }
    if recipients.len() > envelope::MAX_RECIPIENTS {
        return Err(bad(format!(
            "{} recipients, at most {}",
            recipients.len(),
            envelope::MAX_RECIPIENTS
        )));
    }
    if let Some((_, dup)) = recipients
        .iter()
        .enumerate()
        .find(|(i, r)| recipients[..*i].contains(r))
    {
        return Err(bad(format!("{dup} is listed twice")));
    }
    Ok(())
}

/// What a reload of the peers' addresses changed ([`crate::Reloader::move_peers`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerChanges {
    /// Links now pointed at a new address: channel, peer, address.
    pub moved: Vec<(Channel, NodeId, SocketAddr)>,
    /// Peers in the config with no link running (added since the start):
    /// a restart starts them.
    pub not_running: Vec<(Channel, NodeId)>,
    /// Links running for peers no longer in the config: they go on until a
    /// restart.
    pub not_configured: Vec<(Channel, NodeId)>,
}
