//! `sitrep roster verify|show|sign`.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sitrep_core::{Channel, Class, Roster};
use sitrep_crypto::keyfile;
use sitrep_proto::v1 as pb;

use crate::util::{now_ms, parse_rfc3339, rfc3339};

/// A roster in TOML: what `roster show` prints and `roster sign` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RosterFile {
    pub(crate) network: String,
    pub(crate) serial: u64,
    pub(crate) issued: String,
    pub(crate) not_before: String,
    pub(crate) not_after: String,
    #[serde(default)]
    pub(crate) nodes: Vec<RosterFileNode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RosterFileNode {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) region_code: String,
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    pub(crate) clearance: String,
    pub(crate) channels: Vec<String>,
    /// Ed25519 public key, hex.
    pub(crate) signing_key: String,
    /// X25519 public key, hex.
    pub(crate) hpke_key: String,
}

impl RosterFile {
    fn from_proto(r: &pb::Roster) -> Self {
        let name = |v: i32| -> String {
            pb::NodeKind::try_from(v).map_or_else(|_| format!("UNKNOWN({v})"), |k| k.as_str_name().to_owned())
        };
        Self {
            network: r.network.clone(),
            serial: r.serial,
            issued: rfc3339(r.issued_unix_ms),
            not_before: rfc3339(r.not_before_unix_ms),
            not_after: rfc3339(r.not_after_unix_ms),
            nodes: r
                .nodes
                .iter()
                .map(|n| RosterFileNode {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    kind: name(n.kind),
                    region_code: n.region_code.clone(),
                    roles: n.roles.clone(),
                    clearance: Class::from_proto(n.clearance)
                        .map_or_else(|| format!("UNKNOWN({})", n.clearance), |c| c.as_str().to_owned()),
                    channels: n
                        .channels
                        .iter()
                        .map(|c| {
                            Channel::from_proto(*c).map_or_else(|| format!("unknown({c})"), |c| c.to_string())
                        })
                        .collect(),
                    signing_key: hex::encode(&n.signing_key),
                    hpke_key: hex::encode(&n.hpke_key),
                })
                .collect(),
        }
    }

    fn to_proto(&self) -> anyhow::Result<pb::Roster> {
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let at = || format!("nodes[{i}] ({})", n.id);
            let kind = pb::NodeKind::from_str_name(&n.kind)
                .filter(|k| *k != pb::NodeKind::Unspecified)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: kind {:?} is not one of REGION, AUTHORITY, HUB, ...",
                        at(),
                        n.kind
                    )
                })?;
            let clearance = Class::parse(&n.clearance)
                .ok_or_else(|| anyhow!("{}: clearance {:?} is not a class", at(), n.clearance))?;
            let channels = n
                .channels
                .iter()
                .map(|c| {
                    Channel::parse(c)
                        .map(|c| c.to_proto() as i32)
                        .ok_or_else(|| anyhow!("{}: channel {c:?} is not open or secure", at()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            nodes.push(pb::NodeEntry {
                id: n.id.clone(),
                name: n.name.clone(),
                kind: kind as i32,
                roles: n.roles.clone(),
                clearance: clearance.to_proto() as i32,
                channels,
                signing_key: hex::decode(&n.signing_key).with_context(|| format!("{}: signing_key", at()))?,
                hpke_key: hex::decode(&n.hpke_key).with_context(|| format!("{}: hpke_key", at()))?,
                region_code: n.region_code.clone(),
            });
        }
        Ok(pb::Roster {
            serial: self.serial,
            issued_unix_ms: parse_rfc3339(&self.issued).context("issued")?,
            not_before_unix_ms: parse_rfc3339(&self.not_before).context("not_before")?,
            not_after_unix_ms: parse_rfc3339(&self.not_after).context("not_after")?,
            nodes,
            network: self.network.clone(),
        })
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("roster {}", path.display()))
}

pub(crate) fn verify(roster: &Path, admin_key: &Path) -> anyhow::Result<()> {
    let admin = keyfile::read_verifying_key(admin_key)?;
    let bytes = read(roster)?;
    let now = now_ms()?;
    let r =
        Roster::verify(&bytes, &admin, None, now).with_context(|| format!("roster {}", roster.display()))?;
    println!(
        "roster {}: valid; network {}, serial {}, {} nodes, valid until {}",
        roster.display(),
        r.network,
        r.serial,
        r.len(),
        rfc3339(r.not_after_ms)
    );
    Ok(())
}

pub(crate) fn show(roster: &Path) -> anyhow::Result<()> {
    let bytes = read(roster)?;
    let signed = pb::SignedRoster::decode(bytes.as_slice())
        .with_context(|| format!("roster {}: not a signed roster", roster.display()))?;
    let raw = pb::Roster::decode(signed.roster.as_slice())
        .with_context(|| format!("roster {}: body does not decode", roster.display()))?;
    print!("{}", toml::to_string_pretty(&RosterFile::from_proto(&raw))?);
    Ok(())
}

pub(crate) fn sign(input: &Path, admin_key: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("roster source {}", input.display()))?;
    let file: RosterFile =
        toml::from_str(&text).with_context(|| format!("roster source {}", input.display()))?;
    let raw = file
        .to_proto()
        .with_context(|| format!("roster source {}", input.display()))?;
    let admin = keyfile::read_signing_key(admin_key)?;
    let signed = sitrep_core::roster::sign(&raw, &admin);
    // Check what we produce before anyone relies on it.
    let now = now_ms()?;
    if let Err(e) = Roster::verify(&signed, &admin.verifying_key(), None, now) {
        bail!("the signed roster would be refused: {e}");
    }
    sitrep_devpki::write_new(out, &signed)?;
    println!("{}", out.display());
    Ok(())
}
