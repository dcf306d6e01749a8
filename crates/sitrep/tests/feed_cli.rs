//! `sitrep feed …` driving the real binary against real nodes: subscribe
//! (and wait for the snapshot), list, show (the human table, overdue
//! marked), show --json, verify (honest passes, a changed figure fails),
//! unsubscribe.

use std::process::Output;

use sitrep_core::feed::FeedSpec;
use sitrep_core::{Channel, Class, Label, Mode, NodeId, Precedence};
use sitrep_node::config::Role;
use sitrep_node::{Content, Submission};
use sitrep_testkit::{TestNet, line};

async fn sitrep(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(args)
        .env_remove("SITREP_API")
        .env_remove("SITREP_TOKEN")
        .output()
        .await
        .expect("run sitrep")
}

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_list_show_verify_and_unsubscribe_through_the_cli() {
    let mut net = TestNet::prepare(&line());
    net.override_config("nspl-hub", |c| {
        c.feeds = vec![FeedSpec::national(
            "national-open",
            Channel::Open,
            Mode::Exercise,
            Class::Sensitive,
        )];
    });
    for id in ["region-uppsala", "nspl-hub", "socialstyrelsen"] {
        net.start_node(id).await;
    }
    // A report whose next one was due a minute ago: overdue at once.
    let now = sitrep_node::clock::now_ms();
    let mut report = sitrep_core::report::example_uppsala(now);
    report.next_report_due_unix_ms = now - 60_000;
    if let Some(p) = report.period.as_mut() {
        p.start_unix_ms = p.start_unix_ms.min(now - 120_000);
    }
    net.node("region-uppsala")
        .submit(Submission {
            author: "TiB Region Uppsala".into(),
            label: Label::new(Class::Sensitive),
            precedence: Precedence::Priority,
            mode: Mode::Exercise,
            recipients: vec![NodeId::new("nspl-hub").expect("id")],
            expires_ms: None,
            content: Content::Report(report),
        })
        .await
        .expect("submit");

    let sub_api = format!("http://{}", net.node("socialstyrelsen").api_addr().expect("api"));
    let hub_api = format!("http://{}", net.node("nspl-hub").api_addr().expect("api"));
    let sub_token = net.api_token("socialstyrelsen", Role::Reader);
    let hub_token = net.api_token("nspl-hub", Role::Reader);
    let at_sub = ["--api", sub_api.as_str(), "--token", sub_token.as_str()];
    let at_hub = ["--api", hub_api.as_str(), "--token", hub_token.as_str()];
    let with = |args: &[&'static str], api: &[&str]| -> Vec<String> {
        args.iter().chain(api.iter()).map(|s| (*s).to_owned()).collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sitrep(&refs).await
    };

    // Subscribe and wait for the snapshot (it holds the report: the hub got it first or sends an update).
    let o = run(with(
        &["feed", "subscribe", "national-open", "--wait", "60s"],
        &at_sub,
    ))
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("active"), "{}", text(&o));

    let o = run(with(&["feed", "list"], &at_sub)).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("national-open") && out.contains("subscriber") && out.contains("nspl-hub"),
        "{out}"
    );

    let o = run(with(&["feed", "list"], &at_hub)).await;
    assert!(
        text(&o).contains("socialstyrelsen"),
        "the hub lists its subscriber: {}",
        text(&o)
    );

    // The human table at the hub: Uppsala's row, marked overdue, and the totals.
    let o = run(with(&["feed", "show", "national-open"], &at_hub)).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let uppsala = out
        .lines()
        .find(|l| l.starts_with("03 "))
        .unwrap_or_else(|| panic!("a row for 03: {out}"));
    assert!(uppsala.contains("OVERDUE"), "{out}");
    assert!(out.contains("TOTAL 1/1 regions reporting, 1 overdue"), "{out}");

    // Verify at the hub (it received the report): the honest roll-up passes,
    // one with a changed figure fails.
    let o = run(with(&["feed", "show", "national-open", "--json"], &at_hub)).await;
    assert!(o.status.success(), "{}", text(&o));
    let mut rollup: serde_json::Value = serde_json::from_slice(&o.stdout).expect("roll-up JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    let honest = dir.path().join("honest.json");
    std::fs::write(&honest, serde_json::to_vec(&rollup).expect("json")).expect("write");
    let o = run(with(
        &["feed", "verify", "national-open", "--rollup"],
        &[honest.to_str().expect("path")],
    )
    .into_iter()
    .chain(at_hub.iter().map(|s| (*s).to_owned()))
    .collect())
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("every source verified"), "{}", text(&o));
    rollup["regions"][0]["icu_available"] = serde_json::Value::from(999);
    let changed = dir.path().join("changed.json");
    std::fs::write(&changed, serde_json::to_vec(&rollup).expect("json")).expect("write");
    let o = run(with(
        &["feed", "verify", "national-open", "--rollup"],
        &[changed.to_str().expect("path")],
    )
    .into_iter()
    .chain(at_hub.iter().map(|s| (*s).to_owned()))
    .collect())
    .await;
    assert!(!o.status.success(), "a changed figure fails: {}", text(&o));
    assert!(text(&o).contains("FAIL region 03"), "{}", text(&o));

    let o = run(with(&["feed", "unsubscribe", "national-open"], &at_sub)).await;
    assert!(o.status.success(), "{}", text(&o));
    net.shutdown().await;
}
