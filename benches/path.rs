//! Load generator for the whole path: region-uppsala → nspl-hub →
//! socialstyrelsen, three real in-process nodes on 127.0.0.1 (QUIC with
//! mutual TLS, durable sled stores with group commit at every hop), 4 KiB
//! SENSITIVE reports to one recipient, signed receipts back to the region.
//!
//! `cargo bench --bench path`
//!
//! 1. Sustained throughput: `SITREP_BENCH_N` reports (default 5000), up to
//!    64 submissions in flight, from the first submit to the last Delivered
//!    event at the authority, and to the last Receipt event at the region.
//! 2. Latency at a fixed offered rate: `SITREP_BENCH_RATE` reports/s
//!    (default 500) for `SITREP_BENCH_SECS` s (default 10), open loop on an
//!    absolute schedule; per report from just before `submit` to the
//!    authority's Delivered event for that id.
//! 3. The primitive bound of DESIGN §10, measured in the same run.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a small
//! smoke run instead. Exits non-zero if deliveries or receipts do not all
//! arrive in time.

#[path = "support/load.rs"]
#[allow(
    dead_code,
    reason = "the per-process shares and per-message figures are for the compare bench"
)]
mod load;
#[path = "support/perf.rs"]
mod perf;
#[path = "support/reports.rs"]
mod reports;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use prost::Message as _;
use sitrep_core::fixture::{DAY_MS, Fixture};
use sitrep_core::{Channel, Class, ContentType, Draft, Label, MessageId, Mode, NodeId, Precedence, envelope};
use sitrep_crypto::sign::{Signed, verify_batch};
use sitrep_crypto::{HpkeSecretKey, SigningKey};
use sitrep_net::{Direction, FrameRecorder};
use sitrep_node::NodeEvent;
use sitrep_proto::v1 as pb;
use sitrep_testkit::{TestNet, line};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

const REGION: &str = "region-uppsala";
const AUTHORITY: &str = "socialstyrelsen";
/// Encoded size of the report: the payload that is sealed.
const REPORT_BYTES: usize = 4096;
/// Submissions in flight during the sustained run.
const IN_FLIGHT: usize = 64;
/// Signatures per batch when the bound is measured with batched verification.
const BOUND_BATCH: usize = 16;
/// Reports sent (and waited for) before anything is measured: connections up, caches warm.
const WARMUP: usize = 100;

#[derive(Debug, Clone, Copy)]
struct Params {
    n: usize,
    rate: u32,
    secs: u32,
    warmup: usize,
    /// Time spent measuring each primitive.
    budget: Duration,
}

impl Params {
    fn from_env(smoke: bool) -> anyhow::Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let p = if smoke {
            Self {
                n: 200,
                rate: 100,
                secs: 1,
                warmup: 10,
                budget: Duration::from_millis(30),
            }
        } else {
            Self {
                n: var("SITREP_BENCH_N", 5000)?,
                rate: var("SITREP_BENCH_RATE", 500)?,
                secs: var("SITREP_BENCH_SECS", 10)?,
                warmup: WARMUP,
                budget: Duration::from_millis(600),
            }
        };
        ensure!(
            p.n > 0 && p.rate > 0 && p.secs > 0,
            "N, RATE and SECS must be positive"
        );
        Ok(p)
    }

    /// Generous: a path slower than 50 reports/s still finishes.
    fn timeout(n: usize) -> Duration {
        Duration::from_secs(60)
            + Duration::from_millis(20).saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

fn main() -> anyhow::Result<()> {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let p = Params::from_env(smoke)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(run(p));
    // Never hang on the way out, whatever state an error left the nodes in.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(p: Params) -> anyhow::Result<()> {
    let template = Arc::new(reports::report_template(REPORT_BYTES)?);
    // The primitive bound first, while nothing else runs (no node, no writeback).
    let b = bound(p.budget)?;
    if std::env::var_os("SITREP_BENCH_DIAG").is_some() {
        diagnose(&template, p.n).await.context("diagnosis")?;
    }
    if let Some(n) = std::env::var("SITREP_BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        backlog(&template, n).await.context("backlog")?;
    }
    let net = Arc::new(TestNet::start(&line()).await);

    // Warm-up: connections, handshakes, sled trees; not measured.
    sustained(&net, &template, p.warmup).await.context("warm-up")?;

    let trace = std::env::var_os("SITREP_BENCH_TRACE")
        .is_some()
        .then(|| monitor(Arc::clone(&net)));
    let s = sustained(&net, &template, p.n).await.context("sustained run")?;
    if let Some(t) = trace {
        t.abort();
        // An aborted task only reports that it was cancelled.
        let _ = t.await;
    }
    let delivered_per_s = p.n as f64 / s.delivered.as_secs_f64();
    println!(
        "path.sustained reports_per_s={delivered_per_s:.0} n={} in_flight={IN_FLIGHT} last_delivery_s={:.3} \
         all_accepted_s={:.3} cpu_us_per_report={:.0} cpu_pct={:.1} report_bytes={REPORT_BYTES} \
         steal_pct={:.1} others_pct={:.1} iowait_pct={:.1}",
        p.n,
        s.delivered.as_secs_f64(),
        s.accepted.as_secs_f64(),
        s.cpu.as_secs_f64() * 1e6 / p.n as f64,
        100.0 * s.cpu.as_secs_f64() / s.receipts.as_secs_f64() / 2.0,
        s.machine.steal_pct,
        s.machine.others_pct,
        s.machine.iowait_pct,
    );
    println!(
        "path.receipts all_back_s={:.3} reports_per_s={:.0} n={}",
        s.receipts.as_secs_f64(),
        p.n as f64 / s.receipts.as_secs_f64(),
        p.n
    );

    let l = latency(&net, &template, p.rate, p.secs)
        .await
        .context("latency run")?;
    println!(
        "path.latency rate={} secs={} n={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} achieved={:.0} \
         delivered_per_s={:.0} schedule_lag_max_ms={:.2}",
        p.rate,
        p.secs,
        l.n,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.max),
        l.achieved,
        l.delivered_per_s,
        ms(l.schedule_lag_max),
    );

    let net = Arc::try_unwrap(net).map_err(|_| anyhow!("the test net is still shared"))?;
    net.shutdown().await;

    println!(
        "path.primitives_us sign_report={:.1} hpke_seal={:.1} verify_report={:.1} hpke_open={:.1} \
         sign_receipt={:.1} verify_receipt={:.1} sum={:.1} envelope_bytes={} receipt_bytes={} \
         (sign+seal, verify, verify+open, sign receipt, 2x verify receipt)",
        us(b.sign_report),
        us(b.hpke_seal),
        us(b.verify_report),
        us(b.hpke_open),
        us(b.sign_receipt),
        us(b.verify_receipt),
        us(b.sum),
        b.report_bytes,
        b.receipt_bytes,
    );
    let bound_per_s = 2.0 / b.sum.as_secs_f64();
    println!(
        "path.bound reports_per_s={bound_per_s:.0} cores=2 sustained_pct={:.1}",
        100.0 * delivered_per_s / bound_per_s
    );
    let batched_bound = 2.0 / b.sum_batched.as_secs_f64();
    println!(
        "path.bound_batched reports_per_s={batched_bound:.0} per_report_us={:.1} sustained_pct={:.1} \
         verify_report={:.1} verify_receipt={:.1} (the four verifications in batches of {BOUND_BATCH}, as \
         the nodes' verifiers do under load)",
        us(b.sum_batched),
        100.0 * delivered_per_s / batched_bound,
        us(b.verify_report_batched),
        us(b.verify_receipt_batched),
    );
    let env_bound = 2.0 / b.envelope_sum.as_secs_f64();
    println!(
        "path.bound_envelope reports_per_s={env_bound:.0} per_report_us={:.1} sustained_pct={:.1} \
         (whole envelope::seal/verify/open calls instead of bare primitives)",
        us(b.envelope_sum),
        100.0 * delivered_per_s / env_bound
    );
    Ok(())
}

/// `SITREP_BENCH_TRACE=1`: outbox depth per hop and store counters every
/// 500 ms during the sustained run, to see where a queue builds up.
fn monitor(net: Arc<TestNet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let mut line = format!("path.trace t={:.1}", t0.elapsed().as_secs_f64());
            for id in [REGION, "nspl-hub", AUTHORITY] {
                let node = net.node(id);
                for (_, h) in node.outboxes() {
                    line.push_str(&format!(" {id}->{}={}", h.next_hop, h.depth));
                }
                let c = node.counters();
                line.push_str(&format!(
                    " {id}:accepted={},forwarded={}",
                    c.get("accepted"),
                    c.get("forwarded")
                ));
            }
            println!("{line}");
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Which events to collect: the message id they are about.
#[derive(Debug, Clone, Copy)]
enum Want {
    Delivered,
    Receipt,
    Forwarded,
}

impl Want {
    fn id(self, e: &NodeEvent) -> Option<MessageId> {
        match (self, e) {
            (Self::Delivered, NodeEvent::Delivered { id, .. })
            | (Self::Receipt, NodeEvent::Receipt { id, .. })
            | (Self::Forwarded, NodeEvent::Forwarded { id, .. }) => Some(*id),
            _ => None,
        }
    }
}

/// Consumes `rx` continuously (the broadcast buffer is 4096) until `want`
/// events of the kind have arrived; when each first arrived.
fn collect(
    mut rx: broadcast::Receiver<NodeEvent>,
    kind: Want,
    want: usize,
    deadline: Instant,
) -> tokio::task::JoinHandle<anyhow::Result<HashMap<MessageId, Instant>>> {
    tokio::spawn(async move {
        let mut seen = HashMap::with_capacity(want);
        while seen.len() < want {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(e)) => {
                    if let Some(id) = kind.id(&e) {
                        seen.entry(id).or_insert_with(Instant::now);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(k))) => {
                    bail!("{kind:?}: the event receiver lagged and lost {k} events; results would be wrong")
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    bail!("{kind:?}: node stopped after {} of {want} events", seen.len())
                }
                Err(_) => bail!("{kind:?}: timed out with {} of {want} events", seen.len()),
            }
        }
        Ok(seen)
    })
}

async fn join<T>(h: tokio::task::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    h.await.map_err(|e| anyhow!("task failed: {e}"))?
}

struct Sustained {
    /// First submit to the last Delivered at the authority.
    delivered: Duration,
    /// First submit to the last Receipt at the region.
    receipts: Duration,
    /// First submit to the last submit returning (durable at the region).
    accepted: Duration,
    /// CPU time of the whole process (three nodes) until the last receipt.
    cpu: Duration,
    /// The machine's load over the same window.
    machine: load::Load,
}

async fn sustained(
    net: &Arc<TestNet>,
    template: &Arc<pb::SituationReport>,
    n: usize,
) -> anyhow::Result<Sustained> {
    let deadline = Instant::now() + Params::timeout(n);
    let delivered = collect(net.node(AUTHORITY).events(), Want::Delivered, n, deadline);
    let receipts = collect(net.node(REGION).events(), Want::Receipt, n, deadline);
    let meter = load::LoadMeter::start(&["self"])?;
    let t0 = Instant::now();
    let ids: Vec<MessageId> = submit_all(net, template, n, deadline)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let accepted = t0.elapsed();
    let delivered = join(delivered).await?;
    let receipts = join(receipts).await?;
    let machine = meter.finish()?;
    let cpu = Duration::from_millis(machine.cpu_jiffies * 10);
    let last = |m: &HashMap<MessageId, Instant>| -> anyhow::Result<Duration> {
        let mut last = t0;
        for id in &ids {
            let t = m
                .get(id)
                .ok_or_else(|| anyhow!("an event for {id:?} is missing"))?;
            last = last.max(*t);
        }
        Ok(last - t0)
    };
    Ok(Sustained {
        delivered: last(&delivered)?,
        receipts: last(&receipts)?,
        accepted,
        cpu,
        machine,
    })
}

/// Submits `n` reports at the region, [`IN_FLIGHT`] at a time, as fast as it takes them.
async fn submit_all(
    net: &Arc<TestNet>,
    template: &Arc<pb::SituationReport>,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<(MessageId, Instant)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..IN_FLIGHT.min(n) {
        let (net, template, next) = (Arc::clone(net), Arc::clone(template), Arc::clone(&next));
        workers.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(ids);
                }
                let sub = reports::submission(&template, i, AUTHORITY)?;
                let id = tokio::time::timeout_at(deadline, net.node(REGION).submit(sub))
                    .await
                    .map_err(|_| anyhow!("submit timed out"))?
                    .context("submit")?;
                ids.push((id, Instant::now()));
            }
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        ids.extend(r.map_err(|e| anyhow!("submitter failed: {e}"))??);
    }
    ensure!(ids.len() == n, "submitted {} of {n}", ids.len());
    Ok(ids)
}

/// `SITREP_BENCH_DIAG=1`: the pieces of the path on fresh networks, to see
/// which one limits it. (a) submit only: the hub is down, so the region
/// seals and stores durably and nothing else; (b) one hop: the authority is
/// down, so the region submits and the hub takes custody and queues.
async fn diagnose(template: &Arc<pb::SituationReport>, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Params::timeout(n);

    let mut net = TestNet::start(&line()).await;
    net.stop("nspl-hub").await;
    net.stop(AUTHORITY).await;
    let net = Arc::new(net);
    let t0 = Instant::now();
    submit_all(&net, template, n, deadline).await?;
    let submit_only = t0.elapsed();
    Arc::try_unwrap(net)
        .map_err(|_| anyhow!("the test net is still shared"))?
        .shutdown()
        .await;

    let mut net = TestNet::start(&line()).await;
    net.stop(AUTHORITY).await;
    let net = Arc::new(net);
    let hub = net.node("nspl-hub");
    let before = hub.counters().get("accepted");
    let t0 = Instant::now();
    submit_all(&net, template, n, deadline).await?;
    let submitted = t0.elapsed();
    let want = before + n as u64;
    let mut rx = hub.watch();
    loop {
        // Mark first, then check: a change after the check still wakes us.
        rx.mark_unchanged();
        if hub.counters().get("accepted") >= want {
            break;
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .map_err(|_| anyhow!("one hop: timed out"))?
            .map_err(|_| anyhow!("one hop: hub stopped"))?;
    }
    let one_hop = t0.elapsed();
    Arc::try_unwrap(net)
        .map_err(|_| anyhow!("the test net is still shared"))?
        .shutdown()
        .await;
    let breakdown = breakdown(template, n, deadline).await?;
    println!(
        "path.diag n={n} submit_only_per_s={:.0} one_hop_per_s={:.0} one_hop_submit_per_s={:.0}",
        n as f64 / submit_only.as_secs_f64(),
        n as f64 / one_hop.as_secs_f64(),
        n as f64 / submitted.as_secs_f64(),
    );
    println!("{breakdown}");
    Ok(())
}

/// This process's resident memory now (`VmRSS`), bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `SITREP_BENCH_BACKLOG=N`: the authority is down while N reports go in
/// (they wait in the hub's custody), then it starts; prints how fast the
/// backlog drains to it (from its start to the last delivery) and the
/// process's largest RSS (all three nodes) while it does.
async fn backlog(template: &Arc<pb::SituationReport>, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Params::timeout(n) * 2;
    let mut net = TestNet::start(&line()).await;
    net.stop(AUTHORITY).await;
    let t0 = Instant::now();
    let mut net = {
        let net = Arc::new(net);
        submit_all(&net, template, n, deadline).await?;
        let hub = net.node("nspl-hub");
        let mut rx = hub.watch();
        loop {
            rx.mark_unchanged();
            let queued: u64 = hub.outboxes().iter().map(|(_, h)| h.depth).sum();
            if queued >= n as u64 {
                break;
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .map_err(|_| anyhow!("backlog: filling timed out"))?
                .map_err(|_| anyhow!("backlog: hub stopped"))?;
        }
        Arc::try_unwrap(net).map_err(|_| anyhow!("the test net is still shared"))?
    };
    let filled = t0.elapsed();
    let rss_before = rss_bytes().unwrap_or(0);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes().unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let t1 = Instant::now();
    net.start_node(AUTHORITY).await;
    let authority = net.node(AUTHORITY);
    let mut rx = authority.watch();
    loop {
        rx.mark_unchanged();
        if authority.counters().get("delivered") >= n as u64 {
            break;
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .map_err(|_| anyhow!("backlog: draining timed out"))?
            .map_err(|_| anyhow!("backlog: authority stopped"))?;
    }
    let drained = t1.elapsed();
    sampler.abort();
    let _ = sampler.await;
    println!(
        "path.backlog n={n} fill_s={:.1} drain_s={:.1} drain_per_s={:.0} rss_before_mib={:.0} rss_peak_mib={:.0}",
        filled.as_secs_f64(),
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        rss_before as f64 / 1048576.0,
        peak.load(Ordering::Relaxed) as f64 / 1048576.0,
    );
    net.shutdown().await;
    Ok(())
}

/// When something happened to each message.
type Times = HashMap<MessageId, Instant>;

/// One frame seen by a [`Recorder`].
#[derive(Debug)]
struct Seen {
    at: Instant,
    dir: Direction,
    peer: String,
    transfer: bool,
    id: MessageId,
}

/// Timestamps every Transfer and Accepted frame of a node, for [`breakdown`].
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<Seen>>);

impl FrameRecorder for Recorder {
    fn record(&self, _: Channel, dir: Direction, peer: &NodeId, frame: &[u8]) {
        let at = Instant::now();
        let Ok(f) =
            sitrep_net::frame::decode_body(frame.get(sitrep_net::frame::PREFIX_LEN..).unwrap_or_default())
        else {
            return;
        };
        let (id, transfer) = match f.kind {
            Some(pb::frame::Kind::Transfer(t)) => {
                let Ok(h) = envelope::peek_header(&t.envelope) else {
                    return;
                };
                (h.id, true)
            }
            Some(pb::frame::Kind::Accepted(a)) => {
                let Ok(id) = MessageId::from_slice(&a.message_id) else {
                    return;
                };
                (id, false)
            }
            _ => return,
        };
        if let Ok(mut v) = self.0.lock() {
            v.push(Seen {
                at,
                dir,
                peer: peer.to_string(),
                transfer,
                id,
            });
        }
    }
}

/// Where the time of one hop goes, reports only, from frame timestamps on
/// both sides and the sender's Forwarded events: median and p90 in ms.
async fn breakdown(
    template: &Arc<pb::SituationReport>,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<String> {
    let mut net = TestNet::prepare(&line());
    let mut recorders = HashMap::new();
    for id in [REGION, "nspl-hub", AUTHORITY] {
        let r = Arc::new(Recorder::default());
        net.start_node_with(id, Some(Arc::clone(&r) as Arc<dyn FrameRecorder>))
            .await;
        recorders.insert(id, r);
    }
    let net = Arc::new(net);
    sustained(&net, template, 20).await.context("breakdown warm-up")?;
    for r in recorders.values() {
        r.0.lock().map_err(|_| anyhow!("recorder poisoned"))?.clear();
    }
    // The hub forwards the receipts too.
    let region_fwd = collect(net.node(REGION).events(), Want::Forwarded, n, deadline);
    let hub_fwd = collect(net.node("nspl-hub").events(), Want::Forwarded, 2 * n, deadline);
    let t0 = Instant::now();
    let submitted: HashMap<MessageId, Instant> = submit_all(&net, template, n, deadline)
        .await?
        .into_iter()
        .collect();
    let (region_fwd, hub_fwd) = (join(region_fwd).await?, join(hub_fwd).await?);
    let elapsed = t0.elapsed();
    Arc::try_unwrap(net)
        .map_err(|_| anyhow!("the test net is still shared"))?
        .shutdown()
        .await;
    let frames = |node: &str,
                  dir: Direction,
                  peer: &str,
                  transfer: bool|
     -> anyhow::Result<HashMap<MessageId, Instant>> {
        let log = recorders
            .get(node)
            .ok_or_else(|| anyhow!("no recorder"))?
            .0
            .lock()
            .map_err(|_| anyhow!("recorder poisoned"))?;
        let mut m = HashMap::new();
        for s in log
            .iter()
            .filter(|s| s.dir == dir && s.peer == peer && s.transfer == transfer)
        {
            m.entry(s.id).or_insert(s.at);
        }
        Ok(m)
    };
    let mut out = format!(
        "path.diag_breakdown n={n} reports_per_s_to_custody_at_authority_hop={:.0} (ms, p50/p90)",
        n as f64 / elapsed.as_secs_f64()
    );
    for (from, to, queued_at, fwd) in [
        (REGION, "nspl-hub", submitted.clone(), &region_fwd),
        (
            "nspl-hub",
            AUTHORITY,
            frames("nspl-hub", Direction::Sent, REGION, false)?,
            &hub_fwd,
        ),
    ] {
        let sent = frames(from, Direction::Sent, to, true)?;
        let arrived = frames(to, Direction::Received, from, true)?;
        let answered = frames(to, Direction::Sent, from, false)?;
        let answer_in = frames(from, Direction::Received, to, false)?;
        let stages: [(&str, &Times, &Times); 5] = [
            ("queued", &queued_at, &sent),
            ("wire", &sent, &arrived),
            ("ingest", &arrived, &answered),
            ("answer", &answered, &answer_in),
            ("custody", &answer_in, fwd),
        ];
        out.push_str(&format!(" | {from}->{to}:"));
        for (name, a, b) in stages {
            let mut d: Vec<Duration> = submitted
                .keys()
                .filter_map(|id| Some(b.get(id)?.saturating_duration_since(*a.get(id)?)))
                .collect();
            d.sort_unstable();
            if d.is_empty() {
                out.push_str(&format!(" {name}=?"));
                continue;
            }
            let p = |q: f64| d[((q * d.len() as f64) as usize).min(d.len() - 1)];
            out.push_str(&format!(" {name}={:.1}/{:.1}", ms(p(0.5)), ms(p(0.9))));
        }
    }
    Ok(out)
}

struct Latency {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
    /// Submissions per second actually offered.
    achieved: f64,
    /// Deliveries per second over the run.
    delivered_per_s: f64,
    /// How late the generator started a submission against its schedule, at worst.
    schedule_lag_max: Duration,
}

/// Open loop on an absolute schedule: report `i` is submitted at
/// `start + i / rate` whatever happened to the ones before it; submissions
/// never wait for each other. If the generator itself is held up (a busy
/// runtime), the reports it owes go out at once when it resumes, and
/// `schedule_lag_max` says how far behind it ever was.
async fn latency(
    net: &Arc<TestNet>,
    template: &Arc<pb::SituationReport>,
    rate: u32,
    secs: u32,
) -> anyhow::Result<Latency> {
    let total = usize::try_from(u64::from(rate) * u64::from(secs)).context("rate × secs")?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs)) + Params::timeout(total);
    let delivered = collect(net.node(AUTHORITY).events(), Want::Delivered, total, deadline);
    let receipts = collect(net.node(REGION).events(), Want::Receipt, total, deadline);
    let period = Duration::from_secs(1) / rate;
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = JoinSet::new();
    let mut lag = Duration::ZERO;
    let mut last_start = start;
    for i in 0..total {
        let at = start + period * u32::try_from(i).context("index")?;
        tokio::time::sleep_until(at).await;
        let sub = reports::submission(template, i, AUTHORITY)?;
        let net = Arc::clone(net);
        let begun = Instant::now();
        lag = lag.max(begun - at);
        last_start = begun;
        tasks.spawn(async move {
            let id = tokio::time::timeout_at(deadline, net.node(REGION).submit(sub))
                .await
                .map_err(|_| anyhow!("submit timed out"))?
                .context("submit")?;
            anyhow::Ok((id, begun))
        });
    }
    let offered_for = (last_start - start) + period;
    let mut starts: HashMap<MessageId, Instant> = HashMap::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        let (id, begun) = r.map_err(|e| anyhow!("submitter failed: {e}"))??;
        starts.insert(id, begun);
    }
    let delivered = join(delivered).await?;
    // Wait for the receipts too, so nothing of this run is still moving afterwards.
    join(receipts).await?;
    let mut lat = Vec::with_capacity(total);
    let mut last_delivery = start;
    for (id, begun) in &starts {
        let t = delivered
            .get(id)
            .ok_or_else(|| anyhow!("no Delivered event for {id:?}"))?;
        lat.push(t.saturating_duration_since(*begun));
        last_delivery = last_delivery.max(*t);
    }
    ensure!(!lat.is_empty(), "no reports were sent");
    lat.sort_unstable();
    let pct = |p: f64| {
        // Nearest rank.
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1]
    };
    Ok(Latency {
        n: lat.len(),
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        max: pct(1.0),
        achieved: lat.len() as f64 / offered_for.as_secs_f64(),
        delivered_per_s: lat.len() as f64 / (last_delivery - start).as_secs_f64(),
        schedule_lag_max: lag,
    })
}

struct Bound {
    sign_report: Duration,
    hpke_seal: Duration,
    verify_report: Duration,
    hpke_open: Duration,
    sign_receipt: Duration,
    verify_receipt: Duration,
    /// Per report over the whole path, bare primitives.
    sum: Duration,
    /// Verification per signature in batches of [`BOUND_BATCH`].
    verify_report_batched: Duration,
    verify_receipt_batched: Duration,
    /// `sum` with the four verifications batched.
    sum_batched: Duration,
    /// Sizes of the sealed report and of its receipt.
    report_bytes: usize,
    receipt_bytes: usize,
    /// Per report over the whole path, whole envelope operations.
    envelope_sum: Duration,
}

/// Time per call of `f`: the best of three rounds of `budget / 3` each after
/// a short warm-up, so a moment of interference does not inflate it.
fn per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    for _ in 0..20 {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let mut calls = 0u32;
        while t.elapsed() < budget / 3 {
            for _ in 0..10 {
                f();
            }
            calls += 10;
        }
        best = best.min(t.elapsed() / calls);
    }
    best
}

/// DESIGN §10's bound: the CPU each report costs in signatures and HPKE
/// along the path, on messages of the sizes the path really signs.
fn bound(budget: Duration) -> anyhow::Result<Bound> {
    let now = sitrep_node::clock::now_ms();
    let f = Fixture::new(
        &[
            (REGION, Class::Secret),
            ("nspl-hub", Class::Secret),
            (AUTHORITY, Class::Secret),
        ],
        now,
    );
    let region = f.node(REGION);
    let authority = f.node(AUTHORITY);
    let payload = reports::report_template(REPORT_BYTES)?.encode_to_vec();
    let draft = Draft {
        origin: region.id.clone(),
        author: "TiB Region Uppsala".into(),
        label: Label::new(Class::Sensitive),
        precedence: Precedence::Routine,
        mode: Mode::Exercise,
        content_type: ContentType::SituationReport,
        recipients: vec![authority.id.clone()],
        in_reply_to: None,
        expires_ms: now + DAY_MS,
        payload: &payload,
    };
    let report = envelope::seal(&draft, &region.signing, &f.roster, now).context("seal report")?;
    let receipt_body = pb::Receipt {
        message_id: report.header.id.as_bytes().to_vec(),
        recipient: AUTHORITY.into(),
        delivered_unix_ms: now,
    }
    .encode_to_vec();
    let receipt_draft = Draft {
        origin: authority.id.clone(),
        author: String::new(),
        content_type: ContentType::Receipt,
        recipients: vec![region.id.clone()],
        in_reply_to: Some(report.header.id),
        payload: &receipt_body,
        ..draft.clone()
    };
    let receipt =
        envelope::seal(&receipt_draft, &authority.signing, &f.roster, now).context("seal receipt")?;

    // Bare primitives on messages of the envelopes' sizes.
    let sk = SigningKey::generate().context("rng")?;
    let pk = sk.verifying_key();
    let report_msg = vec![0x5a_u8; report.bytes.len()];
    let receipt_msg = vec![0x5a_u8; receipt.bytes.len()];
    let report_sig = sk.sign(b"bench\0", &report_msg);
    let receipt_sig = sk.sign(b"bench\0", &receipt_msg);
    let hk = HpkeSecretKey::generate().context("rng")?;
    let hpk = hk.public_key();
    let aad = vec![0x11_u8; 200];
    let wrapped = hpk.seal(b"info", &aad, &[7u8; 32]).context("hpke seal")?;

    let sign_report = per_call(budget, || {
        black_box(sk.sign(b"bench\0", black_box(&report_msg)));
    });
    let verify_report = per_call(budget, || {
        black_box(pk.verify(b"bench\0", black_box(&report_msg), &report_sig).is_ok());
    });
    let hpke_seal = per_call(budget, || {
        black_box(hpk.seal(b"info", &aad, black_box(&[7u8; 32])).is_ok());
    });
    let hpke_open = per_call(budget, || {
        black_box(hk.open(b"info", &aad, black_box(&wrapped)).is_ok());
    });
    let sign_receipt = per_call(budget, || {
        black_box(sk.sign(b"bench\0", black_box(&receipt_msg)));
    });
    let verify_receipt = per_call(budget, || {
        black_box(
            pk.verify(b"bench\0", black_box(&receipt_msg), &receipt_sig)
                .is_ok(),
        );
    });
    let sum = sign_report
        + hpke_seal
        + verify_report
        + (verify_report + hpke_open)
        + sign_receipt
        + verify_receipt * 2;
    // Verification as the nodes do it under load: in batches (ingress's
    // verifier), here of 16, per signature.
    let batch = |msg: &[u8], sig: &[u8; 64]| {
        let items: Vec<Signed> = (0..BOUND_BATCH)
            .map(|_| Signed::new(&pk, b"bench\0", msg, sig))
            .collect();
        per_call(budget, || {
            black_box(verify_batch(black_box(&items)));
        }) / BOUND_BATCH as u32
    };
    let verify_report_batched = batch(&report_msg, &report_sig);
    let verify_receipt_batched = batch(&receipt_msg, &receipt_sig);
    let sum_batched = sum - (verify_report * 2 + verify_receipt * 2)
        + (verify_report_batched * 2 + verify_receipt_batched * 2);

    // The same path with whole envelope calls (protobuf, AES-GCM, header checks included).
    let seal_env = per_call(budget, || {
        black_box(envelope::seal(black_box(&draft), &region.signing, &f.roster, now).is_ok());
    });
    let verify_env = per_call(budget, || {
        black_box(envelope::verify(black_box(&report.bytes), &f.roster, now).is_ok());
    });
    let open_env = per_call(budget, || {
        black_box(
            envelope::verify_and_open(
                black_box(&report.bytes),
                &f.roster,
                &authority.id,
                &authority.hpke,
                now,
            )
            .is_ok(),
        );
    });
    let seal_receipt_env = per_call(budget, || {
        black_box(envelope::seal(black_box(&receipt_draft), &authority.signing, &f.roster, now).is_ok());
    });
    let verify_receipt_env = per_call(budget, || {
        black_box(envelope::verify(black_box(&receipt.bytes), &f.roster, now).is_ok());
    });
    // Check once that the envelope calls succeed (the loops only black-box the result).
    envelope::verify_and_open(&report.bytes, &f.roster, &authority.id, &authority.hpke, now)
        .context("open")?;
    envelope::verify(&receipt.bytes, &f.roster, now).context("verify receipt")?;
    let envelope_sum = seal_env + verify_env + open_env + seal_receipt_env + verify_receipt_env * 2;

    Ok(Bound {
        sign_report,
        hpke_seal,
        verify_report,
        hpke_open,
        sign_receipt,
        verify_receipt,
        sum,
        verify_report_batched,
        verify_receipt_batched,
        sum_batched,
        envelope_sum,
        report_bytes: report.bytes.len(),
        receipt_bytes: receipt.bytes.len(),
    })
}
