//! The sitrep transport: one QUIC endpoint per channel, mutual TLS against that channel's
//! CA with the node id bound to the certificate, and the hop protocol's length-prefixed
//! frames.
//!
//! A connection carries data only after its peer's certificate chained to the channel CA
//! (rustls), named exactly one node in a `urn:sitrep:node:<id>` URI SAN, that node was the
//! one dialled (outgoing), and the [`PeerPolicy`] allowed it on the channel (DESIGN §5
//! property 1). TLS 1.3 only, no 0-RTT, no session resumption; every limit that bounds
//! what a peer can make us hold is in [`TransportLimits`] (property 8).
//!
//! This crate does not decide what a frame means: verifying, storing and answering a
//! transfer is the node's job. It holds no store and no HTTP.
//!
//! Main types: [`ChannelEndpoint`] (bind, accept, connect, shutdown), [`PeerConnection`]
//! (transfer, accept_stream/accept_transfer), [`IncomingStream`], [`IncomingTransfer`], [`TlsIdentity`] (and
//! [`certificate_not_after_ms`] for a certificate file's expiry), [`NetError`].

mod connection;
mod endpoint;
mod error;
pub mod frame;
mod limits;
mod tls;

pub use connection::{IncomingStream, IncomingTransfer, PeerConnection};
pub use endpoint::{ChannelEndpoint, Direction, FrameRecorder, PeerPolicy, PeerUsage};
pub use error::NetError;
pub use limits::{
    DEFAULT_CONNECTION_RECEIVE_WINDOW, DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS_PER_PEER, DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_PEER_READ_BUDGET, DEFAULT_SEND_WINDOW, TransportLimits,
};
pub use tls::{ALPN, TlsIdentity, certificate_not_after_ms};

/// Application close codes, sent with a reason when we close a connection.
pub mod close_code {
    /// The node is shutting down; reconnect later.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate or node id is not allowed on this channel.
    pub const REFUSED_PEER: u32 = 1;
    /// The peer broke the hop protocol.
    pub const PROTOCOL: u32 = 2;
    /// The peer broke label policy on this channel (e.g. sent a label above it).
    pub const POLICY: u32 = 3;
    /// The peer opened more connections than `max_connections_per_peer`:
    /// its oldest is closed with this code (the newest wins, so a peer
    /// that restarted is never locked out by its own stale connection).
    pub const REPLACED: u32 = 4;
}

/// Stream error codes, sent when we stop reading or reset one transfer stream (the
/// connection stays up).
pub mod stream_code {
    /// The receiver refused the frame (too large or malformed) and stopped reading it;
    /// a `Rejected` answer follows on the same stream.
    pub const REJECTED: u32 = 1;
    /// The receiver dropped the transfer without answering; retry it.
    pub const NO_RESPONSE: u32 = 2;
}
