//! National feeds at the aggregator, through real nodes: region-uppsala
//! reports to nspl-hub (role aggregator, `[[feeds]]` configured), the hub's
//! API serves the roll-ups.

use std::time::Duration;

use serde_json::Value;
use sitrep_core::feed::FeedSpec;
use sitrep_core::{Channel, Class, Label, Mode, NodeId, Precedence};
use sitrep_node::config::Role;
use sitrep_node::{Content, Submission};
use sitrep_testkit::{TestNet, line, wait_until};

const LONG: Duration = Duration::from_secs(60);
const HOUR: i64 = 3_600_000;

fn feeds() -> Vec<FeedSpec> {
    let spec = |name: &str, channel, max_class| FeedSpec {
        name: name.into(),
        channel,
        mode: Mode::Exercise,
        max_class,
        stale_after_ms: 6 * HOUR,
        regions: Vec::new(),
    };
    vec![
        spec("national-open", Channel::Open, Class::Sensitive),
        spec("national-secure", Channel::Secure, Class::Secret),
    ]
}

fn submission(number: u32, class: Class, mode: Mode, icu_adult_available: u32) -> Submission {
    let mut r = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    r.report_number = number;
    for b in &mut r.beds {
        if b.r#type == sitrep_proto::v1::BedType::IcuAdult as i32 {
            b.available = icu_adult_available;
        }
    }
    Submission {
        author: "TiB Region Uppsala".into(),
        label: Label::new(class),
        precedence: Precedence::Priority,
        mode,
        recipients: vec![NodeId::new("nspl-hub").expect("id")],
        expires_ms: None,
        content: Content::Report(r),
    }
}

async fn get(net: &TestNet, path: &str) -> (u16, Value) {
    let addr = net.node("nspl-hub").api_addr().expect("API");
    let token = net.api_token("nspl-hub", Role::Reader);
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("HTTP");
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .expect("blocking task")
}

fn row<'a>(rollup: &'a Value, code: &str) -> &'a Value {
    rollup["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["region_code"] == code)
        .expect("a row for the region")
}

fn number(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_keeps_the_latest_report_per_region_and_serves_the_rollups() {
    let mut net = TestNet::prepare(&line());
    net.override_config("nspl-hub", |c| c.feeds = feeds());
    for id in ["socialstyrelsen", "nspl-hub", "region-uppsala"] {
        net.start_node(id).await;
    }
    let region = net.node("region-uppsala");
    let hub = net.node("nspl-hub");

    // Report 2 (EXERCISE, SENSITIVE): in both feeds.
    let id2 = region
        .submit(submission(2, Class::Sensitive, Mode::Exercise, 9))
        .await
        .expect("submit");
    wait_until(hub, LONG, "report 2 at the hub", || {
        hub.counters().get("delivered") >= 1
    })
    .await
    .expect("delivered");
    let (status, open) = get(&net, "/v1/feeds/national-open").await;
    assert_eq!(status, 200, "{open}");
    let up = row(&open, "03");
    assert_eq!(number(&up["report_number"]), 2, "{up}");
    assert_eq!(number(&up["icu_adult"]["available"]), 9, "{up}");
    assert_eq!(up["never_reported"], Value::Null, "false is left out: {up}");
    assert_eq!(open["sources"][0]["region_code"], "03");
    let sequence = number(&open["sequence"]);
    assert!(sequence >= 1);
    let (_, list) = get(&net, "/v1/feeds").await;
    assert_eq!(list["feeds"].as_array().expect("feeds").len(), 2, "{list}");
    assert_eq!(list["feeds"][0]["reporting"], 1, "{list}");

    // An older report arriving later changes nothing; ACTUAL never enters.
    region
        .submit(submission(1, Class::Sensitive, Mode::Exercise, 8))
        .await
        .expect("submit");
    region
        .submit(submission(5, Class::Sensitive, Mode::Actual, 6))
        .await
        .expect("submit");
    wait_until(hub, LONG, "both at the hub", || {
        hub.counters().get("delivered") >= 3
    })
    .await
    .expect("delivered");
    let (_, open) = get(&net, "/v1/feeds/national-open").await;
    let up = row(&open, "03");
    assert_eq!(
        (
            number(&up["report_number"]),
            number(&up["icu_adult"]["available"])
        ),
        (2, 9),
        "{up}"
    );

    // A classified report 3 on the secure channel: the secure feed shows it
    // and withholds it; the open feed says nothing of it.
    let id3 = region
        .submit(submission(3, Class::Secret, Mode::Exercise, 3))
        .await
        .expect("submit");
    wait_until(hub, LONG, "report 3 at the hub", || {
        hub.counters().get("delivered") >= 4
    })
    .await
    .expect("delivered");
    let (_, secure) = get(&net, "/v1/feeds/national-secure").await;
    let up = row(&secure, "03");
    assert_eq!(number(&up["report_number"]), 3, "{up}");
    assert_eq!(secure["label"]["class"], "SECRET", "{secure}");
    assert_eq!(secure["withheld"].as_array().expect("withheld").len(), 1);
    let (_, open) = get(&net, "/v1/feeds/national-open").await;
    assert_eq!(number(&row(&open, "03")["report_number"]), 2);
    // Read back through the proto's own JSON mapping: the open roll-up's
    // sources hold report 2, and report 3's id is nowhere in it.
    let decoded: sitrep_proto::v1::NationalRollup =
        serde_json::from_value(open.clone()).expect("a NationalRollup");
    assert!(decoded.sources.iter().any(|s| s.report_id == id2.as_bytes()));
    let wire = prost::Message::encode_to_vec(&decoded);
    let hidden = id3.as_bytes();
    assert!(
        !wire.windows(hidden.len()).any(|w| w == hidden),
        "the classified id is not in the open roll-up"
    );
    assert_eq!(open["label"]["class"], "SENSITIVE");

    // The aggregator restarts: the feeds come back from its inbox.
    net.restart("nspl-hub").await;
    let (_, open) = get(&net, "/v1/feeds/national-open").await;
    assert_eq!(number(&row(&open, "03")["report_number"]), 2, "{open}");
    let (_, secure) = get(&net, "/v1/feeds/national-secure").await;
    assert_eq!(number(&row(&secure, "03")["report_number"]), 3);

    // Unknown feed, wrong role.
    assert_eq!(get(&net, "/v1/feeds/nope").await.0, 404);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_are_refused_at_start_without_the_role_or_above_the_channel() {
    let net = TestNet::prepare(&line());
    // A region has no aggregator role in the roster.
    let mut config = net.config("region-uppsala");
    config.feeds = feeds();
    let err = sitrep_node::Node::start(config)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert!(err.to_string().contains("aggregator role"), "{err}");
    // The hub may, but not a feed above what its channel carries.
    let toml = std::fs::read_to_string(net.config_path("nspl-hub")).expect("node.toml");
    let bad = format!(
        "{toml}\n[[feeds]]\nname = \"national-open\"\nchannel = \"open\"\nmode = \"ACTUAL\"\n\
         max_class = \"SECRET\"\nstale_after = \"6h\"\n"
    );
    let path = net.config_path("nspl-hub").with_file_name("bad.toml");
    std::fs::write(&path, bad).expect("write");
    let err = sitrep_node::Config::load_with_env(&path, Vec::new()).expect_err("refused");
    assert_eq!(err.key, "feeds[0].max_class", "{err}");
    assert!(
        err.problem.contains("above what the open channel carries"),
        "{err}"
    );
}
