//! `GET /v1/feeds` (the feeds this node builds, with their state) and
//! `GET /v1/feeds/{name}` (the latest roll-up, JSON in the proto's field
//! names), at the aggregator. Reader role.
//!
//! Not here: how a roll-up is built (`sitrep_core::feed`) or which reports
//! it holds (`service`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use sitrep_proto::v1 as pb;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, authorize};
use crate::config::Role;

/// One feed, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FeedItem {
    /// Feed name.
    name: String,
    /// `open` or `secure`.
    channel: String,
    /// `ACTUAL`, `EXERCISE` or `TEST`.
    mode: String,
    /// Highest input class it takes.
    max_class: String,
    /// A region is stale after this many seconds without a report.
    stale_after_s: f64,
    /// Updates so far.
    sequence: u64,
    /// Regions in the roll-up.
    regions: u32,
    /// Regions with a report.
    reporting: u32,
    /// Regions overdue.
    overdue: u32,
    /// Regions stale.
    stale: u32,
}

/// The feeds this node builds.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FeedList {
    /// One per configured feed.
    feeds: Vec<FeedItem>,
}

/// The feeds this node builds, with their state now.
#[utoipa::path(get, path = "/v1/feeds", tag = "feeds",
    responses((status = 200, description = "The feeds", body = FeedList)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<FeedList>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let feeds = state
        .service
        .feeds()
        .into_iter()
        .map(|f| FeedItem {
            name: f.spec.name,
            channel: f.spec.channel.as_str().to_owned(),
            mode: f.spec.mode.as_str().to_owned(),
            max_class: f.spec.max_class.as_str().to_owned(),
            stale_after_s: f.spec.stale_after_ms as f64 / 1000.0,
            sequence: f.sequence,
            regions: f.regions,
            reporting: f.reporting,
            overdue: f.overdue,
            stale: f.stale,
        })
        .collect();
    Ok(Json(FeedList { feeds }))
}

/// The latest roll-up of a feed, built now (`stale` and `overdue` as of
/// this moment).
#[utoipa::path(get, path = "/v1/feeds/{name}", tag = "feeds",
    params(("name" = String, Path, description = "The feed's name")),
    responses(
        (status = 200, description = "The NationalRollup, proto3 JSON mapping", body = Object),
        (status = 404, description = "This node builds no such feed", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<pb::NationalRollup>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    state.service.feed(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this node builds no feed {name:?}"),
        )
    })
}
