//! Node configuration: one TOML file read with the `config` crate, every key
//! overridable by a `SITREP_<SECTION>__<KEY>` environment variable, unknown
//! keys refused, every value validated at start-up with an error that names
//! the key (DESIGN §9). Paths are relative to the config file.
//!
//! Not here: reading the files the config names (keys, roster, certificates:
//! `node` at start-up), or acting on the values.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sitrep_core::policy::check_channel_max;
use sitrep_core::routing::{DEFAULT_HOP_LIMIT, RouteTable};
use sitrep_core::{Channel, Class, Mode, NodeId};

/// A config value is wrong. `key` is the dotted config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key {key}: {problem}")]
pub struct ConfigError {
    /// The key, e.g. `channels.open.cert`.
    pub key: String,
    /// What is wrong and, where it helps, what to do.
    pub problem: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    channels: BTreeMap<String, RawChannel>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    routes: RawRoutes,
    api: Option<RawApi>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    feeds: Vec<RawFeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    name: String,
    channel: String,
    mode: String,
    max_class: String,
    #[serde(with = "humantime_serde")]
    stale_after: Duration,
    #[serde(default)]
    regions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    data_dir: PathBuf,
    roster: PathBuf,
    admin_key: PathBuf,
    signing_key: PathBuf,
    hpke_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    listen: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    crl: Option<PathBuf>,
    max_class: String,
    store: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: String,
    channel: String,
    address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    default: BTreeMap<String, String>,
    #[serde(default, rename = "static")]
    static_routes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: String,
    #[serde(default)]
    tokens: BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde")]
    session_ttl: Option<Duration>,
    max_sessions: Option<usize>,
    max_connections: Option<usize>,
    max_requests: Option<usize>,
    max_event_streams: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame_bytes: Option<usize>,
    max_streams: Option<u32>,
    max_in_flight: Option<usize>,
    max_connections_per_peer: Option<usize>,
    peer_buffer_bytes: Option<usize>,
    connection_window_bytes: Option<u32>,
    min_free_bytes: Option<u64>,
    max_queue_bytes: Option<u64>,
    max_peer_queue_bytes: Option<u64>,
    hop_limit: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keep_alive: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    frame_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    sweep_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    feed_min_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Where the node keeps its state (audit log and the like).
    pub data_dir: PathBuf,
    /// The signed roster file.
    pub roster: PathBuf,
    /// The administrator's public key, pinned.
    pub admin_key: PathBuf,
    /// This node's Ed25519 key file.
    pub signing_key: PathBuf,
    /// This node's X25519 key file.
    pub hpke_key: PathBuf,
    /// The channels this node runs.
    pub channels: BTreeMap<Channel, ChannelConfig>,
    /// Direct peers.
    pub peers: Vec<PeerConfig>,
    /// Routes built from the peers and the `[routes]` section.
    pub routes: RouteTable,
    /// The HTTP API, if configured.
    pub api: Option<ApiConfig>,
    /// Limits and timers.
    pub limits: Limits,
    /// Logging.
    pub log: LogConfig,
    /// National feeds this node builds (an aggregator); empty otherwise.
    pub feeds: Vec<sitrep_core::feed::FeedSpec>,
}

/// One channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// This channel's CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate on the channel (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Highest class the channel carries here.
    pub max_class: Class,
    /// The channel's sled directory.
    pub store: PathBuf,
}

/// A direct peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its id.
    pub id: NodeId,
    /// The channel.
    pub channel: Channel,
    /// Its address on that channel.
    pub address: SocketAddr,
}

/// An API role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Pushes reports, reads their delivery state.
    Reporter,
    /// Reads the inbox and feeds.
    Reader,
    /// Reads status.
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Self; 3] = [Self::Reporter, Self::Reader, Self::Operator];

    /// The role's name, as `api.tokens.<name>` and the console spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reporter => "reporter",
            Self::Reader => "reader",
            Self::Operator => "operator",
        }
    }
}

/// The HTTP API.
#[derive(Clone)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Bearer token → role.
    pub tokens: Vec<(String, Role)>,
    /// How long a console session lasts after sign-in (`api.session_ttl`,
    /// default 8 h: one shift).
    pub session_ttl: Duration,
    /// Console sessions held at once per role (`api.max_sessions`, default
    /// 256); a sign-in over the cap is refused until one ends or expires.
    pub max_sessions: usize,
    /// TCP connections served at once (`api.max_connections`); one more
    /// gets `503` and is closed.
    pub max_connections: usize,
    /// Requests handled at once, event streams not counted
    /// (`api.max_requests`); one more gets `503` with `Retry-After`.
    pub max_requests: usize,
    /// Event streams (SSE) open at once (`api.max_event_streams`); one more
    /// gets `503` with `Retry-After`.
    pub max_event_streams: usize,
    /// Longest time for a request's headers to arrive, and for an idle
    /// kept-alive connection to send its next request
    /// (`api.header_timeout`); then the connection is closed.
    pub header_timeout: Duration,
    /// Longest time for a request's body to arrive (`api.body_timeout`);
    /// then `408`.
    pub body_timeout: Duration,
}

impl ApiConfig {
    /// Default `api.session_ttl`.
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
    /// Default `api.max_sessions`.
    pub const DEFAULT_MAX_SESSIONS: usize = 256;
    /// Default `api.max_connections`: a control room's browsers and
    /// scripts with room to spare; each costs a task and its buffers.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// Default `api.max_requests`: a submit holds up to 8 MiB of body, so
    /// 64 of them bound the bodies in memory to 512 MiB at worst.
    pub const DEFAULT_MAX_REQUESTS: usize = 64;
    /// Default `api.max_event_streams`.
    pub const DEFAULT_MAX_EVENT_STREAMS: usize = 64;
    /// Default `api.header_timeout`.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `api.body_timeout`: 8 MiB at ≈ 2.2 Mbit/s.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("roles", &self.tokens.iter().map(|(_, r)| r).collect::<Vec<_>>())
            .field("session_ttl", &self.session_ttl)
            .field("max_sessions", &self.max_sessions)
            .field("max_connections", &self.max_connections)
            .field("max_requests", &self.max_requests)
            .field("max_event_streams", &self.max_event_streams)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .finish_non_exhaustive()
    }
}

/// Limits and timers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted, bytes.
    pub max_frame_bytes: usize,
    /// Concurrent streams per connection.
    pub max_streams: u32,
    /// Transfers in flight per next hop.
    pub max_in_flight: usize,
    /// Incoming connections one peer may hold per channel; one more closes
    /// its oldest.
    pub max_connections_per_peer: usize,
    /// Bytes of one peer's incoming frames read or handled at once per
    /// channel, over all its connections; more waits (QUIC flow control
    /// holds the peer back).
    pub peer_buffer_bytes: usize,
    /// Bytes quinn buffers per connection ahead of our reading (the QUIC
    /// connection receive window).
    pub connection_window_bytes: u32,
    /// Space each channel store keeps free on its disk: below it, new
    /// messages are refused (`507` to a submitter, a transient refusal to a
    /// peer, which keeps its copy); 0 turns the check off.
    pub min_free_bytes: u64,
    /// Envelope bytes one channel store may hold queued for all its next
    /// hops together; over it, new messages are refused as above.
    pub max_queue_bytes: u64,
    /// Envelope bytes one channel store may hold queued for one next hop
    /// (a peer that is cut off); over it, new messages for that peer are
    /// refused as above.
    pub max_peer_queue_bytes: u64,
    /// Hops before a message is refused as looping.
    pub hop_limit: u32,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// Longest time without bytes inside a frame (a frame as a whole may
    /// take that plus as much per MiB); a stalled stream is reset.
    pub frame_timeout: Duration,
    /// First retry delay; doubles up to `retry_max`, with jitter.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How often expired messages are swept.
    pub sweep_interval: Duration,
    /// Lifetime of a message when the submitter gives none.
    pub default_ttl: Duration,
    /// Shortest time between two updates of one feed an aggregator sends
    /// (a change within it goes out at its end, together with any later).
    pub feed_min_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // 4 MiB envelope plus framing headroom.
            max_frame_bytes: sitrep_core::envelope::MAX_ENVELOPE_BYTES + 4096,
            // 128 concurrent transfers per connection: twice the in-flight window.
            max_streams: 128,
            // 64 in flight per next hop keeps a 1 ms RTT link full at ~60k msg/s.
            max_in_flight: 64,
            max_connections_per_peer: sitrep_net::DEFAULT_MAX_CONNECTIONS_PER_PEER,
            peer_buffer_bytes: sitrep_net::DEFAULT_PEER_READ_BUDGET,
            connection_window_bytes: sitrep_net::DEFAULT_CONNECTION_RECEIVE_WINDOW,
            min_free_bytes: 256 * MIB,
            max_queue_bytes: 4 * 1024 * MIB,
            max_peer_queue_bytes: 1024 * MIB,
            hop_limit: DEFAULT_HOP_LIMIT,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            frame_timeout: sitrep_net::DEFAULT_FRAME_TIMEOUT,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(1),
            default_ttl: Duration::from_secs(7 * 86_400),
            feed_min_interval: Duration::from_millis(250),
        }
    }
}

/// A mebibyte.
const MIB: u64 = 1024 * 1024;

/// The least `min_free_bytes` (other than 0): two log segments, so that a
/// segment roll-over never meets a full disk.
pub const MIN_FREE_FLOOR: u64 = 2 * sitrep_store::log::DEFAULT_SEGMENT_BYTES;

impl Limits {
    /// The caps of every channel store.
    #[must_use]
    pub fn quota(&self) -> sitrep_store::Quota {
        sitrep_store::Quota {
            min_free_bytes: self.min_free_bytes,
            max_queue_bytes: self.max_queue_bytes,
            max_hop_queue_bytes: self.max_peer_queue_bytes,
        }
    }

    /// The QUIC transport limits of every channel endpoint.
    #[must_use]
    pub fn transport(&self) -> sitrep_net::TransportLimits {
        sitrep_net::TransportLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_concurrent_streams: self.max_streams,
            stream_receive_window: sitrep_net::TransportLimits::stream_window_for(self.max_frame_bytes),
            connection_receive_window: self.connection_window_bytes,
            max_connections_per_peer: self.max_connections_per_peer,
            peer_read_budget: self.peer_buffer_bytes,
            idle_timeout: self.idle_timeout,
            keep_alive: self.keep_alive,
            frame_timeout: self.frame_timeout,
            ..sitrep_net::TransportLimits::default()
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `sitrep_node=debug`.
    pub level: String,
    /// `text` or `json`.
    pub json: bool,
}

impl Config {
    /// The audit log of `channel`'s events: `<data_dir>/audit.log` for
    /// `open`, `audit.log` in the channel's store directory for `secure`, so
    /// ids and peers of secure traffic stay on the secure store's volume.
    #[must_use]
    pub fn audit_log(&self, channel: Channel) -> PathBuf {
        match (channel, self.channels.get(&channel)) {
            (Channel::Secure, Some(c)) => c.store.join("audit.log"),
            _ => self.data_dir.join("audit.log"),
        }
    }

    /// Reads `path` with `SITREP_<SECTION>__<KEY>` overrides from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Reads `path` with overrides from `env` (for tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file_key = format!("file {}", path.display());
        if !path.is_file() {
            return Err(err(file_key, "not found"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(&file_key, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, &file_key, base, env)
    }

    /// Parses and validates the text of a config file, with overrides from
    /// `env`: what [`Config::load_with_env`] does once it has read the file.
    /// `origin` names the text in errors about its syntax and shape (`file
    /// node.toml`); relative paths in it are taken from `base`, where the
    /// files it names must exist.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn from_toml(
        text: &str,
        origin: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Only SITREP_<SECTION>__<KEY> overrides config keys; plain SITREP_API
        // and SITREP_TOKEN belong to the client commands.
        let overrides: HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.strip_prefix("SITREP_").is_some_and(|rest| rest.contains("__")))
            .collect();
        // The `config` crate reads the top-level keys of each source (and the
        // names of the variables) as paths, where `[N]` is an index into an
        // array it grows to N: `"a[92222222222222]" = 1` aborted the node
        // allocating petabytes. No key of ours needs more than letters, digits
        // and `_`, so anything else is refused before `config` sees it.
        if let Some(name) = overrides.keys().find(|k| !is_plain_key(k)) {
            return Err(err(
                format!("environment variable {}", name.escape_debug()),
                "not a config key: SITREP_<SECTION>__<KEY> with letters, digits and _ only",
            ));
        }
        let file = config::File::from_str(text, config::FileFormat::Toml);
        let top = config::Source::collect(&file).map_err(|e| err(origin, e.to_string()))?;
        if let Some(key) = top.keys().find(|k| !is_plain_key(k)) {
            return Err(err(
                origin,
                format!(
                    "{:?} is not a section of the config (node, channels, peers, routes, api, limits, log, feeds)",
                    key
                ),
            ));
        }
        let raw: RawConfig = config::Config::builder()
            .add_source(file)
            .add_source(
                config::Environment::with_prefix("SITREP")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| err(origin, e.to_string()))?;
        Self::validate(raw, base)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Self, ConfigError> {
        let file = |key: &str, p: &Path| -> Result<PathBuf, ConfigError> {
            let full = base.join(p);
            if full.is_file() {
                Ok(full)
            } else {
                Err(err(key, format!("file {} not found", full.display())))
            }
        };
        let id = NodeId::new(&raw.node.id).map_err(|e| err("node.id", e.to_string()))?;
        let mut channels = BTreeMap::new();
        for (name, c) in &raw.channels {
            let k = |s: &str| format!("channels.{name}.{s}");
            let channel = Channel::parse(name)
                .ok_or_else(|| err(format!("channels.{name}"), "not a channel; use open or secure"))?;
            if c.crl.is_some() {
                return Err(err(
                    k("crl"),
                    "CRL checking is not implemented yet; remove the key rather than run without it",
                ));
            }
            let max_class = Class::parse(&c.max_class).ok_or_else(|| {
                err(
                    k("max_class"),
                    format!("{:?} is not a class (OPEN ... TOP_SECRET)", c.max_class),
                )
            })?;
            check_channel_max(channel, max_class).map_err(|e| err(k("max_class"), e.to_string()))?;
            channels.insert(
                channel,
                ChannelConfig {
                    listen: c
                        .listen
                        .parse()
                        .map_err(|e| err(k("listen"), format!("{:?}: {e}", c.listen)))?,
                    ca: file(&k("ca"), &c.ca)?,
                    cert: file(&k("cert"), &c.cert)?,
                    key: file(&k("key"), &c.key)?,
                    max_class,
                    store: base.join(&c.store),
                },
            );
        }
        if channels.is_empty() {
            return Err(err("channels", "no channel configured; add [channels.open]"));
        }
        let mut peers = Vec::new();
        let mut routes = RouteTable::default();
        for (i, p) in raw.peers.iter().enumerate() {
            let k = |s: &str| format!("peers[{i}].{s}");
            let pid = NodeId::new(&p.id).map_err(|e| err(k("id"), e.to_string()))?;
            if pid == id {
                return Err(err(k("id"), "a node is not its own peer"));
            }
            let channel = Channel::parse(&p.channel)
                .ok_or_else(|| err(k("channel"), format!("{:?} is not a channel", p.channel)))?;
            if !channels.contains_key(&channel) {
                return Err(err(
                    k("channel"),
                    format!("peer {pid} is on {channel}, which this node does not configure"),
                ));
            }
            let address = p
                .address
                .parse()
                .map_err(|e| err(k("address"), format!("{:?}: {e}", p.address)))?;
            if !routes.peers.entry(channel).or_default().insert(pid.clone()) {
                return Err(err(k("id"), format!("peer {pid} is listed twice on {channel}")));
            }
            peers.push(PeerConfig {
                id: pid,
                channel,
                address,
            });
        }
        for (name, hop) in &raw.routes.default {
            let key = format!("routes.default.{name}");
            let channel = Channel::parse(name).ok_or_else(|| err(&key, "not a channel"))?;
            let hop = NodeId::new(hop).map_err(|e| err(&key, e.to_string()))?;
            if !routes.is_peer(channel, &hop) {
                return Err(err(&key, format!("{hop} is not a peer on {channel}")));
            }
            routes.defaults.insert(channel, hop);
        }
        for (dest, hop) in &raw.routes.static_routes {
            let key = format!("routes.static.{dest}");
            let dest = NodeId::new(dest).map_err(|e| err(&key, e.to_string()))?;
            let hop = NodeId::new(hop).map_err(|e| err(&key, e.to_string()))?;
            if !routes.peers.values().any(|p| p.contains(&hop)) {
                return Err(err(&key, format!("next hop {hop} is not a peer")));
            }
            routes.static_routes.insert(dest, hop);
        }
        let api = match raw.api {
            None => None,
            Some(a) => {
                let listen = a
                    .listen
                    .parse()
                    .map_err(|e| err("api.listen", format!("{:?}: {e}", a.listen)))?;
                let mut tokens = Vec::new();
                for (role, token) in &a.tokens {
                    let key = format!("api.tokens.{role}");
                    let role = Role::ALL
                        .into_iter()
                        .find(|r| r.as_str() == role)
                        .ok_or_else(|| err(&key, "not a role; use reporter, reader or operator"))?;
                    if token.len() < 16 {
                        return Err(err(&key, "token shorter than 16 characters"));
                    }
                    if tokens.iter().any(|(t, _)| t == token) {
                        return Err(err(&key, "the same token is given to two roles"));
                    }
                    tokens.push((token.clone(), role));
                }
                let session_ttl = match a.session_ttl {
                    Some(t) if t.is_zero() || t > Duration::from_secs(7 * 86_400) => {
                        return Err(err(
                            "api.session_ttl",
                            "must be more than zero and at most 7 days",
                        ));
                    }
                    t => t.unwrap_or(ApiConfig::DEFAULT_SESSION_TTL),
                };
                let at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
                    Some(0) => Err(err(format!("api.{key}"), "must be at least 1")),
                    v => Ok(v.unwrap_or(default)),
                };
                let timeout = |key: &str, v: Option<Duration>, default: Duration| match v {
                    Some(t) if t.is_zero() || t > Duration::from_secs(3600) => Err(err(
                        format!("api.{key}"),
                        "must be more than zero and at most 1 h",
                    )),
                    v => Ok(v.unwrap_or(default)),
                };
                Some(ApiConfig {
                    listen,
                    tokens,
                    session_ttl,
                    max_sessions: at_least_one(
                        "max_sessions",
                        a.max_sessions,
                        ApiConfig::DEFAULT_MAX_SESSIONS,
                    )?,
                    max_connections: at_least_one(
                        "max_connections",
                        a.max_connections,
                        ApiConfig::DEFAULT_MAX_CONNECTIONS,
                    )?,
                    max_requests: at_least_one(
                        "max_requests",
                        a.max_requests,
                        ApiConfig::DEFAULT_MAX_REQUESTS,
                    )?,
                    max_event_streams: at_least_one(
                        "max_event_streams",
                        a.max_event_streams,
                        ApiConfig::DEFAULT_MAX_EVENT_STREAMS,
                    )?,
                    header_timeout: timeout(
                        "header_timeout",
                        a.header_timeout,
                        ApiConfig::DEFAULT_HEADER_TIMEOUT,
                    )?,
                    body_timeout: timeout("body_timeout", a.body_timeout, ApiConfig::DEFAULT_BODY_TIMEOUT)?,
                })
            }
        };
        let d = Limits::default();
        let l = raw.limits;
        let positive = |key: &str, v: Option<Duration>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                Some(v) if v.is_zero() => Err(err(format!("limits.{key}"), "must be more than zero")),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let limits = Limits {
            max_frame_bytes: l.max_frame_bytes.unwrap_or(d.max_frame_bytes),
            max_streams: l.max_streams.unwrap_or(d.max_streams),
            max_in_flight: l.max_in_flight.unwrap_or(d.max_in_flight),
            max_connections_per_peer: l.max_connections_per_peer.unwrap_or(d.max_connections_per_peer),
            peer_buffer_bytes: l.peer_buffer_bytes.unwrap_or(d.peer_buffer_bytes),
            connection_window_bytes: l.connection_window_bytes.unwrap_or(d.connection_window_bytes),
            min_free_bytes: l.min_free_bytes.unwrap_or(d.min_free_bytes),
            max_queue_bytes: l.max_queue_bytes.unwrap_or(d.max_queue_bytes),
            max_peer_queue_bytes: l.max_peer_queue_bytes.unwrap_or(d.max_peer_queue_bytes),
            hop_limit: l.hop_limit.unwrap_or(d.hop_limit),
            idle_timeout: positive("idle_timeout", l.idle_timeout, d.idle_timeout)?,
            keep_alive: positive("keep_alive", l.keep_alive, d.keep_alive)?,
            frame_timeout: positive("frame_timeout", l.frame_timeout, d.frame_timeout)?,
            retry_initial: positive("retry_initial", l.retry_initial, d.retry_initial)?,
            retry_max: positive("retry_max", l.retry_max, d.retry_max)?,
            sweep_interval: positive("sweep_interval", l.sweep_interval, d.sweep_interval)?,
            default_ttl: positive("default_ttl", l.default_ttl, d.default_ttl)?,
            feed_min_interval: l.feed_min_interval.unwrap_or(d.feed_min_interval),
        };
        if limits.max_frame_bytes < 1024 || limits.max_frame_bytes > 64 * 1024 * 1024 {
            return Err(err("limits.max_frame_bytes", "must be between 1 KiB and 64 MiB"));
        }
        if limits.max_connections_per_peer == 0 || limits.max_connections_per_peer > 64 {
            return Err(err("limits.max_connections_per_peer", "must be between 1 and 64"));
        }
        if limits.peer_buffer_bytes < limits.max_frame_bytes + 4 {
            return Err(err(
                "limits.peer_buffer_bytes",
                "must hold at least one largest frame (limits.max_frame_bytes + 4)",
            ));
        }
        if limits.min_free_bytes != 0 && limits.min_free_bytes < MIN_FREE_FLOOR {
            return Err(err(
                "limits.min_free_bytes",
                format!(
                    "must be 0 (no check) or at least {MIN_FREE_FLOOR} (two log segments, so that \
                     starting a segment never meets a full disk)"
                ),
            ));
        }
        if limits.max_peer_queue_bytes < limits.max_frame_bytes as u64
            || limits.max_queue_bytes < limits.max_peer_queue_bytes
        {
            return Err(err(
                "limits.max_peer_queue_bytes",
                "must hold at least one largest frame (limits.max_frame_bytes), and                  limits.max_queue_bytes at least as much",
            ));
        }
        if limits.connection_window_bytes < 64 * 1024 {
            return Err(err("limits.connection_window_bytes", "must be at least 64 KiB"));
        }
        if limits.max_streams == 0 || limits.max_in_flight == 0 || limits.hop_limit == 0 {
            return Err(err(
                "limits",
                "max_streams, max_in_flight and hop_limit must be at least 1",
            ));
        }
        if limits.keep_alive >= limits.idle_timeout {
            return Err(err(
                "limits.keep_alive",
                "must be shorter than limits.idle_timeout",
            ));
        }
        let log = LogConfig {
            level: raw.log.level.unwrap_or_else(|| "info".into()),
            json: match raw.log.format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => return Err(err("log.format", format!("{other:?}: use text or json"))),
            },
        };
        let feeds = feeds(&raw.feeds, &channels)?;
        Ok(Self {
            id,
            data_dir: base.join(&raw.node.data_dir),
            roster: file("node.roster", &raw.node.roster)?,
            admin_key: file("node.admin_key", &raw.node.admin_key)?,
            signing_key: file("node.signing_key", &raw.node.signing_key)?,
            hpke_key: file("node.hpke_key", &raw.node.hpke_key)?,
            channels,
            peers,
            routes,
            api,
            limits,
            log,
            feeds,
        })
    }
}

/// A key the `config` crate takes as a name, not as a path: letters, digits, `_`.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Validates `[[feeds]]`: names unique and well formed, on a channel this
/// node runs, a known mode, a class the channel carries, a staleness limit
/// above zero, region codes of two digits.
fn feeds(
    raw: &[RawFeed],
    channels: &BTreeMap<Channel, ChannelConfig>,
) -> Result<Vec<sitrep_core::feed::FeedSpec>, ConfigError> {
    let mut out: Vec<sitrep_core::feed::FeedSpec> = Vec::new();
    for (i, f) in raw.iter().enumerate() {
        let k = |key: &str| format!("feeds[{i}].{key}");
        let good_name = !f.name.is_empty()
            && f.name.len() <= 63
            && f.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !good_name {
            return Err(err(k("name"), format!("{:?} is not [a-z0-9-]{{1,63}}", f.name)));
        }
        if out.iter().any(|o| o.name == f.name) {
            return Err(err(k("name"), format!("{:?} is configured twice", f.name)));
        }
        let channel = Channel::parse(&f.channel)
            .ok_or_else(|| err(k("channel"), format!("{:?}: use open or secure", f.channel)))?;
        let Some(c) = channels.get(&channel) else {
            return Err(err(
                k("channel"),
                format!("this node does not run the {channel} channel ([channels.{channel}])"),
            ));
        };
        let mode = Mode::parse(&f.mode)
            .ok_or_else(|| err(k("mode"), format!("{:?}: use ACTUAL, EXERCISE or TEST", f.mode)))?;
        let max_class = Class::parse(&f.max_class).ok_or_else(|| {
            err(
                k("max_class"),
                format!("{:?} is not a class (OPEN ... TOP_SECRET)", f.max_class),
            )
        })?;
        if max_class > c.max_class {
            return Err(err(
                k("max_class"),
                format!(
                    "{max_class} is above what the {channel} channel carries here ({})",
                    c.max_class
                ),
            ));
        }
        if f.stale_after.is_zero() {
            return Err(err(k("stale_after"), "must be more than zero"));
        }
        if let Some(bad) = f
            .regions
            .iter()
            .find(|r| r.len() != 2 || !r.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err(
                k("regions"),
                format!("{bad:?} is not a two-digit SCB county code"),
            ));
        }
        out.push(sitrep_core::feed::FeedSpec {
            name: f.name.clone(),
            channel,
            mode,
            max_class,
            stale_after_ms: i64::try_from(f.stale_after.as_millis()).unwrap_or(i64::MAX),
            regions: f.regions.clone(),
        });
    }
    Ok(out)
}

impl Config {
    /// The roster-dependent start-up checks: this node listed with these
    /// keys, on each configured channel; each peer listed and on its channel.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key that disagrees with the roster.
    pub fn check_against_roster(
        &self,
        roster: &sitrep_core::Roster,
        signing_key: &sitrep_crypto::VerifyingKey,
        hpke_key: &sitrep_crypto::HpkePublicKey,
    ) -> Result<(), ConfigError> {
        let cerr = |key: &str, problem: String| ConfigError {
            key: key.into(),
            problem,
        };
        let me = roster
            .node(&self.id)
            .ok_or_else(|| cerr("node.id", format!("{} is not in the roster", self.id)))?;
        if me.signing_key != *signing_key {
            return Err(cerr(
                "node.signing_key",
                format!("not the roster's signing key for {}", self.id),
            ));
        }
        if me.hpke_key != *hpke_key {
            return Err(cerr(
                "node.hpke_key",
                format!("not the roster's HPKE key for {}", self.id),
            ));
        }
        if !self.feeds.is_empty() && !me.roles.iter().any(|r| r == "aggregator") {
            return Err(cerr(
                "feeds",
                format!(
                    "{} builds feeds but the roster does not give it the aggregator role",
                    self.id
                ),
            ));
        }
        if let Some(channel) = self.channels.keys().find(|c| !me.is_on(**c)) {
            return Err(cerr(
                &format!("channels.{channel}"),
                format!("the roster does not put {} on the {channel} channel", self.id),
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
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
        Ok(())
    }
}
