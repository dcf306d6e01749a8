//! The sled store against a real database in a temp dir.

use sitrep_core::{MessageId, NodeId, Precedence};
use sitrep_store::{
    ChannelStore, Copy, DEDUP_RETENTION_MS, DeliveryState, Ingest, Op, Outcome, Quota, Storage, StoreError,
    SubmissionKey,
};

const NOW: i64 = 1_790_000_000_000;

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid")
}

fn mid(i: u8) -> MessageId {
    MessageId::new_v7(NOW + i64::from(i), [i; 10])
}

fn ingest(id: MessageId, precedence: Precedence, hops: &[&str], track: &[&str]) -> Op {
    Op::Ingest(Ingest {
        id,
        envelope: vec![0xab; 100],
        precedence,
        expires_ms: NOW + 60_000,
        now_ms: NOW,
        hop_count: 0,
        copies: hops
            .iter()
            .map(|h| Copy {
                next_hop: n(h),
                serves: track.iter().map(|t| n(t)).collect(),
            })
            .collect(),
        inbox: false,
        track: track.iter().map(|t| n(t)).collect(),
        submission: None,
    })
}

fn ids(s: &ChannelStore, hop: &str) -> Vec<MessageId> {
    s.outbox_peek(&n(hop), 1000, &|_| false)
        .expect("peek")
        .into_iter()
        .map(|q| q.id)
        .collect()
}

#[test]
fn outbox_is_ordered_by_precedence_then_arrival() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    let order = [
        (1, Precedence::Routine),
        (2, Precedence::Flash),
        (3, Precedence::Routine),
        (4, Precedence::Immediate),
        (5, Precedence::Flash),
    ];
    for (i, p) in order {
        s.apply_blocking(vec![ingest(mid(i), p, &["nspl-hub"], &[])])
            .expect("ingest");
    }
    assert_eq!(ids(&s, "nspl-hub"), vec![mid(2), mid(5), mid(4), mid(1), mid(3)]);
    // Skipping in-flight ids.
    let rest = s
        .outbox_peek(&n("nspl-hub"), 2, &|id| *id == mid(2))
        .expect("peek");
    assert_eq!(
        rest.iter().map(|q| q.id).collect::<Vec<_>>(),
        vec![mid(5), mid(4)]
    );
    s.close();
}

#[test]
fn a_duplicate_is_refused_and_changes_nothing_also_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = ChannelStore::open(dir.path()).expect("open");
        s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["msb"], &[])])
            .expect("ingest");
        let err = s.apply_blocking(vec![ingest(mid(1), Precedence::Flash, &["msb", "hub"], &[])]);
        assert!(matches!(err, Err(StoreError::Duplicate(id)) if id == mid(1)));
        assert_eq!(ids(&s, "msb"), vec![mid(1)]);
        assert!(ids(&s, "hub").is_empty(), "nothing of the refused job was stored");
        s.close();
    }
    let s = ChannelStore::open(dir.path()).expect("reopen");
    assert!(s.seen(&mid(1)).expect("seen"));
    assert!(matches!(
        s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["msb"], &[])]),
        Err(StoreError::Duplicate(_))
    ));
    // Forwarding drops the copy but the dedup entry stays.
    s.apply_blocking(vec![Op::Forwarded {
        id: mid(1),
        next_hop: n("msb"),
        now_ms: NOW,
    }])
    .expect("forwarded");
    assert!(ids(&s, "msb").is_empty());
    assert!(s.seen(&mid(1)).expect("seen"));
    s.close();
}

/// An ingest at the origin carrying a client's submission key.
fn keyed(id: MessageId, key: u8, request: u8) -> Op {
    let Op::Ingest(mut i) = ingest(id, Precedence::Routine, &["msb"], &["msb"]) else {
        unreachable!("ingest builds an Ingest");
    };
    i.submission = Some(SubmissionKey {
        key: [key; 32],
        request: [request; 32],
    });
    Op::Ingest(i)
}

#[test]
fn a_submission_key_is_answered_with_its_first_message_and_stores_nothing_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = ChannelStore::open(dir.path()).expect("open");
        s.apply_blocking(vec![keyed(mid(1), 7, 1)])
            .expect("first submission");
        // A retry (new id, same key, same request).
        match s.apply_blocking(vec![keyed(mid(2), 7, 1)]) {
            Err(StoreError::Resubmitted { id, same_request }) => {
                assert_eq!(id, mid(1));
                assert!(same_request);
            }
            other => panic!("a retry must name the first message, got {other:?}"),
        }
        assert!(!s.seen(&mid(2)).expect("seen"), "the retry stored nothing");
        assert_eq!(ids(&s, "msb"), vec![mid(1)]);
        assert!(s.delivery(&mid(2)).expect("delivery").is_empty());
        // Another key is another submission.
        s.apply_blocking(vec![keyed(mid(3), 8, 1)]).expect("another key");
        s.close();
    }
    // After a restart the key still answers, and a different request under
    // it is told apart.
    let s = ChannelStore::open(dir.path()).expect("reopen");
    match s.apply_blocking(vec![keyed(mid(4), 7, 2)]) {
        Err(StoreError::Resubmitted { id, same_request }) => {
            assert_eq!(id, mid(1));
            assert!(!same_request);
        }
        other => panic!("the key must survive a restart, got {other:?}"),
    }
    assert!(!s.seen(&mid(4)).expect("seen"));
    assert_eq!(ids(&s, "msb"), vec![mid(1), mid(3)]);
    // The key is forgotten with the message's dedup entry.
    s.apply_blocking(vec![Op::ExpireDue {
        now_ms: NOW + 60_000 + DEDUP_RETENTION_MS + 1,
    }])
    .expect("expire");
    assert!(!s.seen(&mid(1)).expect("seen"));
    s.apply_blocking(vec![keyed(mid(5), 7, 1)])
        .expect("the key is free again once its message is forgotten");
    s.close();
}

fn full_reason(r: sitrep_store::Result<Vec<Outcome>>) -> String {
    match r {
        Err(StoreError::Full { reason, .. }) => reason,
        other => panic!("expected a full store, got {other:?}"),
    }
}

#[test]
fn over_a_queue_cap_an_ingest_is_refused_and_nothing_stored_while_settling_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    // 100-byte envelopes: two fit under a hop's cap of 250 bytes.
    s.set_quota(Quota {
        max_hop_queue_bytes: 250,
        max_queue_bytes: 450,
        ..Quota::UNLIMITED
    });
    for i in 1..=2 {
        s.apply_blocking(vec![ingest(mid(i), Precedence::Routine, &["msb"], &[])])
            .expect("under the cap");
    }
    let why = full_reason(s.apply_blocking(vec![ingest(mid(3), Precedence::Flash, &["msb"], &[])]));
    assert!(
        why.contains("msb") && why.contains("max_peer_queue_bytes"),
        "{why}"
    );
    assert!(!s.seen(&mid(3)).expect("seen"), "nothing of it stored");
    assert_eq!(ids(&s, "msb"), vec![mid(1), mid(2)]);
    // Another hop has room of its own, up to the channel's cap.
    for i in 4..=5 {
        s.apply_blocking(vec![ingest(mid(i), Precedence::Routine, &["nspl-hub"], &[])])
            .expect("another hop");
    }
    let why = full_reason(s.apply_blocking(vec![ingest(mid(6), Precedence::Routine, &["rkl"], &[])]));
    assert!(why.contains("max_queue_bytes"), "{why}");
    // Settling goes on, and frees room.
    s.apply_blocking(vec![Op::Forwarded {
        id: mid(1),
        next_hop: n("msb"),
        now_ms: NOW,
    }])
    .expect("settling is never refused");
    s.apply_blocking(vec![ingest(mid(3), Precedence::Flash, &["msb"], &[])])
        .expect("room again");
    assert_eq!(ids(&s, "msb"), vec![mid(3), mid(2)]);
    s.close();
}

#[test]
fn below_the_free_space_kept_an_ingest_is_refused_and_receipts_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["msb"], &["msb"])])
        .expect("ingest");
    // No disk has this much free.
    s.set_quota(Quota {
        min_free_bytes: u64::MAX,
        ..Quota::UNLIMITED
    });
    let why = full_reason(s.apply_blocking(vec![ingest(mid(2), Precedence::Routine, &["msb"], &[])]));
    assert!(why.contains("min_free_bytes"), "{why}");
    assert!(!s.seen(&mid(2)).expect("seen"));
    s.apply_blocking(vec![
        Op::Forwarded {
            id: mid(1),
            next_hop: n("msb"),
            now_ms: NOW,
        },
        Op::Delivered {
            id: mid(1),
            recipient: n("msb"),
            delivered_ms: NOW,
        },
    ])
    .expect("settling and receipts are never refused");
    assert_eq!(
        s.delivery(&mid(1)).expect("delivery")[0].state,
        DeliveryState::Delivered
    );
    s.set_quota(Quota::default());
    s.apply_blocking(vec![ingest(mid(2), Precedence::Routine, &["msb"], &[])])
        .expect("room again");
    s.close();
}

#[test]
fn a_failed_job_writes_nothing_of_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["msb"], &[])])
        .expect("ingest");
    // A job whose second op fails leaves its first op unwritten.
    let r = s.apply_blocking(vec![
        ingest(mid(2), Precedence::Routine, &["msb"], &[]),
        ingest(mid(1), Precedence::Routine, &["msb"], &[]),
    ]);
    assert!(matches!(r, Err(StoreError::Duplicate(_))));
    assert!(!s.seen(&mid(2)).expect("seen"));
    assert_eq!(ids(&s, "msb"), vec![mid(1)]);
    s.close();
}

#[test]
fn custody_survives_restart_and_sequence_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = ChannelStore::open(dir.path()).expect("open");
        s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["a", "b"], &[])])
            .expect("ingest");
        s.close();
    }
    let s = ChannelStore::open(dir.path()).expect("reopen");
    assert_eq!(ids(&s, "a"), vec![mid(1)]);
    assert_eq!(ids(&s, "b"), vec![mid(1)]);
    s.apply_blocking(vec![ingest(mid(2), Precedence::Routine, &["a"], &[])])
        .expect("ingest");
    // The sequence did not restart: the older message stays first.
    assert_eq!(ids(&s, "a"), vec![mid(1), mid(2)]);
    let stats = s.outbox_stats();
    let a = stats.iter().find(|h| h.next_hop == n("a")).expect("a");
    assert_eq!((a.depth, a.bytes, a.oldest_queued_ms), (2, 200, Some(NOW)));
    // The message stays while one copy still needs it.
    s.apply_blocking(vec![Op::Forwarded {
        id: mid(1),
        next_hop: n("a"),
        now_ms: NOW,
    }])
    .expect("forwarded");
    assert_eq!(ids(&s, "b"), vec![mid(1)]);
    assert_eq!(
        s.apply_blocking(vec![Op::Forwarded {
            id: mid(1),
            next_hop: n("a"),
            now_ms: NOW
        }])
        .expect("again"),
        vec![Outcome::Gone]
    );
    s.close();
}

#[test]
fn delivery_states_at_the_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    s.apply_blocking(vec![ingest(
        mid(1),
        Precedence::Routine,
        &["hub"],
        &["msb", "socialstyrelsen"],
    )])
    .expect("ingest");
    let state = |r: &str| {
        s.delivery(&mid(1))
            .expect("delivery")
            .into_iter()
            .find(|d| d.recipient == n(r))
            .expect("record")
    };
    assert_eq!(state("msb").state, DeliveryState::Queued);
    s.apply_blocking(vec![Op::Forwarded {
        id: mid(1),
        next_hop: n("hub"),
        now_ms: NOW + 5,
    }])
    .expect("fwd");
    assert_eq!(state("msb").state, DeliveryState::Forwarded);
    assert_eq!(state("msb").hop, Some(n("hub")));
    s.apply_blocking(vec![Op::Delivered {
        id: mid(1),
        recipient: n("msb"),
        delivered_ms: NOW + 9,
    }])
    .expect("receipt");
    assert_eq!(state("msb").state, DeliveryState::Delivered);
    assert_eq!(state("msb").at_ms, NOW + 9);
    assert_eq!(state("socialstyrelsen").state, DeliveryState::Forwarded);
    // Expiry closes what is still open, and leaves DELIVERED alone.
    s.apply_blocking(vec![Op::ExpireDue { now_ms: NOW + 60_000 }])
        .expect("expire");
    assert_eq!(state("socialstyrelsen").state, DeliveryState::Expired);
    assert_eq!(state("msb").state, DeliveryState::Delivered);
    s.close();
}

#[test]
fn a_permanent_rejection_is_recorded_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["hub"], &["msb"])])
        .expect("ingest");
    s.apply_blocking(vec![Op::Rejected {
        id: mid(1),
        next_hop: n("hub"),
        reason: "LABEL_POLICY: not cleared".into(),
        now_ms: NOW,
    }])
    .expect("reject");
    let d = s.delivery(&mid(1)).expect("delivery");
    assert_eq!(d[0].state, DeliveryState::Rejected);
    assert_eq!(d[0].reason, "LABEL_POLICY: not cleared");
    assert!(ids(&s, "hub").is_empty());
    s.close();
}

#[test]
fn expiry_drops_copies_and_dedup_outlives_the_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    s.apply_blocking(vec![ingest(mid(1), Precedence::Routine, &["hub", "msb"], &[])])
        .expect("ingest");
    let r = s
        .apply_blocking(vec![Op::ExpireDue { now_ms: NOW + 59_999 }])
        .expect("sweep");
    assert_eq!(r, vec![Outcome::Expired(vec![])]);
    let r = s
        .apply_blocking(vec![Op::ExpireDue { now_ms: NOW + 60_000 }])
        .expect("sweep");
    assert_eq!(
        r,
        vec![Outcome::Expired(vec![(mid(1), vec![n("hub"), n("msb")])])]
    );
    assert!(ids(&s, "hub").is_empty() && ids(&s, "msb").is_empty());
    assert!(s.outbox_stats().is_empty());
    // Still a duplicate long after expiry...
    s.apply_blocking(vec![Op::ExpireDue {
        now_ms: NOW + 60_000 + DEDUP_RETENTION_MS - 1,
    }])
    .expect("sweep");
    assert!(s.seen(&mid(1)).expect("seen"));
    // ...and forgotten only after the retention.
    s.apply_blocking(vec![Op::ExpireDue {
        now_ms: NOW + 60_000 + DEDUP_RETENTION_MS,
    }])
    .expect("sweep");
    assert!(!s.seen(&mid(1)).expect("seen"));
    s.close();
}

#[test]
fn inbox_cursor_is_monotonic_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inbox_op = |i: u8| {
        Op::Ingest(Ingest {
            id: mid(i),
            envelope: vec![i; 10],
            precedence: Precedence::Routine,
            expires_ms: NOW + 60_000,
            now_ms: NOW,
            hop_count: 2,
            copies: vec![],
            inbox: true,
            track: vec![],
            submission: None,
        })
    };
    {
        let s = ChannelStore::open(dir.path()).expect("open");
        s.apply_blocking(vec![inbox_op(1), inbox_op(2)]).expect("ingest");
        s.close();
    }
    let s = ChannelStore::open(dir.path()).expect("reopen");
    s.apply_blocking(vec![inbox_op(3)]).expect("ingest");
    let all = s.inbox_after(0, 10).expect("inbox");
    assert_eq!(all.iter().map(|e| e.cursor).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(all[2].id, mid(3));
    assert_eq!(s.inbox_after(2, 10).expect("inbox").len(), 1);
    assert!(s.inbox_after(3, 10).expect("inbox").is_empty());
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_group_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ChannelStore::open(dir.path()).expect("open");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u16 {
        let s = s.clone();
        tasks.spawn(async move {
            let id = MessageId::new_v7(NOW, [(i >> 8) as u8, i as u8, 0, 0, 0, 0, 0, 0, 0, 1]);
            s.apply(vec![ingest(id, Precedence::Routine, &["hub"], &[])])
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("apply");
    }
    assert_eq!(s.outbox_stats()[0].depth, 200);
    s.close();
    assert!(matches!(s.apply(vec![]).await, Err(StoreError::Closed)));
}
