//! The HTTP server under the API, with its resources bounded (DESIGN §5
//! property 8): at most `api.max_connections` TCP connections, each served
//! as HTTP/1.1 with a header timeout (which also closes a kept-alive
//! connection that sends nothing); at most `api.max_requests` requests in
//! handling; a body read only after the caller's credential is checked, up
//! to its limit and within `api.body_timeout`.
//!
//! Over a cap the answer is `503` with `Retry-After` (a connection over
//! `max_connections` gets it written raw and is closed), a body over its
//! limit `413` (from its `Content-Length`, before a byte of it is read), a
//! body that does not arrive in time `408`.
//!
//! Not here: who may do what (`authorize`, the session guard).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{ApiError, ApiState, MAX_BODY};
use crate::config::ApiConfig;
use crate::error::NodeError;

/// The largest body of a sign-in (`{"token": "..."}`).
const MAX_SIGN_IN_BODY: usize = 4096;

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 * 1024;

/// How long open connections get to finish when the node stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The body of the raw `503` to a connection over the cap.
const BUSY_BODY: &str = r#"{"error":"too many connections to this API; retry shortly"}"#;

/// The whole raw `503` answer, head and body.
fn busy_answer() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    )
}

/// One cap: places taken and given back, and how many there are.
#[derive(Debug)]
pub(super) struct Cap {
    places: Arc<Semaphore>,
    max: usize,
}

impl Cap {
    fn new(max: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A place, held until the permit is dropped; `Err` if none is free.
    pub(super) fn take(&self) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        Arc::clone(&self.places).try_acquire_owned()
    }

    /// Places taken, of the maximum.
    pub(super) fn used(&self) -> super::status::Use {
        super::status::Use::new(self.max.saturating_sub(self.places.available_permits()), self.max)
    }
}

/// What the server holds at once, against its caps (shown in `/v1/status`).
#[derive(Debug)]
pub(super) struct Usage {
    /// `api.max_connections`.
    pub(super) connections: Cap,
    /// `api.max_requests`.
    pub(super) requests: Cap,
    /// `api.max_event_streams`.
    pub(super) event_streams: Cap,
}

impl Usage {
    pub(super) fn new(api: &ApiConfig) -> Arc<Self> {
        Arc::new(Self {
            connections: Cap::new(api.max_connections),
            requests: Cap::new(api.max_requests),
            event_streams: Cap::new(api.max_event_streams),
        })
    }
}

/// Serves `app` on `listener` until `cancel`; then lets open connections
/// finish for a few seconds.
pub(super) async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    api: &ApiConfig,
    usage: Arc<Usage>,
    cancel: CancellationToken,
) -> Result<(), NodeError> {
    let (stop, _) = watch::channel(());
    let mut conns = JoinSet::new();
    loop {
        let (stream, _remote) = tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: the next accept
                    // would fail the same way at once, so pause briefly.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = usage.connections.take() else {
            // One non-blocking write into the socket's empty send buffer,
            // then closed: a flood over the cap costs no task and no wait.
            let _ = stream.try_write(busy_answer().as_bytes());
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stopped = stop.subscribe();
        let header_timeout = api.header_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended");
                    }
                }
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(stop);
    if tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        conns.abort_all();
    }
    Ok(())
}

/// Admits a request: a slot among `api.max_requests`, then, for a request
/// with a body, the caller's credential checked before the body is read,
/// and the body read whole within its limit and `api.body_timeout`.
pub(super) async fn admit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Ok(_slot) = state.usage.requests.take() else {
        return ApiError::busy("too many requests in progress at this API; retry shortly").into_response();
    };
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    // Signing in is how a credential is got, and signing out needs none
    // (it answers 204 either way): their bodies are small and capped.
    let session = req.uri().path() == "/v1/session";
    // The credential first: nobody without one makes us hold a body.
    if !session && let Err(e) = super::caller_role(&state, req.headers()) {
        return e.into_response();
    }
    let limit = if session { MAX_SIGN_IN_BODY } else { MAX_BODY };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limit);
    let bytes = match tokio::time::timeout(state.body_timeout, read).await {
        Err(_) => {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(state.body_timeout)
                ),
            )
            .into_response();
        }
        Ok(Err(e)) if is_length_limit(&e) => return too_large(),
        Ok(Err(e)) => {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}"))
                .into_response();
        }
        Ok(Ok(b)) => b,
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Whether reading a body failed on its length limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}
