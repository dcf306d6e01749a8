//! Signature checks of arriving envelopes, in batches.
//!
//! Every transfer's envelope is verified before anything else is believed
//! (DESIGN §5.2). Checked one at a time, Ed25519 verification was the
//! largest single cost of a hop (about 30 % of its CPU); checked together,
//! a batch of 8 or more costs about half as much per signature
//! ([`sitrep_crypto::sign::verify_batch`], the same answer for each
//! signature as alone).
//!
//! Transfers are read concurrently, one task each. A task decodes its
//! envelope, queues the signature here and waits. Whoever finds no check
//! running spawns one, a task on the runtime's workers: it takes what is
//! queued (at most [`MAX_BATCH`] signatures and [`MAX_BATCH_BYTES`] of
//! signed bytes), checks it, answers each waiter, yields, and goes on while
//! more queued meanwhile. (On a blocking thread instead, each batch waited
//! for that thread to be scheduled: the hop alone measured 9,000–9,800
//! messages/s against 11,000–11,400 here, and p99 at 500 reports/s 8–27 ms
//! against 5–10 ms.)
//! Under load, signatures queue while a batch is checked, so batches grow
//! with the load; a lone transfer is checked alone, at once. The queue holds
//! one entry per transfer being read, so the peer limits on concurrent
//! transfers and buffered bytes bound it; an entry whose waiter has gone
//! (its connection closed) is dropped unchecked.

use std::sync::{Arc, Mutex};

use sitrep_core::Roster;
use sitrep_core::envelope::{OpenError, Unchecked, Verified};
use sitrep_crypto::CryptoError;
use sitrep_crypto::sign::{Signed, Valid, verify_batch};
use tokio::sync::oneshot;

/// The queue's lock, taken also after a panic elsewhere (the queue stays
/// consistent: every change to it is one statement).
fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// 32: the most signatures checked in one go.
const MAX_BATCH: usize = 32;
/// 1 MiB: the most signed bytes hashed in one go (at least one signature),
/// so that a batch holds a runtime worker for at most about 2 ms of SHA-512
/// on this kind of machine, plus the curve work of [`MAX_BATCH`] (≈ 0.6 ms).
/// One envelope of the largest size alone takes longer, as it did when each
/// task checked its own.
const MAX_BATCH_BYTES: usize = 1 << 20;

type Answer = Result<Valid, CryptoError>;

/// The batching verifier of one node.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(Signed, oneshot::Sender<Answer>)>,
    /// A checking task is running or about to (it looks at `waiting` again
    /// before it ends).
    running: bool,
}

/// The check did not finish: the node is stopping, or the check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unfinished;

impl Verifier {
    /// [`sitrep_core::envelope::verify`], with the signature checked in a
    /// batch with whatever else arrives meanwhile.
    ///
    /// # Errors
    /// `Ok(Err(_))` as `verify`; `Err(Unfinished)` if the check could not
    /// be made (a transient condition: the sender tries again).
    pub(crate) async fn verify(
        self: &Arc<Self>,
        envelope: &[u8],
        roster: &Roster,
        now_ms: i64,
    ) -> Result<Result<Verified, OpenError>, Unfinished> {
        let (unchecked, signed) = match Unchecked::decode(envelope, roster) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let answer = self.check(signed).await?;
        Ok(unchecked.finish(answer, now_ms))
    }

    /// Queues one signature and waits for its answer.
    async fn check(self: &Arc<Self>, signed: Signed) -> Result<Answer, Unfinished> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = lock(&self.queue);
            q.waiting.push((signed, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // The guard exists before the task: if the task is never run (the
            // runtime is stopping) or panics, dropping it answers the waiters
            // and lets the next arrival start anew.
            let running = Running {
                verifier: Arc::clone(self),
                finished: false,
            };
            tokio::spawn(running.run());
        }
        rx.await.map_err(|_| Unfinished)
    }
}

/// The checking task's hold on `running`.
struct Running {
    verifier: Arc<Verifier>,
    finished: bool,
}

impl Running {
    /// Checks batches until nothing waits.
    async fn run(mut self) {
        loop {
            let batch: Vec<(Signed, oneshot::Sender<Answer>)> = {
                let mut q = lock(&self.verifier.queue);
                // Whoever stopped waiting needs no answer.
                q.waiting.retain(|(_, reply)| !reply.is_closed());
                if q.waiting.is_empty() {
                    q.running = false;
                    self.finished = true;
                    return;
                }
                let (mut n, mut bytes) = (0, 0);
                while n < q.waiting.len()
                    && n < MAX_BATCH
                    && (n == 0 || bytes + q.waiting[n].0.len() <= MAX_BATCH_BYTES)
                {
                    bytes += q.waiting[n].0.len();
                    n += 1;
                }
                q.waiting.drain(..n).collect()
            };
            let (items, replies): (Vec<Signed>, Vec<_>) = batch.into_iter().unzip();
            for (answer, reply) in verify_batch(&items).into_iter().zip(replies) {
                // The waiter may have gone (its connection closed).
                let _ = reply.send(answer);
            }
            // Let the waiters just answered, and the rest of the runtime, go on.
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Running {
    /// If the check ends other than by finding the queue empty (never run,
    /// or a panic), its waiters are answered [`Unfinished`] (a transient
    /// refusal: the sender retries) and the next arrival starts anew.
    fn drop(&mut self) {
        if !self.finished {
            let mut q = lock(&self.verifier.queue);
            q.running = false;
            q.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitrep_core::fixture::{DAY_MS, Fixture};
    use sitrep_core::{Class, ContentType, Draft, Label, Mode, NodeId, Precedence, envelope};

    /// A report from Uppsala to MSB, sealed.
    fn sealed(f: &Fixture, now: i64, payload: &[u8]) -> Vec<u8> {
        let uppsala = f.node("region-uppsala");
        let draft = Draft {
            origin: uppsala.id.clone(),
            author: "TiB".into(),
            label: Label::new(Class::Sensitive),
            precedence: Precedence::Routine,
            mode: Mode::Exercise,
            content_type: ContentType::SituationReport,
            recipients: vec![NodeId::new("msb").expect("id")],
            in_reply_to: None,
            expires_ms: now + DAY_MS,
            payload,
        };
        envelope::seal(&draft, &uppsala.signing, &f.roster, now)
            .expect("seal")
            .bytes
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_envelopes_each_get_the_answer_they_get_alone() {
        let now = crate::clock::now_ms();
        let f = Fixture::new(&[("region-uppsala", Class::Secret), ("msb", Class::Secret)], now);
        let roster = Arc::new(f.roster.clone());
        let mut envelopes = Vec::new();
        for i in 0..200u32 {
            let payload = i.to_be_bytes().repeat(100);
            let mut bytes = sealed(&f, now, &payload);
            // Every seventh a bad signature, every eleventh undecodable.
            if i % 7 == 3 {
                let at = bytes.len() - 5;
                bytes[at] ^= 0x40;
            } else if i % 11 == 5 {
                bytes.truncate(10);
            }
            envelopes.push(Arc::new(bytes));
        }
        let verifier = Arc::new(Verifier::default());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, bytes) in envelopes.iter().enumerate() {
            let (verifier, roster, bytes) = (Arc::clone(&verifier), Arc::clone(&roster), Arc::clone(bytes));
            tasks.spawn(async move {
                let got = verifier.verify(&bytes, &roster, now).await.expect("finished");
                (i, got.map(|v| v.header.id))
            });
        }
        let mut good = 0;
        while let Some(joined) = tasks.join_next().await {
            let (i, got) = joined.expect("task");
            let alone = envelope::verify(&envelopes[i], &roster, now).map(|v| v.header.id);
            assert_eq!(got, alone, "envelope {i}");
            good += usize::from(got.is_ok());
        }
        let bad = (0..200).filter(|i| i % 7 == 3 || i % 11 == 5).count();
        assert_eq!(good, 200 - bad);
        let q = lock(&verifier.queue);
        assert!(
            q.waiting.is_empty() && !q.running,
            "nothing left waiting, no check running"
        );
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_that_never_runs_answers_its_waiters_and_the_next_starts_anew() {
        let now = crate::clock::now_ms();
        let f = Fixture::new(&[("region-uppsala", Class::Secret), ("msb", Class::Secret)], now);
        let bytes = sealed(&f, now, b"ICU 4/38");
        let verifier = Arc::new(Verifier::default());
        // A waiter queued behind a check whose task never runs (as when
        // the runtime stops before it gets to it).
        let (_, signed) = Unchecked::decode(&bytes, &f.roster).expect("decodes");
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&verifier.queue);
            q.waiting.push((signed, tx));
            q.running = true;
        }
        drop(Running {
            verifier: Arc::clone(&verifier),
            finished: false,
        });
        assert!(rx.await.is_err(), "answered: the check did not finish");
        assert!(!lock(&verifier.queue).running);
        // The next arrival starts a check of its own.
        let got = verifier.verify(&bytes, &f.roster, now).await.expect("finished");
        assert!(got.is_ok(), "{got:?}");
    }
}
