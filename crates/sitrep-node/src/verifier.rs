//! Signature checks of arriving envelopes, in batches.
//!
//! Every transfer's envelope is verified before anything else is believed
//! (DESIGN §5.2). Checked one at a time, Ed25519 verification was the
//! largest single cost of a hop (about 30 % of its CPU); checked together,
//! a batch of 8 or more costs about half as much per signature
//! ([`sitrep_crypto::sign::verify_batch`], same answers as one at a time).
//!
//! Transfers are read concurrently, one task each. A task decodes its
//! envelope, queues the signature here and waits. Whoever finds no check
//! running starts one: a task that takes everything queued (at most
//! [`MAX_BATCH`]), checks it, answers each waiter, and goes on while more
//! has queued meanwhile. Under load, signatures queue while a batch is
//! being checked, so batches grow with the load; a lone transfer is
//! checked alone, at once.

use std::sync::{Arc, Mutex};

use sitrep_core::Roster;
use sitrep_core::envelope::{OpenError, Unchecked, Verified};
use sitrep_crypto::sign::{Signed, verify_batch};
use tokio::sync::oneshot;

use crate::shared::lock;

/// 32: the most signatures checked in one go (about 0.8 ms of one core),
/// so that a batch does not hold a runtime worker for long.
pub(crate) const MAX_BATCH: usize = 32;

/// The batching verifier of one node.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(Signed, oneshot::Sender<bool>)>,
    /// A checking task is running (it looks at `waiting` again before it ends).
    running: bool,
}

/// The check did not finish: the runtime is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unfinished;

impl Verifier {
    /// [`sitrep_core::envelope::verify`], with the signature checked in a
    /// batch with whatever else arrives meanwhile.
    ///
    /// # Errors
    /// `Ok(Err(_))` as `verify`; `Err(Unfinished)` only at shutdown.
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
        let good = self.check(signed).await?;
        Ok(unchecked.finish(good, now_ms))
    }

    /// Queues one signature and waits for its answer.
    async fn check(self: &Arc<Self>, signed: Signed) -> Result<bool, Unfinished> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = lock(&self.queue);
            q.waiting.push((signed, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // Spawned, not run here: a waiter that goes away (its connection
            // closed) must not take the others' check with it.
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run().await });
        }
        rx.await.map_err(|_| Unfinished)
    }

    /// Checks batches until nothing waits.
    async fn run(&self) {
        let mut running = Running {
            verifier: self,
            finished: false,
        };
        loop {
            let batch: Vec<(Signed, oneshot::Sender<bool>)> = {
                let mut q = lock(&self.queue);
                if q.waiting.is_empty() {
                    q.running = false;
                    running.finished = true;
                    return;
                }
                let n = q.waiting.len().min(MAX_BATCH);
                q.waiting.drain(..n).collect()
            };
            let (items, replies): (Vec<Signed>, Vec<_>) = batch.into_iter().unzip();
            for (answer, reply) in verify_batch(&items).into_iter().zip(replies) {
                // The waiter may have gone (its connection closed).
                let _ = reply.send(answer.is_ok());
            }
            // Let the waiters just answered, and the runtime, move on.
            tokio::task::yield_now().await;
        }
    }
}

/// If the checking task ends other than by finding the queue empty
/// (dropped at shutdown, or a panic), its waiters are answered
/// [`Unfinished`] (a transient refusal: the sender retries) and the next
/// arrival starts a new task.
struct Running<'a> {
    verifier: &'a Verifier,
    finished: bool,
}

impl Drop for Running<'_> {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_envelopes_each_get_the_answer_they_get_alone() {
        let now = crate::clock::now_ms();
        let f = Fixture::new(&[("region-uppsala", Class::Secret), ("msb", Class::Secret)], now);
        let roster = Arc::new(f.roster.clone());
        let uppsala = f.node("region-uppsala");
        let mut envelopes = Vec::new();
        for i in 0..200u32 {
            let payload = i.to_be_bytes().repeat(100);
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
                payload: &payload,
            };
            let mut bytes = envelope::seal(&draft, &uppsala.signing, &f.roster, now)
                .expect("seal")
                .bytes;
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
}
