//! A delay line for UDP: loss, delay and jitter on the datagrams of a link,
//! done in the test process because this machine's kernel has no `netem`.
//!
//! `tc qdisc … netem` needs `CONFIG_NET_SCH_NETEM`, which the kernel the
//! suite runs on here (6.18, built without it and without loadable modules)
//! does not have, and no other qdisc it has can delay a packet. So the lossy,
//! slow link of scenario (b) is a relay: each QUIC peer dials the relay's
//! address, and the relay passes every datagram on to the real peer (and
//! every answer back) after a delay drawn uniformly from
//! `delay ± jitter` (netem's default distribution), or drops it with
//! probability `loss`, independently for every datagram in both directions.
//! Datagrams overtake one another as netem's jitter makes them do. The
//! relay's sockets live in a lab namespace, so the datagrams still cross the
//! veth link; only the delay and the dice are in user space.

use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::in_ns;

/// How the link behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Impairment {
    /// Probability that a datagram is dropped, 0.0–1.0, each direction.
    pub(crate) loss: f64,
    /// Mean one-way delay.
    pub(crate) delay: Duration,
    /// Half-width of the uniform spread around `delay`.
    pub(crate) jitter: Duration,
}

impl Impairment {
    /// Every datagram dropped: a partition.
    pub(crate) const CUT: Self = Self {
        loss: 1.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

/// How often a blocked receive wakes up to notice the line stopping.
const POLL: Duration = Duration::from_millis(100);
/// Largest datagram: quinn sends at most the path MTU, well under this.
const MAX_DATAGRAM: usize = 65_536;

/// A running delay line; stops on drop.
#[derive(Debug)]
pub(crate) struct DelayLine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    setting: Mutex<Impairment>,
    stop: AtomicBool,
    passed: AtomicU64,
    dropped: AtomicU64,
    queue: Mutex<BinaryHeap<Pending>>,
    wake: Condvar,
    seed: u64,
}

#[derive(Debug)]
struct Pending {
    due: Instant,
    seq: u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest due goes first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl DelayLine {
    /// Starts relays in namespace `ns`, one per `(listen, upstream)` pair:
    /// what arrives at `listen` goes to `upstream`, from a socket of its own
    /// per sender, and what comes back goes to that sender; all of it under
    /// `setting` (changed later with [`Self::set`]). `seed` makes the dice
    /// repeatable; the test prints it.
    pub(crate) fn start(
        ns: &str,
        routes: Vec<(SocketAddr, SocketAddr)>,
        setting: Impairment,
        seed: u64,
    ) -> Self {
        let shared = Arc::new(Shared {
            setting: Mutex::new(setting),
            stop: AtomicBool::new(false),
            passed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            seed,
        });
        let threads = in_ns(ns, {
            let shared = Arc::clone(&shared);
            move || {
                let mut threads = Vec::new();
                let s = Arc::clone(&shared);
                threads.push(std::thread::spawn(move || send_when_due(&s)));
                for (i, (listen, upstream)) in routes.into_iter().enumerate() {
                    let socket =
                        UdpSocket::bind(listen).unwrap_or_else(|e| panic!("delay line: bind {listen}: {e}"));
                    let s = Arc::clone(&shared);
                    threads.push(std::thread::spawn(move || {
                        relay(&s, &Arc::new(socket), upstream, i as u64 + 1);
                    }));
                }
                threads
            }
        });
        Self { shared, threads }
    }

    /// Changes the link's behaviour from the next datagram on.
    pub(crate) fn set(&self, setting: Impairment) {
        *self.shared.setting.lock().unwrap_or_else(PoisonError::into_inner) = setting;
    }

    /// Datagrams passed on and dropped so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.shared.passed.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A small xorshift generator: repeatable from the printed seed.
#[derive(Debug)]
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Uniform in [0, 1).
    fn roll(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Queues `data` for `to` under the current setting, or drops it.
fn schedule(shared: &Shared, dice: &mut Dice, socket: &Arc<UdpSocket>, to: SocketAddr, data: &[u8]) {
    let setting = *shared.setting.lock().unwrap_or_else(PoisonError::into_inner);
    if dice.roll() < setting.loss {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let spread = setting.jitter.as_secs_f64() * (2.0 * dice.roll() - 1.0);
    let delay = Duration::from_secs_f64((setting.delay.as_secs_f64() + spread).max(0.0));
    let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    let seq = shared.passed.fetch_add(1, Ordering::Relaxed);
    queue.push(Pending {
        due: Instant::now() + delay,
        seq,
        socket: Arc::clone(socket),
        to,
        data: data.to_vec(),
    });
    shared.wake.notify_one();
}

/// Sends each queued datagram when it is due.
fn send_when_due(shared: &Shared) {
    let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next_due = queue.peek().map(|p| p.due);
        match next_due {
            Some(due) if due <= now => {
                if let Some(p) = queue.pop() {
                    drop(queue);
                    // A send error is a lost datagram, as on a wire.
                    let _ = p.socket.send_to(&p.data, p.to);
                    queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
                }
            }
            Some(due) => {
                queue = shared
                    .wake
                    .wait_timeout(queue, (due - now).min(POLL))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            None => {
                queue = shared
                    .wake
                    .wait_timeout(queue, POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

/// One relay: senders to `listen` get a socket each towards `upstream`.
fn relay(shared: &Arc<Shared>, listen: &Arc<UdpSocket>, upstream: SocketAddr, stream: u64) {
    let _ = listen.set_read_timeout(Some(POLL));
    let mut dice = Dice::new(shared.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut answers = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = listen.recv_from(&mut buf) else {
            continue;
        };
        let out = match flows.get(&from) {
            Some(s) => Arc::clone(s),
            None => {
                // This thread is in the lab namespace, so is the new socket.
                let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                    continue;
                };
                let s = Arc::new(s);
                flows.insert(from, Arc::clone(&s));
                let (shared, back, listen) = (Arc::clone(shared), Arc::clone(&s), Arc::clone(listen));
                let seed = stream.wrapping_mul(31).wrapping_add(flows.len() as u64) << 32;
                answers.push(std::thread::spawn(move || {
                    answer(&shared, &back, &listen, from, seed);
                }));
                s
            }
        };
        schedule(shared, &mut dice, &out, upstream, &buf[..n]);
    }
    for a in answers {
        let _ = a.join();
    }
}

/// Datagrams from upstream on a flow's socket go back to the flow's sender.
fn answer(shared: &Shared, socket: &UdpSocket, listen: &Arc<UdpSocket>, to: SocketAddr, stream: u64) {
    let _ = socket.set_read_timeout(Some(POLL));
    let mut dice = Dice::new(shared.seed ^ stream);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(Ordering::Relaxed) {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            schedule(shared, &mut dice, listen, to, &buf[..n]);
        }
    }
}
