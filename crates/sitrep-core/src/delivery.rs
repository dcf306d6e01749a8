//! The delivery-state machine of one message for one recipient, at the
//! origin: its states and which change of state is allowed.
//!
//! Pure: the store keeps the state and calls [`transition`] inside its
//! write transaction. Not here: where states are kept, when a hop's answer
//! or a receipt arrives, the sweeper that expires messages.

/// Delivery state of a message for one recipient, at the origin.
///
/// Ordered by progress: a non-final state only moves to a state at or after
/// it (see [`transition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryState {
    /// In our outbox.
    Queued,
    /// A next hop has custody.
    Forwarded,
    /// The recipient's signed receipt came back.
    Delivered,
    /// Refused permanently.
    Rejected,
    /// Expired before delivery.
    Expired,
}

impl DeliveryState {
    /// Every state, in order.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Forwarded,
        Self::Delivered,
        Self::Rejected,
        Self::Expired,
    ];

    /// The API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Forwarded => "FORWARDED",
            Self::Delivered => "DELIVERED",
            Self::Rejected => "REJECTED",
            Self::Expired => "EXPIRED",
        }
    }

    /// Whether nothing but a receipt will change it any more.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Rejected | Self::Expired)
    }

    /// The stored value (1..=5; 0 is never written).
    #[must_use]
    pub fn to_i32(self) -> i32 {
        match self {
            Self::Queued => 1,
            Self::Forwarded => 2,
            Self::Delivered => 3,
            Self::Rejected => 4,
            Self::Expired => 5,
        }
    }

    /// From the stored value; `None` for a value this version does not know.
    #[must_use]
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => Self::Queued,
            2 => Self::Forwarded,
            3 => Self::Delivered,
            4 => Self::Rejected,
            5 => Self::Expired,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// May a recipient's delivery state change from `current` to `next`?
///
/// - A receipt ([`DeliveryState::Delivered`]) is proof of delivery: it
///   replaces any state but itself (also REJECTED or EXPIRED, since a copy
///   on another path may have arrived after all).
/// - Otherwise only a non-final state changes, and only to a state at or
///   after it: a late FORWARDED does not undo REJECTED, nor QUEUED undo
///   FORWARDED. The same non-final state again is allowed (a later hop
///   takes custody).
///
/// `current` is `None` when the stored state is not one this version knows:
/// any state may replace it.
#[must_use]
pub fn transition(current: Option<DeliveryState>, next: DeliveryState) -> bool {
    match next {
        DeliveryState::Delivered => current != Some(DeliveryState::Delivered),
        _ => current.is_none_or(|c| !c.is_final() && c <= next),
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryState::{Delivered, Expired, Forwarded, Queued, Rejected};
    use super::*;

    /// Every (current, next) pair against the table written out by hand.
    #[test]
    fn every_transition_against_the_table() {
        // Columns: next = QUEUED, FORWARDED, DELIVERED, REJECTED, EXPIRED.
        let table: [(Option<DeliveryState>, [bool; 5]); 6] = [
            (None, [true, true, true, true, true]),
            (Some(Queued), [true, true, true, true, true]),
            (Some(Forwarded), [false, true, true, true, true]),
            (Some(Delivered), [false, false, false, false, false]),
            (Some(Rejected), [false, false, true, false, false]),
            (Some(Expired), [false, false, true, false, false]),
        ];
        let nexts = [Queued, Forwarded, Delivered, Rejected, Expired];
        assert_eq!(nexts, DeliveryState::ALL);
        let mut checked = 0;
        for (current, row) in table {
            for (next, want) in nexts.into_iter().zip(row) {
                assert_eq!(transition(current, next), want, "{current:?} -> {next}");
                checked += 1;
            }
        }
        assert_eq!(checked, 6 * 5);
    }

    #[test]
    fn stored_values_round_trip_and_unknown_ones_are_none() {
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::from_i32(s.to_i32()), Some(s));
        }
        let stored: Vec<i32> = DeliveryState::ALL.iter().map(|s| s.to_i32()).collect();
        assert_eq!(stored, [1, 2, 3, 4, 5]);
        for v in [i32::MIN, -1, 0, 6, i32::MAX] {
            assert_eq!(DeliveryState::from_i32(v), None, "{v}");
        }
    }

    #[test]
    fn names_and_finality() {
        let names: Vec<&str> = DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["QUEUED", "FORWARDED", "DELIVERED", "REJECTED", "EXPIRED"]);
        let finals: Vec<bool> = DeliveryState::ALL.iter().map(|s| s.is_final()).collect();
        assert_eq!(finals, [false, false, true, true, true]);
        assert_eq!(Delivered.to_string(), "DELIVERED");
    }
}
