//! Small helpers shared by the subcommands.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> anyhow::Result<i64> {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?;
    i64::try_from(d.as_millis()).context("system clock out of range")
}

/// RFC 3339 in UTC for milliseconds since the epoch.
pub(crate) fn rfc3339(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        Err(_) => format!("{ms} ms before 1970"),
    }
}

/// Parses RFC 3339 into milliseconds since the epoch.
pub(crate) fn parse_rfc3339(s: &str) -> anyhow::Result<i64> {
    let t = humantime::parse_rfc3339_weak(s).with_context(|| format!("{s:?} is not an RFC 3339 time"))?;
    let d = t.duration_since(UNIX_EPOCH).context("time before 1970")?;
    i64::try_from(d.as_millis()).context("time out of range")
}
