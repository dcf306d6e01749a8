//! Console sessions and the guard every answer passes: a role's token is
//! exchanged for a session cookie (`HttpOnly`, `SameSite=Strict`, with an
//! expiry), state-changing requests made with that cookie must come from
//! this origin and carry the session's CSRF token, and every answer gets
//! the security headers (CSP without inline script, no framing, no
//! referrer, no caching of data).
//!
//! Sessions live in memory (a restart signs everyone out), at most
//! `api.max_sessions` of them; the table holds SHA-256 digests of the
//! session ids, never the ids. Bearer tokens work as before: a request with
//! an `Authorization` header is not a cookie request and needs no CSRF token.
//!
//! Not here: what a role may do (`authorize` in the parent module).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiState, ErrorBody, rfc3339};
use crate::clock::now_ms;
use crate::config::Role;

/// The session cookie's name.
pub(super) const COOKIE: &str = "sitrep_session";
/// The header a cookie request carries its CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

/// The console's Content-Security-Policy: scripts, styles and images only
/// from this origin, no inline script, no framing, forms post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One signed-in browser.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) role: Role,
    pub(super) expires_ms: i64,
    /// The CSRF token the page sends back on state changes (in memory
    /// only; useless without the cookie).
    csrf: String,
}

/// What a session cookie turned out to be.
#[derive(Debug)]
pub(super) enum Lookup {
    Valid(Session),
    Expired,
    Unknown,
}

/// The sessions held, by the digest of their id.
#[derive(Debug)]
pub(super) struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

/// A new session's secrets, handed to the browser once.
struct Issued {
    id: String,
    session: Session,
}

fn random_hex() -> Result<String, ApiError> {
    let mut b = [0_u8; 32];
    sitrep_crypto::random_bytes(&mut b).map_err(ApiError::unavailable)?;
    Ok(hex::encode(b))
}

impl Sessions {
    pub(super) fn new(ttl: Duration, max: usize) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            max,
            map: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn issue(&self, role: Role, now: i64) -> Result<Issued, ApiError> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let session = Session {
            role,
            expires_ms: now.saturating_add(ttl),
            csrf,
        };
        let mut map = self.table();
        // The cap is per role: one role's sign-ins cannot lock out another.
        let held = |map: &HashMap<[u8; 32], Session>| map.values().filter(|s| s.role == role).count();
        if held(&map) >= self.max {
            map.retain(|_, s| s.expires_ms > now);
        }
        if held(&map) >= self.max {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} console sessions of this role are open (api.max_sessions); sign out elsewhere or wait for one to expire",
                    self.max
                ),
            ));
        }
        map.insert(sitrep_crypto::sha256(id.as_bytes()), session.clone());
        Ok(Issued { id, session })
    }

    pub(super) fn lookup(&self, id: &str, now: i64) -> Lookup {
        let key = sitrep_crypto::sha256(id.as_bytes());
        // An expired session stays until a sign-in needs its room, so that
        // every request made with it is told it expired.
        match self.table().get(&key) {
            None => Lookup::Unknown,
            Some(s) if s.expires_ms <= now => Lookup::Expired,
            Some(s) => Lookup::Valid(s.clone()),
        }
    }

    fn end(&self, id: &str) {
        self.table().remove(&sitrep_crypto::sha256(id.as_bytes()));
    }
}

/// A long-lived answer (an event stream) opened with a console session:
/// it ends when the session expires or signs out.
pub(super) struct Bound {
    sessions: Arc<Sessions>,
    id: String,
    expires_ms: i64,
}

impl Bound {
    /// The session a cookie request was made with; `None` for a bearer
    /// request (bearer tokens do not expire).
    pub(super) fn of(state: &ApiState, headers: &HeaderMap) -> Option<Self> {
        if headers.contains_key(header::AUTHORIZATION) {
            return None;
        }
        let id = cookie(headers)?;
        match state.sessions.lookup(id, now_ms()) {
            Lookup::Valid(s) => Some(Self {
                sessions: state.sessions.clone(),
                id: id.to_owned(),
                expires_ms: s.expires_ms,
            }),
            _ => None,
        }
    }

    /// Whether the session still holds.
    pub(super) fn valid(&self) -> bool {
        matches!(self.sessions.lookup(&self.id, now_ms()), Lookup::Valid(_))
    }

    /// When the session expires, on the runtime's clock.
    pub(super) fn expiry(&self) -> tokio::time::Instant {
        let left = u64::try_from(self.expires_ms.saturating_sub(now_ms())).unwrap_or(0);
        tokio::time::Instant::now() + Duration::from_millis(left)
    }
}

/// The session id in the request's cookies, if any.
pub(super) fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// A refusal for a session that is not (or no longer) valid.
pub(super) fn not_signed_in(l: &Lookup) -> ApiError {
    let why = match l {
        Lookup::Expired => "the session has expired; sign in again",
        _ => "unknown session; sign in again",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, why)
}

/// Refuses a request another site's page made: `Sec-Fetch-Site` must be
/// `same-origin` or `none` (typed in), and `Origin`, when sent, must be
/// this host.
fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    let refuse = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("cross-site request refused: {why}"),
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(refuse(format!("Sec-Fetch-Site is {site}")));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(authority)
            .unwrap_or("");
        let origin = origin.to_str().unwrap_or("null");
        let ours = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o == host);
        if !ours {
            return Err(refuse(format!("Origin {origin} is not this console")));
        }
    }
    Ok(())
}

/// The guard around every route: cross-site checks and the CSRF token for
/// state changes made with the cookie, then the security headers.
pub(super) async fn guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let headers = req.headers();
    if !safe && !headers.contains_key(header::AUTHORIZATION) {
        if let Err(e) = same_origin(headers, req.uri().authority().map(|a| a.as_str())) {
            return secured(e.into_response());
        }
        if let Some(id) = cookie(headers)
            && let Lookup::Valid(s) = state.sessions.lookup(id, now_ms())
        {
            // Compared as digests: the time taken says nothing about the token.
            let sent = headers
                .get(CSRF_HEADER)
                .map(|v| sitrep_crypto::sha256(v.as_bytes()));
            if sent != Some(sitrep_crypto::sha256(s.csrf.as_bytes())) {
                return secured(
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "missing or wrong CSRF token; reload the console",
                    )
                    .into_response(),
                );
            }
        }
    }
    let data = !(req.uri().path() == "/" || req.uri().path().starts_with("/console/"));
    let mut resp = next.run(req).await;
    if data {
        // Data is never kept, not even by a stream's own `no-cache`.
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    secured(resp)
}

/// Adds the security headers; answers that set no caching policy are not
/// cached.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The body of `POST /v1/session`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignIn {
    /// One of this node's API tokens; its role is the session's.
    token: String,
}

/// A console session, as the page sees it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionView {
    /// `reporter`, `reader` or `operator`.
    role: &'static str,
    /// This node's id.
    node: String,
    /// When the session ends (RFC 3339).
    expires: String,
    /// Send this back in `X-CSRF-Token` on every state-changing request.
    csrf_token: String,
}

impl SessionView {
    fn of(state: &ApiState, s: Session) -> Self {
        Self {
            role: s.role.as_str(),
            node: state.service.node_id().to_string(),
            expires: rfc3339(s.expires_ms),
            csrf_token: s.csrf,
        }
    }
}

fn set_cookie(value: &str, max_age_s: u64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}"
    ))
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Exchanges a token for a session cookie.
#[utoipa::path(post, path = "/v1/session", tag = "console",
    request_body(content = SignIn, description = "A role's API token"),
    responses(
        (status = 201, description = "Signed in; the cookie is set", body = SessionView),
        (status = 400, description = "Not a JSON body with a token", body = ErrorBody),
        (status = 401, description = "Unknown token", body = ErrorBody),
        (status = 403, description = "A request from another site", body = ErrorBody),
        (status = 503, description = "Too many sessions open", body = ErrorBody),
    ))]
pub(super) async fn sign_in(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "send the token as application/json",
        ));
    }
    let SignIn { token } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let digest = sitrep_crypto::sha256(token.trim().as_bytes());
    let Some(role) = state.tokens.iter().find(|(d, _)| *d == digest).map(|(_, r)| *r) else {
        tracing::warn!("console sign-in with an unknown token refused");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"));
    };
    // Signing in again replaces the session this browser held.
    if let Some(old) = cookie(&headers) {
        state.sessions.end(old);
    }
    let issued = state.sessions.issue(role, now_ms())?;
    tracing::info!(role = role.as_str(), "console sign-in");
    let view = SessionView::of(&state, issued.session);
    let cookie = set_cookie(&issued.id, state.sessions.ttl.as_secs().max(1))?;
    Ok((StatusCode::CREATED, [(header::SET_COOKIE, cookie)], Json(view)).into_response())
}

/// The session this browser holds, with its CSRF token (the page reads it
/// here after a reload; the cookie itself is out of the script's reach).
#[utoipa::path(get, path = "/v1/session", tag = "console",
    responses(
        (status = 200, description = "Signed in", body = SessionView),
        (status = 401, description = "No session, or it expired", body = ErrorBody),
    ))]
pub(super) async fn current(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let id = cookie(&headers).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"))?;
    match state.sessions.lookup(id, now_ms()) {
        Lookup::Valid(s) => Ok(Json(SessionView::of(&state, s))),
        l => Err(not_signed_in(&l)),
    }
}

/// Signs out: the session ends here and the cookie is cleared.
#[utoipa::path(delete, path = "/v1/session", tag = "console",
    responses(
        (status = 204, description = "Signed out"),
        (status = 403, description = "Cross-site, or without the CSRF token", body = ErrorBody),
    ))]
pub(super) async fn sign_out(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(id) = cookie(&headers) {
        state.sessions.end(id);
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, set_cookie("", 0)?)]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sitrep_session=abc; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("sitrep_session_x=1; sitrep_session="),
        );
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn a_session_expires_and_the_table_is_capped() {
        let s = Sessions::new(Duration::from_secs(10), 2);
        let a = s.issue(Role::Reader, 0).expect("first");
        assert!(matches!(s.lookup(&a.id, 9_999), Lookup::Valid(v) if v.role == Role::Reader));
        assert!(matches!(s.lookup(&a.id, 10_000), Lookup::Expired));
        assert!(
            matches!(s.lookup(&a.id, 10_001), Lookup::Expired),
            "still expired, not unknown"
        );
        assert!(matches!(s.lookup("another", 10_000), Lookup::Unknown));
        s.issue(Role::Reader, 20_000).expect("second");
        s.issue(Role::Reader, 20_000).expect("third");
        let full = s.issue(Role::Reader, 20_000).err().expect("over the cap");
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
        // Expired sessions make room.
        s.issue(Role::Reader, 40_000).expect("after expiry");
    }

    #[test]
    fn another_site_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7700"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:7700"));
        assert!(same_origin(&h, None).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(same_origin(&h, None).is_err());
        h.remove("sec-fetch-site");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9999"));
        assert!(same_origin(&h, None).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h, None).is_err());
    }
}
