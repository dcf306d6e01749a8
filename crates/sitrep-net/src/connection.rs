//! A verified connection to one peer on one channel, and the hop protocol on it: one
//! bidirectional stream per transfer, one frame each way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sitrep_core::{Channel, NodeId};
use sitrep_proto::v1::{Frame, RejectCode, Rejected, frame::Kind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::endpoint::{Direction, FrameRecorder};
use crate::frame::{
    PREFIX_LEN, decode_body, encode_frame, frame_deadline, read_wire, read_wire_within, write_wire,
};
use crate::{NetError, stream_code};

/// A connection whose peer has been authenticated: its certificate chains to the channel
/// CA, names exactly one node, and that node passed the [`PeerPolicy`](crate::PeerPolicy).
///
/// Cheap to clone; all clones are the same connection.
#[derive(Clone, Debug)]
pub struct PeerConnection {
    conn: quinn::Connection,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    peer: NodeId,
    channel: Channel,
    max_frame_bytes: usize,
    frame_timeout: Duration,
    /// Bytes of incoming frames being read or handled at once, shared by
    /// all of the peer's connections on this channel (at least one largest
    /// frame).
    read_budget: Arc<Semaphore>,
    recorder: Option<Arc<dyn FrameRecorder>>,
    span: tracing::Span,
    /// For an accepted connection: its place in the peer's count, given
    /// back when the last clone is dropped.
    _registration: Option<crate::endpoint::Registration>,
}

impl PeerConnection {
    // Only the endpoint's `verify` builds one, from its context.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        conn: quinn::Connection,
        peer: NodeId,
        channel: Channel,
        max_frame_bytes: usize,
        frame_timeout: Duration,
        read_budget: Arc<Semaphore>,
        recorder: Option<Arc<dyn FrameRecorder>>,
        registration: Option<crate::endpoint::Registration>,
    ) -> Self {
        let span = tracing::info_span!(
            "peer_connection",
            peer = %peer,
            channel = channel.as_str(),
            remote = %conn.remote_address(),
        );
        Self {
            conn,
            shared: Arc::new(Shared {
                peer,
                channel,
                max_frame_bytes,
                frame_timeout,
                read_budget,
                recorder,
                span,
                _registration: registration,
            }),
        }
    }

    /// A raw bidirectional stream, for tests that play a misbehaving peer
    /// (partial frames, trickled bytes). Nothing in the node uses it.
    ///
    /// # Errors
    /// A connection error if no stream can be opened.
    #[doc(hidden)]
    pub async fn open_raw(&self) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        self.conn.open_bi().await.map_err(NetError::from_connection)
    }

    /// The authenticated node at the other end.
    #[must_use]
    pub fn peer(&self) -> &NodeId {
        &self.shared.peer
    }

    /// The channel this connection belongs to.
    #[must_use]
    pub fn channel(&self) -> Channel {
        self.shared.channel
    }

    /// Current round-trip time estimate.
    #[must_use]
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// UDP datagrams received on this connection so far: it grows with
    /// every frame and every acknowledgement of our keep-alives, so a count
    /// that stands still means the peer has not been heard from.
    #[must_use]
    pub fn datagrams_received(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }

    /// The peer's address.
    #[must_use]
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The tracing span of this connection (fields `peer`, `channel`, `remote`), for the
    /// caller's own events about it.
    #[must_use]
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// Sender side of one hop transfer: opens a stream with `priority` (higher is sent
    /// sooner; pass the precedence so FLASH goes first), writes `frame`, finishes the
    /// send side and reads the one response frame.
    ///
    /// Waits while the peer's stream limit is reached (flow control). Has no timeout of
    /// its own beyond the connection's idle timeout; wrap it if one is wanted.
    ///
    /// # Errors
    /// A connection error ([`NetError::ClosedByPeer`], [`NetError::Connection`],
    /// [`NetError::Closed`]); [`NetError::Stream`] if the stream fails without a response;
    /// [`NetError::FrameTooLarge`] or [`NetError::Decode`] for a bad response.
    pub async fn transfer(&self, frame: &Frame, priority: i32) -> Result<Frame, NetError> {
        let wire = encode_frame(frame)?;
        self.transfer_wire(&wire, priority)
            .instrument(self.shared.span.clone())
            .await
    }

    async fn transfer_wire(&self, wire: &[u8], priority: i32) -> Result<Frame, NetError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(NetError::from_connection)?;
        send.set_priority(priority)
            .map_err(|_| NetError::Stream("stream closed before its priority was set".into()))?;
        let written = match write_wire(&mut send, wire).await {
            Ok(()) => send
                .finish()
                .map_err(|_| NetError::Stream("stream closed before it was finished".into())),
            Err(e) => Err(e),
        };
        let write_error = match written {
            Ok(()) => {
                self.record(Direction::Sent, wire);
                None
            }
            // A peer that refuses a frame stops our send side and still answers (e.g.
            // Rejected FRAME_TOO_LARGE): go on and read that answer.
            Err(e @ NetError::Stream(_)) => Some(e),
            Err(e) => return Err(e),
        };
        let response = match self.read_timed(&mut recv, wire.len()).await {
            Ok(response) => response,
            Err(read_error) => return Err(write_error.unwrap_or(read_error)),
        };
        self.record(Direction::Received, &response);
        decode_body(response.get(PREFIX_LEN..).unwrap_or_default())
    }

    /// Reads the response to a request of `sent` bytes: it may take the time
    /// the request needs to arrive ([`frame_deadline`]) plus the frame
    /// timeout; past that the stream is stopped (the peer sees it reset).
    async fn read_timed(&self, recv: &mut quinn::RecvStream, sent: usize) -> Result<Vec<u8>, NetError> {
        let limit = self.shared.max_frame_bytes;
        let wait = frame_deadline(self.shared.frame_timeout, sent).saturating_add(self.shared.frame_timeout);
        match tokio::time::timeout(wait, read_wire(recv, limit)).await {
            Ok(read) => read,
            Err(_) => {
                let _ = recv.stop(stream_code::REJECTED.into());
                Err(NetError::Stream(format!(
                    "no answer within {wait:?}; stream stopped"
                )))
            }
        }
    }

    /// Receiver side: waits for the peer's next transfer stream and reads its frame.
    /// Equivalent to [`accept_stream`](Self::accept_stream) then
    /// [`IncomingStream::read`]; a node serving many streams at once should use those,
    /// reading each stream in its own task, so that a slow stream does not hold up the
    /// others.
    ///
    /// # Errors
    /// As [`IncomingStream::read`].
    pub async fn accept_transfer(&self) -> Result<Option<IncomingTransfer>, NetError> {
        match self.accept_stream().await {
            None => Ok(None),
            Some(stream) => stream.read().await,
        }
    }

    /// Waits for the peer's next transfer stream, without reading it. `None` when the
    /// connection is closed ([`close_reason`](Self::close_reason) says why).
    /// Cancel-safe.
    pub async fn accept_stream(&self) -> Option<IncomingStream> {
        match self.conn.accept_bi().await {
            Ok((send, recv)) => Some(IncomingStream {
                send,
                recv,
                conn: self.clone(),
            }),
            Err(e) => {
                let _span = self.shared.span.enter();
                tracing::debug!(reason = %e, "connection ended");
                None
            }
        }
    }

    /// Answers a refused frame on its own stream; failures only matter to the peer.
    async fn reject(&self, send: &mut quinn::SendStream, code: RejectCode, reason: String) {
        let frame = Frame {
            kind: Some(Kind::Rejected(Rejected {
                code: code as i32,
                reason,
                permanent: true,
            })),
        };
        if let Err(e) = self.send_response(send, &frame).await {
            tracing::debug!(error = %e, "could not send Rejected");
        }
    }

    /// Writes the response and waits until the peer acknowledged it (at most
    /// `bound`): for a refusal that is followed by closing the connection,
    /// which would otherwise discard the unacknowledged answer.
    async fn send_response_acked(
        &self,
        send: &mut quinn::SendStream,
        frame: &Frame,
        bound: Duration,
    ) -> Result<(), NetError> {
        self.send_response(send, frame).await?;
        // Ok either way: acknowledged, stopped by the peer, or the bound passed.
        let _ = tokio::time::timeout(bound, send.stopped()).await;
        Ok(())
    }

    async fn send_response(&self, send: &mut quinn::SendStream, frame: &Frame) -> Result<(), NetError> {
        let wire = encode_frame(frame)?;
        write_wire(send, &wire).await?;
        send.finish()
            .map_err(|_| NetError::Stream("stream closed before the response was finished".into()))?;
        self.record(Direction::Sent, &wire);
        Ok(())
    }

    fn record(&self, dir: Direction, wire: &[u8]) {
        if let Some(recorder) = &self.shared.recorder {
            recorder.record(self.shared.channel, dir, &self.shared.peer, wire);
        }
    }

    /// Closes the connection with an application close `code` (see
    /// [`close_code`](crate::close_code)) and a short `reason` the peer sees.
    pub fn close(&self, code: u32, reason: &str) {
        let _span = self.shared.span.enter();
        tracing::info!(code, reason, "closing connection");
        self.conn.close(code.into(), reason.as_bytes());
    }

    /// Why the connection closed, or `None` while it is open.
    #[must_use]
    pub fn close_reason(&self) -> Option<NetError> {
        self.conn.close_reason().map(NetError::from_connection)
    }

    /// Waits until the connection closes and returns why.
    pub async fn closed(&self) -> NetError {
        NetError::from_connection(self.conn.closed().await)
    }
}

/// A transfer stream the peer opened whose frame has not been read yet
/// ([`PeerConnection::accept_stream`]).
#[derive(Debug)]
pub struct IncomingStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: PeerConnection,
}

impl IncomingStream {
    /// Reads the stream's frame, within the connection's frame timeout, into a buffer
    /// that grows as the bytes arrive.
    ///
    /// `Ok(None)` if the connection closed inside the frame. A frame over
    /// `max_frame_bytes` is answered with `Rejected FRAME_TOO_LARGE` without reading
    /// it; a frame that does not decode, or is not a `Transfer`, with `Rejected
    /// MALFORMED`. Either way the stream is stopped, an error is returned, and the
    /// connection stays usable.
    ///
    /// # Errors
    /// [`NetError::FrameTooLarge`], [`NetError::Decode`], or [`NetError::Stream`] if the
    /// peer reset the stream, ended it inside the frame, or did not send the whole
    /// frame within the frame timeout.
    pub async fn read(self) -> Result<Option<IncomingTransfer>, NetError> {
        let span = self.conn.shared.span.clone();
        self.read_inner().instrument(span).await
    }

    async fn read_inner(self) -> Result<Option<IncomingTransfer>, NetError> {
        let Self {
            mut send,
            mut recv,
            conn,
        } = self;
        let limit = conn.shared.max_frame_bytes;
        let idle = Some(conn.shared.frame_timeout);
        let budget = Some(&conn.shared.read_budget);
        let (wire, permit) = match read_wire_within(&mut recv, limit, budget, idle).await {
            Ok(read) => read,
            Err(e @ NetError::FrameTooLarge { .. }) => {
                tracing::warn!(error = %e, "refused an oversized frame");
                // Stop the peer sending the rest: we will not read it.
                let _ = recv.stop(stream_code::REJECTED.into());
                conn.reject(&mut send, RejectCode::FrameTooLarge, e.to_string())
                    .await;
                return Err(e);
            }
            Err(e) if conn.conn.close_reason().is_some() => {
                tracing::debug!(error = %e, "connection ended inside a frame");
                return Ok(None);
            }
            Err(e) => {
                // Timed out, reset, or cut short: stop both directions (a
                // no-op for a stream the peer already reset).
                let _ = recv.stop(stream_code::REJECTED.into());
                let _ = send.reset(stream_code::REJECTED.into());
                return Err(e);
            }
        };
        conn.record(Direction::Received, &wire);
        let frame = decode_body(wire.get(PREFIX_LEN..).unwrap_or_default()).and_then(|frame| {
            if matches!(frame.kind, Some(Kind::Transfer(_))) {
                Ok(frame)
            } else {
                Err(NetError::Decode(
                    "expected a Transfer frame on a new stream".into(),
                ))
            }
        });
        match frame {
            Ok(frame) => Ok(Some(IncomingTransfer {
                frame,
                send: Some(send),
                conn,
                _budget: permit,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "refused a malformed frame");
                let _ = recv.stop(stream_code::REJECTED.into());
                conn.reject(&mut send, RejectCode::Malformed, e.to_string()).await;
                Err(e)
            }
        }
    }
}

/// A received transfer frame, waiting for its answer.
///
/// Dropping it unanswered resets the stream with
/// [`stream_code::NO_RESPONSE`](crate::stream_code::NO_RESPONSE), so the sender learns
/// at once that it must retry.
#[derive(Debug)]
pub struct IncomingTransfer {
    /// The frame received: always a `Transfer`.
    pub frame: Frame,
    send: Option<quinn::SendStream>,
    conn: PeerConnection,
    /// This frame's share of the connection's read budget, returned when
    /// the transfer is dropped.
    _budget: Option<OwnedSemaphorePermit>,
}

impl IncomingTransfer {
    /// Answers like [`respond`](Self::respond), then waits (at most `bound`)
    /// until the peer has acknowledged the answer: use it before closing the
    /// connection, so the refusal reaches the peer ahead of the close.
    ///
    /// # Errors
    /// As [`respond`](Self::respond).
    pub async fn respond_then_wait(mut self, frame: &Frame, bound: Duration) -> Result<(), NetError> {
        let Some(mut send) = self.send.take() else {
            return Err(NetError::Stream("transfer already answered".into()));
        };
        let conn = self.conn.clone();
        async move { conn.send_response_acked(&mut send, frame, bound).await }
            .instrument(self.conn.shared.span.clone())
            .await
    }

    /// The node that sent it.
    #[must_use]
    pub fn peer(&self) -> &NodeId {
        self.conn.peer()
    }

    /// Answers the transfer (`Accepted` only once the message is durable) and finishes
    /// the stream.
    ///
    /// # Errors
    /// [`NetError::Stream`] or a connection error if the answer cannot be written.
    pub async fn respond(mut self, frame: &Frame) -> Result<(), NetError> {
        let Some(mut send) = self.send.take() else {
            return Err(NetError::Stream("transfer already answered".into()));
        };
        let conn = self.conn.clone();
        async move { conn.send_response(&mut send, frame).await }
            .instrument(self.conn.shared.span.clone())
            .await
    }
}

impl Drop for IncomingTransfer {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(stream_code::NO_RESPONSE.into());
        }
    }
}
