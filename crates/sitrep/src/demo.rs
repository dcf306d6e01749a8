//! `sitrep demo [--once]`: the demo network of `deploy/demo/topology.toml`
//! (six nodes) in this process, on loopback, with data in a temp dir. Pushes
//! sample reports from the regions and prints each delivery and receipt.
//!
//! Also the pieces `sitrep demo --national` (`national.rs`) shares: the
//! tracing setup, a built-in topology with ephemeral ports, starting the
//! nodes of a topology and wiring their peer addresses, one wake-up per
//! state change of any node, and the development tokens and API URLs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sitrep_core::{Channel, Class, Label, MessageId, Mode, NodeId, Precedence};
use sitrep_devpki::Topology;
use sitrep_node::{Config, Content, Node, NodeEvent, Submission};
use sitrep_proto::v1 as pb;

/// The demo topology, built in: the demo needs nothing but this binary.
const TOPOLOGY: &str = include_str!("../../../deploy/demo/topology.toml");
/// 60 s for every sample report to be confirmed by receipt.
const DEADLINE: Duration = Duration::from_secs(60);

struct Sample {
    origin: &'static str,
    recipients: &'static [&'static str],
    class: Class,
    precedence: Precedence,
    report: pb::SituationReport,
}

fn samples(now: i64) -> Vec<Sample> {
    let uppsala = sitrep_core::report::example_uppsala(now);
    let mut stockholm = uppsala.clone();
    stockholm.region_code = "01".into();
    stockholm.reporting_unit = "Region Stockholm, regional särskild sjukvårdsledning".into();
    stockholm.report_number = 22;
    stockholm.preparedness_level = pb::PreparednessLevel::StaffAlert as i32;
    stockholm.beds[0] = pb::BedCapacity {
        r#type: pb::BedType::IcuAdult as i32,
        available: 11,
        occupied: 85,
        baseline: 90,
        surge_24h: 10,
        surge_72h: 24,
        with_ventilator: 9,
    };
    stockholm.facilities = vec![pb::Facility {
        id: "SE2321000016-KS".into(),
        name: "Karolinska universitetssjukhuset".into(),
        status: pb::ResourceStatus::Strained as i32,
    }];
    stockholm.assessment = "Ansträngt men hanterbart läge på IVA; stabsläge sedan i morse.".into();
    stockholm.prepared_by = "TiB, Region Stockholm".into();
    let mut gotland = uppsala.clone();
    gotland.region_code = "09".into();
    gotland.reporting_unit = "Region Gotland, sjukvårdsledning".into();
    gotland.report_number = 5;
    gotland.preparedness_level = pb::PreparednessLevel::Disaster as i32;
    gotland.beds = vec![pb::BedCapacity {
        r#type: pb::BedType::IcuAdult as i32,
        available: 0,
        occupied: 8,
        baseline: 6,
        surge_24h: 2,
        surge_72h: 2,
        with_ventilator: 0,
    }];
    gotland.facilities = vec![pb::Facility {
        id: "SE2321000255-VS".into(),
        name: "Visby lasarett".into(),
        status: pb::ResourceStatus::Critical as i32,
    }];
    gotland.transports = Some(pb::Transports {
        status: pb::ResourceStatus::Critical as i32,
        available_units: 1,
    });
    gotland.assessment = "Färjetrafiken inställd; IVA fullt; behov av flygtransport till fastlandet.".into();
    gotland.prepared_by = "TiB, Region Gotland".into();
    let mut uppsala_classified = uppsala.clone();
    uppsala_classified.report_number = 15;
    uppsala_classified.assessment =
        "Sabotage mot reservkraft misstänks; uppgifter rör rikets säkerhet.".into();
    vec![
        Sample {
            origin: "region-uppsala",
            recipients: &["socialstyrelsen", "msb"],
            class: Class::Sensitive,
            precedence: Precedence::Priority,
            report: uppsala,
        },
        Sample {
            origin: "region-uppsala",
            recipients: &["socialstyrelsen"],
            class: Class::Restricted,
            precedence: Precedence::Immediate,
            report: uppsala_classified,
        },
        Sample {
            origin: "region-stockholm",
            recipients: &["socialstyrelsen", "msb"],
            class: Class::Sensitive,
            precedence: Precedence::Routine,
            report: stockholm,
        },
        Sample {
            origin: "region-gotland",
            recipients: &["socialstyrelsen", "msb"],
            class: Class::Sensitive,
            precedence: Precedence::Flash,
            report: gotland,
        },
    ]
}

/// `sitrep demo` (`sitrep demo --national` is `national::run`).
pub(crate) fn run(once: bool) -> anyhow::Result<()> {
    init_tracing()?;
    let dir = tempfile::Builder::new()
        .prefix("sitrep-demo-")
        .tempdir()
        .context("temp dir")?;
    let topology = topology(TOPOLOGY, "built-in demo topology", once)?;
    let pki = dir.path().join("pki");
    sitrep_devpki::generate(&topology, &pki)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("async runtime")?;
    runtime.block_on(run_network(&topology, &pki, once))
}

/// Logs to stderr at the level `SITREP_LOG` says (default `warn`).
pub(crate) fn init_tracing() -> anyhow::Result<()> {
    let level = std::env::var("SITREP_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(level).context("SITREP_LOG")?)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

/// Parses a built-in topology (`what` names it in errors); for a scripted
/// run (`ephemeral`) every listener moves to port 0.
pub(crate) fn topology(text: &str, what: &str, ephemeral: bool) -> anyhow::Result<Topology> {
    let mut topology: Topology = toml::from_str(text).with_context(|| what.to_owned())?;
    if ephemeral {
        // A scripted run must not depend on fixed ports being free.
        for n in &mut topology.nodes {
            n.api.set_port(0);
            for c in n.channels.values_mut() {
                c.listen.set_port(0);
            }
        }
    }
    Ok(topology)
}

/// Starts every node of `topology` from its `node.toml` under `pki` (after
/// `configure` has changed its config), all at once, then tells each where
/// its peers are (ports may be ephemeral). If one fails, the others are
/// stopped again.
pub(crate) async fn start_nodes(
    topology: &Topology,
    pki: &Path,
    mut configure: impl FnMut(&str, &mut Config),
) -> anyhow::Result<BTreeMap<String, Node>> {
    let mut starting = tokio::task::JoinSet::new();
    let mut failed: Option<anyhow::Error> = None;
    for t in &topology.nodes {
        let path = pki.join(&t.id).join("node.toml");
        match Config::load_with_env(&path, Vec::new()) {
            Ok(mut config) => {
                configure(&t.id, &mut config);
                let id = t.id.clone();
                starting.spawn(async move { (id, Node::start(config).await) });
            }
            Err(e) => {
                failed = Some(anyhow::Error::new(e).context(format!("{}", path.display())));
                break;
            }
        }
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((id, Ok(node))) => {
                nodes.insert(id, node);
            }
            Ok((id, Err(e))) => {
                failed.get_or_insert_with(|| anyhow::Error::new(e).context(format!("starting {id}")));
            }
            Err(e) => {
                failed.get_or_insert_with(|| anyhow::Error::new(e).context("starting a node"));
            }
        }
    }
    if let Some(e) = failed {
        shutdown_all(nodes).await;
        return Err(e);
    }
    let mut addrs: BTreeMap<(String, Channel), SocketAddr> = BTreeMap::new();
    for (id, node) in &nodes {
        for c in Channel::ALL {
            if let Some(a) = node.local_addr(c) {
                addrs.insert((id.clone(), c), a);
            }
        }
    }
    for node in nodes.values() {
        for p in node.peers() {
            if let Some(a) = addrs.get(&(p.peer.to_string(), p.channel)) {
                node.set_peer_address(p.channel, &p.peer, *a);
            }
        }
    }
    Ok(nodes)
}

/// Shuts every node down, all at once.
pub(crate) async fn shutdown_all(nodes: BTreeMap<String, Node>) {
    let mut stopping = tokio::task::JoinSet::new();
    for (_, node) in nodes {
        stopping.spawn(node.shutdown());
    }
    while stopping.join_next().await.is_some() {}
}

/// One message on the returned receiver whenever any node's state changes
/// (coalesced: a full queue already says "changed"). The forwarders run in
/// `tasks`.
pub(crate) fn forward_changes(
    nodes: &BTreeMap<String, Node>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(64);
    for node in nodes.values() {
        let mut watch = node.watch();
        let tx = tx.clone();
        tasks.spawn(async move {
            while watch.changed().await.is_ok() {
                let _ = tx.try_send(());
            }
        });
    }
    rx
}

/// Where the web console of each given node is and the token to sign in
/// with: one line per view.
pub(crate) fn print_console(
    nodes: &BTreeMap<String, Node>,
    pki: &Path,
    views: &[(&str, &str, sitrep_node::config::Role)],
) {
    println!("\nrunning. Web console: open the URL in a browser and sign in with the token.");
    for (what, id, role) in views {
        println!(
            "  {what:<28} {}/  token {}",
            api_url(nodes, id),
            token(pki, id, *role)
        );
    }
}

/// The development API token of node `id` for `role`, from its `node.toml`
/// (a throw-away PKI: printed so that a walk-through can be pasted); empty
/// if there is none.
pub(crate) fn token(pki: &Path, id: &str, role: sitrep_node::config::Role) -> String {
    Config::load_with_env(&pki.join(id).join("node.toml"), Vec::new())
        .ok()
        .and_then(|c| c.api)
        .and_then(|a| a.tokens.into_iter().find(|(_, r)| *r == role).map(|(t, _)| t))
        .unwrap_or_default()
}

/// `http://ADDR` of node `id`'s API; empty if it has none.
pub(crate) fn api_url(nodes: &BTreeMap<String, Node>, id: &str) -> String {
    nodes
        .get(id)
        .and_then(Node::api_addr)
        .map_or_else(String::new, |a| format!("http://{a}"))
}

async fn run_network(topology: &Topology, pki: &Path, once: bool) -> anyhow::Result<()> {
    let nodes = start_nodes(topology, pki, |_, _| {}).await?;
    println!(
        "sitrep demo: {} nodes on loopback; data and tokens in {}",
        nodes.len(),
        pki.display()
    );
    for (id, node) in &nodes {
        let api = node
            .api_addr()
            .map_or_else(|| "-".into(), |a| format!("http://{a}"));
        println!(
            "  {id:<18} API {api:<24} tokens in {}",
            pki.join(id).join("node.toml").display()
        );
    }
    // Print deliveries and receipts as they happen.
    let mut printers = tokio::task::JoinSet::new();
    let mut changed = forward_changes(&nodes, &mut printers);
    for (id, node) in &nodes {
        let mut events = node.events();
        let id = id.clone();
        printers.spawn(async move {
            while let Ok(e) = events.recv().await {
                match e {
                    NodeEvent::Delivered {
                        id: m,
                        origin,
                        channel,
                    } => {
                        println!("  delivered  {m} from {origin} to {id} on {channel}");
                    }
                    NodeEvent::Receipt { id: m, recipient } => {
                        println!("  receipt    {m} at {id}: DELIVERED to {recipient}")
                    }
                    _ => {}
                }
            }
        });
    }
    // Push the sample reports.
    let now = sitrep_node::clock::now_ms();
    let mut sent: Vec<(String, MessageId, usize)> = Vec::new();
    for s in samples(now) {
        let node = nodes.get(s.origin).context("sample origin")?;
        let recipients: Vec<NodeId> = s
            .recipients
            .iter()
            .map(|r| NodeId::new(r))
            .collect::<Result<_, _>>()?;
        let id = node
            .submit(Submission {
                author: format!("TiB {}", s.origin),
                label: Label::new(s.class),
                precedence: s.precedence,
                mode: Mode::Exercise,
                recipients,
                expires_ms: None,
                content: Content::Report(s.report),
            })
            .await
            .with_context(|| format!("submitting from {}", s.origin))?;
        println!(
            "  submitted  {id} from {} ({}, {}) to {}",
            s.origin,
            s.class,
            s.precedence,
            s.recipients.join(", ")
        );
        sent.push((s.origin.to_owned(), id, s.recipients.len()));
    }
    let expected: usize = sent.iter().map(|(_, _, n)| n).sum();
    let confirmed = |nodes: &BTreeMap<String, Node>| -> usize {
        sent.iter()
            .map(|(origin, id, _)| {
                nodes
                    .get(origin)
                    .and_then(|n| n.delivery(id).ok())
                    .map_or(0, |d| {
                        d.iter()
                            .filter(|r| r.state == sitrep_store::DeliveryState::Delivered)
                            .count()
                    })
            })
            .sum()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while confirmed(&nodes) < expected {
        if tokio::time::timeout_at(deadline, changed.recv()).await.is_err() {
            break;
        }
    }
    let got = confirmed(&nodes);
    println!("sitrep demo: {got}/{expected} deliveries confirmed by signed receipts");
    let result = if got == expected {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "only {got} of {expected} deliveries were confirmed within {}s",
            DEADLINE.as_secs()
        ))
    };
    if !once && result.is_ok() {
        let token = |id: &str, role| token(pki, id, role);
        let api = |id: &str| api_url(&nodes, id);
        print_console(
            &nodes,
            pki,
            &[
                (
                    "region staff (reporter)",
                    "region-uppsala",
                    sitrep_node::config::Role::Reporter,
                ),
                (
                    "national authority (reader)",
                    "socialstyrelsen",
                    sitrep_node::config::Role::Reader,
                ),
                ("operator", "nspl-hub", sitrep_node::config::Role::Operator),
            ],
        );
        println!("\nIn another terminal (development tokens of this run):");
        println!(
            "  sitrep report submit deploy/examples/uppsala-icu-report.json --wait --api {} --token {}",
            api("region-uppsala"),
            token("region-uppsala", sitrep_node::config::Role::Reporter)
        );
        println!(
            "  sitrep inbox --api {} --token {}",
            api("socialstyrelsen"),
            token("socialstyrelsen", sitrep_node::config::Role::Reader)
        );
        println!(
            "  sitrep status --api {} --token {}",
            api("nspl-hub"),
            token("nspl-hub", sitrep_node::config::Role::Operator)
        );
        println!("Ctrl-C to stop.");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    printers.abort_all();
    shutdown_all(nodes).await;
    if let Err(e) = result {
        bail!(e);
    }
    Ok(())
}
