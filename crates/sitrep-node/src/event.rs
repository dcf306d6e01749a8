//! Events the node emits (for tests, the demo and logs), at the bottom of the
//! crate beside `error`. Emitting one is best effort: no receiver is fine.
//!
//! Not here: counters (`metrics`) or the audit log (`sitrep_store::audit`).

use sitrep_core::{Channel, MessageId, NodeId};

/// Something that happened, for tests, the demo and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A message was delivered to this node's inbox.
    Delivered {
        /// Message.
        id: MessageId,
        /// Its origin.
        origin: NodeId,
        /// Channel it came on.
        channel: Channel,
    },
    /// A receipt came back for a message originated here.
    Receipt {
        /// Message.
        id: MessageId,
        /// Recipient that delivered it.
        recipient: NodeId,
    },
    /// A next hop took custody.
    Forwarded {
        /// Message.
        id: MessageId,
        /// The hop.
        next_hop: NodeId,
    },
    /// Something was refused.
    Refused {
        /// Counter reason.
        reason: String,
        /// Peer it came from or went to, if any.
        peer: Option<NodeId>,
    },
    /// Messages expired.
    Expired {
        /// Message.
        id: MessageId,
    },
}
