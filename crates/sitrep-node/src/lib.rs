//! The sitrep node runtime: a node is a handle with [`Node::start`],
//! [`Node::submit`], queries, and [`Node::shutdown`].
//!
//! What runs inside, per configured channel: a quinn endpoint (from
//! `sitrep-net`), a store (from `sitrep-store`), an accept loop with a task
//! per peer connection and per incoming transfer (ingress), one sender task
//! per direct peer (egress), an expiry sweeper, and the HTTP API. Every task
//! belongs to the node's `JoinSet`; the first to fail stops the node.
//!
//! The modules form layers, each importing only those below it:
//!
//! 1. `clock`, `config`, `event`, `metrics`: time, configuration, events
//!    and counters; then `error`, which wraps config errors;
//! 2. `shared`: the state the tasks share, and the one place a refusal is
//!    carried out;
//! 3. `service`: what a local user can ask (submit, delivery, inbox, status,
//!    roster replacement);
//! 4. `ingress`, `link`, `sweeper`: the network and timer tasks, thin shells
//!    around the decisions in `sitrep_core` (`ingress`, `policy`, `routing`,
//!    `delivery`);
//! 5. `api`: HTTP over the service;
//! 6. `node`: the handle that builds the state and spawns the tasks.
//!
//! `tests/layers.rs` at the workspace root fails if a module imports one
//! above it. Not here: the rules (pure functions in `sitrep-core`), the
//! transport (`sitrep-net`), the store (`sitrep-store`), the dev PKI
//! (`sitrep-devpki`).

pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
mod feeds;
mod feedstate;
mod ingress;
mod link;
pub mod metrics;
mod node;
mod service;
mod shared;
mod sweeper;
mod verifier;

pub use config::{Config, ConfigError};
pub use error::{NodeError, RosterUpdateError, SubmitError};
pub use event::NodeEvent;
pub use metrics::Counters;
pub use node::{Node, Reloader};
pub use service::{Content, PeerChanges, PeerStatus, Received, Submission};
