//! The local HTTP API (DESIGN §9): submit reports, follow their delivery,
//! read the inbox, watch status and metrics. Bearer tokens with roles
//! `reporter`, `reader`, `operator`; JSON field names and enum spellings are
//! the proto's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sitrep_core::report::FieldError;
use sitrep_core::{Channel, Class, ContentType, Label, MessageId, Mode, NodeId, Precedence};
use sitrep_proto::v1 as pb;

use crate::clock::now_ms;
use crate::config::{ApiConfig, Role};
use crate::node::{Content, NodeError, Submission, SubmitError};
use crate::shared::{Shared, lock};

/// 8 MiB: a 4 MiB report as JSON, with room.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// 500 inbox entries per page at most.
const MAX_PAGE: usize = 500;

#[derive(Clone)]
struct ApiState {
    shared: Arc<Shared>,
    /// SHA-256 of each token → role: compared as digests, so the comparison
    /// time says nothing about the token.
    tokens: Arc<Vec<([u8; 32], Role)>>,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    api: ApiConfig,
    listener: tokio::net::TcpListener,
) -> Result<(), NodeError> {
    let state = ApiState {
        shared: Arc::clone(&shared),
        tokens: Arc::new(
            api.tokens
                .iter()
                .map(|(t, r)| (sitrep_crypto::sha256(t.as_bytes()), *r))
                .collect(),
        ),
    };
    let app = Router::new()
        .route("/v1/reports", post(submit_report))
        .route("/v1/reports/{id}", get(report_status))
        .route("/v1/inbox", get(inbox))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    tracing::info!(addr = ?listener.local_addr().ok(), "HTTP API listening");
    let cancel = shared.cancel.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(|e| NodeError::Task(format!("HTTP API: {e}")))
}

/// An API error: status, message, and field errors for 400s.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: String,
    errors: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            errors: Vec::new(),
        }
    }

    fn fields(errors: Vec<FieldError>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: format!("{} invalid field(s)", errors.len()),
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if !self.errors.is_empty() {
            body["errors"] = self
                .errors
                .iter()
                .map(|e| json!({ "field": e.field, "problem": e.problem }))
                .collect();
        }
        (self.status, axum::Json(body)).into_response()
    }
}

fn authorize(state: &ApiState, headers: &HeaderMap, role: Role) -> Result<(), ApiError> {
    let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let digest = sitrep_crypto::sha256(token.trim().as_bytes());
    match state.tokens.iter().find(|(d, _)| *d == digest) {
        None => Err(unauthorized()),
        Some((_, r)) if *r == role => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token's role may not do this; it needs the {role:?} role"),
        )),
    }
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

pub(crate) fn rfc3339(ms: i64) -> String {
    u64::try_from(ms).map_or_else(
        |_| "1970-01-01T00:00:00Z".into(),
        |ms| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    )
}

fn parse_time(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| "not a whole number of ms".to_owned()),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
            .and_then(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map_err(|_| "before 1970".to_owned())
                    .and_then(|d| i64::try_from(d.as_millis()).map_err(|_| "out of range".to_owned()))
            }),
        _ => Err("must be an RFC 3339 time or ms since the epoch".into()),
    }
}

/// `POST /v1/reports`: validate, check policy, seal, store; `202 {id}` once durable.
async fn submit_report(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Reporter)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::fields(vec![field("body", format!("not JSON: {e}"))]))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::fields(vec![field("body", "must be a JSON object")]));
    };
    let mut errors = Vec::new();
    const KNOWN: [&str; 7] = [
        "report",
        "label",
        "precedence",
        "mode",
        "recipients",
        "expires",
        "author",
    ];
    for k in obj.keys() {
        if !KNOWN.contains(&k.as_str()) {
            errors.push(field(k.clone(), "unknown field"));
        }
    }
    let report = match obj.get("report") {
        None => {
            errors.push(field("report", "is required"));
            None
        }
        Some(r) => match serde_json::from_value::<pb::SituationReport>(r.clone()) {
            Ok(r) => {
                if let Err(es) = sitrep_core::report::validate(&r) {
                    errors.extend(
                        es.into_iter()
                            .map(|e| field(format!("report.{}", e.field), e.problem)),
                    );
                }
                Some(r)
            }
            Err(e) => {
                errors.push(field("report", e.to_string()));
                None
            }
        },
    };
    let label = match obj.get("label") {
        None => {
            errors.push(field("label", "is required"));
            None
        }
        Some(l) => {
            let class = l.get("class").and_then(Value::as_str).unwrap_or_default();
            let mut caveats = Vec::new();
            match l.get("caveats") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) => {
                    for (i, c) in a.iter().enumerate() {
                        match c.as_str() {
                            Some(c) => caveats.push(c.to_owned()),
                            None => errors.push(field(format!("label.caveats[{i}]"), "must be a string")),
                        }
                    }
                }
                Some(_) => errors.push(field("label.caveats", "must be a list of strings")),
            }
            match Class::parse(class) {
                None => {
                    errors.push(field(
                        "label.class",
                        format!(
                            "{class:?} is not OPEN, SENSITIVE, RESTRICTED, CONFIDENTIAL, SECRET or TOP_SECRET"
                        ),
                    ));
                    None
                }
                Some(c) => {
                    let wire = pb::Label {
                        class: c.to_proto() as i32,
                        caveats,
                    };
                    match Label::from_proto(Some(&wire)) {
                        Ok(l) => Some(l),
                        Err(e) => {
                            errors.push(field("label.caveats", e.to_string()));
                            None
                        }
                    }
                }
            }
        }
    };
    let precedence = match obj.get("precedence") {
        None | Some(Value::Null) => Some(Precedence::Routine),
        Some(Value::String(p)) => Precedence::parse(p).or_else(|| {
            errors.push(field(
                "precedence",
                format!("{p:?} is not ROUTINE, PRIORITY, IMMEDIATE or FLASH"),
            ));
            None
        }),
        Some(_) => {
            errors.push(field(
                "precedence",
                "must be a string: ROUTINE, PRIORITY, IMMEDIATE or FLASH",
            ));
            None
        }
    };
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => {
            errors.push(field("mode", "is required: ACTUAL, EXERCISE or TEST"));
            None
        }
        Some(Value::String(m)) => Mode::parse(m).or_else(|| {
            errors.push(field("mode", format!("{m:?} is not ACTUAL, EXERCISE or TEST")));
            None
        }),
        Some(_) => {
            errors.push(field("mode", "must be a string: ACTUAL, EXERCISE or TEST"));
            None
        }
    };
    let mut recipients = Vec::new();
    match obj.get("recipients").and_then(Value::as_array) {
        None => errors.push(field("recipients", "is required: a list of node ids")),
        Some(list) if list.is_empty() => {
            errors.push(field("recipients", "at least one recipient is required"))
        }
        Some(list) => {
            for (i, r) in list.iter().enumerate() {
                match r.as_str().map(NodeId::new) {
                    Some(Ok(id)) => recipients.push(id),
                    Some(Err(e)) => errors.push(field(format!("recipients[{i}]"), e.to_string())),
                    None => errors.push(field(format!("recipients[{i}]"), "must be a string")),
                }
            }
        }
    }
    let expires_ms = match obj.get("expires") {
        None | Some(Value::Null) => None,
        Some(v) => match parse_time(v) {
            Ok(ms) => Some(ms),
            Err(e) => {
                errors.push(field("expires", e));
                None
            }
        },
    };
    let author = match obj.get("author") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(a)) => a.clone(),
        Some(_) => {
            errors.push(field("author", "must be a string"));
            String::new()
        }
    };
    if !errors.is_empty() {
        errors.sort();
        return Err(ApiError::fields(errors));
    }
    let (Some(report), Some(label), Some(precedence), Some(mode)) = (report, label, precedence, mode) else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid submission"));
    };
    let sub = Submission {
        author,
        label,
        precedence,
        mode,
        recipients,
        expires_ms,
        content: Content::Report(report),
    };
    match crate::node::submit(&state.shared, sub).await {
        Ok(id) => Ok((StatusCode::ACCEPTED, axum::Json(json!({ "id": id.to_string() }))).into_response()),
        Err(SubmitError::Invalid(es)) => Err(ApiError::fields(
            es.into_iter()
                .map(|e| field(format!("report.{}", e.field), e.problem))
                .collect(),
        )),
        Err(SubmitError::Bad { field: f, problem }) => Err(ApiError::fields(vec![field(f, problem)])),
        Err(e @ (SubmitError::Policy(_) | SubmitError::NoRoute(_))) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e @ SubmitError::Store(_)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `GET /v1/reports/{id}`: delivery state per recipient.
async fn report_status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Reporter)?;
    let mid = MessageId::parse(&id)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("{id:?} is not a message id")))?;
    let records = crate::node::delivery(&state.shared, &mid)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if records.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no report {mid} was submitted here"),
        ));
    }
    let recipients: Vec<Value> = records
        .iter()
        .map(|d| {
            json!({
                "recipient": d.recipient.to_string(),
                "state": d.state.as_str(),
                "hop": d.hop.as_ref().map(ToString::to_string),
                "at": rfc3339(d.at_ms),
                "reason": if d.reason.is_empty() { Value::Null } else { Value::String(d.reason.clone()) },
            })
        })
        .collect();
    let done = records.iter().all(|d| d.state.is_final());
    Ok(axum::Json(json!({ "id": mid.to_string(), "final": done, "recipients": recipients })).into_response())
}

#[derive(Debug, Deserialize)]
struct InboxQuery {
    after: Option<String>,
    limit: Option<String>,
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

/// `GET /v1/inbox?after=CURSOR&limit=N`: reports received here, opened.
async fn inbox(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Result<Response, ApiError> {
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
        let after = if channel == Channel::Open {
            open_at
        } else {
            secure_at
        };
        let got = crate::node::inbox(&state.shared, channel, after, limit)
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        for r in got {
            if channel == Channel::Open {
                open_at = r.cursor;
            } else {
                secure_at = r.cursor;
            }
            let h = &r.header;
            let mut item = json!({
                "channel": channel.as_str(),
                "id": h.id.to_string(),
                "origin": h.origin.to_string(),
                "author": h.author,
                "created": rfc3339(h.created_ms),
                "expires": rfc3339(h.expires_ms),
                "received": rfc3339(r.received_ms),
                "label": { "class": h.label.class.as_str(), "caveats": h.label.caveats },
                "precedence": h.precedence.as_str(),
                "mode": h.mode.as_str(),
                "content_type": h.content_type.as_str(),
            });
            if h.content_type == ContentType::SituationReport
                && let Ok(report) = pb::SituationReport::decode(r.payload.as_slice())
            {
                item["report"] = serde_json::to_value(&report).unwrap_or(Value::Null);
            }
            items.push(item);
        }
    }
    Ok(axum::Json(json!({ "items": items, "next": format!("{open_at}.{secure_at}") })).into_response())
}

fn status_document(shared: &Shared) -> Value {
    let now = now_ms();
    let roster = shared.roster.get();
    let days = |until_ms: i64| (until_ms - now) as f64 / 86_400_000.0;
    let mut peers = Vec::new();
    let mut outboxes = Vec::new();
    let mut stores = Vec::new();
    for (channel, rt) in &shared.channels {
        for link in rt.links.values() {
            let st = lock(&link.state).clone();
            peers.push(json!({
                "peer": link.peer.to_string(),
                "channel": channel.as_str(),
                "address": lock(&link.addr).to_string(),
                "connected": st.connected,
                "last_seen": st.last_seen_ms.map(rfc3339),
                "rtt_ms": st.rtt.map(|d| d.as_secs_f64() * 1000.0),
                "last_error": st.last_error,
            }));
        }
        for h in sitrep_store::Storage::outbox_stats(&rt.store) {
            outboxes.push(json!({
                "channel": channel.as_str(),
                "next_hop": h.next_hop.to_string(),
                "depth": h.depth,
                "bytes": h.bytes,
                "oldest_age_s": h.oldest_queued_ms.map(|t| (now - t).max(0) as f64 / 1000.0),
            }));
        }
        stores.push(json!({
            "channel": channel.as_str(),
            "disk_bytes": sitrep_store::Storage::disk_bytes(&rt.store),
        }));
    }
    let counters = shared.counters.snapshot();
    let refusals: BTreeMap<&str, u64> = counters
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("refused.").map(|r| (r, *v)))
        .collect();
    json!({
        "node": shared.id.to_string(),
        "time": rfc3339(now),
        "roster": {
            "serial": roster.serial,
            "network": roster.network,
            "not_after": rfc3339(roster.not_after_ms),
            "days_left": days(roster.not_after_ms),
        },
        "certificates": shared.cert_not_after.iter().map(|(c, t)| json!({
            "channel": c.as_str(),
            "not_after": rfc3339(*t),
            "days_left": days(*t),
        })).collect::<Vec<_>>(),
        "peers": peers,
        "outboxes": outboxes,
        "counters": counters,
        "refusals": refusals,
        "stores": stores,
    })
}

/// `GET /v1/status` (operator).
async fn status(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Operator)?;
    Ok(axum::Json(status_document(&state.shared)).into_response())
}

/// `GET /metrics`: Prometheus text format, the same figures as `/v1/status`.
async fn metrics(State(state): State<ApiState>) -> Response {
    let s = &state.shared;
    let now = now_ms();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let label = |pairs: &[(&str, &str)]| -> String {
        let inner: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{{{}}}", inner.join(","))
    };
    let mut connected = Vec::new();
    let mut rtt = Vec::new();
    let mut depth = Vec::new();
    let mut bytes = Vec::new();
    let mut age = Vec::new();
    let mut disk = Vec::new();
    for (channel, rt) in &s.channels {
        for link in rt.links.values() {
            let st = lock(&link.state).clone();
            let l = label(&[("channel", channel.as_str()), ("peer", link.peer.as_str())]);
            connected.push((l.clone(), if st.connected { 1.0 } else { 0.0 }));
            if let Some(r) = st.rtt {
                rtt.push((l, r.as_secs_f64()));
            }
        }
        for h in sitrep_store::Storage::outbox_stats(&rt.store) {
            let l = label(&[("channel", channel.as_str()), ("next_hop", h.next_hop.as_str())]);
            depth.push((l.clone(), h.depth as f64));
            bytes.push((l.clone(), h.bytes as f64));
            age.push((
                l,
                h.oldest_queued_ms
                    .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            ));
        }
        disk.push((
            label(&[("channel", channel.as_str())]),
            sitrep_store::Storage::disk_bytes(&rt.store) as f64,
        ));
    }
    family(
        "sitrep_peer_connected",
        "gauge",
        "1 if the link to the peer is up.",
        connected,
    );
    family(
        "sitrep_peer_rtt_seconds",
        "gauge",
        "Round-trip time to the peer.",
        rtt,
    );
    family(
        "sitrep_outbox_depth",
        "gauge",
        "Copies queued for the next hop.",
        depth,
    );
    family(
        "sitrep_outbox_bytes",
        "gauge",
        "Envelope bytes queued for the next hop.",
        bytes,
    );
    family(
        "sitrep_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest queued copy.",
        age,
    );
    family(
        "sitrep_store_disk_bytes",
        "gauge",
        "Disk used by the channel's store.",
        disk,
    );
    let counters = s.counters.snapshot();
    let (refused, events): (Vec<_>, Vec<_>) = counters.iter().partition(|(k, _)| k.starts_with("refused."));
    family(
        "sitrep_refusals_total",
        "counter",
        "Refusals by reason.",
        refused
            .iter()
            .map(|(k, v)| (label(&[("reason", k.trim_start_matches("refused."))]), **v as f64))
            .collect(),
    );
    family(
        "sitrep_events_total",
        "counter",
        "Messages submitted, accepted, forwarded, delivered, expired, and other events.",
        events
            .iter()
            .map(|(k, v)| (label(&[("event", k.as_str())]), **v as f64))
            .collect(),
    );
    family(
        "sitrep_certificate_days_left",
        "gauge",
        "Days until the channel certificate expires.",
        s.cert_not_after
            .iter()
            .map(|(c, t)| {
                (
                    label(&[("channel", c.as_str())]),
                    (*t - now) as f64 / 86_400_000.0,
                )
            })
            .collect(),
    );
    let roster = s.roster.get();
    family(
        "sitrep_roster_serial",
        "gauge",
        "Serial of the roster in use.",
        vec![(String::new(), roster.serial as f64)],
    );
    family(
        "sitrep_roster_days_left",
        "gauge",
        "Days until the roster expires.",
        vec![(String::new(), (roster.not_after_ms - now) as f64 / 86_400_000.0)],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `GET /readyz`: 200 when the roster is valid now; 503 otherwise.
async fn readyz(State(state): State<ApiState>) -> Response {
    if state.shared.roster.get().is_valid_at(now_ms()) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "roster not valid now\n").into_response()
    }
}

/// A certificate file's end of validity, ms since the epoch.
pub(crate) fn cert_not_after_ms(path: &Path) -> Result<i64, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp().saturating_mul(1000))
}
