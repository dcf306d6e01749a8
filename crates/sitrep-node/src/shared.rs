//! State shared by the node's tasks: identity and keys, the roster in use,
//! each channel's store, endpoint and links, counters, the audit log, and the
//! signals that wake waiters. Also the one place a refusal is carried out
//! ([`Shared::refused`]: count, audit, log, emit).
//!
//! Not here: decisions (they are pure functions in `sitrep_core`), or the
//! operations on this state (`service`, `ingress`, `link`, `sweeper`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use sitrep_core::policy::{Party, check_parties};
use sitrep_core::routing::RouteTable;
use sitrep_core::{Channel, Class, MessageId, NodeId, PolicyError, Roster};
use sitrep_crypto::{HpkeSecretKey, SigningKey};
use sitrep_net::{ChannelEndpoint, PeerPolicy};
use sitrep_store::ChannelStore;
use sitrep_store::audit::{AuditEntry, AuditLog};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Limits};
use crate::error::NodeError;
use sitrep_core::ingress::{Context, RefuseReason};

use crate::event::NodeEvent;
use crate::metrics::{Counters, Direction};

/// How the process log (stderr, the journal) names a message id or a peer
/// of `channel`'s traffic: as itself on `open`; on `secure` as `(secure)`.
/// Who sent what, and when, on the secure channel is written only to that
/// channel's audit log, on the secure store's volume (docs/security.md).
pub(crate) fn shown<T: std::fmt::Display>(channel: Channel, v: T) -> Shown<T> {
    Shown((channel == Channel::Open).then_some(v))
}

/// A value for the process log, or `(secure)`: see [`shown`].
#[derive(Debug)]
pub(crate) struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("(secure)"),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The roster in use, replaceable at run time.
#[derive(Debug)]
pub(crate) struct RosterCell(RwLock<Arc<Roster>>);

impl RosterCell {
    pub(crate) fn new(r: Roster) -> Self {
        Self(RwLock::new(Arc::new(r)))
    }

    pub(crate) fn get(&self) -> Arc<Roster> {
        Arc::clone(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) fn set(&self, r: Roster) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(r);
    }
}

/// Decides which authenticated peers may talk on a channel: configured as a
/// peer on that channel, and on that channel in the roster.
#[derive(Debug)]
pub(crate) struct PeerGate {
    pub(crate) peers: BTreeMap<Channel, BTreeSet<NodeId>>,
    pub(crate) roster: Arc<RosterCell>,
}

impl PeerPolicy for PeerGate {
    fn check(&self, channel: Channel, peer: &NodeId) -> Result<(), String> {
        if !self.peers.get(&channel).is_some_and(|p| p.contains(peer)) {
            return Err(format!(
                "{peer} is not a configured peer on the {channel} channel"
            ));
        }
        let roster = self.roster.get();
        match roster.node(peer) {
            None => Err(format!("{peer} is not in the roster")),
            Some(n) if !n.is_on(channel) => {
                Err(format!("{peer} is not on the {channel} channel in the roster"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// What the node knows about one direct peer on one channel.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) peer: NodeId,
    pub(crate) addr: Mutex<SocketAddr>,
    /// Wakes the sender: new copies queued, or the address changed.
    pub(crate) wake: Notify,
    /// Bumped when the address changes, so the sender drops its connection.
    pub(crate) generation: Mutex<u64>,
    pub(crate) state: Mutex<LinkState>,
}

impl Link {
    pub(crate) fn new(peer: NodeId, addr: SocketAddr) -> Self {
        Self {
            peer,
            addr: Mutex::new(addr),
            wake: Notify::new(),
            generation: Mutex::new(0),
            state: Mutex::new(LinkState::default()),
        }
    }

    /// Points the link at a new address; the sender drops its connection.
    pub(crate) fn move_to(&self, addr: SocketAddr) {
        *lock(&self.addr) = addr;
        *lock(&self.generation) += 1;
        self.wake.notify_one();
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct LinkState {
    pub(crate) connected: bool,
    pub(crate) last_seen_ms: Option<i64>,
    pub(crate) rtt: Option<Duration>,
    pub(crate) last_error: Option<String>,
}

/// One channel's runtime.
#[derive(Debug)]
pub(crate) struct ChannelRt {
    pub(crate) channel: Channel,
    pub(crate) max_class: Class,
    pub(crate) store: ChannelStore,
    /// The store's directory (the feed state files live there too).
    pub(crate) dir: std::path::PathBuf,
    pub(crate) endpoint: ChannelEndpoint,
    pub(crate) links: BTreeMap<NodeId, Arc<Link>>,
    /// The hash-chained audit log of this channel's events (the secure
    /// channel's lives in its store's directory: [`Config::audit_log`]).
    pub(crate) audit: AuditLog,
}

/// The key of this node's QUIC stateless resets, the same at every start
/// (`<data_dir>/quic-reset.key`, 32 random bytes made at the first start,
/// `0600`): a restarted node resets its previous instance's connections, so
/// its peers reconnect on their next packet instead of after the idle
/// timeout. Whoever reads it can forge resets of this node's connections
/// (a denial of service, nothing more): it is as private as the data
/// directory.
///
/// # Errors
/// [`NodeError`] naming `node.data_dir` if the file cannot be read or made,
/// or is not 32 bytes.
pub(crate) fn reset_key(data_dir: &std::path::Path) -> Result<[u8; 32], NodeError> {
    use std::io::Write as _;
    let path = data_dir.join("quic-reset.key");
    let fail = |e: String| NodeError::config("node.data_dir", format!("{}: {e}", path.display()));
    match std::fs::read(&path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|b: Vec<u8>| fail(format!("{} bytes, not 32; delete it to make a new one", b.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            let mut f = sitrep_store::private::file_options()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| fail(e.to_string()))?;
            f.write_all(&key)
                .and_then(|()| f.sync_all())
                .map_err(|e| fail(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

impl ChannelRt {
    /// Opens `channel` as `config` sets it up: its store (the segment log
    /// on `log_dir` if given), audit log and endpoint, and a link per peer
    /// on it. Returns it with its certificate's expiry.
    ///
    /// # Errors
    /// [`NodeError`] naming the config key or the part that fails.
    pub(crate) fn open(
        config: &Config,
        channel: Channel,
        gate: Arc<dyn PeerPolicy>,
        recorder: Option<Arc<dyn sitrep_net::FrameRecorder>>,
        log_dir: Option<Arc<dyn sitrep_store::log::Dir>>,
        reset_key: &[u8; 32],
    ) -> Result<(Self, i64), NodeError> {
        let key = |k: &str| format!("channels.{channel}.{k}");
        let c = config
            .channels
            .get(&channel)
            .ok_or_else(|| NodeError::config(&key("listen"), "not configured".to_owned()))?;
        let not_after = sitrep_net::certificate_not_after_ms(&c.cert)
            .map_err(|e| NodeError::config(&key("cert"), e.to_string()))?;
        let identity = sitrep_net::TlsIdentity::load(&c.ca, &c.cert, &c.key)?;
        sitrep_store::private::create_dir_all(&c.store)
            .map_err(|e| NodeError::config(&key("store"), e.to_string()))?;
        let store = match log_dir {
            Some(dir) => ChannelStore::open_with(&c.store, dir, sitrep_store::log::LogConfig::default())?,
            None => ChannelStore::open(&c.store)?,
        };
        store.set_quota(config.limits.quota());
        let audit = AuditLog::open(&config.audit_log(channel))
            .map_err(|e| NodeError::config(&key("store"), format!("audit log: {e}")))?;
        let endpoint = ChannelEndpoint::bind_with_reset_key(
            channel,
            config.id.clone(),
            c.listen,
            &identity,
            config.limits.transport(),
            gate,
            recorder,
            Some(reset_key),
        )?;
        let links = config
            .peers
            .iter()
            .filter(|p| p.channel == channel)
            .map(|p| (p.id.clone(), Arc::new(Link::new(p.id.clone(), p.address))))
            .collect();
        let rt = Self {
            channel,
            max_class: c.max_class,
            store,
            dir: c.store.clone(),
            endpoint,
            links,
            audit,
        };
        Ok((rt, not_after))
    }
}

/// Everything the tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) signing: SigningKey,
    pub(crate) hpke: HpkeSecretKey,
    pub(crate) roster: Arc<RosterCell>,
    pub(crate) channels: BTreeMap<Channel, ChannelRt>,
    pub(crate) routes: RouteTable,
    pub(crate) limits: Limits,
    pub(crate) counters: Counters,
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) cancel: CancellationToken,
    /// Ids being handled by an ingress task right now, so a retransmission
    /// racing the first copy waits for its outcome instead of double work.
    pub(crate) ingress_busy: Mutex<HashSet<MessageId>>,
    /// Checks arriving envelopes' signatures in batches.
    pub(crate) verifier: Arc<crate::verifier::Verifier>,
    /// The pinned administrator key and the roster file, for reloads.
    pub(crate) admin: sitrep_crypto::VerifyingKey,
    pub(crate) roster_path: std::path::PathBuf,
    /// Where the HTTP API listens, once bound.
    pub(crate) api_addr: Mutex<Option<SocketAddr>>,
    /// Each channel certificate's end of validity, ms since the epoch.
    pub(crate) cert_not_after: BTreeMap<Channel, i64>,
    /// The feeds this node builds (an aggregator); none for other nodes.
    pub(crate) feeds: Feeds,
}

/// The feeds a node builds (an aggregator) or receives (a subscriber).
#[derive(Debug)]
pub(crate) struct Feeds {
    pub(crate) specs: Vec<sitrep_core::feed::FeedSpec>,
    /// The latest report per region, mode and channel (an aggregator).
    pub(crate) latest: Mutex<sitrep_core::feed::Latest>,
    /// Wakes the feeds task: a newer report, a feed message in the inbox,
    /// a roster change.
    pub(crate) wake: Notify,
    /// The roll-ups held per feed: published here, or received.
    pub(crate) held: Mutex<crate::feedstate::HeldFeeds>,
    /// Bumped whenever `held` changes (the Server-Sent Events wait on it).
    pub(crate) updates: watch::Sender<u64>,
    /// The aggregator's subscriptions, per channel.
    pub(crate) subscriptions: Mutex<BTreeMap<Channel, crate::feedstate::Subscriptions>>,
    /// The subscriptions this node asked for, per channel.
    pub(crate) requests: Mutex<BTreeMap<Channel, crate::feedstate::Requests>>,
    /// The last update sent to each (feed, subscriber), at the aggregator.
    pub(crate) sent: Mutex<BTreeMap<(String, NodeId), Sent>>,
}

/// An update sent to one subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) id: MessageId,
    pub(crate) channel: Channel,
    pub(crate) sequence: u64,
    /// Next hops its copies were queued for.
    pub(crate) hops: Vec<NodeId>,
    pub(crate) sent_ms: i64,
}

impl Feeds {
    pub(crate) fn new(specs: Vec<sitrep_core::feed::FeedSpec>) -> Self {
        Self {
            specs,
            latest: Mutex::default(),
            wake: Notify::new(),
            held: Mutex::default(),
            updates: watch::channel(0).0,
            subscriptions: Mutex::default(),
            requests: Mutex::default(),
            sent: Mutex::default(),
        }
    }

    /// The roll-ups held changed: wake the event streams.
    pub(crate) fn updated(&self) {
        self.updates.send_modify(|g| *g = g.wrapping_add(1));
    }
}

impl Shared {
    /// Something changed: wake everyone waiting on a condition.
    pub(crate) fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wakes the senders of `hops` on `channel`: copies were queued for them.
    pub(crate) fn wake_links<'a>(&self, channel: Channel, hops: impl IntoIterator<Item = &'a NodeId>) {
        if let Some(ch) = self.channels.get(&channel) {
            for hop in hops {
                if let Some(link) = ch.links.get(hop) {
                    link.wake.notify_one();
                }
            }
        }
    }

    /// A situation report delivered here, for the feeds if this node
    /// builds any: kept if it is the newest of its region and mode. A
    /// report whose `region_code` is not its origin's region in the roster
    /// is not taken (a region reports for itself only).
    pub(crate) fn offer_report(
        &self,
        header: &sitrep_core::HeaderInfo,
        channel: Channel,
        input: ReportInput,
    ) {
        if !self.builds_feeds() {
            return;
        }
        let roster = self.roster.get();
        let origin_region = roster.node(&header.origin).map(|n| n.region_code.clone());
        if origin_region.as_deref() != Some(input.report.region_code.as_str()) {
            tracing::warn!(
                id = %header.id,
                origin = %header.origin,
                region_code = %input.report.region_code,
                "report not taken into the feeds: its region code is not its origin's"
            );
            return;
        }
        let offered = lock(&self.feeds.latest).offer(sitrep_core::feed::Input {
            id: header.id,
            envelope_sha256: input.envelope_sha256,
            received_ms: input.received_ms,
            label: header.label.clone(),
            mode: header.mode,
            channel,
            report: input.report,
        });
        if offered == sitrep_core::feed::Offered::Newer {
            self.feeds.wake.notify_one();
        }
    }

    /// Whether this node builds feeds (an aggregator with `[[feeds]]`).
    pub(crate) fn builds_feeds(&self) -> bool {
        !self.feeds.specs.is_empty()
    }

    pub(crate) fn emit(&self, e: NodeEvent) {
        // No receiver is fine.
        let _ = self.events.send(e);
    }

    /// Carries out a refusal, the one place that does: counts it by reason
    /// and direction, appends it to the audit log, logs it, emits
    /// [`NodeEvent::Refused`] and wakes waiters (who see the counter at once).
    pub(crate) fn refused(&self, r: &Refused<'_>) {
        self.counters.refused(r.direction, r.reason);
        let reason = r.reason.as_str();
        let audit_reason = match r.direction {
            Direction::Ingress => format!("{reason}: {}", r.detail),
            Direction::Egress => format!("egress: {}", r.detail),
        };
        self.audit("refuse", r.id, r.peer, r.channel, r.class, &audit_reason);
        if r.reason == RefuseReason::Duplicate {
            // A retransmission of what is already in custody (after a lost
            // answer or a restart) is how at-least-once works, not a fault.
            tracing::info!(id = ?r.id.map(|id| shown(r.channel, id).to_string()), peer = ?r.peer.map(|p| shown(r.channel, p).to_string()), channel = %r.channel, "duplicate refused: already in custody");
            return;
        }
        match r.id {
            Some(id) => {
                tracing::warn!(id = %shown(r.channel, id), peer = ?r.peer.map(|p| shown(r.channel, p).to_string()), channel = %r.channel, direction = ?r.direction, reason, detail = %shown(r.channel, r.detail), "refused")
            }
            None => {
                tracing::warn!(peer = ?r.peer.map(|p| shown(r.channel, p).to_string()), channel = %r.channel, direction = ?r.direction, reason, detail = %shown(r.channel, r.detail), "refused")
            }
        }
        self.emit(NodeEvent::Refused {
            reason: reason.to_owned(),
            peer: r.peer.cloned(),
        });
        self.bump();
    }

    /// Appends to the audit log.
    pub(crate) fn audit(
        &self,
        event: &'static str,
        id: Option<MessageId>,
        peer: Option<&NodeId>,
        channel: Channel,
        class: Option<Class>,
        reason: &str,
    ) {
        let Some(rt) = self.channels.get(&channel) else {
            return;
        };
        rt.audit.append(AuditEntry {
            time_ms: crate::clock::now_ms(),
            event,
            id,
            peer: peer.cloned(),
            channel: channel.as_str(),
            class: class.map(Class::as_str),
            reason: reason.to_owned(),
        });
    }

    /// The label checks every point applies (`sitrep_core::policy::check_parties`):
    /// the class on this channel, this node cleared, each party the message
    /// is handed to cleared and on the channel in the roster.
    pub(crate) fn check_label(
        &self,
        roster: &Roster,
        class: Class,
        channel: Channel,
        parties: &[(Party, &NodeId)],
    ) -> Result<(), PolicyError> {
        check_parties(
            roster,
            &self.id,
            class,
            channel,
            self.channel_max(channel),
            parties,
        )
    }

    /// What the decisions in `sitrep_core::ingress` need to know about this
    /// node on `channel`, with the roster in force.
    pub(crate) fn context<'a>(&'a self, channel: Channel, roster: &'a Roster) -> Context<'a> {
        Context {
            here: &self.id,
            channel,
            channel_max: self.channel_max(channel),
            roster,
            routes: &self.routes,
            hop_limit: self.limits.hop_limit,
        }
    }

    /// The configured maximum class of `channel`, if this node runs it.
    pub(crate) fn channel_max(&self, channel: Channel) -> Option<Class> {
        self.channels.get(&channel).map(|c| c.max_class)
    }
}

/// A refusal to carry out: what, why, and about which message and peer.
#[derive(Debug)]
pub(crate) struct Refused<'a> {
    /// Arriving, or a queued copy going out.
    pub(crate) direction: Direction,
    /// The reason (the counter's label).
    pub(crate) reason: RefuseReason,
    /// What exactly was wrong, for the audit log and the log.
    pub(crate) detail: &'a str,
    /// The peer it came from or was going to.
    pub(crate) peer: Option<&'a NodeId>,
    /// The channel.
    pub(crate) channel: Channel,
    /// The message, as claimed (unverified at ingress) or as queued.
    pub(crate) id: Option<MessageId>,
    /// Its class, likewise.
    pub(crate) class: Option<Class>,
}

/// A delivered situation report, as the feeds take it.
#[derive(Debug)]
pub(crate) struct ReportInput {
    pub(crate) report: sitrep_proto::v1::SituationReport,
    pub(crate) envelope_sha256: [u8; 32],
    pub(crate) received_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_log_names_open_traffic_and_hides_secure() {
        let peer = NodeId::new("region-uppsala").expect("id");
        assert_eq!(shown(Channel::Open, &peer).to_string(), "region-uppsala");
        assert_eq!(shown(Channel::Secure, &peer).to_string(), "(secure)");
    }
}
