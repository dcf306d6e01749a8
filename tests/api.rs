//! The HTTP API against real nodes: roles, validation, policy, status, metrics.

use std::time::Duration;

use serde_json::{Value, json};
use sitrep_node::config::Role;
use sitrep_testkit::{TestNet, line, wait_until};

const LONG: Duration = Duration::from_secs(60);

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(net: &TestNet, id: &str) -> Self {
        let addr = net.node(id).api_addr().expect("API configured");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base: format!("http://{addr}"),
            agent,
        }
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        token: Option<String>,
        body: Option<Value>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let resp = match (method, body) {
                ("POST", Some(b)) => {
                    let mut req = agent.post(&url);
                    if let Some(t) = token {
                        req = req.header("Authorization", &format!("Bearer {t}"));
                    }
                    req.send_json(&b)
                }
                ("DELETE", _) => agent.delete(&url).call(),
                _ => {
                    let mut req = agent.get(&url);
                    if let Some(t) = token {
                        req = req.header("Authorization", &format!("Bearer {t}"));
                    }
                    req.call()
                }
            };
            let mut resp = resp.expect("HTTP request");
            let status = resp.status().as_u16();
            (status, resp.body_mut().read_to_string().expect("body"))
        })
        .await
        .expect("blocking task")
    }
}

fn submission(class: &str, recipient: &str) -> Value {
    let report = serde_json::to_value(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms()))
        .expect("json");
    json!({
        "report": report,
        "label": { "class": class, "caveats": [] },
        "precedence": "PRIORITY",
        "mode": "EXERCISE",
        "recipients": [recipient],
        "author": "TiB Region Uppsala",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_and_role() {
    let net = TestNet::start(&line()).await;
    let region = Api::new(&net, "region-uppsala");
    let authority = Api::new(&net, "socialstyrelsen");
    let reporter = net.api_token("region-uppsala", Role::Reporter);
    let reader = net.api_token("socialstyrelsen", Role::Reader);
    let operator = net.api_token("region-uppsala", Role::Operator);

    // No token, a wrong token: 401. A token of another role: 403.
    assert_eq!(
        region
            .call(
                "POST",
                "/v1/reports",
                None,
                Some(submission("SENSITIVE", "socialstyrelsen"))
            )
            .await
            .0,
        401
    );
    assert_eq!(
        region
            .call("GET", "/v1/status", Some("not-a-token-at-all".into()), None)
            .await
            .0,
        401
    );
    assert_eq!(
        region
            .call("GET", "/v1/status", Some(reporter.clone()), None)
            .await
            .0,
        403
    );
    assert_eq!(
        region
            .call(
                "POST",
                "/v1/reports",
                Some(operator.clone()),
                Some(submission("SENSITIVE", "socialstyrelsen"))
            )
            .await
            .0,
        403
    );
    assert_eq!(
        authority
            .call(
                "GET",
                "/v1/inbox",
                Some(net.api_token("socialstyrelsen", Role::Reporter)),
                None
            )
            .await
            .0,
        403
    );

    // Submit: 202 with the id, once durable.
    let (status, body) = region
        .call(
            "POST",
            "/v1/reports",
            Some(reporter.clone()),
            Some(submission("SENSITIVE", "socialstyrelsen")),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mid = sitrep_core::MessageId::parse(&id).expect("uuid");
    assert!(
        net.node("region-uppsala").has_seen(&mid).expect("store"),
        "durable before 202"
    );

    // Delivery state, followed to DELIVERED.
    let node = net.node("region-uppsala");
    wait_until(node, LONG, "receipt", || {
        node.delivery(&mid)
            .expect("delivery")
            .iter()
            .all(|d| d.state == sitrep_store::DeliveryState::Delivered)
    })
    .await
    .expect("delivered");
    let (status, body) = region
        .call("GET", &format!("/v1/reports/{id}"), Some(reporter.clone()), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["recipients"][0]["recipient"], "socialstyrelsen");
    assert_eq!(v["recipients"][0]["state"], "DELIVERED");
    assert_eq!(v["final"], true);
    let (status, _) = region
        .call(
            "GET",
            "/v1/reports/0190b5b8-0000-7000-8000-000000000000",
            Some(reporter.clone()),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Inbox at the authority, opened, with the proto's field names and enum spellings.
    let (status, body) = authority
        .call("GET", "/v1/inbox", Some(reader.clone()), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let item = &v["items"][0];
    assert_eq!(item["id"], id);
    assert_eq!(item["label"]["class"], "SENSITIVE");
    assert_eq!(item["report"]["region_code"], "03");
    assert_eq!(item["report"]["beds"][0]["type"], "ICU_ADULT");
    let next = v["next"].as_str().expect("cursor").to_owned();
    let (_, body) = authority
        .call(
            "GET",
            &format!("/v1/inbox?after={next}"),
            Some(reader.clone()),
            None,
        )
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["items"]
            .as_array()
            .expect("items")
            .len(),
        0
    );

    // Status (operator) and the unauthenticated endpoints.
    let (status, body) = region.call("GET", "/v1/status", Some(operator), None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["node"], "region-uppsala");
    assert_eq!(v["roster"]["serial"], 1);
    assert!(v["certificates"][0]["days_left"].as_f64().expect("days") > 1.0);
    assert!(
        v["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .any(|p| p["peer"] == "nspl-hub" && p["connected"] == true)
    );
    assert_eq!(region.call("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(region.call("GET", "/readyz", None, None).await.0, 200);
    let (status, text) = region.call("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    check_prometheus_text(&text);
    assert!(text.contains("sitrep_roster_serial 1"));
    assert!(
        text.contains("sitrep_events_total{event=\"submitted\"} 1"),
        "{text}"
    );
    net.shutdown().await;
}

/// OpenMetrics text, line by line: every sample `name{labels} value` with a
/// number, after the `# TYPE` of its family (a counter's samples carry the
/// `_total` suffix), and `# EOF` as the last line.
fn check_prometheus_text(text: &str) {
    let mut families = std::collections::BTreeMap::new();
    let mut samples = 0;
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("name").to_owned();
            let kind = parts.next().expect("type").to_owned();
            assert!(matches!(kind.as_str(), "gauge" | "counter"), "{line}");
            families.insert(name, kind);
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().expect("name");
        let family = match name.strip_suffix("_total") {
            Some(f) if families.get(f).is_some_and(|k| k == "counter") => f,
            _ => name,
        };
        assert!(families.contains_key(family), "sample before its TYPE: {line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 5, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fields_are_all_reported_and_policy_refusals_store_nothing() {
    let net = TestNet::start(&line()).await;
    let region = Api::new(&net, "region-uppsala");
    let reporter = net.api_token("region-uppsala", Role::Reporter);

    // Three invalid fields: all three come back.
    let mut bad = submission("SENSITIVE", "socialstyrelsen");
    bad["report"]["region_code"] = json!("99");
    bad["report"]["beds"][0]["occupied"] = json!(500);
    bad["precedence"] = json!("URGENT");
    let (status, body) = region
        .call("POST", "/v1/reports", Some(reporter.clone()), Some(bad))
        .await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    for f in ["precedence", "report.region_code", "report.beds[0].occupied"] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    assert!(
        v["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .all(|e| e["problem"].as_str().is_some_and(|p| !p.is_empty()))
    );

    // A label above what the node may send: TOP_SECRET, the region's channels stop at SECRET.
    let (status, body) = region
        .call(
            "POST",
            "/v1/reports",
            Some(reporter.clone()),
            Some(submission("TOP_SECRET", "socialstyrelsen")),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("TOP_SECRET"), "{body}");
    let node = net.node("region-uppsala");
    assert_eq!(node.counters().get("submitted"), 0, "nothing stored");
    assert!(node.outboxes().is_empty());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_peer_going_down_and_coming_back() {
    let mut net = TestNet::start(&line()).await;
    let operator = net.api_token("region-uppsala", Role::Operator);
    let reporter = net.api_token("region-uppsala", Role::Reporter);
    let status = |v: &Value| {
        let peer = v["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["peer"] == "nspl-hub" && p["channel"] == "open")
            .cloned()
            .expect("hub link");
        let outbox = v["outboxes"]
            .as_array()
            .expect("outboxes")
            .iter()
            .find(|o| o["next_hop"] == "nspl-hub")
            .cloned();
        (
            peer["connected"].as_bool().expect("connected"),
            outbox.as_ref().map_or(0, |o| o["depth"].as_u64().expect("depth")),
            outbox.as_ref().and_then(|o| o["oldest_age_s"].as_f64()),
        )
    };
    net.stop("nspl-hub").await;
    let region = net.node("region-uppsala");
    wait_until(region, LONG, "the hub link down", || {
        region.peers().iter().all(|p| !p.connected)
    })
    .await
    .expect("link down");
    let api = Api::new(&net, "region-uppsala");
    let submit = || {
        api.call(
            "POST",
            "/v1/reports",
            Some(reporter.clone()),
            Some(submission("SENSITIVE", "socialstyrelsen")),
        )
    };
    assert_eq!(submit().await.0, 202);
    let (_, body) = api.call("GET", "/v1/status", Some(operator.clone()), None).await;
    let (connected, depth1, age1) = status(&serde_json::from_str(&body).expect("json"));
    assert!(!connected);
    assert_eq!(depth1, 1);
    assert_eq!(submit().await.0, 202);
    let (_, body) = api.call("GET", "/v1/status", Some(operator.clone()), None).await;
    let (connected, depth2, age2) = status(&serde_json::from_str(&body).expect("json"));
    assert!(!connected);
    assert_eq!(depth2, 2, "the outbox grows");
    assert!(
        age2.expect("age") > age1.expect("age"),
        "the oldest age rises: {age1:?} → {age2:?}"
    );

    // The hub comes back: connected again and the outbox drains to zero.
    net.start_node("nspl-hub").await;
    let region = net.node("region-uppsala");
    wait_until(region, LONG, "the outbox drained", || {
        region.outboxes().is_empty()
    })
    .await
    .expect("drained");
    let (_, body) = api.call("GET", "/v1/status", Some(operator), None).await;
    let (connected, depth, _) = status(&serde_json::from_str(&body).expect("json"));
    assert!(connected);
    assert_eq!(depth, 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_submissions_are_400_with_the_field_named() {
    let net = TestNet::start(&line()).await;
    let region = Api::new(&net, "region-uppsala");
    let reporter = net.api_token("region-uppsala", Role::Reporter);
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "recipients",
            Box::new(|b| b["recipients"] = json!(["socialstyrelsen", "socialstyrelsen"])),
        ),
        ("precedence", Box::new(|b| b["precedence"] = json!(4))),
        ("author", Box::new(|b| b["author"] = json!(["x"]))),
        (
            "label.caveats[0]",
            Box::new(|b| b["label"]["caveats"] = json!([7])),
        ),
        ("expires", Box::new(|b| b["expires"] = json!("next tuesday"))),
        ("unexpected", Box::new(|b| b["unexpected"] = json!(true))),
    ];
    for (want, edit) in cases {
        let mut body = submission("SENSITIVE", "socialstyrelsen");
        edit(&mut body);
        let (status, text) = region
            .call("POST", "/v1/reports", Some(reporter.clone()), Some(body))
            .await;
        assert_eq!(status, 400, "{want}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON error body");
        assert!(
            v["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .any(|e| e["field"] == want),
            "{want}: {text}"
        );
    }
    let reader = net.api_token("region-uppsala", Role::Reader);
    let (status, text) = region
        .call("GET", "/v1/inbox?limit=lots", Some(reader), None)
        .await;
    assert_eq!(status, 400);
    assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
    assert_eq!(net.node("region-uppsala").counters().get("submitted"), 0);
    net.shutdown().await;
}

/// `/v1/openapi.json` is OpenAPI 3.1, lists exactly the routes the node
/// serves, and each of them answers on the real server (not 404/405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_lists_every_route_that_exists() {
    let net = TestNet::start(&line()).await;
    let region = Api::new(&net, "region-uppsala");
    let (status, body) = region.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes.sort();
    assert_eq!(
        routes,
        [
            "DELETE /v1/session",
            "GET /healthz",
            "GET /metrics",
            "GET /readyz",
            "GET /v1/feeds",
            "GET /v1/feeds/{name}",
            "GET /v1/feeds/{name}/events",
            "GET /v1/feeds/{name}/regions/{code}",
            "GET /v1/inbox",
            "GET /v1/openapi.json",
            "GET /v1/reports/last",
            "GET /v1/reports/options",
            "GET /v1/reports/{id}",
            "GET /v1/session",
            "GET /v1/status",
            "GET /v1/status/history",
            "POST /v1/feeds/{name}/subscribe",
            "POST /v1/feeds/{name}/unsubscribe",
            "POST /v1/feeds/{name}/verify",
            "POST /v1/reports",
            "POST /v1/session",
        ]
    );
    assert!(doc["components"]["schemas"]["SubmitBody"].is_object(), "{body}");
    assert!(
        doc["components"]["securitySchemes"]["bearer"].is_object(),
        "{body}"
    );
    // Each one is served: without a token the protected ones answer 401, the
    // others 200 (signing out with no session: 204; signing in with no token:
    // 400); an unknown route answers 404, so the check can fail.
    for route in &routes {
        let (method, path) = route.split_once(' ').expect("method and path");
        let path = path
            .replace("{id}", "01a44913-6167-7c2a-9e4b-1d07f3a26b58")
            .replace("{name}", "national-open")
            .replace("{code}", "03");
        let (status, text) = match method {
            "POST" => region.call("POST", &path, None, Some(json!({}))).await,
            "GET" => region.call("GET", &path, None, None).await,
            "DELETE" => region.call("DELETE", &path, None, None).await,
            other => panic!("{other}: a method this test does not call"),
        };
        let expected: &[u16] = match route.as_str() {
            "DELETE /v1/session" => &[204],
            "POST /v1/session" => &[400],
            _ => &[200, 401],
        };
        assert!(expected.contains(&status), "{route}: {status} {text}");
    }
    assert_eq!(region.call("GET", "/v1/nothing", None, None).await.0, 404);
    net.shutdown().await;
}

/// A failed fdatasync under the region's open store (injected into its
/// segment log's directory): the report that met it is not acknowledged,
/// every later one is refused, `/readyz` and `/v1/status` say why, and
/// nothing of it was stored or forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_makes_the_node_unready_and_acknowledges_nothing_after_it() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use sitrep_core::Channel;
    use sitrep_store::log::{Dir, SimDir};

    let mut net = TestNet::prepare(&line());
    for id in ["socialstyrelsen", "nspl-hub"] {
        net.start_node(id).await;
    }
    let sim = SimDir::new();
    let dirs: BTreeMap<Channel, Arc<dyn Dir>> =
        BTreeMap::from([(Channel::Open, Arc::new(sim.clone()) as Arc<dyn Dir>)]);
    net.start_node_on("region-uppsala", None, dirs).await;
    let region = Api::new(&net, "region-uppsala");
    let submitter = Some(net.api_token("region-uppsala", Role::Reporter));
    let operator = Some(net.api_token("region-uppsala", Role::Operator));

    // Before the failure: stored, forwarded, delivered.
    let (status, body) = region
        .call(
            "POST",
            "/v1/reports",
            submitter.clone(),
            Some(submission("SENSITIVE", "socialstyrelsen")),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let authority = net.node("socialstyrelsen");
    wait_until(authority, LONG, "the first report delivered", || {
        authority
            .inbox(Channel::Open, 0, 10)
            .map(|v| v.len())
            .unwrap_or(0)
            == 1
    })
    .await
    .expect("delivered");
    // And settled at the region: its custody record written (the copy
    // gone) and the receipt back, so that the failure meets the next submit.
    let node = net.node("region-uppsala");
    wait_until(node, LONG, "the first report settled at the region", || {
        node.outboxes().iter().all(|(_, h)| h.depth == 0) && node.counters().get("receipts") >= 1
    })
    .await
    .expect("settled");
    assert_eq!(region.call("GET", "/readyz", None, None).await.0, 200);

    // The next fdatasync fails.
    sim.fail_next_sync();
    let (status, body) = region
        .call(
            "POST",
            "/v1/reports",
            submitter.clone(),
            Some(submission("SENSITIVE", "socialstyrelsen")),
        )
        .await;
    assert_eq!(
        status, 503,
        "the report that met the failed sync is not acknowledged: {body}"
    );
    assert!(body.contains("refuses writes"), "{body}");
    // And every write after it, though the disk would take it now.
    let (status, body) = region
        .call(
            "POST",
            "/v1/reports",
            submitter.clone(),
            Some(submission("SENSITIVE", "socialstyrelsen")),
        )
        .await;
    assert_eq!(status, 503, "{body}");

    let (status, why) = region.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("storage failure"), "{why}");
    let (status, body) = region.call("GET", "/v1/status", operator, None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let store = |channel: &str| {
        v["stores"]
            .as_array()
            .expect("stores")
            .iter()
            .find(|s| s["channel"] == channel)
            .cloned()
            .expect("a store per channel")
    };
    let open = store("open");
    assert!(
        open["failed"].as_str().is_some_and(|f| f.contains("sync")),
        "{open}"
    );
    let secure = store("secure");
    assert!(secure["failed"].is_null(), "{secure}");

    // Nothing of the refused reports is queued or was sent: the region's
    // outboxes are empty, it counts one submission, and the authority holds
    // only the first report.
    assert!(
        node.outboxes().iter().all(|(_, h)| h.depth == 0),
        "{:?}",
        node.outboxes()
    );
    assert_eq!(
        node.counters().get("submitted"),
        1,
        "{:?}",
        node.counters().snapshot()
    );
    assert_eq!(authority.inbox(Channel::Open, 0, 10).expect("inbox").len(), 1);
    net.shutdown().await;
}
