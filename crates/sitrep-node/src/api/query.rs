//! `GET /v1/reports/{id}` (delivery state per recipient) and `GET /v1/inbox`
//! (reports delivered here, opened, after a cursor).
//!
//! Not here: how delivery states change (`sitrep_core::delivery`) or how the
//! inbox is stored (`sitrep_store`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sitrep_core::{Channel, ContentType, MessageId};
use sitrep_proto::v1 as pb;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ApiState, ErrorBody, authorize, field, rfc3339};
use crate::config::Role;

/// 500 inbox entries per page at most.
const MAX_PAGE: usize = 500;

/// Delivery of one report to one recipient.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RecipientState {
    /// The recipient's node id.
    recipient: String,
    /// `QUEUED`, `FORWARDED`, `DELIVERED`, `REJECTED` or `EXPIRED`.
    state: String,
    /// The hop that took custody (`FORWARDED`).
    hop: Option<String>,
    /// When the state was reached (for `DELIVERED`, the recipient's time).
    at: String,
    /// Why (`REJECTED`).
    reason: Option<String>,
}

/// Delivery state of a report submitted here.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReportState {
    /// The message id.
    id: String,
    /// Whether every recipient's state is final.
    #[serde(rename = "final")]
    done: bool,
    /// One entry per recipient.
    recipients: Vec<RecipientState>,
}

/// Delivery state per recipient.
#[utoipa::path(get, path = "/v1/reports/{id}", tag = "reports",
    params(("id" = String, Path, description = "The message id from the 202 answer")),
    responses(
        (status = 200, description = "State per recipient", body = ReportState),
        (status = 400, description = "Not a message id", body = ErrorBody),
        (status = 404, description = "No report with that id was submitted here", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn report_status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ReportState>, ApiError> {
    authorize(&state, &headers, Role::Reporter)?;
    let mid = MessageId::parse(&id)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not a message id")))?;
    let records = state.service.delivery(&mid).map_err(ApiError::unavailable)?;
    if records.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no report {mid} was submitted here"),
        ));
    }
    Ok(Json(ReportState {
        id: mid.to_string(),
        done: records.iter().all(|d| d.state.is_final()),
        recipients: records
            .into_iter()
            .map(|d| RecipientState {
                recipient: d.recipient.to_string(),
                state: d.state.as_str().to_owned(),
                hop: d.hop.as_ref().map(ToString::to_string),
                at: rfc3339(d.at_ms),
                reason: Some(d.reason).filter(|r| !r.is_empty()),
            })
            .collect(),
    }))
}

/// Where to start and how much to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct InboxQuery {
    /// The `next` cursor of the previous page (`open.secure`); absent for the start.
    after: Option<String>,
    /// Entries per channel, 1 to 500 (default 100).
    limit: Option<String>,
}

/// A label as shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LabelView {
    /// The class.
    class: String,
    /// Handling caveats.
    caveats: Vec<String>,
}

/// One delivered report, opened.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct InboxItem {
    /// `open` or `secure`.
    channel: String,
    /// Message id.
    id: String,
    /// Originating node.
    origin: String,
    /// Person or role that submitted it.
    author: String,
    /// When it was sealed.
    created: String,
    /// When it expires.
    expires: String,
    /// When it was delivered here.
    received: String,
    /// Its label.
    label: LabelView,
    /// Precedence.
    precedence: String,
    /// Mode.
    mode: String,
    /// Content type.
    content_type: String,
    /// The report, for situation reports (proto3 JSON mapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    report: Option<pb::SituationReport>,
}

/// A page of the inbox.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct InboxPage {
    /// The entries, open channel first.
    items: Vec<InboxItem>,
    /// The cursor to pass as `after` for the next page.
    next: String,
}

/// The inbox cursor: one position per channel, written `open.secure`.
fn parse_cursor(s: Option<&str>) -> Result<(u64, u64), ApiError> {
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        return Ok((0, 0));
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("after={s:?} is not a cursor from a previous page"),
        )
    };
    let (o, sec) = s.split_once('.').ok_or_else(bad)?;
    Ok((o.parse().map_err(|_| bad())?, sec.parse().map_err(|_| bad())?))
}

/// Reports received here, opened, after a cursor.
#[utoipa::path(get, path = "/v1/inbox", tag = "inbox",
    params(InboxQuery),
    responses(
        (status = 200, description = "A page of the inbox", body = InboxPage),
        (status = 400, description = "Bad cursor or limit", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn inbox(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Result<Json<InboxPage>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let (mut open_at, mut secure_at) = parse_cursor(q.after.as_deref())?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::fields(vec![field("limit", format!("{l:?} is not a whole number"))]))?,
    }
    .clamp(1, MAX_PAGE);
    let mut items = Vec::new();
    for channel in Channel::ALL {
        let at = match channel {
            Channel::Open => &mut open_at,
            Channel::Secure => &mut secure_at,
        };
        // Log reads and HPKE opening: on a blocking thread, not a runtime worker.
        let service = state.service.clone();
        let from = *at;
        let got = tokio::task::spawn_blocking(move || service.inbox(channel, from, limit))
            .await
            .map_err(|e| ApiError::unavailable(format!("inbox read stopped: {e}")))?
            .map_err(ApiError::unavailable)?;
        for r in got {
            *at = r.cursor;
            let h = r.header;
            let report = (h.content_type == ContentType::SituationReport)
                .then(|| pb::SituationReport::decode(r.payload.as_slice()).ok())
                .flatten();
            items.push(InboxItem {
                channel: channel.as_str().to_owned(),
                id: h.id.to_string(),
                origin: h.origin.to_string(),
                author: h.author,
                created: rfc3339(h.created_ms),
                expires: rfc3339(h.expires_ms),
                received: rfc3339(r.received_ms),
                label: LabelView {
                    class: h.label.class.as_str().to_owned(),
                    caveats: h.label.caveats,
                },
                precedence: h.precedence.as_str().to_owned(),
                mode: h.mode.as_str().to_owned(),
                content_type: h.content_type.as_str().to_owned(),
                report,
            });
        }
    }
    Ok(Json(InboxPage {
        items,
        next: format!("{open_at}.{secure_at}"),
    }))
}
