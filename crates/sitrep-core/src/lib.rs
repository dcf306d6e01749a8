//! The rules of sitrep, without I/O: no sockets, no disks, no clocks.
//!
//! Every function that needs the time takes `now_ms` (milliseconds since the
//! Unix epoch) as an argument, so the rules are tested exhaustively without
//! sleeps.
//!
//! - [`id`]: validated node ids and message ids (UUIDv7).
//! - [`label`]: classes, labels, precedence, mode, content type.
//! - [`policy`]: the label policy — class order, channel maxima, clearance,
//!   RESTRICTED-and-up only on `secure` — as pure functions.
//! - [`roster`]: verifying (and, for the administrator, signing) the roster.
//! - [`envelope`]: [`envelope::seal`] a payload into a signed envelope,
//!   [`envelope::verify`] one (what a relay does: signature, expiry, header)
//!   and [`envelope::open`] it at a recipient.
//! - [`report`]: field-level validation of situation reports.
//! - [`routing`]: next hops and copies per recipient, the hop limit.
//! - [`ingress`]: the hop decisions — what to do with an arriving transfer
//!   ([`ingress::decide`]), whether a queued copy may leave
//!   ([`ingress::decide_egress`]), what a next hop's answer means — with
//!   typed refusal reasons.
//! - [`delivery`]: the per-recipient delivery states at the origin and
//!   which change of state is allowed.
//!
//! Not here: storage, networking, configuration, async.

pub mod delivery;
pub mod envelope;
pub mod feed;
pub mod id;
pub mod ingress;
pub mod label;
pub mod policy;
pub mod report;
pub mod roster;
pub mod routing;

pub use envelope::{Draft, HeaderInfo, OpenError, SealError, SealedEnvelope, Verified};
pub use id::{MessageId, NodeId};
pub use label::{Class, ContentType, Label, Mode, Precedence};
pub use policy::{Channel, PolicyError};
pub use roster::{Roster, RosterError, RosterNode};

#[cfg(any(test, feature = "test-support"))]
pub mod fixture;
