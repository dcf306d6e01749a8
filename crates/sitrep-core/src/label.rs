//! Classes, labels, precedence, mode and content type: the header's
//! enumerations as Rust types, with unknown values refused.

use std::fmt;

use sitrep_proto::v1 as pb;

/// Security class, ordered low to high.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// öppen
    Open,
    /// sekretess under OSL, not security classified
    Sensitive,
    /// begränsat hemlig
    Restricted,
    /// konfidentiell
    Confidential,
    /// hemlig
    Secret,
    /// kvalificerat hemlig
    TopSecret,
}

impl Class {
    /// Every class, low to high.
    pub const ALL: [Self; 6] = [
        Self::Open,
        Self::Sensitive,
        Self::Restricted,
        Self::Confidential,
        Self::Secret,
        Self::TopSecret,
    ];

    /// From the wire value; `None` for unspecified or unknown.
    #[must_use]
    pub fn from_proto(v: i32) -> Option<Self> {
        match pb::Class::try_from(v).ok()? {
            pb::Class::Unspecified => None,
            pb::Class::Open => Some(Self::Open),
            pb::Class::Sensitive => Some(Self::Sensitive),
            pb::Class::Restricted => Some(Self::Restricted),
            pb::Class::Confidential => Some(Self::Confidential),
            pb::Class::Secret => Some(Self::Secret),
            pb::Class::TopSecret => Some(Self::TopSecret),
        }
    }

    /// To the wire enum.
    #[must_use]
    pub fn to_proto(self) -> pb::Class {
        match self {
            Self::Open => pb::Class::Open,
            Self::Sensitive => pb::Class::Sensitive,
            Self::Restricted => pb::Class::Restricted,
            Self::Confidential => pb::Class::Confidential,
            Self::Secret => pb::Class::Secret,
            Self::TopSecret => pb::Class::TopSecret,
        }
    }

    /// The proto spelling, e.g. `"TOP_SECRET"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }

    /// Parses the proto spelling.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        pb::Class::from_str_name(s).and_then(|c| Self::from_proto(c as i32))
    }

    /// Whether this class concerns national security (RESTRICTED and up).
    #[must_use]
    pub fn is_security_classified(self) -> bool {
        self >= Self::Restricted
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A class plus handling caveats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// The classification.
    pub class: Class,
    /// Caveats: upper-case `[A-Z0-9-]{1,32}`, at most 16.
    pub caveats: Vec<String>,
}

/// Most caveats on one label.
pub const MAX_CAVEATS: usize = 16;

/// Why a wire label is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// No label.
    #[error("label is missing")]
    Missing,
    /// Unspecified or unknown class value.
    #[error("label class {0} is unknown or unspecified")]
    UnknownClass(i32),
    /// A caveat outside `[A-Z0-9-]{1,32}`.
    #[error("caveat {0:?} is not [A-Z0-9-]{{1,32}}")]
    BadCaveat(String),
    /// More than [`MAX_CAVEATS`].
    #[error("{0} caveats, at most {MAX_CAVEATS}")]
    TooManyCaveats(usize),
}

impl Label {
    /// A label with no caveats.
    #[must_use]
    pub fn new(class: Class) -> Self {
        Self {
            class,
            caveats: Vec::new(),
        }
    }

    /// Validates a wire label.
    ///
    /// # Errors
    /// [`LabelError`] naming the problem.
    pub fn from_proto(label: Option<&pb::Label>) -> Result<Self, LabelError> {
        let label = label.ok_or(LabelError::Missing)?;
        let class = Class::from_proto(label.class).ok_or(LabelError::UnknownClass(label.class))?;
        if label.caveats.len() > MAX_CAVEATS {
            return Err(LabelError::TooManyCaveats(label.caveats.len()));
        }
        for c in &label.caveats {
            let ok = !c.is_empty()
                && c.len() <= 32
                && c.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(LabelError::BadCaveat(c.escape_default().to_string()));
            }
        }
        Ok(Self {
            class,
            caveats: label.caveats.clone(),
        })
    }

    /// To the wire message.
    #[must_use]
    pub fn to_proto(&self) -> pb::Label {
        pb::Label {
            class: self.class.to_proto() as i32,
            caveats: self.caveats.clone(),
        }
    }
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $pb:ty, { $($(#[$vm:meta])* $v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($(#[$vm])* $v),* }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [Self] = &[$(Self::$v),*];

            /// From the wire value; `None` for unspecified or unknown.
            #[must_use]
            pub fn from_proto(v: i32) -> Option<Self> {
                let p = <$pb>::try_from(v).ok()?;
                $(if p == <$pb>::$v { return Some(Self::$v); })*
                None
            }

            /// To the wire enum.
            #[must_use]
            pub fn to_proto(self) -> $pb {
                match self { $(Self::$v => <$pb>::$v),* }
            }

            /// The proto spelling.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                self.to_proto().as_str_name()
            }

            /// Parses the proto spelling.
            #[must_use]
            pub fn parse(s: &str) -> Option<Self> {
                <$pb>::from_str_name(s).and_then(|p| Self::from_proto(p as i32))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// ACP 127 precedence; higher goes first.
    Precedence, pb::Precedence, {
        /// Normal traffic.
        Routine,
        /// Ahead of routine.
        Priority,
        /// Ahead of priority.
        Immediate,
        /// Ahead of everything.
        Flash,
    }
);

wire_enum!(
    /// Whether traffic is real, an exercise or a test.
    Mode, pb::Mode, {
        /// Real.
        Actual,
        /// övning: never enters actual roll-ups.
        Exercise,
        /// Technical test.
        Test,
    }
);

wire_enum!(
    /// What a message's payload is.
    ContentType, pb::ContentType, {
        /// `SituationReport`
        SituationReport,
        /// `Receipt`, in the clear
        Receipt,
        /// `Subscribe`
        Subscribe,
        /// `Subscribe`, to leave a feed
        Unsubscribe,
        /// `NationalRollup`
        FeedUpdate,
        /// `SignedRoster`, in the clear
        Roster,
        /// `SubscriptionState`
        Subscription,
    }
);

impl ContentType {
    /// Whether this content type may carry its payload in the clear: only
    /// receipts and rosters, which hold nothing the header does not already
    /// show or that is not public.
    #[must_use]
    pub fn may_be_clear(self) -> bool {
        matches!(self, Self::Receipt | Self::Roster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_order_and_spelling() {
        for w in Class::ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for c in Class::ALL {
            assert_eq!(Class::parse(c.as_str()), Some(c));
            assert_eq!(Class::from_proto(c.to_proto() as i32), Some(c));
        }
        assert_eq!(Class::from_proto(0), None);
        assert_eq!(Class::from_proto(99), None);
        assert_eq!(Class::parse("CLASS_UNSPECIFIED"), None);
        assert!(!Class::Sensitive.is_security_classified());
        assert!(Class::Restricted.is_security_classified());
    }

    #[test]
    fn wire_enums_refuse_unspecified() {
        assert_eq!(Precedence::from_proto(0), None);
        assert_eq!(Precedence::from_proto(4), Some(Precedence::Flash));
        assert!(Precedence::Flash > Precedence::Routine);
        assert_eq!(Mode::parse("EXERCISE"), Some(Mode::Exercise));
        assert_eq!(ContentType::from_proto(8), None);
        assert!(ContentType::Receipt.may_be_clear());
        assert!(!ContentType::SituationReport.may_be_clear());
    }

    #[test]
    fn labels_validate() {
        let ok = pb::Label {
            class: 5,
            caveats: vec!["OSL-25-1".into()],
        };
        assert_eq!(Label::from_proto(Some(&ok)).expect("valid").class, Class::Secret);
        assert_eq!(Label::from_proto(None), Err(LabelError::Missing));
        let bad = pb::Label {
            class: 0,
            caveats: vec![],
        };
        assert_eq!(Label::from_proto(Some(&bad)), Err(LabelError::UnknownClass(0)));
        let bad = pb::Label {
            class: 1,
            caveats: vec!["lower".into()],
        };
        assert!(matches!(
            Label::from_proto(Some(&bad)),
            Err(LabelError::BadCaveat(_))
        ));
    }
}
