//! The sitrep node runtime: a node is a handle with [`Node::start`],
//! [`Node::submit`], queries, and [`Node::shutdown`].
//!
//! What runs inside, per configured channel: a quinn endpoint (from
//! `sitrep-net`), a sled store (from `sitrep-store`), an accept loop with a
//! task per peer connection and per incoming transfer (ingress: verify,
//! label policy, dedup, route, store, receipt), one sender task per direct
//! peer (egress: outbox in precedence order, custody hand-off, retries with
//! capped exponential backoff and jitter), and an expiry sweeper. Every task
//! belongs to the node's `JoinSet`; the first to fail stops the node.
//!
//! The rules (policy, routing, envelopes) are pure functions in
//! `sitrep-core`; this crate wires them to the network and the disk.
//!
//! Not here (yet): the HTTP API, aggregation, roster reload, the audit log.

mod api;
pub mod clock;
pub mod config;
mod ingress;
mod link;
mod node;
mod shared;

pub use config::{Config, ConfigError};
pub use node::{
    Content, Node, NodeError, NodeEvent, PeerStatus, Received, RosterReloader, RosterUpdateError, Submission,
    SubmitError,
};
pub use shared::Counters;
