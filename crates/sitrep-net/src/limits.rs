//! Transport limits, set explicitly in one place (DESIGN §5 property 8).
//!
//! quinn's defaults are made for the open internet and are too generous for an exposed
//! daemon (the connection receive window is unbounded): every knob that bounds what a
//! peer can make us buffer is set here, from [`TransportLimits`].

use std::sync::Arc;
use std::time::Duration;

use crate::NetError;
use crate::frame::PREFIX_LEN;

/// 4 MiB + 4 KiB: DESIGN §4's frame limit is 4 MiB for the sealed body; the envelope,
/// signature, key wraps and `Transfer` fields around it take well under 4 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = (4 << 20) + 4096;

/// 128 bidirectional streams per connection: twice the 64 transfers in flight that the
/// throughput targets (DESIGN §10) are measured with.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;

/// 8 MiB per connection: what quinn buffers for one connection ahead of our reading,
/// two maximal frames; at 200 ms RTT that still carries 40 MB/s, four times what the
/// throughput target (DESIGN §10) needs.
pub const DEFAULT_CONNECTION_RECEIVE_WINDOW: u32 = 8 << 20;

/// 2 incoming connections per peer per channel: a peer needs one; the second lets a
/// restarted peer's new connection in while its old one has not timed out. A third
/// closes the oldest.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 2;

/// 16 MiB per peer: bytes of incoming frames being read or handled at once, over all of
/// that peer's connections on the channel (at least one maximal frame is always allowed).
/// With the receive windows, one peer holds at most
/// `max_connections_per_peer × connection_receive_window + peer_read_budget` = 32 MiB.
pub const DEFAULT_PEER_READ_BUDGET: usize = 16 << 20;

/// 32 MiB: how much we keep unacknowledged towards one peer, enough for 64 × 4 KiB
/// transfers with room for a few large ones, without buffering a whole backlog.
pub const DEFAULT_SEND_WINDOW: u64 = 32 << 20;

/// 30 s: a peer silent for this long (keep-alives included) is gone; also bounds how long
/// a stalled handshake holds a slot.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// 5 s: well inside the idle timeout, so a live but quiet connection is never timed out,
/// and often enough to notice a dead peer within a few seconds.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// 30 s: the longest a stream may go without bytes inside a frame; a frame as a whole
/// may take that plus as much again per MiB (150 s for 4 MiB: ≈ 230 kbit/s). A stream
/// that stalls or crawls is stopped, so it holds its buffer for a bounded time.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Granularity the default stream window is rounded up to.
const WINDOW_ROUNDING: usize = 64 << 10;

/// Handshakes in progress at once on one endpoint; more incoming connections are refused
/// until some finish. Bounds the memory and CPU a flood of connection attempts costs.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 64;

/// Connections quinn holds before the application accepts them (quinn's default: 65 536).
pub(crate) const MAX_INCOMING: usize = 256;

/// Bytes of early packets buffered per not-yet-accepted connection (quinn's default: 10 MiB).
pub(crate) const INCOMING_BUFFER_BYTES: u64 = 64 << 10;

/// Bytes of early packets buffered across all not-yet-accepted connections (quinn's
/// default: 100 MiB).
pub(crate) const INCOMING_BUFFER_BYTES_TOTAL: u64 = 4 << 20;

/// Verified connections waiting for [`ChannelEndpoint::accept`](crate::ChannelEndpoint::accept).
pub(crate) const ACCEPT_QUEUE: usize = 16;

/// 4 MiB: the kernel buffers asked for the endpoint's UDP socket, each way.
/// A window of transfers arrives as one burst (64 reports ≈ 290 KB, ≈ 250
/// datagrams), more than Linux's usual default of 208 KiB holds once each
/// datagram's kernel overhead is counted; a datagram that does not fit is
/// dropped, and QUIC reads the loss as congestion and slows the link down.
/// The kernel caps the request at `net.core.rmem_max` / `wmem_max`; the
/// endpoint warns at bind if it got less.
pub(crate) const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Transport limits of one channel endpoint. Every field bounds what a peer can make us
/// hold; see the `DEFAULT_*` constants for why each default is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// Largest frame body accepted, checked before allocation. Default
    /// [`DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Bidirectional streams (transfers) a peer may have open at once; unidirectional
    /// streams are always 0. Default [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
    /// Bytes a peer may send on one stream ahead of our reading. Default: one maximal
    /// frame with its prefix, rounded up to 64 KiB, so a frame never waits on window
    /// updates.
    pub stream_receive_window: u32,
    /// Bytes a peer may send on all streams of a connection ahead of our reading. Default
    /// [`DEFAULT_CONNECTION_RECEIVE_WINDOW`].
    pub connection_receive_window: u32,
    /// Bytes we keep in flight unacknowledged towards a peer. Default
    /// [`DEFAULT_SEND_WINDOW`].
    pub send_window: u64,
    /// Incoming connections one peer may hold at once; one more closes its oldest.
    /// Default [`DEFAULT_MAX_CONNECTIONS_PER_PEER`].
    pub max_connections_per_peer: usize,
    /// Bytes of incoming frames one peer may have us read or handle at once, over all
    /// its connections. Default [`DEFAULT_PEER_READ_BUDGET`].
    pub peer_read_budget: usize,
    /// A connection with no traffic for this long is closed. Default
    /// [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Keep-alive interval; must be shorter than `idle_timeout`. Default
    /// [`DEFAULT_KEEP_ALIVE`].
    pub keep_alive: Duration,
    /// Longest time without bytes inside an incoming frame (a frame as a whole may take
    /// that plus as much per MiB); a response may take the request's time plus this.
    /// Default [`DEFAULT_FRAME_TIMEOUT`].
    pub frame_timeout: Duration,
}

impl TransportLimits {
    /// The stream window that holds one frame of `max_frame_bytes` with its prefix,
    /// rounded up to 64 KiB (saturating at `u32::MAX`).
    #[must_use]
    pub fn stream_window_for(max_frame_bytes: usize) -> u32 {
        let need = max_frame_bytes.saturating_add(PREFIX_LEN);
        let rounded = need.div_ceil(WINDOW_ROUNDING).saturating_mul(WINDOW_ROUNDING);
        u32::try_from(rounded).unwrap_or(u32::MAX)
    }

    /// Checks every limit is usable.
    ///
    /// # Errors
    /// [`NetError::Limits`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |name, problem: &str| {
            Err(NetError::Limits {
                name,
                problem: problem.to_owned(),
            })
        };
        if self.max_frame_bytes == 0 || u32::try_from(self.max_frame_bytes).is_err() {
            return bad("max_frame_bytes", "must be between 1 and 4294967295");
        }
        if self.max_concurrent_streams == 0 {
            return bad(
                "max_concurrent_streams",
                "must be at least 1, or no transfer can run",
            );
        }
        if self.stream_receive_window == 0 {
            return bad("stream_receive_window", "must be at least 1");
        }
        if self.connection_receive_window == 0 {
            return bad("connection_receive_window", "must be at least 1");
        }
        if self.send_window == 0 {
            return bad("send_window", "must be at least 1");
        }
        if self.max_connections_per_peer == 0 {
            return bad("max_connections_per_peer", "must be at least 1");
        }
        if self.peer_read_budget == 0 {
            return bad("peer_read_budget", "must be at least 1");
        }
        if self.idle_timeout.is_zero() || quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad("idle_timeout", "must be above zero and below 2^62 ms");
        }
        if self.frame_timeout.is_zero() {
            return bad("frame_timeout", "must be above zero");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad(
                "keep_alive",
                "must be above zero and shorter than idle_timeout, or quiet connections time out",
            );
        }
        Ok(())
    }

    /// The quinn transport configuration for these limits.
    pub(crate) fn transport_config(&self) -> Result<Arc<quinn::TransportConfig>, NetError> {
        self.validate()?;
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| NetError::Limits {
            name: "idle_timeout",
            problem: "must be below 2^62 ms".into(),
        })?;
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.connection_receive_window.into())
            .send_window(self.send_window)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            // We use no datagrams: do not buffer any.
            .datagram_receive_buffer_size(None);
        Ok(Arc::new(t))
    }
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            stream_receive_window: Self::stream_window_for(DEFAULT_MAX_FRAME_BYTES),
            connection_receive_window: DEFAULT_CONNECTION_RECEIVE_WINDOW,
            send_window: DEFAULT_SEND_WINDOW,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            peer_read_budget: DEFAULT_PEER_READ_BUDGET,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_hold_a_whole_frame() {
        let l = TransportLimits::default();
        l.validate().expect("defaults are valid");
        assert!(l.stream_receive_window as usize >= l.max_frame_bytes + PREFIX_LEN);
        assert_eq!(l.stream_receive_window as usize % WINDOW_ROUNDING, 0);
        assert_eq!(l.stream_receive_window, (4 << 20) + (64 << 10));
        assert!(l.connection_receive_window >= l.stream_receive_window);
    }

    #[test]
    fn stream_window_rounds_up() {
        assert_eq!(TransportLimits::stream_window_for(1024), 64 << 10);
        assert_eq!(TransportLimits::stream_window_for((64 << 10) - 4), 64 << 10);
        assert_eq!(TransportLimits::stream_window_for((64 << 10) - 3), 128 << 10);
        assert_eq!(TransportLimits::stream_window_for(usize::MAX), u32::MAX);
    }

    #[test]
    fn out_of_range_limits_are_refused_by_name() {
        type Breaker = fn(&mut TransportLimits);
        let cases: [(&str, Breaker); 9] = [
            ("max_connections_per_peer", |l| l.max_connections_per_peer = 0),
            ("peer_read_budget", |l| l.peer_read_budget = 0),
            ("max_frame_bytes", |l| l.max_frame_bytes = 0),
            ("max_concurrent_streams", |l| l.max_concurrent_streams = 0),
            ("stream_receive_window", |l| l.stream_receive_window = 0),
            ("connection_receive_window", |l| l.connection_receive_window = 0),
            ("send_window", |l| l.send_window = 0),
            ("idle_timeout", |l| l.idle_timeout = Duration::ZERO),
            ("keep_alive", |l| l.keep_alive = l.idle_timeout),
        ];
        for (field, break_it) in cases {
            let mut l = TransportLimits::default();
            break_it(&mut l);
            match l.validate() {
                Err(NetError::Limits { name, .. }) => assert_eq!(name, field),
                other => panic!("{field}: expected Limits, got {other:?}"),
            }
        }
    }
}
