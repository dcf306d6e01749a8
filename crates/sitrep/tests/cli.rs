//! The client commands and the demo, driving the real `sitrep` binary against real nodes.

use std::process::Output;

use sitrep_node::config::Role;
use sitrep_testkit::{TestNet, line};

async fn sitrep(args: Vec<String>) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(args)
        .env_remove("SITREP_API")
        .env_remove("SITREP_TOKEN")
        .output()
        .await
        .expect("run sitrep")
}

fn api(net: &TestNet, id: &str) -> String {
    format!("http://{}", net.node(id).api_addr().expect("api"))
}

fn text(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_status_and_inbox_through_the_cli() {
    let net = TestNet::start(&line()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("report.json");
    let report = serde_json::to_value(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms()))
        .expect("json");
    let body = serde_json::json!({
        "report": report,
        "label": { "class": "SENSITIVE" },
        "precedence": "IMMEDIATE",
        "mode": "EXERCISE",
        "recipients": ["socialstyrelsen"],
    });
    std::fs::write(&file, serde_json::to_vec_pretty(&body).expect("json")).expect("write");
    let region = api(&net, "region-uppsala");
    let reporter = net.api_token("region-uppsala", Role::Reporter);

    // submit --wait: the id first, then the recipient's states up to DELIVERED; exit 0.
    let o = sitrep(vec![
        "report".into(),
        "submit".into(),
        file.display().to_string(),
        "--wait".into(),
        "--api".into(),
        region.clone(),
        "--token".into(),
        reporter.clone(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let id = out.lines().next().expect("id line").trim().to_owned();
    assert!(sitrep_core::MessageId::parse(&id).is_some(), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("socialstyrelsen DELIVERED")),
        "{out}"
    );

    // report status
    let o = sitrep(vec![
        "report".into(),
        "status".into(),
        id.clone(),
        "--api".into(),
        region.clone(),
        "--token".into(),
        reporter.clone(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("DELIVERED"));

    // inbox at the authority (reader), table and JSON
    let authority = api(&net, "socialstyrelsen");
    let reader = net.api_token("socialstyrelsen", Role::Reader);
    let o = sitrep(vec![
        "inbox".into(),
        "--api".into(),
        authority.clone(),
        "--token".into(),
        reader.clone(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&id) && out.contains("region 03"), "{out}");
    let o = sitrep(vec![
        "inbox".into(),
        "--json".into(),
        "--api".into(),
        authority,
        "--token".into(),
        reader,
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inbox --json is JSON");
    assert_eq!(v["items"][0]["id"], id.as_str());

    // status: a table, and --json the API's document
    let operator = net.api_token("region-uppsala", Role::Operator);
    let o = sitrep(vec![
        "status".into(),
        "--api".into(),
        region.clone(),
        "--token".into(),
        operator.clone(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("node region-uppsala") && out.contains("nspl-hub") && out.contains("CERTIFICATE"),
        "{out}"
    );
    let o = sitrep(vec![
        "status".into(),
        "--json".into(),
        "--api".into(),
        region.clone(),
        "--token".into(),
        operator,
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json is JSON");
    assert_eq!(v["node"], "region-uppsala");

    // A wrong token: non-zero exit, one line on stderr.
    let o = sitrep(vec![
        "status".into(),
        "--api".into(),
        region,
        "--token".into(),
        reporter,
    ])
    .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("403"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_to_the_end_and_exits_zero() {
    let o = sitrep(vec!["demo".into(), "--once".into()]).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("7/7 deliveries confirmed by signed receipts"),
        "{out}"
    );
    assert!(
        out.contains("on secure"),
        "the classified sample travels on the secure channel: {out}"
    );
}
