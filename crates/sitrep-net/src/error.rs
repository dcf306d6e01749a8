//! The one error type of the transport, and its mapping from quinn's errors.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What went wrong in the transport.
///
/// Variants are matched exactly by callers and tests: `Refused` counts a peer
/// that was turned away, `FrameTooLarge` and `Decode` a misbehaving stream (the
/// connection stays usable), `ClosedByPeer` carries the peer's close code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `bind channel open on 0.0.0.0:7401`.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the identity.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A certificate, CA or key file could not be read or parsed.
    #[error("{}: {problem}", file.display())]
    Certificate {
        /// The file at fault.
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A transport limit is out of range; nothing was bound.
    #[error("transport limit {name}: {problem}")]
    Limits {
        /// The field of [`TransportLimits`](crate::TransportLimits).
        name: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// An outgoing connection could not be set up (before or during the handshake),
    /// for a reason other than a refused certificate.
    #[error("connect to node {peer} at {addr}: {reason}")]
    Connect {
        /// The node we tried to reach.
        peer: String,
        /// Where we tried to reach it.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
    /// The connection failed at the transport level (timeout, reset, protocol error).
    #[error("connection: {0}")]
    Connection(String),
    /// The peer closed the connection with an application close code (see
    /// [`close_code`](crate::close_code)).
    #[error("connection closed by peer with code {code}: {reason}")]
    ClosedByPeer {
        /// The peer's close code.
        code: u64,
        /// The peer's reason, as text.
        reason: String,
    },
    /// A peer was refused: its certificate does not chain to the channel CA, does not
    /// name exactly one node, names another node than expected, or the node is not
    /// allowed on this channel.
    #[error("peer {} refused: {reason}", peer.as_deref().unwrap_or("(unidentified)"))]
    Refused {
        /// The node id from the certificate's URI SAN, if one was read.
        peer: Option<String>,
        /// Why.
        reason: String,
    },
    /// A frame's announced length is over the limit; nothing was allocated for it.
    #[error("frame of {len} bytes is over the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// A frame's bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// A stream failed: reset or stopped by the peer, or ended early.
    #[error("stream: {0}")]
    Stream(String),
    /// This side closed the connection or the endpoint.
    #[error("closed locally")]
    Closed,
}

impl NetError {
    pub(crate) fn from_connection(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(close) => Self::ClosedByPeer {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            quinn::ConnectionError::LocallyClosed => Self::Closed,
            other => Self::Connection(other.to_string()),
        }
    }

    pub(crate) fn from_write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Self::from_connection(c),
            quinn::WriteError::Stopped(code) => {
                Self::Stream(format!("peer stopped the stream with code {code}"))
            }
            other => Self::Stream(format!("write: {other}")),
        }
    }

    pub(crate) fn from_read_error(e: quinn::ReadError) -> Self {
        Self::from_read(quinn::ReadExactError::ReadError(e))
    }

    pub(crate) fn from_read(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(n) => {
                Self::Stream(format!("stream ended after {n} bytes, inside a frame"))
            }
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => Self::from_connection(c),
            quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) => {
                Self::Stream(format!("peer reset the stream with code {code}"))
            }
            quinn::ReadExactError::ReadError(other) => Self::Stream(format!("read: {other}")),
        }
    }
}

/// Where a handshake's TLS failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// Our TLS stack refused the peer (e.g. its certificate did not verify).
    Local,
    /// The peer's TLS stack refused us and told us with an alert.
    Remote,
}

/// Whether a connection error is a TLS alert (a QUIC crypto error, 0x100..=0x1ff) and
/// whose, as opposed to a timeout or transport failure.
pub(crate) fn tls_failure(e: &quinn::ConnectionError) -> Option<TlsFailure> {
    let is_alert = |code: quinn::TransportErrorCode| (0x100..=0x1ff).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) if is_alert(t.code) => Some(TlsFailure::Local),
        quinn::ConnectionError::ConnectionClosed(c) if is_alert(c.error_code) => Some(TlsFailure::Remote),
        _ => None,
    }
}
