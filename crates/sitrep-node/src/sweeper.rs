//! The expiry sweeper: every `sweep_interval`, each channel store drops the
//! copies of messages past their expiry and marks them `EXPIRED`. And the
//! audit watch, which stops the node when its audit log stops.
//!
//! Not here: which states may change (`sitrep_core::delivery`), or the store's
//! expiry index (`sitrep_store`).

use std::sync::Arc;

use sitrep_core::Channel;
use sitrep_store::{Op, Outcome, Storage, StoreError};

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::event::NodeEvent;
use crate::metrics::Event;
use crate::shared::{Shared, shown};

pub(crate) async fn run(shared: Arc<Shared>) -> Result<(), NodeError> {
    let mut tick = tokio::time::interval(shared.limits.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        for rt in shared.channels.values() {
            let outcomes = match rt.store.apply(vec![Op::ExpireDue { now_ms: now_ms() }]).await {
                Ok(outcomes) => outcomes,
                Err(StoreError::Closed) => return Ok(()),
                Err(e) => {
                    tracing::error!(channel = %rt.channel, error = %e, "expiry sweep failed");
                    continue;
                }
            };
            let mut any = false;
            for list in outcomes.into_iter().filter_map(|o| match o {
                Outcome::Expired(list) => Some(list),
                _ => None,
            }) {
                for (id, hops) in list {
                    any = true;
                    shared.counters.inc(Event::Expired);
                    shared.audit(
                        "expire",
                        Some(id),
                        None,
                        rt.channel,
                        None,
                        "expired before delivery",
                    );
                    tracing::info!(id = %shown(rt.channel, id), channel = %rt.channel, hops = hops.len(), "expired");
                    shared.emit(NodeEvent::Expired { id });
                }
            }
            if any {
                shared.bump();
            }
        }
    }
}

/// Ends with an error (which stops the node) if `channel`'s audit log
/// stops: a node that cannot audit must not go on handling traffic.
pub(crate) async fn audit_watch(shared: Arc<Shared>, channel: Channel) -> Result<(), NodeError> {
    let Some(mut failures) = shared.channels.get(&channel).map(|rt| rt.audit.failures()) else {
        return Ok(());
    };
    loop {
        if let Some(why) = failures.borrow_and_update().clone() {
            return Err(NodeError::Task(format!("audit: {why}")));
        }
        tokio::select! {
            () = shared.cancel.cancelled() => return Ok(()),
            changed = failures.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
