//! Soak (issue 12, point 8): region → hub → authority as three
//! `sitrep node` processes, reports submitted to the region's API at a
//! steady rate, and each node's resident memory, open files and queue depth
//! sampled at a fixed interval.
//!
//! By default (as CI runs it) 20 s at 200 reports/s, sampled every 5 s: it
//! checks that everything is delivered and no node leaks a file descriptor
//! (the rate reached is printed, not checked: CI shares its cores). `SITREP_SOAK_MINUTES=60` runs the hour of the issue,
//! sampled every minute, and also checks that the rate was held and that no node's resident memory
//! grows more than 10 % after the first 5 minutes; `SITREP_SOAK_CSV=path`
//! writes the samples (`benches/soak/run` does both, in a release build, and
//! plots them into `benches/soak/soak.png`). `SITREP_SOAK_RATE` sets the rate.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sitrep_node::config::Role;
use sitrep_testkit::{TestNet, line};

const NODES: [&str; 3] = ["region-uppsala", "nspl-hub", "socialstyrelsen"];
const REGION: &str = "region-uppsala";
/// Client threads sharing the rate (each waits for its own answers).
const CLIENTS: u32 = 8;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One sample of one node.
#[derive(Debug, Clone)]
struct Sample {
    at_s: f64,
    node: &'static str,
    rss_kib: u64,
    fds: u64,
    queued: u64,
    accepted: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count() as u64
}

/// (queued copies, counters.submitted + counters.accepted) from status.
fn status(api: &str, token: &str) -> (u64, u64) {
    let v: serde_json::Value = agent()
        .get(&format!("{api}/v1/status"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("status")
        .body_mut()
        .read_json()
        .expect("json");
    let queued = v["outboxes"]
        .as_array()
        .map(|o| o.iter().filter_map(|h| h["depth"].as_u64()).sum())
        .unwrap_or(0);
    let c = &v["counters"];
    let taken = c["submitted"].as_u64().unwrap_or(0) + c["accepted"].as_u64().unwrap_or(0);
    (queued, taken)
}

#[test]
fn a_steady_load_holds_its_rate_and_leaks_no_memory_or_files() {
    let minutes: Option<f64> = env("SITREP_SOAK_MINUTES");
    let rate: u32 = env("SITREP_SOAK_RATE").unwrap_or(200);
    let (length, every) = match minutes {
        Some(m) => (Duration::from_secs_f64(m * 60.0), Duration::from_secs(60)),
        None => (Duration::from_secs(20), Duration::from_secs(5)),
    };
    println!("soak: {length:?} at {rate} reports/s, sampled every {every:?}");
    let bin = Path::new(env!("CARGO_BIN_EXE_sitrep"));
    let mut net = TestNet::prepare(&line());
    net.spawn_children_pinned(&NODES, bin);
    let report = serde_json::json!({
        "report": serde_json::to_value(sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms())).expect("json"),
        "label": { "class": "SENSITIVE" },
        "mode": "EXERCISE",
        "recipients": ["socialstyrelsen"],
    });

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (api, token) = (net.child_api(REGION), net.api_token(REGION, Role::Reporter));
            let (stop, sent, report) = (Arc::clone(&stop), Arc::clone(&sent), report.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let per = rate.div_ceil(CLIENTS).max(1);
                for n in 0u32.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Pacing: each client offers its share of the rate,
                    // staggered so the requests spread over each second.
                    let due = start
                        + Duration::from_secs(1) * n / per
                        + Duration::from_secs(1) * c / (per * CLIENTS);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let r = agent
                        .post(&format!("{api}/v1/reports"))
                        .header("Authorization", &format!("Bearer {token}"))
                        .send_json(&report)
                        .expect("POST");
                    assert_eq!(r.status().as_u16(), 202, "a submission refused");
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut csv = env::<String>("SITREP_SOAK_CSV").map(|p| {
        let mut f = std::fs::File::create(&p).expect("create the CSV");
        writeln!(f, "minute,node,rss_kib,fds,queued,taken").expect("write");
        f
    });
    let samples = Mutex::new(Vec::<Sample>::new());
    let operators: Vec<(&str, String, String, u32)> = NODES
        .iter()
        .map(|id| {
            (
                *id,
                net.child_api(id),
                net.api_token(id, Role::Operator),
                net.child_pid(id),
            )
        })
        .collect();
    let mut next = start;
    while start.elapsed() < length {
        // Sampling at a fixed interval is what a soak does.
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let at_s = start.elapsed().as_secs_f64();
        for (node, api, token, pid) in &operators {
            let (queued, accepted) = status(api, token);
            let s = Sample {
                at_s,
                node,
                rss_kib: rss_kib(*pid),
                fds: fds(*pid),
                queued,
                accepted,
            };
            println!(
                "soak t={:>6.0}s {:<16} rss {:>7} KiB  fds {:>4}  queued {:>5}  taken {:>8}",
                s.at_s, s.node, s.rss_kib, s.fds, s.queued, s.accepted
            );
            if let Some(f) = csv.as_mut() {
                writeln!(
                    f,
                    "{:.2},{},{},{},{},{}",
                    s.at_s / 60.0,
                    s.node,
                    s.rss_kib,
                    s.fds,
                    s.queued,
                    s.accepted
                )
                .expect("write");
            }
            samples.lock().unwrap_or_else(PoisonError::into_inner).push(s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    let achieved = sent as f64 / elapsed;
    println!("soak: {sent} reports in {elapsed:.0} s = {achieved:.1}/s");
    // Whether the rate was held is a measurement of the hour's run, on a
    // quiet machine; the short run in CI shares its cores with other tests,
    // so there it is only printed.
    if minutes.is_some() {
        assert!(
            achieved >= f64::from(rate) * 0.95,
            "the rate was not held: {achieved:.1}/s of {rate}/s"
        );
    }

    // Everything drains: every outbox empty, the authority took all.
    let (_, authority_api, authority_token, _) = &operators[2];
    let settle = Instant::now();
    loop {
        let drained = operators.iter().all(|(_, api, t, _)| status(api, t).0 == 0);
        if drained && status(authority_api, authority_token).1 >= sent {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(120),
            "the queues did not drain"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("soak: drained {:.1?} after the load stopped", settle.elapsed());

    let samples = samples.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut failures: Vec<String> = Vec::new();
    for node in NODES {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.node == node).collect();
        // The baseline: the first sample at or after 5 minutes (short runs:
        // the first sample).
        let base = mine
            .iter()
            .find(|s| s.at_s >= 300.0)
            .or(mine.first())
            .copied()
            .expect("samples");
        let last = mine.last().copied().expect("samples");
        let peak_rss = mine
            .iter()
            .filter(|s| s.at_s >= base.at_s)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0);
        let growth = (peak_rss as f64 / base.rss_kib as f64 - 1.0) * 100.0;
        println!(
            "soak: {node}: rss {} KiB at {:.0} s, peak after it {peak_rss} KiB ({growth:+.1} %), {} KiB at the end; fds {} → {}",
            base.rss_kib, base.at_s, last.rss_kib, base.fds, last.fds
        );
        if last.fds > base.fds + 4 {
            failures.push(format!(
                "{node}: open files grew from {} to {}",
                base.fds, last.fds
            ));
        }
        if length >= Duration::from_secs(600) && growth >= 10.0 {
            failures.push(format!(
                "{node}: resident memory grew {growth:.1} % after 5 minutes"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}
