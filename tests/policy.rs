//! Channel separation and clearance at run time, through real nodes.

use std::time::Duration;

use prost::Message as _;
use sitrep_core::envelope::{self, Draft};
use sitrep_core::{Channel, Class, ContentType, Label, Mode, NodeId, Precedence};
use sitrep_net::{NetError, close_code};
use sitrep_node::{Content, Submission};
use sitrep_proto::v1 as pb;
use sitrep_testkit::{TestNet, line, wait_until};

const LONG: Duration = Duration::from_secs(60);

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid id")
}

fn report_to(recipient: &str, class: Class) -> Submission {
    Submission {
        author: "TiB".into(),
        label: Label::new(class),
        precedence: Precedence::Immediate,
        mode: Mode::Exercise,
        recipients: vec![n(recipient)],
        expires_ms: None,
        content: Content::Report(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms())),
    }
}

/// A peer that sends a RESTRICTED envelope on the open channel is refused,
/// its connection is closed with the POLICY code, the refusal is audited,
/// and nothing is stored or forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_envelope_on_the_open_channel_closes_the_connection() {
    let net = TestNet::start(&line()).await;
    let (signing, _) = net.keys("region-uppsala");
    let now = sitrep_node::clock::now_ms();
    let payload = sitrep_core::report::example_uppsala(now).encode_to_vec();
    let sealed = envelope::seal(
        &Draft {
            origin: n("region-uppsala"),
            author: "TiB".into(),
            label: Label::new(Class::Restricted),
            precedence: Precedence::Flash,
            mode: Mode::Exercise,
            content_type: ContentType::SituationReport,
            recipients: vec![n("socialstyrelsen")],
            in_reply_to: None,
            expires_ms: now + 3_600_000,
            payload: &payload,
        },
        &signing,
        &net.roster(),
        now,
    )
    .expect("seal");
    let id = sealed.header.id;
    let region = net.impersonate("region-uppsala", Channel::Open);
    let conn = region
        .connect(
            &n("nspl-hub"),
            net.addr("nspl-hub", Channel::Open).expect("hub on open"),
        )
        .await
        .expect("connect");
    let frame = pb::Frame {
        kind: Some(pb::frame::Kind::Transfer(pb::Transfer {
            envelope: sealed.bytes.clone(),
            hop_count: 1,
            serves: vec![],
        })),
    };
    let answer = conn.transfer(&frame, 0).await.expect("an answer");
    match answer.kind {
        Some(pb::frame::Kind::Rejected(r)) => {
            assert_eq!(r.code, pb::RejectCode::LabelPolicy as i32);
            assert!(
                r.reason.contains("RESTRICTED") && r.reason.contains("secure"),
                "{}",
                r.reason
            );
            assert!(r.permanent);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match conn.closed().await {
        NetError::ClosedByPeer { code, reason } => {
            assert_eq!(code, u64::from(close_code::POLICY));
            assert!(reason.contains("RESTRICTED"), "{reason}");
        }
        other => panic!("expected a close with the POLICY code, got {other:?}"),
    }
    let hub = net.node("nspl-hub");
    assert_eq!(hub.counters().get("refused.wrong_channel"), 1);
    assert!(!hub.has_seen(&id).expect("store"));
    assert!(hub.outboxes().is_empty());
    assert!(!net.node("socialstyrelsen").has_seen(&id).expect("store"));
    // Audited: the refusal with the message id and the reason.
    let mut net = net;
    net.stop("nspl-hub").await;
    let log = std::fs::read_to_string(net.config("nspl-hub").data_dir.join("audit.log")).expect("audit log");
    let line = log
        .lines()
        .find(|l| l.contains(&id.to_string()))
        .expect("the refusal is in the audit log");
    assert!(
        line.contains("\trefuse\t") && line.contains("wrong_channel"),
        "{line}"
    );
    assert!(line.contains("\topen\t") && line.contains("RESTRICTED"), "{line}");
    net.shutdown().await;
}

/// Lowering the authority's clearance with a new roster stops delivery of
/// classified reports already queued for it at the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_clearance_stops_queued_classified_messages() {
    let mut net = TestNet::prepare(&line());
    net.start_node("nspl-hub").await;
    net.start_node("region-uppsala").await;
    // The authority is down: a SECRET and a SENSITIVE report wait at the hub.
    let region = net.node("region-uppsala");
    let secret = region
        .submit(report_to("socialstyrelsen", Class::Secret))
        .await
        .expect("submit");
    let open = region
        .submit(report_to("socialstyrelsen", Class::Sensitive))
        .await
        .expect("submit");
    let queued = |net: &TestNet| {
        net.node("nspl-hub")
            .outboxes()
            .iter()
            .map(|(_, h)| h.depth)
            .sum::<u64>()
    };
    wait_until(
        net.node("nspl-hub"),
        LONG,
        "both reports in custody at the hub",
        || queued(&net) == 2,
    )
    .await
    .expect("queued");
    let hub = net.node("nspl-hub");

    // The administrator lowers Socialstyrelsen to SENSITIVE; the hub reloads.
    let bytes = net.reissue_roster(|r| {
        for node in &mut r.nodes {
            if node.id == "socialstyrelsen" {
                node.clearance = pb::Class::Sensitive as i32;
            }
        }
    });
    // The file reload, as SIGHUP does it (reissue_roster wrote roster.bin).
    assert_eq!(hub.roster_reloader().reload().expect("newer roster taken"), 2);
    assert_eq!(hub.roster().serial, 2);
    // An older or the same roster is refused afterwards.
    assert!(hub.replace_roster(&bytes).is_err());

    net.start_node("socialstyrelsen").await;
    let authority = net.node("socialstyrelsen");
    wait_until(authority, LONG, "the SENSITIVE report", || {
        authority.has_seen(&open).expect("store")
    })
    .await
    .expect("the sensitive report still flows");
    let hub = net.node("nspl-hub");
    wait_until(hub, LONG, "the SECRET copy refused at egress", || {
        hub.counters().get("egress_refused.not_cleared") == 1
    })
    .await
    .expect("refused");
    // The refused copy is dropped, not kept for later (the receipt of the
    // SENSITIVE report passes through the hub too, so wait for it to leave).
    wait_until(net.node("nspl-hub"), LONG, "the hub's outboxes empty", || {
        queued(&net) == 0
    })
    .await
    .expect("the refused copy is dropped, not kept for later");
    assert!(
        !authority.has_seen(&secret).expect("store"),
        "the SECRET report never reached it"
    );
    let inbox = authority.inbox(Channel::Secure, 0, 10).expect("inbox");
    assert!(inbox.is_empty());
    net.shutdown().await;
}

/// A submit that cannot be delivered within policy is refused at once, with
/// the reason, and nothing is stored or queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_outside_policy_is_refused_at_once() {
    use sitrep_core::PolicyError;
    use sitrep_node::SubmitError;
    use sitrep_testkit::NodeSpec;
    let specs = vec![
        NodeSpec {
            id: "region-uppsala",
            kind: "REGION",
            clearance: Class::Secret,
            channels: vec![Channel::Open, Channel::Secure],
            peers: vec!["nspl-hub"],
        },
        NodeSpec {
            id: "nspl-hub",
            kind: "HUB",
            clearance: Class::Secret,
            channels: vec![Channel::Open, Channel::Secure],
            peers: vec!["region-uppsala", "msb"],
        },
        NodeSpec {
            id: "msb",
            kind: "AUTHORITY",
            clearance: Class::Sensitive,
            channels: vec![Channel::Open],
            peers: vec!["nspl-hub"],
        },
    ];
    let net = TestNet::start(&specs).await;
    let region = net.node("region-uppsala");
    let msb = net.node("msb");

    // A recipient not on the secure channel (and not cleared) for a SECRET report.
    match region.submit(report_to("msb", Class::Secret)).await {
        Err(SubmitError::Policy(PolicyError::NotOnChannel { node, channel, .. })) => {
            assert_eq!(node, n("msb"));
            assert_eq!(channel, Channel::Secure);
        }
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    // Above the region's own clearance.
    match region.submit(report_to("nspl-hub", Class::TopSecret)).await {
        Err(SubmitError::Policy(e)) => assert_eq!(e.reason(), "above_channel_max", "{e}"),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    // A node with only the open channel cannot send anything classified, whatever it asks.
    match msb.submit(report_to("region-uppsala", Class::Restricted)).await {
        Err(SubmitError::Policy(PolicyError::WrongChannel { required, .. })) => {
            assert_eq!(required, Channel::Secure);
        }
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    // An unknown recipient.
    assert!(matches!(
        region.submit(report_to("region-skane", Class::Sensitive)).await,
        Err(SubmitError::Bad {
            field: "recipients",
            ..
        })
    ));
    // An invalid report: every field error at once.
    let mut bad = report_to("msb", Class::Sensitive);
    if let Content::Report(r) = &mut bad.content {
        r.region_code = "99".into();
        r.prepared_by.clear();
    }
    match region.submit(bad).await {
        Err(SubmitError::Invalid(errors)) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["prepared_by", "region_code"]);
        }
        other => panic!("expected field errors, got {other:?}"),
    }
    // Nothing stored or queued anywhere.
    for node in [region, msb] {
        assert_eq!(node.counters().get("submitted"), 0);
        assert!(node.outboxes().is_empty());
    }
    assert_eq!(net.node("nspl-hub").counters().get("accepted"), 0);
    // And within policy it goes.
    region
        .submit(report_to("msb", Class::Sensitive))
        .await
        .expect("a SENSITIVE report to msb is fine");
    net.shutdown().await;
}
