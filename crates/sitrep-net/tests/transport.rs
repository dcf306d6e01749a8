//! The transport over real QUIC on 127.0.0.1: authentication, refusals, frame limits,
//! recording and shutdown. Certificates are made in memory with rcgen.

mod support;

use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use rcgen::SanType;
use sitrep_core::Channel;
use sitrep_net::frame::{encode_frame, read_frame};
use sitrep_net::{
    ChannelEndpoint, Direction, FrameRecorder, NetError, PeerConnection, TlsIdentity, TransportLimits,
    close_code, stream_code,
};
use sitrep_proto::v1::{Frame, RejectCode, frame::Kind};
use support::{Ca, GUARD, Recorder, accepted, bind, node, raw_connect, transfer};

/// Runs a test body under the guard timeout.
async fn guarded<F: Future<Output = anyhow::Result<()>>>(body: F) -> anyhow::Result<()> {
    tokio::time::timeout(GUARD, body)
        .await
        .context("test did not finish in time")?
}

/// A and B on one channel CA, each allowing the other.
fn pair() -> anyhow::Result<(Ca, ChannelEndpoint, ChannelEndpoint)> {
    let ca = Ca::new("open")?;
    let a = bind("a", &ca.node("a")?, &["b"], TransportLimits::default(), None)?;
    let b = bind("b", &ca.node("b")?, &["a", "c"], TransportLimits::default(), None)?;
    Ok((ca, a, b))
}

/// Next accepted connection on `ep`, which must be a good one.
async fn accept_ok(ep: &ChannelEndpoint) -> anyhow::Result<PeerConnection> {
    Ok(ep.accept().await.context("endpoint closed")??)
}

/// Next accepted outcome on `ep`, which must be a refusal.
async fn accept_refused(ep: &ChannelEndpoint) -> anyhow::Result<(Option<String>, String)> {
    match ep.accept().await.context("endpoint closed")? {
        Err(NetError::Refused { peer, reason }) => Ok((peer, reason)),
        Err(other) => bail!("expected Refused, got {other:?}"),
        Ok(conn) => bail!("expected a refusal, got a connection from {}", conn.peer()),
    }
}

/// Shows that no connection slipped through before: a good peer C connects and is the
/// next connection `ep` yields.
async fn next_accept_is_c(ca: &Ca, ep: &ChannelEndpoint) -> anyhow::Result<()> {
    let c = bind("c", &ca.node("c")?, &["b"], TransportLimits::default(), None)?;
    let _c_conn = c.connect(&node("b"), ep.local_addr()?).await?;
    let conn = accept_ok(ep).await?;
    ensure!(
        conn.peer().as_str() == "c",
        "expected c next, got {}",
        conn.peer()
    );
    Ok(())
}

/// Serves `count` transfers on the next connection, answering each with Accepted whose
/// id is the transfer's hop count. Returns the connection to keep it open.
fn serve(b: &ChannelEndpoint, count: usize) -> tokio::task::JoinHandle<anyhow::Result<PeerConnection>> {
    let b = b.clone();
    tokio::spawn(async move {
        let conn = accept_ok(&b).await?;
        for _ in 0..count {
            let t = conn.accept_transfer().await?.context("connection closed early")?;
            ensure!(t.peer() == conn.peer());
            let Some(Kind::Transfer(transfer)) = &t.frame.kind else {
                bail!("accept_transfer yielded a non-Transfer frame");
            };
            let id = u8::try_from(transfer.hop_count)?;
            t.respond(&accepted(id)).await?;
        }
        Ok(conn)
    })
}

#[tokio::test]
async fn transfer_is_answered_and_peers_are_authenticated() -> anyhow::Result<()> {
    guarded(async {
        let (_ca, a, b) = pair()?;
        let b_addr = b.local_addr()?;
        let server = {
            let b = b.clone();
            tokio::spawn(async move {
                let conn = accept_ok(&b).await?;
                ensure!(conn.peer().as_str() == "a", "B sees peer {}", conn.peer());
                ensure!(conn.channel() == Channel::Open);
                let t = conn.accept_transfer().await?.context("a transfer")?;
                ensure!(t.frame == transfer(100), "B received {:?}", t.frame);
                t.respond(&accepted(9)).await?;
                anyhow::Ok(conn)
            })
        };
        let conn = a.connect(&node("b"), b_addr).await?;
        assert_eq!(conn.peer().as_str(), "b");
        assert_eq!(conn.remote_address(), b_addr);
        let answer = conn.transfer(&transfer(100), 0).await?;
        assert_eq!(answer, accepted(9));
        let _b_conn = server.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn concurrent_transfers_share_one_connection() -> anyhow::Result<()> {
    guarded(async {
        let (_ca, a, b) = pair()?;
        let n = 64;
        let server = serve(&b, n);
        let conn = a.connect(&node("b"), b.local_addr()?).await?;
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..n {
            let conn = conn.clone();
            sends.spawn(async move {
                let mut frame = transfer(4096);
                if let Some(Kind::Transfer(t)) = &mut frame.kind {
                    t.hop_count = u32::try_from(i)?;
                }
                let answer = conn.transfer(&frame, i32::try_from(i % 4)?).await?;
                ensure!(
                    answer == accepted(u8::try_from(i)?),
                    "transfer {i} got {answer:?}"
                );
                anyhow::Ok(())
            });
        }
        while let Some(done) = sends.join_next().await {
            done??;
        }
        let _b_conn = server.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let (ca, _a, b) = pair()?;
        let other = Ca::new("rogue")?;
        // A trusts the real CA (so it accepts B) but presents a certificate from another CA.
        let mut rogue = other.node("a")?;
        rogue.ca_pem = ca.pem();
        let a = bind("a", &rogue, &["b"], TransportLimits::default(), None)?;
        let outcome = async {
            let conn = a.connect(&node("b"), b.local_addr()?).await?;
            conn.transfer(&transfer(10), 0).await
        }
        .await;
        ensure!(outcome.is_err(), "a rogue client got an answer: {outcome:?}");
        let (peer, reason) = accept_refused(&b).await?;
        assert_eq!(peer, None);
        assert!(reason.contains("TLS handshake"), "{reason}");
        next_accept_is_c(&ca, &b).await
    })
    .await
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let other = Ca::new("rogue")?;
        let a = bind("a", &ca.node("a")?, &["b"], TransportLimits::default(), None)?;
        let b = bind("b", &other.node("b")?, &["a"], TransportLimits::default(), None)?;
        match a.connect(&node("b"), b.local_addr()?).await {
            Err(NetError::Refused { peer: None, reason }) => {
                assert!(reason.contains("server certificate"), "{reason}");
            }
            other => bail!("expected Refused, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn node_refused_by_policy_is_closed_with_refused_peer() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let a = bind("a", &ca.node("a")?, &["b"], TransportLimits::default(), None)?;
        // B knows only c.
        let b = bind("b", &ca.node("b")?, &["c"], TransportLimits::default(), None)?;
        let connected = a.connect(&node("b"), b.local_addr()?).await;
        let (peer, reason) = accept_refused(&b).await?;
        assert_eq!(peer.as_deref(), Some("a"));
        assert_eq!(reason, "node a is not a configured peer on channel open");
        match connected {
            Ok(conn) => {
                match conn.closed().await {
                    NetError::ClosedByPeer { code, reason } => {
                        assert_eq!(code, u64::from(close_code::REFUSED_PEER));
                        assert_eq!(reason, "node a is not a configured peer on channel open");
                    }
                    other => bail!("expected ClosedByPeer, got {other:?}"),
                }
                let transfer = conn.transfer(&transfer(10), 0).await;
                ensure!(
                    matches!(transfer, Err(NetError::ClosedByPeer { .. })),
                    "transfer on a refused connection: {transfer:?}"
                );
            }
            Err(e) => ensure!(
                matches!(e, NetError::ClosedByPeer { code, .. } if code == u64::from(close_code::REFUSED_PEER)),
                "connect failed otherwise: {e:?}"
            ),
        }
        next_accept_is_c(&ca, &b).await
    })
    .await
}

#[tokio::test]
async fn connect_refuses_a_node_its_own_policy_refuses() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let a = bind("a", &ca.node("a")?, &["x"], TransportLimits::default(), None)?;
        let b = bind("b", &ca.node("b")?, &["a", "c"], TransportLimits::default(), None)?;
        match a.connect(&node("b"), b.local_addr()?).await {
            Err(NetError::Refused { peer, reason }) => {
                assert_eq!(peer.as_deref(), Some("b"));
                assert_eq!(reason, "node b is not a configured peer on channel open");
            }
            other => bail!("expected Refused, got {other:?}"),
        }
        // Nothing was dialled: the next connection B sees is C's.
        next_accept_is_c(&ca, &b).await
    })
    .await
}

#[tokio::test]
async fn connecting_to_the_wrong_node_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let a = bind("a", &ca.node("a")?, &["b", "c"], TransportLimits::default(), None)?;
        let b = bind("b", &ca.node("b")?, &["a"], TransportLimits::default(), None)?;
        // B's address, but A expects node c there: B's certificate is for b.sitrep.invalid.
        match a.connect(&node("c"), b.local_addr()?).await {
            Err(NetError::Refused { reason, .. }) => assert!(reason.contains("node c"), "{reason}"),
            other => bail!("expected Refused, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn uri_san_must_name_the_dialled_node() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let a = bind("a", &ca.node("a")?, &["b", "c"], TransportLimits::default(), None)?;
        // A certificate whose DNS name says c but whose node id (URI SAN) is b: rustls
        // accepts it as c's, our URI SAN check must not.
        let mixed = ca.with_sans(vec![
            SanType::URI(node("b").uri_san().try_into()?),
            SanType::DnsName("c.sitrep.invalid".try_into()?),
        ])?;
        let b = bind("b", &mixed, &["a"], TransportLimits::default(), None)?;
        match a.connect(&node("c"), b.local_addr()?).await {
            Err(NetError::Refused { peer, reason }) => {
                assert_eq!(peer.as_deref(), Some("b"));
                assert_eq!(reason, "expected node c, but the certificate names node b");
            }
            other => bail!("expected Refused, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn client_without_a_node_uri_san_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let (ca, _a, b) = pair()?;
        let anonymous = ca.with_sans(vec![SanType::DnsName("a.sitrep.invalid".try_into()?)])?;
        let (_ep, conn) = raw_connect(&anonymous, b.local_addr()?, "b").await?;
        let (peer, reason) = accept_refused(&b).await?;
        assert_eq!(peer, None);
        assert!(reason.contains("no urn:sitrep:node:"), "{reason}");
        match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, close_code::REFUSED_PEER.into());
            }
            other => bail!("expected an application close, got {other:?}"),
        }
        next_accept_is_c(&ca, &b).await
    })
    .await
}

#[tokio::test]
async fn client_naming_two_nodes_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let (ca, _a, b) = pair()?;
        let two = ca.with_sans(vec![
            SanType::URI(node("a").uri_san().try_into()?),
            SanType::URI(node("c").uri_san().try_into()?),
        ])?;
        let (_ep, _conn) = raw_connect(&two, b.local_addr()?, "b").await?;
        let (peer, reason) = accept_refused(&b).await?;
        assert_eq!(peer, None);
        assert!(reason.contains("exactly one"), "{reason}");
        Ok(())
    })
    .await
}

fn rejected_code(frame: &Frame) -> Option<RejectCode> {
    match &frame.kind {
        Some(Kind::Rejected(r)) => {
            assert!(r.permanent, "a refused frame is refused for good");
            RejectCode::try_from(r.code).ok()
        }
        _ => None,
    }
}

#[tokio::test]
async fn oversized_frame_is_rejected_and_the_connection_stays_usable() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let a = bind("a", &ca.node("a")?, &["b"], TransportLimits::default(), None)?;
        let small = TransportLimits {
            max_frame_bytes: 1024,
            stream_receive_window: TransportLimits::stream_window_for(1024),
            ..TransportLimits::default()
        };
        let b = bind("b", &ca.node("b")?, &["a"], small, None)?;
        let server = {
            let b = b.clone();
            tokio::spawn(async move {
                let conn = accept_ok(&b).await?;
                match conn.accept_transfer().await {
                    Err(NetError::FrameTooLarge { len, limit }) => {
                        ensure!(limit == 1024 && len > 4096, "len {len} limit {limit}");
                    }
                    other => bail!("expected FrameTooLarge, got {other:?}"),
                }
                let t = conn.accept_transfer().await?.context("second transfer")?;
                ensure!(t.frame == transfer(100));
                t.respond(&accepted(2)).await?;
                anyhow::Ok(conn)
            })
        };
        let conn = a.connect(&node("b"), b.local_addr()?).await?;
        let answer = conn.transfer(&transfer(4096), 0).await?;
        assert_eq!(
            rejected_code(&answer),
            Some(RejectCode::FrameTooLarge),
            "{answer:?}"
        );
        let answer = conn.transfer(&transfer(100), 0).await?;
        assert_eq!(answer, accepted(2));
        let _b_conn = server.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn huge_length_prefix_is_rejected_without_waiting_for_the_body() -> anyhow::Result<()> {
    guarded(async {
        let (ca, _a, b) = pair()?;
        let (_ep, raw) = raw_connect(&ca.node("a")?, b.local_addr()?, "b").await?;
        let server = {
            let b = b.clone();
            tokio::spawn(async move {
                let conn = accept_ok(&b).await?;
                let first = conn.accept_transfer().await;
                let second = conn.accept_transfer().await;
                anyhow::Ok((conn, first, second))
            })
        };
        // Announce 4 GiB, send none of it, and keep the stream open: the receiver must
        // answer from the prefix alone.
        let (mut send, mut recv) = raw.open_bi().await?;
        send.write_all(&u32::MAX.to_be_bytes()).await?;
        let answer = read_frame(&mut recv, 4096).await?;
        assert_eq!(
            rejected_code(&answer),
            Some(RejectCode::FrameTooLarge),
            "{answer:?}"
        );
        // A frame that does not decode gets MALFORMED on its own stream.
        let (mut send, mut recv) = raw.open_bi().await?;
        send.write_all(&[0, 0, 0, 4, 0x0a, 100, 1, 2]).await?;
        send.finish()?;
        let answer = read_frame(&mut recv, 4096).await?;
        assert_eq!(rejected_code(&answer), Some(RejectCode::Malformed), "{answer:?}");
        let (_conn, first, second) = server.await??;
        match first {
            Err(NetError::FrameTooLarge { len, .. }) => assert_eq!(len, u32::MAX as usize),
            other => bail!("expected FrameTooLarge, got {other:?}"),
        }
        ensure!(matches!(second, Err(NetError::Decode(_))), "{second:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_stalled_stream_holds_up_no_other_and_is_stopped_after_the_idle_timeout() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let limits = TransportLimits {
            frame_timeout: std::time::Duration::from_millis(300),
            ..TransportLimits::default()
        };
        let b = bind("b", &ca.node("b")?, &["a"], limits, None)?;
        let (_ep, raw) = raw_connect(&ca.node("a")?, b.local_addr()?, "b").await?;
        // Stream 1 announces a 1 MiB frame, sends 10 bytes of it and stalls.
        let (mut stalled_send, _stalled_recv) = raw.open_bi().await?;
        stalled_send.write_all(&(1u32 << 20).to_be_bytes()).await?;
        stalled_send.write_all(&[0; 10]).await?;
        let conn = accept_ok(&b).await?;
        let first = conn.accept_stream().await.context("first stream")?;
        let stalled = tokio::spawn(first.read());
        // Stream 2, a whole transfer, is read and answered while stream 1 stalls.
        let (mut send, mut recv) = raw.open_bi().await?;
        send.write_all(&encode_frame(&transfer(100))?).await?;
        send.finish()?;
        let second = conn.accept_stream().await.context("second stream")?;
        let t = second.read().await?.context("a transfer")?;
        t.respond(&accepted(7)).await?;
        ensure!(read_frame(&mut recv, 4096).await? == accepted(7));
        ensure!(!stalled.is_finished(), "the stalled stream is still waiting");
        // Stream 1 is given up after the frame timeout, and its sender sees it stopped.
        match stalled.await? {
            Err(NetError::Stream(e)) => ensure!(e.contains("no bytes for"), "{e}"),
            other => bail!("expected a frame timeout, got {other:?}"),
        }
        let code = stalled_send.stopped().await?;
        ensure!(code == Some(stream_code::REJECTED.into()), "{code:?}");
        // The connection still carries transfers.
        let (mut send, mut recv) = raw.open_bi().await?;
        send.write_all(&encode_frame(&transfer(100))?).await?;
        send.finish()?;
        let t = conn.accept_transfer().await?.context("a third transfer")?;
        t.respond(&accepted(8)).await?;
        ensure!(read_frame(&mut recv, 4096).await? == accepted(8));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_frame_other_than_transfer_is_malformed() -> anyhow::Result<()> {
    guarded(async {
        let (ca, _a, b) = pair()?;
        let (_ep, raw) = raw_connect(&ca.node("a")?, b.local_addr()?, "b").await?;
        let server = {
            let b = b.clone();
            tokio::spawn(async move {
                let conn = accept_ok(&b).await?;
                let outcome = conn.accept_transfer().await;
                anyhow::Ok((conn, outcome))
            })
        };
        let (mut send, mut recv) = raw.open_bi().await?;
        send.write_all(&encode_frame(&accepted(1))?).await?;
        send.finish()?;
        let answer = read_frame(&mut recv, 4096).await?;
        assert_eq!(rejected_code(&answer), Some(RejectCode::Malformed), "{answer:?}");
        let (_conn, outcome) = server.await??;
        ensure!(matches!(outcome, Err(NetError::Decode(_))), "{outcome:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn recorder_sees_sent_and_received_frames() -> anyhow::Result<()> {
    guarded(async {
        let ca = Ca::new("open")?;
        let rec_a = Arc::new(Recorder::default());
        let rec_b = Arc::new(Recorder::default());
        let a = bind(
            "a",
            &ca.node("a")?,
            &["b"],
            TransportLimits::default(),
            Some(rec_a.clone() as Arc<dyn FrameRecorder>),
        )?;
        let b = bind(
            "b",
            &ca.node("b")?,
            &["a"],
            TransportLimits::default(),
            Some(rec_b.clone() as Arc<dyn FrameRecorder>),
        )?;
        let mut frame = transfer(300);
        if let Some(Kind::Transfer(t)) = &mut frame.kind {
            t.hop_count = 7;
        }
        let server = serve(&b, 1);
        let conn = a.connect(&node("b"), b.local_addr()?).await?;
        assert_eq!(conn.transfer(&frame, 0).await?, accepted(7));
        let _b_conn = server.await??;

        let sent = encode_frame(&frame)?;
        let answer = encode_frame(&accepted(7))?;
        let seen_a = rec_a.0.lock().expect("not poisoned").clone();
        let seen_b = rec_b.0.lock().expect("not poisoned").clone();
        assert_eq!(
            seen_a,
            vec![
                (Channel::Open, Direction::Sent, "b".to_owned(), sent.clone()),
                (Channel::Open, Direction::Received, "b".to_owned(), answer.clone()),
            ]
        );
        assert_eq!(
            seen_b,
            vec![
                (Channel::Open, Direction::Received, "a".to_owned(), sent),
                (Channel::Open, Direction::Sent, "a".to_owned(), answer),
            ]
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_unanswered_transfer_resets_the_stream() -> anyhow::Result<()> {
    guarded(async {
        let (_ca, a, b) = pair()?;
        let server = {
            let b = b.clone();
            tokio::spawn(async move {
                let conn = accept_ok(&b).await?;
                let t = conn.accept_transfer().await?.context("a transfer")?;
                drop(t);
                anyhow::Ok(conn)
            })
        };
        let conn = a.connect(&node("b"), b.local_addr()?).await?;
        match conn.transfer(&transfer(10), 0).await {
            Err(NetError::Stream(reason)) => assert!(
                reason.contains(&format!(
                    "reset the stream with code {}",
                    stream_code::NO_RESPONSE
                )),
                "{reason}"
            ),
            other => bail!("expected a stream reset, got {other:?}"),
        }
        let _b_conn = server.await??;
        Ok(())
    })
    .await
}

/// A peer's third connection (the default cap is 2) closes its oldest with
/// `REPLACED`; the newer two stay usable, and the endpoint counts two.
#[tokio::test]
async fn a_connection_over_the_per_peer_cap_replaces_the_oldest() -> anyhow::Result<()> {
    guarded(async {
        let (_ca, a, b) = pair()?;
        let addr = b.local_addr()?;
        let mut held = Vec::new();
        let mut dialled = Vec::new();
        for _ in 0..3 {
            dialled.push(a.connect(&node("b"), addr).await?);
            held.push(accept_ok(&b).await?);
        }
        match dialled[0].closed().await {
            NetError::ClosedByPeer { code, .. } => assert_eq!(code, u64::from(close_code::REPLACED)),
            other => bail!("expected ClosedByPeer REPLACED, got {other:?}"),
        }
        let usage = b.peer_usage();
        ensure!(usage.len() == 1 && usage[0].peer.as_str() == "a", "{usage:?}");
        ensure!(
            usage[0].connections == 2 && usage[0].max_connections == 2,
            "{usage:?}"
        );
        ensure!(usage[0].buffered_bytes == 0, "{usage:?}");
        for (conn, server) in dialled[1..].iter().zip(&held[1..]) {
            let s = server.clone();
            let answer = tokio::spawn(async move {
                let t = s.accept_transfer().await?.context("a transfer")?;
                t.respond(&accepted(1)).await?;
                anyhow::Ok(())
            });
            ensure!(conn.transfer(&transfer(64), 0).await? == accepted(1));
            answer.await??;
        }
        // The replaced connection's handles go: the count stays at two.
        drop(held.remove(0));
        ensure!(b.peer_usage()[0].connections == 2, "{:?}", b.peer_usage());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn shutdown_closes_connections_and_stops_accepting() -> anyhow::Result<()> {
    guarded(async {
        let (_ca, a, b) = pair()?;
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let server = {
            let b = b.clone();
            tokio::spawn(async move {
                let conn = accept_ok(&b).await?;
                let _ = held_tx.send(());
                // Waits for a transfer that never comes; ends when B shuts down.
                let outcome = conn.accept_transfer().await?;
                ensure!(outcome.is_none(), "a transfer arrived");
                anyhow::Ok(())
            })
        };
        let conn = a.connect(&node("b"), b.local_addr()?).await?;
        // Wait until B holds the connection, so the shutdown closes an established one.
        held_rx.await.context("server task ended before accepting")?;
        b.shutdown().await;
        server.await??;
        match conn.closed().await {
            NetError::ClosedByPeer { code, reason } => {
                assert_eq!(code, u64::from(close_code::SHUTDOWN));
                assert_eq!(reason, "shutdown");
            }
            other => bail!("expected ClosedByPeer, got {other:?}"),
        }
        assert!(
            b.accept().await.is_none(),
            "a closed endpoint yields no connection"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bind_refuses_a_certificate_for_another_node() -> anyhow::Result<()> {
    let ca = Ca::new("open")?;
    match bind("a", &ca.node("b")?, &["b"], TransportLimits::default(), None) {
        Err(NetError::Tls(reason)) => {
            assert!(reason.contains("names node b, but this node is a"), "{reason}");
        }
        other => bail!("expected Tls, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn bind_refuses_bad_limits() -> anyhow::Result<()> {
    let ca = Ca::new("open")?;
    let limits = TransportLimits {
        keep_alive: TransportLimits::default().idle_timeout,
        ..TransportLimits::default()
    };
    match bind("a", &ca.node("a")?, &["b"], limits, None) {
        Err(NetError::Limits { name, .. }) => assert_eq!(name, "keep_alive"),
        other => bail!("expected Limits, got {other:?}"),
    }
    Ok(())
}

#[test]
fn load_names_the_file_at_fault() -> anyhow::Result<()> {
    let ca = Ca::new("open")?;
    let id = ca.node("a")?;
    let dir = tempfile::tempdir()?;
    let (ca_path, cert_path, key_path) = (
        dir.path().join("ca.crt"),
        dir.path().join("a.crt"),
        dir.path().join("a.key"),
    );
    std::fs::write(&ca_path, &id.ca_pem)?;
    std::fs::write(&cert_path, &id.cert_pem)?;
    std::fs::write(&key_path, &id.key_pem)?;
    let loaded = TlsIdentity::load(&ca_path, &cert_path, &key_path)?;
    assert_eq!(loaded.cert_pem, id.cert_pem);
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));

    let missing = dir.path().join("missing.key");
    match TlsIdentity::load(&ca_path, &cert_path, &missing) {
        Err(NetError::Certificate { file, problem }) => {
            assert_eq!(file, missing);
            assert!(problem.contains("cannot read"), "{problem}");
        }
        other => bail!("expected Certificate, got {other:?}"),
    }
    // A key where the certificate should be: no certificate in it.
    match TlsIdentity::load(&ca_path, &key_path, &key_path) {
        Err(NetError::Certificate { file, problem }) => {
            assert_eq!(file, key_path);
            assert!(problem.contains("no PEM certificate"), "{problem}");
        }
        other => bail!("expected Certificate, got {other:?}"),
    }
    // A certificate where the key should be.
    match TlsIdentity::load(&ca_path, &cert_path, &cert_path) {
        Err(NetError::Certificate { file, problem }) => {
            assert_eq!(file, cert_path);
            assert!(problem.contains("private key"), "{problem}");
        }
        other => bail!("expected Certificate, got {other:?}"),
    }
    Ok(())
}
