//! The label policy as pure functions (DESIGN §5 properties 4 and 5, §6).
//!
//! - Each class travels on exactly one channel: OPEN and SENSITIVE on
//!   `open`; RESTRICTED and up only on `secure`.
//! - A channel carries nothing above its configured maximum, and no
//!   configured maximum is above the channel's ceiling.
//! - A node (next hop or recipient) holds nothing above its roster clearance.
//!
//! The node calls these at four independent points — submit, ingress,
//! routing and egress — so that one bug does not open the door.

use std::fmt;

use sitrep_proto::v1 as pb;

use crate::{Class, NodeId, Roster};

/// A separate network for one range of classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// Carries OPEN and SENSITIVE.
    Open,
    /// The separate accredited channel: carries RESTRICTED and up.
    Secure,
}

impl Channel {
    /// Both channels.
    pub const ALL: [Self; 2] = [Self::Open, Self::Secure];

    /// The highest class this channel can ever carry.
    #[must_use]
    pub fn ceiling(self) -> Class {
        match self {
            Self::Open => Class::Sensitive,
            Self::Secure => Class::TopSecret,
        }
    }

    /// The lowest class this channel carries.
    #[must_use]
    pub fn floor(self) -> Class {
        match self {
            Self::Open => Class::Open,
            Self::Secure => Class::Restricted,
        }
    }

    /// The one channel a message of `class` travels on.
    #[must_use]
    pub fn for_class(class: Class) -> Self {
        if class.is_security_classified() {
            Self::Secure
        } else {
            Self::Open
        }
    }

    /// `"open"` or `"secure"`, as in config keys.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Secure => "secure",
        }
    }

    /// Parses `"open"` or `"secure"`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "secure" => Some(Self::Secure),
            _ => None,
        }
    }

    /// To the roster's channel enum.
    #[must_use]
    pub fn to_proto(self) -> pb::ChannelId {
        match self {
            Self::Open => pb::ChannelId::ChannelOpen,
            Self::Secure => pb::ChannelId::ChannelSecure,
        }
    }

    /// From the roster's channel enum; `None` for unspecified or unknown.
    #[must_use]
    pub fn from_proto(v: i32) -> Option<Self> {
        match pb::ChannelId::try_from(v).ok()? {
            pb::ChannelId::ChannelOpen => Some(Self::Open),
            pb::ChannelId::ChannelSecure => Some(Self::Secure),
            pb::ChannelId::Unspecified => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which party a clearance check was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    /// A recipient of the message.
    Recipient,
    /// The next hop the message would be sent to.
    NextHop,
    /// The peer the message arrived from.
    PreviousHop,
    /// This node.
    Local,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Recipient => "recipient",
            Self::NextHop => "next hop",
            Self::PreviousHop => "previous hop",
            Self::Local => "this node",
        })
    }
}

/// A policy refusal. Each variant is a distinct reason, counted and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The class belongs on another channel.
    #[error("{class} travels only on the {required} channel, not on {channel}")]
    WrongChannel {
        /// The message's class.
        class: Class,
        /// The channel it was to travel on.
        channel: Channel,
        /// The channel its class requires.
        required: Channel,
    },
    /// The channel's configured maximum is below the class.
    #[error("{class} is above the {channel} channel's maximum {max}")]
    AboveChannelMax {
        /// The message's class.
        class: Class,
        /// The channel.
        channel: Channel,
        /// Its configured maximum.
        max: Class,
    },
    /// A node's clearance is below the class.
    #[error("{party} {node} is cleared for {clearance}, not {class}")]
    NotCleared {
        /// Whose clearance.
        party: Party,
        /// The node.
        node: NodeId,
        /// Its roster clearance.
        clearance: Class,
        /// The message's class.
        class: Class,
    },
    /// A node is not on the channel according to the roster.
    #[error("{party} {node} is not on the {channel} channel")]
    NotOnChannel {
        /// Whose membership.
        party: Party,
        /// The node.
        node: NodeId,
        /// The channel.
        channel: Channel,
    },
    /// A configured channel maximum outside the channel's range.
    #[error("max_class {max} is outside the {channel} channel's range {}..={}", channel.floor(), channel.ceiling())]
    BadChannelMax {
        /// The channel.
        channel: Channel,
        /// The configured maximum.
        max: Class,
    },
}

impl PolicyError {
    /// A short stable name for counters and the audit log.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::WrongChannel { .. } => "wrong_channel",
            Self::AboveChannelMax { .. } => "above_channel_max",
            Self::NotCleared { .. } => "not_cleared",
            Self::NotOnChannel { .. } => "not_on_channel",
            Self::BadChannelMax { .. } => "bad_channel_max",
        }
    }
}

/// Checks a configured channel maximum: within the channel's range.
///
/// # Errors
/// [`PolicyError::BadChannelMax`].
pub fn check_channel_max(channel: Channel, max: Class) -> Result<(), PolicyError> {
    if max < channel.floor() || max > channel.ceiling() {
        return Err(PolicyError::BadChannelMax { channel, max });
    }
    Ok(())
}

/// May a message of `class` travel on `channel`, configured with maximum `max`?
///
/// # Errors
/// [`PolicyError::WrongChannel`], [`PolicyError::BadChannelMax`] or
/// [`PolicyError::AboveChannelMax`].
pub fn check_channel(class: Class, channel: Channel, max: Class) -> Result<(), PolicyError> {
    let required = Channel::for_class(class);
    if required != channel {
        return Err(PolicyError::WrongChannel {
            class,
            channel,
            required,
        });
    }
    check_channel_max(channel, max)?;
    if class > max {
        return Err(PolicyError::AboveChannelMax { class, channel, max });
    }
    Ok(())
}

/// May `node`, cleared for `clearance`, hold a message of `class`?
///
/// # Errors
/// [`PolicyError::NotCleared`].
pub fn check_clearance(
    party: Party,
    node: &NodeId,
    clearance: Class,
    class: Class,
) -> Result<(), PolicyError> {
    if class > clearance {
        return Err(PolicyError::NotCleared {
            party,
            node: node.clone(),
            clearance,
            class,
        });
    }
    Ok(())
}

/// The highest class a node may actually hold: its roster clearance, capped
/// by the highest maximum among the channels it runs. A node with only
/// `open` holds nothing above SENSITIVE whatever the roster says.
#[must_use]
pub fn effective_clearance(
    roster_clearance: Class,
    channel_maxima: impl IntoIterator<Item = Class>,
) -> Option<Class> {
    channel_maxima.into_iter().max().map(|m| m.min(roster_clearance))
}

/// The highest class node `here` may hold on a channel it runs with
/// configured maximum `channel_max`: its roster clearance capped by that
/// maximum. `None` if `here` is not in the roster or does not run the
/// channel (`channel_max` is `None`).
#[must_use]
pub fn local_clearance(roster: &Roster, here: &NodeId, channel_max: Option<Class>) -> Option<Class> {
    let mine = roster.node(here)?.clearance;
    channel_max.map(|max| max.min(mine))
}

/// The label checks every point (submit, ingress, routing, egress) applies
/// for a message of `class` on `channel` at node `here`, which runs the
/// channel with configured maximum `channel_max` (`None`: it does not run
/// it). In this order, the first broken rule deciding:
///
/// 1. `here` runs the channel, else [`PolicyError::WrongChannel`];
/// 2. [`check_channel`]: the class belongs on the channel and is within its
///    maximum;
/// 3. `here` is cleared ([`Party::Local`]): its [`local_clearance`], or
///    OPEN if it is not in the roster;
/// 4. each of `parties` in the order given: in the roster (else
///    [`PolicyError::NotCleared`] with clearance OPEN), on the channel in
///    the roster, cleared for the class.
///
/// # Errors
/// The [`PolicyError`] of the first broken rule.
pub fn check_parties(
    roster: &Roster,
    here: &NodeId,
    class: Class,
    channel: Channel,
    channel_max: Option<Class>,
    parties: &[(Party, &NodeId)],
) -> Result<(), PolicyError> {
    let max = channel_max.ok_or(PolicyError::WrongChannel {
        class,
        channel,
        required: Channel::for_class(class),
    })?;
    check_channel(class, channel, max)?;
    let local = local_clearance(roster, here, Some(max)).unwrap_or(Class::Open);
    check_clearance(Party::Local, here, local, class)?;
    for (party, node) in parties {
        let Some(entry) = roster.node(node) else {
            return Err(PolicyError::NotCleared {
                party: *party,
                node: (*node).clone(),
                clearance: Class::Open,
                class,
            });
        };
        if !entry.is_on(channel) {
            return Err(PolicyError::NotOnChannel {
                party: *party,
                node: (*node).clone(),
                channel,
            });
        }
        check_clearance(*party, node, entry.clearance, class)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::new("region-gotland").expect("valid")
    }

    /// The whole matrix class × channel × configured max × clearance:
    /// allowed exactly when the class belongs on the channel, the max is a
    /// valid one for the channel and covers the class, and the node is cleared.
    #[test]
    fn policy_matrix_class_channel_max_clearance() {
        let mut allowed = 0;
        let mut refused = 0;
        for class in Class::ALL {
            for channel in Channel::ALL {
                for max in Class::ALL {
                    for clearance in Class::ALL {
                        let got = check_channel(class, channel, max)
                            .and_then(|()| check_clearance(Party::NextHop, &node(), clearance, class));
                        let channel_ok = if class >= Class::Restricted {
                            channel == Channel::Secure
                        } else {
                            channel == Channel::Open
                        };
                        let max_ok = match channel {
                            Channel::Open => max <= Class::Sensitive,
                            Channel::Secure => max >= Class::Restricted,
                        };
                        let expect = channel_ok && max_ok && class <= max && class <= clearance;
                        assert_eq!(
                            got.is_ok(),
                            expect,
                            "class {class} channel {channel} max {max} clearance {clearance}: {got:?}"
                        );
                        // The reason is the first rule broken, in this order.
                        match got {
                            Ok(()) => allowed += 1,
                            Err(e) => {
                                refused += 1;
                                let want = if !channel_ok {
                                    "wrong_channel"
                                } else if !max_ok {
                                    "bad_channel_max"
                                } else if class > max {
                                    "above_channel_max"
                                } else {
                                    "not_cleared"
                                };
                                assert_eq!(e.reason(), want, "{e}");
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(allowed + refused, 6 * 2 * 6 * 6);
        assert!(allowed > 0 && refused > 0);
    }

    #[test]
    fn restricted_and_up_only_on_secure() {
        for class in Class::ALL {
            let on_open = check_channel(class, Channel::Open, Class::Sensitive);
            assert_eq!(on_open.is_ok(), class <= Class::Sensitive, "{class}");
        }
        assert_eq!(Channel::for_class(Class::Restricted), Channel::Secure);
        assert_eq!(Channel::for_class(Class::Sensitive), Channel::Open);
    }

    #[test]
    fn open_only_node_holds_nothing_above_sensitive() {
        assert_eq!(
            effective_clearance(Class::TopSecret, [Class::Sensitive]),
            Some(Class::Sensitive)
        );
        assert_eq!(
            effective_clearance(Class::Secret, [Class::Sensitive, Class::TopSecret]),
            Some(Class::Secret)
        );
        assert_eq!(
            effective_clearance(Class::Open, [Class::Sensitive]),
            Some(Class::Open)
        );
        assert_eq!(effective_clearance(Class::Secret, []), None);
    }

    /// `check_parties` at a node running `open` with maximum SENSITIVE,
    /// cleared SECRET: the channel, then this node, then the parties in the
    /// order given; an unknown party counts as cleared for OPEN. (The
    /// ingress tables in `ingress.rs` go through every combination.)
    #[test]
    fn check_parties_in_order() {
        use crate::fixture::Fixture;
        const NOW: i64 = 1_790_000_000_000;
        let f = Fixture::new(&[("here", Class::Secret), ("low", Class::Open)], NOW);
        let here = NodeId::new("here").expect("valid");
        let low = NodeId::new("low").expect("valid");
        let ghost = NodeId::new("ghost").expect("valid");
        let max = Some(Class::Sensitive);
        assert_eq!(local_clearance(&f.roster, &here, max), Some(Class::Sensitive));
        assert_eq!(local_clearance(&f.roster, &here, None), None);
        assert_eq!(local_clearance(&f.roster, &ghost, max), None);
        let check = |class, max, parties: &[(Party, &NodeId)]| {
            check_parties(&f.roster, &here, class, Channel::Open, max, parties)
        };
        assert_eq!(check(Class::Sensitive, max, &[(Party::NextHop, &here)]), Ok(()));
        assert_eq!(
            check(Class::Sensitive, None, &[]),
            Err(PolicyError::WrongChannel {
                class: Class::Sensitive,
                channel: Channel::Open,
                required: Channel::Open,
            })
        );
        assert_eq!(
            check(
                Class::Sensitive,
                max,
                &[(Party::Recipient, &ghost), (Party::NextHop, &low)]
            ),
            Err(PolicyError::NotCleared {
                party: Party::Recipient,
                node: ghost.clone(),
                clearance: Class::Open,
                class: Class::Sensitive,
            })
        );
        assert_eq!(
            check(
                Class::Sensitive,
                max,
                &[(Party::NextHop, &low), (Party::Recipient, &ghost)]
            ),
            Err(PolicyError::NotCleared {
                party: Party::NextHop,
                node: low.clone(),
                clearance: Class::Open,
                class: Class::Sensitive,
            })
        );
        // Above the channel maximum is refused as such, before this node's clearance.
        let low_max = Some(Class::Open);
        assert_eq!(
            check(Class::Sensitive, low_max, &[]).map_err(|e| e.reason()),
            Err("above_channel_max")
        );
    }

    #[test]
    fn channel_names_roundtrip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
            assert_eq!(Channel::from_proto(c.to_proto() as i32), Some(c));
        }
        assert_eq!(Channel::parse("Open"), None);
        assert_eq!(Channel::from_proto(0), None);
    }
}
