//! Writes the starting corpora, `fuzz/seeds/<target>/`: real frames,
//! envelopes (sealed to the fuzzing network's keys, so that some inputs get
//! past the signature check), rosters, submit bodies and configs. Run it
//! after changing a wire format or the fuzzing network:
//!
//! ```text
//! fuzz/run seeds
//! ```
//!
//! Sealing draws fresh message ids and content keys, so the envelope files
//! change on every run; all of them verify against the fixed network at
//! `NOW`, which this checks before writing.

use std::path::{Path, PathBuf};

use prost::Message as _;
use sitrep_core::envelope::{self, Draft};
use sitrep_core::{Class, ContentType, Label, Mode, NodeId, Precedence};
use sitrep_fuzz::{DAY_MS, NOW, Net};
use sitrep_proto::v1 as pb;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let net = sitrep_fuzz::net();
    let envelopes = envelopes(net);
    write_envelope_seeds(&root.join("envelope"), &envelopes);
    write_frame_seeds(&root.join("frame"), &envelopes);
    write_roster_seeds(&root.join("roster"), net);
    write_submit_seeds(&root.join("submit"));
    write_config_seeds(&root.join("config"));
    // The valid seeds are accepted, so that the fuzzer starts past the checks.
    for entry in std::fs::read_dir(root.join("config")).expect("seed dir") {
        let path = entry.expect("seed entry").path();
        let text = std::fs::read_to_string(&path).expect("seed file");
        if let Err(e) = sitrep_node::Config::from_toml(&text, "seed", sitrep_fuzz::config_base(), Vec::new())
        {
            panic!("config seed {} is refused: {e}", path.display());
        }
    }
    for name in ["full.json", "minimal.json"] {
        let body = std::fs::read(root.join("submit").join(name)).expect("seed file");
        if let Err(e) = sitrep_node::api::parse_submit_body(&body) {
            panic!("submit seed {name} is refused: {e:?}");
        }
    }
    // Every seed runs through its target without a crash.
    for (dir, target) in [
        ("frame", sitrep_fuzz::frame as fn(&[u8])),
        ("envelope", sitrep_fuzz::envelope),
        ("roster", sitrep_fuzz::roster),
        ("submit", sitrep_fuzz::submit),
        ("config", sitrep_fuzz::config),
    ] {
        let mut n = 0;
        for entry in std::fs::read_dir(root.join(dir)).expect("seed dir") {
            let path = entry.expect("seed entry").path();
            target(&std::fs::read(&path).expect("seed file"));
            n += 1;
        }
        println!("{dir}: {n} seeds");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("a valid id")
}

/// Sealed envelopes of every kind a node sends, by name.
fn envelopes(net: &Net) -> Vec<(&'static str, envelope::SealedEnvelope)> {
    let uppsala = net.member("region-uppsala").expect("member");
    let hub = net.member("nspl-hub").expect("member");
    let seal = |signer: &sitrep_fuzz::Member, d: &Draft<'_>| {
        let sealed = envelope::seal(d, &signer.signing, &net.roster, NOW).expect("the seed seals");
        envelope::verify(&sealed.bytes, &net.roster, NOW).expect("the seed verifies");
        sealed
    };
    let report = sitrep_core::report::example_uppsala(NOW).encode_to_vec();
    let draft = |content_type, recipients: &[&str], payload| Draft {
        origin: uppsala.id.clone(),
        author: "TiB Region Uppsala".into(),
        label: Label::new(Class::Sensitive),
        precedence: Precedence::Priority,
        mode: Mode::Exercise,
        content_type,
        recipients: recipients.iter().map(|r| id(r)).collect(),
        in_reply_to: None,
        expires_ms: NOW + DAY_MS,
        payload,
    };
    let to_three = seal(
        uppsala,
        &draft(
            ContentType::SituationReport,
            &["nspl-hub", "socialstyrelsen", "msb"],
            &report,
        ),
    );
    let mut secret = draft(ContentType::SituationReport, &["socialstyrelsen"], &report);
    secret.label = Label {
        class: Class::Secret,
        caveats: vec!["SWE-ONLY".into()],
    };
    secret.precedence = Precedence::Flash;
    secret.mode = Mode::Actual;
    let secret = seal(uppsala, &secret);
    let receipt_payload = pb::Receipt {
        message_id: to_three.header.id.as_bytes().to_vec(),
        recipient: "nspl-hub".into(),
        delivered_unix_ms: NOW,
    }
    .encode_to_vec();
    let mut receipt = draft(ContentType::Receipt, &["region-uppsala"], &receipt_payload);
    receipt.origin = hub.id.clone();
    receipt.in_reply_to = Some(to_three.header.id);
    let receipt = seal(hub, &receipt);
    let mut roster = draft(ContentType::Roster, &["region-gotland"], &net.signed_roster);
    roster.origin = hub.id.clone();
    let roster = seal(hub, &roster);
    let subscribe = pb::Subscribe {
        feed: "national-icu".into(),
        regions: vec!["03".into(), "09".into()],
    }
    .encode_to_vec();
    let subscribe = seal(
        uppsala,
        &draft(ContentType::Subscribe, &["socialstyrelsen"], &subscribe),
    );
    vec![
        ("report-to-three", to_three),
        ("report-secret", secret),
        ("receipt", receipt),
        ("roster", roster),
        ("subscribe", subscribe),
    ]
}

fn write_envelope_seeds(dir: &Path, envelopes: &[(&str, envelope::SealedEnvelope)]) {
    for (name, e) in envelopes {
        write(dir, &format!("{name}.envelope"), &e.bytes);
        // The same message as `Sealed` bytes and as a bare header, for the
        // target's other two readings.
        let env = pb::Envelope::decode(e.bytes.as_slice()).expect("decodes");
        write(dir, &format!("{name}.sealed"), &env.sealed);
        let sealed = pb::Sealed::decode(env.sealed.as_slice()).expect("decodes");
        write(dir, &format!("{name}.header"), &sealed.header);
    }
}

fn frame(kind: pb::frame::Kind) -> Vec<u8> {
    sitrep_net::frame::encode_frame(&pb::Frame { kind: Some(kind) }).expect("a seed frame encodes")
}

fn write_frame_seeds(dir: &Path, envelopes: &[(&str, envelope::SealedEnvelope)]) {
    for (name, e) in envelopes.iter().take(3) {
        let transfer = pb::Transfer {
            envelope: e.bytes.clone(),
            hop_count: 1,
            serves: e.header.recipients.iter().map(ToString::to_string).collect(),
        };
        write(
            dir,
            &format!("transfer-{name}"),
            &frame(pb::frame::Kind::Transfer(transfer)),
        );
    }
    let accepted = frame(pb::frame::Kind::Accepted(pb::Accepted {
        message_id: envelopes[0].1.header.id.as_bytes().to_vec(),
    }));
    write(dir, "accepted", &accepted);
    let rejected = |code: pb::RejectCode, permanent| {
        frame(pb::frame::Kind::Rejected(pb::Rejected {
            code: code as i32,
            reason: format!("{} (seed)", code.as_str_name()),
            permanent,
        }))
    };
    write(
        dir,
        "rejected-duplicate",
        &rejected(pb::RejectCode::Duplicate, true),
    );
    write(
        dir,
        "rejected-store-full",
        &rejected(pb::RejectCode::StoreFull, false),
    );
    // Two frames on one stream, and an empty frame.
    write(
        dir,
        "two-frames",
        &[accepted, rejected(pb::RejectCode::LabelPolicy, true)].concat(),
    );
    write(dir, "empty", &[0, 0, 0, 0]);
}

fn write_roster_seeds(dir: &Path, net: &Net) {
    write(dir, "signed", &net.signed_roster);
    let signed = pb::SignedRoster::decode(net.signed_roster.as_slice()).expect("decodes");
    // The unsigned roster, for the target's second reading (signed by the
    // administrator on the spot), with a newer serial so that it is taken.
    let mut raw = pb::Roster::decode(signed.roster.as_slice()).expect("decodes");
    raw.serial += 1;
    write(dir, "unsigned", &raw.encode_to_vec());
    raw.nodes.truncate(1);
    write(dir, "unsigned-one-node", &raw.encode_to_vec());
}

fn write_submit_seeds(dir: &Path) {
    let report = serde_json::to_value(sitrep_core::report::example_uppsala(NOW)).expect("report as JSON");
    let bodies = [
        (
            "full",
            serde_json::json!({
                "report": report,
                "label": {"class": "SENSITIVE", "caveats": ["SWE-ONLY"]},
                "precedence": "PRIORITY",
                "mode": "EXERCISE",
                "recipients": ["nspl-hub", "socialstyrelsen"],
                "expires": "2026-09-22T12:00:00Z",
                "author": "TiB Region Uppsala",
            }),
        ),
        (
            "minimal",
            serde_json::json!({
                "report": report,
                "label": {"class": "OPEN"},
                "mode": "TEST",
                "recipients": ["socialstyrelsen"],
                "expires": NOW + DAY_MS,
            }),
        ),
        (
            "bad-fields",
            serde_json::json!({
                "report": {"region_code": 3, "beds": [{"type": "ICU_ADLUT"}]},
                "label": {"class": "VERY_SECRET", "caveats": [7]},
                "precedence": "URGENT",
                "mode": "LIVE",
                "recipients": ["Bad Id", "msb", "msb"],
                "expires": "tomorrow",
                "author": 12,
            }),
        ),
    ];
    for (name, body) in bodies {
        write(
            dir,
            &format!("{name}.json"),
            serde_json::to_string_pretty(&body).expect("JSON").as_bytes(),
        );
    }
}

/// A config with every section and key, valid against the target's base
/// directory (`sitrep_fuzz::config_base`).
const FULL_CONFIG: &str = r#"[node]
id = "socialstyrelsen"
data_dir = "data"
roster = "../roster.bin"
admin_key = "../admin.pub"
signing_key = "signing.key"
hpke_key = "hpke.key"

[channels.open]
listen = "127.0.0.1:7502"
ca = "open-ca.crt"
cert = "open.crt"
key = "open.key"
max_class = "SENSITIVE"
store = "data/open"

[channels.secure]
listen = "[::1]:7602"
ca = "secure-ca.crt"
cert = "secure.crt"
key = "secure.key"
max_class = "SECRET"
store = "/var/lib/sitrep/secure"

[[peers]]
id = "nspl-hub"
channel = "open"
address = "127.0.0.1:7500"

[[peers]]
id = "nspl-hub"
channel = "secure"
address = "[::1]:7600"

[routes.default]
open = "nspl-hub"
secure = "nspl-hub"

[routes.static]
region-uppsala = "nspl-hub"

[api]
listen = "127.0.0.1:7402"
session_ttl = "8h"
max_sessions = 64
max_connections = 256
max_requests = 64
max_event_streams = 16
header_timeout = "10s"
body_timeout = "30s"

[api.tokens]
reporter = "0123456789abcdef0123"
reader = "fedcba9876543210fedc"
operator = "00112233445566778899"

[limits]
max_frame_bytes = 4198400
max_streams = 64
max_in_flight = 256
max_connections_per_peer = 4
peer_buffer_bytes = 33554432
connection_window_bytes = 8388608
min_free_bytes = 0
max_queue_bytes = 1073741824
max_peer_queue_bytes = 268435456
hop_limit = 8
idle_timeout = "30s"
keep_alive = "5s"
frame_timeout = "30s"
retry_initial = "1s"
retry_max = "1m"
sweep_interval = "10s"
default_ttl = "1day"
feed_min_interval = "5s"

[log]
level = "info,sitrep=debug"
format = "json"

[[feeds]]
name = "national-icu"
channel = "secure"
mode = "ACTUAL"
max_class = "SECRET"
stale_after = "12h"
regions = ["03", "09"]
"#;

fn write_config_seeds(dir: &Path) {
    write(dir, "full.toml", FULL_CONFIG.as_bytes());
    // The development configs of the repository, as `sitrep dev-pki` writes them.
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs-dev");
    let mut nodes: Vec<_> = std::fs::read_dir(&dev)
        .expect("certs-dev")
        .filter_map(Result::ok)
        .map(|e| e.path().join("node.toml"))
        .filter(|p| p.is_file())
        .collect();
    nodes.sort();
    for p in nodes {
        let name = p
            .parent()
            .and_then(Path::file_name)
            .expect("a node directory")
            .to_string_lossy()
            .into_owned();
        write(
            dir,
            &format!("{name}.toml"),
            &std::fs::read(&p).expect("node.toml"),
        );
    }
}
