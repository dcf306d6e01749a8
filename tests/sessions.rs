//! The console's side of the HTTP API over plain HTTP against real nodes:
//! the page and its security headers, sign-in for a session cookie, the
//! CSRF and same-origin checks on what a cookie may change, sign-out, and
//! the endpoints the views read (report options, the last report, counter
//! history; a region's history is in `tests/feeds.rs`). The browser tests (`tests/console.rs`)
//! drive the same through Chromium.

use std::time::Duration;

use serde_json::{Value, json};
use sitrep_core::{Class, Label, Mode, NodeId, Precedence};
use sitrep_node::config::Role;
use sitrep_node::{Content, Submission};
use sitrep_suite::http::{self, Answer};
use sitrep_testkit::{TestNet, line, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// A request to `base` + `path`.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: Vec<(&str, String)>,
    body: Option<String>,
) -> Answer {
    http::call(method, &format!("{base}{path}"), &headers, body).await
}

fn base(net: &TestNet, id: &str) -> String {
    format!("http://{}", net.node(id).api_addr().expect("API"))
}

fn bearer(net: &TestNet, id: &str, role: Role) -> (&'static str, String) {
    ("Authorization", format!("Bearer {}", net.api_token(id, role)))
}

fn json_type() -> (&'static str, String) {
    ("Content-Type", "application/json".to_owned())
}

fn submission() -> String {
    json!({
        "report": serde_json::to_value(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms())).expect("json"),
        "label": {"class": "SENSITIVE"},
        "mode": "EXERCISE",
        "recipients": ["nspl-hub"],
        "author": "TiB Region Uppsala",
    })
    .to_string()
}

/// `POST /v1/session` with `token`, as the console sends it.
async fn session_for(base: &str, token: &str) -> Answer {
    call(
        base,
        "POST",
        "/v1/session",
        vec![json_type()],
        Some(json!({"token": token}).to_string()),
    )
    .await
}

/// Signs in with `token`; the cookie pair (`sitrep_session=…`) and the CSRF token.
async fn sign_in(base: &str, token: &str) -> (String, String) {
    let a = session_for(base, token).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let cookie = a.header("set-cookie").expect("a cookie").to_owned();
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    (pair, a.json()["csrf_token"].as_str().expect("csrf").to_owned())
}

async fn submitted(net: &TestNet, id: &str) -> u64 {
    let a = call(
        &base(net, id),
        "GET",
        "/v1/status",
        vec![bearer(net, id, Role::Operator)],
        None,
    )
    .await;
    a.json()["counters"]["submitted"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_strict_headers_and_data_is_not_cached() {
    let net = TestNet::start(&line()).await;
    let url = base(&net, "region-uppsala");
    let page = call(&url, "GET", "/", vec![], None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert!(page.body.contains("/console/app.js"), "{}", page.body);
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    for file in [
        "app.js",
        "api.js",
        "report.js",
        "national.js",
        "operator.js",
        "console.css",
        "sweden.svg",
    ] {
        let a = call(&url, "GET", &format!("/console/{file}"), vec![], None).await;
        assert_eq!(a.status, 200, "{file}");
        assert!(a.header("content-security-policy").is_some(), "{file}");
    }
    let svg = call(&url, "GET", "/console/sweden.svg", vec![], None).await;
    assert_eq!(
        svg.body.matches("class=\"region\"").count(),
        21,
        "21 regions on the map"
    );
    assert_eq!(
        call(&url, "GET", "/console/nothing.js", vec![], None)
            .await
            .status,
        404
    );
    // Data answers are never cached.
    let status = call(
        &url,
        "GET",
        "/v1/status",
        vec![bearer(&net, "region-uppsala", Role::Operator)],
        None,
    )
    .await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("cache-control"), Some("no-store"));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_acts_for_its_role_and_changes_nothing_without_its_csrf_token() {
    let net = TestNet::start(&line()).await;
    let url = base(&net, "region-uppsala");

    // A wrong token: refused, no cookie.
    let wrong = session_for(&url, "nope-nope-nope-nope").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.header("set-cookie").is_none());
    // Not JSON (what a cross-site form sends): refused.
    let form = call(
        &url,
        "POST",
        "/v1/session",
        vec![("Content-Type", "text/plain".into())],
        Some("token=x".into()),
    )
    .await;
    assert_eq!(form.status, 400, "{}", form.body);

    let token = net.api_token("region-uppsala", Role::Reporter);
    let a = session_for(&url, &token).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let set = a.header("set-cookie").expect("cookie");
    for attr in [
        "sitrep_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=28800",
    ] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert_eq!(a.json()["role"], "reporter");
    let (cookie, csrf) = sign_in(&url, &token).await;
    let with_cookie = || ("Cookie", cookie.clone());

    // The session reads what its role may, and only that.
    let me = call(&url, "GET", "/v1/session", vec![with_cookie()], None).await;
    assert_eq!(me.json()["csrf_token"], csrf.as_str());
    let options = call(&url, "GET", "/v1/reports/options", vec![with_cookie()], None).await;
    assert_eq!(options.status, 200, "{}", options.body);
    let o = options.json();
    assert_eq!(o["region_code"], "03");
    let open = o["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .find(|c| c["class"] == "OPEN")
        .expect("OPEN");
    assert_eq!(open["recipients"], json!(["nspl-hub", "socialstyrelsen"]));
    assert_eq!(
        call(&url, "GET", "/v1/status", vec![with_cookie()], None)
            .await
            .status,
        403
    );

    // Changes: refused without the CSRF token, with a wrong one, and from
    // another origin even with the right one; nothing stored.
    let refused = [
        vec![with_cookie(), json_type()],
        vec![with_cookie(), json_type(), ("X-CSRF-Token", "0".repeat(64))],
        vec![
            with_cookie(),
            json_type(),
            ("X-CSRF-Token", csrf.clone()),
            ("Origin", "http://127.0.0.1:1".into()),
        ],
        vec![
            with_cookie(),
            json_type(),
            ("X-CSRF-Token", csrf.clone()),
            ("Sec-Fetch-Site", "same-site".into()),
        ],
    ];
    for headers in refused {
        let a = call(&url, "POST", "/v1/reports", headers, Some(submission())).await;
        assert_eq!(a.status, 403, "{}", a.body);
    }
    assert_eq!(submitted(&net, "region-uppsala").await, 0, "nothing stored");
    assert_eq!(
        call(&url, "GET", "/v1/reports/last", vec![with_cookie()], None)
            .await
            .status,
        404
    );

    // With it, from this origin: accepted, and kept as the last report.
    let origin = ("Origin", url.clone());
    let ok = call(
        &url,
        "POST",
        "/v1/reports",
        vec![
            with_cookie(),
            json_type(),
            ("X-CSRF-Token", csrf.clone()),
            origin.clone(),
        ],
        Some(submission()),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    let id = ok.json()["id"].as_str().expect("id").to_owned();
    let last = call(&url, "GET", "/v1/reports/last", vec![with_cookie()], None).await;
    assert_eq!(last.status, 200, "{}", last.body);
    assert_eq!(last.json()["id"], id.as_str());
    assert_eq!(last.json()["report"]["region_code"], "03");
    assert!(last.json()["submitted_ms"].as_i64().is_some());
    // Bearer clients need no CSRF token, as before.
    let b = call(
        &url,
        "POST",
        "/v1/reports",
        vec![bearer(&net, "region-uppsala", Role::Reporter), json_type()],
        Some(submission()),
    )
    .await;
    assert_eq!(b.status, 202, "{}", b.body);

    // Sign-out: needs the token too; afterwards the cookie is refused.
    assert_eq!(
        call(&url, "DELETE", "/v1/session", vec![with_cookie()], None)
            .await
            .status,
        403
    );
    let out = call(
        &url,
        "DELETE",
        "/v1/session",
        vec![with_cookie(), ("X-CSRF-Token", csrf.clone())],
        None,
    )
    .await;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    let after = call(&url, "GET", "/v1/reports/options", vec![with_cookie()], None).await;
    assert_eq!(after.status, 401, "{}", after.body);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_are_capped() {
    let mut net = TestNet::prepare(&line());
    net.override_config("region-uppsala", |c| {
        if let Some(api) = c.api.as_mut() {
            api.session_ttl = Duration::from_secs(1);
            api.max_sessions = 2;
        }
    });
    for s in line() {
        net.start_node(s.id).await;
    }
    let url = base(&net, "region-uppsala");
    let token = net.api_token("region-uppsala", Role::Operator);
    let first = session_for(&url, &token).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a cookie")
        .to_owned();
    let expires = first.json()["expires"]
        .as_str()
        .map(humantime::parse_rfc3339)
        .expect("expires")
        .expect("RFC 3339");
    sign_in(&url, &token).await;
    let full = session_for(&url, &token).await;
    assert_eq!(full.status, 503, "{}", full.body);
    assert!(full.body.contains("api.max_sessions"), "{}", full.body);
    // The cap is per role: another role still signs in.
    sign_in(&url, &net.api_token("region-uppsala", Role::Reader)).await;
    let status = || call(&url, "GET", "/v1/status", vec![("Cookie", cookie.clone())], None);
    assert_eq!(status().await.status, 200, "valid before its time");
    // The session ends at the time the node announced: asked until it is
    // refused, it is never refused before that time, nor accepted long after.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let after = loop {
        tick.tick().await;
        let a = status().await;
        if a.status != 200 {
            break a;
        }
        assert!(
            std::time::SystemTime::now() < expires + Duration::from_secs(2),
            "still valid 2 s after its announced expiry"
        );
    };
    assert!(
        std::time::SystemTime::now() >= expires,
        "refused before its announced expiry"
    );
    assert_eq!(after.status, 401, "{}", after.body);
    assert!(after.body.contains("the session has expired"), "{}", after.body);
    // Expired sessions make room for new ones.
    sign_in(&url, &token).await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_history_ends_with_the_counters_now() {
    let net = TestNet::start(&line()).await;
    let hub = base(&net, "nspl-hub");
    for n in 1..=2 {
        let mut r = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
        r.report_number = n;
        net.node("region-uppsala")
            .submit(Submission {
                author: "TiB".into(),
                label: Label::new(Class::Sensitive),
                precedence: Precedence::Priority,
                mode: Mode::Exercise,
                recipients: vec![NodeId::new("nspl-hub").expect("id")],
                expires_ms: None,
                content: Content::Report(r),
            })
            .await
            .expect("submitted");
    }
    let hub_node = net.node("nspl-hub");
    wait_until(hub_node, LONG, "both reports accepted at the hub", || {
        hub_node.counters().get("accepted") >= 2
    })
    .await
    .expect("accepted");

    let hist = call(
        &hub,
        "GET",
        "/v1/status/history",
        vec![bearer(&net, "nspl-hub", Role::Operator)],
        None,
    )
    .await;
    assert_eq!(hist.status, 200, "{}", hist.body);
    let doc = hist.json();
    assert_eq!(doc["interval_s"], 10);
    let accepted = doc["series"]
        .as_array()
        .expect("series")
        .iter()
        .find(|s| s["name"] == "accepted")
        .expect("accepted");
    let values = accepted["values"].as_array().expect("values");
    assert_eq!(values.len(), doc["times"].as_array().expect("times").len());
    assert!(
        values.last().and_then(Value::as_u64).is_some_and(|v| v >= 2),
        "{}",
        hist.body
    );
    let reader = bearer(&net, "nspl-hub", Role::Reader);
    assert_eq!(
        call(&hub, "GET", "/v1/status/history", vec![reader], None)
            .await
            .status,
        403
    );
    net.shutdown().await;
}
