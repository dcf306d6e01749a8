//! A full disk (issue 12, point 5): the open channel's stores of the region
//! and of the hub each live on a small tmpfs the test mounts and fills.
//! Submits are answered `507`, the hub refuses the region's copies with a
//! transient refusal (the region keeps them), nothing is stored that should
//! not be, and once space is freed the backlog is delivered, each report
//! once; the stores then open cleanly after a restart.
//!
//! Mounting needs root. Without it the test prints `SKIPPED: …` and passes,
//! unless `SITREP_FAULT_TESTS=required` (as `.ci/run` sets).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sitrep_core::{Channel, MessageId};
use sitrep_node::config::{MIN_FREE_FLOOR, Role};
use sitrep_store::free_bytes;
use sitrep_testkit::{TestNet, all_delivered, line};

const REGION: &str = "region-uppsala";
const HUB: &str = "nspl-hub";
const AUTHORITY: &str = "socialstyrelsen";
/// Reports sent while the hub's disk is full.
const BACKLOG: u32 = 20;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { path, _dir: dir })
    }

    fn store(&self) -> PathBuf {
        self.path.join("store")
    }

    fn ballast(&self) -> PathBuf {
        self.path.join("ballast")
    }

    /// Writes a ballast file until less than `left` bytes are free.
    fn fill_until(&self, left: u64) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())
            .expect("ballast");
        let chunk = vec![0x5au8; 1 << 20];
        while free_bytes(&self.path).expect("statvfs") >= left {
            f.write_all(&chunk).expect("the disk has room for the ballast");
        }
        f.sync_all().expect("sync ballast");
    }

    fn free(&self) {
        std::fs::remove_file(self.ballast()).expect("remove ballast");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Two small disks, or why not (then the test skips, unless required).
fn disks() -> Option<(SmallDisk, SmallDisk)> {
    let required = std::env::var("SITREP_FAULT_TESTS").as_deref() == Ok("required");
    let got = if rustix::process::geteuid().is_root() {
        SmallDisk::mount("96m").and_then(|a| SmallDisk::mount("96m").map(|b| (a, b)))
    } else {
        Err("not root".to_owned())
    };
    match got {
        Ok(d) => Some(d),
        Err(e) if required => panic!("SITREP_FAULT_TESTS=required but no small disk: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: the disk-full test needs root to mount a tmpfs ({e})");
            None
        }
    }
}

fn body(number: u32) -> serde_json::Value {
    let mut report = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    report.report_number = number;
    serde_json::json!({
        "report": serde_json::to_value(report).expect("json"),
        "label": { "class": "SENSITIVE" },
        "mode": "EXERCISE",
        "recipients": [AUTHORITY],
    })
}

/// `POST /v1/reports` (status, body).
async fn submit(net: &TestNet, number: u32) -> (u16, serde_json::Value) {
    let url = format!("http://{}/v1/reports", net.node(REGION).api_addr().expect("api"));
    let token = net.api_token(REGION, Role::Reporter);
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(body(number))
            .expect("POST");
        let v = r.body_mut().read_json().expect("json");
        (r.status().as_u16(), v)
    })
    .await
    .expect("task")
}

/// `GET /v1/status` of `id`, as the operator.
async fn status(net: &TestNet, id: &str) -> serde_json::Value {
    let url = format!("http://{}/v1/status", net.node(id).api_addr().expect("api"));
    let token = net.api_token(id, Role::Operator);
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("GET")
            .body_mut()
            .read_json()
            .expect("json")
    })
    .await
    .expect("task")
}

fn open_store(status: &serde_json::Value) -> &serde_json::Value {
    status["stores"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["channel"] == "open"))
        .expect("the open store in status")
}

/// Polls `cond` (state that changes in other nodes, on other threads)
/// until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn inbox_ids(net: &TestNet) -> Vec<MessageId> {
    net.node(AUTHORITY)
        .inbox(Channel::Open, 0, 1000)
        .expect("inbox")
        .iter()
        .map(|m| m.header.id)
        .collect()
}

fn id_of(v: &serde_json::Value) -> MessageId {
    MessageId::parse(v["id"].as_str().expect("an id")).expect("a message id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_messages_keeps_custody_and_the_backlog_flows_once_freed() {
    let Some((region_disk, hub_disk)) = disks() else {
        return;
    };
    let mut net = TestNet::prepare(&line());
    for (id, store) in [(REGION, region_disk.store()), (HUB, hub_disk.store())] {
        net.override_config(id, move |c| {
            if let Some(open) = c.channels.get_mut(&Channel::Open) {
                open.store = store.clone();
            }
            c.limits.min_free_bytes = MIN_FREE_FLOOR;
            // Quick retries, so the backlog moves soon after space is freed.
            c.limits.retry_initial = Duration::from_millis(50);
            c.limits.retry_max = Duration::from_millis(500);
        });
    }
    for id in [REGION, HUB, AUTHORITY] {
        net.start_node(id).await;
    }
    let (code, first) = submit(&net, 1).await;
    assert_eq!(code, 202, "{first}");
    let first = id_of(&first);
    eventually(Duration::from_secs(30), "the first report delivered", || {
        all_delivered(net.node(REGION), &first)
    })
    .await;

    // The hub's disk fills up: it refuses the region's copies, transiently.
    hub_disk.fill_until(MIN_FREE_FLOOR / 2);
    let mut backlog = Vec::new();
    for n in 0..BACKLOG {
        let (code, v) = submit(&net, 10 + n).await;
        assert_eq!(code, 202, "the region's own disk has room: {v}");
        backlog.push(id_of(&v));
    }
    let hub = net.node(HUB);
    eventually(Duration::from_secs(30), "the hub refusing for its store", || {
        hub.counters().refusals().get("store").copied().unwrap_or(0) >= 1
    })
    .await;
    let hub_status = status(&net, HUB).await;
    let store = open_store(&hub_status);
    assert!(
        store["free_bytes"].as_u64().expect("free bytes") < store["min_free_bytes"].as_u64().expect("min"),
        "status shows the disk under its floor: {store}"
    );
    for id in &backlog {
        assert!(!hub.has_seen(id).expect("seen"), "the hub stored nothing of {id}");
    }
    assert!(
        hub.outboxes().iter().all(|(_, h)| h.depth == 0),
        "the hub queued nothing"
    );
    assert_eq!(inbox_ids(&net), vec![first], "nothing went past the hub");
    let region = net.node(REGION);
    let queued: u64 = region
        .outboxes()
        .iter()
        .filter(|(c, h)| *c == Channel::Open && h.next_hop.as_str() == HUB)
        .map(|(_, h)| h.depth)
        .sum();
    assert_eq!(queued, u64::from(BACKLOG), "the region keeps every copy");

    // The region's disk fills up too: submits are refused with 507.
    region_disk.fill_until(MIN_FREE_FLOOR / 2);
    let submitted = region.counters().get("submitted");
    let (code, refused) = submit(&net, 99).await;
    assert_eq!(code, 507, "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("min_free_bytes") && error.contains("free"),
        "{error}"
    );
    assert_eq!(region.counters().get("submitted"), submitted, "nothing stored");

    // Space is freed: submits are taken again and the backlog flows.
    region_disk.free();
    hub_disk.free();
    let (code, last) = submit(&net, 100).await;
    assert_eq!(code, 202, "{last}");
    let last = id_of(&last);
    let mut expected: Vec<MessageId> = std::iter::once(first)
        .chain(backlog.iter().copied())
        .chain(std::iter::once(last))
        .collect();
    expected.sort();
    eventually(Duration::from_secs(60), "the backlog at the authority", || {
        inbox_ids(&net).len() >= expected.len()
    })
    .await;
    let mut got = inbox_ids(&net);
    got.sort();
    assert_eq!(got, expected, "every accepted report once, nothing else");
    eventually(Duration::from_secs(30), "every receipt back", || {
        expected.iter().all(|id| all_delivered(net.node(REGION), id))
    })
    .await;

    // Nothing is corrupted: both stores open again and hold what they did.
    net.restart(HUB).await;
    net.restart(REGION).await;
    assert!(expected.iter().all(|id| all_delivered(net.node(REGION), id)));
    assert!(net.node(HUB).has_seen(&last).expect("seen"));
    for id in [REGION, HUB] {
        let s = status(&net, id).await;
        assert!(open_store(&s)["failed"].is_null(), "{id}: {s}");
    }
    net.shutdown().await;
    drop((region_disk, hub_disk));
}
