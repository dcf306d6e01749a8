//! Delivery through real nodes: region → hub → authority.

use std::time::Duration;

use sitrep_core::{Channel, Class, Label, Mode, NodeId, Precedence};
use sitrep_node::{Content, Node, Submission};
use sitrep_proto::v1 as pb;
use sitrep_store::DeliveryState;
use sitrep_testkit::{TestNet, line, wait_until};

const CANARY: &str = "CANARY-5d41402abc4b2a76-IVA";
const LONG: Duration = Duration::from_secs(60);

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn report(number: u32, assessment: &str) -> pb::SituationReport {
    let mut r = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    r.report_number = number;
    r.assessment = assessment.to_owned();
    r
}

fn submission(number: u32, precedence: Precedence, assessment: &str) -> Submission {
    Submission {
        author: "TiB Region Uppsala".into(),
        label: Label::new(Class::Sensitive),
        precedence,
        mode: Mode::Exercise,
        recipients: vec![n("socialstyrelsen")],
        expires_ms: None,
        content: Content::Report(report(number, assessment)),
    }
}

fn inbox_len(node: &Node) -> usize {
    node.inbox(Channel::Open, 0, 100_000).expect("inbox").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_reaches_the_authority_only_and_comes_back_delivered() {
    let net = TestNet::start(&line()).await;
    let region = net.node("region-uppsala");
    let authority = net.node("socialstyrelsen");
    let hub = net.node("nspl-hub");

    let id = region
        .submit(submission(1, Precedence::Priority, CANARY))
        .await
        .expect("submit");

    wait_until(authority, LONG, "delivery at the authority", || {
        inbox_len(authority) == 1
    })
    .await
    .expect("delivered");
    let got = authority.inbox(Channel::Open, 0, 10).expect("inbox");
    assert_eq!(got[0].header.id, id);
    assert_eq!(got[0].header.origin, n("region-uppsala"));
    let opened = pb::SituationReport::decode(got[0].payload.as_slice()).expect("report decodes");
    assert_eq!(opened.assessment, CANARY);

    // The origin learns DELIVERED from the authority's signed receipt.
    wait_until(region, LONG, "receipt at the region", || {
        region
            .delivery(&id)
            .expect("delivery")
            .iter()
            .any(|d| d.state == DeliveryState::Delivered)
    })
    .await
    .expect("receipt");
    let d = region.delivery(&id).expect("delivery");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].recipient, n("socialstyrelsen"));
    assert!(d[0].at_ms > 0);

    // The hub relayed it but holds nothing it can open, and never had it in its inbox.
    assert!(hub.inbox(Channel::Open, 0, 10).expect("inbox").is_empty());
    assert!(region.inbox(Channel::Open, 0, 10).expect("inbox").is_empty());
    assert_eq!(hub.counters().get("accepted"), 2, "the report and the receipt");
    net.shutdown().await;
}

use prost::Message as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_store_never_holds_the_payload_in_the_clear() {
    let net = TestNet::start(&line()).await;
    let region = net.node("region-uppsala");
    let authority = net.node("socialstyrelsen");
    let hub_files = {
        for i in 0..20 {
            region
                .submit(submission(i + 1, Precedence::Routine, CANARY))
                .await
                .expect("submit");
        }
        wait_until(authority, LONG, "20 deliveries", || inbox_len(authority) == 20)
            .await
            .expect("delivered");
        net.store_files("nspl-hub")
    };
    let mut net = net;
    // Flush everything to disk, then scan every byte of the hub's sled files.
    net.stop("nspl-hub").await;
    assert!(!hub_files.is_empty());
    let mut scanned = 0;
    for f in net.store_files("nspl-hub") {
        let bytes = std::fs::read(&f).expect("read store file");
        scanned += bytes.len();
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "canary found in {}",
            f.display()
        );
    }
    assert!(scanned > 0);
    // The authority's store holds it sealed too (opened only when read).
    net.stop("socialstyrelsen").await;
    for f in net.store_files("socialstyrelsen") {
        let bytes = std::fs::read(&f).expect("read");
        assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
    }
    net.shutdown().await;
}

/// The audit log's write fails: the node stops with the reason rather than
/// go on handling traffic it cannot audit, and says it is not ready first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_stops_the_node() {
    let net = TestNet::prepare(&line());
    let node = Node::start(net.config("region-uppsala")).await.expect("starts");
    node.fail_next_audit_write();
    // Submitting audits a `submit` line: that write fails.
    node.submit(submission(1, Precedence::Routine, "audit"))
        .await
        .expect("stored (auditing is after custody)");
    let stopped = tokio::time::timeout(LONG, node.run_until(std::future::pending()))
        .await
        .expect("the node stops by itself");
    let err = stopped.expect_err("with an error").to_string();
    assert!(
        err.contains("audit") && err.contains("injected write error"),
        "{err}"
    );
}
