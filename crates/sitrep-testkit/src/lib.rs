//! Start a network of real sitrep nodes from a few lines of test code:
//! a development PKI made on the fly in a temp dir, every node on
//! `127.0.0.1:0` with its own sled stores, real QUIC with mutual TLS.
//!
//! ```no_run
//! # async fn f() {
//! let mut net = sitrep_testkit::TestNet::start(&sitrep_testkit::line()).await;
//! let region = net.node("region-uppsala");
//! # }
//! ```
//!
//! Nodes can be stopped and restarted (in-process) or run as child
//! processes of the `sitrep` binary and killed with SIGKILL. Waiting is on
//! conditions ([`wait_until`]), never on fixed sleeps.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sitrep_core::{Channel, Class, Label, MessageId, Mode, NodeId, Precedence, Roster};
use sitrep_crypto::{HpkeSecretKey, SigningKey, keyfile};
use sitrep_devpki::{Topology, TopologyChannel, TopologyNode};
use sitrep_net::{ChannelEndpoint, FrameRecorder, PeerPolicy, TlsIdentity, TransportLimits};
use sitrep_node::{Config, Content, Node, Submission};

/// How one node of a test network looks.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id.
    pub id: &'static str,
    /// REGION, HUB, AUTHORITY, ...
    pub kind: &'static str,
    /// Roster clearance.
    pub clearance: Class,
    /// Channels with an optional max class.
    pub channels: Vec<Channel>,
    /// Direct peers.
    pub peers: Vec<&'static str>,
}

/// The SCB county code the test roster gives a region node, by its id
/// (`region-uppsala` is 03, as in the example report); empty for others.
#[must_use]
pub fn region_code(id: &str) -> &'static str {
    match id {
        "region-stockholm" => "01",
        "region-uppsala" => "03",
        "region-gotland" => "09",
        "region-skane" => "12",
        _ => "",
    }
}

/// region-uppsala → nspl-hub → socialstyrelsen, all on both channels, all cleared SECRET.
#[must_use]
pub fn line() -> Vec<NodeSpec> {
    let both = vec![Channel::Open, Channel::Secure];
    vec![
        NodeSpec {
            id: "region-uppsala",
            kind: "REGION",
            clearance: Class::Secret,
            channels: both.clone(),
            peers: vec!["nspl-hub"],
        },
        NodeSpec {
            id: "nspl-hub",
            kind: "HUB",
            clearance: Class::Secret,
            channels: both.clone(),
            peers: vec!["region-uppsala", "socialstyrelsen"],
        },
        NodeSpec {
            id: "socialstyrelsen",
            kind: "AUTHORITY",
            clearance: Class::Secret,
            channels: both,
            peers: vec!["nspl-hub"],
        },
    ]
}

enum Slot {
    Running(Node),
    Child(ChildNode),
    Stopped,
}

/// A node running as a child process of the `sitrep` binary.
#[derive(Debug)]
pub struct ChildNode {
    child: Child,
    /// Bound addresses per channel, from its `ready` lines.
    pub addrs: BTreeMap<Channel, SocketAddr>,
    /// Its HTTP API URL, from its `ready … api=` line.
    pub api: Option<String>,
}

/// A running test network.
pub struct TestNet {
    dir: tempfile::TempDir,
    specs: Vec<NodeSpec>,
    slots: BTreeMap<String, Slot>,
    /// Bound addresses, per node and channel.
    addrs: BTreeMap<(String, Channel), SocketAddr>,
    overrides: BTreeMap<String, Box<ConfigEdit>>,
}

/// A change to a node's config before it starts.
type ConfigEdit = dyn Fn(&mut Config) + Send + Sync;

impl std::fmt::Debug for TestNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNet")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestNet {
    /// Makes a PKI for `specs` and starts every node in this process.
    ///
    /// # Panics
    /// If anything fails: this is test code.
    pub async fn start(specs: &[NodeSpec]) -> Self {
        let mut net = Self::prepare(specs);
        for s in specs {
            net.start_node(s.id).await;
        }
        net
    }

    /// Makes the PKI but starts nothing.
    ///
    /// # Panics
    /// If the PKI cannot be made.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn prepare(specs: &[NodeSpec]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let topology = Topology {
            network: "testnet".into(),
            roster_serial: 1,
            roster_validity_days: 30,
            cert_validity_days: 30,
            nodes: specs
                .iter()
                .map(|s| TopologyNode {
                    id: s.id.into(),
                    name: s.id.into(),
                    kind: s.kind.into(),
                    region_code: region_code(s.id).into(),
                    // A hub may build feeds (it needs `[[feeds]]` too); an
                    // authority may subscribe to them.
                    roles: match s.kind {
                        "HUB" => vec!["aggregator".into()],
                        "AUTHORITY" => vec!["subscriber".into()],
                        _ => vec![],
                    },
                    clearance: s.clearance.as_str().into(),
                    api: any,
                    peers: s.peers.iter().map(|p| (*p).to_owned()).collect(),
                    channels: s
                        .channels
                        .iter()
                        .map(|c| {
                            (
                                c.as_str().to_owned(),
                                TopologyChannel {
                                    listen: any,
                                    max_class: None,
                                },
                            )
                        })
                        .collect(),
                })
                .collect(),
        };
        sitrep_devpki::generate(&topology, &dir.path().join("pki")).expect("dev pki");
        Self {
            dir,
            specs: specs.to_vec(),
            slots: BTreeMap::new(),
            addrs: BTreeMap::new(),
            overrides: BTreeMap::new(),
        }
    }

    /// The PKI directory.
    #[must_use]
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// A node's `node.toml`.
    #[must_use]
    pub fn config_path(&self, id: &str) -> PathBuf {
        self.pki().join(id).join("node.toml")
    }

    /// A node's config as it will be started (with overrides applied).
    ///
    /// # Panics
    /// If the config does not load.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn config(&self, id: &str) -> Config {
        let mut c = Config::load_with_env(&self.config_path(id), Vec::new()).expect("config loads");
        if let Some(f) = self.overrides.get(id) {
            f(&mut c);
        }
        c
    }

    /// The API bearer token of `role` in `id`'s config.
    ///
    /// # Panics
    /// If the node has no API or no token for the role.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn api_token(&self, id: &str, role: sitrep_node::config::Role) -> String {
        self.config(id)
            .api
            .expect("the node has an API")
            .tokens
            .into_iter()
            .find(|(_, r)| *r == role)
            .map(|(t, _)| t)
            .expect("a token for the role")
    }

    /// Changes a node's config before its next start.
    pub fn override_config(&mut self, id: &str, f: impl Fn(&mut Config) + Send + Sync + 'static) {
        self.overrides.insert(id.to_owned(), Box::new(f));
    }

    /// Starts (or restarts) `id` in this process and rewires addresses.
    ///
    /// # Panics
    /// If it does not start.
    #[allow(clippy::expect_used)]
    pub async fn start_node(&mut self, id: &str) {
        self.start_node_with(id, None).await;
    }

    /// As [`Self::start_node`], with a frame recorder on its endpoints.
    ///
    /// # Panics
    /// If it does not start.
    #[allow(clippy::expect_used)]
    pub async fn start_node_with(&mut self, id: &str, recorder: Option<Arc<dyn FrameRecorder>>) {
        self.start_node_on(id, recorder, BTreeMap::new()).await;
    }

    /// As [`Self::start_node_with`], with the segment log of some channels'
    /// stores on the given directories (fault injection).
    ///
    /// # Panics
    /// If it does not start.
    #[allow(clippy::expect_used)]
    pub async fn start_node_on(
        &mut self,
        id: &str,
        recorder: Option<Arc<dyn FrameRecorder>>,
        log_dirs: BTreeMap<Channel, Arc<dyn sitrep_store::log::Dir>>,
    ) {
        let mut config = self.config(id);
        self.fill_peer_addresses(&mut config);
        let node = Node::start_with(config, recorder, log_dirs)
            .await
            .expect("node starts");
        for c in Channel::ALL {
            if let Some(a) = node.local_addr(c) {
                self.addrs.insert((id.to_owned(), c), a);
            }
        }
        self.slots.insert(id.to_owned(), Slot::Running(node));
        self.rewire();
    }

    fn fill_peer_addresses(&self, config: &mut Config) {
        for p in &mut config.peers {
            if let Some(a) = self.addrs.get(&(p.id.to_string(), p.channel)) {
                p.address = *a;
            }
        }
    }

    /// Tells every running in-process node where its peers are now.
    fn rewire(&self) {
        for slot in self.slots.values() {
            if let Slot::Running(node) = slot {
                for peer in node.peers() {
                    if let Some(a) = self.addrs.get(&(peer.peer.to_string(), peer.channel))
                        && *a != peer.address
                    {
                        node.set_peer_address(peer.channel, &peer.peer, *a);
                    }
                }
            }
        }
    }

    /// The running in-process node `id`.
    ///
    /// # Panics
    /// If it is not running in this process.
    #[must_use]
    pub fn node(&self, id: &str) -> &Node {
        match self.slots.get(id) {
            Some(Slot::Running(n)) => n,
            _ => panic!("node {id} is not running in this process"),
        }
    }

    /// Stops `id` gracefully.
    pub async fn stop(&mut self, id: &str) {
        match self.slots.insert(id.to_owned(), Slot::Stopped) {
            Some(Slot::Running(n)) => n.shutdown().await,
            Some(Slot::Child(mut c)) => {
                let _ = c.child.kill();
                let _ = c.child.wait();
            }
            _ => {}
        }
    }

    /// Restarts `id` in this process.
    pub async fn restart(&mut self, id: &str) {
        self.stop(id).await;
        self.start_node(id).await;
    }

    /// Runs `id` as a child process of `binary` (`sitrep node --config`),
    /// with its peers' current addresses, and waits for its ready lines.
    ///
    /// # Panics
    /// If it does not start.
    #[allow(clippy::expect_used)]
    pub fn spawn_child(&mut self, id: &str, binary: &Path) {
        let path = self.config_path(id);
        let text = std::fs::read_to_string(&path).expect("node.toml");
        let mut doc: toml::Table = text.parse().expect("toml");
        if let Some(toml::Value::Array(peers)) = doc.get_mut("peers") {
            for p in peers {
                let (Some(pid), Some(ch)) = (
                    p.get("id").and_then(|v| v.as_str()).map(str::to_owned),
                    p.get("channel").and_then(|v| v.as_str()).and_then(Channel::parse),
                ) else {
                    continue;
                };
                if let Some(a) = self.addrs.get(&(pid, ch))
                    && let Some(t) = p.as_table_mut()
                {
                    t.insert("address".into(), toml::Value::String(a.to_string()));
                }
            }
        }
        let run = path.with_file_name("node-run.toml");
        std::fs::write(&run, toml::to_string(&doc).expect("toml")).expect("write");
        let mut child = Command::new(binary)
            .args(["node", "--config"])
            .arg(&run)
            .env("SITREP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sitrep node");
        let stdout = child.stdout.take().expect("stdout");
        let mut addrs = BTreeMap::new();
        let want = self
            .specs
            .iter()
            .find(|s| s.id == id)
            .map_or(1, |s| s.channels.len());
        let mut api = None;
        let mut lines = BufReader::new(stdout).lines();
        // Channel lines first, then the API line (every test node has an API).
        while addrs.len() < want || api.is_none() {
            let line = lines
                .next()
                .expect("child exited before it was ready")
                .expect("read");
            // ready node=<id> channel=<c> addr=<a>
            let mut channel = None;
            let mut addr = None;
            for part in line.split_whitespace() {
                if let Some(c) = part.strip_prefix("channel=") {
                    channel = Channel::parse(c);
                }
                if let Some(a) = part.strip_prefix("addr=") {
                    addr = a.parse().ok();
                }
                if let Some(a) = part.strip_prefix("api=") {
                    api = Some(a.to_owned());
                }
            }
            if let (Some(c), Some(a)) = (channel, addr) {
                addrs.insert(c, a);
            }
        }
        for (c, a) in &addrs {
            self.addrs.insert((id.to_owned(), *c), *a);
        }
        self.slots
            .insert(id.to_owned(), Slot::Child(ChildNode { child, addrs, api }));
        self.rewire();
    }

    /// Sends SIGTERM to child `id` and waits (at most `timeout`) for it to exit.
    ///
    /// # Panics
    /// If `id` is not a child process, or it does not exit in time.
    #[allow(clippy::expect_used)]
    pub fn terminate_child(&mut self, id: &str, timeout: Duration) -> std::process::ExitStatus {
        let Some(Slot::Child(mut c)) = self.slots.insert(id.to_owned(), Slot::Stopped) else {
            panic!("{id} is not a child process");
        };
        let status = Command::new("kill")
            .args(["-TERM", &c.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.child.wait());
        });
        rx.recv_timeout(timeout)
            .expect("the node exits after SIGTERM")
            .expect("wait for the child")
    }

    /// Runs each of `ids` as a child process on addresses of its own that
    /// stay the same across restarts: starts them once to learn free
    /// addresses, pins those ([`Self::pin_child_addresses`]) and starts
    /// them again there, each now configured with its peers' addresses
    /// (a child reads its peers' addresses only when it starts).
    pub fn spawn_children_pinned(&mut self, ids: &[&str], binary: &Path) {
        for id in ids {
            self.spawn_child(id, binary);
        }
        for id in ids {
            self.pin_child_addresses(id);
        }
        for id in ids {
            self.kill_child(id);
        }
        for id in ids {
            self.spawn_child(id, binary);
        }
    }

    /// Writes the addresses child `id` is bound to (its channels' and its
    /// API's) into its `node.toml`, so that it starts on the same ones
    /// next time: its peers, and clients, keep reaching it across restarts.
    ///
    /// # Panics
    /// If `id` is not a running child process or its config cannot be written.
    #[allow(clippy::expect_used)]
    pub fn pin_child_addresses(&self, id: &str) {
        let Some(Slot::Child(c)) = self.slots.get(id) else {
            panic!("{id} is not a child process");
        };
        let path = self.config_path(id);
        let mut doc: toml::Table = std::fs::read_to_string(&path)
            .expect("read node.toml")
            .parse()
            .expect("toml");
        for (channel, addr) in &c.addrs {
            doc["channels"][channel.as_str()]
                .as_table_mut()
                .expect("channel table")
                .insert("listen".into(), addr.to_string().into());
        }
        if let Some(api) = c.api.as_deref().and_then(|a| a.strip_prefix("http://")) {
            doc["api"]
                .as_table_mut()
                .expect("api table")
                .insert("listen".into(), api.trim_end_matches('/').to_owned().into());
        }
        std::fs::write(&path, toml::to_string(&doc).expect("toml")).expect("write node.toml");
    }

    /// The API URL of child `id`.
    ///
    /// # Panics
    /// If `id` is not a child process.
    #[must_use]
    pub fn child_api(&self, id: &str) -> String {
        match self.slots.get(id) {
            Some(Slot::Child(c)) => c.api.clone().unwrap_or_default(),
            _ => panic!("{id} is not a child process"),
        }
    }

    /// The process id of child `id`, to signal it directly.
    ///
    /// # Panics
    /// If `id` is not a child process.
    #[must_use]
    pub fn child_pid(&self, id: &str) -> u32 {
        match self.slots.get(id) {
            Some(Slot::Child(c)) => c.child.id(),
            _ => panic!("{id} is not a child process"),
        }
    }

    /// SIGKILLs the child process `id` (no graceful anything) and reaps it;
    /// fine if it was already killed through [`Self::child_pid`].
    ///
    /// # Panics
    /// If `id` is not a child process.
    #[allow(clippy::expect_used)]
    pub fn kill_child(&mut self, id: &str) {
        match self.slots.insert(id.to_owned(), Slot::Stopped) {
            Some(Slot::Child(mut c)) => {
                let _ = c.child.kill();
                c.child.wait().expect("reap");
            }
            _ => panic!("{id} is not a child process"),
        }
    }

    /// The verified roster.
    ///
    /// # Panics
    /// If it does not verify.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn roster(&self) -> Roster {
        let admin = keyfile::read_verifying_key(&self.pki().join("admin.pub")).expect("admin.pub");
        let bytes = std::fs::read(self.pki().join("roster.bin")).expect("roster.bin");
        Roster::verify(&bytes, &admin, None, sitrep_node::clock::now_ms()).expect("roster verifies")
    }

    /// The administrator signs a new roster: `edit` changes the current one,
    /// the serial goes up by one, and it is written to `roster.bin` (where
    /// every node's config points). Returns the signed bytes.
    ///
    /// # Panics
    /// If the roster or the admin key cannot be read.
    #[allow(clippy::expect_used)]
    pub fn reissue_roster(&self, edit: impl FnOnce(&mut sitrep_proto::v1::Roster)) -> Vec<u8> {
        use sitrep_proto::Message as _;
        let path = self.pki().join("roster.bin");
        let signed =
            sitrep_proto::v1::SignedRoster::decode(std::fs::read(&path).expect("roster.bin").as_slice())
                .expect("signed roster");
        let mut raw = sitrep_proto::v1::Roster::decode(signed.roster.as_slice()).expect("roster");
        raw.serial += 1;
        edit(&mut raw);
        let admin = keyfile::read_signing_key(&self.pki().join("admin.key")).expect("admin.key");
        let bytes = sitrep_core::roster::sign(&raw, &admin);
        std::fs::write(&path, &bytes).expect("write roster.bin");
        bytes
    }

    /// A node's private keys, to seal envelopes as it would.
    ///
    /// # Panics
    /// If they cannot be read.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn keys(&self, id: &str) -> (SigningKey, HpkeSecretKey) {
        let dir = self.pki().join(id);
        (
            keyfile::read_signing_key(&dir.join("signing.key")).expect("signing key"),
            keyfile::read_hpke_key(&dir.join("hpke.key")).expect("hpke key"),
        )
    }

    /// An endpoint that presents `id`'s certificate on `channel`: for tests
    /// that play a misbehaving peer.
    ///
    /// # Panics
    /// If it cannot bind.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn impersonate(&self, id: &str, channel: Channel) -> ChannelEndpoint {
        let dir = self.pki().join(id);
        let identity = TlsIdentity::load(
            &dir.join(format!("{channel}-ca.crt")),
            &dir.join(format!("{channel}.crt")),
            &dir.join(format!("{channel}.key")),
        )
        .expect("identity");
        ChannelEndpoint::bind(
            channel,
            NodeId::new(id).expect("id"),
            "127.0.0.1:0".parse().expect("addr"),
            &identity,
            TransportLimits::default(),
            Arc::new(AllowAll),
            None,
        )
        .expect("bind")
    }

    /// Where `id` listens on `channel`.
    #[must_use]
    pub fn addr(&self, id: &str, channel: Channel) -> Option<SocketAddr> {
        self.addrs.get(&(id.to_owned(), channel)).copied()
    }

    /// Every file under `id`'s store directories, for scanning.
    #[must_use]
    pub fn store_files(&self, id: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.pki().join(id).join("data")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Shuts every node down.
    pub async fn shutdown(mut self) {
        let ids: Vec<String> = self.slots.keys().cloned().collect();
        for id in ids {
            self.stop(&id).await;
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for slot in self.slots.values_mut() {
            if let Slot::Child(c) = slot {
                let _ = c.child.kill();
                let _ = c.child.wait();
            }
        }
    }
}

/// A policy that lets any authenticated node talk (for impersonating endpoints).
#[derive(Debug)]
struct AllowAll;

impl PeerPolicy for AllowAll {
    fn check(&self, _: Channel, _: &NodeId) -> Result<(), String> {
        Ok(())
    }
}

/// Waits until `cond` holds, re-checking whenever `node`'s state changes.
///
/// # Errors
/// `Err` naming `what` if `timeout` passes first.
pub async fn wait_until(
    node: &Node,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<(), String> {
    let mut rx = node.watch();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        rx.mark_unchanged();
        if cond() {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(format!("node stopped while waiting for {what}")),
            Err(_) => {
                if cond() {
                    return Ok(());
                }
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
        }
    }
}

/// Region Uppsala's example report number `number`, SENSITIVE, in exercise
/// mode, at `precedence`, to `recipient`.
///
/// # Panics
/// If `recipient` is not a valid node id.
#[must_use]
#[allow(clippy::expect_used)]
pub fn report_to(recipient: &str, number: u32, precedence: Precedence) -> Submission {
    let mut report = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    report.report_number = number;
    Submission {
        author: "TiB".into(),
        label: Label::new(Class::Sensitive),
        precedence,
        mode: Mode::Exercise,
        recipients: vec![NodeId::new(recipient).expect("a valid node id")],
        expires_ms: None,
        content: Content::Report(report),
    }
}

/// Whether every recipient of `id`, sent from `node`, has its receipt back.
///
/// # Panics
/// If the node's store cannot be read.
#[must_use]
#[allow(clippy::expect_used)]
pub fn all_delivered(node: &Node, id: &MessageId) -> bool {
    node.delivery(id)
        .expect("delivery states")
        .iter()
        .all(|d| d.state == sitrep_store::DeliveryState::Delivered)
}
