//! State shared by the node's tasks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use sitrep_core::policy::{Party, check_channel, check_clearance};
use sitrep_core::routing::RouteTable;
use sitrep_core::{Channel, Class, MessageId, NodeId, PolicyError, Roster};
use sitrep_crypto::{HpkeSecretKey, SigningKey};
use sitrep_net::{ChannelEndpoint, PeerPolicy};
use sitrep_store::SledStore;
use sitrep_store::audit::{AuditEntry, AuditLog};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::node::NodeEvent;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counters by name (`accepted`, `forwarded`, `delivered`, `refused.<reason>`, ...).
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// Adds one to `name`.
    pub fn inc(&self, name: &str) {
        *lock(&self.0).entry(name.to_owned()).or_default() += 1;
    }

    /// The value of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> u64 {
        lock(&self.0).get(name).copied().unwrap_or(0)
    }

    /// All counters.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
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
    pub(crate) store: SledStore,
    pub(crate) endpoint: ChannelEndpoint,
    pub(crate) links: BTreeMap<NodeId, Arc<Link>>,
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
    /// The hash-chained audit log.
    pub(crate) audit: AuditLog,
    /// The pinned administrator key and the roster file, for reloads.
    pub(crate) admin: sitrep_crypto::VerifyingKey,
    pub(crate) roster_path: std::path::PathBuf,
    /// Where the HTTP API listens, once bound.
    pub(crate) api_addr: Mutex<Option<SocketAddr>>,
    /// Each channel certificate's end of validity, ms since the epoch.
    pub(crate) cert_not_after: BTreeMap<Channel, i64>,
}

impl Shared {
    /// Something changed: wake everyone waiting on a condition.
    pub(crate) fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(crate) fn emit(&self, e: NodeEvent) {
        // No receiver is fine.
        let _ = self.events.send(e);
    }

    pub(crate) fn refuse(&self, reason: &str) {
        self.counters.inc(&format!("refused.{reason}"));
        // Waiters on counters see refusals at once.
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
        self.audit.append(AuditEntry {
            time_ms: crate::clock::now_ms(),
            event,
            id,
            peer: peer.cloned(),
            channel: channel.to_string(),
            class: class.map(|c| c.as_str().to_owned()),
            reason: reason.to_owned(),
        });
    }

    /// The highest class this node may hold on `channel`: its roster
    /// clearance capped by the channel's configured maximum.
    pub(crate) fn local_clearance(&self, roster: &Roster, channel: Channel) -> Option<Class> {
        let mine = roster.node(&self.id)?.clearance;
        self.channels.get(&channel).map(|c| c.max_class.min(mine))
    }

    /// The label checks every point applies: the class on this channel, this
    /// node cleared, each node the message is handed to cleared and on the
    /// channel in the roster.
    pub(crate) fn check_label(
        &self,
        roster: &Roster,
        class: Class,
        channel: Channel,
        parties: &[(Party, &NodeId)],
    ) -> Result<(), PolicyError> {
        let ch = self.channels.get(&channel).ok_or(PolicyError::WrongChannel {
            class,
            channel,
            required: Channel::for_class(class),
        })?;
        check_channel(class, channel, ch.max_class)?;
        let local = self.local_clearance(roster, channel).unwrap_or(Class::Open);
        check_clearance(Party::Local, &self.id, local, class)?;
        for (party, node) in parties {
            let Some(entry) = roster.node(node) else {
                return Err(PolicyError::NotCleared {
                    party: *party,
                    node: (*node).clone(),
                    clearance: Class::Open,
                    class,
                });
            };
            if !entry.is_on(channel) {
                return Err(PolicyError::NotOnChannel {
                    party: *party,
                    node: (*node).clone(),
                    channel,
                });
            }
            check_clearance(*party, node, entry.clearance, class)?;
        }
        Ok(())
    }
}
