//! `GET /v1/status` (operator), `GET /metrics` (OpenMetrics text through
//! `prometheus-client`), `/healthz` and `/readyz`: the same snapshot of the
//! node shown two ways.
//!
//! Not here: the counters themselves (`metrics`) or how the snapshot is read
//! (`service`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::atomic::AtomicU64;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, authorize, rfc3339};
use crate::config::Role;
use crate::metrics::Counters;
use crate::service::StatusSnapshot;

/// Days from `now_ms` to `until_ms`.
fn days(now_ms: i64, until_ms: i64) -> f64 {
    (until_ms - now_ms) as f64 / 86_400_000.0
}

/// The roster in use.
#[derive(Debug, Serialize, ToSchema)]
struct RosterView {
    serial: u64,
    network: String,
    not_after: String,
    days_left: f64,
}

/// A channel certificate's validity.
#[derive(Debug, Serialize, ToSchema)]
struct CertificateView {
    channel: String,
    not_after: String,
    days_left: f64,
}

/// One peer link.
#[derive(Debug, Serialize, ToSchema)]
struct PeerView {
    peer: String,
    channel: String,
    address: String,
    connected: bool,
    last_seen: Option<String>,
    rtt_ms: Option<f64>,
    last_error: Option<String>,
}

/// One outbox.
#[derive(Debug, Serialize, ToSchema)]
struct OutboxView {
    channel: String,
    next_hop: String,
    depth: u64,
    bytes: u64,
    oldest_age_s: Option<f64>,
}

/// One channel store.
#[derive(Debug, Serialize, ToSchema)]
struct StoreView {
    channel: String,
    disk_bytes: u64,
    /// `null` while the store takes writes; the reason once it refuses them.
    failed: Option<String>,
    /// Free bytes on the store's disk (`null` if unknown); below
    /// `min_free_bytes` new messages are refused.
    free_bytes: Option<u64>,
    /// `limits.min_free_bytes`.
    min_free_bytes: u64,
    /// Envelope bytes queued for all next hops (`limits.max_queue_bytes`).
    queued_bytes: Use64,
    /// The next hop with the most bytes queued, against
    /// `limits.max_peer_queue_bytes` (`null` when nothing is queued).
    fullest_peer: Option<PeerQueueView>,
}

/// A byte count against its cap.
#[derive(Debug, Serialize, ToSchema)]
struct Use64 {
    used: u64,
    max: u64,
}

/// One next hop's queue against its cap.
#[derive(Debug, Serialize, ToSchema)]
struct PeerQueueView {
    peer: String,
    queued_bytes: Use64,
}

/// One feed built or received here.
#[derive(Debug, Serialize, ToSchema)]
struct FeedView {
    name: String,
    /// `aggregator` or `subscriber`.
    role: String,
    channel: String,
    /// `publishing`, `pending`, `active`, `refused` or `ended`.
    state: String,
    /// Sequence of the latest roll-up held; 0 when none yet.
    sequence: u64,
    regions_reporting: u32,
    regions_overdue: u32,
    /// Subscribers (at the aggregator).
    subscribers: usize,
    /// At the aggregator, age of the oldest update not yet delivered to its
    /// subscriber; at a subscriber, build-to-arrival time of the latest.
    update_lag_s: f64,
}

/// The node's status.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StatusDocument {
    /// This node's id.
    node: String,
    /// When this was read.
    time: String,
    roster: RosterView,
    certificates: Vec<CertificateView>,
    peers: Vec<PeerView>,
    outboxes: Vec<OutboxView>,
    /// Every counter that is not zero, by name.
    counters: BTreeMap<String, u64>,
    /// Refusals at ingress by reason.
    refusals: BTreeMap<String, u64>,
    stores: Vec<StoreView>,
    /// Feeds built or received here.
    feeds: Vec<FeedView>,
    /// How close each cap is: the HTTP API's, and each peer's at each
    /// channel endpoint.
    limits: LimitsView,
}

/// A count against its cap.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Use {
    used: usize,
    max: usize,
}

impl Use {
    pub(super) fn new(used: usize, max: usize) -> Self {
        Self { used, max }
    }
}

/// Caps in use.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LimitsView {
    /// TCP connections to the API (`api.max_connections`).
    api_connections: Use,
    /// Requests being handled (`api.max_requests`).
    api_requests: Use,
    /// Event streams open (`api.max_event_streams`).
    api_event_streams: Use,
    /// Per channel and peer: incoming connections
    /// (`limits.max_connections_per_peer`) and bytes of its frames held
    /// (`limits.peer_buffer_bytes`).
    peers: Vec<PeerLimitView>,
}

/// One peer's use of its caps at one channel's endpoint.
#[derive(Debug, Serialize, ToSchema)]
struct PeerLimitView {
    channel: String,
    peer: String,
    connections: Use,
    buffered_bytes: Use,
}

impl StatusDocument {
    fn new(s: &StatusSnapshot, counters: &Counters, usage: &super::server::Usage) -> Self {
        let now = s.now_ms;
        Self {
            node: s.node.to_string(),
            time: rfc3339(now),
            roster: RosterView {
                serial: s.roster.serial,
                network: s.roster.network.clone(),
                not_after: rfc3339(s.roster.not_after_ms),
                days_left: days(now, s.roster.not_after_ms),
            },
            certificates: s
                .certificates
                .iter()
                .map(|(c, t)| CertificateView {
                    channel: c.as_str().to_owned(),
                    not_after: rfc3339(*t),
                    days_left: days(now, *t),
                })
                .collect(),
            peers: s
                .peers
                .iter()
                .map(|p| PeerView {
                    peer: p.peer.to_string(),
                    channel: p.channel.as_str().to_owned(),
                    address: p.address.to_string(),
                    connected: p.connected,
                    last_seen: p.last_seen_ms.map(rfc3339),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    last_error: p.last_error.clone(),
                })
                .collect(),
            outboxes: s
                .outboxes
                .iter()
                .map(|(c, h)| OutboxView {
                    channel: c.as_str().to_owned(),
                    next_hop: h.next_hop.to_string(),
                    depth: h.depth,
                    bytes: h.bytes,
                    oldest_age_s: h.oldest_queued_ms.map(|t| (now - t).max(0) as f64 / 1000.0),
                })
                .collect(),
            counters: counters.snapshot(),
            refusals: counters
                .refusals()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            stores: s
                .stores
                .iter()
                .map(|st| {
                    let queues = || s.outboxes.iter().filter(|(c, _)| *c == st.channel);
                    StoreView {
                        channel: st.channel.as_str().to_owned(),
                        disk_bytes: st.disk_bytes,
                        failed: st.failed.clone(),
                        free_bytes: st.free_bytes,
                        min_free_bytes: st.quota.min_free_bytes,
                        queued_bytes: Use64 {
                            used: queues().map(|(_, h)| h.bytes).sum(),
                            max: st.quota.max_queue_bytes,
                        },
                        fullest_peer: queues().max_by_key(|(_, h)| h.bytes).map(|(_, h)| PeerQueueView {
                            peer: h.next_hop.to_string(),
                            queued_bytes: Use64 {
                                used: h.bytes,
                                max: st.quota.max_hop_queue_bytes,
                            },
                        }),
                    }
                })
                .collect(),
            feeds: s
                .feeds
                .iter()
                .map(|f| FeedView {
                    name: f.name.clone(),
                    role: f.role.to_owned(),
                    channel: f.channel.as_str().to_owned(),
                    state: f.state.clone(),
                    sequence: f.sequence,
                    regions_reporting: f.reporting,
                    regions_overdue: f.overdue,
                    subscribers: f.subscribers.len(),
                    update_lag_s: f.lag_ms as f64 / 1000.0,
                })
                .collect(),
            limits: LimitsView {
                api_connections: usage.connections.used(),
                api_requests: usage.requests.used(),
                api_event_streams: usage.event_streams.used(),
                peers: s
                    .peer_usage
                    .iter()
                    .map(|(c, u)| PeerLimitView {
                        channel: c.as_str().to_owned(),
                        peer: u.peer.to_string(),
                        connections: Use {
                            used: u.connections,
                            max: u.max_connections,
                        },
                        buffered_bytes: Use {
                            used: u.buffered_bytes,
                            max: u.max_buffered_bytes,
                        },
                    })
                    .collect(),
            },
        }
    }
}

/// Peers, outboxes, counters, refusals, certificate and roster expiry, disk use.
#[utoipa::path(get, path = "/v1/status", tag = "operations",
    responses(
        (status = 200, description = "The node's status", body = StatusDocument),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Not an operator token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<StatusDocument>, ApiError> {
    authorize(&state, &headers, Role::Operator)?;
    Ok(Json(StatusDocument::new(
        &state.service.status(),
        state.service.counters(),
        &state.usage,
    )))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabels {
    channel: &'static str,
    peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HopLabels {
    channel: &'static str,
    next_hop: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabels {
    channel: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FeedLabels {
    feed: String,
    role: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The OpenMetrics text of the counters and of gauges read from `s`.
fn exposition(s: &StatusSnapshot, counters: &Counters) -> Result<String, std::fmt::Error> {
    let now = s.now_ms;
    let mut registry = Registry::default();
    counters.register(&mut registry);
    let connected = Family::<PeerLabels, Gauge>::default();
    let rtt = Family::<PeerLabels, FloatGauge>::default();
    for p in &s.peers {
        let l = PeerLabels {
            channel: p.channel.as_str(),
            peer: p.peer.to_string(),
        };
        connected.get_or_create(&l).set(i64::from(p.connected));
        if let Some(r) = p.rtt {
            rtt.get_or_create(&l).set(r.as_secs_f64());
        }
    }
    let depth = Family::<HopLabels, Gauge>::default();
    let bytes = Family::<HopLabels, Gauge>::default();
    let age = Family::<HopLabels, FloatGauge>::default();
    for (c, h) in &s.outboxes {
        let l = HopLabels {
            channel: c.as_str(),
            next_hop: h.next_hop.to_string(),
        };
        depth
            .get_or_create(&l)
            .set(i64::try_from(h.depth).unwrap_or(i64::MAX));
        bytes
            .get_or_create(&l)
            .set(i64::try_from(h.bytes).unwrap_or(i64::MAX));
        age.get_or_create(&l).set(
            h.oldest_queued_ms
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
        );
    }
    let disk = Family::<ChannelLabels, Gauge>::default();
    for st in &s.stores {
        disk.get_or_create(&ChannelLabels {
            channel: st.channel.as_str(),
        })
        .set(i64::try_from(st.disk_bytes).unwrap_or(i64::MAX));
    }
    let free = Family::<ChannelLabels, Gauge>::default();
    for st in &s.stores {
        if let Some(f) = st.free_bytes {
            free.get_or_create(&ChannelLabels {
                channel: st.channel.as_str(),
            })
            .set(i64::try_from(f).unwrap_or(i64::MAX));
        }
    }
    let cert = Family::<ChannelLabels, FloatGauge>::default();
    for (c, t) in &s.certificates {
        cert.get_or_create(&ChannelLabels { channel: c.as_str() })
            .set(days(now, *t));
    }
    let feed_seq = Family::<FeedLabels, Gauge>::default();
    let feed_subs = Family::<FeedLabels, Gauge>::default();
    let feed_lag = Family::<FeedLabels, FloatGauge>::default();
    let feed_reporting = Family::<FeedLabels, Gauge>::default();
    let feed_overdue = Family::<FeedLabels, Gauge>::default();
    for f in &s.feeds {
        let l = FeedLabels {
            feed: f.name.clone(),
            role: f.role,
        };
        feed_seq
            .get_or_create(&l)
            .set(i64::try_from(f.sequence).unwrap_or(i64::MAX));
        feed_subs
            .get_or_create(&l)
            .set(i64::try_from(f.subscribers.len()).unwrap_or(i64::MAX));
        feed_lag.get_or_create(&l).set(f.lag_ms as f64 / 1000.0);
        feed_reporting.get_or_create(&l).set(i64::from(f.reporting));
        feed_overdue.get_or_create(&l).set(i64::from(f.overdue));
    }
    registry.register(
        "sitrep_feed_sequence",
        "Sequence of the latest roll-up held (microseconds-based).",
        feed_seq,
    );
    registry.register(
        "sitrep_feed_subscribers",
        "Subscribers of the feed (aggregator).",
        feed_subs,
    );
    registry.register(
        "sitrep_feed_update_lag_seconds",
        "Aggregator: age of the oldest update not yet delivered; subscriber: build-to-arrival time of the latest.",
        feed_lag,
    );
    registry.register(
        "sitrep_feed_regions_reporting",
        "Regions with a report in the latest roll-up.",
        feed_reporting,
    );
    registry.register(
        "sitrep_feed_regions_overdue",
        "Regions overdue in the latest roll-up.",
        feed_overdue,
    );
    let serial = Gauge::<i64>::default();
    serial.set(i64::try_from(s.roster.serial).unwrap_or(i64::MAX));
    let roster_days = FloatGauge::default();
    roster_days.set(days(now, s.roster.not_after_ms));

    registry.register(
        "sitrep_peer_connected",
        "1 if the link to the peer is up.",
        connected,
    );
    registry.register("sitrep_peer_rtt_seconds", "Round-trip time to the peer.", rtt);
    registry.register("sitrep_outbox_depth", "Copies queued for the next hop.", depth);
    registry.register(
        "sitrep_outbox_bytes",
        "Envelope bytes queued for the next hop.",
        bytes,
    );
    registry.register(
        "sitrep_outbox_oldest_age_seconds",
        "Age of the oldest queued copy.",
        age,
    );
    registry.register(
        "sitrep_store_disk_bytes",
        "Disk used by the channel's store.",
        disk,
    );
    registry.register(
        "sitrep_store_free_bytes",
        "Free bytes on the disk of the channel's store; below limits.min_free_bytes new messages are refused.",
        free,
    );
    registry.register(
        "sitrep_certificate_days_left",
        "Days until the channel certificate expires.",
        cert,
    );
    registry.register("sitrep_roster_serial", "Serial of the roster in use.", serial);
    registry.register(
        "sitrep_roster_days_left",
        "Days until the roster expires.",
        roster_days,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// OpenMetrics text: the same figures as `/v1/status`. No token: bind the
/// API to an address only the monitoring system reaches.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
    match exposition(&state.service.status(), state.service.counters()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", content_type = "text/plain")))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when the node can serve (the roster is valid now and every
/// store takes writes), 503 with the reason otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain"),
        (status = 503, description = "Not ready, and why", content_type = "text/plain"),
    ))]
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    match state.service.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}
