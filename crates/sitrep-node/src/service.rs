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
use sitrep_core::{Channel, ContentType, Label, MessageId, Mode, NodeId, PolicyError, Precedence, Roster};
use sitrep_proto::v1 as pb;
use sitrep_store::{Copy, DeliveryRecord, HopStats, Ingest, Op, Storage, StoreError};

use crate::clock::now_ms;
use crate::error::{RosterUpdateError, SubmitError};
use crate::event::NodeEvent;
use crate::metrics::{Counters, Event};
use crate::shared::{ReportInput, Shared, lock};

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

/// One feed this node builds, as listed.
#[derive(Debug, Clone)]
pub(crate) struct FeedSummary {
    /// Its configuration.
    pub spec: sitrep_core::feed::FeedSpec,
    /// Updates so far (bumped by every newer report on any feed).
    pub sequence: u64,
    /// Regions in the roll-up, reporting, overdue, stale.
    pub regions: u32,
    /// Regions with a report.
    pub reporting: u32,
    /// Regions overdue.
    pub overdue: u32,
    /// Regions stale.
    pub stale: u32,
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
    /// Connected now.
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
}

/// One channel store, as status shows it.
#[derive(Debug, Clone)]
pub(crate) struct StoreStatus {
    pub(crate) channel: Channel,
    pub(crate) disk_bytes: u64,
    /// Why the store refuses writes, once it does.
    pub(crate) failed: Option<String>,
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
        };
        ch.store.apply(vec![Op::Ingest(ingest)]).await?;
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
        tracing::info!(%id, class = %class, precedence = %sub.precedence, recipients = sub.recipients.len(), "submitted");
        Ok(id)
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
    fn open_entry(
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
                tracing::warn!(id = %e.id, error = %err, "inbox entry no longer opens");
                None
            }
        }
    }

    /// Takes every situation report in the inbox into the feeds (at start:
    /// the inbox is the feeds' durable state). Returns how many were read.
    pub(crate) fn load_feeds(&self) -> Result<usize, StoreError> {
        if self.0.feeds.specs.is_empty() {
            return Ok(0);
        }
        let mut read = 0;
        let roster = self.0.roster.get();
        for (channel, ch) in &self.0.channels {
            let mut after = 0;
            loop {
                // Paged on the store's cursor: entries that no longer open
                // are skipped, not mistaken for the end.
                let page = ch.store.inbox_after(after, 500)?;
                let Some(last) = page.last() else { break };
                after = last.cursor;
                for r in page.iter().filter_map(|e| self.open_entry(*channel, &roster, e)) {
                    read += 1;
                    if r.header.content_type != ContentType::SituationReport {
                        continue;
                    }
                    let Ok(report) = sitrep_proto::v1::SituationReport::decode(r.payload.as_slice()) else {
                        continue;
                    };
                    self.0.offer_report(
                        &r.header,
                        *channel,
                        ReportInput {
                            report,
                            envelope_sha256: r.envelope_sha256,
                            received_ms: r.received_ms,
                        },
                    );
                }
            }
        }
        tracing::info!(
            feeds = self.0.feeds.specs.len(),
            inbox_entries = read,
            "feeds loaded from the inbox"
        );
        Ok(read)
    }

    /// The roster's regions (code and name), for the feeds' rows.
    fn regions(&self) -> Vec<sitrep_core::feed::Region> {
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

    /// The roll-up of `spec` over `regions`, built now.
    fn rollup(
        &self,
        spec: &sitrep_core::feed::FeedSpec,
        regions: &[sitrep_core::feed::Region],
    ) -> sitrep_proto::v1::NationalRollup {
        let sequence = self.0.feeds.sequence.load(std::sync::atomic::Ordering::Relaxed);
        let latest = lock(&self.0.feeds.latest);
        sitrep_core::feed::rollup(spec, &latest, regions, self.0.id.as_str(), now_ms(), sequence)
    }

    /// The current roll-up of feed `name`, built now; `None` if this node
    /// builds no such feed.
    pub(crate) fn feed(&self, name: &str) -> Option<sitrep_proto::v1::NationalRollup> {
        let spec = self.0.feeds.specs.iter().find(|f| f.name == name)?;
        Some(self.rollup(spec, &self.regions()))
    }

    /// The feeds this node builds, with their state now.
    pub(crate) fn feeds(&self) -> Vec<FeedSummary> {
        let regions = self.regions();
        self.0
            .feeds
            .specs
            .iter()
            .map(|f| {
                let r = self.rollup(f, &regions);
                let t = r.totals.unwrap_or_default();
                FeedSummary {
                    spec: f.clone(),
                    sequence: r.sequence,
                    regions: t.regions_total,
                    reporting: t.regions_reporting,
                    overdue: t.regions_overdue,
                    stale: t.regions_stale,
                }
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

    /// Every peer link.
    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        let mut out = Vec::new();
        for (channel, rt) in &self.0.channels {
            for link in rt.links.values() {
                let st = lock(&link.state).clone();
                out.push(PeerStatus {
                    peer: link.peer.clone(),
                    channel: *channel,
                    address: *lock(&link.addr),
                    connected: st.connected,
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
                })
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
        }
        if let Some(why) = self.0.audit.failed() {
            return Err(why);
        }
        Ok(())
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
