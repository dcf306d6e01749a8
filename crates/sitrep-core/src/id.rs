//! Node ids and message ids.

use std::fmt;
use std::str::FromStr;

/// Longest node id.
pub const NODE_ID_MAX: usize = 63;

/// A node id: lowercase `[a-z0-9-]{1,63}`, not starting or ending with `-`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// Empty.
    #[error("node id is empty")]
    Empty,
    /// Longer than 63 bytes.
    #[error("node id is {0} characters, at most {NODE_ID_MAX} allowed")]
    TooLong(usize),
    /// A character outside `[a-z0-9-]`.
    #[error("node id {0:?} has a character outside [a-z0-9-]")]
    BadCharacter(String),
    /// Starts or ends with `-`.
    #[error("node id {0:?} starts or ends with '-'")]
    Hyphen(String),
}

impl NodeId {
    /// Parses and validates a node id.
    ///
    /// # Errors
    /// [`NodeIdError`] naming the problem.
    pub fn new(s: &str) -> Result<Self, NodeIdError> {
        if s.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if s.len() > NODE_ID_MAX {
            return Err(NodeIdError::TooLong(s.len()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(NodeIdError::BadCharacter(s.escape_default().to_string()));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(NodeIdError::Hyphen(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN that carries this id in a node certificate.
    #[must_use]
    pub fn uri_san(&self) -> String {
        format!("{}{}", URI_SAN_PREFIX, self.0)
    }

    /// The node id in a certificate URI SAN, if it is one of ours.
    #[must_use]
    pub fn from_uri_san(uri: &str) -> Option<Self> {
        uri.strip_prefix(URI_SAN_PREFIX).and_then(|s| Self::new(s).ok())
    }
}

/// Prefix of the URI SAN that names a node in its certificate.
pub const URI_SAN_PREFIX: &str = "urn:sitrep:node:";

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A message id: 16 bytes, a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId([u8; 16]);

impl MessageId {
    /// A UUIDv7 for `now_ms` with 74 random bits from `random`.
    #[must_use]
    pub fn new_v7(now_ms: i64, random: [u8; 10]) -> Self {
        let ms = u64::try_from(now_ms).unwrap_or(0);
        Self(
            *uuid::Builder::from_unix_timestamp_millis(ms, &random)
                .as_uuid()
                .as_bytes(),
        )
    }

    /// Wraps 16 bytes.
    ///
    /// # Errors
    /// The length found, if it is not 16.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, usize> {
        bytes.try_into().map(Self).map_err(|_| bytes.len())
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The canonical hyphenated UUID form.
    #[must_use]
    pub fn to_uuid_string(&self) -> String {
        uuid::Uuid::from_bytes(self.0).hyphenated().to_string()
    }

    /// Parses the hyphenated or simple UUID form.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s).ok().map(|u| Self(*u.as_bytes()))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uuid_string())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        for ok in ["region-uppsala", "a", "nspl-hub", "x1", &"a".repeat(63)] {
            assert!(NodeId::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(NodeId::new(&"a".repeat(64)), Err(NodeIdError::TooLong(64)));
        assert!(matches!(NodeId::new("Region"), Err(NodeIdError::BadCharacter(_))));
        assert!(matches!(NodeId::new("a_b"), Err(NodeIdError::BadCharacter(_))));
        assert!(matches!(NodeId::new("å"), Err(NodeIdError::BadCharacter(_))));
        assert!(matches!(NodeId::new("-a"), Err(NodeIdError::Hyphen(_))));
        let id = NodeId::new("msb").expect("valid");
        assert_eq!(id.uri_san(), "urn:sitrep:node:msb");
        assert_eq!(NodeId::from_uri_san("urn:sitrep:node:msb"), Some(id));
        assert_eq!(NodeId::from_uri_san("urn:other:msb"), None);
    }

    #[test]
    fn message_ids_are_v7_and_sort_by_time() {
        let a = MessageId::new_v7(1_700_000_000_000, [0xff; 10]);
        let b = MessageId::new_v7(1_700_000_000_001, [0; 10]);
        assert!(a < b);
        assert_eq!(uuid::Uuid::from_bytes(*a.as_bytes()).get_version_num(), 7);
        assert_eq!(MessageId::parse(&a.to_uuid_string()), Some(a));
        assert_eq!(MessageId::from_slice(&[0; 15]), Err(15));
    }
}
