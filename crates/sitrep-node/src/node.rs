//! The node handle, the crate's composition root: [`Node::start`] loads keys
//! and roster, opens the stores, binds the endpoints and the HTTP API and
//! spawns every task into one `JoinSet`; [`Node::run_until`] and
//! [`Node::shutdown`] stop them. Queries delegate to the service.
//!
//! Not here: what the tasks do (`ingress`, `link`, `sweeper`, `api`) or the
//! operations themselves (`service`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sitrep_core::{Channel, MessageId, NodeId, Roster};
use sitrep_crypto::keyfile;
use sitrep_store::{DeliveryRecord, HopStats, Storage as _, StoreError};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::Config;
use crate::error::{NodeError, RosterUpdateError, SubmitError};
use crate::event::NodeEvent;
use crate::metrics::Counters;
use crate::service::{PeerChanges, PeerStatus, Received, Service, Submission};
use crate::shared::{ChannelRt, PeerGate, RosterCell, Shared, lock};

/// A running node.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    service: Service,
    tasks: Mutex<JoinSet<Result<(), NodeError>>>,
}

impl Node {
    /// Loads keys and roster, checks them against the config, opens the
    /// stores, binds the endpoints and starts every task.
    ///
    /// # Errors
    /// [`NodeError`] naming the config key or the failing part; nothing keeps running.
    pub async fn start(config: Config) -> Result<Self, NodeError> {
        Self::start_with(config, None, BTreeMap::new()).await
    }

    /// As [`Node::start`], with a recorder that sees every frame on the wire,
    /// and some channels' segment logs on the given directories (fault
    /// injection in tests; the others on their configured directory).
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_with(
        config: Config,
        recorder: Option<Arc<dyn sitrep_net::FrameRecorder>>,
        log_dirs: BTreeMap<Channel, Arc<dyn sitrep_store::log::Dir>>,
    ) -> Result<Self, NodeError> {
        let cerr = NodeError::config;
        let signing = keyfile::read_signing_key(&config.signing_key)
            .map_err(|e| cerr("node.signing_key", e.to_string()))?;
        let hpke =
            keyfile::read_hpke_key(&config.hpke_key).map_err(|e| cerr("node.hpke_key", e.to_string()))?;
        let admin = keyfile::read_verifying_key(&config.admin_key)
            .map_err(|e| cerr("node.admin_key", e.to_string()))?;
        let roster_bytes = std::fs::read(&config.roster).map_err(|e| cerr("node.roster", e.to_string()))?;
        let roster = Roster::verify(&roster_bytes, &admin, None, now_ms())
            .map_err(|e| cerr("node.roster", e.to_string()))?;
        config.check_against_roster(&roster, &signing.verifying_key(), &hpke.public_key())?;
        sitrep_store::private::create_dir_all(&config.data_dir)
            .map_err(|e| cerr("node.data_dir", e.to_string()))?;
        let roster = Arc::new(RosterCell::new(roster));
        let gate = Arc::new(PeerGate {
            peers: config.routes.peers.clone(),
            roster: Arc::clone(&roster),
        });
        let reset_key = crate::shared::reset_key(&config.data_dir)?;
        let mut channels = BTreeMap::new();
        let mut cert_not_after = BTreeMap::new();
        for channel in config.channels.keys() {
            let log_dir = log_dirs.get(channel).cloned();
            let (rt, not_after) = ChannelRt::open(
                &config,
                *channel,
                gate.clone(),
                recorder.clone(),
                log_dir,
                &reset_key,
            )?;
            cert_not_after.insert(*channel, not_after);
            channels.insert(*channel, rt);
        }
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            id: config.id.clone(),
            signing,
            hpke,
            roster,
            channels,
            routes: config.routes.clone(),
            limits: config.limits.clone(),
            counters: Counters::default(),
            changed,
            events,
            cancel: CancellationToken::new(),
            ingress_busy: Mutex::new(HashSet::new()),
            verifier: Arc::default(),
            admin,
            roster_path: config.roster.clone(),
            api_addr: Mutex::new(None),
            cert_not_after,
            feeds: crate::shared::Feeds::new(config.feeds.clone()),
        });
        let service = Service::new(Arc::clone(&shared));
        let mut tasks = JoinSet::new();
        crate::feeds::start(&shared, &mut tasks)?;
        for (channel, rt) in &shared.channels {
            tasks.spawn(crate::ingress::accept_loop(Arc::clone(&shared), *channel));
            for link in rt.links.values() {
                tasks.spawn(crate::link::run(Arc::clone(&shared), *channel, Arc::clone(link)));
            }
        }
        tasks.spawn(crate::sweeper::run(Arc::clone(&shared)));
        for channel in shared.channels.keys() {
            tasks.spawn(crate::sweeper::audit_watch(Arc::clone(&shared), *channel));
        }
        if let Some(api) = &config.api {
            let listener = tokio::net::TcpListener::bind(api.listen)
                .await
                .map_err(|e| cerr("api.listen", format!("cannot bind {}: {e}", api.listen)))?;
            *lock(&shared.api_addr) = listener.local_addr().ok();
            tasks.spawn(crate::api::serve(
                service.clone(),
                api.clone(),
                listener,
                shared.cancel.clone(),
            ));
        }
        tracing::info!(node = %shared.id, channels = ?shared.channels.keys().collect::<Vec<_>>(), "node started");
        Ok(Self {
            shared,
            service,
            tasks: Mutex::new(tasks),
        })
    }

    #[doc(hidden)] // Fault injection: the audit logs' next write fails.
    pub fn fail_next_audit_write(&self) {
        for rt in self.shared.channels.values() {
            rt.audit.fail_next_write();
        }
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.shared.id
    }

    /// The bound address of a channel's endpoint.
    #[must_use]
    pub fn local_addr(&self, channel: Channel) -> Option<SocketAddr> {
        self.shared
            .channels
            .get(&channel)
            .and_then(|c| c.endpoint.local_addr().ok())
    }

    /// The bound address of the HTTP API, if configured.
    #[must_use]
    pub fn api_addr(&self) -> Option<SocketAddr> {
        *lock(&self.shared.api_addr)
    }

    /// Points the link to `peer` on `channel` at a new address and drops the
    /// current connection (a peer that restarted elsewhere).
    pub fn set_peer_address(&self, channel: Channel, peer: &NodeId, addr: SocketAddr) -> bool {
        let Some(link) = self.shared.channels.get(&channel).and_then(|c| c.links.get(peer)) else {
            return false;
        };
        link.move_to(addr);
        true
    }

    /// A handle that reloads the roster file and moves peers to new
    /// addresses (what SIGHUP does).
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader(self.service.clone())
    }

    /// Replaces the roster with a newer signed one (higher serial, valid
    /// now, signed by the pinned administrator key, still listing this node
    /// with its keys). Takes effect at once, also for queued messages: each
    /// copy is checked against the roster in force when it is sent.
    ///
    /// # Errors
    /// [`RosterUpdateError`]; the roster in use stays.
    pub fn replace_roster(&self, signed: &[u8]) -> Result<u64, RosterUpdateError> {
        self.service.replace_roster(signed)
    }

    /// Counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        self.service.counters()
    }

    /// A receiver that changes whenever the node's state does: wait on it,
    /// then check your condition.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Events from now on.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// Seals and queues a message. Returns its id once it is durable.
    ///
    /// # Errors
    /// [`SubmitError`]; nothing is stored or queued.
    pub async fn submit(&self, sub: Submission) -> Result<MessageId, SubmitError> {
        self.service.submit(sub).await
    }

    /// Delivery state per recipient of a message originated here.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delivery(&self, id: &MessageId) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.service.delivery(id)
    }

    /// Whether any channel store holds `id` in its dedup set: the node stored
    /// (and would refuse a replay of) that message. Read-only; for tests and
    /// diagnostics.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn has_seen(&self, id: &MessageId) -> Result<bool, StoreError> {
        self.service.has_seen(id)
    }

    /// Inbox entries after `cursor` on `channel`, opened.
    ///
    /// # Errors
    /// [`StoreError`]; an entry that no longer opens (its origin left the
    /// roster) is skipped and counted.
    pub fn inbox(&self, channel: Channel, after: u64, limit: usize) -> Result<Vec<Received>, StoreError> {
        self.service.inbox(channel, after, limit)
    }

    /// Outbox statistics per channel.
    #[must_use]
    pub fn outboxes(&self) -> Vec<(Channel, HopStats)> {
        self.service.outboxes()
    }

    /// Disk use per channel store, bytes.
    #[must_use]
    pub fn disk_use(&self) -> Vec<(Channel, u64)> {
        self.service.disk_use()
    }

    /// The roster in use.
    #[must_use]
    pub fn roster(&self) -> Arc<Roster> {
        self.service.roster()
    }

    /// Every peer link.
    #[must_use]
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.service.peers()
    }

    /// Runs until `stop` resolves (then shuts down gracefully) or a task
    /// fails (then stops everything and returns its error).
    ///
    /// # Errors
    /// The first failing task's error.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<(), NodeError> {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let failed = tokio::select! {
            () = stop => None,
            e = first_failure(&mut tasks) => Some(e),
        };
        if let Some(e) = &failed {
            tracing::error!(node = %self.shared.id, error = %e, "a task failed; stopping");
        }
        self.stop(tasks).await;
        failed.map_or(Ok(()), Err)
    }

    /// Graceful shutdown: stop accepting, let in-flight transfers finish,
    /// close the endpoints, flush the stores.
    pub async fn shutdown(self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        self.stop(tasks).await;
    }

    async fn stop(self, mut tasks: JoinSet<Result<(), NodeError>>) {
        tracing::info!(node = %self.shared.id, "shutting down");
        self.shared.cancel.cancel();
        // In-flight transfers get a bounded time to finish.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!("tasks did not stop within 10 s; aborting them");
            tasks.abort_all();
        }
        // Both channels' endpoints close and drain at once.
        let mut closing = JoinSet::new();
        for rt in self.shared.channels.values() {
            let endpoint = rt.endpoint.clone();
            closing.spawn(async move { endpoint.shutdown().await });
        }
        while closing.join_next().await.is_some() {}
        // Joining the writer threads (their last flush) off the runtime workers.
        let shared = Arc::clone(&self.shared);
        let closed = tokio::task::spawn_blocking(move || {
            for rt in shared.channels.values() {
                rt.store.close();
                rt.audit.close();
            }
        });
        if let Err(e) = closed.await {
            tracing::error!(error = %e, "closing the stores failed");
        }
        tracing::info!(node = %self.shared.id, "stopped");
    }
}

/// What a running node takes from its files again (SIGHUP): the roster,
/// and its peers' addresses.
#[derive(Debug, Clone)]
pub struct Reloader(Service);

impl Reloader {
    /// Reads the configured roster file and replaces the roster in use.
    ///
    /// # Errors
    /// [`RosterUpdateError`]; the roster in use stays.
    pub fn reload_roster(&self) -> Result<u64, RosterUpdateError> {
        self.0.reload_roster()
    }

    /// Points each link at the address `config` gives its peer (a peer that
    /// moved: its connection is dropped and the next one goes to the new
    /// address, with everything queued for it). Peers added to or removed
    /// from the config need a restart; they are reported, not started or
    /// stopped. Nothing else of `config` is applied.
    #[must_use]
    pub fn move_peers(&self, config: &Config) -> PeerChanges {
        self.0.move_peers(&config.peers)
    }
}

/// The first task error; pends forever if every task ends cleanly.
async fn first_failure(tasks: &mut JoinSet<Result<(), NodeError>>) -> NodeError {
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return NodeError::Task(e.to_string()),
        }
    }
    std::future::pending().await
}
