//! One quinn endpoint per channel: listens and dials, and lets a connection carry data
//! only once its peer is authenticated and allowed on the channel.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sitrep_core::{Channel, NodeId};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::error::{TlsFailure, tls_failure};
use crate::limits::{
    ACCEPT_QUEUE, INCOMING_BUFFER_BYTES, INCOMING_BUFFER_BYTES_TOTAL, MAX_INCOMING, MAX_PENDING_HANDSHAKES,
    UDP_BUFFER_BYTES,
};
use crate::tls::{self, Part, TlsIdentity};
use crate::{NetError, PeerConnection, TransportLimits, close_code};

/// Decides whether a node that presented a valid certificate may talk on a channel. The
/// node checks that it is a configured peer on that channel and in the roster on it.
pub trait PeerPolicy: Send + Sync + fmt::Debug + 'static {
    /// `Ok` to allow `peer` on `channel`; `Err(reason)` refuses it, and the reason is
    /// logged and sent to the peer in the close frame.
    ///
    /// # Errors
    /// Why the peer is refused.
    fn check(&self, channel: Channel, peer: &NodeId) -> Result<(), String>;
}

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We wrote it.
    Sent,
    /// We read it.
    Received,
}

/// Sees every complete frame sent or received on an endpoint, as its wire bytes (length
/// prefix included). For tests that inspect what a channel carried.
pub trait FrameRecorder: Send + Sync + fmt::Debug + 'static {
    /// Called once per frame, after it was written or read in full.
    fn record(&self, channel: Channel, dir: Direction, peer: &NodeId, frame: &[u8]);
}

/// A bound endpoint for one channel: a server and a client sharing one UDP socket.
///
/// Cheap to clone; all clones are the same endpoint. Dropping the last clone stops
/// accepting; call [`shutdown`](Self::shutdown) to close connections gracefully.
#[derive(Clone, Debug)]
pub struct ChannelEndpoint {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    /// Verified incoming connections and refusals, from the accept task.
    accepted: tokio::sync::Mutex<mpsc::Receiver<Result<PeerConnection, NetError>>>,
    _accept_task: AbortOnDrop,
}

/// What the accept task and `connect` need to verify and wrap a connection.
#[derive(Debug)]
struct Ctx {
    channel: Channel,
    me: NodeId,
    max_frame_bytes: usize,
    frame_timeout: std::time::Duration,
    max_connections_per_peer: usize,
    peers: Arc<PeerTable>,
    policy: Arc<dyn PeerPolicy>,
    recorder: Option<Arc<dyn FrameRecorder>>,
}

/// Asks for [`UDP_BUFFER_BYTES`] of kernel buffer each way on `socket`, and
/// warns (once per bind) if the kernel's caps gave less: bursts of
/// datagrams would then be dropped under load and the links would slow down.
fn size_socket_buffers(socket: &std::net::UdpSocket, channel: Channel) {
    use rustix::net::sockopt;
    let _ = sockopt::set_socket_recv_buffer_size(socket, UDP_BUFFER_BYTES);
    let _ = sockopt::set_socket_send_buffer_size(socket, UDP_BUFFER_BYTES);
    // Linux reports twice what it grants (the other half is its overhead).
    let recv = sockopt::socket_recv_buffer_size(socket).unwrap_or(0) / 2;
    let send = sockopt::socket_send_buffer_size(socket).unwrap_or(0) / 2;
    if recv < UDP_BUFFER_BYTES || send < UDP_BUFFER_BYTES {
        tracing::warn!(
            channel = channel.as_str(),
            recv_bytes = recv,
            send_bytes = send,
            want_bytes = UDP_BUFFER_BYTES,
            "the kernel gave the QUIC socket smaller buffers than asked: bursts may be dropped \
             and links slow down under load; raise net.core.rmem_max and net.core.wmem_max to at least {UDP_BUFFER_BYTES}"
        );
    }
}

/// Aborts the task when the endpoint is dropped, so it never outlives its owner.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ChannelEndpoint {
    /// Binds a QUIC endpoint for `channel` on `listen` (port 0 picks a free port), as
    /// node `me` with `identity`. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`NetError::Limits`] for an unusable limit; [`NetError::Tls`] if the identity does
    /// not parse or its certificate names another node than `me`; [`NetError::Io`] if the
    /// socket cannot be bound or there is no runtime.
    pub fn bind(
        channel: Channel,
        me: NodeId,
        listen: SocketAddr,
        identity: &TlsIdentity,
        limits: TransportLimits,
        policy: Arc<dyn PeerPolicy>,
        recorder: Option<Arc<dyn FrameRecorder>>,
    ) -> Result<Self, NetError> {
        Self::bind_with_reset_key(channel, me, listen, identity, limits, policy, recorder, None)
    }

    /// As [`bind`](Self::bind), with the key of the endpoint's QUIC stateless resets.
    /// Give the same key at every start of a node (it keeps one in its data directory):
    /// then a restarted node answers the packets of its previous instance's connections
    /// with resets its peers accept, and they reconnect at once instead of waiting for
    /// the idle timeout. `None`: a random key, as [`bind`](Self::bind).
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    #[allow(clippy::too_many_arguments)]
    pub fn bind_with_reset_key(
        channel: Channel,
        me: NodeId,
        listen: SocketAddr,
        identity: &TlsIdentity,
        limits: TransportLimits,
        policy: Arc<dyn PeerPolicy>,
        recorder: Option<Arc<dyn FrameRecorder>>,
        reset_key: Option<&[u8; 32]>,
    ) -> Result<Self, NetError> {
        let transport = limits.transport_config()?;
        let parsed = identity.parse().map_err(|(part, problem)| {
            let part = match part {
                Part::Ca => "CA certificate",
                Part::Cert => "node certificate",
                Part::Key => "private key",
            };
            NetError::Tls(format!("channel {channel}: {part}: {problem}"))
        })?;
        if parsed.node != me {
            return Err(NetError::Tls(format!(
                "channel {channel}: the node certificate names node {}, but this node is {me}",
                parsed.node
            )));
        }
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_config(&parsed)?));
        server
            .transport_config(transport.clone())
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER_BYTES)
            .incoming_buffer_size_total(INCOMING_BUFFER_BYTES_TOTAL);
        let mut client = quinn::ClientConfig::new(Arc::new(tls::client_config(&parsed)?));
        client.transport_config(transport);

        let mut config = quinn::EndpointConfig::default();
        if let Some(key) = reset_key {
            config.reset_key(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)));
            // quinn's default connection ids carry a per-instance hash that a
            // restarted instance would not recognise (it drops the packet
            // instead of resetting): plain random ids instead.
            config.cid_generator(|| Box::new(RandomCids));
        }
        let io = |source| NetError::Io {
            what: format!("bind channel {channel} on {listen}"),
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(io)?;
        size_socket_buffers(&socket, channel);
        let mut endpoint =
            quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime)).map_err(io)?;
        endpoint.set_default_client_config(client);
        let ctx = Arc::new(Ctx {
            channel,
            me,
            max_frame_bytes: limits.max_frame_bytes,
            frame_timeout: limits.frame_timeout,
            max_connections_per_peer: limits.max_connections_per_peer,
            peers: Arc::new(PeerTable {
                // At least one largest frame, or a frame could never be read.
                budget: limits
                    .peer_read_budget
                    .max(limits.max_frame_bytes + crate::frame::PREFIX_LEN)
                    .min(Semaphore::MAX_PERMITS),
                ..PeerTable::default()
            }),
            policy,
            recorder,
        });
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let span = tracing::info_span!("endpoint", channel = channel.as_str(), node = %ctx.me);
        let task = tokio::spawn(accept_loop(endpoint.clone(), ctx.clone(), tx).instrument(span));
        tracing::info!(channel = channel.as_str(), node = %ctx.me, listen = ?endpoint.local_addr().ok(), "endpoint bound");
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                ctx,
                accepted: tokio::sync::Mutex::new(rx),
                _accept_task: AbortOnDrop(task),
            }),
        })
    }

    /// The address the endpoint is bound to.
    ///
    /// # Errors
    /// [`NetError::Io`] if the socket cannot say.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.inner.endpoint.local_addr().map_err(|source| NetError::Io {
            what: format!("local address of channel {}", self.inner.ctx.channel),
            source,
        })
    }

    /// The channel of this endpoint.
    #[must_use]
    pub fn channel(&self) -> Channel {
        self.inner.ctx.channel
    }

    /// This node's id.
    #[must_use]
    pub fn me(&self) -> &NodeId {
        &self.inner.ctx.me
    }

    /// What each peer holds here now: its incoming connections and the bytes of
    /// its frames being read or handled, with the caps (for `/v1/status`).
    #[must_use]
    pub fn peer_usage(&self) -> Vec<PeerUsage> {
        let ctx = &self.inner.ctx;
        let table = ctx.peers.lock();
        let mut usage: Vec<PeerUsage> = table
            .iter()
            .map(|(peer, e)| PeerUsage {
                peer: peer.clone(),
                connections: e.conns.len(),
                max_connections: ctx.max_connections_per_peer,
                buffered_bytes: ctx.peers.budget - e.budget.available_permits().min(ctx.peers.budget),
                max_buffered_bytes: ctx.peers.budget,
            })
            .collect();
        usage.sort_by(|a, b| a.peer.cmp(&b.peer));
        usage
    }

    /// The next incoming connection whose peer is authenticated and allowed.
    ///
    /// Handshakes run concurrently in the background (at most 64 at once). A client whose
    /// certificate does not verify against the channel CA fails the handshake with a TLS
    /// alert; one whose certificate names no node, or whose node the policy refuses, is
    /// closed with [`close_code::REFUSED_PEER`] and the reason. Both come back as
    /// `Some(Err(NetError::Refused))` so the caller can count them; other handshake
    /// failures (timeouts, a client that refused our certificate) as
    /// `Some(Err(NetError::Connection))`. Keep calling. `None` once the endpoint is
    /// closed.
    pub async fn accept(&self) -> Option<Result<PeerConnection, NetError>> {
        self.inner.accepted.lock().await.recv().await
    }

    /// Connects to node `peer` at `addr`. The server's certificate must chain to this
    /// channel's CA and be issued for `<peer>.sitrep.invalid`, its URI SAN must name
    /// exactly `peer`, and `peer` must pass the policy.
    ///
    /// # Errors
    /// [`NetError::Refused`] if the policy refuses `peer`, its certificate fails
    /// verification, or it names another node; [`NetError::Connect`] if the connection
    /// cannot be set up (unreachable, timed out, or the peer refused our certificate).
    pub async fn connect(&self, peer: &NodeId, addr: SocketAddr) -> Result<PeerConnection, NetError> {
        let ctx = &self.inner.ctx;
        let span =
            tracing::info_span!("connect", peer = %peer, channel = ctx.channel.as_str(), remote = %addr);
        async {
            if let Err(reason) = ctx.policy.check(ctx.channel, peer) {
                tracing::warn!(%reason, "not connecting: peer refused by policy");
                return Err(NetError::Refused {
                    peer: Some(peer.to_string()),
                    reason,
                });
            }
            let connect_error = |reason: String| NetError::Connect {
                peer: peer.to_string(),
                addr,
                reason,
            };
            let connecting = self
                .inner
                .endpoint
                .connect(addr, &tls::server_name(peer))
                .map_err(|e| connect_error(e.to_string()))?;
            let conn = connecting.await.map_err(|e| match tls_failure(&e) {
                Some(TlsFailure::Local) => {
                    let reason = format!("server certificate for node {peer} at {addr} rejected: {e}");
                    tracing::warn!(%reason, "refused peer");
                    NetError::Refused { peer: None, reason }
                }
                Some(TlsFailure::Remote) => {
                    tracing::warn!(error = %e, "peer refused our TLS handshake");
                    connect_error(format!(
                        "the peer refused the TLS handshake (is our certificate from its CA?): {e}"
                    ))
                }
                None => {
                    tracing::info!(error = %e, "connection failed");
                    connect_error(format!("handshake: {e}"))
                }
            })?;
            let conn = verify(conn, ctx, Some(peer))?;
            tracing::info!("connected");
            Ok(conn)
        }
        .instrument(span)
        .await
    }

    /// Graceful close: stops accepting, closes every connection with
    /// [`close_code::SHUTDOWN`], then waits until the peers were told.
    ///
    /// Let in-flight transfers finish before calling it.
    pub async fn shutdown(&self) {
        let endpoint = &self.inner.endpoint;
        endpoint.set_server_config(None);
        endpoint.close(close_code::SHUTDOWN.into(), b"shutdown");
        // The close frames are sent; draining (3 PTO per connection, longer for
        // handshakes to unreachable peers) only absorbs stray packets, so it
        // gets a bound rather than holding up shutdown.
        if tokio::time::timeout(SHUTDOWN_DRAIN, endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("connections still draining at shutdown; closing anyway");
        }
        tracing::info!(channel = self.inner.ctx.channel.as_str(), "endpoint shut down");
    }
}

/// 500 ms: longest a shutdown waits for closed connections to drain.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Accepts connection attempts, runs their handshakes concurrently (bounded) and hands
/// the outcomes to `accept` through a bounded queue.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<Result<PeerConnection, NetError>>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                    tracing::warn!(remote = %incoming.remote_address(), "too many handshakes in progress; refusing connection");
                    incoming.refuse();
                    continue;
                }
                handshakes.spawn(handshake(incoming, ctx.clone()).in_current_span());
            }
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                match done {
                    Ok(outcome) => {
                        if tx.send(outcome).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "handshake task failed"),
                }
            }
        }
    }
    tracing::debug!("accept loop ended");
}

/// Completes one incoming handshake and checks the peer.
async fn handshake(incoming: quinn::Incoming, ctx: Arc<Ctx>) -> Result<PeerConnection, NetError> {
    let remote = incoming.remote_address();
    let connecting = incoming.accept().map_err(NetError::from_connection)?;
    let conn = connecting.await.map_err(|e| match tls_failure(&e) {
        Some(TlsFailure::Local) => {
            let reason = format!("TLS handshake from {remote} failed: {e}");
            tracing::warn!(%remote, %reason, "refused peer");
            NetError::Refused { peer: None, reason }
        }
        // A client that does not trust our certificate is a stranger (or a
        // misconfigured peer) as much as one we do not trust: a refusal, not
        // a network failure.
        Some(TlsFailure::Remote) => {
            tracing::warn!(%remote, error = %e, "client refused our TLS handshake");
            NetError::Refused {
                peer: None,
                reason: format!("client {remote} refused the TLS handshake: {e}"),
            }
        }
        None => {
            tracing::info!(%remote, error = %e, "incoming handshake failed");
            NetError::Connection(format!("handshake from {remote}: {e}"))
        }
    })?;
    let conn = verify(conn, &ctx, None)?;
    conn.span().in_scope(|| tracing::info!("accepted peer"));
    Ok(conn)
}

/// The checks rustls does not do: the node id in the URI SAN, that it is the node we
/// dialled (if we dialled), and the policy. Runs before any stream is read.
fn verify(conn: quinn::Connection, ctx: &Ctx, expected: Option<&NodeId>) -> Result<PeerConnection, NetError> {
    let remote = conn.remote_address();
    let refuse = |peer: Option<&NodeId>, reason: String| {
        tracing::warn!(%remote, peer = ?peer.map(NodeId::as_str), %reason, "refused peer");
        conn.close(close_code::REFUSED_PEER.into(), reason.as_bytes());
        NetError::Refused {
            peer: peer.map(ToString::to_string),
            reason,
        }
    };
    let node = tls::peer_node_id(&conn).map_err(|reason| refuse(None, reason))?;
    if let Some(expected) = expected
        && node != *expected
    {
        let reason = format!("expected node {expected}, but the certificate names node {node}");
        return Err(refuse(Some(&node), reason));
    }
    if let Err(reason) = ctx.policy.check(ctx.channel, &node) {
        return Err(refuse(Some(&node), reason));
    }
    // An accepted connection counts against its peer's cap; dialled ones are ours.
    let (budget, registration) = if expected.is_none() {
        let (budget, registration, replaced) = ctx.peers.register(&node, &conn, ctx.max_connections_per_peer);
        for old in replaced {
            tracing::info!(peer = %node, cap = ctx.max_connections_per_peer, "a newer connection from the peer replaces its oldest");
            old.close(
                close_code::REPLACED.into(),
                b"replaced by a newer connection from the same peer",
            );
        }
        (budget, Some(registration))
    } else {
        // Nothing in the node reads transfers on a connection it dialled;
        // one that does gets a budget of its own.
        (Arc::new(Semaphore::new(ctx.peers.budget)), None)
    };
    Ok(PeerConnection::new(
        conn,
        node,
        ctx.channel,
        ctx.max_frame_bytes,
        ctx.frame_timeout,
        budget,
        ctx.recorder.clone(),
        registration,
    ))
}

/// Random 8-byte connection ids that any instance of the endpoint accepts as
/// possibly its own, so that a restarted one answers them with a reset.
#[derive(Debug)]
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; 8];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_err() {
            // The system's random source failed (never seen): an id must be
            // unique and hard to guess, not secret; std's hasher keys are random.
            use std::hash::{BuildHasher as _, Hasher as _};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            id = h.finish().to_le_bytes();
        }
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// What one peer holds at an endpoint, against its caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUsage {
    /// The peer.
    pub peer: NodeId,
    /// Its incoming connections open now.
    pub connections: usize,
    /// `max_connections_per_peer`.
    pub max_connections: usize,
    /// Bytes of its frames being read or handled now.
    pub buffered_bytes: usize,
    /// `peer_read_budget` (at least one largest frame).
    pub max_buffered_bytes: usize,
}

/// Each peer's incoming connections, oldest first, and its read budget.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    entries: Mutex<HashMap<NodeId, PeerEntry>>,
    next: AtomicU64,
    /// Each peer's budget, bytes.
    budget: usize,
}

#[derive(Debug)]
struct PeerEntry {
    conns: VecDeque<(u64, quinn::Connection)>,
    budget: Arc<Semaphore>,
}

impl PeerTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, PeerEntry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an accepted connection of `peer`; returns its budget, its
    /// registration and the oldest connections over `cap`, to close.
    fn register(
        self: &Arc<Self>,
        peer: &NodeId,
        conn: &quinn::Connection,
        cap: usize,
    ) -> (Arc<Semaphore>, Registration, Vec<quinn::Connection>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut table = self.lock();
        let entry = table.entry(peer.clone()).or_insert_with(|| PeerEntry {
            conns: VecDeque::new(),
            budget: Arc::new(Semaphore::new(self.budget)),
        });
        entry.conns.push_back((id, conn.clone()));
        let mut replaced = Vec::new();
        while entry.conns.len() > cap {
            if let Some((_, old)) = entry.conns.pop_front() {
                replaced.push(old);
            }
        }
        let registration = Registration {
            table: Arc::clone(self),
            peer: peer.clone(),
            id,
        };
        (Arc::clone(&entry.budget), registration, replaced)
    }
}

/// An accepted connection's place in its peer's count; dropped with the
/// connection's last handle.
#[derive(Debug)]
pub(crate) struct Registration {
    table: Arc<PeerTable>,
    peer: NodeId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(entry) = table.get_mut(&self.peer) {
            entry.conns.retain(|(id, _)| *id != self.id);
            // Forget an idle peer (its budget is whole again once its frames are dropped).
            if entry.conns.is_empty() && entry.budget.available_permits() >= self.table.budget {
                table.remove(&self.peer);
            }
        }
    }
}
