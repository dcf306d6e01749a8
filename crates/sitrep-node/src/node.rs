//! The node handle: start, submit, query, shut down.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft, HeaderInfo, MAX_LIFETIME_MS};
use sitrep_core::policy::Party;
use sitrep_core::report::{self, FieldError};
use sitrep_core::routing::RouteError;
use sitrep_core::{Channel, ContentType, Label, MessageId, Mode, NodeId, PolicyError, Precedence, Roster};
use sitrep_crypto::keyfile;
use sitrep_net::{ChannelEndpoint, TlsIdentity, TransportLimits};
use sitrep_proto::v1 as pb;
use sitrep_store::{Copy, DeliveryRecord, HopStats, Ingest, Op, SledStore, Storage, StoreError};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError};
use crate::shared::{ChannelRt, Link, LinkState, PeerGate, RosterCell, Shared, lock};

/// The node could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A config value is wrong (also roster-dependent checks at start-up).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The transport failed.
    #[error("network: {0}")]
    Net(#[from] sitrep_net::NetError),
    /// A task of the node failed.
    #[error("task {0}")]
    Task(String),
}

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

/// Why a submission was refused. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The report has invalid fields.
    #[error("invalid report: {} problem(s)", .0.len())]
    Invalid(Vec<FieldError>),
    /// A submission field is wrong (recipients, expiry).
    #[error("{field}: {problem}")]
    Bad {
        /// Field name.
        field: &'static str,
        /// Problem.
        problem: String,
    },
    /// The label may not be sent as asked.
    #[error("label policy: {0}")]
    Policy(#[from] PolicyError),
    /// A recipient cannot be reached within policy.
    #[error("no route: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoRoute(Vec<RouteError>),
    /// Sealing failed.
    #[error("seal: {0}")]
    Seal(#[from] envelope::SealError),
    /// The store failed; retry.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Something that happened, for tests, the demo and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A message was delivered to this node's inbox.
    Delivered {
        /// Message.
        id: MessageId,
        /// Its origin.
        origin: NodeId,
        /// Channel it came on.
        channel: Channel,
    },
    /// A receipt came back for a message originated here.
    Receipt {
        /// Message.
        id: MessageId,
        /// Recipient that delivered it.
        recipient: NodeId,
    },
    /// A next hop took custody.
    Forwarded {
        /// Message.
        id: MessageId,
        /// The hop.
        next_hop: NodeId,
    },
    /// Something was refused.
    Refused {
        /// Counter reason.
        reason: String,
        /// Peer it came from or went to, if any.
        peer: Option<NodeId>,
    },
    /// Messages expired.
    Expired {
        /// Message.
        id: MessageId,
    },
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

/// A running node.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    tasks: Mutex<JoinSet<Result<(), NodeError>>>,
}

impl Node {
    /// Loads keys and roster, checks them against the config, opens the
    /// stores, binds the endpoints and starts every task.
    ///
    /// # Errors
    /// [`NodeError`] naming the config key or the failing part; nothing keeps running.
    pub async fn start(config: Config) -> Result<Self, NodeError> {
        Self::start_with(config, None).await
    }

    /// As [`Node::start`], with a recorder that sees every frame on the wire.
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_with(
        config: Config,
        recorder: Option<Arc<dyn sitrep_net::FrameRecorder>>,
    ) -> Result<Self, NodeError> {
        let cerr = |key: &str, problem: String| {
            NodeError::Config(ConfigError {
                key: key.into(),
                problem,
            })
        };
        let signing = keyfile::read_signing_key(&config.signing_key)
            .map_err(|e| cerr("node.signing_key", e.to_string()))?;
        let hpke =
            keyfile::read_hpke_key(&config.hpke_key).map_err(|e| cerr("node.hpke_key", e.to_string()))?;
        let admin = keyfile::read_verifying_key(&config.admin_key)
            .map_err(|e| cerr("node.admin_key", e.to_string()))?;
        let roster_bytes = std::fs::read(&config.roster).map_err(|e| cerr("node.roster", e.to_string()))?;
        let roster = Roster::verify(&roster_bytes, &admin, None, now_ms())
            .map_err(|e| cerr("node.roster", e.to_string()))?;
        let me = roster
            .node(&config.id)
            .ok_or_else(|| cerr("node.id", format!("{} is not in the roster", config.id)))?;
        if me.signing_key != signing.verifying_key() {
            return Err(cerr(
                "node.signing_key",
                format!("not the roster's signing key for {}", config.id),
            ));
        }
        if me.hpke_key != hpke.public_key() {
            return Err(cerr(
                "node.hpke_key",
                format!("not the roster's HPKE key for {}", config.id),
            ));
        }
        for channel in config.channels.keys() {
            if !me.is_on(*channel) {
                return Err(cerr(
                    &format!("channels.{channel}"),
                    format!("the roster does not put {} on the {channel} channel", config.id),
                ));
            }
        }
        for (i, p) in config.peers.iter().enumerate() {
            match roster.node(&p.id) {
                None => {
                    return Err(cerr(
                        &format!("peers[{i}].id"),
                        format!("{} is not in the roster", p.id),
                    ));
                }
                Some(n) if !n.is_on(p.channel) => {
                    return Err(cerr(
                        &format!("peers[{i}].channel"),
                        format!("the roster does not put {} on the {} channel", p.id, p.channel),
                    ));
                }
                Some(_) => {}
            }
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| cerr("node.data_dir", e.to_string()))?;
        let audit = sitrep_store::audit::AuditLog::open(&config.data_dir.join("audit.log"))
            .map_err(|e| cerr("node.data_dir", e.to_string()))?;

        let roster = Arc::new(RosterCell::new(roster));
        let gate = Arc::new(PeerGate {
            peers: config.routes.peers.clone(),
            roster: Arc::clone(&roster),
        });
        let limits = TransportLimits {
            max_frame_bytes: config.limits.max_frame_bytes,
            max_concurrent_streams: config.limits.max_streams,
            stream_receive_window: TransportLimits::stream_window_for(config.limits.max_frame_bytes),
            idle_timeout: config.limits.idle_timeout,
            keep_alive: config.limits.keep_alive,
            ..TransportLimits::default()
        };
        let mut channels = BTreeMap::new();
        let mut cert_not_after = BTreeMap::new();
        for (channel, c) in &config.channels {
            cert_not_after.insert(
                *channel,
                crate::api::cert_not_after_ms(&c.cert)
                    .map_err(|e| cerr(&format!("channels.{channel}.cert"), e))?,
            );
            let identity = TlsIdentity::load(&c.ca, &c.cert, &c.key)?;
            std::fs::create_dir_all(&c.store)
                .map_err(|e| cerr(&format!("channels.{channel}.store"), e.to_string()))?;
            let store = SledStore::open(&c.store)?;
            let endpoint = ChannelEndpoint::bind(
                *channel,
                config.id.clone(),
                c.listen,
                &identity,
                limits,
                gate.clone(),
                recorder.clone(),
            )?;
            let links = config
                .peers
                .iter()
                .filter(|p| p.channel == *channel)
                .map(|p| {
                    (
                        p.id.clone(),
                        Arc::new(Link {
                            peer: p.id.clone(),
                            addr: Mutex::new(p.address),
                            wake: tokio::sync::Notify::new(),
                            generation: Mutex::new(0),
                            state: Mutex::new(LinkState::default()),
                        }),
                    )
                })
                .collect();
            channels.insert(
                *channel,
                ChannelRt {
                    channel: *channel,
                    max_class: c.max_class,
                    store,
                    endpoint,
                    links,
                },
            );
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
            counters: crate::Counters::default(),
            changed,
            events,
            cancel: CancellationToken::new(),
            ingress_busy: Mutex::new(HashSet::new()),
            audit,
            admin,
            roster_path: config.roster.clone(),
            api_addr: Mutex::new(None),
            cert_not_after,
        });
        let mut tasks = JoinSet::new();
        for (channel, rt) in &shared.channels {
            tasks.spawn(crate::ingress::accept_loop(Arc::clone(&shared), *channel));
            for link in rt.links.values() {
                tasks.spawn(crate::link::run(Arc::clone(&shared), *channel, Arc::clone(link)));
            }
        }
        tasks.spawn(sweeper(Arc::clone(&shared)));
        if let Some(api) = &config.api {
            let listener = tokio::net::TcpListener::bind(api.listen)
                .await
                .map_err(|e| cerr("api.listen", format!("cannot bind {}: {e}", api.listen)))?;
            *lock(&shared.api_addr) = listener.local_addr().ok();
            tasks.spawn(crate::api::serve(Arc::clone(&shared), api.clone(), listener));
        }
        tracing::info!(node = %shared.id, channels = ?shared.channels.keys().collect::<Vec<_>>(), "node started");
        Ok(Self {
            shared,
            tasks: Mutex::new(tasks),
        })
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

    /// Points the link to `peer` on `channel` at a new address and drops the
    /// current connection (a peer that restarted elsewhere).
    pub fn set_peer_address(&self, channel: Channel, peer: &NodeId, addr: SocketAddr) -> bool {
        let Some(link) = self.shared.channels.get(&channel).and_then(|c| c.links.get(peer)) else {
            return false;
        };
        *lock(&link.addr) = addr;
        *lock(&link.generation) += 1;
        link.wake.notify_one();
        true
    }

    /// A handle that reloads the roster file (what SIGHUP does).
    #[must_use]
    pub fn roster_reloader(&self) -> RosterReloader {
        RosterReloader(Arc::clone(&self.shared))
    }

    /// Replaces the roster with a newer signed one (higher serial, valid
    /// now, signed by the pinned administrator key, still listing this node
    /// with its keys). Takes effect at once, also for queued messages: each
    /// copy is checked against the roster in force when it is sent.
    ///
    /// # Errors
    /// [`RosterUpdateError`]; the roster in use stays.
    pub fn replace_roster(&self, signed: &[u8]) -> Result<u64, RosterUpdateError> {
        replace_roster(&self.shared, signed)
    }

    /// Counters.
    #[must_use]
    pub fn counters(&self) -> &crate::Counters {
        &self.shared.counters
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
        submit(&self.shared, sub).await
    }

    /// The bound address of the HTTP API, if configured.
    #[must_use]
    pub fn api_addr(&self) -> Option<SocketAddr> {
        *lock(&self.shared.api_addr)
    }
}

/// Seals and queues a message; returns its id once durable (see [`Node::submit`]).
pub(crate) async fn submit(s: &Shared, sub: Submission) -> Result<MessageId, SubmitError> {
    {
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
        if sub.recipients.is_empty() {
            return Err(SubmitError::Bad {
                field: "recipients",
                problem: "at least one recipient is required".into(),
            });
        }
        if sub.recipients.len() > envelope::MAX_RECIPIENTS {
            return Err(SubmitError::Bad {
                field: "recipients",
                problem: format!(
                    "{} recipients, at most {}",
                    sub.recipients.len(),
                    envelope::MAX_RECIPIENTS
                ),
            });
        }
        if let Some(dup) = sub
            .recipients
            .iter()
            .enumerate()
            .find(|(i, r)| sub.recipients[..*i].contains(r))
        {
            return Err(SubmitError::Bad {
                field: "recipients",
                problem: format!("{} is listed twice", dup.1),
            });
        }
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
        for r in &sub.recipients {
            if roster.node(r).is_none() {
                return Err(SubmitError::Bad {
                    field: "recipients",
                    problem: format!("{r} is not in the roster"),
                });
            }
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
            copies: plan
                .copies
                .iter()
                .map(|(hop, serves)| Copy {
                    next_hop: hop.clone(),
                    serves: serves.clone(),
                })
                .collect(),
            inbox: plan.local,
            track: sub.recipients.iter().filter(|r| **r != s.id).cloned().collect(),
        };
        ch.store.apply(vec![Op::Ingest(ingest)]).await?;
        s.counters.inc("submitted");
        s.audit("submit", Some(id), None, channel, Some(class), "");
        for hop in plan.copies.keys() {
            if let Some(link) = ch.links.get(hop) {
                link.wake.notify_one();
            }
        }
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
}

impl Node {
    /// Delivery state per recipient of a message originated here.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delivery(&self, id: &MessageId) -> Result<Vec<DeliveryRecord>, StoreError> {
        delivery(&self.shared, id)
    }

    /// Whether any channel store holds `id` in its dedup set: the node stored
    /// (and would refuse a replay of) that message. Read-only; for tests and
    /// diagnostics.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn has_seen(&self, id: &MessageId) -> Result<bool, StoreError> {
        for ch in self.shared.channels.values() {
            if ch.store.seen(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Inbox entries after `cursor` on `channel`, opened.
    ///
    /// # Errors
    /// [`StoreError`]; an entry that no longer opens (its origin left the
    /// roster) is skipped and counted.
    pub fn inbox(&self, channel: Channel, after: u64, limit: usize) -> Result<Vec<Received>, StoreError> {
        inbox(&self.shared, channel, after, limit)
    }

    /// Outbox statistics per channel.
    #[must_use]
    pub fn outboxes(&self) -> Vec<(Channel, HopStats)> {
        self.shared
            .channels
            .iter()
            .flat_map(|(c, rt)| rt.store.outbox_stats().into_iter().map(move |h| (*c, h)))
            .collect()
    }

    /// Disk use per channel store, bytes.
    #[must_use]
    pub fn disk_use(&self) -> Vec<(Channel, u64)> {
        self.shared
            .channels
            .iter()
            .map(|(c, rt)| (*c, rt.store.disk_bytes()))
            .collect()
    }

    /// The roster in use.
    #[must_use]
    pub fn roster(&self) -> Arc<Roster> {
        self.shared.roster.get()
    }

    /// Every peer link.
    #[must_use]
    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut out = Vec::new();
        for (channel, rt) in &self.shared.channels {
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
        for rt in self.shared.channels.values() {
            rt.store.close();
        }
        self.shared.audit.close();
        tracing::info!(node = %self.shared.id, "stopped");
    }
}

/// Reloads the roster file of a running node.
#[derive(Debug, Clone)]
pub struct RosterReloader(Arc<Shared>);

impl RosterReloader {
    /// Reads the configured roster file and replaces the roster in use.
    ///
    /// # Errors
    /// [`RosterUpdateError`]; the roster in use stays.
    pub fn reload(&self) -> Result<u64, RosterUpdateError> {
        let bytes = std::fs::read(&self.0.roster_path).map_err(|e| RosterUpdateError::Read(e.to_string()))?;
        replace_roster(&self.0, &bytes)
    }
}

/// Why a new roster was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RosterUpdateError {
    /// The file could not be read.
    #[error("cannot read the roster file: {0}")]
    Read(String),
    /// Signature, serial, validity or an entry is wrong.
    #[error(transparent)]
    Invalid(#[from] sitrep_core::RosterError),
    /// The new roster drops this node, or changes its keys or channels.
    #[error("the new roster {0}")]
    NotForThisNode(String),
}

fn replace_roster(shared: &Shared, signed: &[u8]) -> Result<u64, RosterUpdateError> {
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
    shared.counters.inc("roster.replaced");
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

/// Delivery state per recipient of a message originated here (see [`Node::delivery`]).
pub(crate) fn delivery(shared: &Shared, id: &MessageId) -> Result<Vec<DeliveryRecord>, StoreError> {
    for ch in shared.channels.values() {
        let d = ch.store.delivery(id)?;
        if !d.is_empty() {
            return Ok(d);
        }
    }
    Ok(Vec::new())
}

/// Inbox entries after `after` on `channel`, opened (see [`Node::inbox`]).
pub(crate) fn inbox(
    shared: &Shared,
    channel: Channel,
    after: u64,
    limit: usize,
) -> Result<Vec<Received>, StoreError> {
    let Some(ch) = shared.channels.get(&channel) else {
        return Ok(Vec::new());
    };
    let roster = shared.roster.get();
    let mut out = Vec::new();
    for e in ch.store.inbox_after(after, limit)? {
        // Verified at ingress; opened now, with the sender's expiry no longer relevant.
        match envelope::verify(&e.envelope, &roster, e.received_ms)
            .and_then(|v| envelope::open(&v, &shared.id, &shared.hpke).map(|p| (v.header, p)))
        {
            Ok((header, payload)) => out.push(Received {
                cursor: e.cursor,
                channel,
                header,
                payload: payload.to_vec(),
                received_ms: e.received_ms,
            }),
            Err(err) => {
                shared.counters.inc("inbox.unreadable");
                tracing::warn!(id = %e.id, error = %err, "inbox entry no longer opens");
            }
        }
    }
    Ok(out)
}

async fn sweeper(shared: Arc<Shared>) -> Result<(), NodeError> {
    let mut tick = tokio::time::interval(shared.limits.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        for rt in shared.channels.values() {
            match rt.store.apply(vec![Op::ExpireDue { now_ms: now_ms() }]).await {
                Ok(outcomes) => {
                    let mut any = false;
                    for o in outcomes {
                        if let sitrep_store::Outcome::Expired(list) = o {
                            for (id, hops) in list {
                                any = true;
                                shared.counters.inc("expired");
                                shared.audit(
                                    "expire",
                                    Some(id),
                                    None,
                                    rt.channel,
                                    None,
                                    "expired before delivery",
                                );
                                tracing::info!(%id, channel = %rt.channel, hops = hops.len(), "expired");
                                shared.emit(NodeEvent::Expired { id });
                            }
                        }
                    }
                    if any {
                        shared.bump();
                    }
                }
                Err(StoreError::Closed) => return Ok(()),
                Err(e) => tracing::error!(channel = %rt.channel, error = %e, "expiry sweep failed"),
            }
        }
    }
}
