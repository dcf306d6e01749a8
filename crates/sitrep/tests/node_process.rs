//! Tests that run the real `sitrep` binary as node processes.
//!
//! The hub runs as a child process (`sitrep node`) and is killed with
//! SIGKILL while 2,000 reports are in flight, then restarted on the same
//! data: none is lost, none is delivered twice.
//!
//! This test lives with the binary crate because it runs the real `sitrep`
//! executable, which Cargo builds for this crate's tests.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sitrep_core::{Channel, MessageId, Precedence};
use sitrep_store::DeliveryState;
use sitrep_testkit::{TestNet, all_delivered, line, report_to, wait_until};

const N: usize = 2000;
const LONG: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_hub_mid_flight_loses_nothing_and_duplicates_nothing() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitrep"));
    let mut net = TestNet::prepare(&line());
    net.start_node("socialstyrelsen").await;
    net.start_node("region-uppsala").await;
    net.spawn_child("nspl-hub", bin);

    let region = net.node("region-uppsala");
    let hub_pid = net.child_pid("nspl-hub");
    let delivered = |net: &TestNet| {
        net.node("socialstyrelsen")
            .inbox(Channel::Open, 0, 10 * N)
            .expect("inbox")
            .len()
    };
    let submit_all = async {
        let mut submitted = HashSet::new();
        for i in 0..N {
            let number = u32::try_from(i + 1).expect("small");
            let id = region
                .submit(report_to("socialstyrelsen", number, Precedence::Routine))
                .await
                .expect("submit");
            submitted.insert(id);
        }
        submitted
    };
    // SIGKILL the hub once traffic flows through it, while the region is still submitting.
    let kill_midway = async {
        wait_until(
            net.node("socialstyrelsen"),
            LONG,
            "the first deliveries through the hub",
            || delivered(&net) >= 100,
        )
        .await
        .expect("traffic flows");
        let status = std::process::Command::new("kill")
            .args(["-KILL", &hub_pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {hub_pid}");
        delivered(&net)
    };
    let (submitted, at_kill) = tokio::join!(submit_all, kill_midway);
    assert!(
        at_kill < N,
        "the kill must come while reports are in flight ({at_kill} delivered)"
    );
    net.kill_child("nspl-hub");

    // Restart on the same data directory (a new port: the testkit rewires the peers).
    net.spawn_child("nspl-hub", bin);
    wait_until(net.node("socialstyrelsen"), LONG, "all 2000 deliveries", || {
        delivered(&net) >= N
    })
    .await
    .expect("all delivered");
    let authority = net.node("socialstyrelsen");

    let got = authority.inbox(Channel::Open, 0, 10 * N).expect("inbox");
    assert_eq!(got.len(), N, "none delivered twice");
    let ids: HashSet<MessageId> = got.iter().map(|r| r.header.id).collect();
    assert_eq!(ids, submitted, "none lost");

    let region = net.node("region-uppsala");
    wait_until(region, LONG, "every receipt back at the region", || {
        submitted.iter().all(|id| all_delivered(region, id))
    })
    .await
    .expect("receipts");
    net.shutdown().await;
}

/// SIGTERM: the node finishes what it holds, flushes, and exits 0; what it
/// held in custody is there when it starts again. Everything it wrote is
/// `0700`/`0600`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_a_node_down_gracefully() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitrep"));
    let mut net = TestNet::prepare(&line());
    net.start_node("region-uppsala").await;
    net.spawn_child("nspl-hub", bin);
    // The authority is down: the hub keeps the report in custody.
    let id = net
        .node("region-uppsala")
        .submit(report_to("socialstyrelsen", 1, Precedence::Flash))
        .await
        .expect("submit");
    let region = net.node("region-uppsala");
    wait_until(region, LONG, "custody at the hub", || {
        region
            .delivery(&id)
            .expect("delivery")
            .iter()
            .all(|d| d.state == DeliveryState::Forwarded)
    })
    .await
    .expect("forwarded to the hub");
    let status = net.terminate_child("nspl-hub", Duration::from_secs(20));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // Back up with the authority present: the report held over the restart arrives.
    net.start_node("socialstyrelsen").await;
    net.spawn_child("nspl-hub", bin);
    let authority = net.node("socialstyrelsen");
    wait_until(authority, LONG, "delivery after the restart", || {
        authority
            .inbox(Channel::Open, 0, 10)
            .expect("inbox")
            .iter()
            .any(|r| r.header.id == id)
    })
    .await
    .expect("delivered");
    // What the hub process wrote (segments, the sled index, the audit log)
    // is its user's only, though this test runs under the usual umask.
    let hub = net.config("nspl-hub");
    let mut dirs = vec![hub.data_dir.clone()];
    dirs.extend(hub.channels.values().map(|c| c.store.clone()));
    let mut checked = 0;
    for dir in dirs {
        checked += assert_private(&dir);
    }
    assert!(checked > 5, "only {checked} entries under the hub's directories");
    net.shutdown().await;
}

/// Asserts that `path` and everything under it has no group or other
/// permission bits; returns how many entries it checked.
fn assert_private(path: &Path) -> usize {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path).expect("stat");
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o077,
        0,
        "{} is {mode:o}: readable by others",
        path.display()
    );
    let mut n = 1;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir") {
            n += assert_private(&e.expect("entry").path());
        }
    }
    n
}

/// Every accept, forward and delivery lands in each node's audit log, whose
/// chain `sitrep audit verify` checks; one changed byte is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_traffic_and_finds_tampering() {
    let mut net = TestNet::start(&line()).await;
    let id = net
        .node("region-uppsala")
        .submit(report_to("socialstyrelsen", 1, Precedence::Routine))
        .await
        .expect("submit");
    let region = net.node("region-uppsala");
    wait_until(region, LONG, "the receipt", || all_delivered(region, &id))
        .await
        .expect("delivered");
    for node in ["region-uppsala", "nspl-hub", "socialstyrelsen"] {
        net.stop(node).await;
    }
    let verify = |node: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sitrep"))
            .args(["audit", "verify", "--config"])
            .arg(net.config_path(node))
            .output()
            .expect("run sitrep audit verify")
    };
    let log = |node: &str| net.config(node).data_dir.join("audit.log");
    let hub_log = std::fs::read_to_string(log("nspl-hub")).expect("hub audit log");
    let id_text = id.to_string();
    assert!(
        hub_log
            .lines()
            .any(|l| l.contains("\taccept\t") && l.contains(&id_text)),
        "{hub_log}"
    );
    assert!(
        hub_log
            .lines()
            .any(|l| l.contains("\tforward\t") && l.contains(&id_text)),
        "{hub_log}"
    );
    let authority_log = std::fs::read_to_string(log("socialstyrelsen")).expect("log");
    assert!(
        authority_log
            .lines()
            .any(|l| l.contains("\tdeliver\t") && l.contains(&id_text))
    );
    for node in ["region-uppsala", "nspl-hub", "socialstyrelsen"] {
        let o = verify(node);
        assert!(
            o.status.success(),
            "{node}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("chain intact"));
    }
    // One byte changed in the hub's log: found, with the line.
    let mut bytes = hub_log.into_bytes();
    let at = bytes.iter().position(|b| *b == b'\t').expect("a field") + 3;
    bytes[at] ^= 0x01;
    std::fs::write(log("nspl-hub"), &bytes).expect("tamper");
    let o = verify("nspl-hub");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 1"), "{err}");
}

/// `202` means durable: a node killed with SIGKILL right after answering
/// still has the report when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_acknowledged_with_202_survives_kill_9() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitrep"));
    let mut net = TestNet::prepare(&line());
    net.spawn_child("region-uppsala", bin);
    let token = net.api_token("region-uppsala", sitrep_node::config::Role::Reporter);
    let report = serde_json::to_value(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms()))
        .expect("json");
    let body = serde_json::json!({
        "report": report,
        "label": { "class": "SENSITIVE" },
        "precedence": "FLASH",
        "mode": "EXERCISE",
        "recipients": ["socialstyrelsen"],
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = net.child_api("region-uppsala");
    let pid = net.child_pid("region-uppsala");
    let (status, id) = tokio::task::spawn_blocking({
        let agent = agent.clone();
        let url = url.clone();
        let token = token.clone();
        move || {
            let mut r = agent
                .post(&format!("{url}/v1/reports"))
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(&body)
                .expect("POST");
            let status = r.status().as_u16();
            // SIGKILL the moment the 202 is in.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let v: serde_json::Value = r.body_mut().read_json().expect("json");
            (status, v["id"].as_str().unwrap_or_default().to_owned())
        }
    })
    .await
    .expect("task");
    assert_eq!(status, 202);
    net.kill_child("region-uppsala");
    net.spawn_child("region-uppsala", bin);
    let url = net.child_api("region-uppsala");
    let (status, text) = tokio::task::spawn_blocking(move || {
        let mut r = agent
            .get(&format!("{url}/v1/reports/{id}"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("GET");
        (r.status().as_u16(), r.body_mut().read_to_string().expect("body"))
    })
    .await
    .expect("task");
    assert_eq!(
        status, 200,
        "the acknowledged report is there after kill -9: {text}"
    );
    assert!(text.contains("QUEUED"), "{text}");
    net.shutdown().await;
}

/// A hub killed with SIGKILL and started again on the same addresses is
/// sent to again within 5 s: it keeps its QUIC stateless-reset key in its
/// data directory, so the region's first packet on the dead instance's
/// connection is answered with a reset the region accepts, and the link
/// reconnects at once instead of waiting out the 30 s idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_the_same_address_is_sent_to_again_within_seconds() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitrep"));
    let mut net = TestNet::prepare(&line());
    net.start_node("socialstyrelsen").await;
    net.start_node("region-uppsala").await;
    net.spawn_child("nspl-hub", bin);
    let submit = |i: u32| report_to("socialstyrelsen", i, Precedence::Flash);
    let arrived = |net: &TestNet, id: MessageId| {
        net.node("socialstyrelsen")
            .inbox(Channel::Open, 0, 100)
            .expect("inbox")
            .iter()
            .any(|r| r.header.id == id)
    };
    let first = net
        .node("region-uppsala")
        .submit(submit(1))
        .await
        .expect("submit");
    wait_until(net.node("socialstyrelsen"), LONG, "the first report", || {
        arrived(&net, first)
    })
    .await
    .expect("delivered");

    // Pin the hub's listen addresses to the ones it has, then kill it and
    // start it again there: its peers keep pointing at the same address.
    let before: Vec<_> = [Channel::Open, Channel::Secure]
        .map(|c| (c, net.addr("nspl-hub", c).expect("bound")))
        .into();
    let path = net.config_path("nspl-hub");
    let mut doc: toml::Table = std::fs::read_to_string(&path)
        .expect("read")
        .parse()
        .expect("toml");
    for (c, a) in &before {
        doc["channels"][c.as_str()]
            .as_table_mut()
            .expect("channel table")
            .insert("listen".into(), a.to_string().into());
    }
    std::fs::write(&path, toml::to_string(&doc).expect("toml")).expect("write");
    net.kill_child("nspl-hub");
    net.spawn_child("nspl-hub", bin);
    for (c, a) in &before {
        assert_eq!(
            net.addr("nspl-hub", *c),
            Some(*a),
            "restarted on the same {c} address"
        );
    }

    let start = std::time::Instant::now();
    let second = net
        .node("region-uppsala")
        .submit(submit(2))
        .await
        .expect("submit");
    wait_until(
        net.node("socialstyrelsen"),
        LONG,
        "the report after the restart",
        || arrived(&net, second),
    )
    .await
    .expect("delivered after the restart");
    let took = start.elapsed();
    println!("delivered through the restarted hub {took:?} after submitting");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the peers waited for the idle timeout"
    );
    net.shutdown().await;
}

/// A peer that stops answering without closing anything (its process
/// frozen with SIGSTOP: no reset, no close, no packets) is shown as not
/// connected once it has not been heard for two keep-alive intervals, long
/// before the 30 s QUIC idle timeout would end the connection; heard again,
/// it is connected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_connected_only_while_the_peer_is_heard() {
    let bin = Path::new(env!("CARGO_BIN_EXE_sitrep"));
    let mut net = TestNet::prepare(&line());
    net.start_node("socialstyrelsen").await;
    net.start_node("region-uppsala").await;
    net.spawn_child("nspl-hub", bin);
    let region = net.node("region-uppsala");
    let hub_connected = || {
        region
            .peers()
            .iter()
            .any(|p| p.peer.as_str() == "nspl-hub" && p.channel == Channel::Open && p.connected)
    };
    let id = region
        .submit(report_to("socialstyrelsen", 1, Precedence::Routine))
        .await
        .expect("submit");
    wait_until(region, LONG, "the first receipt", || all_delivered(region, &id))
        .await
        .expect("delivered");
    assert!(hub_connected(), "connected while traffic flows");

    let pid = net.child_pid("nspl-hub").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let frozen = std::time::Instant::now();
    // Silence is only visible as time passes: ask until it shows.
    while hub_connected() {
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "still shown connected {:?} after the hub fell silent",
            frozen.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = frozen.elapsed();
    println!("a silent peer shown not connected after {shown:?}");
    // Default keep-alive 5 s: 2 × 5 s + 1 s, plus the link's look interval.
    assert!(shown >= Duration::from_secs(5), "{shown:?}: too early");
    signal("-CONT");
    let resumed = std::time::Instant::now();
    while !hub_connected() {
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "not connected again after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    net.shutdown().await;
}
