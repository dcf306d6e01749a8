//! The node's error types, at the bottom of the crate: every other module
//! may return them, none of them depends on anything above `config`.
//!
//! Not here: refusals of peers' transfers (a refusal is an answer, decided in
//! `sitrep_core::ingress` and carried out in `ingress`), or HTTP errors (`api`).

use sitrep_core::envelope;
use sitrep_core::report::FieldError;
use sitrep_core::routing::RouteError;
use sitrep_core::{MessageId, PolicyError, RosterError};
use sitrep_store::StoreError;

use crate::config::ConfigError;

/// The node could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A config value is wrong (also roster-dependent checks at start-up).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The transport failed.
    #[error("network: {0}")]
    Net(#[from] sitrep_net::NetError),
    /// A task of the node failed.
    #[error("task {0}")]
    Task(String),
}

impl NodeError {
    /// A config error naming `key`.
    pub(crate) fn config(key: &str, problem: impl Into<String>) -> Self {
        Self::Config(ConfigError {
            key: key.into(),
            problem: problem.into(),
        })
    }
}

/// Why a submission was refused. Nothing was stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The report has invalid fields.
    #[error("invalid report: {} problem(s)", .0.len())]
    Invalid(Vec<FieldError>),
    /// A submission field is wrong (recipients, expiry).
    #[error("{field}: {problem}")]
    Bad {
        /// Field name.
        field: &'static str,
        /// Problem.
        problem: String,
    },
    /// The label may not be sent as asked.
    #[error("label policy: {0}")]
    Policy(#[from] PolicyError),
    /// A recipient cannot be reached within policy.
    #[error("no route: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoRoute(Vec<RouteError>),
    /// Sealing failed.
    #[error("seal: {0}")]
    Seal(#[from] envelope::SealError),
    /// The store failed; retry.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The idempotency key was used before for a different request, which
    /// stored message `0`. Nothing was stored.
    #[error(
        "this Idempotency-Key was used before for a different request (message {0}); use a new key for a new report"
    )]
    KeyReused(MessageId),
}

/// Why a new roster was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RosterUpdateError {
    /// The file could not be read.
    #[error("cannot read the roster file: {0}")]
    Read(String),
    /// Signature, serial, validity or an entry is wrong.
    #[error(transparent)]
    Invalid(#[from] RosterError),
    /// The new roster drops this node, or changes its keys or channels.
    #[error("the new roster {0}")]
    NotForThisNode(String),
}
