//! The one place the node reads the wall clock; everything below takes `now_ms`.
//!
//! Not here: timers and timeouts (tokio's clock, so tests can pause it).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. A clock before 1970 reads as 0, which
/// every expiry and validity check then refuses (fail closed).
#[must_use]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}
