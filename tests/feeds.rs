//! National feeds at the aggregator, through real nodes: region-uppsala
//! reports to nspl-hub (role aggregator, `[[feeds]]` configured), the hub's
//! API serves the roll-ups.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sitrep_core::feed::FeedSpec;
use sitrep_core::{Channel, Class, ContentType, Label, Mode, NodeId, Precedence};
use sitrep_node::config::Role;
use sitrep_node::{Content, Submission};
use sitrep_testkit::{NodeSpec, TestNet, line, wait_until};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(60);

fn feeds() -> Vec<FeedSpec> {
    vec![
        FeedSpec::national("national-open", Channel::Open, Mode::Exercise, Class::Sensitive),
        FeedSpec::national("national-secure", Channel::Secure, Mode::Exercise, Class::Secret),
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

/// A node's HTTP API with the reader token.
#[derive(Clone)]
struct Api {
    base: String,
    token: String,
}

fn api(net: &TestNet, id: &str) -> Api {
    let addr = net.node(id).api_addr().expect("API");
    Api {
        base: format!("http://{addr}"),
        token: net.api_token(id, Role::Reader),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

async fn call(api: &Api, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", api.base);
    let auth = format!("Bearer {}", api.token);
    let method = method.to_owned();
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let mut resp = match (method.as_str(), body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
        }
        .expect("HTTP");
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().expect("body");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .expect("blocking task")
}

async fn get(net: &TestNet, path: &str) -> (u16, Value) {
    call(&api(net, "nspl-hub"), "GET", path, None).await
}

/// Follows `GET /v1/feeds/{feed}/events` on a thread; each event as
/// (id, roll-up JSON). Ends when the node closes the stream.
fn events(api: &Api, feed: &str, last: Option<u64>) -> mpsc::UnboundedReceiver<(u64, Value)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let url = format!("{}/v1/feeds/{feed}/events", api.base);
    let auth = format!("Bearer {}", api.token);
    std::thread::spawn(move || {
        let mut req = agent().get(&url).header("Authorization", &auth);
        if let Some(l) = last {
            req = req.header("Last-Event-ID", &l.to_string());
        }
        let resp = req.call().expect("events");
        assert_eq!(resp.status().as_u16(), 200, "events of {url}");
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let (mut id, mut data) = (0, String::new());
        for line in std::io::BufRead::lines(reader) {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().expect("numeric id");
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let v: Value = serde_json::from_str(&data).expect("event JSON");
                data.clear();
                if tx.send((id, v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Reads events until one satisfies `pred`; returns it.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<(u64, Value)>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> (u64, Value) {
    loop {
        match tokio::time::timeout(LONG, rx.recv()).await {
            Ok(Some((id, v))) if pred(&v) => return (id, v),
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// The row of `code` has report `n`.
fn has_report(code: &'static str, n: u64) -> impl Fn(&Value) -> bool {
    move |v| number(&row(v, code)["report_number"]) == n
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
    let mut open_events = events(&api(&net, "nspl-hub"), "national-open", None);
    until(&mut open_events, "report 2 in the open feed", has_report("03", 2)).await;
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
    assert_eq!(list["feeds"][0]["role"], "aggregator", "{list}");

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
    let mut secure_events = events(&api(&net, "nspl-hub"), "national-secure", None);
    let (_, secure) = until(
        &mut secure_events,
        "report 3 in the secure feed",
        has_report("03", 3),
    )
    .await;
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
    let mut open_events = events(&api(&net, "nspl-hub"), "national-open", None);
    until(
        &mut open_events,
        "the open feed after the restart",
        has_report("03", 2),
    )
    .await;
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

/// region-uppsala and the hub (aggregator) as in `line()`, plus three
/// authorities: Socialstyrelsen (SECRET, both channels), MSB (cleared
/// RESTRICTED, both channels) and a county board without the subscriber role.
fn national() -> Vec<NodeSpec> {
    let both = vec![Channel::Open, Channel::Secure];
    let mut specs = line();
    specs[1].peers = vec![
        "region-uppsala",
        "socialstyrelsen",
        "msb",
        "lansstyrelsen-uppsala",
    ];
    specs.push(NodeSpec {
        id: "msb",
        kind: "AUTHORITY",
        clearance: Class::Restricted,
        channels: both,
        peers: vec!["nspl-hub"],
    });
    specs.push(NodeSpec {
        id: "lansstyrelsen-uppsala",
        kind: "COUNTY_BOARD",
        clearance: Class::Sensitive,
        channels: vec![Channel::Open],
        peers: vec!["nspl-hub"],
    });
    specs
}

async fn start_national(extra_feeds: Vec<FeedSpec>) -> TestNet {
    let mut net = TestNet::prepare(&national());
    net.override_config("nspl-hub", move |c| {
        c.feeds = feeds();
        c.feeds.extend(extra_feeds.clone());
        c.limits.feed_min_interval = Duration::from_millis(50);
    });
    for s in national() {
        net.start_node(s.id).await;
    }
    net
}

async fn subscribe(net: &TestNet, who: &str, feed: &str, channel: &str) -> String {
    let (status, body) = call(
        &api(net, who),
        "POST",
        &format!("/v1/feeds/{feed}/subscribe"),
        Some(serde_json::json!({ "channel": channel })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["request_id"].as_str().expect("request id").to_owned()
}

/// The listed state of `feed` at `who`, once `pred` holds for it.
async fn listed_when(net: &TestNet, who: &str, feed: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let node = net.node(who);
    let a = api(net, who);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let mut rx = node.watch();
        rx.mark_unchanged();
        let (_, list) = call(&a, "GET", "/v1/feeds", None).await;
        if let Some(f) = list["feeds"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == feed && pred(f)))
        {
            return f.clone();
        }
        assert!(
            tokio::time::timeout_at(deadline, rx.changed()).await.is_ok(),
            "timed out waiting on {feed} at {who}: {list}"
        );
    }
}

/// The listed feed `f` gives a reason containing `want`.
fn assert_reason(f: &Value, want: &str) {
    assert!(
        f["reason"].as_str().is_some_and(|r| r.contains(want)),
        "reason should say {want:?}: {f}"
    );
}

fn inbox_types(net: &TestNet, who: &str) -> Vec<ContentType> {
    let node = net.node(who);
    Channel::ALL
        .iter()
        .flat_map(|c| node.inbox(*c, 0, 1000).expect("inbox"))
        .map(|r| r.header.content_type)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_the_snapshot_then_each_update_across_restarts_of_either_side() {
    let mut net = start_national(Vec::new()).await;
    let region = net.node("region-uppsala");
    region
        .submit(submission(1, Class::Sensitive, Mode::Exercise, 9))
        .await
        .expect("submit");
    let mut hub_events = events(&api(&net, "nspl-hub"), "national-open", None);
    until(&mut hub_events, "report 1 at the hub", has_report("03", 1)).await;

    // Subscribe: the snapshot comes first.
    subscribe(&net, "socialstyrelsen", "national-open", "open").await;
    let sub = api(&net, "socialstyrelsen");
    let mut sub_events = events(&sub, "national-open", None);
    let (first, snapshot) = until(&mut sub_events, "the snapshot", has_report("03", 1)).await;
    assert_eq!(snapshot["aggregator"], "nspl-hub");
    assert_eq!(
        snapshot["regions"].as_array().map(Vec::len),
        Some(1),
        "one region in this roster: {snapshot}"
    );
    let listed = listed_when(&net, "socialstyrelsen", "national-open", |f| {
        f["state"] == "active"
    })
    .await;
    assert_eq!(listed["role"], "subscriber", "{listed}");
    assert_eq!(listed["aggregator"], "nspl-hub", "{listed}");
    let hub_listed = listed_when(&net, "nspl-hub", "national-open", |f| {
        f["subscribers"].as_array().is_some_and(|s| s.len() == 1)
    })
    .await;
    assert_eq!(hub_listed["subscribers"][0], "socialstyrelsen");

    // Each update follows.
    let region = net.node("region-uppsala");
    region
        .submit(submission(2, Class::Sensitive, Mode::Exercise, 8))
        .await
        .expect("submit");
    let (second, _) = until(&mut sub_events, "report 2", has_report("03", 2)).await;
    assert!(second > first, "sequences grow: {first} then {second}");

    // The subscriber is down while reports 3, 4 and 5 are published: each
    // update replaces the one still queued for it, so when it is back it
    // gets the latest alone.
    let updates_held = |net: &TestNet| {
        inbox_types(net, "socialstyrelsen")
            .iter()
            .filter(|t| **t == ContentType::FeedUpdate)
            .count()
    };
    let before = updates_held(&net);
    net.stop("socialstyrelsen").await;
    for n in 3..=5 {
        net.node("region-uppsala")
            .submit(submission(n, Class::Sensitive, Mode::Exercise, 7))
            .await
            .expect("submit");
        until(
            &mut hub_events,
            "the report at the hub",
            has_report("03", u64::from(n)),
        )
        .await;
    }
    net.start_node("socialstyrelsen").await;
    let sub = api(&net, "socialstyrelsen");
    let mut sub_events = events(&sub, "national-open", Some(second));
    until(
        &mut sub_events,
        "report 5 after the subscriber's restart",
        has_report("03", 5),
    )
    .await;
    assert_eq!(
        updates_held(&net),
        before + 1,
        "the superseded updates were replaced in the hub's outbox, not delivered"
    );
    // Its subscription list survived too.
    listed_when(&net, "socialstyrelsen", "national-open", |f| {
        f["state"] == "active"
    })
    .await;

    // The aggregator restarts: the subscription holds, updates go on.
    net.restart("nspl-hub").await;
    net.node("region-uppsala")
        .submit(submission(6, Class::Sensitive, Mode::Exercise, 6))
        .await
        .expect("submit");
    let (_, latest) = until(
        &mut sub_events,
        "report 6 after the hub's restart",
        has_report("03", 6),
    )
    .await;
    assert_eq!(number(&row(&latest, "03")["icu_adult"]["available"]), 6);
    let (_, held) = call(&sub, "GET", "/v1/feeds/national-open", None).await;
    assert_eq!(number(&row(&held, "03")["report_number"]), 6, "{held}");

    // Status and metrics show the feeds, their subscribers and lag.
    let operator = Api {
        token: net.api_token("nspl-hub", Role::Operator),
        ..api(&net, "nspl-hub")
    };
    let (status, doc) = call(&operator, "GET", "/v1/status", None).await;
    assert_eq!(status, 200, "{doc}");
    let open = doc["feeds"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == "national-open"))
        .unwrap_or_else(|| panic!("national-open in the status: {doc}"));
    assert_eq!(
        (open["role"].as_str(), open["subscribers"].as_u64()),
        (Some("aggregator"), Some(1)),
        "{open}"
    );
    assert_eq!(open["regions_reporting"], 1, "{open}");
    let metrics = tokio::task::spawn_blocking({
        let url = format!("{}/metrics", operator.base);
        move || {
            agent()
                .get(&url)
                .call()
                .expect("metrics")
                .body_mut()
                .read_to_string()
                .expect("text")
        }
    })
    .await
    .expect("blocking");
    assert!(
        metrics.contains("sitrep_feed_subscribers{feed=\"national-open\",role=\"aggregator\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sitrep_feed_update_lag_seconds{feed=\"national-open\""),
        "{metrics}"
    );

    // Unsubscribe: the hub drops it.
    let (status, body) = call(&sub, "POST", "/v1/feeds/national-open/unsubscribe", None).await;
    assert_eq!(status, 202, "{body}");
    listed_when(&net, "nspl-hub", "national-open", |f| {
        f["subscribers"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    listed_when(&net, "socialstyrelsen", "national-open", |f| {
        f["state"] == "ended"
    })
    .await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_without_the_role_or_the_clearance_is_refused_with_the_reason_and_gets_nothing() {
    let net = start_national(Vec::new()).await;
    net.node("region-uppsala")
        .submit(submission(1, Class::Secret, Mode::Exercise, 9))
        .await
        .expect("submit");

    // No subscriber role.
    subscribe(&net, "lansstyrelsen-uppsala", "national-open", "open").await;
    let f = listed_when(&net, "lansstyrelsen-uppsala", "national-open", |f| {
        f["state"] == "refused"
    })
    .await;
    assert_reason(&f, "subscriber role");
    // Cleared RESTRICTED: not for a feed that takes SECRET.
    subscribe(&net, "msb", "national-secure", "secure").await;
    let f = listed_when(&net, "msb", "national-secure", |f| f["state"] == "refused").await;
    assert_reason(&f, "cleared for RESTRICTED");
    // Asked on the open channel, the secure feed does not exist.
    subscribe(&net, "msb", "national-secure", "open").await;
    let f = listed_when(&net, "msb", "national-secure", |f| {
        f["state"] == "refused" && f["channel"] == "open"
    })
    .await;
    assert_reason(&f, "no feed named");
    // They got nothing of the feeds.
    for who in ["lansstyrelsen-uppsala", "msb"] {
        let types = inbox_types(&net, who);
        assert!(!types.contains(&ContentType::FeedUpdate), "{who}: {types:?}");
        for feed in ["national-open", "national-secure"] {
            let (status, body) = call(&api(&net, who), "GET", &format!("/v1/feeds/{feed}"), None).await;
            assert_eq!(status, 404, "{who} {feed}: {body}");
        }
    }

    // A roster that lowers Socialstyrelsen's clearance ends its secure subscription.
    subscribe(&net, "socialstyrelsen", "national-secure", "secure").await;
    let mut sub_events = events(&api(&net, "socialstyrelsen"), "national-secure", None);
    until(&mut sub_events, "the secure snapshot", has_report("03", 1)).await;
    let lowered = net.reissue_roster(|r| {
        r.serial += 1;
        for n in &mut r.nodes {
            if n.id == "socialstyrelsen" {
                n.clearance = sitrep_proto::v1::Class::Restricted as i32;
            }
        }
    });
    for id in ["nspl-hub", "socialstyrelsen"] {
        net.node(id).replace_roster(&lowered).expect("new roster");
    }
    let f = listed_when(&net, "socialstyrelsen", "national-secure", |f| {
        f["state"] == "ended"
    })
    .await;
    assert_reason(&f, "cleared for RESTRICTED");
    listed_when(&net, "nspl-hub", "national-secure", |f| {
        f["subscribers"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_feed_carries_nothing_classified_anywhere_and_the_secure_feed_is_labelled_by_its_inputs() {
    let specs = national();
    let mut net = TestNet::prepare(&specs);
    net.override_config("nspl-hub", |c| c.feeds = feeds());
    let mut recorders = Vec::new();
    for s in &specs {
        let rec = Arc::new(Recorder::default());
        net.start_node_with(s.id, Some(rec.clone())).await;
        recorders.push(rec);
    }
    subscribe(&net, "socialstyrelsen", "national-open", "open").await;
    subscribe(&net, "socialstyrelsen", "national-secure", "secure").await;
    let sub = api(&net, "socialstyrelsen");
    let mut open_events = events(&sub, "national-open", None);
    let mut secure_events = events(&sub, "national-secure", None);
    let region = net.node("region-uppsala");
    region
        .submit(submission(2, Class::Sensitive, Mode::Exercise, 9))
        .await
        .expect("submit");
    let mut secret = submission(3, Class::Secret, Mode::Exercise, 3);
    if let Content::Report(r) = &mut secret.content {
        r.assessment = format!("lägesbedömning {CANARY}");
    }
    let id3 = region.submit(secret).await.expect("submit");
    let (_, secure) = until(
        &mut secure_events,
        "report 3 in the secure feed",
        has_report("03", 3),
    )
    .await;
    assert_eq!(secure["label"]["class"], "SECRET", "{secure}");
    let withheld = secure["withheld"].as_array().expect("withheld");
    assert_eq!(withheld.len(), 1, "{secure}");
    let decoded: sitrep_proto::v1::NationalRollup = serde_json::from_value(secure.clone()).expect("rollup");
    assert_eq!(decoded.withheld[0].report_id, id3.as_bytes().to_vec());
    let (_, open) = until(&mut open_events, "report 2 in the open feed", has_report("03", 2)).await;
    assert_eq!(open["label"]["class"], "SENSITIVE", "{open}");

    // Nothing of report 3 in the open roll-up, in any open-channel frame, or
    // in any open-channel store.
    let decoded: sitrep_proto::v1::NationalRollup = serde_json::from_value(open.clone()).expect("rollup");
    let wire = prost::Message::encode_to_vec(&decoded);
    let hidden = id3.as_bytes();
    let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!has(&wire, hidden) && !has(&wire, CANARY.as_bytes()));
    assert!(!open.to_string().contains(CANARY));
    let mut open_frames = 0;
    for rec in &recorders {
        for (channel, _, peer, frame) in rec.frames() {
            if channel == Channel::Open {
                open_frames += 1;
                assert!(!has(&frame, hidden), "report 3's id in an open frame with {peer}");
                assert!(
                    !has(&frame, CANARY.as_bytes()),
                    "the canary in an open frame with {peer}"
                );
            }
        }
    }
    assert!(open_frames > 0);
    for s in &specs {
        for file in net.store_files(s.id) {
            if !file.components().any(|c| c.as_os_str() == "open") {
                continue;
            }
            let bytes = std::fs::read(&file).expect("read");
            assert!(!has(&bytes, hidden), "report 3's id in {}", file.display());
            assert!(
                !has(&bytes, CANARY.as_bytes()),
                "the canary in {}",
                file.display()
            );
        }
    }
    net.shutdown().await;
}

const CANARY: &str = "CANARY-7f3a-HEMLIG";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdue_and_stale_flip_at_their_times_at_the_subscriber() {
    let fast = FeedSpec {
        stale_after_ms: 4_000,
        ..FeedSpec::national("national-fast", Channel::Open, Mode::Exercise, Class::Sensitive)
    };
    let net = start_national(vec![fast]).await;
    subscribe(&net, "socialstyrelsen", "national-fast", "open").await;
    let mut sub_events = events(&api(&net, "socialstyrelsen"), "national-fast", None);
    let mut s = submission(1, Class::Sensitive, Mode::Exercise, 9);
    let due = sitrep_node::clock::now_ms() + 2_000;
    if let Content::Report(r) = &mut s.content {
        r.next_report_due_unix_ms = due;
    }
    net.node("region-uppsala").submit(s).await.expect("submit");
    let (_, fresh) = until(&mut sub_events, "report 1", has_report("03", 1)).await;
    let r = row(&fresh, "03");
    assert_eq!(
        (r["overdue"].as_bool(), r["stale"].as_bool()),
        (None, None),
        "{r}"
    );
    let (_, overdue) = until(&mut sub_events, "overdue", |v| row(v, "03")["overdue"] == true).await;
    let built = number(&overdue["built_unix_ms"]) as i64;
    assert!(
        built > due,
        "flipped after the due time: built {built}, due {due}"
    );
    assert_eq!(
        row(&overdue, "03")["stale"],
        Value::Null,
        "not stale yet: {overdue}"
    );
    assert_eq!(overdue["totals"]["regions_overdue"], 1);
    let (_, stale) = until(&mut sub_events, "stale", |v| row(v, "03")["stale"] == true).await;
    let received = number(&row(&stale, "03")["last_report_unix_ms"]) as i64;
    let built = number(&stale["built_unix_ms"]) as i64;
    assert!(built > received + 4_000, "stale only after the limit");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_after_last_event_id_without_missing_an_update() {
    let net = start_national(Vec::new()).await;
    let hub = api(&net, "nspl-hub");
    let region = net.node("region-uppsala");
    region
        .submit(submission(1, Class::Sensitive, Mode::Exercise, 9))
        .await
        .expect("submit");
    let mut a = events(&hub, "national-open", None);
    let (first, _) = until(&mut a, "report 1", has_report("03", 1)).await;
    let mut seen = Vec::new();
    for n in 2..=6 {
        region
            .submit(submission(n, Class::Sensitive, Mode::Exercise, 10 - n))
            .await
            .expect("submit");
        let (id, _) = until(&mut a, "the next report", has_report("03", u64::from(n))).await;
        seen.push(id);
    }
    // A client that stopped after the first event resumes from its id.
    let mut b = events(&hub, "national-open", Some(first));
    let mut resumed = Vec::new();
    while resumed.last() != seen.last() {
        let (id, _) = until(&mut b, "the resumed events", |_| true).await;
        resumed.push(id);
    }
    // Every update A saw after `first`, in order (A may have seen more,
    // e.g. a flag flip, which B sees too).
    assert!(seen.iter().all(|s| resumed.contains(s)), "{seen:?} ⊄ {resumed:?}");
    assert!(resumed.windows(2).all(|w| w[0] < w[1]), "{resumed:?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_an_honest_rollup_and_fails_on_a_changed_figure_or_digest() {
    let net = start_national(Vec::new()).await;
    let hub = api(&net, "nspl-hub");
    net.node("region-uppsala")
        .submit(submission(1, Class::Sensitive, Mode::Exercise, 9))
        .await
        .expect("submit");
    let mut a = events(&hub, "national-open", None);
    let (_, honest) = until(&mut a, "report 1", has_report("03", 1)).await;

    let (status, v) = call(&hub, "POST", "/v1/feeds/national-open/verify", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sources"].as_array().expect("sources").len(), 1, "{v}");
    let (_, v) = call(
        &hub,
        "POST",
        "/v1/feeds/national-open/verify",
        Some(honest.clone()),
    )
    .await;
    assert_eq!(v["ok"], true, "{v}");

    let mut figure = honest.clone();
    for r in figure["regions"].as_array_mut().expect("rows") {
        if r["region_code"] == "03" {
            r["icu_available"] = Value::from(number(&r["icu_available"]) + 1);
        }
    }
    let (_, v) = call(&hub, "POST", "/v1/feeds/national-open/verify", Some(figure)).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v.to_string().contains("does not hold the report's figures"),
        "{v}"
    );

    let mut digest = honest.clone();
    digest["sources"][0]["envelope_sha256"] = Value::from("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let (_, v) = call(&hub, "POST", "/v1/feeds/national-open/verify", Some(digest)).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v.to_string().contains("SHA-256"), "{v}");

    // A node that never received the report cannot vouch for it.
    let (_, v) = call(
        &api(&net, "msb"),
        "POST",
        "/v1/feeds/national-open/verify",
        Some(honest),
    )
    .await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v.to_string().contains("no envelope"), "{v}");
    net.shutdown().await;
}

/// One recorded frame: channel, direction, peer, wire bytes.
type Recorded = (Channel, sitrep_net::Direction, NodeId, Vec<u8>);

/// Keeps every frame an endpoint sent or received.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<Recorded>>);

impl sitrep_net::FrameRecorder for Recorder {
    fn record(&self, channel: Channel, dir: sitrep_net::Direction, peer: &NodeId, frame: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((channel, dir, peer.clone(), frame.to_vec()));
    }
}

impl Recorder {
    fn frames(&self) -> Vec<Recorded> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// `GET /v1/feeds/{name}/regions/{code}`: the region's row in each roll-up
/// held, one entry per change, oldest first; an unknown region is `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regions_history_has_an_entry_per_change() {
    let net = start_national(Vec::new()).await;
    let mut hub_events = events(&api(&net, "nspl-hub"), "national-open", None);
    for n in 1..=2 {
        net.node("region-uppsala")
            .submit(submission(n, Class::Sensitive, Mode::Exercise, 4 + n))
            .await
            .expect("submitted");
        until(
            &mut hub_events,
            "the report in the hub's roll-up",
            has_report("03", n.into()),
        )
        .await;
    }
    let (status, history) = get(&net, "/v1/feeds/national-open/regions/03").await;
    assert_eq!(status, 200, "{history}");
    let numbers: Vec<u64> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| number(&e["row"]["report_number"]))
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(numbers, [1, 2], "{history}");
    assert_eq!(get(&net, "/v1/feeds/national-open/regions/99").await.0, 404);
    net.shutdown().await;
}
