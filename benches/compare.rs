//! Side by side, in one run: NATS JetStream (file storage, `sync_interval:
//! always`, mutual TLS, 4 KiB publishes each awaiting its PubAck, 64 in
//! flight) and sitrep's one hop (region-uppsala → nspl-hub custody, 4 KiB
//! SENSITIVE reports, 64 submissions in flight), and the ratio of the two.
//!
//! `benches/compare/run.sh` installs nats-server into a venv and runs
//! `SITREP_NATS_SERVER=<path> cargo bench --bench compare`. Without
//! `--bench` (as `cargo test --all-targets` runs it), or without
//! `SITREP_NATS_SERVER`, it prints why it skipped and exits 0: CI needs
//! neither network nor NATS.
//!
//! For each run it also prints how busy the machine's CPUs were (from
//! `/proc/stat`), how much of that was the bench itself, and how much the
//! hypervisor took (steal), so figures taken on a shared machine can be
//! judged (`support/load.rs`).

#[path = "support/load.rs"]
#[allow(dead_code, reason = "the CPU time in jiffies is for the path bench")]
mod load;
#[path = "support/perf.rs"]
mod perf;
#[path = "support/reports.rs"]
mod reports;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use async_nats::jetstream;
use load::{Load, LoadMeter};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use sitrep_proto::v1 as pb;
use sitrep_testkit::{TestNet, line};
use tokio::task::JoinSet;
use tokio::time::Instant;

const REGION: &str = "region-uppsala";
const HUB: &str = "nspl-hub";
/// Named as recipient but never started, so reports stop in the hub's custody.
const AUTHORITY: &str = "socialstyrelsen";
/// NATS payload and encoded sitrep report: the same 4 KiB.
const PAYLOAD_BYTES: usize = 4096;
/// Publishes awaiting their PubAck, and sitrep submissions, at once.
const IN_FLIGHT: usize = 64;
/// Sent and waited for before each measurement: connections, handshakes,
/// files created, caches warm. Not measured.
const WARMUP: usize = 500;
/// Messages per measured run unless `SITREP_BENCH_N` says otherwise.
const DEFAULT_N: usize = 20_000;
/// JetStream stream the publishes go to.
const STREAM: &str = "BENCH";

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "compare: skipped (not run with --bench; it needs a nats-server, see benches/compare/run.sh)"
        );
        return Ok(());
    }
    if std::env::var_os("SITREP_COMPARE_HOP_ONLY").is_some() {
        // sitrep's hop alone, for profiling it (no NATS, no ratio).
        let n = bench_n()?;
        let rt = runtime()?;
        let result = rt.block_on(async {
            let hop = hop_only(n).await?;
            println!(
                "compare.sitrep_hop reports_per_s={:.0} n={n} elapsed_s={:.3} cpu_us_per_msg={:.0} {}",
                hop.per_s,
                hop.elapsed.as_secs_f64(),
                hop.load.cpu_us_per_msg(hop.elapsed, n),
                hop.load
            );
            anyhow::Ok(())
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        return result;
    }
    let Some(server) = std::env::var_os("SITREP_NATS_SERVER") else {
        println!(
            "compare: skipped (SITREP_NATS_SERVER, the path to a nats-server binary, is not set; \
             benches/compare/run.sh installs one and sets it)"
        );
        return Ok(());
    };
    let n = bench_n()?;
    // The NATS client takes rustls' process-wide provider; with both ring
    // and aws-lc-rs in the build (the browser tests' WebDriver client brings
    // the latter) none is chosen by default. The node uses ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = runtime()?;
    let result = rt.block_on(run(PathBuf::from(server), n));
    // Never hang on the way out, whatever state an error left the nodes in.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// `SITREP_BENCH_N`, or [`DEFAULT_N`].
fn bench_n() -> anyhow::Result<usize> {
    let n = match std::env::var("SITREP_BENCH_N") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("SITREP_BENCH_N={v:?} is not a number"))?,
        Err(_) => DEFAULT_N,
    };
    ensure!(n > 0, "SITREP_BENCH_N must be positive");
    Ok(n)
}

/// Two worker threads: the machine's two cores.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

async fn run(server: PathBuf, n: usize) -> anyhow::Result<()> {
    let nats = nats(&server, n).await.context("NATS JetStream run")?;
    println!(
        "compare.nats msgs_per_s={:.0} n={n} in_flight={IN_FLIGHT} payload_bytes={PAYLOAD_BYTES} elapsed_s={:.3} \
         cpu_us_per_msg={:.0} server={} storage=file sync_always=true tls=mutual {} server_pct={:.1}",
        nats.per_s,
        nats.elapsed.as_secs_f64(),
        nats.load.cpu_us_per_msg(nats.elapsed, n),
        nats.version,
        nats.load,
        nats.load.per_process_pct.get(1).copied().unwrap_or_default(),
    );
    let sitrep = one_hop(n).await.context("sitrep one hop run")?;
    println!(
        "compare.sitrep_one_hop reports_per_s={:.0} n={n} in_flight={IN_FLIGHT} report_bytes={PAYLOAD_BYTES} \
         elapsed_s={:.3} cpu_us_per_msg={:.0} all_submitted_s={:.3} {}",
        sitrep.per_s,
        sitrep.elapsed.as_secs_f64(),
        sitrep.load.cpu_us_per_msg(sitrep.elapsed, n),
        sitrep.submitted.as_secs_f64(),
        sitrep.load,
    );
    let hop = hop_only(n).await.context("sitrep hop run")?;
    println!(
        "compare.sitrep_hop reports_per_s={:.0} n={n} in_flight={IN_FLIGHT} report_bytes={PAYLOAD_BYTES} \
         elapsed_s={:.3} cpu_us_per_msg={:.0} {}",
        hop.per_s,
        hop.elapsed.as_secs_f64(),
        hop.load.cpu_us_per_msg(hop.elapsed, n),
        hop.load,
    );
    println!(
        "compare.ratio sitrep_one_hop/nats={:.2} sitrep_hop/nats={:.2}",
        sitrep.per_s / nats.per_s,
        hop.per_s / nats.per_s
    );
    Ok(())
}

/// Generous: a run slower than 50 messages/s still finishes.
fn timeout(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20).saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

// ---------------------------------------------------------------------------
// NATS JetStream

/// Files of the throwaway PKI for mutual TLS.
#[derive(Debug)]
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn write_pki(dir: &Path) -> anyhow::Result<Pki> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "sitrep compare bench CA (throwaway)");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;

    let leaf = |name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<_> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        "nats-server",
        vec![
            SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
            SanType::DnsName("localhost".try_into()?),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf("bench-client", vec![], ExtendedKeyUsagePurpose::ClientAuth)?;

    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    };
    Ok(Pki {
        ca: write("ca.crt", &ca.pem())?,
        server_cert: write("server.crt", &server_cert)?,
        server_key: write("server.key", &server_key)?,
        client_cert: write("client.crt", &client_cert)?,
        client_key: write("client.key", &client_key)?,
    })
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(l.local_addr().context("local addr")?.port())
}

/// A running nats-server child; killed when dropped, whatever happened.
#[derive(Debug)]
struct NatsServer {
    child: Child,
    addr: SocketAddr,
    /// Monitoring endpoint, for `/varz`.
    http: SocketAddr,
    log: PathBuf,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // It may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NatsServer {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts `binary` with mutual TLS and JetStream on file storage with an
    /// fsync per write, in `dir`, and waits until it accepts connections.
    async fn start(binary: &Path, dir: &Path, pki: &Pki) -> anyhow::Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let store = dir.join("jetstream");
        let q = |p: &Path| format!("\"{}\"", p.display());
        let conf = format!(
            "server_name: sitrep_compare\n\
             listen: \"{addr}\"\n\
             http: \"{http}\"\n\
             tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 5\n}}\n\
             jetstream {{\n  store_dir: {}\n  sync_interval: always\n}}\n",
            q(&pki.server_cert),
            q(&pki.server_key),
            q(&pki.ca),
            q(&store),
        );
        let conf_path = dir.join("nats-server.conf");
        std::fs::write(&conf_path, conf).context("write nats-server.conf")?;
        let log = dir.join("nats-server.log");
        let out = std::fs::File::create(&log).context("create nats-server.log")?;
        let err = out.try_clone().context("nats-server.log")?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut server = Self {
            child,
            addr,
            http,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.child.try_wait().context("nats-server status")? {
                bail!(
                    "nats-server exited ({status}) before it was ready:\n{}",
                    server.log_tail()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not listen on {addr} within 15 s:\n{}",
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks the server's own view of its JetStream config (`/varz`): that
    /// `sync_interval: always` took, not just that the file said so.
    async fn check_sync_always(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/varz", self.http);
        let varz: serde_json::Value = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut resp = ureq::get(&url).call().with_context(|| format!("GET {url}"))?;
            resp.body_mut().read_json().context("/varz is not JSON")
        })
        .await
        .map_err(|e| anyhow!("varz task failed: {e}"))??;
        let config = &varz["jetstream"]["config"];
        ensure!(
            config["sync_always"].as_bool() == Some(true),
            "nats-server does not report sync_always=true in /varz; its JetStream config: {config}"
        );
        Ok(())
    }
}

struct NatsRun {
    per_s: f64,
    elapsed: Duration,
    version: String,
    load: Load,
}

async fn nats(binary: &Path, n: usize) -> anyhow::Result<NatsRun> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let pki = write_pki(dir.path()).context("throwaway PKI")?;
    let server = NatsServer::start(binary, dir.path(), &pki).await?;
    let result = nats_load(&server, &pki, n).await;
    let result = result.with_context(|| format!("nats-server log, last lines:\n{}", server.log_tail()));
    drop(server);
    result
}

async fn nats_load(server: &NatsServer, pki: &Pki, n: usize) -> anyhow::Result<NatsRun> {
    server.check_sync_always().await?;
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.ca.clone())
        .add_client_certificate(pki.client_cert.clone(), pki.client_key.clone())
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("tls://{}", server.addr))
        .await
        .context("connect to nats-server with mutual TLS")?;
    let version = client.server_info().version;
    let js = jetstream::new(client);
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["bench.>".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("create stream")?;
    let payload = Arc::new(vec![0x5a_u8; PAYLOAD_BYTES]);

    publish_all(&js, &payload, WARMUP).await.context("warm-up")?;
    let meter = LoadMeter::start(&["self", &server.child.id().to_string()])?;
    let t0 = Instant::now();
    publish_all(&js, &payload, n).await.context("measured run")?;
    let elapsed = t0.elapsed();
    let load = meter.finish()?;

    let info = stream.info().await.context("stream info")?;
    ensure!(
        info.config.storage == jetstream::stream::StorageType::File,
        "the stream is not on file storage"
    );
    ensure!(
        info.state.messages == (WARMUP + n) as u64,
        "the stream holds {} messages, expected {}",
        info.state.messages,
        WARMUP + n
    );
    Ok(NatsRun {
        per_s: n as f64 / elapsed.as_secs_f64(),
        elapsed,
        version,
        load,
    })
}

/// Publishes `n` payloads to `bench.load`, each awaiting its PubAck, at
/// most [`IN_FLIGHT`] awaiting at once.
async fn publish_all(js: &jetstream::Context, payload: &Arc<Vec<u8>>, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout(n);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..IN_FLIGHT.min(n) {
        let (js, payload, next) = (js.clone(), Arc::clone(payload), Arc::clone(&next));
        workers.spawn(async move {
            let mut acked = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let ack = tokio::time::timeout_at(deadline, async {
                    js.publish("bench.load", payload.as_ref().clone().into())
                        .await
                        .context("publish")?
                        .await
                        .context("PubAck")
                })
                .await
                .map_err(|_| anyhow!("publish timed out"))??;
                ensure!(
                    !ack.duplicate,
                    "PubAck says duplicate (sequence {})",
                    ack.sequence
                );
                acked += 1;
            }
            anyhow::Ok(acked)
        });
    }
    let mut acked = 0;
    while let Some(r) = workers.join_next().await {
        acked += r.map_err(|e| anyhow!("publisher failed: {e}"))??;
    }
    ensure!(acked == n, "{acked} of {n} publishes acknowledged");
    Ok(())
}

// ---------------------------------------------------------------------------
// sitrep one hop

struct OneHop {
    per_s: f64,
    /// First submit to the hub's custody of the last report.
    elapsed: Duration,
    /// First submit to the last submit returning (durable at the region).
    submitted: Duration,
    load: Load,
}

/// region-uppsala and nspl-hub only: the authority never starts, so the
/// hub takes custody and queues. The approach of `path`'s one-hop diagnosis.
async fn one_hop(n: usize) -> anyhow::Result<OneHop> {
    let template = Arc::new(reports::report_template(PAYLOAD_BYTES)?);
    let mut net = TestNet::prepare(&line());
    // The hub first, so the region starts with its address.
    net.start_node(HUB).await;
    net.start_node(REGION).await;
    let net = Arc::new(net);

    to_custody(&net, &template, 0, WARMUP).await.context("warm-up")?;
    let meter = LoadMeter::start(&["self"])?;
    let (elapsed, submitted) = to_custody(&net, &template, WARMUP, n)
        .await
        .context("measured run")?;
    let load = meter.finish()?;

    Arc::try_unwrap(net)
        .map_err(|_| anyhow!("the test net is still shared"))?
        .shutdown()
        .await;
    Ok(OneHop {
        per_s: n as f64 / elapsed.as_secs_f64(),
        elapsed,
        submitted,
        load,
    })
}

/// DESIGN §10's one hop alone: the region holds `n` reports already
/// sealed, signed and durable in its outbox (submitted while the hub was
/// down); the hub comes up and the region sends them, 64 in flight; the hub
/// verifies each, makes it durable and answers `Accepted`, and the region
/// records custody. Timed from the hub being up until its `accepted`
/// counter reaches `n`: the sender → receiver hop without the origin's
/// sealing (which `one_hop` includes).
async fn hop_only(n: usize) -> anyhow::Result<OneHop> {
    let template = Arc::new(reports::report_template(PAYLOAD_BYTES)?);
    let mut net = Arc::new(TestNet::prepare(&line()));
    let setup = Arc::get_mut(&mut net).ok_or_else(|| anyhow!("the test net is shared"))?;
    setup.start_node(HUB).await;
    setup.start_node(REGION).await;
    // Warm up through the live link, then take the hub down.
    to_custody(&net, &template, 0, WARMUP).await.context("warm-up")?;
    let setup = Arc::get_mut(&mut net).ok_or_else(|| anyhow!("the test net is shared"))?;
    setup.stop(HUB).await;
    let deadline = Instant::now() + timeout(n);
    submit_all(&net, &template, WARMUP, n, deadline)
        .await
        .context("fill")?;
    let setup = Arc::get_mut(&mut net).ok_or_else(|| anyhow!("the test net is shared"))?;
    let meter = LoadMeter::start(&["self"])?;
    setup.start_node(HUB).await;
    let t0 = Instant::now();
    until_accepted(&net, n as u64, deadline).await?;
    let elapsed = t0.elapsed();
    let load = meter.finish()?;
    Arc::try_unwrap(net)
        .map_err(|_| anyhow!("the test net is still shared"))?
        .shutdown()
        .await;
    Ok(OneHop {
        per_s: n as f64 / elapsed.as_secs_f64(),
        elapsed,
        submitted: Duration::ZERO,
        load,
    })
}

/// Submits `n` reports (numbered from `first`) and waits until the hub has
/// taken custody of all of them: from the first submit, until then and
/// until the last submit returned.
async fn to_custody(
    net: &Arc<TestNet>,
    template: &Arc<pb::SituationReport>,
    first: usize,
    n: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let deadline = Instant::now() + timeout(n);
    let hub = net.node(HUB);
    let want = hub.counters().get("accepted") + n as u64;
    let t0 = Instant::now();
    submit_all(net, template, first, n, deadline).await?;
    let submitted = t0.elapsed();
    until_accepted(net, want, deadline).await?;
    Ok((t0.elapsed(), submitted))
}

/// Waits until the hub's `accepted` counter reaches `want`.
///
/// The wait runs as a task on the runtime's workers, not on the bench's
/// main thread (`block_on`): every change at the hub wakes the waiter, and
/// waking a parked thread for each message would cost the measured cores a
/// futex call and a context switch per message that no node spends.
async fn until_accepted(net: &Arc<TestNet>, want: u64, deadline: Instant) -> anyhow::Result<()> {
    let net = Arc::clone(net);
    tokio::spawn(async move {
        let hub = net.node(HUB);
        let mut rx = hub.watch();
        loop {
            // Mark first, then check: a change after the check still wakes us.
            rx.mark_unchanged();
            let accepted = hub.counters().get("accepted");
            if accepted >= want {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .map_err(|_| anyhow!("timed out with the hub's accepted counter at {accepted} of {want}"))?
                .map_err(|_| anyhow!("the hub stopped"))?;
        }
    })
    .await
    .map_err(|e| anyhow!("the wait for the hub failed: {e}"))?
}

/// Submits reports `first..first + n` at the region, [`IN_FLIGHT`] at a
/// time, as fast as it takes them.
async fn submit_all(
    net: &Arc<TestNet>,
    template: &Arc<pb::SituationReport>,
    first: usize,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + n;
    let mut workers = JoinSet::new();
    for _ in 0..IN_FLIGHT.min(n) {
        let (net, template, next) = (Arc::clone(net), Arc::clone(template), Arc::clone(&next));
        workers.spawn(async move {
            let mut done = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return anyhow::Ok(done);
                }
                let sub = reports::submission(&template, i, AUTHORITY)?;
                tokio::time::timeout_at(deadline, net.node(REGION).submit(sub))
                    .await
                    .map_err(|_| anyhow!("submit timed out"))?
                    .context("submit")?;
                done += 1;
            }
        });
    }
    let mut done = 0;
    while let Some(r) = workers.join_next().await {
        done += r.map_err(|e| anyhow!("submitter failed: {e}"))??;
    }
    ensure!(done == n, "submitted {done} of {n}");
    Ok(())
}
