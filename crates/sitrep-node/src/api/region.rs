//! A region's history in a feed: its row in each roll-up held here, one
//! entry per change (`GET /v1/feeds/{name}/regions/{code}`), for the
//! console's region view.
//!
//! Not here: the feeds themselves (`feeds`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use sitrep_proto::v1 as pb;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, authorize, rfc3339};
use crate::config::Role;

/// The region's row as one roll-up had it.
#[derive(Debug, Serialize, ToSchema)]
struct RegionEntry {
    /// The roll-up's sequence.
    sequence: u64,
    /// When that roll-up was built.
    built: String,
    /// The region's row (proto3 JSON mapping of `sitrep.v1.RegionRow`).
    #[schema(value_type = Object)]
    row: pb::RegionRow,
}

/// A region's rows over the roll-ups held.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RegionHistory {
    feed: String,
    region_code: String,
    region_name: String,
    /// Oldest first; a roll-up whose row is the same as the one before is
    /// left out.
    entries: Vec<RegionEntry>,
}

/// The history of one region in a feed: its row in each of the last 256
/// roll-ups held here, where it changed.
#[utoipa::path(get, path = "/v1/feeds/{name}/regions/{code}", tag = "feeds",
    params(
        ("name" = String, Path, description = "The feed's name"),
        ("code" = String, Path, description = "The region's SCB county code, e.g. 03"),
    ),
    responses(
        (status = 200, description = "The region's rows, oldest first", body = RegionHistory),
        (status = 404, description = "No such feed here, or no such region in it", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn region(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, code)): Path<(String, String)>,
) -> Result<Json<RegionHistory>, ApiError> {
    authorize(&state, &headers, Role::Reader)?;
    let mut entries: Vec<RegionEntry> = Vec::new();
    for r in state.service.feed_history(&name) {
        let Some(row) = r.regions.iter().find(|row| row.region_code == code) else {
            continue;
        };
        if entries.last().is_some_and(|e| e.row == *row) {
            continue;
        }
        entries.push(RegionEntry {
            sequence: r.sequence,
            built: rfc3339(r.built_unix_ms),
            row: row.clone(),
        });
    }
    let Some(last) = entries.last() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no roll-up of feed {name:?} held here has region {code:?}"),
        ));
    };
    Ok(Json(RegionHistory {
        feed: name,
        region_code: code,
        region_name: last.row.region_name.clone(),
        entries,
    }))
}
