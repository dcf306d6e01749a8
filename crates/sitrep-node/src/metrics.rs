//! The node's counters, typed, through `prometheus-client`: events by kind,
//! refusals by reason at ingress and at egress. Incrementing one is an atomic
//! add behind a label lookup; no string is built on the hot path.
//!
//! Not here: the gauges read at scrape time (peers, outboxes, disk, expiry:
//! `api::status` builds them from the service's status snapshot) or the
//! HTTP exposition itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sitrep_core::ingress::RefuseReason;

/// What the node counts, besides refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Event {
    /// A local submission stored.
    Submitted,
    /// A transfer from a peer taken into custody.
    Accepted,
    /// A next hop took custody of a copy.
    Forwarded,
    /// A message delivered to this node's inbox.
    Delivered,
    /// A receipt came back for a message originated here.
    Receipts,
    /// A message expired before delivery.
    Expired,
    /// The roster was replaced at run time.
    RosterReplaced,
    /// A peer connection was accepted.
    ConnectionsAccepted,
    /// An incoming handshake failed for a network reason (timed out,
    /// reset, or the client refused our certificate): not a refused peer.
    ConnectionsFailed,
    /// An inbox entry no longer opens (its origin left the roster).
    InboxUnreadable,
}

impl Event {
    /// Every event, in counter-name order.
    pub const ALL: [Self; 10] = [
        Self::Submitted,
        Self::Accepted,
        Self::Forwarded,
        Self::Delivered,
        Self::Receipts,
        Self::Expired,
        Self::RosterReplaced,
        Self::ConnectionsAccepted,
        Self::ConnectionsFailed,
        Self::InboxUnreadable,
    ];

    /// The counter's name (and the `event` label's value).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Accepted => "accepted",
            Self::Forwarded => "forwarded",
            Self::Delivered => "delivered",
            Self::Receipts => "receipts",
            Self::Expired => "expired",
            Self::RosterReplaced => "roster.replaced",
            Self::ConnectionsAccepted => "connections.accepted",
            Self::ConnectionsFailed => "connections.failed",
            Self::InboxUnreadable => "inbox.unreadable",
        }
    }
}

impl EncodeLabelValue for Event {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// A refusal reason as a label value (the orphan rule keeps the impl off
/// `RefuseReason` itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Reason(RefuseReason);

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: Reason,
}

/// Which side of the node refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Something arriving (a connection, a frame, a transfer).
    Ingress,
    /// A queued copy on its way out (egress policy, or the next hop said no).
    Egress,
}

/// The node's counters.
#[derive(Debug, Default)]
pub struct Counters {
    events: Family<EventLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    egress_refused: Family<ReasonLabels, Counter>,
}

impl Counters {
    /// Counts one `event`.
    pub(crate) fn inc(&self, event: Event) {
        self.events.get_or_create(&EventLabels { event }).inc();
    }

    /// Counts one refusal.
    pub(crate) fn refused(&self, direction: Direction, reason: RefuseReason) {
        let family = match direction {
            Direction::Ingress => &self.refused,
            Direction::Egress => &self.egress_refused,
        };
        family
            .get_or_create(&ReasonLabels {
                reason: Reason(reason),
            })
            .inc();
    }

    fn read(family: &Family<ReasonLabels, Counter>, reason: RefuseReason) -> u64 {
        family
            .get(&ReasonLabels {
                reason: Reason(reason),
            })
            .map_or(0, |c| c.get())
    }

    /// The value of the counter called `name`: an event (`accepted`,
    /// `forwarded`, `roster.replaced`, ...), `refused.<reason>` or
    /// `egress_refused.<reason>`. An unknown name reads 0. For tests and
    /// diagnostics; the node itself counts through typed calls.
    #[must_use]
    pub fn get(&self, name: &str) -> u64 {
        let reason = |r: &str| RefuseReason::ALL.into_iter().find(|x| x.as_str() == r);
        if let Some(r) = name.strip_prefix("refused.") {
            return reason(r).map_or(0, |r| Self::read(&self.refused, r));
        }
        if let Some(r) = name.strip_prefix("egress_refused.") {
            return reason(r).map_or(0, |r| Self::read(&self.egress_refused, r));
        }
        Event::ALL
            .into_iter()
            .find(|e| e.as_str() == name)
            .and_then(|event| self.events.get(&EventLabels { event }).map(|c| c.get()))
            .unwrap_or(0)
    }

    /// Every counter that is not zero, by name (as [`Counters::get`] spells it).
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for event in Event::ALL {
            if let Some(c) = self.events.get(&EventLabels { event }) {
                out.insert(event.as_str().to_owned(), c.get());
            }
        }
        for r in RefuseReason::ALL {
            for (prefix, family) in [
                ("refused.", &self.refused),
                ("egress_refused.", &self.egress_refused),
            ] {
                let v = Self::read(family, r);
                if v > 0 {
                    out.insert(format!("{prefix}{}", r.as_str()), v);
                }
            }
        }
        out.retain(|_, v| *v > 0);
        out
    }

    /// Refusals at ingress by reason, those that are not zero.
    #[must_use]
    pub fn refusals(&self) -> BTreeMap<&'static str, u64> {
        RefuseReason::ALL
            .into_iter()
            .map(|r| (r.as_str(), Self::read(&self.refused, r)))
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    /// Registers the counter families in `registry` (they share their values
    /// with this node: the registry reads them when it encodes).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sitrep_events",
            "Messages submitted, accepted, forwarded, delivered, expired, and other events.",
            self.events.clone(),
        );
        registry.register(
            "sitrep_refusals",
            "Refusals at ingress (connections, frames, transfers) by reason.",
            self.refused.clone(),
        );
        registry.register(
            "sitrep_egress_refusals",
            "Queued copies dropped at egress (policy now, or refused by the next hop) by reason.",
            self.egress_refused.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_name_and_snapshot_of_non_zero() {
        let c = Counters::default();
        c.inc(Event::Accepted);
        c.inc(Event::Accepted);
        c.inc(Event::RosterReplaced);
        c.refused(Direction::Ingress, RefuseReason::Duplicate);
        c.refused(Direction::Egress, RefuseReason::NotCleared);
        assert_eq!(c.get("accepted"), 2);
        assert_eq!(c.get("roster.replaced"), 1);
        assert_eq!(c.get("refused.duplicate"), 1);
        assert_eq!(c.get("egress_refused.not_cleared"), 1);
        assert_eq!(c.get("refused.not_cleared"), 0);
        assert_eq!(c.get("no.such.counter"), 0);
        let s = c.snapshot();
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(
            c.refusals().into_iter().collect::<Vec<_>>(),
            vec![("duplicate", 1)]
        );
    }

    #[test]
    fn the_exposition_names_and_labels() {
        let c = Counters::default();
        c.inc(Event::Submitted);
        c.refused(Direction::Ingress, RefuseReason::WrongChannel);
        let mut registry = Registry::default();
        c.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("sitrep_events_total{event=\"submitted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sitrep_refusals_total{reason=\"wrong_channel\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
