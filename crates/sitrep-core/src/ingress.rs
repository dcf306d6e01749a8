//! The hop decisions as pure functions: what a node does with a transfer
//! that arrived from a peer ([`decide`]), whether a queued copy may still
//! go to its next hop ([`decide_egress`]), and what the next hop's answer
//! means ([`next_hop_answer`]).
//!
//! The node's ingress and link tasks are thin shells around these: they
//! gather the inputs (the outcome of [`crate::envelope::verify`], the dedup
//! lookup, the roster and route table in force), call the decision, then do
//! what it says. Not here: decoding frames, checking signatures, the dedup
//! store and the set of ids in progress, opening payloads and checking
//! receipts, sealing receipts, storing, answering, closing connections,
//! counting and auditing.
//!
//! A refusal carries a typed [`RefuseReason`] whose [`RefuseReason::as_str`]
//! is the counter and audit name (`refused.<reason>`), the wire
//! [`RejectCode`], a detail for humans, and whether it is permanent and
//! whether the peer's connection is to be closed.

use std::collections::BTreeMap;
use std::fmt;

use sitrep_proto::v1::{self as pb, RejectCode};

use crate::envelope::{HeaderInfo, OpenError};
use crate::policy::{self, Channel, Party, PolicyError};
use crate::routing::{RouteError, RouteTable, check_hop_limit};
use crate::{Class, ContentType, MessageId, NodeId, Roster};

/// Copies to queue: next hop → the recipients that copy serves.
pub type Copies = BTreeMap<NodeId, Vec<NodeId>>;

/// What this node is and knows, for one channel.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// This node.
    pub here: &'a NodeId,
    /// The channel the transfer arrived on (or the copy leaves on).
    pub channel: Channel,
    /// This node's configured maximum on `channel`; `None` if it does not
    /// run that channel.
    pub channel_max: Option<Class>,
    /// The roster in force.
    pub roster: &'a Roster,
    /// Where to send things.
    pub routes: &'a RouteTable,
    /// Highest hop count accepted.
    pub hop_limit: u32,
}

/// The outcome of verifying the transfer's envelope.
#[derive(Debug, Clone, Copy)]
pub enum Verification<'a> {
    /// Signature, header and expiry check out ([`crate::envelope::verify`]).
    Valid(&'a HeaderInfo),
    /// Verification refused it.
    Invalid(&'a OpenError),
    /// The transfer carried no envelope.
    Missing,
}

/// Whether the message id was met before. Looked at only once the
/// envelope is verified and the ingress label policy passed, so a bad
/// signature on a replay is refused as a bad signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not seen: go on.
    New,
    /// In the durable dedup set: a permanent duplicate.
    Durable,
    /// Being handled by another task right now (a retransmission racing
    /// the first copy): a transient duplicate, to be retried.
    Pending,
    /// The dedup lookup failed; the store's error, for the refusal's detail.
    Unavailable(String),
}

/// One arriving transfer.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    /// The authenticated peer it came from.
    pub previous_hop: &'a NodeId,
    /// Hops taken so far, counting the one to here.
    pub hop_count: u32,
    /// The envelope's verification outcome.
    pub envelope: Verification<'a>,
    /// The recipients this copy serves, as sent; empty means all of them.
    pub serves: &'a [String],
    /// The dedup outcome for the message id.
    pub seen: Seen,
}

/// Why a transfer or a copy is refused: the counter and audit name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// Hop count over the limit: a loop.
    HopLimit,
    /// A frame, envelope, header, payload or `serves` that is not what it must be.
    Malformed,
    /// The message id was seen before, or is being handled.
    Duplicate,
    /// No route to a recipient (or to the origin, for its receipt).
    NoRoute,
    /// A recipient or next hop is not in the roster.
    UnknownNode,
    /// [`PolicyError::WrongChannel`].
    WrongChannel,
    /// [`PolicyError::AboveChannelMax`].
    AboveChannelMax,
    /// [`PolicyError::NotCleared`].
    NotCleared,
    /// [`PolicyError::NotOnChannel`].
    NotOnChannel,
    /// [`PolicyError::BadChannelMax`]: this node's configuration is wrong.
    BadChannelMax,
    /// [`OpenError::BadSignature`].
    BadSignature,
    /// [`OpenError::Expired`].
    Expired,
    /// [`OpenError::UnknownOrigin`].
    UnknownOrigin,
    /// [`OpenError::TooLarge`].
    EnvelopeTooLarge,
    /// [`OpenError::FromTheFuture`].
    BadClock,
    /// [`OpenError::NotARecipient`].
    NotARecipient,
    /// [`OpenError::Decrypt`].
    Decrypt,
    /// A frame over the size limit.
    FrameTooLarge,
    /// A peer refused at the connection (certificate, not a configured peer).
    Peer,
    /// The store could not be read or written; transient.
    Store,
    /// This node failed (channel not running, cannot seal a receipt).
    Internal,
    /// The next hop refused a copy for good.
    ByNextHop,
}

impl RefuseReason {
    /// Every reason.
    pub const ALL: [Self; 22] = [
        Self::HopLimit,
        Self::Malformed,
        Self::Duplicate,
        Self::NoRoute,
        Self::UnknownNode,
        Self::WrongChannel,
        Self::AboveChannelMax,
        Self::NotCleared,
        Self::NotOnChannel,
        Self::BadChannelMax,
        Self::BadSignature,
        Self::Expired,
        Self::UnknownOrigin,
        Self::EnvelopeTooLarge,
        Self::BadClock,
        Self::NotARecipient,
        Self::Decrypt,
        Self::FrameTooLarge,
        Self::Peer,
        Self::Store,
        Self::Internal,
        Self::ByNextHop,
    ];

    /// The stable name for counters (`refused.<name>`,
    /// `egress_refused.<name>`), events and the audit log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HopLimit => "hop_limit",
            Self::Malformed => "malformed",
            Self::Duplicate => "duplicate",
            Self::NoRoute => "no_route",
            Self::UnknownNode => "unknown_node",
            Self::WrongChannel => "wrong_channel",
            Self::AboveChannelMax => "above_channel_max",
            Self::NotCleared => "not_cleared",
            Self::NotOnChannel => "not_on_channel",
            Self::BadChannelMax => "bad_channel_max",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::UnknownOrigin => "unknown_origin",
            Self::EnvelopeTooLarge => "envelope_too_large",
            Self::BadClock => "bad_clock",
            Self::NotARecipient => "not_a_recipient",
            Self::Decrypt => "decrypt",
            Self::FrameTooLarge => "frame_too_large",
            Self::Peer => "peer",
            Self::Store => "store",
            Self::Internal => "internal",
            Self::ByNextHop => "by_next_hop",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&OpenError> for RefuseReason {
    fn from(e: &OpenError) -> Self {
        match e {
            OpenError::TooLarge(_) => Self::EnvelopeTooLarge,
            OpenError::Decode { .. }
            | OpenError::InvalidHeader(_)
            | OpenError::WrongForm(..)
            | OpenError::KeyWrapMismatch => Self::Malformed,
            OpenError::UnknownOrigin(_) => Self::UnknownOrigin,
            OpenError::BadSignature(_) => Self::BadSignature,
            OpenError::FromTheFuture { .. } => Self::BadClock,
            OpenError::Expired { .. } => Self::Expired,
            OpenError::NotARecipient(_) => Self::NotARecipient,
            OpenError::Decrypt => Self::Decrypt,
        }
    }
}

impl From<&PolicyError> for RefuseReason {
    fn from(e: &PolicyError) -> Self {
        match e {
            PolicyError::WrongChannel { .. } => Self::WrongChannel,
            PolicyError::AboveChannelMax { .. } => Self::AboveChannelMax,
            PolicyError::NotCleared { .. } => Self::NotCleared,
            PolicyError::NotOnChannel { .. } => Self::NotOnChannel,
            PolicyError::BadChannelMax { .. } => Self::BadChannelMax,
        }
    }
}

/// A refusal: what to answer, count and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, as a counter name.
    pub reason: RefuseReason,
    /// The code on the wire.
    pub code: RejectCode,
    /// For humans: the answer's reason, the audit entry and the log.
    pub detail: String,
    /// Whether the sender should give up (false: retry later).
    pub permanent: bool,
    /// Whether to close the peer's connection after answering: it broke
    /// the channel's rules.
    pub close: bool,
}

impl Refusal {
    /// A permanent refusal that keeps the connection.
    #[must_use]
    pub fn new(reason: RefuseReason, code: RejectCode, detail: impl Into<String>) -> Self {
        Self {
            reason,
            code,
            detail: detail.into(),
            permanent: true,
            close: false,
        }
    }

    /// Something that does not decode or does not hold together.
    #[must_use]
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RefuseReason::Malformed, RejectCode::Malformed, detail)
    }

    /// Message `id` seen before (`permanent`), or being handled right now.
    #[must_use]
    pub fn duplicate(id: MessageId, permanent: bool) -> Self {
        Self {
            permanent,
            ..Self::new(
                RefuseReason::Duplicate,
                RejectCode::Duplicate,
                format!("message {id} was seen before"),
            )
        }
    }

    /// The store failed with `error`; the sender retries later.
    #[must_use]
    pub fn store(error: impl fmt::Display) -> Self {
        Self {
            permanent: false,
            ..Self::new(
                RefuseReason::Store,
                RejectCode::StoreFull,
                format!("store unavailable: {error}"),
            )
        }
    }

    /// This node failed; the sender retries later.
    #[must_use]
    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            permanent: false,
            ..Self::new(RefuseReason::Internal, RejectCode::Internal, detail)
        }
    }

    /// Recipients that cannot be routed, every one named.
    #[must_use]
    pub fn no_route(errors: &[RouteError]) -> Self {
        Self::new(RefuseReason::NoRoute, RejectCode::NoRoute, join(errors))
    }
}

impl From<&OpenError> for Refusal {
    fn from(e: &OpenError) -> Self {
        let code = match e {
            OpenError::BadSignature(_) => RejectCode::BadSignature,
            OpenError::Expired { .. } => RejectCode::Expired,
            OpenError::UnknownOrigin(_) => RejectCode::UnknownNode,
            OpenError::TooLarge(_) => RejectCode::FrameTooLarge,
            _ => RejectCode::Malformed,
        };
        Self::new(e.into(), code, e.to_string())
    }
}

impl From<OpenError> for Refusal {
    fn from(e: OpenError) -> Self {
        Self::from(&e)
    }
}

impl From<&PolicyError> for Refusal {
    fn from(e: &PolicyError) -> Self {
        Self {
            // A label above what this channel may carry is a peer breaking
            // the channel's rules: close its connection too.
            close: matches!(
                e,
                PolicyError::WrongChannel { .. } | PolicyError::AboveChannelMax { .. }
            ),
            ..Self::new(e.into(), RejectCode::LabelPolicy, e.to_string())
        }
    }
}

impl From<PolicyError> for Refusal {
    fn from(e: PolicyError) -> Self {
        Self::from(&e)
    }
}

impl From<&RouteError> for Refusal {
    fn from(e: &RouteError) -> Self {
        match e {
            RouteError::HopLimit { .. } => {
                Self::new(RefuseReason::HopLimit, RejectCode::HopLimit, e.to_string())
            }
            RouteError::NoRoute { .. } => Self::no_route(std::slice::from_ref(e)),
        }
    }
}

/// What to do with an arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this refusal; store nothing.
    Refuse(Refusal),
    /// Every check that needs no payload passed: store, queue and answer.
    Accept(Accepted),
}

/// An accepted arrival: what to store, in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Copies to queue for forwarding, one per next hop.
    pub copies: Copies,
    /// What to do here if this node is a recipient the copy serves.
    pub local: Option<Local>,
}

/// Delivery at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Open the payload (refuse as the [`OpenError`] says if it does not
    /// open), put the message in the inbox, and queue a signed receipt for
    /// the origin.
    Inbox {
        /// Where the receipt goes: `None` when this node is the origin (no
        /// receipt), else the copies to queue or the refusal if the origin
        /// cannot be routed. Apply it after opening the payload and sealing
        /// the receipt, so a payload that does not open is refused as such.
        receipt: Option<Result<Copies, Refusal>>,
    },
    /// A receipt addressed here: check it against its header and record
    /// the delivery it reports, instead of an inbox entry.
    ReceiptForUs,
}

/// Decides what to do with a transfer arriving at `ctx.here`. The first
/// broken rule decides, in this order:
///
/// 1. this node runs the channel (else `internal`);
/// 2. the hop count is within the limit (`hop_limit`);
/// 3. the envelope is there and verified (`malformed`, or the
///    [`OpenError`]'s reason: `bad_signature`, `expired`, `unknown_origin`, ...);
/// 4. ingress label policy: the class on this channel and within its
///    maximum (refusals that also close the connection), this node
///    cleared, the previous hop in the roster, on the channel and cleared
///    ([`policy::check_parties`]);
/// 5. `serves` names only recipients of the message (`malformed`);
/// 6. not seen before (`duplicate`, permanent) nor in progress
///    (`duplicate`, transient), the dedup lookup working (`store`);
/// 7. every served recipient routable (`no_route`, naming them all);
/// 8. every signed recipient (served or not: `serves` is not signed),
///    then every next hop, in the roster (`unknown_node`);
/// 9. routing label policy for those recipients ([`Party::Recipient`]),
///    then next hops ([`Party::NextHop`]).
///
/// Then accepted: a copy per next hop, and delivery here if this node is
/// served (see [`Local`]).
#[must_use]
pub fn decide(ctx: &Context<'_>, arrival: &Arrival<'_>) -> Decision {
    match accept(ctx, arrival) {
        Ok(a) => Decision::Accept(a),
        Err(r) => Decision::Refuse(r),
    }
}

fn accept(ctx: &Context<'_>, arrival: &Arrival<'_>) -> Result<Accepted, Refusal> {
    if ctx.channel_max.is_none() {
        return Err(Refusal::new(
            RefuseReason::Internal,
            RejectCode::Internal,
            "channel not running",
        ));
    }
    check_hop_limit(arrival.hop_count, ctx.hop_limit).map_err(|e| Refusal::from(&e))?;
    let h = match arrival.envelope {
        Verification::Valid(h) => h,
        Verification::Invalid(e) => return Err(e.into()),
        Verification::Missing => return Err(Refusal::malformed("transfer without an envelope")),
    };
    let class = h.label.class;
    // Ingress policy: the class on this channel, this node, the peer that sent it.
    let check = |parties: &[(Party, &NodeId)]| {
        policy::check_parties(ctx.roster, ctx.here, class, ctx.channel, ctx.channel_max, parties)
    };
    check(&[(Party::PreviousHop, arrival.previous_hop)])?;
    let serves = served(h, arrival.serves)?;
    match &arrival.seen {
        Seen::New => {}
        Seen::Durable => return Err(Refusal::duplicate(h.id, true)),
        Seen::Pending => return Err(Refusal::duplicate(h.id, false)),
        Seen::Unavailable(e) => return Err(Refusal::store(e)),
    }
    // Routing, and routing-time policy for every recipient and next hop.
    let plan = ctx
        .routes
        .plan(ctx.here, ctx.channel, &serves)
        .map_err(|e| Refusal::no_route(&e))?;
    // Every signed recipient, not only those this copy serves: `serves` is
    // not signed, so a hop could narrow it to hide a recipient the label
    // may not reach.
    let mut parties: Vec<(Party, &NodeId)> = h.recipients.iter().map(|r| (Party::Recipient, r)).collect();
    parties.extend(plan.copies.keys().map(|hop| (Party::NextHop, hop)));
    if let Some((_, n)) = parties.iter().find(|(_, n)| ctx.roster.node(n).is_none()) {
        return Err(Refusal::new(
            RefuseReason::UnknownNode,
            RejectCode::UnknownNode,
            format!("{n} is not in the roster"),
        ));
    }
    check(&parties)?;
    let local = plan.local.then(|| match h.content_type {
        ContentType::Receipt => Local::ReceiptForUs,
        _ => Local::Inbox {
            receipt: (h.origin != *ctx.here).then(|| receipt_route(ctx, &h.origin)),
        },
    });
    Ok(Accepted {
        copies: plan.copies,
        local,
    })
}

/// The recipients a copy serves: all of them if `serves` is empty, else
/// each of `serves`, which must be recipients.
fn served(h: &HeaderInfo, serves: &[String]) -> Result<Vec<NodeId>, Refusal> {
    if serves.is_empty() {
        return Ok(h.recipients.clone());
    }
    serves
        .iter()
        .map(|r| match NodeId::new(r) {
            Ok(id) if h.is_recipient(&id) => Ok(id),
            _ => Err(Refusal::malformed(format!(
                "serves {r:?}, which is not a recipient"
            ))),
        })
        .collect()
}

/// The copies for a receipt from this node to `origin`, on the channel the
/// message came on. Receipt copies are not policy-checked here: egress
/// checks them like any copy.
///
/// # Errors
/// A `no_route` refusal ("no route for the receipt: ...").
pub fn receipt_route(ctx: &Context<'_>, origin: &NodeId) -> Result<Copies, Refusal> {
    ctx.routes
        .plan(ctx.here, ctx.channel, std::slice::from_ref(origin))
        .map(|plan| plan.copies)
        .map_err(|e| {
            Refusal::new(
                RefuseReason::NoRoute,
                RejectCode::NoRoute,
                format!("no route for the receipt: {}", join(&e)),
            )
        })
}

fn join<E: fmt::Display>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a queued copy goes to its next hop now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Send it.
    Send,
    /// Expired: leave it queued for the sweeper, which marks it EXPIRED.
    Expired,
    /// Drop the copy and mark its recipients refused. The detail starts
    /// with `egress policy: `; the code is never sent.
    Refuse(Refusal),
}

/// Decides whether a copy of a message of `class`, expiring at
/// `expires_ms`, serving `serves`, may go to `next_hop` at `now_ms`:
/// not expired, then the label policy against the roster in force now
/// (the next hop first, then the recipients), so a clearance lowered since
/// the copy was queued stops it here.
#[must_use]
pub fn decide_egress(
    ctx: &Context<'_>,
    next_hop: &NodeId,
    serves: &[NodeId],
    class: Class,
    now_ms: i64,
    expires_ms: i64,
) -> Egress {
    if now_ms >= expires_ms {
        return Egress::Expired;
    }
    let mut parties: Vec<(Party, &NodeId)> = vec![(Party::NextHop, next_hop)];
    parties.extend(serves.iter().map(|r| (Party::Recipient, r)));
    match policy::check_parties(
        ctx.roster,
        ctx.here,
        class,
        ctx.channel,
        ctx.channel_max,
        &parties,
    ) {
        Ok(()) => Egress::Send,
        Err(e) => Egress::Refuse(Refusal {
            detail: format!("egress policy: {e}"),
            // Nothing to close: the copy is ours.
            close: false,
            ..Refusal::from(&e)
        }),
    }
}

/// What the next hop's answer to a transfer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHopAnswer {
    /// The next hop has custody: it accepted, or it already had the
    /// message (a permanent duplicate: an earlier answer was lost).
    Custody,
    /// Refused for good: drop the copy and mark its recipients refused.
    /// The reason is `by_next_hop`, the code the next hop's, the detail
    /// `"<CODE>: <its reason>"`.
    Refused(Refusal),
    /// A transient refusal: keep the copy and retry later.
    Retry,
    /// Not an answer: close the connection with the protocol code.
    ProtocolError,
}

/// Classifies the next hop's answer frame (its `kind`).
#[must_use]
pub fn next_hop_answer(kind: Option<&pb::frame::Kind>) -> NextHopAnswer {
    match kind {
        Some(pb::frame::Kind::Accepted(_)) => NextHopAnswer::Custody,
        Some(pb::frame::Kind::Rejected(r)) if r.code == RejectCode::Duplicate as i32 && r.permanent => {
            NextHopAnswer::Custody
        }
        Some(pb::frame::Kind::Rejected(r)) if r.permanent => {
            let code = RejectCode::try_from(r.code).ok();
            let name = code.map_or("UNKNOWN", |c| c.as_str_name());
            NextHopAnswer::Refused(Refusal::new(
                RefuseReason::ByNextHop,
                code.unwrap_or(RejectCode::Unspecified),
                format!("{name}: {}", r.reason),
            ))
        }
        Some(pb::frame::Kind::Rejected(_)) => NextHopAnswer::Retry,
        Some(pb::frame::Kind::Transfer(_)) | None => NextHopAnswer::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    //! The decisions against oracles written from the rules (DESIGN §5, §6)
    //! and today's node, case by case: the oracles never call the code
    //! under test nor the policy functions it uses.

    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::fixture::{DAY_MS, Fixture};
    use crate::{Label, Mode, Precedence};

    use Class::{Confidential, Open, Restricted, Secret, Sensitive, TopSecret};

    const NOW: i64 = 1_790_000_000_000;
    const EXPIRES: i64 = NOW + DAY_MS;
    const LIMIT: u32 = 8;
    /// Every node of the test network; all TOP_SECRET on both channels
    /// unless a table says otherwise.
    const NODES: [&str; 7] = ["here", "prev", "next", "dest", "origin", "lost", "stranger"];

    fn n(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    /// `here`'s routes: `prev` and `next` are direct peers on both channels;
    /// `dest` is reached through `next` and `origin` through `prev` (static
    /// routes); no default route, so `lost` and `stranger` are unroutable.
    fn routes() -> RouteTable {
        let mut t = RouteTable::default();
        for c in Channel::ALL {
            t.peers.insert(c, [n("prev"), n("next")].into());
        }
        t.static_routes.insert(n("dest"), n("next"));
        t.static_routes.insert(n("origin"), n("prev"));
        t
    }

    fn fixture() -> Fixture {
        let nodes: Vec<(&str, Class)> = NODES.iter().map(|id| (*id, TopSecret)).collect();
        Fixture::new(&nodes, NOW)
    }

    /// A node's roster entry, as seen from the arrival channel.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Level {
        /// Cleared for the class, on `open`, and on `secure` from RESTRICTED up.
        Cleared(Class),
        /// TOP_SECRET, but on the other channel only.
        OffChannel,
        /// Not in the roster.
        Absent,
    }

    const LEVELS: [Level; 8] = [
        Level::Cleared(Open),
        Level::Cleared(Sensitive),
        Level::Cleared(Restricted),
        Level::Cleared(Confidential),
        Level::Cleared(Secret),
        Level::Cleared(TopSecret),
        Level::OffChannel,
        Level::Absent,
    ];

    fn other(c: Channel) -> Channel {
        match c {
            Channel::Open => Channel::Secure,
            Channel::Secure => Channel::Open,
        }
    }

    fn channels_for(c: Class) -> Vec<Channel> {
        if c >= Restricted {
            vec![Channel::Open, Channel::Secure]
        } else {
            vec![Channel::Open]
        }
    }

    /// Sets `id`'s roster entry to `level`, for arrivals on `channel`.
    fn set(raw: &mut pb::Roster, id: &str, level: Level, channel: Channel) {
        let (clearance, channels) = match level {
            Level::Absent => {
                raw.nodes.retain(|e| e.id != id);
                return;
            }
            Level::Cleared(c) => (c, channels_for(c)),
            Level::OffChannel => (TopSecret, vec![other(channel)]),
        };
        let e = raw.nodes.iter_mut().find(|e| e.id == id).expect("fixture node");
        e.clearance = clearance.to_proto() as i32;
        e.channels = channels.iter().map(|c| c.to_proto() as i32).collect();
    }

    fn header(class: Class, recipients: &[&str], content_type: ContentType, origin: &str) -> HeaderInfo {
        HeaderInfo {
            id: MessageId::new_v7(NOW - 1000, [7; 10]),
            origin: n(origin),
            author: "TiB".into(),
            created_ms: NOW - 1000,
            expires_ms: EXPIRES,
            label: Label::new(class),
            precedence: Precedence::Priority,
            mode: Mode::Exercise,
            content_type,
            recipients: recipients.iter().map(|r| n(r)).collect(),
            in_reply_to: None,
            roster_serial: 1,
        }
    }

    /// The oracle's refusals, spelled out field by field.
    fn refusal(reason: RefuseReason, code: RejectCode, detail: String) -> Refusal {
        Refusal {
            reason,
            code,
            detail,
            permanent: true,
            close: false,
        }
    }

    fn refused(reason: RefuseReason, code: RejectCode, detail: String) -> Decision {
        Decision::Refuse(refusal(reason, code, detail))
    }

    /// A label-policy refusal: reason, detail, close.
    type LabelRefusal = (RefuseReason, String, bool);

    /// The label rules, first broken rule deciding: the channel is run and
    /// the class belongs on it (else close), the configured maximum is one
    /// the channel allows, the class within it (else close), this node
    /// cleared (its roster clearance capped by the maximum; OPEN if not in
    /// the roster), then each party in the roster (else as cleared for
    /// OPEN), on the channel, cleared.
    fn want_label(
        class: Class,
        channel: Channel,
        max: Option<Class>,
        here: Option<Class>,
        parties: &[(&str, &str, Level)],
    ) -> Option<LabelRefusal> {
        let required = if class >= Restricted {
            Channel::Secure
        } else {
            Channel::Open
        };
        let wrong_channel = (
            RefuseReason::WrongChannel,
            format!("{class} travels only on the {required} channel, not on {channel}"),
            true,
        );
        let Some(max) = max else {
            return Some(wrong_channel);
        };
        if channel != required {
            return Some(wrong_channel);
        }
        let (floor, ceiling) = match channel {
            Channel::Open => (Open, Sensitive),
            Channel::Secure => (Restricted, TopSecret),
        };
        if max < floor || max > ceiling {
            return Some((
                RefuseReason::BadChannelMax,
                format!("max_class {max} is outside the {channel} channel's range {floor}..={ceiling}"),
                false,
            ));
        }
        if class > max {
            return Some((
                RefuseReason::AboveChannelMax,
                format!("{class} is above the {channel} channel's maximum {max}"),
                true,
            ));
        }
        let local = here.map_or(Open, |c| c.min(max));
        if class > local {
            return Some((
                RefuseReason::NotCleared,
                format!("this node here is cleared for {local}, not {class}"),
                false,
            ));
        }
        for (party, id, level) in parties {
            let refusal = match *level {
                Level::Absent => Some((
                    RefuseReason::NotCleared,
                    format!("{party} {id} is cleared for OPEN, not {class}"),
                )),
                Level::OffChannel => Some((
                    RefuseReason::NotOnChannel,
                    format!("{party} {id} is not on the {channel} channel"),
                )),
                Level::Cleared(c) if !channels_for(c).contains(&channel) => Some((
                    RefuseReason::NotOnChannel,
                    format!("{party} {id} is not on the {channel} channel"),
                )),
                Level::Cleared(c) if class > c => Some((
                    RefuseReason::NotCleared,
                    format!("{party} {id} is cleared for {c}, not {class}"),
                )),
                Level::Cleared(_) => None,
            };
            if let Some((reason, detail)) = refusal {
                return Some((reason, detail, false));
            }
        }
        None
    }

    fn label_refused((reason, detail, close): LabelRefusal) -> Decision {
        Decision::Refuse(Refusal {
            close,
            ..refusal(reason, RejectCode::LabelPolicy, detail)
        })
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Verify {
        Valid,
        BadSignature,
        Expired,
        UnknownOrigin,
        Missing,
    }

    const VERIFIES: [Verify; 5] = [
        Verify::Valid,
        Verify::BadSignature,
        Verify::Expired,
        Verify::UnknownOrigin,
        Verify::Missing,
    ];

    fn open_error(v: Verify) -> Option<OpenError> {
        match v {
            Verify::BadSignature => Some(OpenError::BadSignature(n("origin"))),
            Verify::Expired => Some(OpenError::Expired {
                expires_ms: NOW - 1,
                now_ms: NOW,
            }),
            Verify::UnknownOrigin => Some(OpenError::UnknownOrigin("ghost".into())),
            Verify::Valid | Verify::Missing => None,
        }
    }

    /// What a verification outcome other than valid comes to.
    fn want_verify(v: Verify) -> Option<Decision> {
        let (reason, code, detail) = match v {
            Verify::Valid => return None,
            Verify::BadSignature => (
                RefuseReason::BadSignature,
                RejectCode::BadSignature,
                "signature does not verify against origin origin's roster key".to_owned(),
            ),
            Verify::Expired => (
                RefuseReason::Expired,
                RejectCode::Expired,
                format!("expired at {} (now {NOW})", NOW - 1),
            ),
            Verify::UnknownOrigin => (
                RefuseReason::UnknownOrigin,
                RejectCode::UnknownNode,
                "origin \"ghost\" is not in the roster".to_owned(),
            ),
            Verify::Missing => (
                RefuseReason::Malformed,
                RejectCode::Malformed,
                "transfer without an envelope".to_owned(),
            ),
        };
        Some(refused(reason, code, detail))
    }

    fn seens() -> [Seen; 4] {
        [
            Seen::New,
            Seen::Durable,
            Seen::Pending,
            Seen::Unavailable("disk on fire".into()),
        ]
    }

    /// What a dedup outcome other than new comes to.
    fn want_seen(seen: &Seen, id: MessageId) -> Option<Decision> {
        let dup = |permanent| {
            Decision::Refuse(Refusal {
                permanent,
                ..refusal(
                    RefuseReason::Duplicate,
                    RejectCode::Duplicate,
                    format!("message {id} was seen before"),
                )
            })
        };
        match seen {
            Seen::New => None,
            Seen::Durable => Some(dup(true)),
            Seen::Pending => Some(dup(false)),
            Seen::Unavailable(e) => Some(Decision::Refuse(Refusal {
                permanent: false,
                ..refusal(
                    RefuseReason::Store,
                    RejectCode::StoreFull,
                    format!("store unavailable: {e}"),
                )
            })),
        }
    }

    fn want_internal() -> Decision {
        refused(
            RefuseReason::Internal,
            RejectCode::Internal,
            "channel not running".into(),
        )
    }

    fn want_hop_limit(hops: u32) -> Option<Decision> {
        (hops > LIMIT).then(|| {
            refused(
                RefuseReason::HopLimit,
                RejectCode::HopLimit,
                format!("hop count {hops} is over the limit {LIMIT}"),
            )
        })
    }

    fn copies(entries: &[(&str, &[&str])]) -> Copies {
        entries
            .iter()
            .map(|(hop, rs)| (n(hop), rs.iter().map(|r| n(r)).collect()))
            .collect()
    }

    /// The receipt back to `origin`, which `here` routes through `prev`.
    fn receipt_to_origin() -> Option<Result<Copies, Refusal>> {
        Some(Ok(copies(&[("prev", &["origin"])])))
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    enum Topology {
        /// The recipient is `here`.
        Here,
        /// The recipient is `dest`, through the peer `next`.
        ViaPeer,
        /// The recipient is `lost`, which has no route.
        Unroutable,
    }

    const TOPOLOGIES: [Topology; 3] = [Topology::Here, Topology::ViaPeer, Topology::Unroutable];

    fn recipient_of(t: Topology) -> &'static str {
        match t {
            Topology::Here => "here",
            Topology::ViaPeer => "dest",
            Topology::Unroutable => "lost",
        }
    }

    /// The maximum `here`, cleared for `clearance`, runs `channel` with, as
    /// a node's configuration defaults it: min(ceiling, clearance), and the
    /// channel not run if that is below the channel's floor.
    fn default_max(clearance: Class, channel: Channel) -> Option<Class> {
        match channel {
            Channel::Open => Some(clearance.min(Sensitive)),
            Channel::Secure => (clearance >= Restricted).then_some(clearance),
        }
    }

    #[derive(Debug)]
    struct MainCase<'a> {
        verify: Verify,
        hops: u32,
        class: Class,
        channel: Channel,
        here: Class,
        next: Level,
        recipient: Level,
        seen: &'a Seen,
        topology: Topology,
    }

    /// The main table's oracle. `prev` is TOP_SECRET on both channels.
    fn want_main(c: &MainCase<'_>, id: MessageId) -> Decision {
        let Some(max) = default_max(c.here, c.channel) else {
            return want_internal();
        };
        if let Some(d) = want_hop_limit(c.hops).or_else(|| want_verify(c.verify)) {
            return d;
        }
        let prev = [("previous hop", "prev", Level::Cleared(TopSecret))];
        if let Some(r) = want_label(c.class, c.channel, Some(max), Some(c.here), &prev) {
            return label_refused(r);
        }
        if let Some(d) = want_seen(c.seen, id) {
            return d;
        }
        let unknown = |id: &str| {
            refused(
                RefuseReason::UnknownNode,
                RejectCode::UnknownNode,
                format!("{id} is not in the roster"),
            )
        };
        let label = |parties: &[(&str, &str, Level)]| {
            want_label(c.class, c.channel, Some(max), Some(c.here), parties).map(label_refused)
        };
        match c.topology {
            Topology::Unroutable => refused(
                RefuseReason::NoRoute,
                RejectCode::NoRoute,
                format!("no route to lost on the {} channel", c.channel),
            ),
            Topology::Here => label(&[("recipient", "here", Level::Cleared(c.here))]).unwrap_or_else(|| {
                Decision::Accept(Accepted {
                    copies: Copies::new(),
                    local: Some(Local::Inbox {
                        receipt: receipt_to_origin(),
                    }),
                })
            }),
            Topology::ViaPeer if c.recipient == Level::Absent => unknown("dest"),
            Topology::ViaPeer if c.next == Level::Absent => unknown("next"),
            Topology::ViaPeer => label(&[("recipient", "dest", c.recipient), ("next hop", "next", c.next)])
                .unwrap_or_else(|| {
                    Decision::Accept(Accepted {
                        copies: copies(&[("next", &["dest"])]),
                        local: None,
                    })
                }),
        }
    }

    /// The main table: every combination of verification outcome × hop
    /// count under/at/over the limit × class × arrival channel × this
    /// node's clearance (its channel maximum defaulted from it) × the next
    /// hop's and the recipient's roster entry × dedup outcome × where the
    /// recipient is.
    #[test]
    fn ingress_decision_table() {
        let f = fixture();
        let table = routes();
        let mut rosters = HashMap::new();
        for channel in Channel::ALL {
            for here in Class::ALL {
                for (ni, next) in LEVELS.into_iter().enumerate() {
                    for (ri, recipient) in LEVELS.into_iter().enumerate() {
                        let roster = f.roster_with(|raw| {
                            set(raw, "here", Level::Cleared(here), channel);
                            set(raw, "next", next, channel);
                            set(raw, "dest", recipient, channel);
                            set(raw, "lost", recipient, channel);
                        });
                        rosters.insert((channel, here, ni, ri), roster);
                    }
                }
            }
        }
        let headers: HashMap<(Class, Topology), HeaderInfo> = Class::ALL
            .into_iter()
            .flat_map(|class| TOPOLOGIES.map(|t| (class, t)))
            .map(|(class, t)| {
                let h = header(class, &[recipient_of(t)], ContentType::SituationReport, "origin");
                ((class, t), h)
            })
            .collect();
        let seens = seens();
        let here = n("here");
        let prev = n("prev");
        let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut cases = 0;
        for verify in VERIFIES {
            let error = open_error(verify);
            for hops in [LIMIT - 1, LIMIT, LIMIT + 1] {
                for class in Class::ALL {
                    for channel in Channel::ALL {
                        for here_clearance in Class::ALL {
                            for (ni, next) in LEVELS.into_iter().enumerate() {
                                for (ri, recipient) in LEVELS.into_iter().enumerate() {
                                    let roster = &rosters[&(channel, here_clearance, ni, ri)];
                                    let ctx = Context {
                                        here: &here,
                                        channel,
                                        channel_max: default_max(here_clearance, channel),
                                        roster,
                                        routes: &table,
                                        hop_limit: LIMIT,
                                    };
                                    for seen in &seens {
                                        for topology in TOPOLOGIES {
                                            let h = &headers[&(class, topology)];
                                            let envelope = match (&error, verify) {
                                                (Some(e), _) => Verification::Invalid(e),
                                                (None, Verify::Missing) => Verification::Missing,
                                                (None, _) => Verification::Valid(h),
                                            };
                                            let arrival = Arrival {
                                                previous_hop: &prev,
                                                hop_count: hops,
                                                envelope,
                                                serves: &[],
                                                seen: seen.clone(),
                                            };
                                            let case = MainCase {
                                                verify,
                                                hops,
                                                class,
                                                channel,
                                                here: here_clearance,
                                                next,
                                                recipient,
                                                seen,
                                                topology,
                                            };
                                            let got = decide(&ctx, &arrival);
                                            assert_eq!(got, want_main(&case, h.id), "{case:?}");
                                            *outcomes.entry(outcome(&got)).or_default() += 1;
                                            cases += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 3 * 6 * 2 * 6 * 8 * 8 * 4 * 3);
        // Every rule is reached by some case, and so is acceptance.
        for want in [
            "internal",
            "hop_limit",
            "malformed",
            "bad_signature",
            "expired",
            "unknown_origin",
            "wrong_channel",
            "above_channel_max",
            "duplicate",
            "store",
            "no_route",
            "unknown_node",
            "not_on_channel",
            "not_cleared",
            "accept",
        ] {
            assert!(
                outcomes.get(want).copied().unwrap_or(0) > 0,
                "{want}: {outcomes:?}"
            );
        }
    }

    fn outcome(d: &Decision) -> &'static str {
        match d {
            Decision::Refuse(r) => r.reason.as_str(),
            Decision::Accept(_) => "accept",
        }
    }

    /// Ingress policy at this node: every class × channel × configured
    /// maximum (not running, and every class, also ones outside the
    /// channel's range) × this node's roster entry × the previous hop's.
    #[test]
    fn ingress_policy_table() {
        let f = fixture();
        let table = routes();
        let here_levels: Vec<Option<Class>> = Class::ALL.into_iter().map(Some).chain([None]).collect();
        let maxima: Vec<Option<Class>> = std::iter::once(None).chain(Class::ALL.map(Some)).collect();
        let here = n("here");
        let prev = n("prev");
        let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut cases = 0;
        for channel in Channel::ALL {
            for here_level in &here_levels {
                for prev_level in LEVELS {
                    let roster = f.roster_with(|raw| {
                        let level = here_level.map_or(Level::Absent, Level::Cleared);
                        set(raw, "here", level, channel);
                        set(raw, "prev", prev_level, channel);
                    });
                    for class in Class::ALL {
                        let h = header(class, &["dest"], ContentType::SituationReport, "origin");
                        for max in &maxima {
                            let ctx = Context {
                                here: &here,
                                channel,
                                channel_max: *max,
                                roster: &roster,
                                routes: &table,
                                hop_limit: LIMIT,
                            };
                            let arrival = Arrival {
                                previous_hop: &prev,
                                hop_count: 1,
                                envelope: Verification::Valid(&h),
                                serves: &[],
                                seen: Seen::New,
                            };
                            let want = if max.is_none() {
                                want_internal()
                            } else {
                                let parties = [("previous hop", "prev", prev_level)];
                                match want_label(class, channel, *max, *here_level, &parties) {
                                    Some(r) => label_refused(r),
                                    None => Decision::Accept(Accepted {
                                        copies: copies(&[("next", &["dest"])]),
                                        local: None,
                                    }),
                                }
                            };
                            let got = decide(&ctx, &arrival);
                            assert_eq!(
                                got, want,
                                "{class} on {channel}, max {max:?}, here {here_level:?}, prev {prev_level:?}"
                            );
                            *outcomes.entry(outcome(&got)).or_default() += 1;
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 7 * 8 * 6 * 7);
        for want in [
            "internal",
            "wrong_channel",
            "bad_channel_max",
            "above_channel_max",
            "not_cleared",
            "not_on_channel",
            "accept",
        ] {
            assert!(
                outcomes.get(want).copied().unwrap_or(0) > 0,
                "{want}: {outcomes:?}"
            );
        }
    }

    /// Where `here` routes `r`, from [`routes`]; `None` if nowhere.
    fn hop_of(r: &str) -> Option<&'static str> {
        match r {
            "next" | "dest" => Some("next"),
            "prev" | "origin" => Some("prev"),
            _ => None,
        }
    }

    #[derive(Debug, Clone, Copy)]
    struct LocalCase<'a> {
        channel: Channel,
        class: Class,
        recipients: &'a [&'a str],
        serves: &'a [&'a str],
        content_type: ContentType,
        origin: &'a str,
        seen: &'a Seen,
    }

    /// The local-delivery table's oracle: everyone TOP_SECRET on both
    /// channels, each channel run at its ceiling, so past the channel rule
    /// only `serves`, dedup, routes, content type and origin decide.
    fn want_local(c: &LocalCase<'_>, id: MessageId) -> Decision {
        let LocalCase {
            channel,
            class,
            recipients,
            serves,
            content_type,
            origin,
            seen,
        } = *c;
        let prev = [("previous hop", "prev", Level::Cleared(TopSecret))];
        if let Some(r) = want_label(class, channel, Some(channel.ceiling()), Some(TopSecret), &prev) {
            return label_refused(r);
        }
        let mut served: Vec<&str> = Vec::new();
        if serves.is_empty() {
            served.extend(recipients);
        }
        for s in serves {
            if !recipients.contains(s) {
                return refused(
                    RefuseReason::Malformed,
                    RejectCode::Malformed,
                    format!("serves {s:?}, which is not a recipient"),
                );
            }
            served.push(s);
        }
        if let Some(d) = want_seen(seen, id) {
            return d;
        }
        let no_route = |r: &str| format!("no route to {r} on the {channel} channel");
        let unroutable: Vec<String> = served
            .iter()
            .filter(|r| **r != "here" && hop_of(r).is_none())
            .map(|r| no_route(r))
            .collect();
        if !unroutable.is_empty() {
            return refused(RefuseReason::NoRoute, RejectCode::NoRoute, unroutable.join("; "));
        }
        let mut want_copies: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in served.iter().filter(|r| **r != "here") {
            want_copies
                .entry(hop_of(r).expect("routable"))
                .or_default()
                .push(r);
        }
        let want_copies: Vec<(&str, &[&str])> =
            want_copies.iter().map(|(h, rs)| (*h, rs.as_slice())).collect();
        let local = served.contains(&"here").then(|| {
            if content_type == ContentType::Receipt {
                Local::ReceiptForUs
            } else {
                Local::Inbox {
                    receipt: match origin {
                        "here" => None,
                        "origin" => receipt_to_origin(),
                        other => Some(Err(refusal(
                            RefuseReason::NoRoute,
                            RejectCode::NoRoute,
                            format!("no route for the receipt: {}", no_route(other)),
                        ))),
                    },
                }
            }
        });
        Decision::Accept(Accepted {
            copies: copies(&want_copies),
            local,
        })
    }

    /// Local delivery, receipts and `serves`: every recipient list ×
    /// `serves` form × class × channel × content type × origin (this node,
    /// a routable one, an unroutable one) × dedup outcome. Class and dedup
    /// are here to pin down the order: label policy, then `serves`, then
    /// dedup, then routing.
    #[test]
    fn local_delivery_and_serves_table() {
        let f = fixture();
        let table = routes();
        let here = n("here");
        let prev = n("prev");
        let recipient_lists: [&[&str]; 5] = [
            &["here"],
            &["dest"],
            &["here", "dest"],
            &["dest", "lost"],
            &["lost", "stranger", "here"],
        ];
        let seens = seens();
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        let mut cases = 0;
        for channel in Channel::ALL {
            let ctx = Context {
                here: &here,
                channel,
                channel_max: Some(channel.ceiling()),
                roster: &f.roster,
                routes: &table,
                hop_limit: LIMIT,
            };
            for recipients in recipient_lists {
                let serve_forms: [Vec<&str>; 6] = [
                    vec![],
                    vec![recipients[0]],
                    recipients.to_vec(),
                    vec!["stranger"],
                    vec!["Not An Id"],
                    vec![recipients[0], recipients[0]],
                ];
                for serves in &serve_forms {
                    let serves_owned: Vec<String> = serves.iter().map(|s| (*s).to_owned()).collect();
                    for class in Class::ALL {
                        for content_type in ContentType::ALL.iter().copied() {
                            for origin in ["here", "origin", "stranger"] {
                                let h = header(class, recipients, content_type, origin);
                                for seen in &seens {
                                    let arrival = Arrival {
                                        previous_hop: &prev,
                                        hop_count: 3,
                                        envelope: Verification::Valid(&h),
                                        serves: &serves_owned,
                                        seen: seen.clone(),
                                    };
                                    let case = LocalCase {
                                        channel,
                                        class,
                                        recipients,
                                        serves,
                                        content_type,
                                        origin,
                                        seen,
                                    };
                                    let got = decide(&ctx, &arrival);
                                    assert_eq!(got, want_local(&case, h.id), "{case:?}");
                                    let kind = match &got {
                                        Decision::Accept(Accepted {
                                            local: Some(Local::ReceiptForUs),
                                            ..
                                        }) => "receipt for us".to_owned(),
                                        Decision::Accept(Accepted {
                                            local: Some(Local::Inbox { receipt }),
                                            ..
                                        }) => format!(
                                            "inbox, receipt {}",
                                            match receipt {
                                                None => "none",
                                                Some(Ok(_)) => "routed",
                                                Some(Err(_)) => "unroutable",
                                            }
                                        ),
                                        other => outcome(other).to_owned(),
                                    };
                                    *outcomes.entry(kind).or_default() += 1;
                                    cases += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            cases,
            2 * 5 * 6 * Class::ALL.len() * ContentType::ALL.len() * 3 * 4
        );
        for want in [
            "receipt for us",
            "inbox, receipt none",
            "inbox, receipt routed",
            "inbox, receipt unroutable",
            "accept",
            "malformed",
            "no_route",
            "duplicate",
            "store",
            "wrong_channel",
        ] {
            assert!(
                outcomes.get(want).copied().unwrap_or(0) > 0,
                "{want}: {outcomes:?}"
            );
        }
    }

    /// A duplicated entry in `serves` is taken as given (today's node does
    /// the same): the copy serves the recipient twice.
    #[test]
    fn serves_duplicates_pass_through() {
        let f = fixture();
        let table = routes();
        let here = n("here");
        let ctx = Context {
            here: &here,
            channel: Channel::Open,
            channel_max: Some(Sensitive),
            roster: &f.roster,
            routes: &table,
            hop_limit: LIMIT,
        };
        let h = header(Sensitive, &["dest"], ContentType::SituationReport, "origin");
        let serves = ["dest".to_owned(), "dest".to_owned()];
        let arrival = Arrival {
            previous_hop: &n("prev"),
            hop_count: 1,
            envelope: Verification::Valid(&h),
            serves: &serves,
            seen: Seen::New,
        };
        assert_eq!(
            decide(&ctx, &arrival),
            Decision::Accept(Accepted {
                copies: copies(&[("next", &["dest", "dest"])]),
                local: None,
            })
        );
    }

    /// `serves` is not signed: a copy that serves only a cleared recipient
    /// is still refused when another signed recipient may not hold the
    /// label, so a hop cannot hide one by narrowing `serves`.
    #[test]
    fn the_label_check_covers_every_signed_recipient_not_only_those_served() {
        let f = fixture();
        let table = routes();
        let here = n("here");
        let roster = f.roster_with(|raw| set(raw, "origin", Level::Cleared(Open), Channel::Open));
        let ctx = Context {
            here: &here,
            channel: Channel::Open,
            channel_max: Some(Sensitive),
            roster: &roster,
            routes: &table,
            hop_limit: LIMIT,
        };
        let h = header(
            Sensitive,
            &["dest", "origin"],
            ContentType::SituationReport,
            "origin",
        );
        let serves = ["dest".to_owned()];
        let prev = n("prev");
        let arrival = Arrival {
            previous_hop: &prev,
            hop_count: 1,
            envelope: Verification::Valid(&h),
            serves: &serves,
            seen: Seen::New,
        };
        match decide(&ctx, &arrival) {
            Decision::Refuse(r) => {
                assert_eq!(r.reason, RefuseReason::NotCleared, "{r:?}");
                assert!(r.detail.contains("origin"), "{r:?}");
            }
            other => panic!("a hidden uncleared recipient must refuse, got {other:?}"),
        }
        // With every recipient cleared, the same narrowed copy passes.
        let ctx = Context {
            roster: &f.roster,
            ..ctx
        };
        assert!(matches!(decide(&ctx, &arrival), Decision::Accept(_)));
    }

    /// Egress: every class × channel × configured maximum × the next hop's
    /// and the recipient's roster entry × now before, at and after expiry.
    #[test]
    fn egress_decision_table() {
        let f = fixture();
        let table = routes();
        let here = n("here");
        let next = n("next");
        let dest = [n("dest")];
        let maxima: Vec<Option<Class>> = std::iter::once(None).chain(Class::ALL.map(Some)).collect();
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        let mut cases = 0;
        for channel in Channel::ALL {
            for next_level in LEVELS {
                for dest_level in LEVELS {
                    let roster = f.roster_with(|raw| {
                        set(raw, "next", next_level, channel);
                        set(raw, "dest", dest_level, channel);
                    });
                    for max in &maxima {
                        let ctx = Context {
                            here: &here,
                            channel,
                            channel_max: *max,
                            roster: &roster,
                            routes: &table,
                            hop_limit: LIMIT,
                        };
                        for class in Class::ALL {
                            for now in [EXPIRES - 1, EXPIRES, EXPIRES + 1] {
                                let parties = [
                                    ("next hop", "next", next_level),
                                    ("recipient", "dest", dest_level),
                                ];
                                let want = if now >= EXPIRES {
                                    Egress::Expired
                                } else {
                                    match want_label(class, channel, *max, Some(TopSecret), &parties) {
                                        None => Egress::Send,
                                        Some((reason, detail, _)) => Egress::Refuse(refusal(
                                            reason,
                                            RejectCode::LabelPolicy,
                                            format!("egress policy: {detail}"),
                                        )),
                                    }
                                };
                                let got = decide_egress(&ctx, &next, &dest, class, now, EXPIRES);
                                assert_eq!(
                                    got, want,
                                    "{class} on {channel} max {max:?}, next {next_level:?}, dest {dest_level:?}, now {now}"
                                );
                                let kind = match &got {
                                    Egress::Send => "send".to_owned(),
                                    Egress::Expired => "expired".to_owned(),
                                    Egress::Refuse(r) => r.reason.as_str().to_owned(),
                                };
                                *outcomes.entry(kind).or_default() += 1;
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 8 * 8 * 7 * 6 * 3);
        for want in [
            "send",
            "expired",
            "wrong_channel",
            "bad_channel_max",
            "above_channel_max",
            "not_cleared",
            "not_on_channel",
        ] {
            assert!(
                outcomes.get(want).copied().unwrap_or(0) > 0,
                "{want}: {outcomes:?}"
            );
        }
    }

    #[test]
    fn next_hop_answers() {
        use pb::frame::Kind;
        let rejected = |code: i32, permanent: bool| {
            Kind::Rejected(pb::Rejected {
                code,
                reason: "because".into(),
                permanent,
            })
        };
        let by_next_hop = |code: RejectCode, detail: &str| {
            NextHopAnswer::Refused(refusal(RefuseReason::ByNextHop, code, detail.to_owned()))
        };
        let accepted = Kind::Accepted(pb::Accepted {
            message_id: vec![1; 16],
        });
        assert_eq!(next_hop_answer(Some(&accepted)), NextHopAnswer::Custody);
        // Any message id: the answer is not checked against what was sent.
        let odd = Kind::Accepted(pb::Accepted { message_id: vec![] });
        assert_eq!(next_hop_answer(Some(&odd)), NextHopAnswer::Custody);
        let dup = RejectCode::Duplicate as i32;
        assert_eq!(
            next_hop_answer(Some(&rejected(dup, true))),
            NextHopAnswer::Custody
        );
        assert_eq!(next_hop_answer(Some(&rejected(dup, false))), NextHopAnswer::Retry);
        let codes = [
            (RejectCode::Unspecified, "REJECT_CODE_UNSPECIFIED"),
            (RejectCode::BadSignature, "BAD_SIGNATURE"),
            (RejectCode::Malformed, "MALFORMED"),
            (RejectCode::Expired, "EXPIRED"),
            (RejectCode::HopLimit, "HOP_LIMIT"),
            (RejectCode::LabelPolicy, "LABEL_POLICY"),
            (RejectCode::UnknownNode, "UNKNOWN_NODE"),
            (RejectCode::NoRoute, "NO_ROUTE"),
            (RejectCode::StoreFull, "STORE_FULL"),
            (RejectCode::FrameTooLarge, "FRAME_TOO_LARGE"),
            (RejectCode::Internal, "INTERNAL"),
        ];
        for (code, name) in codes {
            assert_eq!(
                next_hop_answer(Some(&rejected(code as i32, true))),
                by_next_hop(code, &format!("{name}: because")),
                "{name}"
            );
            assert_eq!(
                next_hop_answer(Some(&rejected(code as i32, false))),
                NextHopAnswer::Retry,
                "{name}"
            );
        }
        assert_eq!(
            next_hop_answer(Some(&rejected(99, true))),
            by_next_hop(RejectCode::Unspecified, "UNKNOWN: because")
        );
        assert_eq!(next_hop_answer(Some(&rejected(99, false))), NextHopAnswer::Retry);
        let transfer = Kind::Transfer(pb::Transfer::default());
        assert_eq!(next_hop_answer(Some(&transfer)), NextHopAnswer::ProtocolError);
        assert_eq!(next_hop_answer(None), NextHopAnswer::ProtocolError);
    }

    #[test]
    fn reason_names_are_todays_counters() {
        let names: Vec<&str> = RefuseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "hop_limit",
                "malformed",
                "duplicate",
                "no_route",
                "unknown_node",
                "wrong_channel",
                "above_channel_max",
                "not_cleared",
                "not_on_channel",
                "bad_channel_max",
                "bad_signature",
                "expired",
                "unknown_origin",
                "envelope_too_large",
                "bad_clock",
                "not_a_recipient",
                "decrypt",
                "frame_too_large",
                "peer",
                "store",
                "internal",
                "by_next_hop",
            ]
        );
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), RefuseReason::ALL.len());
        assert_eq!(RefuseReason::NoRoute.to_string(), "no_route");
    }

    /// Each verification error keeps its counter name (`OpenError::reason`)
    /// and gets today's wire code.
    #[test]
    fn open_errors_map_to_todays_codes() {
        use crate::envelope::HeaderError;
        let cases = [
            (OpenError::TooLarge(5 << 20), RejectCode::FrameTooLarge),
            (
                OpenError::Decode {
                    part: "sealed",
                    detail: "bad wire type".into(),
                },
                RejectCode::Malformed,
            ),
            (
                OpenError::InvalidHeader(HeaderError::NoRecipients),
                RejectCode::Malformed,
            ),
            (OpenError::UnknownOrigin("ghost".into()), RejectCode::UnknownNode),
            (OpenError::BadSignature(n("origin")), RejectCode::BadSignature),
            (
                OpenError::FromTheFuture {
                    created_ms: NOW + DAY_MS,
                    now_ms: NOW,
                },
                RejectCode::Malformed,
            ),
            (
                OpenError::Expired {
                    expires_ms: NOW,
                    now_ms: NOW,
                },
                RejectCode::Expired,
            ),
            (
                OpenError::WrongForm(ContentType::SituationReport, "payload in the clear"),
                RejectCode::Malformed,
            ),
            (OpenError::KeyWrapMismatch, RejectCode::Malformed),
            (OpenError::NotARecipient(n("here")), RejectCode::Malformed),
            (OpenError::Decrypt, RejectCode::Malformed),
        ];
        for (e, code) in cases {
            let r = Refusal::from(&e);
            assert_eq!(r.reason.as_str(), e.reason(), "{e:?}");
            assert_eq!(r, refusal(r.reason, code, e.to_string()), "{e:?}");
            assert_eq!(Refusal::from(e.clone()), r);
        }
    }

    /// Each policy error keeps its counter name; only the ones that mean
    /// the peer broke the channel's rules close the connection.
    #[test]
    fn policy_errors_map_to_label_policy() {
        let cases = [
            (
                PolicyError::WrongChannel {
                    class: Secret,
                    channel: Channel::Open,
                    required: Channel::Secure,
                },
                true,
            ),
            (
                PolicyError::AboveChannelMax {
                    class: Secret,
                    channel: Channel::Secure,
                    max: Restricted,
                },
                true,
            ),
            (
                PolicyError::NotCleared {
                    party: Party::NextHop,
                    node: n("next"),
                    clearance: Open,
                    class: Sensitive,
                },
                false,
            ),
            (
                PolicyError::NotOnChannel {
                    party: Party::Recipient,
                    node: n("dest"),
                    channel: Channel::Secure,
                },
                false,
            ),
            (
                PolicyError::BadChannelMax {
                    channel: Channel::Open,
                    max: Secret,
                },
                false,
            ),
        ];
        for (e, close) in cases {
            let r = Refusal::from(&e);
            assert_eq!(r.reason.as_str(), e.reason(), "{e:?}");
            let want = Refusal {
                close,
                ..refusal(r.reason, RejectCode::LabelPolicy, e.to_string())
            };
            assert_eq!(r, want, "{e:?}");
            assert_eq!(Refusal::from(e.clone()), r);
        }
    }

    #[test]
    fn route_errors_and_shell_refusals() {
        let hop = RouteError::HopLimit { hops: 9, limit: 8 };
        assert_eq!(
            Refusal::from(&hop),
            refusal(
                RefuseReason::HopLimit,
                RejectCode::HopLimit,
                "hop count 9 is over the limit 8".into()
            )
        );
        let lost = RouteError::NoRoute {
            recipient: n("lost"),
            channel: Channel::Open,
        };
        let stranger = RouteError::NoRoute {
            recipient: n("stranger"),
            channel: Channel::Open,
        };
        let want = refusal(
            RefuseReason::NoRoute,
            RejectCode::NoRoute,
            "no route to lost on the open channel".into(),
        );
        assert_eq!(Refusal::from(&lost), want);
        assert_eq!(
            Refusal::no_route(&[lost, stranger]).detail,
            "no route to lost on the open channel; no route to stranger on the open channel"
        );
        assert_eq!(
            Refusal::internal("cannot seal receipt: rng"),
            Refusal {
                permanent: false,
                ..refusal(
                    RefuseReason::Internal,
                    RejectCode::Internal,
                    "cannot seal receipt: rng".into()
                )
            }
        );
        assert_eq!(
            Refusal::malformed("expected a Transfer frame"),
            refusal(
                RefuseReason::Malformed,
                RejectCode::Malformed,
                "expected a Transfer frame".into()
            )
        );
        let id = MessageId::new_v7(NOW, [1; 10]);
        assert_eq!(
            Refusal::duplicate(id, false),
            Refusal {
                permanent: false,
                ..refusal(
                    RefuseReason::Duplicate,
                    RejectCode::Duplicate,
                    format!("message {id} was seen before")
                )
            }
        );
        assert_eq!(
            Refusal::store("disk full"),
            Refusal {
                permanent: false,
                ..refusal(
                    RefuseReason::Store,
                    RejectCode::StoreFull,
                    "store unavailable: disk full".into()
                )
            }
        );
    }
}
