//! Routing decisions as pure functions (DESIGN §6).
//!
//! Each recipient other than this node maps to a next hop on the channel
//! the label requires: a direct peer on that channel first, then a static
//! route, then the channel's default route. One copy is queued per next
//! hop, carrying the recipients it serves.

use std::collections::{BTreeMap, BTreeSet};

use crate::NodeId;
use crate::policy::Channel;

/// 8 hops: the deepest path we plan (region → county hub → national hub →
/// authority hub → authority) twice over; more means a loop.
pub const DEFAULT_HOP_LIMIT: u32 = 8;

/// What a node knows about where to send things.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Direct peers per channel.
    pub peers: BTreeMap<Channel, BTreeSet<NodeId>>,
    /// Destination → next hop (a direct peer).
    pub static_routes: BTreeMap<NodeId, NodeId>,
    /// Default next hop per channel.
    pub defaults: BTreeMap<Channel, NodeId>,
}

/// Why a recipient cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No direct peer, static route or default route on the channel.
    #[error("no route to {recipient} on the {channel} channel")]
    NoRoute {
        /// The recipient.
        recipient: NodeId,
        /// The channel the label requires.
        channel: Channel,
    },
    /// Hop count over the limit: a loop.
    #[error("hop count {hops} is over the limit {limit}")]
    HopLimit {
        /// Hops taken.
        hops: u32,
        /// The limit.
        limit: u32,
    },
}

/// Where a message goes from here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Deliver here too.
    pub local: bool,
    /// Next hop → recipients that copy serves.
    pub copies: BTreeMap<NodeId, Vec<NodeId>>,
}

impl RouteTable {
    /// Whether `node` is a direct peer on `channel`.
    #[must_use]
    pub fn is_peer(&self, channel: Channel, node: &NodeId) -> bool {
        self.peers.get(&channel).is_some_and(|p| p.contains(node))
    }

    /// The next hop for `recipient` on `channel`, if any.
    #[must_use]
    pub fn next_hop(&self, channel: Channel, recipient: &NodeId) -> Option<NodeId> {
        if self.is_peer(channel, recipient) {
            return Some(recipient.clone());
        }
        if let Some(hop) = self.static_routes.get(recipient)
            && self.is_peer(channel, hop)
        {
            return Some(hop.clone());
        }
        self.defaults
            .get(&channel)
            .filter(|hop| self.is_peer(channel, hop))
            .cloned()
    }

    /// Plans delivery of a message for `recipients` on `channel` from `me`.
    ///
    /// # Errors
    /// Every recipient that cannot be routed, so a submit can name them all.
    pub fn plan(
        &self,
        me: &NodeId,
        channel: Channel,
        recipients: &[NodeId],
    ) -> Result<Plan, Vec<RouteError>> {
        let mut plan = Plan::default();
        let mut errors = Vec::new();
        for r in recipients {
            if r == me {
                plan.local = true;
                continue;
            }
            match self.next_hop(channel, r) {
                Some(hop) => plan.copies.entry(hop).or_default().push(r.clone()),
                None => errors.push(RouteError::NoRoute {
                    recipient: r.clone(),
                    channel,
                }),
            }
        }
        if errors.is_empty() { Ok(plan) } else { Err(errors) }
    }
}

/// Refuses a transfer whose hop count is over `limit`.
///
/// # Errors
/// [`RouteError::HopLimit`].
pub fn check_hop_limit(hops: u32, limit: u32) -> Result<(), RouteError> {
    if hops > limit {
        return Err(RouteError::HopLimit { hops, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).expect("valid")
    }

    fn region_table() -> RouteTable {
        let mut t = RouteTable::default();
        t.peers.insert(Channel::Open, [n("nspl-hub")].into());
        t.peers.insert(Channel::Secure, [n("nspl-hub")].into());
        t.defaults.insert(Channel::Open, n("nspl-hub"));
        t.defaults.insert(Channel::Secure, n("nspl-hub"));
        t
    }

    #[test]
    fn one_copy_per_next_hop_serving_its_recipients() {
        let t = region_table();
        let plan = t
            .plan(
                &n("region-uppsala"),
                Channel::Open,
                &[n("msb"), n("socialstyrelsen"), n("region-uppsala")],
            )
            .expect("routable");
        assert!(plan.local);
        assert_eq!(plan.copies.len(), 1);
        assert_eq!(plan.copies[&n("nspl-hub")], vec![n("msb"), n("socialstyrelsen")]);
    }

    #[test]
    fn direct_peers_then_static_routes_then_default() {
        let mut t = RouteTable::default();
        t.peers.insert(Channel::Open, [n("a"), n("b"), n("c")].into());
        t.peers.insert(Channel::Secure, [n("a")].into());
        t.static_routes.insert(n("far"), n("b"));
        t.static_routes.insert(n("via-secure-only"), n("x"));
        t.defaults.insert(Channel::Open, n("c"));
        assert_eq!(t.next_hop(Channel::Open, &n("a")), Some(n("a")));
        assert_eq!(t.next_hop(Channel::Open, &n("far")), Some(n("b")));
        assert_eq!(t.next_hop(Channel::Open, &n("unknown")), Some(n("c")));
        // A static route through a node that is not a peer on the channel is not used.
        assert_eq!(t.next_hop(Channel::Open, &n("via-secure-only")), Some(n("c")));
        // The secure channel has no default: no route.
        assert_eq!(t.next_hop(Channel::Secure, &n("far")), None);
        let errs = t
            .plan(&n("me"), Channel::Secure, &[n("far"), n("a"), n("zz")])
            .expect_err("unroutable");
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn hop_limit() {
        assert!(check_hop_limit(8, DEFAULT_HOP_LIMIT).is_ok());
        assert_eq!(
            check_hop_limit(9, 8),
            Err(RouteError::HopLimit { hops: 9, limit: 8 })
        );
    }
}
