//! The store's index workload on sled 0.34, fjall 3 and redb 5, one engine
//! per run: `index-engines ENGINE REPORTS fwd|keep`.
//!
//! Per report, as the store's writer does it for a relay's custody: a dedup
//! look-up (the id is new), then a dedup entry and its expiry key, a message
//! record (≈ 70 bytes), an outbox entry (≈ 60 bytes), an expiry key and the
//! segment's live count; with `fwd`, the settle of the report 64 before it
//! (its message record read, three keys removed, the live count updated).
//! Groups of 16 reports are one batch (one transaction), with the position
//! key the store writes. Commits are not synced (the store's log is the
//! durability point): sled flushes itself every second, fjall's journal is
//! not persisted by hand, redb commits with `Durability::None`.
//!
//! Prints µs per report, reports/s, bytes the process wrote per report
//! (`/proc/self/io` `write_bytes`) and its resident memory at the end.
use std::collections::VecDeque;
use redb::ReadableDatabase as _;
use redb::ReadableTable as _;
use std::time::Instant;

trait Kv {
    fn get(&self, k: &[u8]) -> Option<Vec<u8>>;
    fn apply(&mut self, puts: &[(Vec<u8>, Option<Vec<u8>>)]);
    fn name(&self) -> &'static str;
}

struct Sled(sled::Db);
impl Kv for Sled {
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.0.get(k).unwrap().map(|v| v.to_vec())
    }
    fn apply(&mut self, puts: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let mut b = sled::Batch::default();
        for (k, v) in puts {
            match v {
                Some(v) => b.insert(k.clone(), v.clone()),
                None => b.remove(k.clone()),
            }
        }
        self.0.apply_batch(b).unwrap();
    }
    fn name(&self) -> &'static str {
        "sled"
    }
}

struct Fjall(fjall::Database, fjall::Keyspace);
impl Kv for Fjall {
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.1.get(k).unwrap().map(|v| v.to_vec())
    }
    fn apply(&mut self, puts: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let mut b = self.0.batch();
        for (k, v) in puts {
            match v {
                Some(v) => b.insert(&self.1, k.clone(), v.clone()),
                None => b.remove(&self.1, k.clone()),
            }
        }
        b.commit().unwrap();
    }
    fn name(&self) -> &'static str {
        "fjall"
    }
}

const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("i");
struct Redb(redb::Database);
impl Kv for Redb {
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        let r = self.0.begin_read().unwrap();
        let t = match r.open_table(T) {
            Ok(t) => t,
            Err(_) => return None,
        };
        t.get(k).unwrap().map(|v| v.value().to_vec())
    }
    fn apply(&mut self, puts: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let mut w = self.0.begin_write().unwrap();
        w.set_durability(redb::Durability::None).unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for (k, v) in puts {
                match v {
                    Some(v) => {
                        t.insert(k.as_slice(), v.as_slice()).unwrap();
                    }
                    None => {
                        t.remove(k.as_slice()).unwrap();
                    }
                }
            }
        }
        w.commit().unwrap();
    }
    fn name(&self) -> &'static str {
        "redb"
    }
}

fn io_write_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
fn rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        / 1024
}

fn id(n: u64) -> [u8; 16] {
    let mut x = n.wrapping_mul(0x9E3779B97F4A7C15) ^ 0x1234;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(1_700_000_000_000u64 + n).to_be_bytes());
    x ^= x >> 31;
    out[8..].copy_from_slice(&x.to_be_bytes());
    out
}

fn run(kv: &mut dyn Kv, n: u64, forward: bool) {
    let t0 = Instant::now();
    let w0 = io_write_bytes();
    let mut window: VecDeque<u64> = VecDeque::new();
    let group = 16;
    let mut seq = 0u64;
    let mut pending = Vec::new();
    let mut live = 0u64;
    for i in 0..n {
        let idb = id(i);
        // dedup check
        let dk = [b"d".as_slice(), &idb].concat();
        assert!(kv.get(&dk).is_none());
        seq += 1;
        let exp = 1_700_000_000_000u64 + 86_400_000 + i;
        pending.push((dk, Some(exp.to_be_bytes().to_vec())));
        pending.push(([b"D".as_slice(), &exp.to_be_bytes(), &idb].concat(), Some(vec![])));
        pending.push(([b"m".as_slice(), &idb].concat(), Some(vec![7u8; 70])));
        pending.push((
            [b"onspl-hub\0\xfc".as_slice(), &seq.to_be_bytes()].concat(),
            Some(vec![9u8; 60]),
        ));
        pending.push(([b"x".as_slice(), &exp.to_be_bytes(), &idb].concat(), Some(vec![])));
        live += 1;
        pending.push((b"L\0\0\0\0\0\0\0\x01".to_vec(), Some(live.to_be_bytes().to_vec())));
        window.push_back(i);
        if forward && window.len() > 64 {
            let j = window.pop_front().unwrap();
            let jb = id(j);
            let mk = [b"m".as_slice(), &jb].concat();
            let _ = kv.get(&mk);
            let expj = 1_700_000_000_000u64 + 86_400_000 + j;
            pending.push((mk, None));
            pending.push(([b"onspl-hub\0\xfc".as_slice(), &(j + 1).to_be_bytes()].concat(), None));
            pending.push(([b"x".as_slice(), &expj.to_be_bytes(), &jb].concat(), None));
            live -= 1;
        }
        if (i + 1) % group == 0 {
            pending.push((b"clog.applied".to_vec(), Some(i.to_be_bytes().to_vec())));
            kv.apply(&pending);
            pending.clear();
        }
        if (i + 1) % 100_000 == 0 {
            eprintln!(
                "  {} {} reports {:.1}s rss {} MiB",
                kv.name(),
                i + 1,
                t0.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let w = io_write_bytes() - w0;
    println!(
        "{} forward={forward} n={n}: {:.1} µs/report, {:.0} reports/s, write_bytes/report {:.0}, rss {} MiB",
        kv.name(),
        el * 1e6 / n as f64,
        n as f64 / el,
        w as f64 / n as f64,
        rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: index-engines sled|fjall|redb REPORTS fwd|keep";
    let engine = args.get(1).expect(usage).as_str();
    let n: u64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let forward = args.get(3).map(|s| s == "fwd").unwrap_or(true);
    let dir = tempfile_dir();
    let mut kv: Box<dyn Kv> = match engine {
        "sled" => Box::new(Sled(
            sled::Config::new()
                .path(&dir)
                .cache_capacity(64 << 20)
                .flush_every_ms(Some(1000))
                .open()
                .unwrap(),
        )),
        "fjall" => {
            let db = fjall::Database::builder(&dir)
                .manual_journal_persist(true)
                .cache_size(16 << 20)
                .open()
                .unwrap();
            let ks = db.keyspace("i", fjall::KeyspaceCreateOptions::default).unwrap();
            Box::new(Fjall(db, ks))
        }
        "redb" => {
            let mut b = redb::Builder::new();
            b.set_cache_size(16 << 20);
            Box::new(Redb(b.create(dir.join("db")).unwrap()))
        }
        _ => panic!("{usage}"),
    };
    run(kv.as_mut(), n, forward);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("index-engines-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("a scratch directory in the temp dir");
    d
}
