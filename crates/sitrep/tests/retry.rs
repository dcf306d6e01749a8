//! Safe retries of `POST /v1/reports` with an `Idempotency-Key` (issue 12,
//! point 3): a submission whose answer was lost is retried with the same
//! key and answered with the first id, stores nothing new and is delivered
//! once; also across a restart of the node.

use std::time::Duration;

use sitrep_core::Channel;
use sitrep_node::config::Role;
use sitrep_testkit::{TestNet, all_delivered, line, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const REGION: &str = "region-uppsala";
const AUTHORITY: &str = "socialstyrelsen";

fn body(number: u32) -> serde_json::Value {
    let mut report = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    report.report_number = number;
    serde_json::json!({
        "report": serde_json::to_value(report).expect("json"),
        "label": { "class": "SENSITIVE" },
        "precedence": "PRIORITY",
        "mode": "EXERCISE",
        "recipients": [AUTHORITY],
    })
}

/// A TCP proxy in front of the API that passes the first connection's
/// request to the node, waits for the node's answer to begin (the report
/// is stored by then: the node answers only once it is durable), and then
/// closes the client's connection without passing the answer on. Later
/// connections pass through both ways.
async fn cutting_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut node) = TcpStream::connect(upstream).await else {
                continue;
            };
            if std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let (mut from_node, mut to_node) = node.into_split();
                    let mut request = vec![0u8; 64 * 1024];
                    let mut answer = [0u8; 1];
                    loop {
                        tokio::select! {
                            n = client.read(&mut request) => match n {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if to_node.write_all(&request[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            },
                            // The node's first byte of its answer: cut.
                            _ = from_node.read_exact(&mut answer) => break,
                        }
                    }
                    drop(client);
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                });
            }
        }
    });
    addr
}

/// `sitrep report submit` through a proxy that cuts the connection after
/// the region stored the report: the CLI retries with the same key, the
/// region answers with the first id and stores nothing new, and the
/// authority gets the report once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_cut_off_after_it_was_stored_is_retried_with_its_key_and_delivered_once() {
    let net = TestNet::start(&line()).await;
    let region = net.node(REGION);
    let proxy = cutting_proxy(region.api_addr().expect("api")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("report.json");
    std::fs::write(&file, serde_json::to_vec(&body(1)).expect("json")).expect("write");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["report", "submit"])
        .arg(&file)
        .args(["--api", &format!("http://{proxy}")])
        .args(["--token", &net.api_token(REGION, Role::Reporter)])
        .env_remove("SITREP_API")
        .env_remove("SITREP_TOKEN")
        .output()
        .await
        .expect("run sitrep");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    // The first answer was lost, and the CLI said it retried with its key.
    assert!(stderr.contains("retrying"), "{stderr}");
    assert!(stderr.contains("had stored this submission already"), "{stderr}");
    let id = sitrep_core::MessageId::parse(stdout.trim()).expect("the CLI prints the id");

    // One message stored at the region: the retry stored nothing.
    assert_eq!(region.counters().get("submitted"), 1, "one submission stored");
    wait_until(region, Duration::from_secs(30), "the receipt", || {
        all_delivered(region, &id)
    })
    .await
    .expect("delivered");
    let inbox = net.node(AUTHORITY).inbox(Channel::Open, 0, 100).expect("inbox");
    assert_eq!(
        inbox.iter().map(|m| m.header.id).collect::<Vec<_>>(),
        vec![id],
        "the authority got the report once"
    );
    net.shutdown().await;
}

/// The key is kept in the store: after a restart the same key is answered
/// with the first id (marked `Idempotent-Replayed`), the same key with a
/// different body is refused with 422, and nothing of either is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_restart_is_answered_with_the_first_id() {
    let mut net = TestNet::start(&line()).await;
    let token = net.api_token(REGION, Role::Reporter);
    let post = |url: String, key: Option<&'static str>, body: serde_json::Value| {
        let token = token.clone();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut req = agent
                .post(&format!("{url}/v1/reports"))
                .header("Authorization", &format!("Bearer {token}"));
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            let mut r = req.send_json(&body).expect("POST");
            let replayed = r.headers().get("idempotent-replayed").is_some();
            let v: serde_json::Value = r.body_mut().read_json().expect("json");
            (r.status().as_u16(), replayed, v)
        })
    };
    let url = |net: &TestNet| format!("http://{}", net.node(REGION).api_addr().expect("api"));
    // The same request each time: the body's bytes are part of it.
    let first_body = body(1);

    let (status, replayed, first) = post(url(&net), Some("8f1c-first"), first_body.clone())
        .await
        .expect("task");
    assert_eq!((status, replayed), (202, false), "{first}");
    let id = first["id"].as_str().expect("id").to_owned();
    // The same key at once (no restart) is answered the same way.
    let (status, replayed, again) = post(url(&net), Some("8f1c-first"), first_body.clone())
        .await
        .expect("task");
    assert_eq!(
        (status, replayed, again["id"].as_str()),
        (202, true, Some(id.as_str()))
    );

    net.restart(REGION).await;
    let (status, replayed, after) = post(url(&net), Some("8f1c-first"), first_body.clone())
        .await
        .expect("task");
    assert_eq!(
        (status, replayed, after["id"].as_str()),
        (202, true, Some(id.as_str())),
        "after a restart: {after}"
    );
    // The key with another report: refused, naming the first message.
    let (status, _, other) = post(url(&net), Some("8f1c-first"), body(2)).await.expect("task");
    assert_eq!(status, 422, "{other}");
    assert!(
        other["error"].as_str().unwrap_or_default().contains(&id),
        "{other}"
    );
    // A bad key is named.
    let (status, _, bad) = post(url(&net), Some("has space"), body(3)).await.expect("task");
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["errors"][0]["field"], "Idempotency-Key", "{bad}");
    // Without a key, each request is a new report.
    let (status, _, second) = post(url(&net), None, body(4)).await.expect("task");
    assert_eq!(status, 202, "{second}");
    let second = second["id"].as_str().expect("id").to_owned();

    let authority = net.node(AUTHORITY);
    wait_until(authority, Duration::from_secs(30), "two reports", || {
        authority
            .inbox(Channel::Open, 0, 100)
            .map(|m| m.len())
            .unwrap_or(0)
            >= 2
    })
    .await
    .expect("delivered");
    let got: Vec<String> = authority
        .inbox(Channel::Open, 0, 100)
        .expect("inbox")
        .iter()
        .map(|m| m.header.id.to_string())
        .collect();
    assert_eq!(got, vec![id, second], "each report once, nothing of the retries");
    net.shutdown().await;
}
