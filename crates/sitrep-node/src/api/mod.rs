//! The local HTTP API (DESIGN §9), the top layer of the crate: submit
//! reports, follow their delivery, read the inbox and the feeds built here,
//! watch status and metrics.
//! Bearer tokens with roles `reporter`, `reader`, `operator`; JSON field
//! names and enum spellings are the proto's. Every route is declared once,
//! with its OpenAPI 3.1 description (utoipa), and served at
//! `/v1/openapi.json`.
//!
//! Not here: what the operations do (`service`); this layer parses, checks
//! the token, calls the service and shapes the answer.

mod console;
// utoipa's `path` macro spells the types it is given as qualified paths.
#[allow(unused_qualifications)]
mod feeds;
#[allow(unused_qualifications)]
mod history;
#[allow(unused_qualifications)]
mod query;
#[allow(unused_qualifications)]
mod region;
#[allow(unused_qualifications)]
mod reporting;
#[allow(unused_qualifications)]
mod server;
#[allow(unused_qualifications)]
mod session;
#[allow(unused_qualifications)]
mod status;
#[allow(unused_qualifications)]
mod submit;

#[doc(hidden)]
pub use submit::parse_submit_body;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sitrep_core::report::FieldError;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{ApiConfig, Role};
use crate::error::NodeError;
use crate::service::Service;

/// 8 MiB: a 4 MiB report as JSON, with room.
const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Clone)]
struct ApiState {
    service: Service,
    /// SHA-256 of each token → role: compared as digests, so the comparison
    /// time says nothing about the token.
    tokens: Arc<Vec<([u8; 32], Role)>>,
    /// `/v1/openapi.json`, serialized once at start.
    openapi: axum::body::Bytes,
    /// Ends the event streams when the node stops.
    cancel: CancellationToken,
    /// Console sessions.
    sessions: Arc<session::Sessions>,
    /// The last hour of counters.
    history: history::History,
    /// The last report submitted through this API (its body as sent, with
    /// `id` and `submitted_ms`), for "copy from my last report". In memory
    /// only: a report's clear text is never written outside its sealed
    /// envelope.
    last_report: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
    /// Connections, requests and event streams held, against their caps.
    usage: Arc<server::Usage>,
    /// `api.body_timeout`.
    body_timeout: Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sitrep node API",
        description = "The local HTTP API of a sitrep node: submit situation reports, follow their \
                       delivery, read the inbox, watch status and metrics. See docs/api.md."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "reports", description = "Submit situation reports and follow their delivery (reporter)"),
        (name = "inbox", description = "Reports delivered to this node (reader)"),
        (name = "feeds", description = "National feeds: roll-ups, live events, subscriptions, verification (reader)"),
        (name = "operations", description = "Status, metrics, health (operator)"),
        (name = "console", description = "Console sessions: a token exchanged for a cookie"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme every protected route refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Every route with its description, and the OpenAPI document they make.
fn router() -> (axum::Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(submit::submit_report))
        .routes(routes!(reporting::options))
        .routes(routes!(reporting::last))
        .routes(routes!(query::report_status))
        .routes(routes!(query::inbox))
        .routes(routes!(feeds::list))
        .routes(routes!(feeds::show))
        .routes(routes!(feeds::events))
        .routes(routes!(region::region))
        .routes(routes!(feeds::subscribe))
        .routes(routes!(feeds::unsubscribe))
        .routes(routes!(feeds::verify))
        .routes(routes!(status::status))
        .routes(routes!(history::history))
        .routes(routes!(status::metrics))
        .routes(routes!(status::healthz))
        .routes(routes!(status::readyz))
        .routes(routes!(openapi_json))
        .routes(routes!(session::sign_in, session::current, session::sign_out))
        .split_for_parts()
}

/// The OpenAPI 3.1 description of this API, as served at `/v1/openapi.json`.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    router().1
}

pub(crate) async fn serve(
    service: Service,
    api: ApiConfig,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), NodeError> {
    let (app, doc) = router();
    let openapi = serde_json::to_vec(&doc)
        .map_err(|e| NodeError::Task(format!("HTTP API: cannot serialize the OpenAPI document: {e}")))?;
    let state = ApiState {
        usage: server::Usage::new(&api),
        body_timeout: api.body_timeout,
        history: history::start(service.clone(), cancel.clone()),
        sessions: session::Sessions::new(api.session_ttl, api.max_sessions),
        last_report: Arc::default(),
        service,
        openapi: openapi.into(),
        cancel: cancel.clone(),
        tokens: Arc::new(
            api.tokens
                .iter()
                .map(|(t, r)| (sitrep_crypto::sha256(t.as_bytes()), *r))
                .collect(),
        ),
    };
    let app = app
        .route("/", axum::routing::get(console::index))
        .route("/console/{file}", axum::routing::get(console::asset))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), server::admit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::guard,
        ))
        .with_state(state.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), "HTTP API listening");
    server::run(listener, app, &api, Arc::clone(&state.usage), cancel).await
}

/// `GET /v1/openapi.json`: this description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json")))]
async fn openapi_json(State(state): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi).into_response()
}

/// One invalid field.
#[derive(Debug, Serialize, ToSchema)]
struct FieldProblem {
    /// The field's path, e.g. `report.beds[0].occupied`.
    field: String,
    /// What is wrong with it.
    problem: String,
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorBody {
    /// What went wrong.
    error: String,
    /// For `400`: every invalid field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldProblem>,
}

/// An API error: status, message, and field errors for 400s.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error: String,
    errors: Vec<FieldError>,
    /// Send `Retry-After: 1` (a cap that frees up soon).
    retry_soon: bool,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            errors: Vec::new(),
            retry_soon: false,
        }
    }

    fn fields(mut errors: Vec<FieldError>) -> Self {
        errors.sort();
        Self {
            status: StatusCode::BAD_REQUEST,
            error: format!("{} invalid field(s)", errors.len()),
            errors,
            retry_soon: false,
        }
    }

    /// `503` with `Retry-After: 1`: a cap is reached.
    fn busy(why: &str) -> Self {
        Self {
            retry_soon: true,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, why)
        }
    }

    fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            errors: self
                .errors
                .into_iter()
                .map(|e| FieldProblem {
                    field: e.field,
                    problem: e.problem,
                })
                .collect(),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.retry_soon {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The caller may act as `role`: by a bearer token of that role, or by a
/// console session signed in with one (the guard has checked a session's
/// state changes for CSRF already).
fn authorize(state: &ApiState, headers: &HeaderMap, role: Role) -> Result<(), ApiError> {
    if caller_role(state, headers)? == role {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this token's role may not do this; it needs the {role:?} role"),
        ))
    }
}

/// The caller's role: from a bearer token, or from a console session when
/// there is no `Authorization` header. `401` if neither is valid.
fn caller_role(state: &ApiState, headers: &HeaderMap) -> Result<Role, ApiError> {
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(id) = session::cookie(headers)
    {
        return match state.sessions.lookup(id, crate::clock::now_ms()) {
            session::Lookup::Valid(s) => Ok(s.role),
            l => Err(session::not_signed_in(&l)),
        };
    }
    let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let digest = sitrep_crypto::sha256(token.trim().as_bytes());
    state
        .tokens
        .iter()
        .find(|(d, _)| *d == digest)
        .map(|(_, r)| *r)
        .ok_or_else(unauthorized)
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(ms: i64) -> String {
    u64::try_from(ms).map_or_else(
        |_| "1970-01-01T00:00:00Z".into(),
        |ms| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_openapi_3_1_and_round_trips() {
        let doc = openapi();
        let json = serde_json::to_value(&doc).expect("serializes");
        assert_eq!(json["openapi"], "3.1.0");
        let back: utoipa::openapi::OpenApi = serde_json::from_value(json.clone()).expect("parses back");
        assert_eq!(serde_json::to_value(&back).expect("serializes"), json);
    }
}
