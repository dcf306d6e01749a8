//! Seal+sign and verify+open of a 4 KiB report to 1 and 5 recipients, beside
//! the primitives they are built from, measured in the same run.
//!
//! `cargo bench --bench envelope`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sitrep_core::fixture::{DAY_MS, Fixture};
use sitrep_core::{Class, ContentType, Draft, Label, Mode, NodeId, Precedence, envelope};
use sitrep_crypto::{ContentKey, HpkeSecretKey, SigningKey};
use std::hint::black_box;

const NOW: i64 = 1_790_000_000_000;
const NODES: [&str; 6] = [
    "region-uppsala",
    "nspl-hub",
    "socialstyrelsen",
    "msb",
    "region-gotland",
    "region-stockholm",
];

fn draft<'a>(recipients: &[&str], payload: &'a [u8]) -> Draft<'a> {
    Draft {
        origin: NodeId::new("region-uppsala").expect("id"),
        author: "TiB Region Uppsala".into(),
        label: Label::new(Class::Sensitive),
        precedence: Precedence::Routine,
        mode: Mode::Actual,
        content_type: ContentType::SituationReport,
        recipients: recipients.iter().map(|r| NodeId::new(r).expect("id")).collect(),
        in_reply_to: None,
        expires_ms: NOW + DAY_MS,
        payload,
    }
}

fn envelope(c: &mut Criterion) {
    let f = Fixture::new(&NODES.map(|n| (n, Class::Secret)), NOW);
    let payload = vec![0x5a_u8; 4096];
    let signer = &f.node("region-uppsala").signing;
    let mut g = c.benchmark_group("envelope_4KiB");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 5] {
        let d = draft(&NODES[1..=n], &payload);
        g.bench_with_input(BenchmarkId::new("seal_sign", n), &d, |b, d| {
            b.iter(|| envelope::seal(black_box(d), signer, &f.roster, NOW).expect("seal"));
        });
        let sealed = envelope::seal(&d, signer, &f.roster, NOW).expect("seal");
        let me = f.node("msb");
        let me = if n == 1 { f.node("nspl-hub") } else { me };
        g.bench_with_input(BenchmarkId::new("verify_open", n), &sealed.bytes, |b, bytes| {
            b.iter(|| {
                envelope::verify_and_open(black_box(bytes), &f.roster, &me.id, &me.hpke, NOW).expect("open")
            });
        });
        g.bench_with_input(
            BenchmarkId::new("verify_only_relay", n),
            &sealed.bytes,
            |b, bytes| {
                b.iter(|| envelope::verify(black_box(bytes), &f.roster, NOW).expect("verify"));
            },
        );
    }
    g.finish();
}

fn primitives(c: &mut Criterion) {
    let msg = vec![0x5a_u8; 4096];
    let sk = SigningKey::generate().expect("rng");
    let pk = sk.verifying_key();
    let sig = sk.sign(b"bench\0", &msg);
    let hk = HpkeSecretKey::generate().expect("rng");
    let hpk = hk.public_key();
    let wrapped = hpk.seal(b"info", b"aad", &[7u8; 32]).expect("seal");
    let key = ContentKey::generate().expect("rng");
    let ct = key.encrypt(b"aad", &msg).expect("enc");

    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ed25519_sign_4KiB", |b| {
        b.iter(|| sk.sign(b"bench\0", black_box(&msg)))
    });
    g.bench_function("ed25519_verify_4KiB", |b| {
        b.iter(|| pk.verify(b"bench\0", black_box(&msg), &sig).expect("ok"));
    });
    g.bench_function("hpke_seal_32B", |b| {
        b.iter(|| hpk.seal(b"info", b"aad", black_box(&[7u8; 32])).expect("seal"))
    });
    g.bench_function("hpke_open_32B", |b| {
        b.iter(|| hk.open(b"info", b"aad", black_box(&wrapped)).expect("open"))
    });
    g.bench_function("aes256gcm_encrypt_4KiB", |b| {
        b.iter(|| key.encrypt(b"aad", black_box(&msg)).expect("enc"))
    });
    g.bench_function("aes256gcm_decrypt_4KiB", |b| {
        b.iter(|| key.decrypt(b"aad", black_box(&ct)).expect("dec"))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = envelope, primitives
}
criterion_main!(benches);
