//! The web console in a real browser: headless Chromium driven through
//! WebDriver (chromedriver, by fantoccini) against real nodes on loopback.
//!
//! Its own harness (`harness = false`), so that the tests run one at a time
//! (one browser on a two-core machine) and a skip is printed where it is
//! seen: without `chromium` and `chromedriver` on `PATH` each test says it
//! was skipped and why, unless `SITREP_BROWSER_TESTS=required` (set by
//! `.ci/run`), when a missing browser fails the run. Each test saves PNG
//! screenshots of what it checked in its temp dir and prints their paths;
//! `SITREP_CONSOLE_SHOTS=DIR` also copies them there (docs/console.md's
//! pictures come from that). Filter by name: `cargo test --test console -- reader`.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use serde_json::{Value, json};
use sitrep_core::feed::FeedSpec;
use sitrep_core::{Channel, Class, Label, Mode, NodeId, Precedence};
use sitrep_node::config::Role;
use sitrep_node::{Content, Submission};
use sitrep_suite::http;
use sitrep_testkit::{NodeSpec, TestNet, line};

const LONG: Duration = Duration::from_secs(60);

type TestFn = fn(Browser) -> Pin<Box<dyn Future<Output = ()>>>;

fn main() {
    let tests: [(&str, TestFn); 5] = [
        (
            "reporter_fixes_an_invalid_field_and_sees_every_recipient_delivered",
            |b| Box::pin(reporter(b)),
        ),
        (
            "reader_sees_the_table_and_map_update_live_and_a_region_turn_overdue",
            |b| Box::pin(reader(b)),
        ),
        ("operator_sees_a_peer_go_down_and_come_back", |b| {
            Box::pin(operator(b))
        }),
        ("a_wrong_token_and_an_expired_session_are_refused", |b| {
            Box::pin(refusals(b))
        }),
        ("a_page_from_another_origin_cannot_submit", |b| {
            Box::pin(cross_site(b))
        }),
    ];
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let required = std::env::var("SITREP_BROWSER_TESTS").is_ok_and(|v| v == "required");
    let tools = find("chromedriver").zip(find("chromium").or_else(|| find("chromium-browser")));
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let Some((driver, chromium)) = tools.clone() else {
            println!(
                "test {name} ... SKIPPED: no chromium and chromedriver on PATH (install Debian's \
                 `chromium` and `chromium-driver`; .ci/run does, and makes these tests required)"
            );
            if required {
                failed.push(name);
            }
            continue;
        };
        ran += 1;
        println!("test {name} ...");
        let outcome = std::panic::catch_unwind(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                // Kept: the screenshots are for the reader of the output.
                let dir = tempfile::Builder::new()
                    .prefix("sitrep-console-")
                    .tempdir()
                    .expect("temp dir")
                    .keep();
                let (browser, mut driver) = Browser::start(name, &driver, &chromium, &dir).await;
                let client = browser.client.clone();
                // Whatever the test does, the browser and its driver end with it.
                let result = AssertUnwindSafe(test(browser)).catch_unwind().await;
                let _ = client.close().await;
                let _ = driver.kill();
                let _ = driver.wait();
                // The screenshots stay; the browser's profile does not.
                let _ = std::fs::remove_dir_all(dir.join("chromium-profile"));
                if let Err(panic) = result {
                    std::panic::resume_unwind(panic);
                }
            });
        });
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    println!(
        "\nconsole: {ran} run, {} failed{}",
        failed.len(),
        if required { " (browser tests required)" } else { "" }
    );
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}

fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// One headless Chromium through its chromedriver (which `main` ends).
struct Browser {
    client: Client,
    test: &'static str,
    dir: PathBuf,
}

impl Browser {
    async fn start(test: &'static str, driver: &Path, chromium: &Path, dir: &Path) -> (Self, Child) {
        // Port 0: chromedriver picks a free port and names it in its ready
        // line, so reading that line is both the port and the readiness.
        let mut driver = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
            let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
                l.strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|p| p.trim_end_matches('.').parse::<u16>().ok())
            });
            // Keep reading, so that chromedriver never writes into a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port
        })
        .await
        .expect("reading chromedriver");
        let Some(port) = port else {
            let _ = driver.kill();
            let _ = driver.wait();
            panic!("chromedriver exited without saying it was ready");
        };
        let profile = dir.join("chromium-profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000", "--lang=sv-SE", "--no-first-run",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let caps = caps.as_object().cloned().expect("an object");
        let url = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let connected = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await;
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("no WebDriver session from chromedriver: {e}");
            }
        };
        let browser = Self {
            client,
            test,
            dir: dir.to_owned(),
        };
        (browser, driver)
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("page loads");
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Waits until `check` on the element's text holds; the last text.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        self.wait(what, || async {
            let el = self.client.find(Locator::Css(css)).await.ok()?;
            let t = el.text().await.ok()?;
            check(&t).then_some(t)
        })
        .await
    }

    /// Waits until `check` on the element's attribute holds; its value.
    async fn wait_attr(&self, css: &str, attr: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        self.wait(what, || async {
            let el = self.client.find(Locator::Css(css)).await.ok()?;
            let v = el.attr(attr).await.ok()??;
            check(&v).then_some(v)
        })
        .await
    }

    /// Checks `probe` until it gives a value, for up to a minute: again
    /// after every change of the page (where what it looks for shows), or
    /// after a second without one (for what does not show in the DOM).
    async fn wait<T, F: Future<Output = Option<T>>>(&self, what: &str, probe: impl Fn() -> F) -> T {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if Instant::now() > deadline {
                self.shot(&format!("timeout-{}", what.replace(' ', "-"))).await;
                panic!("{}: timed out waiting for {what}", self.test);
            }
            self.page_changed().await;
        }
    }

    /// Returns when the page's DOM changes, or after a second without a
    /// change (a `MutationObserver` in the page, through WebDriver's
    /// asynchronous script).
    async fn page_changed(&self) {
        const SCRIPT: &str = "const done = arguments[arguments.length - 1]; \
            const seen = new MutationObserver(() => { seen.disconnect(); done(true); }); \
            seen.observe(document, {subtree: true, childList: true, attributes: true, characterData: true}); \
            setTimeout(() => { seen.disconnect(); done(false); }, 1000);";
        // A navigation in progress ends the script early: check again then.
        let _ = self.client.execute_async(SCRIPT, vec![]).await;
    }

    /// The element's text now.
    async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// The feed's sequence the page shows.
    async fn sequence(&self) -> u64 {
        self.find("#feed-info")
            .await
            .attr("data-sequence")
            .await
            .expect("attr")
            .and_then(|s| s.parse().ok())
            .expect("a sequence")
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("typing");
    }

    async fn select(&self, css: &str, value: &str) {
        self.find(css).await.select_by_value(value).await.expect("select");
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(base).await;
        shown(self, "#sign-in-form").await;
        self.type_into("#token", token).await;
        self.click("#sign-in-button").await;
    }

    /// Saves a screenshot as `<temp dir>/<name>.png` and names it.
    async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("screenshot written");
        println!("    screenshot: {}", path.display());
        if let Some(docs) = std::env::var_os("SITREP_CONSOLE_SHOTS") {
            let _ = std::fs::write(Path::new(&docs).join(format!("{name}.png")), &png);
        }
        path
    }
}

/// The visible view is shown: `hidden` is gone from it.
async fn shown(b: &Browser, view: &str) {
    b.wait(&format!("{view} shown"), || async {
        let el = b.client.find(Locator::Css(view)).await.ok()?;
        el.is_displayed().await.ok()?.then_some(())
    })
    .await;
}

fn base(net: &TestNet, id: &str) -> String {
    format!("http://{}", net.node(id).api_addr().expect("API"))
}

/// A bearer-token call, as a script or the CLI makes it.
async fn bearer(
    net: &TestNet,
    id: &str,
    role: Role,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut headers = vec![("Authorization", format!("Bearer {}", net.api_token(id, role)))];
    if body.is_some() {
        headers.push(("Content-Type", "application/json".to_owned()));
    }
    let url = format!("{}{path}", base(net, id));
    let a = http::call(method, &url, &headers, body.map(|b| b.to_string())).await;
    (a.status, a.json())
}

async fn counter(net: &TestNet, id: &str, name: &str) -> u64 {
    let (_, status) = bearer(net, id, Role::Operator, "GET", "/v1/status", None).await;
    status["counters"][name].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------- reporter

async fn reporter(b: Browser) {
    let net = TestNet::start(&line()).await;
    let url = base(&net, "region-uppsala");
    b.sign_in(&url, &net.api_token("region-uppsala", Role::Reporter))
        .await;
    shown(&b, "#report-form").await;
    b.wait_text("#role", "the reporter role", |t| t.contains("reporter"))
        .await;
    // Only what policy allows: both peers are offered as recipients.
    b.wait_attr("#to-nspl-hub", "value", "recipients offered", |v| v == "nspl-hub")
        .await;
    b.click("#to-nspl-hub").await;
    b.click("#to-socialstyrelsen").await;
    b.select("#report-mode", "EXERCISE").await;
    b.select("#report-level", "REINFORCED").await;
    b.type_into("#report-author", "TiB Region Uppsala").await;
    b.type_into("#report-prepared-by", "Anna Berg, tjänsteman i beredskap")
        .await;
    for (field, v) in [
        ("available", "4"),
        ("occupied", "30"),
        ("baseline", "36"),
        ("surge_24h", "6"),
        ("surge_72h", "12"),
        // More ventilator beds than free beds: invalid.
        ("with_ventilator", "9"),
    ] {
        b.type_into(&format!("#bed-ICU_ADULT-{field}"), v).await;
    }
    b.type_into("#report-assessment", "Ansträngt läge på IVA, stabilt i övrigt.")
        .await;
    b.click("#submit-report").await;

    let problem = b
        .wait_text(
            "#bed-ICU_ADULT-with_ventilator-error",
            "the error at the field",
            |t| t.contains("exceeds available"),
        )
        .await;
    assert!(problem.contains('9'), "{problem}");
    let invalid = b
        .find("#bed-ICU_ADULT-with_ventilator")
        .await
        .attr("aria-invalid")
        .await
        .expect("attr");
    assert_eq!(invalid.as_deref(), Some("true"));
    // Only that field is marked.
    assert!(
        b.client
            .find_all(Locator::Css("[aria-invalid=true]"))
            .await
            .expect("find")
            .len()
            == 1
    );
    b.shot("reporter-field-error").await;
    assert_eq!(
        counter(&net, "region-uppsala", "submitted").await,
        0,
        "nothing stored"
    );

    b.type_into("#bed-ICU_ADULT-with_ventilator", "3").await;
    b.click("#submit-report").await;
    for r in ["nspl-hub", "socialstyrelsen"] {
        b.wait_text(
            &format!("#delivery-table tr[data-recipient='{r}'] td.state"),
            &format!("{r} DELIVERED"),
            |t| t == "DELIVERED",
        )
        .await;
    }
    b.wait_text("#delivery-summary", "every receipt in", |t| t.contains("2 av 2"))
        .await;
    assert_eq!(
        b.find("#bed-ICU_ADULT-with_ventilator-error")
            .await
            .text()
            .await
            .expect("text"),
        ""
    );
    b.shot("reporter-delivered").await;
    assert_eq!(counter(&net, "region-uppsala", "submitted").await, 1);

    // Copy from my last report: the next number, the same figures.
    b.click("#copy-last").await;
    b.wait_attr("#report-number", "value", "the next report number", |_| true)
        .await;
    b.wait("the copied report", || async {
        let n = b.find("#report-number").await.prop("value").await.ok()??;
        let v = b
            .find("#bed-ICU_ADULT-with_ventilator")
            .await
            .prop("value")
            .await
            .ok()??;
        (n == "2" && v == "3").then_some(())
    })
    .await;
    net.shutdown().await;
}

// ------------------------------------------------------------------ reader

fn report(code: &str, number: u32, due_in: Duration, icu_free: u32) -> Submission {
    let now = sitrep_node::clock::now_ms();
    let mut r = sitrep_core::report::example_uppsala(now);
    r.region_code = code.into();
    r.report_number = number;
    r.next_report_due_unix_ms = now + i64::try_from(due_in.as_millis()).expect("ms");
    for b in &mut r.beds {
        if b.r#type == sitrep_proto::v1::BedType::IcuAdult as i32 {
            b.available = icu_free;
            b.with_ventilator = 0;
        }
    }
    Submission {
        author: "TiB".into(),
        label: Label::new(Class::Sensitive),
        precedence: Precedence::Priority,
        mode: Mode::Exercise,
        recipients: vec![NodeId::new("nspl-hub").expect("id")],
        expires_ms: None,
        content: Content::Report(r),
    }
}

async fn reader(b: Browser) {
    let mut specs = line();
    specs[1].peers.push("region-gotland");
    specs.push(NodeSpec {
        id: "region-gotland",
        kind: "REGION",
        clearance: Class::Secret,
        channels: vec![Channel::Open, Channel::Secure],
        peers: vec!["nspl-hub"],
    });
    let mut net = TestNet::prepare(&specs);
    net.override_config("nspl-hub", |c| {
        c.feeds = vec![FeedSpec::national(
            "national-open",
            Channel::Open,
            Mode::Exercise,
            Class::Sensitive,
        )];
        c.limits.feed_min_interval = Duration::from_millis(50);
    });
    for s in &specs {
        net.start_node(s.id).await;
    }
    let (status, body) = bearer(
        &net,
        "socialstyrelsen",
        Role::Reader,
        "POST",
        "/v1/feeds/national-open/subscribe",
        Some(json!({"channel": "open"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Uppsala reports, next report due in a few seconds.
    net.node("region-uppsala")
        .submit(report("03", 1, Duration::from_secs(6), 4))
        .await
        .expect("submitted");

    b.sign_in(
        &base(&net, "socialstyrelsen"),
        &net.api_token("socialstyrelsen", Role::Reader),
    )
    .await;
    shown(&b, "#national-table").await;
    b.wait_attr("#row-03", "data-state", "Uppsala's row", |s| s == "ok")
        .await;
    b.wait_attr("#row-09", "data-state", "Gotland not reported yet", |s| {
        s == "never"
    })
    .await;
    b.wait_attr("#region-03", "data-fill", "Uppsala on the map", |f| {
        f != "fill-none"
    })
    .await;
    b.wait_text("#marking-top", "the classification marking", |t| {
        t.contains("SENSITIVE")
    })
    .await;
    assert!(b.text("#marking-bottom").await.contains("SENSITIVE"));
    // A marker on the page: live updates do not reload it.
    b.client
        .execute("window.sitrepMarker = 42; return 1;", vec![])
        .await
        .expect("script");
    let before: u64 = b.sequence().await;

    // Gotland reports: its row and its region on the map fill in, live.
    net.node("region-gotland")
        .submit(report("09", 1, Duration::from_secs(3600), 9))
        .await
        .expect("submitted");
    b.wait_attr("#row-09", "data-state", "Gotland's row live", |s| s == "ok")
        .await;
    b.wait_attr("#region-09", "data-fill", "Gotland on the map live", |f| {
        f != "fill-none"
    })
    .await;
    let after: u64 = b.sequence().await;
    assert!(after > before, "{after} > {before}");
    let totals = b.text("#totals").await;
    assert!(totals.contains("2/2 rapporterar"), "{totals}");
    b.shot("reader-live").await;

    // Uppsala's next report is due and does not come: overdue, marked.
    b.wait_attr("#row-03", "data-state", "Uppsala overdue", |s| s == "overdue")
        .await;
    b.wait_attr("#region-03", "class", "Uppsala overdue on the map", |c| {
        c.contains("overdue")
    })
    .await;
    assert!(b.text("#row-03").await.contains("OVERDUE"));
    let marker = b
        .client
        .execute("return window.sitrepMarker;", vec![])
        .await
        .expect("script");
    assert_eq!(marker, json!(42), "the page was not reloaded");
    b.shot("reader-overdue").await;

    // A region's history, and the map coloured by another figure.
    b.select("#map-figure", "level").await;
    b.click("#row-03 button").await;
    b.wait_text("#history-title", "Uppsala's history", |t| t.contains("historik"))
        .await;
    b.shot("reader-history").await;
    net.shutdown().await;
}

// ---------------------------------------------------------------- operator

async fn operator(b: Browser) {
    let mut net = TestNet::start(&line()).await;
    b.sign_in(
        &base(&net, "region-uppsala"),
        &net.api_token("region-uppsala", Role::Operator),
    )
    .await;
    shown(&b, "#peers").await;
    let row = "#peers-body tr[data-peer='nspl-hub'][data-channel='open']";
    b.wait_attr(row, "data-connected", "the hub connected", |c| c == "true")
        .await;
    b.wait_text("#expiry-body", "certificate expiry", |t| t.contains("dagar"))
        .await;
    b.shot("operator-up").await;

    net.stop("nspl-hub").await;
    b.wait_attr(row, "data-connected", "the hub down", |c| c == "false")
        .await;
    b.shot("operator-down").await;

    net.start_node("nspl-hub").await;
    b.wait_attr(row, "data-connected", "the hub back", |c| c == "true")
        .await;
    b.shot("operator-back").await;
    net.shutdown().await;
}

// ---------------------------------------------------------------- refusals

async fn refusals(b: Browser) {
    let mut net = TestNet::prepare(&line());
    net.override_config("region-uppsala", |c| {
        if let Some(api) = c.api.as_mut() {
            api.session_ttl = Duration::from_secs(4);
        }
    });
    for s in line() {
        net.start_node(s.id).await;
    }
    let url = base(&net, "region-uppsala");
    b.sign_in(&url, "not-a-token-of-this-node").await;
    b.wait_text("#sign-in-error", "the wrong token refused", |t| {
        t.contains("Wrong token")
    })
    .await;
    assert!(
        b.client.get_named_cookie("sitrep_session").await.is_err(),
        "no session cookie"
    );
    b.shot("wrong-token").await;

    b.type_into("#token", &net.api_token("region-uppsala", Role::Operator))
        .await;
    b.click("#sign-in-button").await;
    shown(&b, "#peers").await;
    let cookie = b
        .client
        .get_named_cookie("sitrep_session")
        .await
        .expect("a session cookie");
    assert_eq!(cookie.http_only(), Some(true), "HttpOnly");
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Strict)",
        "SameSite=Strict"
    );
    let script = b
        .client
        .execute("return document.cookie;", vec![])
        .await
        .expect("script");
    assert!(
        !script.as_str().unwrap_or("").contains("sitrep_session"),
        "out of the script's reach"
    );

    // The session expires: the console returns to sign-in, and the node
    // refuses the old cookie.
    b.wait_text("#sign-in-error", "the expired session refused", |t| {
        t.contains("expired")
    })
    .await;
    b.shot("session-expired").await;
    let value = cookie.value().to_owned();
    let old = http::call(
        "GET",
        &format!("{url}/v1/status"),
        &[("Cookie", format!("sitrep_session={value}"))],
        None,
    )
    .await;
    let (status, answer) = (old.status, old.body);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("the session has expired"), "{answer}");
    net.shutdown().await;
}

// -------------------------------------------------------------- cross-site

/// Serves one page from another origin (another port: same site, another
/// origin, so the `SameSite=Strict` cookie is sent along and only the
/// console's own checks stand in the way).
fn serve_attacker(page: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0_u8; 8192];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

async fn cross_site(b: Browser) {
    let net = TestNet::start(&line()).await;
    let url = base(&net, "region-uppsala");
    b.sign_in(&url, &net.api_token("region-uppsala", Role::Reporter))
        .await;
    shown(&b, "#report-form").await;
    // A valid submission: only the console's defences can stop it.
    let body = json!({
        "report": serde_json::to_value(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms())).expect("json"),
        "label": {"class": "OPEN"},
        "mode": "EXERCISE",
        "recipients": ["nspl-hub"],
        "author": "someone else",
    })
    .to_string();
    let escaped = body
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let page = format!(
        "<!doctype html><title>other site</title>\
         <form id=f method=POST action=\"{url}/v1/reports\" enctype=\"text/plain\">\
         <input type=hidden name=\"{escaped}\" value=\"\"><button id=go>Go</button></form>\
         <script>fetch(\"{url}/v1/reports\", {{method: \"POST\", mode: \"no-cors\", credentials: \"include\", \
         headers: {{\"Content-Type\": \"text/plain\"}}, body: document.querySelector(\"input\").name}})\
         .then(() => document.title = \"fetched\", () => document.title = \"fetch failed\");</script>"
    );
    let port = serve_attacker(page);
    b.goto(&format!("http://127.0.0.1:{port}/")).await;
    b.wait("the other page's fetch", || async {
        let t = b.client.title().await.ok()?;
        (t == "fetched" || t == "fetch failed").then_some(())
    })
    .await;
    b.click("#go").await;
    let answer = b
        .wait_text("body", "the node's answer to the form", |t| t.contains("error"))
        .await;
    assert!(answer.contains("cross-site request refused"), "{answer}");
    b.shot("cross-site-refused").await;
    // Nothing stored, nothing forwarded.
    assert_eq!(counter(&net, "region-uppsala", "submitted").await, 0);
    let (_, status) = bearer(&net, "region-uppsala", Role::Operator, "GET", "/v1/status", None).await;
    assert!(
        status["outboxes"]
            .as_array()
            .is_none_or(|o| o.iter().all(|h| h["depth"] == 0)),
        "{status}"
    );
    assert_eq!(counter(&net, "nspl-hub", "accepted").await, 0);
    net.shutdown().await;
}
