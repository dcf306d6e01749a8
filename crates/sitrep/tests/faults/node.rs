//! The three nodes as real `sitrep node` processes in the lab's namespaces,
//! their configs, and their HTTP APIs reached from threads inside those
//! namespaces.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sitrep_testkit::{TestNet, line};

use super::netns::{AUTHORITY_ADDR, HUB_ADDR, Lab, REGION_ADDR, Site, spawn_in_ns};

/// QUIC ports inside every namespace (each namespace has its own ports).
pub(crate) const OPEN_PORT: u16 = 7001;
/// The `secure` channel's port.
pub(crate) const SECURE_PORT: u16 = 7002;
/// The API inside every namespace.
const API: &str = "127.0.0.1:7400";
/// Longest a node may take from exec to its ready lines, or to exit on SIGTERM.
const START_STOP: Duration = Duration::from_secs(60);
/// How often [`wait_for`] looks again.
const POLL: Duration = Duration::from_millis(100);

/// Waits until `cond` holds, looking every 100 ms; the time it took.
///
/// # Panics
/// If `timeout` passes first, naming `what`.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        // A poll interval: the condition is what is waited for.
        std::thread::sleep(POLL);
    }
}

type Job = Box<dyn FnOnce(&ureq::Agent) + Send>;

/// An HTTP client whose connections are opened inside one namespace.
#[derive(Debug)]
pub(crate) struct Api {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Api {
    /// A client for the API at `127.0.0.1:7400` inside namespace `ns`.
    pub(crate) fn new(ns: &str) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = spawn_in_ns(ns, move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into();
            while let Ok(job) = rx.recv() {
                job(&agent);
            }
        });
        Self {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&ureq::Agent) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |agent| {
            let _ = tx.send(f(agent));
        });
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        assert!(matches!(sent, Some(Ok(()))), "the API client's thread is gone");
        rx.recv()
            .unwrap_or_else(|_| panic!("the API client's thread died"))
    }

    /// `GET path` with a bearer token: status and JSON body (`Null` if none).
    pub(crate) fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (url, auth) = (format!("http://{API}{path}"), format!("Bearer {token}"));
        self.call(move |agent| {
            let answer = agent.get(&url).header("Authorization", &auth).call();
            read(&url, answer)
        })
    }

    /// `POST path` with a bearer token and a JSON body.
    pub(crate) fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let (url, auth) = (format!("http://{API}{path}"), format!("Bearer {token}"));
        self.call(move |agent| {
            let answer = agent.post(&url).header("Authorization", &auth).send_json(&body);
            read(&url, answer)
        })
    }
}

fn read(url: &str, answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = answer.unwrap_or_else(|e| panic!("{url}: no answer: {e}"));
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_else(|e| panic!("{url}: body: {e}"));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Drop for Api {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A node process.
#[derive(Debug)]
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per-node QUIC limits written into every config (`[limits]`); empty for the defaults.
pub(crate) type Limits = Vec<(&'static str, &'static str)>;

/// Three nodes in a lab. Fields drop in order: processes first, then the
/// namespaces, then the PKI's temp dir.
#[derive(Debug)]
pub(crate) struct Cluster {
    procs: BTreeMap<&'static str, Proc>,
    apis: BTreeMap<&'static str, Api>,
    pub(crate) lab: Lab,
    pki: TestNet,
    bin: PathBuf,
    limits: Limits,
    /// Where the hub listens now.
    pub(crate) hub_addr: String,
    /// Peer addresses that differ from the peer's listen address: `(node, peer, port)` → address.
    pub(crate) peer_override: BTreeMap<(Site, Site, u16), SocketAddr>,
    /// Per-site `[limits]` entries on top of `limits`.
    pub(crate) extra_limits: BTreeMap<&'static str, Limits>,
}

impl Cluster {
    /// The lab's nodes' configs, nothing started.
    pub(crate) fn new(lab: Lab, limits: Limits) -> Self {
        Self {
            procs: BTreeMap::new(),
            apis: BTreeMap::new(),
            lab,
            pki: TestNet::prepare(&line()),
            bin: PathBuf::from(env!("CARGO_BIN_EXE_sitrep")),
            limits,
            hub_addr: HUB_ADDR.to_owned(),
            peer_override: BTreeMap::new(),
            extra_limits: BTreeMap::new(),
        }
    }

    /// Where `site` listens on the channel with QUIC port `port`.
    pub(crate) fn listen(&self, site: Site, port: u16) -> SocketAddr {
        let ip = match site {
            Site::Region => REGION_ADDR,
            Site::Hub => &self.hub_addr,
            Site::Authority => AUTHORITY_ADDR,
        };
        sock(ip, port)
    }

    fn base(&self, site: Site) -> toml::Table {
        let path = self.pki.config_path(site.node_id());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The API token of `role` (`reporter`, `reader`, `operator`) at `site`.
    pub(crate) fn token(&self, site: Site, role: &str) -> String {
        self.base(site)
            .get("api")
            .and_then(|a| a.get("tokens"))
            .and_then(|t| t.get(role))
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("no {role} token for {}", site.node_id()))
            .to_owned()
    }

    /// Writes `site`'s config as it should run now; its path.
    fn write_config(&self, site: Site) -> PathBuf {
        let mut doc = self.base(site);
        let set = |doc: &mut toml::Table, section: &[&str], key: &str, value: toml::Value| {
            let mut t = doc;
            for s in section {
                t = t
                    .entry((*s).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .unwrap_or_else(|| panic!("{s} is not a table"));
            }
            t.insert(key.to_owned(), value);
        };
        for (channel, port) in [("open", OPEN_PORT), ("secure", SECURE_PORT)] {
            let addr = self.listen(site, port).to_string();
            set(&mut doc, &["channels", channel], "listen", addr.into());
        }
        set(&mut doc, &["api"], "listen", API.into());
        for (k, v) in self
            .limits
            .iter()
            .chain(self.extra_limits.get(site.node_id()).into_iter().flatten())
        {
            set(&mut doc, &["limits"], k, (*v).into());
        }
        if let Some(toml::Value::Array(peers)) = doc.get_mut("peers") {
            for p in peers.iter_mut().filter_map(toml::Value::as_table_mut) {
                let id = p.get("id").and_then(toml::Value::as_str).unwrap_or_default();
                let port = match p.get("channel").and_then(toml::Value::as_str) {
                    Some("secure") => SECURE_PORT,
                    _ => OPEN_PORT,
                };
                let peer = Site::ALL
                    .into_iter()
                    .find(|s| s.node_id() == id)
                    .unwrap_or_else(|| panic!("unknown peer {id}"));
                let addr = self
                    .peer_override
                    .get(&(site, peer, port))
                    .copied()
                    .unwrap_or_else(|| self.listen(peer, port));
                p.insert("address".into(), addr.to_string().into());
            }
        }
        let path = self.pki.config_path(site.node_id()).with_file_name("fault.toml");
        let text = toml::to_string(&doc).unwrap_or_else(|e| panic!("toml: {e}"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    fn log_path(&self, site: Site) -> PathBuf {
        self.pki.pki().join(format!("{}.log", site.node_id()))
    }

    /// Starts `site`'s node in its namespace (`ip netns exec NS sitrep node
    /// --config …`) with its current config, and waits for its ready lines.
    pub(crate) fn start(&mut self, site: Site) {
        assert!(
            !self.procs.contains_key(site.node_id()),
            "{} is running",
            site.node_id()
        );
        let config = self.write_config(site);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(site))
            .unwrap_or_else(|e| panic!("node log: {e}"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.lab.ns(site)])
            .arg(&self.bin)
            .args(["node", "--config"])
            .arg(&config)
            .env("SITREP_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", site.node_id()));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let proc = Proc { child };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Both channels' lines, then the API's (DESIGN §9, docs/node.md).
            let mut channels = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                channels += usize::from(line.contains(" channel="));
                if line.contains(" api=") && channels == 2 {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        if rx.recv_timeout(START_STOP).is_err() {
            panic!(
                "{} did not get ready:\n{}",
                site.node_id(),
                tail(&self.log_path(site), 30)
            );
        }
        self.procs.insert(site.node_id(), proc);
        self.apis.insert(site.node_id(), Api::new(&self.lab.ns(site)));
    }

    /// Rewrites `site`'s config as it should run now and sends its node
    /// SIGHUP (the roster file and the peers' addresses are read again).
    pub(crate) fn reload(&self, site: Site) {
        let proc = self
            .procs
            .get(site.node_id())
            .unwrap_or_else(|| panic!("{} is not running", site.node_id()));
        self.write_config(site);
        let pid = proc.child.id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status();
        assert!(matches!(sent, Ok(s) if s.success()), "kill -HUP {pid}");
    }

    /// SIGTERM to `site`'s node; waits for it to exit 0.
    pub(crate) fn stop(&mut self, site: Site) {
        self.apis.remove(site.node_id());
        let Some(proc) = self.procs.remove(site.node_id()) else {
            panic!("{} is not running", site.node_id());
        };
        let pid = proc.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(matches!(sent, Ok(s) if s.success()), "kill -TERM {pid}");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut proc = proc;
            let _ = tx.send(proc.child.wait().map(|s| s.success()));
        });
        let exited = rx.recv_timeout(START_STOP);
        assert!(
            matches!(exited, Ok(Ok(true))),
            "{} after SIGTERM: {exited:?}\n{}",
            site.node_id(),
            tail(&self.log_path(site), 30)
        );
    }

    /// The API client of the running node at `site`.
    pub(crate) fn api(&self, site: Site) -> &Api {
        self.apis
            .get(site.node_id())
            .unwrap_or_else(|| panic!("{} is not running", site.node_id()))
    }

    /// `GET /v1/status` at `site`.
    pub(crate) fn status(&self, site: Site) -> Value {
        let (code, v) = self.api(site).get("/v1/status", &self.token(site, "operator"));
        assert_eq!(code, 200, "status of {}: {v}", site.node_id());
        v
    }

    /// Copies queued at `site` for any next hop (`outboxes[].depth` summed).
    pub(crate) fn queued(&self, site: Site) -> u64 {
        self.status(site)["outboxes"]
            .as_array()
            .map_or(0, |o| o.iter().filter_map(|b| b["depth"].as_u64()).sum())
    }

    /// Whether `site`'s link to `peer` is up on every channel, and the
    /// addresses it uses.
    pub(crate) fn link(&self, site: Site, peer: Site) -> (bool, Vec<String>) {
        let status = self.status(site);
        let links: Vec<&Value> = status["peers"]
            .as_array()
            .map(|p| p.iter().filter(|l| l["peer"] == peer.node_id()).collect())
            .unwrap_or_default();
        (
            !links.is_empty() && links.iter().all(|l| l["connected"] == true),
            links
                .iter()
                .map(|l| l["address"].as_str().unwrap_or_default().to_owned())
                .collect(),
        )
    }

    /// A counter from `site`'s status (`counters.<name>`), 0 if absent.
    pub(crate) fn counter(&self, site: Site, name: &str) -> u64 {
        self.status(site)["counters"][name].as_u64().unwrap_or(0)
    }

    /// Last lines of every node's log, for a failure message.
    fn logs(&self) -> String {
        Site::ALL
            .into_iter()
            .map(|s| format!("--- {} ---\n{}", s.node_id(), tail(&self.log_path(s), 25)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node logs (last lines):\n{}", self.logs());
        }
        // SITREP_FAULT_LOGS=DIR keeps every node's whole log there.
        if let Some(dir) = std::env::var_os("SITREP_FAULT_LOGS") {
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            for site in Site::ALL {
                let to = dir.join(format!("{}.log", self.lab.ns(site)));
                let _ = std::fs::copy(self.log_path(site), to);
            }
        }
    }
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("{ip}:{port}: {e}"))
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let Ok(f) = File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One report as the region submitted it.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) id: String,
    pub(crate) class: &'static str,
    pub(crate) precedence: &'static str,
}

/// A report to submit: its class and precedence.
pub(crate) type Spec = (&'static str, &'static str);

/// The body of `POST /v1/reports`: Region Uppsala's example report, number
/// `number`, to Socialstyrelsen.
fn body(number: usize, (class, precedence): Spec) -> Value {
    let mut report = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    report.report_number = u32::try_from(number).unwrap_or(u32::MAX);
    json!({
        "report": serde_json::to_value(report).unwrap_or_else(|e| panic!("report json: {e}")),
        "label": { "class": class },
        "precedence": precedence,
        "mode": "EXERCISE",
        "recipients": ["socialstyrelsen"],
        "author": "TiB Region Uppsala",
    })
}

impl Cluster {
    /// Submits `specs` at the region, spread evenly over `over` (all at once
    /// if zero) from `clients` connections; every answer must be `202`.
    /// Report numbers start at `first`.
    pub(crate) fn submit(&self, first: usize, specs: &[Spec], over: Duration, clients: usize) -> Vec<Sent> {
        let ns = self.lab.ns(Site::Region);
        let token = self.token(Site::Region, "reporter");
        let start = Instant::now();
        let total = specs.len().max(1) as f64;
        let mut sent: Vec<(usize, Sent)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clients)
                .map(|k| {
                    let (ns, token) = (&ns, &token);
                    scope.spawn(move || {
                        let api = Api::new(ns);
                        let mut out = Vec::new();
                        for (i, spec) in specs.iter().enumerate().skip(k).step_by(clients) {
                            // The load's pace: report i is due at i/N of `over`.
                            let due = start + over.mul_f64(i as f64 / total);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            let (code, v) = api.post("/v1/reports", token, body(first + i + 1, *spec));
                            assert_eq!(code, 202, "submit {i}: {v}");
                            let id = v["id"].as_str().unwrap_or_default().to_owned();
                            out.push((
                                i,
                                Sent {
                                    id,
                                    class: spec.0,
                                    precedence: spec.1,
                                },
                            ));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        sent.sort_by_key(|(i, _)| *i);
        sent.into_iter().map(|(_, s)| s).collect()
    }
}

/// One report in the authority's inbox.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) id: String,
    pub(crate) class: String,
    pub(crate) precedence: String,
    /// When the authority stored it (its clock, ms since the epoch).
    pub(crate) received_ms: u128,
}

/// The authority's inbox, read by cursor (`GET /v1/inbox?after=`).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    cursor: String,
    pub(crate) items: Vec<Got>,
}

impl Inbox {
    /// Reads every page after the cursor; how many new items came.
    pub(crate) fn poll(&mut self, cluster: &Cluster) -> usize {
        let token = cluster.token(Site::Authority, "reader");
        let before = self.items.len();
        loop {
            let path = format!("/v1/inbox?after={}&limit=500", self.cursor);
            let (code, page) = cluster.api(Site::Authority).get(&path, &token);
            assert_eq!(code, 200, "inbox: {page}");
            let items = page["items"].as_array().cloned().unwrap_or_default();
            for it in &items {
                let received = it["received"].as_str().unwrap_or_default();
                let received_ms = humantime::parse_rfc3339_weak(received)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis());
                self.items.push(Got {
                    id: it["id"].as_str().unwrap_or_default().to_owned(),
                    class: it["label"]["class"].as_str().unwrap_or_default().to_owned(),
                    precedence: it["precedence"].as_str().unwrap_or("ROUTINE").to_owned(),
                    received_ms,
                });
            }
            self.cursor = page["next"].as_str().unwrap_or_default().to_owned();
            if items.is_empty() {
                return self.items.len() - before;
            }
        }
    }
}
