//! `sitrep dev-pki` and `sitrep roster` driven through the real binary.

use std::path::Path;
use std::process::Command;

use sitrep_core::{Class, ContentType, Draft, Label, Mode, NodeId, Precedence, Roster, envelope};
use sitrep_crypto::keyfile;
use x509_parser::prelude::*;

const TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/demo/topology.toml");
const NODES: [&str; 6] = [
    "nspl-hub",
    "region-uppsala",
    "region-stockholm",
    "region-gotland",
    "socialstyrelsen",
    "msb",
];

fn sitrep(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(args)
        .output()
        .expect("run sitrep")
}

fn dev_pki(out: &Path) {
    let o = sitrep(&[
        "dev-pki",
        "--topology",
        TOPOLOGY,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(
        o.status.success(),
        "dev-pki failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("range")
}

fn roster_verify(dir: &Path, admin: &Path) -> std::process::Output {
    sitrep(&[
        "roster",
        "verify",
        "--roster",
        dir.join("roster.bin").to_str().expect("utf-8"),
        "--admin-key",
        admin.to_str().expect("utf-8"),
    ])
}

/// The certificate chains to its channel CA (signature checked) and names the node in its URI SAN.
fn check_cert(dir: &Path, node: &str, channel: &str) {
    let ca_pem = std::fs::read(dir.join(format!("ca/{channel}-ca.crt"))).expect("ca");
    let cert_pem = std::fs::read(dir.join(format!("{node}/{channel}.crt"))).expect("cert");
    let (_, ca_pem) = parse_x509_pem(&ca_pem).expect("ca pem");
    let (_, cert_pem) = parse_x509_pem(&cert_pem).expect("cert pem");
    let ca = ca_pem.parse_x509().expect("ca der");
    let cert = cert_pem.parse_x509().expect("cert der");
    assert!(ca.is_ca());
    cert.verify_signature(Some(ca.public_key()))
        .expect("node cert signed by its channel CA");
    assert!(cert.validity().is_valid());
    let san = cert.subject_alternative_name().expect("ext").expect("has SAN");
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| {
            if let GeneralName::URI(u) = g {
                Some(*u)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(uris, [format!("urn:sitrep:node:{node}").as_str()]);
}

#[test]
fn dev_pki_twice_makes_two_working_pkis() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    dev_pki(&a);
    dev_pki(&b);

    for dir in [&a, &b] {
        let o = roster_verify(dir, &dir.join("admin.pub"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("serial 1, 6 nodes"));
        let admin = keyfile::read_verifying_key(&dir.join("admin.pub")).expect("admin.pub");
        let roster = Roster::verify(
            &std::fs::read(dir.join("roster.bin")).expect("roster"),
            &admin,
            None,
            now_ms(),
        )
        .expect("roster verifies");
        for node in NODES {
            let entry = roster.node_str(node).expect("node in roster");
            // The keys beside node.toml are the ones in the roster.
            let sk =
                keyfile::read_signing_key(&dir.join(format!("{node}/signing.key"))).expect("signing key");
            let hk = keyfile::read_hpke_key(&dir.join(format!("{node}/hpke.key"))).expect("hpke key");
            assert_eq!(entry.signing_key, sk.verifying_key());
            assert_eq!(entry.hpke_key, hk.public_key());
            let config = std::fs::read_to_string(dir.join(format!("{node}/node.toml"))).expect("node.toml");
            assert!(config.contains(&format!("id = \"{node}\"")));
            for channel in entry.channels.iter() {
                check_cert(dir, node, channel.as_str());
            }
        }
        // Open-only nodes have no secure certificate.
        assert!(!dir.join("msb/secure.crt").exists());
        assert!(dir.join("socialstyrelsen/secure.crt").exists());
    }

    // The two PKIs are independent: one's roster does not verify with the other's admin key.
    let o = roster_verify(&a, &b.join("admin.pub"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("signature does not verify"), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line reason: {err}");

    // A report sealed with PKI a's keys opens at its recipient in a, and not with b's keys.
    let load = |dir: &Path| {
        let admin = keyfile::read_verifying_key(&dir.join("admin.pub")).expect("admin");
        Roster::verify(
            &std::fs::read(dir.join("roster.bin")).expect("roster"),
            &admin,
            None,
            now_ms(),
        )
        .expect("ok")
    };
    let (ra, rb) = (load(&a), load(&b));
    let signer = keyfile::read_signing_key(&a.join("region-uppsala/signing.key")).expect("key");
    let now = now_ms();
    let sealed = envelope::seal(
        &Draft {
            origin: NodeId::new("region-uppsala").expect("id"),
            author: "TiB".into(),
            label: Label::new(Class::Sensitive),
            precedence: Precedence::Routine,
            mode: Mode::Exercise,
            content_type: ContentType::SituationReport,
            recipients: vec![NodeId::new("msb").expect("id")],
            in_reply_to: None,
            expires_ms: now + 3_600_000,
            payload: b"report",
        },
        &signer,
        &ra,
        now,
    )
    .expect("seal");
    let msb = NodeId::new("msb").expect("id");
    let key_a = keyfile::read_hpke_key(&a.join("msb/hpke.key")).expect("key");
    let key_b = keyfile::read_hpke_key(&b.join("msb/hpke.key")).expect("key");
    let (_, payload) = envelope::verify_and_open(&sealed.bytes, &ra, &msb, &key_a, now).expect("opens in a");
    assert_eq!(payload.as_slice(), b"report");
    assert!(
        envelope::verify(&sealed.bytes, &rb, now).is_err(),
        "b does not know a's keys"
    );
    let v = envelope::verify(&sealed.bytes, &ra, now).expect("verifies");
    assert!(envelope::open(&v, &msb, &key_b).is_err());
}

#[test]
fn dev_pki_refuses_a_non_empty_out_dir_and_bad_topologies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("x"), "keep me").expect("write");
    let o = sitrep(&[
        "dev-pki",
        "--topology",
        TOPOLOGY,
        "--out",
        tmp.path().to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("x")).expect("kept"),
        "keep me"
    );

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "network = \"x\"\nnodes = []\nextra = 1\n").expect("write");
    let out = tmp.path().join("out");
    let o = sitrep(&[
        "dev-pki",
        "--topology",
        bad.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("extra"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists(), "nothing written for a bad topology");
}

#[test]
fn roster_show_then_sign_roundtrips_and_a_lower_clearance_is_signed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    dev_pki(&dir);
    let o = sitrep(&[
        "roster",
        "show",
        "--roster",
        dir.join("roster.bin").to_str().expect("utf-8"),
    ]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).expect("utf-8");
    assert!(text.contains("id = \"region-uppsala\""));
    // The administrator bumps the serial and lowers the first node's (the hub's) clearance.
    let edited = text.replace("serial = 1", "serial = 2").replacen(
        "clearance = \"SECRET\"",
        "clearance = \"SENSITIVE\"",
        1,
    );
    let src = tmp.path().join("roster.toml");
    std::fs::write(&src, edited).expect("write");
    let out = tmp.path().join("roster2.bin");
    let o = sitrep(&[
        "roster",
        "sign",
        "--input",
        src.to_str().expect("utf-8"),
        "--admin-key",
        dir.join("admin.key").to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let admin = keyfile::read_verifying_key(&dir.join("admin.pub")).expect("admin");
    let r = Roster::verify(&std::fs::read(&out).expect("read"), &admin, Some(1), now_ms())
        .expect("newer roster verifies");
    assert_eq!(r.serial, 2);
    assert_eq!(r.node_str("nspl-hub").expect("hub").clearance, Class::Sensitive);
}
