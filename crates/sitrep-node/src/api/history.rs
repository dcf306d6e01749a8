//! Counter history for the operator's charts: every ten seconds the node's
//! counters are sampled into a ring that covers the last hour, served at
//! `GET /v1/status/history`. In memory only; a restart starts it afresh.
//!
//! Not here: the counters (`metrics`), the live status (`status`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, authorize, rfc3339};
use crate::clock::now_ms;
use crate::config::Role;
use crate::metrics::Counters;
use crate::service::Service;

/// Time between samples.
pub(super) const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
const KEEP: usize = 360;

/// The series kept, by name: counters, summed over a prefix where it ends
/// in a dot.
const SERIES: [&str; 6] = [
    "submitted",
    "accepted",
    "forwarded",
    "delivered",
    "receipts",
    "refused.",
];

/// One sample: when, and each series' cumulative value.
type Sample = (i64, [u64; SERIES.len()]);

/// The ring of samples.
pub(super) type History = Arc<Mutex<VecDeque<Sample>>>;

fn sample(counters: &Counters, now: i64) -> Sample {
    let snap = counters.snapshot();
    let mut values = [0_u64; SERIES.len()];
    for (v, name) in values.iter_mut().zip(SERIES) {
        *v = if name.ends_with('.') {
            snap.iter()
                .filter(|(k, _)| k.starts_with(name))
                .map(|(_, n)| n)
                .sum()
        } else {
            snap.get(name).copied().unwrap_or(0)
        };
    }
    (now, values)
}

fn push(history: &History, s: Sample) {
    let mut h = history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if h.len() == KEEP {
        h.pop_front();
    }
    h.push_back(s);
}

/// Samples the counters every [`INTERVAL`] until `cancel`.
pub(super) fn start(service: Service, cancel: CancellationToken) -> History {
    let history = History::default();
    push(&history, sample(service.counters(), now_ms()));
    let ring = history.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => push(&ring, sample(service.counters(), now_ms())),
            }
        }
    });
    history
}

/// One series: cumulative values at each sample time.
#[derive(Debug, Serialize, ToSchema)]
struct Series {
    /// `submitted`, `accepted`, `forwarded`, `delivered`, `receipts`, or
    /// `refused` (every ingress refusal reason summed).
    name: &'static str,
    values: Vec<u64>,
}

/// The last hour of counters.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HistoryDocument {
    /// Seconds between samples.
    interval_s: u64,
    /// Sample times (RFC 3339), oldest first; the last is now.
    times: Vec<String>,
    series: Vec<Series>,
}

/// The node's counters over the last hour, sampled every ten seconds (the
/// last sample is taken now), for rate charts.
#[utoipa::path(get, path = "/v1/status/history", tag = "operations",
    responses(
        (status = 200, description = "Counter samples over the last hour", body = HistoryDocument),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Not the operator role", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn history(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<HistoryDocument>, ApiError> {
    authorize(&state, &headers, Role::Operator)?;
    let mut samples: Vec<Sample> = state
        .history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    samples.push(sample(state.service.counters(), now_ms()));
    Ok(Json(HistoryDocument {
        interval_s: INTERVAL.as_secs(),
        times: samples.iter().map(|(t, _)| rfc3339(*t)).collect(),
        series: SERIES
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name: name.trim_end_matches('.'),
                values: samples.iter().map(|(_, v)| v[i]).collect(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_one_hour() {
        let h = History::default();
        for t in 0..(KEEP as i64 + 5) {
            push(&h, (t, [0; SERIES.len()]));
        }
        let h = h.lock().expect("lock");
        assert_eq!(h.len(), KEEP);
        assert_eq!(h.front().map(|s| s.0), Some(5));
    }
}
