//! The store alone (criterion): the real job mix per report at an origin —
//! ingest (custody copy for the next hop, delivery tracked), forwarded (the
//! next hop took custody), delivered (the receipt came back) — with 64
//! reports in flight so group commits form, on a real store in a temp dir.
//!
//! Besides criterion's time per 1,000 reports, it prints jobs/s and the
//! bytes the process caused to be written to the device per report
//! (`/proc/self/io` `write_bytes`, which counts page-cache writeback charged
//! to this process) beside the envelope's size: the write amplification.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sitrep_core::{MessageId, NodeId, Precedence};
use sitrep_store::{ChannelStore, Copy, Ingest, Op, Storage};
use tokio::task::JoinSet;

/// A sealed 4 KiB report's envelope (what the path bench measures: 4,386 bytes).
const ENVELOPE_BYTES: usize = 4_386;
/// Reports in flight, as a link's window.
const IN_FLIGHT: usize = 64;

fn n(s: &str) -> NodeId {
    NodeId::new(s).expect("valid node id")
}

/// One report's three jobs, in order, as concurrent callers would send them.
async fn report(store: Arc<ChannelStore>, seq: u64) {
    let now = 1_790_000_000_000_i64;
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&seq.to_be_bytes());
    let id = MessageId::new_v7(now, random);
    let (hub, authority) = (n("nspl-hub"), n("socialstyrelsen"));
    let ingest = Op::Ingest(Ingest {
        id,
        envelope: vec![0x5a; ENVELOPE_BYTES],
        precedence: Precedence::Routine,
        expires_ms: now + 86_400_000,
        now_ms: now,
        hop_count: 0,
        copies: vec![Copy {
            next_hop: hub.clone(),
            serves: vec![authority.clone()],
        }],
        inbox: false,
        track: vec![authority.clone()],
        submission: None,
    });
    store.apply(vec![ingest]).await.expect("ingest");
    let forwarded = Op::Forwarded {
        id,
        next_hop: hub,
        now_ms: now + 1,
    };
    store.apply(vec![forwarded]).await.expect("forwarded");
    let delivered = Op::Delivered {
        id,
        recipient: authority,
        delivered_ms: now + 2,
    };
    store.apply(vec![delivered]).await.expect("delivered");
}

/// Runs `count` reports from `start`, `IN_FLIGHT` at a time.
async fn run(store: &Arc<ChannelStore>, start: u64, count: u64) {
    let mut tasks = JoinSet::new();
    for seq in start..start + count {
        if tasks.len() >= IN_FLIGHT {
            tasks.join_next().await.expect("a task").expect("no panic");
        }
        tasks.spawn(report(Arc::clone(store), seq));
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("no panic");
    }
}

/// Bytes this process caused to be written to storage so far.
fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// Sectors written to the block device holding `path` (`/sys/block/*/stat`,
/// field 7): what the disk was asked to write, file-system metadata included.
fn device_sectors(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    stat.split_whitespace().nth(6)?.parse().ok()
}

fn store_alone(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    restart(&rt);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChannelStore::open(dir.path()).expect("store opens"));

    // A fixed run first, for the rate and the device bytes per report.
    const REPORTS: u64 = 5_000;
    let before = write_bytes();
    let device_before = device_sectors(dir.path());
    let (log_bytes0, syncs0) = store.log_io();
    let t0 = Instant::now();
    rt.block_on(run(&store, 0, REPORTS));
    let elapsed = t0.elapsed();
    let (log_bytes1, syncs1) = store.log_io();
    // Let the index's background flush land, so its bytes are counted too.
    std::thread::sleep(Duration::from_millis(1_500));
    let after = write_bytes();
    let device_after = device_sectors(dir.path());
    println!(
        "store.log bytes_per_report={:.0} syncs={} reports_per_sync={:.1}",
        (log_bytes1 - log_bytes0) as f64 / REPORTS as f64,
        syncs1 - syncs0,
        REPORTS as f64 / (syncs1 - syncs0).max(1) as f64
    );
    if let (Some(b), Some(a)) = (device_before, device_after) {
        println!(
            "store.block_device bytes_per_report={:.0} (sectors written on the whole device, file-system metadata and \
             other processes included)",
            (a - b) as f64 * 512.0 / REPORTS as f64
        );
    }
    let jobs = REPORTS * 3;
    println!(
        "store.mix reports={REPORTS} jobs={jobs} jobs_per_s={:.0} reports_per_s={:.0} in_flight={IN_FLIGHT}",
        jobs as f64 / elapsed.as_secs_f64(),
        REPORTS as f64 / elapsed.as_secs_f64()
    );
    match (before, after) {
        (Some(b), Some(a)) => {
            let per_report = (a - b) as f64 / REPORTS as f64;
            println!(
                "store.device_bytes per_report={per_report:.0} envelope={ENVELOPE_BYTES} amplification={:.2}x",
                per_report / ENVELOPE_BYTES as f64
            );
        }
        _ => println!("store.device_bytes unavailable (no /proc/self/io)"),
    }

    let mut next = REPORTS;
    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(
        "1000 reports: ingest + forwarded + delivered, 64 in flight",
        |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    rt.block_on(run(&store, next, 1_000));
                    next += 1_000;
                }
                t.elapsed()
            });
        },
    );
    group.finish();
    store.close();
}

/// Ingest only: a report taken into custody and queued for a hop that is down.
async fn backlog(store: Arc<ChannelStore>, seq: u64) {
    let now = 1_790_000_000_000_i64;
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&seq.to_be_bytes());
    let (hub, authority) = (n("nspl-hub"), n("socialstyrelsen"));
    let ingest = Op::Ingest(Ingest {
        id: MessageId::new_v7(now, random),
        envelope: vec![0x5a; ENVELOPE_BYTES],
        precedence: Precedence::Routine,
        expires_ms: now + 86_400_000,
        now_ms: now,
        hop_count: 1,
        copies: vec![Copy {
            next_hop: hub,
            serves: vec![authority],
        }],
        inbox: false,
        track: Vec::new(),
        submission: None,
    });
    store.apply(vec![ingest]).await.expect("ingest");
}

/// `SITREP_BENCH_RESTART=N`: a store holding N queued reports, closed and
/// opened again; prints how long the open took (until it takes writes).
fn restart(rt: &tokio::runtime::Runtime) {
    let Some(count) = std::env::var("SITREP_BENCH_RESTART")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChannelStore::open(dir.path()).expect("store opens"));
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = JoinSet::new();
        for seq in 0..count {
            if tasks.len() >= IN_FLIGHT {
                tasks.join_next().await.expect("a task").expect("no panic");
            }
            tasks.spawn(backlog(Arc::clone(&store), seq));
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("no panic");
        }
    });
    let filled = t0.elapsed();
    store.close();
    drop(store);
    let t1 = Instant::now();
    let store = ChannelStore::open(dir.path()).expect("store reopens");
    let opened = t1.elapsed();
    let depth: u64 = store.outbox_stats().iter().map(|s| s.depth).sum();
    assert_eq!(depth, count, "every queued report is still queued");
    println!(
        "store.restart reports={count} open_s={:.2} fill_s={:.1} segments={} disk_bytes={}",
        opened.as_secs_f64(),
        filled.as_secs_f64(),
        store.log_segments(),
        store.disk_bytes()
    );
    store.close();
}

criterion_group!(benches, store_alone);
criterion_main!(benches);
