//! Development PKI for sitrep: everything a test network of nodes needs, from a
//! topology file. This is what `sitrep dev-pki`, `sitrep demo` and `sitrep-testkit` use.
//!
//! **Development and tests only, never production.** Every private key it makes
//! (administrator, channel CAs, nodes) is written unencrypted next to the configs, the
//! CAs are made on the spot with no ceremony and no revocation, and the API tokens are
//! written into `node.toml` in clear. A real network gets its roster signed offline with
//! `sitrep roster sign` and its certificates from its own CA.
//!
//! Writes, under `--out DIR`:
//! - `admin.key`, `admin.pub`: the network administrator's Ed25519 key.
//! - `roster.bin`: the signed roster.
//! - `ca/<channel>-ca.crt` and `ca/<channel>-ca.key`: one CA per channel.
//! - per node, `<id>/`: `node.toml`, `signing.key` (Ed25519), `hpke.key`
//!   (X25519), and per channel `<channel>.crt`, `<channel>.key`, `<channel>-ca.crt`.
//!
//! Paths in `node.toml` are relative to it, so `sitrep node --config
//! DIR/<id>/node.toml` runs as it is.
//!
//! Not here: reading or checking a node's configuration (`sitrep-node`), anything a
//! running node needs. It is kept out of the node library (`sitrep-node`) so that the
//! node does not link a certificate generator.
//!
//! Main items: [`Topology`] (with [`TopologyNode`], [`TopologyChannel`]),
//! [`read_topology`], [`generate`], [`write_new`], [`DevPkiError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use sitrep_core::policy::check_channel_max;
use sitrep_core::{Channel, Class, NodeId};
use sitrep_crypto::{HpkeSecretKey, SigningKey, keyfile};
use sitrep_proto::v1 as pb;
use time::OffsetDateTime;

const DAY_MS: i64 = 86_400_000;

/// A dev PKI could not be made: names the topology key or file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DevPkiError(String);

type Result<T, E = DevPkiError> = std::result::Result<T, E>;

macro_rules! err {
    ($($t:tt)*) => { DevPkiError(format!($($t)*)) };
}

macro_rules! ensure {
    ($cond:expr, $($t:tt)*) => { if !$cond { return Err(err!($($t)*)); } };
}

impl From<sitrep_crypto::CryptoError> for DevPkiError {
    fn from(e: sitrep_crypto::CryptoError) -> Self {
        Self(e.to_string())
    }
}

impl From<keyfile::KeyFileError> for DevPkiError {
    fn from(e: keyfile::KeyFileError) -> Self {
        Self(e.to_string())
    }
}

impl From<rcgen::Error> for DevPkiError {
    fn from(e: rcgen::Error) -> Self {
        Self(format!("certificate: {e}"))
    }
}

/// Adds context to any error.
trait Ctx<T> {
    fn ctx<S: std::fmt::Display>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for std::result::Result<T, E> {
    fn ctx<S: std::fmt::Display>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| DevPkiError(format!("{}: {e}", f())))
    }
}

/// A topology file: the network to make a PKI for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Network name.
    pub network: String,
    /// Serial of the roster to sign.
    #[serde(default = "one")]
    pub roster_serial: u64,
    /// Roster validity from now.
    #[serde(default = "year")]
    pub roster_validity_days: u32,
    /// Certificate validity from now.
    #[serde(default = "year")]
    pub cert_validity_days: u32,
    /// The nodes.
    pub nodes: Vec<TopologyNode>,
}

fn one() -> u64 {
    1
}

fn year() -> u32 {
    365
}

/// One node of a topology.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyNode {
    /// Node id.
    pub id: String,
    /// Human name.
    pub name: String,
    /// REGION, AUTHORITY, HUB, ...
    pub kind: String,
    /// SCB county code, for regions.
    #[serde(default)]
    pub region_code: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Clearance class.
    pub clearance: String,
    /// HTTP API listen address.
    pub api: SocketAddr,
    /// Direct peers.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Channels: `open`, `secure`.
    pub channels: BTreeMap<String, TopologyChannel>,
}

/// A node's channel in a topology.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyChannel {
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Highest class on this channel; defaults to min(channel ceiling, clearance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_class: Option<String>,
}

/// A node of the topology, validated.
struct Node {
    id: NodeId,
    name: String,
    kind: pb::NodeKind,
    region_code: String,
    roles: Vec<String>,
    clearance: Class,
    api: SocketAddr,
    peers: Vec<NodeId>,
    /// channel → (listen, max_class)
    channels: BTreeMap<Channel, (SocketAddr, Class)>,
}

fn validate(t: Topology) -> Result<(Topology, Vec<Node>)> {
    ensure!(!t.nodes.is_empty(), "topology: no nodes");
    ensure!(
        t.roster_validity_days > 0,
        "topology: roster_validity_days must be at least 1"
    );
    ensure!(
        t.cert_validity_days > 0,
        "topology: cert_validity_days must be at least 1"
    );
    let mut nodes = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, n) in t.nodes.iter().enumerate() {
        let at = format!("topology nodes[{i}]");
        let id = NodeId::new(&n.id).ctx(|| format!("{at}.id"))?;
        ensure!(seen.insert(id.clone()), "{at}.id: {id} appears twice");
        let kind = pb::NodeKind::from_str_name(&n.kind)
            .filter(|k| *k != pb::NodeKind::Unspecified)
            .ok_or_else(|| {
                err!(
                    "{at}.kind: {:?} is not REGION, AUTHORITY, HUB, COUNTY_BOARD, MUNICIPALITY or HOSPITAL",
                    n.kind
                )
            })?;
        let clearance = Class::parse(&n.clearance).ok_or_else(|| {
            err!(
                "{at}.clearance: {:?} is not a class (OPEN ... TOP_SECRET)",
                n.clearance
            )
        })?;
        ensure!(
            !n.channels.is_empty(),
            "{at}.channels: a node needs at least one channel"
        );
        let mut channels = BTreeMap::new();
        for (name, c) in &n.channels {
            let channel = Channel::parse(name)
                .ok_or_else(|| err!("{at}.channels.{name}: not a channel (open or secure)"))?;
            let max = match &c.max_class {
                Some(m) => Class::parse(m)
                    .ok_or_else(|| err!("{at}.channels.{name}.max_class: {m:?} is not a class"))?,
                None => channel.ceiling().min(clearance),
            };
            check_channel_max(channel, max).ctx(|| format!("{at}.channels.{name}.max_class"))?;
            ensure!(
                max <= clearance,
                "{at}.channels.{name}.max_class: {max} is above the node's clearance {clearance}"
            );
            channels.insert(channel, (c.listen, max));
        }
        let peers = n
            .peers
            .iter()
            .map(|p| NodeId::new(p).ctx(|| format!("{at}.peers")))
            .collect::<Result<Vec<_>>>()?;
        nodes.push(Node {
            id,
            name: n.name.clone(),
            kind,
            region_code: n.region_code.clone(),
            roles: n.roles.clone(),
            clearance,
            api: n.api,
            peers,
            channels,
        });
    }
    for n in &nodes {
        for p in &n.peers {
            let peer = nodes
                .iter()
                .find(|m| &m.id == p)
                .ok_or_else(|| err!("topology node {}: peer {p} is not a node of the topology", n.id))?;
            ensure!(
                n.channels.keys().any(|c| peer.channels.contains_key(c)),
                "topology node {}: peer {p} shares no channel with it",
                n.id
            );
        }
    }
    Ok((t, nodes))
}

/// Reads a topology file.
///
/// # Errors
/// [`DevPkiError`] naming the file and the problem.
pub fn read_topology(path: &Path) -> Result<Topology> {
    let text = std::fs::read_to_string(path).ctx(|| format!("topology {}", path.display()))?;
    toml::from_str(&text).ctx(|| format!("topology {}", path.display()))
}

/// Writes a development PKI for `topology` into `out` (which must not exist
/// or be empty) and returns a one-line summary.
///
/// # Errors
/// [`DevPkiError`] naming the topology key or file and the problem.
pub fn generate(topology: &Topology, out: &Path) -> Result<String> {
    let (t, nodes) = validate(topology.clone())?;
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .ctx(|| format!("--out {}", out.display()))?
            .next()
            .is_none();
        ensure!(
            empty,
            "--out {}: exists and is not empty; refusing to overwrite a PKI",
            out.display()
        );
    }
    private_dir(&out.join("ca")).ctx(|| format!("--out {}", out.display()))?;
    let now = now_ms();

    let admin = SigningKey::generate()?;
    keyfile::write_signing_key(&out.join("admin.key"), &admin)?;
    keyfile::write_verifying_key(&out.join("admin.pub"), &admin.verifying_key())?;

    let not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let not_after = OffsetDateTime::now_utc() + time::Duration::days(i64::from(t.cert_validity_days));

    // One CA per channel in use.
    let used: BTreeSet<Channel> = nodes.iter().flat_map(|n| n.channels.keys().copied()).collect();
    let mut cas = BTreeMap::new();
    for channel in used {
        let key = KeyPair::generate()?;
        write_new(
            &out.join(format!("ca/{channel}-ca.key")),
            key.serialize_pem().as_bytes(),
        )?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(
            DnType::CommonName,
            format!("{} {channel} channel CA (development only)", t.network),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = not_before;
        p.not_after = not_after;
        let ca = CertifiedIssuer::self_signed(p, key)?;
        write_new(&out.join(format!("ca/{channel}-ca.crt")), ca.pem().as_bytes())?;
        cas.insert(channel, ca);
    }

    let mut entries = Vec::new();
    for n in &nodes {
        let dir = out.join(n.id.as_str());
        private_dir(&dir).ctx(|| format!("{}", dir.display()))?;
        let signing = SigningKey::generate()?;
        let hpke = HpkeSecretKey::generate()?;
        keyfile::write_signing_key(&dir.join("signing.key"), &signing)?;
        keyfile::write_hpke_key(&dir.join("hpke.key"), &hpke)?;
        for channel in n.channels.keys() {
            let ca = cas.get(channel).ok_or_else(|| err!("no CA for {channel}"))?;
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, n.id.as_str());
            p.subject_alt_names = vec![
                SanType::URI(n.id.uri_san().try_into()?),
                SanType::DnsName(format!("{}.sitrep.invalid", n.id).try_into()?),
            ];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.use_authority_key_identifier_extension = true;
            p.not_before = not_before;
            p.not_after = not_after;
            let cert = p.signed_by(&key, ca)?;
            write_new(&dir.join(format!("{channel}.crt")), cert.pem().as_bytes())?;
            write_new(
                &dir.join(format!("{channel}.key")),
                key.serialize_pem().as_bytes(),
            )?;
            write_new(&dir.join(format!("{channel}-ca.crt")), ca.pem().as_bytes())?;
        }
        write_new(&dir.join("node.toml"), node_config(n, &nodes)?.as_bytes())?;
        entries.push(pb::NodeEntry {
            id: n.id.to_string(),
            name: n.name.clone(),
            kind: n.kind as i32,
            roles: n.roles.clone(),
            clearance: n.clearance.to_proto() as i32,
            channels: n.channels.keys().map(|c| c.to_proto() as i32).collect(),
            signing_key: signing.verifying_key().as_bytes().to_vec(),
            hpke_key: hpke.public_key().as_bytes().to_vec(),
            region_code: n.region_code.clone(),
        });
    }

    let roster = pb::Roster {
        serial: t.roster_serial,
        issued_unix_ms: now,
        not_before_unix_ms: now - DAY_MS,
        not_after_unix_ms: now + i64::from(t.roster_validity_days) * DAY_MS,
        nodes: entries,
        network: t.network.clone(),
    };
    let signed = sitrep_core::roster::sign(&roster, &admin);
    sitrep_core::Roster::verify(&signed, &admin.verifying_key(), None, now)
        .ctx(|| "the roster just signed")?;
    write_new(&out.join("roster.bin"), &signed)?;
    write_new(&out.join("README.md"), readme(&t.network).as_bytes())?;
    Ok(format!(
        "wrote a development PKI for {} ({} nodes, roster serial {}) to {}",
        t.network,
        nodes.len(),
        t.roster_serial,
        out.display()
    ))
}

/// Creates `dir` and its missing parents `0700` (they hold private keys).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes a new file (never overwrites), `0600` because several are private keys.
///
/// # Errors
/// [`DevPkiError`] naming the file.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).ctx(|| format!("{}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .ctx(|| format!("{}", path.display()))
}

/// Milliseconds since the Unix epoch (a clock before 1970 reads as 0), for the roster's
/// issue time and validity.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// 24 random bytes, hex: an API token.
fn random_token() -> Result<String> {
    let mut b = [0u8; 24];
    sitrep_crypto::random_bytes(&mut b)?;
    Ok(hex::encode(b))
}

fn node_config(n: &Node, all: &[Node]) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} ({}): generated by `sitrep dev-pki`. DEVELOPMENT ONLY.",
        n.id, n.name
    );
    let _ = writeln!(s, "# Paths are relative to this file.\n");
    let _ = writeln!(s, "[node]");
    let _ = writeln!(s, "id = \"{}\"", n.id);
    let _ = writeln!(s, "data_dir = \"data\"");
    let _ = writeln!(s, "roster = \"../roster.bin\"");
    let _ = writeln!(s, "admin_key = \"../admin.pub\"");
    let _ = writeln!(s, "signing_key = \"signing.key\"");
    let _ = writeln!(s, "hpke_key = \"hpke.key\"");
    for (channel, (listen, max)) in &n.channels {
        let _ = writeln!(s, "\n[channels.{channel}]");
        let _ = writeln!(s, "listen = \"{listen}\"");
        let _ = writeln!(s, "ca = \"{channel}-ca.crt\"");
        let _ = writeln!(s, "cert = \"{channel}.crt\"");
        let _ = writeln!(s, "key = \"{channel}.key\"");
        let _ = writeln!(s, "max_class = \"{max}\"");
        let _ = writeln!(s, "store = \"data/{channel}\"");
    }
    let mut defaults = BTreeMap::new();
    for p in &n.peers {
        let Some(peer) = all.iter().find(|m| &m.id == p) else {
            continue;
        };
        for (channel, (addr, _)) in &peer.channels {
            if n.channels.contains_key(channel) {
                let _ = writeln!(s, "\n[[peers]]");
                let _ = writeln!(s, "id = \"{p}\"");
                let _ = writeln!(s, "channel = \"{channel}\"");
                let _ = writeln!(s, "address = \"{addr}\"");
                defaults.entry(*channel).or_insert_with(Vec::new).push(p.clone());
            }
        }
    }
    // A node with a single peer on a channel sends everything there.
    let _ = writeln!(s, "\n[routes.default]");
    for (channel, peers) in &defaults {
        if let [only] = peers.as_slice() {
            let _ = writeln!(s, "{channel} = \"{only}\"");
        }
    }
    let _ = writeln!(s, "\n[api]");
    let _ = writeln!(s, "listen = \"{}\"", n.api);
    let _ = writeln!(s, "\n[api.tokens]");
    for role in ["reporter", "reader", "operator"] {
        let _ = writeln!(s, "{role} = \"{}\"", random_token()?);
    }
    Ok(s)
}

fn readme(network: &str) -> String {
    format!(
        "# Development PKI for {network}\n\n\
         **For development and tests only.** Made by `sitrep dev-pki`. Every private key here\n\
         (administrator, CAs, nodes) is unencrypted and, if this directory is in git, public.\n\
         Never use these keys, certificates or tokens for real traffic.\n\n\
         - `admin.key`, `admin.pub`: network administrator key (signs the roster).\n\
         - `roster.bin`: the signed roster. Check it with\n  \
           `sitrep roster verify --roster roster.bin --admin-key admin.pub`.\n\
         - `ca/`: one CA per channel.\n\
         - `<node>/node.toml`: that node's config; `<node>/*.key`, `*.crt`: its keys and certificates.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(extra: &str) -> Result<(Topology, Vec<Node>)> {
        let text = format!(
            "network = \"t\"\n{extra}\n[[nodes]]\nid = \"a\"\nname = \"A\"\nkind = \"REGION\"\nclearance = \"SECRET\"\n\
             api = \"127.0.0.1:1\"\npeers = [\"b\"]\nchannels.open = {{ listen = \"127.0.0.1:2\" }}\n\
             [[nodes]]\nid = \"b\"\nname = \"B\"\nkind = \"HUB\"\nclearance = \"SENSITIVE\"\n\
             api = \"127.0.0.1:3\"\nchannels.open = {{ listen = \"127.0.0.1:4\" }}\n"
        );
        validate(toml::from_str(&text).ctx(|| "topology")?)
    }

    #[test]
    fn a_valid_topology_validates() {
        let (_, nodes) = topo("").expect("valid");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].channels[&Channel::Open].1, Class::Sensitive);
    }

    #[test]
    fn bad_topologies_name_the_key() {
        let e = topo("bogus = 1").err().expect("unknown key refused");
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let text = "network = \"t\"\n[[nodes]]\nid = \"A\"\nname = \"A\"\nkind = \"REGION\"\nclearance = \"SECRET\"\napi = \"127.0.0.1:1\"\nchannels.open = { listen = \"127.0.0.1:2\" }\n";
        let e = validate(toml::from_str(text).expect("parses"))
            .err()
            .expect("bad id refused");
        assert!(format!("{e:#}").contains("nodes[0].id"), "{e:#}");
        let text = text
            .replace("id = \"A\"", "id = \"a\"")
            .replace("channels.open", "channels.secure");
        let text = text.replace("127.0.0.1:2\" }", "127.0.0.1:2\", max_class = \"SENSITIVE\" }");
        let e = validate(toml::from_str(&text).expect("parses"))
            .err()
            .expect("bad max refused");
        assert!(format!("{e:#}").contains("channels.secure.max_class"), "{e:#}");
    }
}
