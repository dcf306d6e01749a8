//! National feeds: how fast a report reaches a subscriber's roll-up, and
//! what a roll-up update costs.
//!
//! `cargo bench --bench feeds`
//!
//! 1. **Update latency** under the `path` bench's load: region-uppsala →
//!    nspl-hub (aggregator, feed `national-open`) → socialstyrelsen
//!    (subscribed), 4 KiB SENSITIVE reports with growing report numbers at
//!    `SITREP_BENCH_RATE` reports/s (default 500) for `SITREP_BENCH_SECS` s
//!    (default 10), open loop. Per report: from the hub's `Delivered` event
//!    (the report is durable at the aggregator) to the first Server-Sent
//!    Event at the subscriber whose row holds that report or a later one
//!    (updates coalesce: at most one per `feed_min_interval`, default
//!    250 ms, so most reports arrive folded into a later update). p50, p99.
//! 2. **Update cost** per report, by number of regions (21, 210, 2100) and
//!    of subscribers: `Latest::offer` plus building the roll-up, and one
//!    subscriber's region filter. Linear in regions, and linear in
//!    subscribers (one restriction and one sealed envelope each), never
//!    quadratic; the figures say by how much.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) a smoke run.

#[path = "support/reports.rs"]
mod reports;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use sitrep_core::feed::{FeedSpec, Input, Latest, Region, restrict, rollup};
use sitrep_core::{Channel, Class, Label, MessageId, Mode};
use sitrep_node::NodeEvent;
use sitrep_node::config::Role;
use sitrep_testkit::{TestNet, line};
use tokio::sync::mpsc;
use tokio::time::Instant;

const HUB: &str = "nspl-hub";
const AUTHORITY: &str = "socialstyrelsen";

fn main() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let var = |name: &str, default: u32| -> anyhow::Result<u32> {
        match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|_| anyhow!("{name}={v:?} is not a number")),
            Err(_) => Ok(default),
        }
    };
    let (rate, secs) = if smoke {
        (50, 1)
    } else {
        (var("SITREP_BENCH_RATE", 500)?, var("SITREP_BENCH_SECS", 10)?)
    };
    ensure!(rate > 0 && secs > 0, "rate and secs must be positive");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(latency(rate, secs))?;
    cost(if smoke { 3 } else { 200 });
    Ok(())
}

/// Follows the subscriber's event stream on a thread: (arrival, the
/// highest report number in the roll-up).
fn follow(url: String, token: String) -> mpsc::UnboundedReceiver<(Instant, u64)> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let Ok(resp) = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
        else {
            return;
        };
        let mut data = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(resp.into_body().into_reader())) {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let at = Instant::now();
                let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                data.clear();
                let n = v["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["report_number"].as_u64())
                    .max()
                    .unwrap_or(0);
                if tx.send((at, n)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn latency(rate: u32, secs: u32) -> anyhow::Result<()> {
    let mut net = TestNet::prepare(&line());
    net.override_config(HUB, |c| {
        c.feeds = vec![FeedSpec::national(
            "national-open",
            Channel::Open,
            Mode::Exercise,
            Class::Sensitive,
        )];
    });
    for id in [AUTHORITY, HUB, "region-uppsala"] {
        net.start_node(id).await;
    }
    let sub_api = format!("http://{}", net.node(AUTHORITY).api_addr().context("api")?);
    let token = net.api_token(AUTHORITY, Role::Reader);
    {
        let (url, token) = (
            format!("{sub_api}/v1/feeds/national-open/subscribe"),
            token.clone(),
        );
        let status = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            agent
                .post(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(serde_json::json!({ "channel": "open" }))
                .map(|r| r.status().as_u16())
        })
        .await??;
        ensure!(status == 202, "subscribe answered {status}");
    }
    let mut updates = follow(format!("{sub_api}/v1/feeds/national-open/events"), token);
    let template = reports::report_template(4096)?;
    // Report n → when it was durable at the hub.
    let mut durable: HashMap<MessageId, Instant> = HashMap::new();
    let mut hub_events = net.node(HUB).events();
    let region = net.node("region-uppsala");
    let total = (rate * secs) as usize;
    let mut ids: Vec<MessageId> = Vec::with_capacity(total);
    let start = Instant::now();
    let every = Duration::from_secs(1) / rate;
    for n in 0..total {
        tokio::time::sleep_until(start + every * u32::try_from(n)?).await;
        // Recipients: the hub (the aggregator's inbox) and the authority, as in `path`.
        let mut s = reports::submission(&template, n, HUB)?;
        s.recipients.push(sitrep_core::NodeId::new(AUTHORITY)?);
        s.label = Label::new(Class::Sensitive);
        ids.push(region.submit(s).await?);
        while let Ok(e) = hub_events.try_recv() {
            if let NodeEvent::Delivered { id, .. } = e {
                durable.entry(id).or_insert_with(Instant::now);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while durable.len() < total && Instant::now() < deadline {
        if let Ok(Ok(NodeEvent::Delivered { id, .. })) =
            tokio::time::timeout_at(deadline, hub_events.recv()).await
        {
            durable.entry(id).or_insert_with(Instant::now);
        }
    }
    ensure!(
        durable.len() >= total,
        "only {} of {total} reports reached the hub",
        durable.len()
    );
    // Updates until the last report number shows at the subscriber.
    let mut seen: Vec<(Instant, u64)> = Vec::new();
    let want = total as u64;
    while seen.last().is_none_or(|(_, n)| *n < want) {
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(Some(u)) => seen.push(u),
            _ => anyhow::bail!("the subscriber's roll-up did not reach report {want}"),
        }
    }
    let mut lat: Vec<Duration> = Vec::with_capacity(total);
    for (n, id) in ids.iter().enumerate() {
        let number = n as u64 + 1;
        let Some(t0) = durable.get(id) else { continue };
        if let Some((t1, _)) = seen.iter().find(|(_, m)| *m >= number) {
            lat.push(t1.saturating_duration_since(*t0));
        }
    }
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "feeds.latency rate={rate} secs={secs} reports={total} updates={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} \
         (durable at the aggregator → the subscriber's event; feed_min_interval 250 ms)",
        seen.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    net.shutdown().await;
    Ok(())
}

fn report(code: &str, number: u32, now: i64) -> Input {
    let mut r = sitrep_core::report::example_uppsala(now);
    r.region_code = code.to_owned();
    r.report_number = number;
    Input {
        id: MessageId::new_v7(now, [0; 10]),
        envelope_sha256: [0; 32],
        received_ms: now,
        label: Label::new(Class::Sensitive),
        mode: Mode::Actual,
        channel: Channel::Open,
        report: r,
    }
}

/// Offer + build per report, by regions; one subscriber's filter.
fn cost(rounds: u32) {
    let now = sitrep_node::clock::now_ms();
    let spec = FeedSpec::national("national-open", Channel::Open, Mode::Actual, Class::Sensitive);
    for regions in [21usize, 210, 2100] {
        let all: Vec<Region> = (0..regions)
            .map(|i| Region {
                code: format!("{i:04}"),
                name: format!("Region {i}"),
            })
            .collect();
        let mut latest = Latest::default();
        for r in &all {
            latest.offer(report(&r.code, 1, now));
        }
        let t = std::time::Instant::now();
        for n in 2..rounds + 2 {
            for r in all.iter().take(21) {
                latest.offer(report(&r.code, n, now));
                black_box(rollup(&spec, &latest, &all, "hub", now, u64::from(n)));
            }
        }
        let per_update = t.elapsed() / (rounds * 21);
        let built = rollup(&spec, &latest, &all, "hub", now, 1);
        let some: Vec<String> = all.iter().take(regions / 2).map(|r| r.code.clone()).collect();
        let t = std::time::Instant::now();
        for _ in 0..rounds * 21 {
            black_box(restrict(&built, &some));
        }
        let per_sub = t.elapsed() / (rounds * 21);
        println!(
            "feeds.cost regions={regions} per_report_update_us={:.1} per_region_ns={:.0} per_filtered_subscriber_us={:.1}",
            per_update.as_secs_f64() * 1e6,
            per_update.as_secs_f64() * 1e9 / regions as f64,
            per_sub.as_secs_f64() * 1e6
        );
    }
}
