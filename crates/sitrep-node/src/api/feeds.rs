//! The feeds, at the aggregator and at a subscriber (reader role):
//! `GET /v1/feeds` (list with state), `GET /v1/feeds/{name}` (the latest
//! roll-up, JSON in the proto's field names), `GET /v1/feeds/{name}/events`
//! (Server-Sent Events, one per update, `Last-Event-ID` resumes),
//! `POST /v1/feeds/{name}/subscribe` and `…/unsubscribe` (a signed request
//! through the network), `POST /v1/feeds/{name}/verify` (the roll-up's
//! sources against this node's inbox).
//!
//! Not here: how a roll-up is built (`sitrep_core::feed`), what is held and
//! sent (`feeds`, `service`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sitrep_core::{Channel, NodeId};
use sitrep_proto::v1 as pb;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, authorize, rfc3339};
use crate::config::Role;

/// One feed, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FeedItem {
    /// Feed name.
    name: String,
    /// `aggregator` (built here) or `subscriber` (asked for here).
    role: String,
    /// `open` or `secure`.
    channel: String,
    /// `ACTUAL`, `EXERCISE` or `TEST`.
    mode: String,
    /// Node that builds it.
    aggregator: String,
    /// `publishing` at the aggregator; at a subscriber `pending`, `active`,
    /// `refused` or `ended`.
    state: String,
    /// Why it was refused or ended.
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    /// Highest input class it takes (aggregator).
    #[serde(skip_serializing_if = "Option::is_none")]
    max_class: Option<String>,
    /// A region is stale after this many seconds without a report (aggregator).
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_after_s: Option<f64>,
    /// Sequence of the latest roll-up held; 0 when none yet.
    sequence: u64,
    /// When it was built (RFC 3339), if one is held.
    #[serde(skip_serializing_if = "Option::is_none")]
    built: Option<String>,
    /// Regions in the roll-up.
    regions: u32,
    /// Regions with a report.
    reporting: u32,
    /// Regions overdue.
    overdue: u32,
    /// Regions stale.
    stale: u32,
    /// Subscribers (aggregator).
    subscribers: Vec<String>,
    /// Update lag in seconds: at the aggregator, the oldest update not yet
    /// delivered to its subscriber; at a subscriber, how long the latest
    /// took from being built to arriving.
    lag_s: f64,
}

/// The feeds of this node.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FeedList {
    /// One per feed built here or asked for here.
    feeds: Vec<FeedItem>,
}

/// The feeds this node builds or asked for, with their state now.
#[utoipa::path(get, path = "/v1/feeds", tag = "feeds",
    responses((status = 200, description = "The feeds", body = FeedList)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<FeedList>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let service = state.service.clone();
    let feeds = tokio::task::spawn_blocking(move || service.feeds())
        .await
        .map_err(ApiError::unavailable)?
        .into_iter()
        .map(|f| FeedItem {
            name: f.name,
            role: f.role.to_owned(),
            channel: f.channel.as_str().to_owned(),
            mode: f.mode.as_str().to_owned(),
            aggregator: f.aggregator,
            state: f.state,
            reason: f.reason,
            max_class: f.spec.as_ref().map(|s| s.max_class.as_str().to_owned()),
            stale_after_s: f.spec.as_ref().map(|s| s.stale_after_ms as f64 / 1000.0),
            sequence: f.sequence,
            built: (f.built_ms > 0).then(|| rfc3339(f.built_ms)),
            regions: f.regions,
            reporting: f.reporting,
            overdue: f.overdue,
            stale: f.stale,
            subscribers: f.subscribers,
            lag_s: f.lag_ms as f64 / 1000.0,
        })
        .collect();
    Ok(Json(FeedList { feeds }))
}

/// No body, or a JSON `null`.
fn is_empty(body: &[u8]) -> bool {
    let t = body.trim_ascii();
    t.is_empty() || t == b"null"
}

fn no_feed(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("this node neither builds nor receives a feed {name:?}"),
    )
}

/// The latest roll-up of a feed (at the aggregator, the one last published).
#[utoipa::path(get, path = "/v1/feeds/{name}", tag = "feeds",
    params(("name" = String, Path, description = "The feed's name")),
    responses(
        (status = 200, description = "The NationalRollup, proto3 JSON mapping", body = Object),
        (status = 404, description = "No such feed here, or none received yet", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<pb::NationalRollup>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    state
        .service
        .feed(&name)
        .map(|r| Json(Arc::unwrap_or_clone(r)))
        .ok_or_else(|| no_feed(&name))
}

/// Server-Sent Events: one `rollup` event per update, its id the roll-up's
/// sequence. Without `Last-Event-ID` the stream starts with the latest
/// roll-up; with it, every update after that id that is still held (the
/// last 256), or the latest alone if the id is older than that (each
/// roll-up is the whole picture).
#[utoipa::path(get, path = "/v1/feeds/{name}/events", tag = "feeds",
    params(
        ("name" = String, Path, description = "The feed's name"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this sequence"),
    ),
    responses(
        (status = 200, description = "text/event-stream of NationalRollup (proto3 JSON), event `rollup`", content_type = "text/event-stream"),
        (status = 404, description = "No such feed here", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let last = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "Last-Event-ID must be a sequence number")
            })?,
    };
    if state.service.feed_after(&name, 0).is_none() {
        return Err(no_feed(&name));
    }
    let slot = state
        .usage
        .event_streams
        .take()
        .map_err(|_| ApiError::busy("too many event streams open at this API; retry shortly"))?;
    let rx = state.service.feed_updates();
    // A stream opened with a console session ends with it (expiry or sign-out).
    let session = super::session::Bound::of(&state, &headers);
    let start = Follow {
        _slot: slot,
        session,
        service: state.service.clone(),
        cancel: state.cancel.clone(),
        name,
        last,
        rx,
        pending: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(start, |mut f| async move {
        loop {
            if f.session.as_ref().is_some_and(|b| !b.valid()) {
                return None;
            }
            if let Some(r) = f.pending.pop_front() {
                f.last = r.sequence;
                let event = Event::default()
                    .event("rollup")
                    .id(r.sequence.to_string())
                    .json_data(&*r)
                    .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                return Some((Ok(event), f));
            }
            f.rx.borrow_and_update();
            f.pending.extend(f.service.feed_after(&f.name, f.last)?);
            if !f.pending.is_empty() {
                continue;
            }
            let expiry = f.session.as_ref().map(super::session::Bound::expiry);
            let session_ends = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = f.cancel.cancelled() => return None,
                changed = f.rx.changed() => changed.ok()?,
                () = session_ends => {}
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Where one event stream stands.
struct Follow {
    /// Its place among `api.max_event_streams`, held while it is open.
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// The console session it was opened with, if any.
    session: Option<super::session::Bound>,
    service: crate::service::Service,
    cancel: tokio_util::sync::CancellationToken,
    name: String,
    last: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    pending: VecDeque<Arc<pb::NationalRollup>>,
}

/// A subscription request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscribeBody {
    /// The aggregator's node id; default: the roster's only aggregator on the channel.
    #[serde(default)]
    aggregator: Option<String>,
    /// `open` (default) or `secure`: the feed's channel.
    #[serde(default)]
    channel: Option<String>,
    /// Only these SCB county codes; default: all regions.
    #[serde(default)]
    regions: Vec<String>,
}

/// A request sent.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Requested {
    /// The SUBSCRIBE or UNSUBSCRIBE message's id (its delivery at
    /// `/v1/reports/{id}`).
    request_id: String,
    /// `pending`, or `ended` for an unsubscribe.
    state: String,
}

fn requested(id: sitrep_core::MessageId, state: &str) -> (StatusCode, Json<Requested>) {
    (
        StatusCode::ACCEPTED,
        Json(Requested {
            request_id: id.to_string(),
            state: state.to_owned(),
        }),
    )
}

/// Sends a signed SUBSCRIBE for the feed to its aggregator. The answer is
/// the feed's first update, or a refusal with its reason (`GET /v1/feeds`).
#[utoipa::path(post, path = "/v1/feeds/{name}/subscribe", tag = "feeds",
    params(("name" = String, Path, description = "The feed's name")),
    request_body = SubscribeBody,
    responses(
        (status = 202, description = "Sent (durably queued)", body = Requested),
        (status = 400, description = "A bad field", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn subscribe(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Requested>), ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let body: SubscribeBody = if is_empty(&body) {
        SubscribeBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?
    };
    let channel = match body.channel.as_deref() {
        None => Channel::Open,
        Some(c) => Channel::parse(c).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("channel: {c:?} is neither open nor secure"),
            )
        })?,
    };
    let aggregator = body
        .aggregator
        .map(|a| {
            NodeId::new(&a).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("aggregator: {e}")))
        })
        .transpose()?;
    let id = state
        .service
        .subscribe(&name, aggregator, channel, body.regions, false)
        .await
        .map_err(super::submit::submit_error)?;
    Ok(requested(id, "pending"))
}

/// Sends a signed UNSUBSCRIBE for a feed this node subscribed to.
#[utoipa::path(post, path = "/v1/feeds/{name}/unsubscribe", tag = "feeds",
    params(("name" = String, Path, description = "The feed's name")),
    responses(
        (status = 202, description = "Sent (durably queued)", body = Requested),
        (status = 404, description = "No subscription to this feed here", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn unsubscribe(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Requested>), ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let (channel, aggregator) = state.service.request_of(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this node has no subscription to {name:?}"),
        )
    })?;
    let id = state
        .service
        .subscribe(&name, Some(aggregator), channel, Vec::new(), true)
        .await
        .map_err(super::submit::submit_error)?;
    Ok(requested(id, "ended"))
}

/// One source, checked.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SourceResult {
    region_code: String,
    report_id: String,
    ok: bool,
    /// What does not match; empty when it checks out.
    problems: Vec<String>,
}

/// A roll-up, checked against this node's inbox.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Verification {
    /// Every source checks out.
    ok: bool,
    feed: String,
    sequence: u64,
    sources: Vec<SourceResult>,
}

/// Checks a roll-up's sources against the reports in this node's inbox:
/// each source's envelope is here, its SHA-256 is the source's digest, its
/// signature verifies, and the row holds exactly the report's figures.
/// With a body (a NationalRollup, proto3 JSON), that roll-up; without, the
/// latest held here.
#[utoipa::path(post, path = "/v1/feeds/{name}/verify", tag = "feeds",
    params(("name" = String, Path, description = "The feed's name")),
    request_body(content = Object, description = "Optional NationalRollup (proto3 JSON)"),
    responses(
        (status = 200, description = "The checks (`ok` says whether all passed)", body = Verification),
        (status = 404, description = "No roll-up of this feed here", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn verify(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Verification>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let rollup = if is_empty(&body) {
        Arc::unwrap_or_clone(state.service.feed(&name).ok_or_else(|| no_feed(&name))?)
    } else {
        serde_json::from_slice::<pb::NationalRollup>(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("body is not a NationalRollup: {e}"),
            )
        })?
    };
    let service = state.service.clone();
    let (rollup, checks) = tokio::task::spawn_blocking(move || service.verify(&rollup).map(|c| (rollup, c)))
        .await
        .map_err(ApiError::unavailable)?
        .map_err(ApiError::unavailable)?;
    let sources: Vec<SourceResult> = checks
        .into_iter()
        .map(|c| SourceResult {
            ok: c.problems.is_empty(),
            region_code: c.region_code,
            report_id: c.report_id,
            problems: c.problems,
        })
        .collect();
    Ok(Json(Verification {
        ok: sources.iter().all(|s| s.ok),
        feed: rollup.feed,
        sequence: rollup.sequence,
        sources,
    }))
}
