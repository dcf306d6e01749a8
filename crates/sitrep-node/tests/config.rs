//! Config validation: every bad value stops start-up with the key named.

use std::path::{Path, PathBuf};

use sitrep_devpki::{Topology, TopologyChannel, TopologyNode};
use sitrep_node::{Config, Node, NodeError};

fn pki(dir: &Path) -> PathBuf {
    let any = "127.0.0.1:0".parse().expect("addr");
    let node = |id: &str, peers: Vec<String>, clearance: &str| TopologyNode {
        id: id.into(),
        name: id.into(),
        kind: "REGION".into(),
        region_code: String::new(),
        roles: vec![],
        clearance: clearance.into(),
        api: any,
        peers,
        channels: [(
            "open".to_owned(),
            TopologyChannel {
                listen: any,
                max_class: None,
            },
        )]
        .into(),
    };
    let t = Topology {
        network: "t".into(),
        roster_serial: 1,
        roster_validity_days: 2,
        cert_validity_days: 2,
        nodes: vec![
            node("region-a", vec!["hub".into()], "SENSITIVE"),
            node("hub", vec!["region-a".into()], "SENSITIVE"),
        ],
    };
    let out = dir.join("pki");
    sitrep_devpki::generate(&t, &out).expect("pki");
    out.join("region-a").join("node.toml")
}

/// Loads the config after replacing `from` with `to` in its text.
fn load_edited(path: &Path, from: &str, to: &str) -> Result<Config, sitrep_node::ConfigError> {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "fixture lacks {from:?}");
    let edited = path.with_file_name("edited.toml");
    std::fs::write(&edited, text.replacen(from, to, 1)).expect("write");
    Config::load_with_env(&edited, Vec::new())
}

fn key_of(r: Result<Config, sitrep_node::ConfigError>) -> (String, String) {
    let e = r.expect_err("must be refused");
    (e.key.clone(), e.to_string())
}

#[test]
fn the_generated_config_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Config::load_with_env(&pki(dir.path()), Vec::new()).expect("loads");
    assert_eq!(c.id.as_str(), "region-a");
    assert_eq!(c.peers.len(), 1);
    assert!(c.api.is_some());
}

#[test]
fn bad_values_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let (key, msg) = key_of(load_edited(&p, "cert = \"open.crt\"", "cert = \"missing.crt\""));
    assert_eq!(key, "channels.open.cert");
    assert!(msg.contains("missing.crt") && msg.contains("not found"), "{msg}");

    let (key, _) = key_of(load_edited(&p, "channel = \"open\"", "channel = \"secure\""));
    assert_eq!(
        key, "peers[0].channel",
        "a peer on a channel this node does not configure"
    );

    let (key, _) = key_of(load_edited(
        &p,
        "[api]",
        "[limits]\nidle_timeout = \"soon\"\n\n[api]",
    ));
    assert!(key.starts_with("file "), "{key}");
    let msg = load_edited(&p, "[api]", "[limits]\nidle_timeout = \"soon\"\n\n[api]")
        .expect_err("bad duration")
        .to_string();
    assert!(msg.contains("idle_timeout"), "the message names the key: {msg}");

    let msg = load_edited(&p, "[api]", "[bogus]\nx = 1\n\n[api]")
        .expect_err("unknown section")
        .to_string();
    assert!(msg.contains("bogus"), "{msg}");
    let msg = load_edited(
        &p,
        "data_dir = \"data\"",
        "data_dir = \"data\"\ncolour = \"blue\"",
    )
    .expect_err("unknown key")
    .to_string();
    assert!(msg.contains("colour"), "{msg}");

    let (key, _) = key_of(load_edited(
        &p,
        "max_class = \"SENSITIVE\"",
        "max_class = \"SECRET\"",
    ));
    assert_eq!(key, "channels.open.max_class");
    let (key, _) = key_of(load_edited(
        &p,
        "[api]",
        "[limits]\nkeep_alive = \"60s\"\n\n[api]",
    ));
    assert_eq!(key, "limits.keep_alive");
    let (key, _) = key_of(load_edited(
        &p,
        "listen = \"127.0.0.1:0\"",
        "listen = \"nowhere\"",
    ));
    assert_eq!(key, "channels.open.listen");
    let (key, _) = key_of(load_edited(&p, "open = \"hub\"", "open = \"elsewhere\""));
    assert_eq!(key, "routes.default.open");
    let (key, _) = key_of(load_edited(
        &p,
        "[channels.open]",
        "[channels.open]\ncrl = \"x.crl\"",
    ));
    assert_eq!(
        key, "channels.open.crl",
        "CRL configured but not implemented: refuse, never ignore"
    );
}

#[test]
fn environment_overrides_config_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let env = vec![
        ("SITREP_LIMITS__HOP_LIMIT".to_owned(), "3".to_owned()),
        ("SITREP_API__LISTEN".to_owned(), "127.0.0.1:9999".to_owned()),
        // Client variables are not config keys and must not break the node.
        ("SITREP_API".to_owned(), "http://127.0.0.1:7400".to_owned()),
        ("SITREP_TOKEN".to_owned(), "secret".to_owned()),
    ];
    let c = Config::load_with_env(&p, env).expect("loads");
    assert_eq!(c.limits.hop_limit, 3);
    assert_eq!(c.api.expect("api").listen.port(), 9999);
    let e = Config::load_with_env(
        &p,
        vec![("SITREP_LIMITS__HOP_LIMIT".to_owned(), "many".to_owned())],
    )
    .expect_err("bad override");
    assert!(e.to_string().contains("hop_limit"), "{e}");
}

#[tokio::test]
async fn a_node_id_not_in_the_roster_or_a_foreign_key_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let mut c = Config::load_with_env(&p, Vec::new()).expect("loads");
    c.id = sitrep_core::NodeId::new("region-z").expect("id");
    match Node::start(c).await {
        Err(NodeError::Config(e)) => {
            assert_eq!(e.key, "node.id");
            assert!(e.problem.contains("not in the roster"), "{e}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // The hub's signing key in the region's config: refused, never run as someone else.
    let mut c = Config::load_with_env(&p, Vec::new()).expect("loads");
    c.signing_key = p
        .parent()
        .expect("dir")
        .parent()
        .expect("pki")
        .join("hub/signing.key");
    match Node::start(c).await {
        Err(NodeError::Config(e)) => assert_eq!(e.key, "node.signing_key"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// Found by fuzzing (`fuzz/run long config`): the `config` crate reads a
/// top-level key, and a variable's name, as a path where `[N]` indexes an
/// array it grows to N, so this one-line file made start-up abort allocating
/// 8.8 PB. Such keys are refused with the file or the variable named.
#[test]
fn a_key_that_indexes_far_is_refused_not_allocated() {
    let dir = tempfile::tempdir().expect("tempdir");
    for text in [
        " \"4_frbd[92222222222222]\"=1",
        "\"limits[-92222222222222]\" = 1",
        "\"limits.max_streams\" = 5",
    ] {
        let e = Config::from_toml(text, "file fuzz.toml", dir.path(), Vec::new()).expect_err(text);
        assert_eq!(e.key, "file fuzz.toml", "{text}");
        assert!(e.problem.contains("is not a section of the config"), "{e}");
    }
    let p = pki(dir.path());
    for name in [
        "SITREP_LIMITS__HOP_LIMIT[92222222222222]",
        "SITREP_API__TOKENS.READER",
    ] {
        let e = Config::load_with_env(&p, vec![(name.to_owned(), "1".to_owned())]).expect_err(name);
        assert_eq!(e.key, format!("environment variable {name}"));
    }
}
