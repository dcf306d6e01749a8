//! Fault suite: region → hub → authority as real `sitrep node` processes,
//! each in its own Linux network namespace, with the network between them
//! broken in the ways a national WAN breaks (issue 12, point 4; DESIGN §11).
//!
//! | test | fault |
//! |---|---|
//! | `a_partition_under_load_then_the_backlog_is_delivered` | region ↔ hub cut both ways while the region keeps accepting; healed; the backlog arrives within 60 s |
//! | `b_lossy_slow_link_delivers_everything_in_precedence_order` | 30 % loss and 200 ms ± 50 ms each way on region ↔ hub |
//! | `c_the_hub_moves_to_a_new_address_and_traffic_follows` | the hub restarts on a new address; its peers' configs follow, on SIGHUP |
//! | `d1_one_way_partition_region_to_hub` | region → hub dropped, hub → region passes |
//! | `d2_one_way_partition_hub_to_region` | hub → region dropped, region → hub passes |
//!
//! Every test asserts that each submitted report is in the authority's
//! inbox exactly once (ids compared, the inbox read by cursor), with the
//! class and precedence it was sent with, and that every receipt came back
//! to the region (its outbox empty and its `receipts` count, or, after a
//! restart of the region, each report's delivery state `DELIVERED`).
//!
//! How it is built (module `netns`): three namespaces joined by veth pairs;
//! nodes listen for QUIC on their namespace's addresses and serve their API
//! on `127.0.0.1:7400` inside their own namespace. The test reaches an API
//! from a thread it moves into that namespace with `setns(2)` (module
//! `node`), which needs no addresses in the root namespace: runs cannot
//! collide and nothing outside the lab can reach the nodes. Partitions are
//! the kernel's: every IP packet arriving at a veth end is redirected to a
//! down `ifb` device, which drops it. Loss and delay would be `tc netem`, but
//! the kernel here lacks netem, so (b) runs its link through a user-space
//! delay line (module `wire`, which says why and what it does).
//!
//! Root is needed. Without it (or without `ip`, veth, ifb or the tc parts)
//! each test prints `SKIPPED: …` and passes, unless
//! `SITREP_FAULT_TESTS=required` (as `.ci/run` sets), which makes it fail.
//! `SITREP_FAULT_SCALE=ci` (default) runs small, with short QUIC timeouts
//! (`idle_timeout` 5 s, `keep_alive` 1 s, `retry_max` 2 s) so that short
//! partitions still outlive connections; `SITREP_FAULT_SCALE=full` runs the
//! issue's sizes with the default limits. docs/operations.md has the
//! commands and the figures. The tests run one at a time (they share two
//! cores and would distort each other's timings).

mod netns;
mod node;
mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns::{HUB_ADDR, HUB_ADDR_MOVED, HUB_REGION_SIDE, Lab, REGION_ADDR, REGION_HUB, Site};
use node::{Cluster, Got, Inbox, Limits, OPEN_PORT, SECURE_PORT, Sent, Spec, wait_for};
use wire::{DelayLine, Impairment};

/// One scenario at a time.
static SUITE: Mutex<()> = Mutex::new(());

/// The bound for delivering the backlog after the partition heals.
const BACKLOG_DEADLINE: Duration = Duration::from_secs(60);

/// Sizes of one run.
#[derive(Debug)]
struct Scale {
    name: &'static str,
    /// (a): how long region ↔ hub is cut, and the reports submitted meanwhile.
    partition: Duration,
    backlog: usize,
    /// (b): reports sent over the lossy link.
    lossy: usize,
    /// (c): reports in each of the three batches.
    moved: usize,
    /// (d): how long one direction is cut, and the reports submitted meanwhile.
    one_way: Duration,
    one_way_reports: usize,
    /// `[limits]` for every node.
    limits: Limits,
    /// How long any one delivery wait may take before the test fails.
    patience: Duration,
}

fn scale() -> Scale {
    match std::env::var("SITREP_FAULT_SCALE").as_deref() {
        Ok("full") => Scale {
            name: "full",
            partition: Duration::from_secs(180),
            backlog: 10_000,
            lossy: 1_000,
            moved: 1_000,
            one_way: Duration::from_secs(120),
            one_way_reports: 3_000,
            limits: Vec::new(),
            patience: Duration::from_secs(900),
        },
        Ok("ci") | Err(_) => Scale {
            name: "ci",
            partition: Duration::from_secs(20),
            backlog: 1_000,
            lossy: 300,
            moved: 100,
            one_way: Duration::from_secs(15),
            one_way_reports: 300,
            limits: vec![("idle_timeout", "5s"), ("keep_alive", "1s"), ("retry_max", "2s")],
            patience: Duration::from_secs(240),
        },
        Ok(other) => panic!("SITREP_FAULT_SCALE={other}: expected `ci` or `full`"),
    }
}

/// The lab for scenario `tag`, or `None` (after a `SKIPPED:` line) where
/// namespaces cannot be made and the suite is not required.
fn lab(tag: &str) -> Option<Lab> {
    match Lab::build(tag) {
        Ok(lab) => Some(lab),
        Err(e) => {
            let required = std::env::var("SITREP_FAULT_TESTS").as_deref() == Ok("required");
            assert!(
                !required,
                "SITREP_FAULT_TESTS=required, but the lab cannot be built (root, iproute2, veth, ifb, tc ingress/u32/mirred are needed): {e}"
            );
            println!("SKIPPED: fault suite needs root and Linux network namespaces: {e}");
            None
        }
    }
}

const PRECEDENCES: [&str; 4] = ["ROUTINE", "FLASH", "PRIORITY", "IMMEDIATE"];
const CLASSES: [&str; 3] = ["SENSITIVE", "RESTRICTED", "OPEN"];

/// `n` reports: precedences interleaved (so submission order is not
/// precedence order), each class with all four.
fn mix(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| (CLASSES[(i / 4) % CLASSES.len()], PRECEDENCES[i % 4]))
        .collect()
}

fn rank(precedence: &str) -> usize {
    match precedence {
        "FLASH" => 3,
        "IMMEDIATE" => 2,
        "PRIORITY" => 1,
        _ => 0,
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Starts the three nodes and sends two reports end to end (one per
/// channel) and their receipts back, so that every link is up, and nothing
/// is on its way, before a fault.
fn start_all(c: &mut Cluster, inbox: &mut Inbox) -> Vec<Sent> {
    c.start(Site::Authority);
    c.start(Site::Hub);
    c.start(Site::Region);
    let warm = c.submit(
        0,
        &[("SENSITIVE", "ROUTINE"), ("RESTRICTED", "ROUTINE")],
        Duration::ZERO,
        1,
    );
    wait_for(
        "the first two reports end to end",
        Duration::from_secs(120),
        || {
            inbox.poll(c);
            inbox.items.len() >= warm.len()
        },
    );
    wait_receipts(c, warm.len(), Duration::from_secs(120));
    warm
}

/// Each sent report in the inbox, once; nothing else there.
fn assert_exactly_once(sent: &[Sent], inbox: &Inbox) {
    let mut seen = HashSet::new();
    let dups: Vec<&str> = inbox
        .items
        .iter()
        .filter(|g| !seen.insert(g.id.as_str()))
        .map(|g| g.id.as_str())
        .collect();
    assert!(dups.is_empty(), "delivered twice: {dups:?}");
    let want: HashSet<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    let lost: Vec<&&str> = want.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    let extra: Vec<&&str> = seen.difference(&want).collect();
    assert!(extra.is_empty(), "not submitted: {extra:?}");
    assert_eq!(inbox.items.len(), sent.len());
    let got: HashMap<&str, &Got> = inbox.items.iter().map(|g| (g.id.as_str(), g)).collect();
    for s in sent {
        let g = got[s.id.as_str()];
        assert_eq!(
            (g.class.as_str(), g.precedence.as_str()),
            (s.class, s.precedence),
            "label and precedence of {} as sent",
            s.id
        );
    }
}

/// Waits until every sent report is in the inbox; the time it took.
fn wait_delivered(c: &Cluster, inbox: &mut Inbox, sent: &[Sent], patience: Duration) -> Duration {
    wait_for(
        &format!("{} reports in the authority's inbox", sent.len()),
        patience,
        || {
            inbox.poll(c);
            inbox.items.len() >= sent.len()
        },
    )
}

/// Waits until the region holds nothing and has a receipt for each report.
fn wait_receipts(c: &Cluster, reports: usize, patience: Duration) {
    let want = u64::try_from(reports).unwrap_or(u64::MAX);
    wait_for("every receipt back at the region", patience, || {
        c.queued(Site::Region) == 0 && c.counter(Site::Region, "receipts") >= want
    });
    assert_eq!(
        c.counter(Site::Region, "receipts"),
        want,
        "one receipt per report"
    );
}

/// How far arrival order strays from precedence order, within one class.
#[derive(Debug, Default)]
struct Order {
    reports: usize,
    /// Pairs that arrived lower precedence first, of the pairs whose precedences differ.
    inverted: u64,
    pairs: u64,
    /// The most lower-precedence reports that arrived before any one report.
    max_overtaken: u64,
    /// Mean inbox position per precedence (0 = first), by rank.
    mean_position: [f64; 4],
}

impl Order {
    fn inverted_share(&self) -> f64 {
        if self.pairs == 0 {
            0.0
        } else {
            self.inverted as f64 / self.pairs as f64
        }
    }
}

/// Arrival order per class, for the reports in `of`.
fn order_by_class(items: &[Got], of: &HashSet<&str>) -> BTreeMap<String, Order> {
    let mut by_class: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for g in items.iter().filter(|g| of.contains(g.id.as_str())) {
        by_class
            .entry(g.class.clone())
            .or_default()
            .push(rank(&g.precedence));
    }
    by_class
        .into_iter()
        .map(|(class, ranks)| {
            let mut o = Order {
                reports: ranks.len(),
                ..Order::default()
            };
            let mut seen = [0u64; 4];
            let mut sums = [0f64; 4];
            for (pos, r) in ranks.iter().enumerate() {
                let lower: u64 = seen[..*r].iter().sum();
                let higher: u64 = seen[*r + 1..].iter().sum();
                o.inverted += lower;
                o.pairs += lower + higher;
                o.max_overtaken = o.max_overtaken.max(lower);
                seen[*r] += 1;
                sums[*r] += pos as f64;
            }
            for r in 0..4 {
                o.mean_position[r] = if seen[r] == 0 {
                    0.0
                } else {
                    sums[r] / seen[r] as f64
                };
            }
            (class, o)
        })
        .collect()
}

/// Precedence order within each class: FLASH's mean position before
/// IMMEDIATE's before PRIORITY's before ROUTINE's, and at most `max_inverted`
/// of the pairs of different precedence inverted (arrival in submission
/// order, ignoring precedence, would invert half of them here).
fn assert_precedence_order(label: &str, items: &[Got], of: &HashSet<&str>, max_inverted: f64) {
    for (class, o) in order_by_class(items, of) {
        println!(
            "{label}: {class}: {} reports, {:.2} % of pairs inverted, a report overtaken by at most {} lower ones, mean position FLASH {:.0} IMMEDIATE {:.0} PRIORITY {:.0} ROUTINE {:.0}",
            o.reports,
            100.0 * o.inverted_share(),
            o.max_overtaken,
            o.mean_position[3],
            o.mean_position[2],
            o.mean_position[1],
            o.mean_position[0]
        );
        let m = o.mean_position;
        assert!(
            m[3] < m[2] && m[2] < m[1] && m[1] < m[0],
            "{label}: {class}: mean positions not in precedence order: {o:?}"
        );
        assert!(
            o.inverted_share() <= max_inverted,
            "{label}: {class}: {:.2} % of pairs out of precedence order (at most {:.2} %): {o:?}",
            100.0 * o.inverted_share(),
            100.0 * max_inverted
        );
    }
}

/// (a) Region ↔ hub cut both ways for `partition` while the region keeps
/// accepting `backlog` reports; healed; the whole backlog reaches the
/// authority within 60 s, once each, in precedence order, receipts back.
#[test]
fn a_partition_under_load_then_the_backlog_is_delivered() {
    let _one = SUITE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab("a") else { return };
    let s = scale();
    let mut c = Cluster::new(lab, s.limits.clone());
    let mut inbox = Inbox::default();
    let mut sent = start_all(&mut c, &mut inbox);

    c.lab
        .drop_arriving(REGION_HUB.0)
        .unwrap_or_else(|e| panic!("{e}"));
    c.lab
        .drop_arriving(REGION_HUB.1)
        .unwrap_or_else(|e| panic!("{e}"));
    let cut = Instant::now();
    // The load: the backlog spread over the first 90 % of the partition.
    let backlog = c.submit(sent.len(), &mix(s.backlog), s.partition.mul_f64(0.9), 2);
    let accepted_in = cut.elapsed();
    // The rest of the partition: this sleep is the fault's duration.
    if let Some(rest) = s.partition.checked_sub(cut.elapsed()) {
        std::thread::sleep(rest);
    }
    inbox.poll(&c);
    assert_eq!(inbox.items.len(), sent.len(), "nothing crosses the partition");
    assert_eq!(
        c.queued(Site::Region),
        s.backlog as u64,
        "the region holds the backlog"
    );
    assert!(
        c.lab.dropped_at(REGION_HUB.1) > 0,
        "the cut dropped the region's packets"
    );
    let (linked, _) = c.link(Site::Region, Site::Hub);
    let partitioned_for = cut.elapsed();

    c.lab
        .restore_arriving(REGION_HUB.0)
        .unwrap_or_else(|e| panic!("{e}"));
    c.lab
        .restore_arriving(REGION_HUB.1)
        .unwrap_or_else(|e| panic!("{e}"));
    let healed_ms = now_ms();
    let healed = Instant::now();
    let relinked = wait_for("the region's link to the hub", BACKLOG_DEADLINE * 2, || {
        c.link(Site::Region, Site::Hub).0
    });
    wait_delivered(&c, &mut inbox, &[sent.as_slice(), &backlog].concat(), s.patience);
    let last_ms = inbox.items.iter().map(|g| g.received_ms).max().unwrap_or(0);
    let drain = Duration::from_millis(u64::try_from(last_ms.saturating_sub(healed_ms)).unwrap_or(u64::MAX));
    println!(
        "(a) scale {}: partition {:.0} s ({} reports accepted in {:.1} s, link still up at the end of it: {linked}); healed → link up {:.1} s, → all {} delivered {:.1} s (seen {:.1} s)",
        s.name,
        partitioned_for.as_secs_f64(),
        s.backlog,
        accepted_in.as_secs_f64(),
        relinked.as_secs_f64(),
        s.backlog,
        drain.as_secs_f64(),
        healed.elapsed().as_secs_f64()
    );
    sent.extend(backlog.iter().cloned());
    assert_exactly_once(&sent, &inbox);
    assert!(
        drain <= BACKLOG_DEADLINE,
        "the backlog took {drain:?} after the heal, more than {BACKLOG_DEADLINE:?}"
    );
    let of: HashSet<&str> = backlog.iter().map(|s| s.id.as_str()).collect();
    assert_precedence_order("(a)", &inbox.items, &of, 0.05);
    wait_receipts(&c, sent.len(), s.patience);
}

/// (b) 30 % loss and 200 ms ± 50 ms delay on region ↔ hub, in each
/// direction: a backlog queued at the region while the link was down drains
/// over the bad link; everything arrives once, in precedence order within
/// each class, and every receipt comes back over it.
#[test]
fn b_lossy_slow_link_delivers_everything_in_precedence_order() {
    let _one = SUITE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab("b") else { return };
    let s = scale();
    let mut c = Cluster::new(lab, s.limits.clone());
    // The region and the hub reach each other only through the delay line,
    // which runs in the hub's namespace: region → 10.77.1.1:800x → hub, and
    // hub → 10.77.0.1:810x → region.
    let sock = |ip: &str, port: u16| -> SocketAddr {
        format!("{ip}:{port}").parse().unwrap_or_else(|e| panic!("{e}"))
    };
    let mut routes = Vec::new();
    for port in [OPEN_PORT, SECURE_PORT] {
        let towards_hub = sock(HUB_REGION_SIDE, port + 1000);
        let towards_region = sock(HUB_ADDR, port + 1100);
        routes.push((towards_hub, sock(HUB_ADDR, port)));
        routes.push((towards_region, sock(REGION_ADDR, port)));
        c.peer_override
            .insert((Site::Region, Site::Hub, port), towards_hub);
        c.peer_override
            .insert((Site::Hub, Site::Region, port), towards_region);
    }
    let seed = u64::try_from(now_ms() % u128::from(u64::MAX)).unwrap_or(1);
    println!("(b) delay line seed {seed}");
    let bad = Impairment {
        loss: 0.30,
        delay: Duration::from_millis(200),
        jitter: Duration::from_millis(50),
    };
    let line = DelayLine::start(&c.lab.ns(Site::Hub), routes, bad, seed);
    let mut inbox = Inbox::default();
    let mut sent = start_all(&mut c, &mut inbox);

    // Queue the whole mix while the link is down, so the order it leaves
    // in is the node's choice, not the order it was written in.
    line.set(Impairment::CUT);
    let backlog = c.submit(sent.len(), &mix(s.lossy), Duration::ZERO, 2);
    wait_for("the backlog queued at the region", s.patience, || {
        c.queued(Site::Region) == s.lossy as u64
    });
    inbox.poll(&c);
    assert_eq!(inbox.items.len(), sent.len(), "nothing crossed the cut link");
    line.set(bad);
    let opened = Instant::now();
    sent.extend(backlog.iter().cloned());
    let took = wait_delivered(&c, &mut inbox, &sent, s.patience);
    let (passed, dropped) = line.counts();
    println!(
        "(b) scale {}: {} reports over 30 % loss, 200 ± 50 ms each way: all delivered {:.1} s after the link came back ({} datagrams passed, {} dropped)",
        s.name,
        s.lossy,
        took.as_secs_f64(),
        passed,
        dropped
    );
    assert_exactly_once(&sent, &inbox);
    let of: HashSet<&str> = backlog.iter().map(|s| s.id.as_str()).collect();
    assert_precedence_order("(b)", &inbox.items, &of, 0.10);
    wait_receipts(&c, sent.len(), s.patience);
    println!(
        "(b) receipts back {:.1} s after the link came back",
        opened.elapsed().as_secs_f64()
    );
    assert!(dropped > 0, "the line dropped datagrams");
}

/// (c) The hub moves to a new address: stopped, re-addressed, started on
/// it. The region keeps accepting; nothing reaches the old address; once
/// the region's and the authority's configs name the new address and they
/// get SIGHUP (no restart, see docs/operations.md) the held reports and new
/// ones arrive, once each.
#[test]
fn c_the_hub_moves_to_a_new_address_and_traffic_follows() {
    let _one = SUITE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab("c") else { return };
    let s = scale();
    let mut c = Cluster::new(lab, s.limits.clone());
    let mut inbox = Inbox::default();
    let mut sent = start_all(&mut c, &mut inbox);
    let before = c.submit(sent.len(), &mix(s.moved), Duration::ZERO, 2);
    sent.extend(before);
    wait_delivered(&c, &mut inbox, &sent, s.patience);

    // The hub's operator moves it.
    c.stop(Site::Hub);
    c.lab
        .sh(Site::Hub, &format!("ip addr add {HUB_ADDR_MOVED}/32 dev lo"))
        .unwrap_or_else(|e| panic!("{e}"));
    c.lab
        .sh(Site::Hub, &format!("ip addr del {HUB_ADDR}/32 dev lo"))
        .unwrap_or_else(|e| panic!("{e}"));
    c.hub_addr = HUB_ADDR_MOVED.to_owned();
    c.start(Site::Hub);
    let moved = Instant::now();
    // Meanwhile the region accepts reports and holds them: the old address leads nowhere.
    let during = c.submit(sent.len(), &mix(s.moved), Duration::ZERO, 2);
    sent.extend(during);
    wait_for(
        "the region's attempts at the old address failing",
        s.patience,
        || {
            let status = c.status(Site::Region);
            status["peers"].as_array().is_some_and(|p| {
                p.iter().any(|l| {
                    l["peer"] == "nspl-hub"
                        && l["connected"] == false
                        && l["last_error"].as_str().is_some_and(|e| e.contains("timed out"))
                })
            })
        },
    );
    let (_, addresses) = c.link(Site::Region, Site::Hub);
    assert!(
        addresses.iter().all(|a| a.starts_with(HUB_ADDR)),
        "still the old address: {addresses:?}"
    );
    assert_eq!(
        c.queued(Site::Region),
        s.moved as u64,
        "the region holds what it accepted"
    );

    // The peers' operators change `[[peers]] address` and send SIGHUP.
    let reconfigured = Instant::now();
    for site in [Site::Region, Site::Authority] {
        c.reload(site);
    }
    let after = c.submit(sent.len(), &mix(s.moved), Duration::ZERO, 2);
    sent.extend(after);
    wait_delivered(&c, &mut inbox, &sent, s.patience);
    let (took, since_restart) = (moved.elapsed(), reconfigured.elapsed());
    let (linked, addresses) = c.link(Site::Region, Site::Hub);
    assert!(linked, "the region's link to the hub is up");
    assert!(
        addresses.iter().all(|a| a.starts_with(HUB_ADDR_MOVED)),
        "the region uses the new address: {addresses:?}"
    );
    println!(
        "(c) scale {}: hub moved {HUB_ADDR} → {HUB_ADDR_MOVED}; {} reports held across the move; all {} delivered {:.1} s after the hub came up on the new address, {:.1} s after its peers were told the new address (SIGHUP)",
        s.name,
        s.moved,
        sent.len(),
        took.as_secs_f64(),
        since_restart.as_secs_f64()
    );
    assert_exactly_once(&sent, &inbox);
    // Every report's own state at the region, not only a counter.
    wait_for("the region's outbox empty", s.patience, || {
        c.queued(Site::Region) == 0
    });
    let token = c.token(Site::Region, "reporter");
    wait_for("every report DELIVERED at the region", s.patience, || {
        sent.iter().all(|r| {
            let (code, v) = c.api(Site::Region).get(&format!("/v1/reports/{}", r.id), &token);
            code == 200
                && v["recipients"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().all(|r| r["state"] == "DELIVERED"))
        })
    });
}

/// One direction of region ↔ hub cut for `one_way` while the region keeps
/// accepting; healed; everything once, receipts back.
///
/// With `answers_lost` (hub → region cut), transfers still reach the hub
/// and go on to the authority, but the region never hears `Accepted`: it
/// sends them again after the heal and the hub must answer `DUPLICATE`.
fn one_way(tag: &str, cut: netns::End, answers_lost: bool) {
    let _one = SUITE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab(tag) else { return };
    let s = scale();
    let mut c = Cluster::new(lab, s.limits.clone());
    let mut inbox = Inbox::default();
    let mut sent = start_all(&mut c, &mut inbox);
    let hub_duplicates = |c: &Cluster| c.status(Site::Hub)["refusals"]["duplicate"].as_u64().unwrap_or(0);
    let dups_before = hub_duplicates(&c);

    c.lab.drop_arriving(cut).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let during = c.submit(sent.len(), &mix(s.one_way_reports), s.one_way.mul_f64(0.9), 2);
    // The rest of the fault: this sleep is its duration.
    if let Some(rest) = s.one_way.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    inbox.poll(&c);
    let crossed = inbox.items.len() - sent.len();
    let held = c.queued(Site::Region);
    let dropped = c.lab.dropped_at(cut);
    c.lab.restore_arriving(cut).unwrap_or_else(|e| panic!("{e}"));
    sent.extend(during);
    let took = wait_delivered(&c, &mut inbox, &sent, s.patience);
    let dups = hub_duplicates(&c) - dups_before;
    println!(
        "({tag}) scale {}: {} reports during a {:.0} s one-way cut (packets dropped arriving at {:?}: {dropped}); delivered during it {crossed}, held at the region at its end {held}; after the heal all delivered in {:.1} s; the hub refused {dups} resends as duplicates",
        s.name,
        s.one_way_reports,
        s.one_way.as_secs_f64(),
        cut.site,
        took.as_secs_f64()
    );
    assert!(dropped > 0, "the cut dropped packets");
    assert!(held > 0, "the region held reports it could not hand over");
    if answers_lost {
        assert!(crossed > 0, "transfers went one way during the cut");
        assert!(
            dups >= crossed as u64,
            "each report that crossed unacknowledged is sent again and refused as a duplicate ({dups} < {crossed})"
        );
    } else {
        assert_eq!(crossed, 0, "nothing crosses while region → hub is cut");
    }
    assert_exactly_once(&sent, &inbox);
    wait_receipts(&c, sent.len(), s.patience);
}

/// (d) Asymmetric partition, region → hub lost: the hub hears nothing, the
/// region keeps accepting, nothing crosses until the heal.
#[test]
fn d1_one_way_partition_region_to_hub() {
    one_way("d1", REGION_HUB.1, false);
}

/// (d) Asymmetric partition, hub → region lost: the region's transfers
/// reach the hub but its answers do not come back, so the region sends
/// again after the heal and the hub refuses those as duplicates; the
/// authority still gets each report once.
#[test]
fn d2_one_way_partition_hub_to_region() {
    one_way("d2", REGION_HUB.0, true);
}

/// The order statistics, on a hand-made arrival order.
#[test]
fn order_statistics_count_inversions() {
    let got = |id: &str, p: &str| Got {
        id: id.to_owned(),
        class: "OPEN".to_owned(),
        precedence: p.to_owned(),
        received_ms: 0,
    };
    let items = vec![
        got("1", "FLASH"),
        got("2", "ROUTINE"),
        got("3", "FLASH"),
        got("4", "PRIORITY"),
    ];
    let of: HashSet<&str> = ["1", "2", "3", "4"].into();
    let o = &order_by_class(&items, &of)["OPEN"];
    // Differing pairs: (1,2) (1,4) (2,3) (2,4) (3,4); inverted: ROUTINE before FLASH, before PRIORITY.
    assert_eq!((o.pairs, o.inverted, o.max_overtaken), (5, 2, 1));
}
