//! What the console's report form needs beyond submitting: the choices
//! policy allows this node (`GET /v1/reports/options`) and the last report
//! submitted here (`GET /v1/reports/last`, for "copy from my last report").
//!
//! Not here: the submission itself (`submit`), its delivery (`query`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::Value;
use sitrep_core::{Mode, Precedence};
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, authorize};
use crate::config::Role;

/// A node a report may be addressed to.
#[derive(Debug, Serialize, ToSchema)]
struct NodeChoice {
    id: String,
    name: String,
    /// `REGION`, `AUTHORITY`, `HUB`, `COUNTY_BOARD`, …
    kind: String,
}

/// One class this node may send, and to whom.
#[derive(Debug, Serialize, ToSchema)]
struct ClassChoice {
    /// The class, as `label.class` spells it.
    class: String,
    /// The channel it travels on.
    channel: String,
    /// Node ids policy and routing accept as recipients at this class.
    recipients: Vec<String>,
}

/// The choices a report form may offer on this node.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReportOptions {
    /// This node's id.
    node: String,
    /// This node's SCB county code, if it is a region.
    region_code: String,
    /// This node's name in the roster.
    name: String,
    /// Classes this node may send, low to high, with their recipients.
    classes: Vec<ClassChoice>,
    /// Every node named in `classes`.
    nodes: Vec<NodeChoice>,
    precedences: Vec<&'static str>,
    modes: Vec<&'static str>,
}

/// The labels, recipients, precedences and modes a report submitted here
/// may carry: the same policy and routing checks as `POST /v1/reports`.
#[utoipa::path(get, path = "/v1/reports/options", tag = "reports",
    responses(
        (status = 200, description = "What this node may send, and to whom", body = ReportOptions),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Not the reporter role", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn options(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<ReportOptions>, ApiError> {
    authorize(&state, &headers, Role::Reporter)?;
    let roster = state.service.roster();
    let me = roster.node(state.service.node_id());
    let classes = state.service.report_options();
    let mut named: Vec<&sitrep_core::NodeId> = classes.iter().flat_map(|(_, r)| r).collect();
    named.sort();
    named.dedup();
    let nodes = named
        .into_iter()
        .filter_map(|id| roster.node(id))
        .map(|n| NodeChoice {
            id: n.id.to_string(),
            name: n.name.clone(),
            kind: n.kind.as_str_name().to_owned(),
        })
        .collect();
    Ok(Json(ReportOptions {
        node: state.service.node_id().to_string(),
        region_code: me.map(|n| n.region_code.clone()).unwrap_or_default(),
        name: me.map(|n| n.name.clone()).unwrap_or_default(),
        classes: classes
            .into_iter()
            .map(|(c, r)| ClassChoice {
                class: c.to_proto().as_str_name().to_owned(),
                channel: sitrep_core::Channel::for_class(c).as_str().to_owned(),
                recipients: r.into_iter().map(|n| n.to_string()).collect(),
            })
            .collect(),
        nodes,
        precedences: Precedence::ALL
            .iter()
            .map(|p| p.to_proto().as_str_name())
            .collect(),
        modes: Mode::ALL.iter().map(|m| m.to_proto().as_str_name()).collect(),
    }))
}

/// The last report submitted through the API here since the node started
/// (kept in memory only): the body as it was sent, with `id` and
/// `submitted_ms`.
#[utoipa::path(get, path = "/v1/reports/last", tag = "reports",
    responses(
        (status = 200, description = "The last submission's body, with id and submitted_ms", content_type = "application/json"),
        (status = 404, description = "Nothing submitted through the API since the node started", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Not the reporter role", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn last(State(state): State<ApiState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Role::Reporter)?;
    state
        .last_report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no report has been submitted through the API here since the node started",
            )
        })
}
