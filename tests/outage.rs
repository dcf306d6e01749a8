//! The authority is down while 1,000 reports are submitted; it comes back;
//! all 1,000 arrive exactly once, in precedence order where precedence differs.

use std::collections::HashSet;
use std::time::Duration;

use sitrep_core::{Channel, Class, Label, MessageId, Mode, NodeId, Precedence};
use sitrep_node::{Content, Submission};
use sitrep_store::DeliveryState;
use sitrep_testkit::{TestNet, line, wait_until};

const N: usize = 1000;
/// The hub's in-flight window in this test: how far a lower precedence may
/// overtake a higher one (transfers in flight together finish in any order).
const WINDOW: usize = 8;
const LONG: Duration = Duration::from_secs(120);

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reports_wait_for_the_authority_and_arrive_once_in_precedence_order() {
    let mut net = TestNet::prepare(&line());
    net.override_config("nspl-hub", |c| c.limits.max_in_flight = WINDOW);
    net.start_node("nspl-hub").await;
    net.start_node("region-uppsala").await;
    let region = net.node("region-uppsala");

    // Precedences interleaved, so the order of submission is not the order of delivery.
    let levels = [
        Precedence::Routine,
        Precedence::Flash,
        Precedence::Priority,
        Precedence::Immediate,
    ];
    let mut submitted = HashSet::new();
    let now = sitrep_node::clock::now_ms();
    for i in 0..N {
        let mut report = sitrep_core::report::example_uppsala(now);
        report.report_number = u32::try_from(i + 1).expect("small");
        let id = region
            .submit(Submission {
                author: "TiB".into(),
                label: Label::new(Class::Sensitive),
                precedence: levels[i % levels.len()],
                mode: Mode::Exercise,
                recipients: vec![n("socialstyrelsen")],
                expires_ms: None,
                content: Content::Report(report),
            })
            .await
            .expect("submit");
        submitted.insert(id);
    }
    let hub = net.node("nspl-hub");
    let queued_at_hub = || {
        hub.outboxes()
            .iter()
            .find(|(_, h)| h.next_hop == n("socialstyrelsen"))
            .map_or(0, |(_, h)| h.depth)
    };
    wait_until(hub, LONG, "all reports in custody at the hub", || {
        queued_at_hub() == N as u64
    })
    .await
    .expect("hub holds the backlog");
    let region = net.node("region-uppsala");
    wait_until(
        region,
        LONG,
        "the region's outbox drained (custody acknowledged)",
        || region.outboxes().is_empty(),
    )
    .await
    .expect("the region handed everything to the hub");

    // The authority comes up.
    net.start_node("socialstyrelsen").await;
    let authority = net.node("socialstyrelsen");
    let inbox = || authority.inbox(Channel::Open, 0, 10 * N).expect("inbox");
    wait_until(authority, LONG, "1000 deliveries", || inbox().len() >= N)
        .await
        .expect("delivered");

    // Exactly once.
    let got = inbox();
    assert_eq!(got.len(), N);
    let ids: HashSet<MessageId> = got.iter().map(|r| r.header.id).collect();
    assert_eq!(ids, submitted, "every submitted report, each once");

    // Precedence order: no report is overtaken by more than WINDOW reports of lower precedence.
    let order: Vec<Precedence> = got.iter().map(|r| r.header.precedence).collect();
    for (i, p) in order.iter().enumerate() {
        let overtaken_by = order[..i].iter().filter(|q| *q < p).count();
        assert!(
            overtaken_by <= WINDOW,
            "{p} at position {i} overtaken by {overtaken_by} lower reports"
        );
    }
    // FLASH first, ROUTINE last.
    assert!(order[..N / 4 - WINDOW].iter().all(|p| *p == Precedence::Flash));
    assert!(
        order[N - N / 4 + WINDOW..]
            .iter()
            .all(|p| *p == Precedence::Routine)
    );

    // And the receipts make every report DELIVERED at the origin.
    let region = net.node("region-uppsala");
    let all_delivered = || {
        submitted.iter().all(|id| {
            region
                .delivery(id)
                .expect("delivery")
                .iter()
                .all(|d| d.state == DeliveryState::Delivered)
        })
    };
    wait_until(region, LONG, "1000 receipts", all_delivered)
        .await
        .expect("receipts");
    net.shutdown().await;
}
