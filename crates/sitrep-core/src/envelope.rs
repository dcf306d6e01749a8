//! Sealing and opening envelopes (DESIGN §4, §5 properties 2, 3, 5).
//!
//! `seal` encrypts the payload under a fresh content key with the encoded
//! header as associated data, seals that key to each recipient with HPKE,
//! and signs the encoded `Sealed` bytes. `verify` is what every hop does:
//! decode, check the origin's signature against the roster, then the header
//! and expiry. It never touches the payload. `open` is what a recipient
//! does after `verify`: find its key wrap and decrypt.
//!
//! The signature covers the exact `Sealed` bytes, so changing any byte of
//! the header (label, recipients, expiry, ...), the ciphertext or a key wrap
//! breaks it.

use std::collections::BTreeSet;

use prost::Message as _;
use sitrep_crypto::seal::Wrapped;
use sitrep_crypto::sign::{Signed, Valid};
use sitrep_crypto::{ContentKey, CryptoError, HpkeSecretKey, SigningKey};
use sitrep_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::id::NodeIdError;
use crate::label::LabelError;
use crate::{ContentType, Label, MessageId, Mode, NodeId, Precedence, Roster};

/// Domain-separation prefix of the origin's envelope signature.
pub const ENVELOPE_DOMAIN: &[u8] = b"sitrep/v1/envelope\0";
/// HPKE `info` for content-key wraps; the recipient id follows.
const KEYWRAP_INFO: &[u8] = b"sitrep/v1/keywrap\0";
/// 4 MiB: the frame limit. The largest report with attachments we expect, ×4.
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;
/// 64: a hub fans a national alert out to every region and authority with room to spare.
pub const MAX_RECIPIENTS: usize = 64;
/// 30 days: dedup entries must outlive a message, so lifetimes are bounded.
pub const MAX_LIFETIME_MS: i64 = 30 * 86_400_000;
/// 5 minutes: a creation time further ahead than this means a bad clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;
/// 256 bytes for the author field.
pub const MAX_AUTHOR_BYTES: usize = 256;

/// What the origin wants sent.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    /// This node.
    pub origin: NodeId,
    /// Person or role at the origin.
    pub author: String,
    /// Classification and caveats.
    pub label: Label,
    /// Precedence.
    pub precedence: Precedence,
    /// Actual, exercise or test.
    pub mode: Mode,
    /// What the payload is.
    pub content_type: ContentType,
    /// Recipient node ids.
    pub recipients: Vec<NodeId>,
    /// The message this answers, if any.
    pub in_reply_to: Option<MessageId>,
    /// Expiry, ms since the epoch.
    pub expires_ms: i64,
    /// The encoded payload message.
    pub payload: &'a [u8],
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Message id.
    pub id: MessageId,
    /// Origin node.
    pub origin: NodeId,
    /// Person or role at the origin.
    pub author: String,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Expires, ms since the epoch.
    pub expires_ms: i64,
    /// Label.
    pub label: Label,
    /// Precedence.
    pub precedence: Precedence,
    /// Mode.
    pub mode: Mode,
    /// Content type.
    pub content_type: ContentType,
    /// Recipients, unique, in the order the origin gave.
    pub recipients: Vec<NodeId>,
    /// The message this answers.
    pub in_reply_to: Option<MessageId>,
    /// Roster serial the origin sealed with.
    pub roster_serial: u64,
}

/// Why a header is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Id not 16 bytes.
    #[error("message id is {0} bytes, want 16")]
    BadId(usize),
    /// Origin not a node id.
    #[error("origin: {0}")]
    BadOrigin(NodeIdError),
    /// Label invalid.
    #[error("label: {0}")]
    BadLabel(LabelError),
    /// Precedence unspecified or unknown.
    #[error("precedence {0} is unknown or unspecified")]
    UnknownPrecedence(i32),
    /// Mode unspecified or unknown.
    #[error("mode {0} is unknown or unspecified")]
    UnknownMode(i32),
    /// Content type unspecified or unknown.
    #[error("content type {0} is unknown or unspecified")]
    UnknownContentType(i32),
    /// No recipients.
    #[error("no recipients")]
    NoRecipients,
    /// More than [`MAX_RECIPIENTS`].
    #[error("{0} recipients, at most {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    /// A recipient not a node id.
    #[error("recipient: {0}")]
    BadRecipient(NodeIdError),
    /// A recipient twice.
    #[error("recipient {0} listed twice")]
    DuplicateRecipient(NodeId),
    /// Expiry not after creation, or too far after it.
    #[error("expiry {expires_ms} must be after creation {created_ms} and within {MAX_LIFETIME_MS} ms of it")]
    BadLifetime {
        /// Created.
        created_ms: i64,
        /// Expires.
        expires_ms: i64,
    },
    /// Author too long.
    #[error("author is {0} bytes, at most {MAX_AUTHOR_BYTES}")]
    AuthorTooLong(usize),
    /// `in_reply_to` neither empty nor 16 bytes.
    #[error("in_reply_to is {0} bytes, want 0 or 16")]
    BadInReplyTo(usize),
}

impl HeaderInfo {
    /// Validates a wire header.
    ///
    /// # Errors
    /// [`HeaderError`] naming the first problem.
    pub fn from_proto(h: &pb::Header) -> Result<Self, HeaderError> {
        let id = MessageId::from_slice(&h.id).map_err(HeaderError::BadId)?;
        let origin = NodeId::new(&h.origin).map_err(HeaderError::BadOrigin)?;
        if h.author.len() > MAX_AUTHOR_BYTES {
            return Err(HeaderError::AuthorTooLong(h.author.len()));
        }
        if h.expires_unix_ms <= h.created_unix_ms
            || h.expires_unix_ms
                .checked_sub(h.created_unix_ms)
                .is_none_or(|lifetime| lifetime > MAX_LIFETIME_MS)
        {
            return Err(HeaderError::BadLifetime {
                created_ms: h.created_unix_ms,
                expires_ms: h.expires_unix_ms,
            });
        }
        let label = Label::from_proto(h.label.as_ref()).map_err(HeaderError::BadLabel)?;
        let precedence =
            Precedence::from_proto(h.precedence).ok_or(HeaderError::UnknownPrecedence(h.precedence))?;
        let mode = Mode::from_proto(h.mode).ok_or(HeaderError::UnknownMode(h.mode))?;
        let content_type =
            ContentType::from_proto(h.content_type).ok_or(HeaderError::UnknownContentType(h.content_type))?;
        if h.recipients.is_empty() {
            return Err(HeaderError::NoRecipients);
        }
        if h.recipients.len() > MAX_RECIPIENTS {
            return Err(HeaderError::TooManyRecipients(h.recipients.len()));
        }
        let mut recipients = Vec::with_capacity(h.recipients.len());
        let mut seen = BTreeSet::new();
        for r in &h.recipients {
            let r = NodeId::new(r).map_err(HeaderError::BadRecipient)?;
            if !seen.insert(r.clone()) {
                return Err(HeaderError::DuplicateRecipient(r));
            }
            recipients.push(r);
        }
        let in_reply_to = match h.in_reply_to.len() {
            0 => None,
            _ => Some(MessageId::from_slice(&h.in_reply_to).map_err(HeaderError::BadInReplyTo)?),
        };
        Ok(Self {
            id,
            origin,
            author: h.author.clone(),
            created_ms: h.created_unix_ms,
            expires_ms: h.expires_unix_ms,
            label,
            precedence,
            mode,
            content_type,
            recipients,
            in_reply_to,
            roster_serial: h.roster_serial,
        })
    }

    /// To the wire header.
    #[must_use]
    pub fn to_proto(&self) -> pb::Header {
        pb::Header {
            id: self.id.as_bytes().to_vec(),
            origin: self.origin.to_string(),
            author: self.author.clone(),
            created_unix_ms: self.created_ms,
            expires_unix_ms: self.expires_ms,
            label: Some(self.label.to_proto()),
            precedence: self.precedence.to_proto() as i32,
            mode: self.mode.to_proto() as i32,
            content_type: self.content_type.to_proto() as i32,
            recipients: self.recipients.iter().map(ToString::to_string).collect(),
            in_reply_to: self
                .in_reply_to
                .map(|m| m.as_bytes().to_vec())
                .unwrap_or_default(),
            roster_serial: self.roster_serial,
        }
    }

    /// Whether `node` is a recipient.
    #[must_use]
    pub fn is_recipient(&self, node: &NodeId) -> bool {
        self.recipients.contains(node)
    }
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The draft makes an invalid header.
    #[error("invalid header: {0}")]
    Header(#[from] HeaderError),
    /// The origin is not in the roster.
    #[error("origin {0} is not in the roster")]
    UnknownOrigin(NodeId),
    /// The signing key is not the origin's roster key: nobody could verify.
    #[error("signing key does not match origin {0}'s roster key")]
    WrongSigningKey(NodeId),
    /// A recipient is not in the roster, so there is no key to seal to.
    #[error("recipient {0} is not in the roster")]
    UnknownRecipient(NodeId),
    /// The envelope would exceed [`MAX_ENVELOPE_BYTES`].
    #[error("envelope would be {0} bytes, at most {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    /// A primitive failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

/// Why a received envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    #[error("envelope is {0} bytes, at most {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    /// A layer does not decode.
    #[error("{part} does not decode: {detail}")]
    Decode {
        /// Which layer: envelope, sealed, header.
        part: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The header decodes but is invalid.
    #[error("invalid header: {0}")]
    InvalidHeader(HeaderError),
    /// The origin is not in the roster: there is no key to verify with.
    #[error("origin {0:?} is not in the roster")]
    UnknownOrigin(String),
    /// The signature does not verify against the origin's roster key.
    #[error("signature does not verify against origin {0}'s roster key")]
    BadSignature(NodeId),
    /// Created too far in the future: the origin's clock (or ours) is wrong.
    #[error("created {created_ms} is more than {MAX_CLOCK_SKEW_MS} ms after now {now_ms}")]
    FromTheFuture {
        /// Created.
        created_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// Past its expiry.
    #[error("expired at {expires_ms} (now {now_ms})")]
    Expired {
        /// Expires.
        expires_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// A report or feed update in the clear, or a receipt with key wraps.
    #[error("{0} payload in the wrong form: {1}")]
    WrongForm(ContentType, &'static str),
    /// Key wraps do not match the recipients one to one.
    #[error("key wraps do not match the recipients")]
    KeyWrapMismatch,
    /// We are not a recipient.
    #[error("{0} is not a recipient")]
    NotARecipient(NodeId),
    /// Our key wrap or the payload does not decrypt.
    #[error("payload does not decrypt")]
    Decrypt,
}

impl OpenError {
    /// A short stable name for counters, audit entries and reject reasons.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "envelope_too_large",
            Self::Decode { .. } | Self::InvalidHeader(_) | Self::WrongForm(..) | Self::KeyWrapMismatch => {
                "malformed"
            }
            Self::UnknownOrigin(_) => "unknown_origin",
            Self::BadSignature(_) => "bad_signature",
            Self::FromTheFuture { .. } => "bad_clock",
            Self::Expired { .. } => "expired",
            Self::NotARecipient(_) => "not_a_recipient",
            Self::Decrypt => "decrypt",
        }
    }
}

/// A signed, sealed envelope ready to store and send.
#[derive(Debug, Clone)]
pub struct SealedEnvelope {
    /// The header as sealed.
    pub header: HeaderInfo,
    /// The encoded `Envelope`.
    pub bytes: Vec<u8>,
}

/// An envelope whose signature, header and expiry have been checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The validated header.
    pub header: HeaderInfo,
    header_bytes: Vec<u8>,
    sealed: pb::Sealed,
}

impl Verified {
    /// The clear payload of a receipt or roster message; `None` for sealed ones.
    #[must_use]
    pub fn clear_payload(&self) -> Option<&[u8]> {
        self.header
            .content_type
            .may_be_clear()
            .then_some(self.sealed.plaintext.as_slice())
    }
}

/// Seals and signs `draft` for its recipients, whose HPKE keys come from
/// `roster`. Receipts and rosters are signed but carried in the clear.
///
/// # Errors
/// [`SealError`] naming the problem; nothing is produced.
pub fn seal(
    draft: &Draft<'_>,
    signer: &SigningKey,
    roster: &Roster,
    now_ms: i64,
) -> Result<SealedEnvelope, SealError> {
    let origin = roster
        .node(&draft.origin)
        .ok_or_else(|| SealError::UnknownOrigin(draft.origin.clone()))?;
    if origin.signing_key != signer.verifying_key() {
        return Err(SealError::WrongSigningKey(draft.origin.clone()));
    }
    let mut random = [0u8; 10];
    sitrep_crypto::random_bytes(&mut random)?;
    let header = HeaderInfo {
        id: MessageId::new_v7(now_ms, random),
        origin: draft.origin.clone(),
        author: draft.author.clone(),
        created_ms: now_ms,
        expires_ms: draft.expires_ms,
        label: draft.label.clone(),
        precedence: draft.precedence,
        mode: draft.mode,
        content_type: draft.content_type,
        recipients: draft.recipients.clone(),
        in_reply_to: draft.in_reply_to,
        roster_serial: roster.serial,
    };
    let pb_header = header.to_proto();
    // Validate exactly what goes on the wire.
    HeaderInfo::from_proto(&pb_header)?;
    let header_bytes = pb_header.encode_to_vec();

    let sealed = if draft.content_type.may_be_clear() {
        pb::Sealed {
            header: header_bytes,
            plaintext: draft.payload.to_vec(),
            ..Default::default()
        }
    } else {
        let key = ContentKey::generate()?;
        let ciphertext = key.encrypt(&header_bytes, draft.payload)?;
        let mut keys = Vec::with_capacity(header.recipients.len());
        for r in &header.recipients {
            let node = roster
                .node(r)
                .ok_or_else(|| SealError::UnknownRecipient(r.clone()))?;
            let w = node
                .hpke_key
                .seal(&keywrap_info(r), &header_bytes, key.as_bytes())?;
            keys.push(pb::KeyWrap {
                recipient: r.to_string(),
                hpke_enc: w.enc,
                wrapped_key: w.ciphertext,
            });
        }
        pb::Sealed {
            header: header_bytes,
            ciphertext,
            keys,
            plaintext: Vec::new(),
        }
    };
    let sealed_bytes = sealed.encode_to_vec();
    let signature = signer.sign(ENVELOPE_DOMAIN, &sealed_bytes).to_vec();
    let bytes = pb::Envelope {
        sealed: sealed_bytes,
        signature,
    }
    .encode_to_vec();
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(SealError::TooLarge(bytes.len()));
    }
    Ok(SealedEnvelope { header, bytes })
}

fn keywrap_info(recipient: &NodeId) -> Vec<u8> {
    let mut info = KEYWRAP_INFO.to_vec();
    info.extend_from_slice(recipient.as_str().as_bytes());
    info
}

fn decode_layers(envelope: &[u8]) -> Result<(pb::Envelope, pb::Sealed, pb::Header), OpenError> {
    if envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(OpenError::TooLarge(envelope.len()));
    }
    let env = pb::Envelope::decode(envelope).map_err(|e| OpenError::Decode {
        part: "envelope",
        detail: e.to_string(),
    })?;
    let sealed = pb::Sealed::decode(env.sealed.as_slice()).map_err(|e| OpenError::Decode {
        part: "sealed",
        detail: e.to_string(),
    })?;
    let header = pb::Header::decode(sealed.header.as_slice()).map_err(|e| OpenError::Decode {
        part: "header",
        detail: e.to_string(),
    })?;
    Ok((env, sealed, header))
}

/// Reads the header without checking the signature. For diagnostics only:
/// nothing read this way may be trusted, stored or acted on.
///
/// # Errors
/// [`OpenError::Decode`], [`OpenError::InvalidHeader`] or [`OpenError::TooLarge`].
pub fn peek_header(envelope: &[u8]) -> Result<HeaderInfo, OpenError> {
    peek(envelope).map(|(_, h)| h)
}

/// Decodes an envelope once into its wire form and its (unverified)
/// header: what a sender needs to re-check policy and frame a stored copy.
///
/// # Errors
/// As [`peek_header`].
pub fn peek(envelope: &[u8]) -> Result<(pb::Envelope, HeaderInfo), OpenError> {
    let (env, _, header) = decode_layers(envelope)?;
    let header = HeaderInfo::from_proto(&header).map_err(OpenError::InvalidHeader)?;
    Ok((env, header))
}

/// Verifies an envelope the way every hop must before storing or
/// forwarding it: decode, signature against the origin's roster key
/// (before anything in the header is believed), header validity, clock
/// and expiry, and the form of the payload. Never decrypts.
///
/// # Errors
/// [`OpenError`] naming the first problem.
pub fn verify(envelope: &[u8], roster: &Roster, now_ms: i64) -> Result<Verified, OpenError> {
    let (unchecked, signed) = Unchecked::decode(envelope, roster)?;
    unchecked.finish(signed.check(), now_ms)
}

/// An envelope decoded and its origin's key found, its signature not yet
/// checked: [`verify`] in two steps, so that a caller can check the
/// signatures of many envelopes in one batch
/// ([`sitrep_crypto::sign::verify_batch`]). Nothing in it is believed until
/// [`Unchecked::finish`] gets that check's answer for its signature.
#[derive(Debug)]
pub struct Unchecked {
    origin: NodeId,
    sealed: pb::Sealed,
    header: pb::Header,
}

impl Unchecked {
    /// Decodes `envelope` and finds its origin in the roster. Returns the
    /// signature to check: the origin's key over the envelope's signed bytes.
    ///
    /// # Errors
    /// [`OpenError::Decode`], [`OpenError::TooLarge`] or [`OpenError::UnknownOrigin`].
    pub fn decode(envelope: &[u8], roster: &Roster) -> Result<(Self, Signed), OpenError> {
        let (env, sealed, header) = decode_layers(envelope)?;
        let origin = roster
            .node_str(&header.origin)
            .ok_or_else(|| OpenError::UnknownOrigin(header.origin.escape_default().to_string()))?;
        let signed = Signed::new(&origin.signing_key, ENVELOPE_DOMAIN, &env.sealed, &env.signature);
        Ok((
            Self {
                origin: origin.id.clone(),
                sealed,
                header,
            },
            signed,
        ))
    }

    /// The rest of [`verify`], given the check's answer for the signature
    /// that [`Unchecked::decode`] returned: header validity, clock, expiry
    /// and the payload's form.
    ///
    /// # Errors
    /// [`OpenError::BadSignature`] if it did not verify, then as [`verify`].
    pub fn finish(self, signature: Result<Valid, CryptoError>, now_ms: i64) -> Result<Verified, OpenError> {
        if signature.is_err() {
            return Err(OpenError::BadSignature(self.origin));
        }
        let header = HeaderInfo::from_proto(&self.header).map_err(OpenError::InvalidHeader)?;
        if header.created_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(OpenError::FromTheFuture {
                created_ms: header.created_ms,
                now_ms,
            });
        }
        if now_ms >= header.expires_ms {
            return Err(OpenError::Expired {
                expires_ms: header.expires_ms,
                now_ms,
            });
        }
        check_form(&header, &self.sealed)?;
        Ok(Verified {
            header,
            header_bytes: self.sealed.header.clone(),
            sealed: self.sealed,
        })
    }
}

fn check_form(header: &HeaderInfo, sealed: &pb::Sealed) -> Result<(), OpenError> {
    let ct = header.content_type;
    if ct.may_be_clear() {
        if !sealed.keys.is_empty() || !sealed.ciphertext.is_empty() {
            return Err(OpenError::WrongForm(ct, "carried sealed, expected in the clear"));
        }
        return Ok(());
    }
    if !sealed.plaintext.is_empty() {
        return Err(OpenError::WrongForm(ct, "payload in the clear"));
    }
    if sealed.ciphertext.is_empty() {
        return Err(OpenError::WrongForm(ct, "no ciphertext"));
    }
    if sealed.keys.len() != header.recipients.len()
        || !sealed
            .keys
            .iter()
            .zip(&header.recipients)
            .all(|(k, r)| k.recipient == r.as_str())
    {
        return Err(OpenError::KeyWrapMismatch);
    }
    Ok(())
}

/// Opens a verified envelope at recipient `me` with its HPKE key.
///
/// # Errors
/// [`OpenError::NotARecipient`] or [`OpenError::Decrypt`].
pub fn open(verified: &Verified, me: &NodeId, key: &HpkeSecretKey) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if !verified.header.is_recipient(me) {
        return Err(OpenError::NotARecipient(me.clone()));
    }
    if let Some(clear) = verified.clear_payload() {
        return Ok(Zeroizing::new(clear.to_vec()));
    }
    let wrap = verified
        .sealed
        .keys
        .iter()
        .find(|k| k.recipient == me.as_str())
        .ok_or_else(|| OpenError::NotARecipient(me.clone()))?;
    let wrapped = Wrapped {
        enc: wrap.hpke_enc.clone(),
        ciphertext: wrap.wrapped_key.clone(),
    };
    let raw = key
        .open(&keywrap_info(me), &verified.header_bytes, &wrapped)
        .map_err(|_| OpenError::Decrypt)?;
    let content_key = ContentKey::from_bytes(&raw).map_err(|_| OpenError::Decrypt)?;
    content_key
        .decrypt(&verified.header_bytes, &verified.sealed.ciphertext)
        .map_err(|_| OpenError::Decrypt)
}

/// [`verify`] then [`open`]: everything a recipient does.
///
/// # Errors
/// [`OpenError`] from either step.
pub fn verify_and_open(
    envelope: &[u8],
    roster: &Roster,
    me: &NodeId,
    key: &HpkeSecretKey,
    now_ms: i64,
) -> Result<(HeaderInfo, Zeroizing<Vec<u8>>), OpenError> {
    let v = verify(envelope, roster, now_ms)?;
    let payload = open(&v, me, key)?;
    Ok((v.header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{DAY_MS, Fixture};
    use crate::{Class, Label};
    use proptest::prelude::*;

    const NOW: i64 = 1_790_000_000_000;
    const CANARY: &[u8] = b"CANARY-7f3a-IVA-Akademiska";

    fn net() -> Fixture {
        Fixture::new(
            &[
                ("region-uppsala", Class::Secret),
                ("nspl-hub", Class::Secret),
                ("socialstyrelsen", Class::Secret),
                ("msb", Class::Secret),
                ("region-gotland", Class::Sensitive),
            ],
            NOW,
        )
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid")
    }

    fn draft<'a>(recipients: &[&str], payload: &'a [u8]) -> Draft<'a> {
        Draft {
            origin: id("region-uppsala"),
            author: "TiB Region Uppsala".into(),
            label: Label::new(Class::Sensitive),
            precedence: Precedence::Priority,
            mode: Mode::Actual,
            content_type: ContentType::SituationReport,
            recipients: recipients.iter().map(|r| id(r)).collect(),
            in_reply_to: None,
            expires_ms: NOW + DAY_MS,
            payload,
        }
    }

    fn seal_from_uppsala(f: &Fixture, d: &Draft<'_>) -> SealedEnvelope {
        seal(d, &f.node("region-uppsala").signing, &f.roster, NOW).expect("seal")
    }

    /// Re-signs modified `Sealed` bytes with `key`, or keeps the old signature.
    fn rebuild(envelope: &[u8], edit: impl FnOnce(&mut pb::Header, &mut pb::Sealed)) -> Vec<u8> {
        let mut env = pb::Envelope::decode(envelope).expect("decode");
        let mut sealed = pb::Sealed::decode(env.sealed.as_slice()).expect("decode");
        let mut header = pb::Header::decode(sealed.header.as_slice()).expect("decode");
        edit(&mut header, &mut sealed);
        sealed.header = header.encode_to_vec();
        env.sealed = sealed.encode_to_vec();
        env.encode_to_vec()
    }

    #[test]
    fn a_sealed_report_opens_at_each_recipient_and_at_nobody_else() {
        let f = net();
        let payload = [CANARY, &[0x42; 4096][..]].concat();
        let env = seal_from_uppsala(&f, &draft(&["nspl-hub", "socialstyrelsen", "msb"], &payload));
        for r in ["nspl-hub", "socialstyrelsen", "msb"] {
            let (header, opened) = verify_and_open(&env.bytes, &f.roster, &id(r), &f.node(r).hpke, NOW)
                .expect("recipient opens");
            assert_eq!(opened.as_slice(), payload.as_slice(), "{r}");
            assert_eq!(header, env.header);
        }
        // A non-recipient is refused, as itself and when it claims a recipient's name.
        let gotland = f.node("region-gotland");
        let v = verify(&env.bytes, &f.roster, NOW).expect("verifies");
        assert_eq!(
            open(&v, &gotland.id, &gotland.hpke).map(|_| ()),
            Err(OpenError::NotARecipient(gotland.id.clone()))
        );
        assert_eq!(
            open(&v, &id("msb"), &gotland.hpke).map(|_| ()),
            Err(OpenError::Decrypt)
        );
        // The origin itself is not a recipient either.
        let origin = f.node("region-uppsala");
        assert_eq!(
            open(&v, &origin.id, &origin.hpke).map(|_| ()),
            Err(OpenError::NotARecipient(origin.id.clone()))
        );
    }

    #[test]
    fn a_relay_reads_the_header_but_not_the_payload() {
        let f = net();
        let env = seal_from_uppsala(&f, &draft(&["socialstyrelsen"], CANARY));
        // What the hub does: verify and read the header.
        let v = verify(&env.bytes, &f.roster, NOW).expect("relay verifies");
        assert_eq!(v.header.recipients, vec![id("socialstyrelsen")]);
        assert_eq!(v.header.label.class, Class::Sensitive);
        assert_eq!(v.clear_payload(), None);
        // The hub's key opens nothing, not even under the recipient's name.
        let hub = f.node("nspl-hub");
        assert_eq!(
            open(&v, &hub.id, &hub.hpke).map(|_| ()),
            Err(OpenError::NotARecipient(hub.id.clone()))
        );
        assert_eq!(
            open(&v, &id("socialstyrelsen"), &hub.hpke).map(|_| ()),
            Err(OpenError::Decrypt)
        );
        // And the bytes it stores do not contain the payload.
        assert!(!env.bytes.windows(CANARY.len()).any(|w| w == CANARY));
    }

    /// Every byte of a small envelope, flipped (XOR 0x01 and XOR 0xFF), makes
    /// verify+open fail with a decode or signature error. An altered origin
    /// names no roster key, so its signature cannot verify either.
    #[test]
    fn flipping_any_single_byte_is_refused() {
        let f = net();
        let env = seal_from_uppsala(&f, &draft(&["msb"], b"ICU 4/38"));
        let msb = f.node("msb");
        assert!(verify_and_open(&env.bytes, &f.roster, &msb.id, &msb.hpke, NOW).is_ok());
        assert!(env.bytes.len() < 600, "small envelope: {} bytes", env.bytes.len());
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for i in 0..env.bytes.len() {
            for mask in [0x01u8, 0xff] {
                let mut bad = env.bytes.clone();
                bad[i] ^= mask;
                let err = verify_and_open(&bad, &f.roster, &msb.id, &msb.hpke, NOW)
                    .map(|_| ())
                    .expect_err("a flipped byte must be refused");
                let kind = match err {
                    OpenError::Decode { .. } => "decode",
                    OpenError::BadSignature(_) => "signature",
                    OpenError::UnknownOrigin(_) => "unknown origin",
                    other => panic!("byte {i} mask {mask:#x}: unexpected {other:?}"),
                };
                *seen.entry(kind).or_default() += 1;
            }
        }
        assert!(seen["signature"] > env.bytes.len(), "{seen:?}");
        assert!(seen["decode"] > 0, "{seen:?}");
    }

    type Edit = dyn Fn(&mut pb::Header, &mut pb::Sealed);

    #[test]
    fn changing_label_recipients_or_expiry_breaks_the_signature() {
        let f = net();
        let env = seal_from_uppsala(&f, &draft(&["msb"], b"report"));
        let edits: Vec<(&str, Box<Edit>)> = vec![
            (
                "label down",
                Box::new(|h, _| h.label = Some(Label::new(Class::Open).to_proto())),
            ),
            (
                "label up",
                Box::new(|h, _| h.label = Some(Label::new(Class::Secret).to_proto())),
            ),
            (
                "caveat",
                Box::new(|h, _| h.label.as_mut().expect("label").caveats.push("X".into())),
            ),
            (
                "recipient added",
                Box::new(|h, _| h.recipients.push("region-gotland".into())),
            ),
            (
                "recipient swapped",
                Box::new(|h, _| h.recipients[0] = "nspl-hub".into()),
            ),
            ("expiry later", Box::new(|h, _| h.expires_unix_ms += DAY_MS)),
            (
                "precedence",
                Box::new(|h, _| h.precedence = Precedence::Flash.to_proto() as i32),
            ),
            ("key wrap dropped", Box::new(|_, s| s.keys.clear())),
            ("ciphertext", Box::new(|_, s| s.ciphertext[0] ^= 1)),
        ];
        for (what, edit) in edits {
            let bad = rebuild(&env.bytes, edit);
            assert_eq!(
                verify(&bad, &f.roster, NOW).map(|_| ()),
                Err(OpenError::BadSignature(id("region-uppsala"))),
                "{what}"
            );
        }
    }

    #[test]
    fn an_unknown_origin_or_a_key_not_in_the_roster_is_refused() {
        let f = net();
        // Origin not in the roster: a network whose roster lacks Uppsala.
        let other = Fixture::new(&[("msb", Class::Secret)], NOW);
        let env = seal_from_uppsala(&f, &draft(&["msb"], b"report"));
        assert_eq!(
            verify(&env.bytes, &other.roster, NOW).map(|_| ()),
            Err(OpenError::UnknownOrigin("region-uppsala".into()))
        );
        // Signed with a key that is not the origin's roster key.
        let rogue = SigningKey::generate().expect("rng");
        let forged = {
            let mut e = pb::Envelope::decode(env.bytes.as_slice()).expect("decode");
            e.signature = rogue.sign(ENVELOPE_DOMAIN, &e.sealed).to_vec();
            e.encode_to_vec()
        };
        assert_eq!(
            verify(&forged, &f.roster, NOW).map(|_| ()),
            Err(OpenError::BadSignature(id("region-uppsala")))
        );
        // Sealing refuses a key the roster does not list for the origin.
        assert!(matches!(
            seal(&draft(&["msb"], b"x"), &rogue, &f.roster, NOW),
            Err(SealError::WrongSigningKey(_))
        ));
        // And a recipient it cannot seal to.
        assert!(matches!(
            seal_from_uppsala_result(&f, &draft(&["region-skane"], b"x")),
            Err(SealError::UnknownRecipient(_))
        ));
    }

    fn seal_from_uppsala_result(f: &Fixture, d: &Draft<'_>) -> Result<SealedEnvelope, SealError> {
        seal(d, &f.node("region-uppsala").signing, &f.roster, NOW)
    }

    #[test]
    fn an_expired_envelope_is_refused() {
        let f = net();
        let env = seal_from_uppsala(&f, &draft(&["msb"], b"report"));
        let expires = env.header.expires_ms;
        assert!(verify(&env.bytes, &f.roster, expires - 1).is_ok());
        assert_eq!(
            verify(&env.bytes, &f.roster, expires).map(|_| ()),
            Err(OpenError::Expired {
                expires_ms: expires,
                now_ms: expires
            })
        );
        // A creation time far ahead of our clock is a bad clock, refused.
        assert!(matches!(
            verify(&env.bytes, &f.roster, NOW - MAX_CLOCK_SKEW_MS - 1),
            Err(OpenError::FromTheFuture { .. })
        ));
    }

    #[test]
    fn receipts_travel_in_the_clear_and_reports_may_not() {
        let f = net();
        let mut d = draft(&["msb"], b"receipt bytes");
        d.content_type = ContentType::Receipt;
        let env = seal_from_uppsala(&f, &d);
        let v = verify(&env.bytes, &f.roster, NOW).expect("verifies");
        assert_eq!(v.clear_payload(), Some(&b"receipt bytes"[..]));
        // A report in the clear, even correctly signed by its origin, is refused.
        let report = seal_from_uppsala(&f, &draft(&["msb"], b"x"));
        let signer = &f.node("region-uppsala").signing;
        let mut e = pb::Envelope::decode(
            rebuild(&report.bytes, |_, s| {
                s.plaintext = b"secret".to_vec();
                s.keys.clear();
                s.ciphertext.clear();
            })
            .as_slice(),
        )
        .expect("decode");
        e.signature = signer.sign(ENVELOPE_DOMAIN, &e.sealed).to_vec();
        assert_eq!(
            verify(&e.encode_to_vec(), &f.roster, NOW).map(|_| ()),
            Err(OpenError::WrongForm(
                ContentType::SituationReport,
                "payload in the clear"
            ))
        );
    }

    #[test]
    fn drafts_with_bad_headers_are_refused_at_seal() {
        let f = net();
        let mut d = draft(&["msb", "msb"], b"x");
        assert!(matches!(
            seal_from_uppsala_result(&f, &d),
            Err(SealError::Header(HeaderError::DuplicateRecipient(_)))
        ));
        d.recipients.clear();
        assert!(matches!(
            seal_from_uppsala_result(&f, &d),
            Err(SealError::Header(HeaderError::NoRecipients))
        ));
        let mut d = draft(&["msb"], b"x");
        d.expires_ms = NOW;
        assert!(matches!(
            seal_from_uppsala_result(&f, &d),
            Err(SealError::Header(HeaderError::BadLifetime { .. }))
        ));
    }

    /// A creation time so far before the expiry that the lifetime does not
    /// fit in an i64 is a bad lifetime. Found by an AFL++ fuzz target of
    /// the envelope (still being written, not on main): the subtraction overflowed, a panic with overflow
    /// checks, on bytes any peer sends (a refused transfer's header is
    /// peeked at for the log), and without them a negative lifetime that
    /// passed the 30-day bound.
    #[test]
    fn a_lifetime_too_long_to_subtract_is_refused() {
        // The fuzzer's input, minimised: a header from region-uppsala
        // created at i64::MIN, with no expiry (0).
        const HEADER: &[u8] = b"\x0a\x100000000000000000\x12\x0eregion-uppsala\x1a\x03000\x20\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01R\x0800000000Z\x100000000000000000";
        let h = pb::Header::decode(HEADER).expect("decodes");
        assert_eq!((h.created_unix_ms, h.expires_unix_ms), (i64::MIN, 0));
        assert!(matches!(
            HeaderInfo::from_proto(&h),
            Err(HeaderError::BadLifetime { .. })
        ));
        // Signed by its origin, expiring tomorrow: refused, not taken.
        let f = net();
        let env = seal_from_uppsala(&f, &draft(&["msb"], b"x"));
        let mut forged =
            pb::Envelope::decode(rebuild(&env.bytes, |h, _| h.created_unix_ms = i64::MIN + 1).as_slice())
                .expect("decodes");
        forged.signature = f
            .node("region-uppsala")
            .signing
            .sign(ENVELOPE_DOMAIN, &forged.sealed)
            .to_vec();
        assert!(matches!(
            verify(&forged.encode_to_vec(), &f.roster, NOW),
            Err(OpenError::InvalidHeader(HeaderError::BadLifetime { .. }))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// verify, open and the header reader never panic on arbitrary bytes.
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let f = FIXTURE.with(|f| f.roster.clone());
            let _ = peek_header(&bytes);
            if let Ok(v) = verify(&bytes, &f, NOW) {
                let me = id("msb");
                let _ = open(&v, &me, &HPKE.with(|k| HpkeSecretKey::from_bytes(k).expect("key")));
            }
        }

        /// Nor on structurally valid envelopes with arbitrary edits.
        #[test]
        fn never_panics_on_edited_envelopes(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
            let (roster, mut bytes) = FIXTURE.with(|f| (f.roster.clone(), ENVELOPE.with(Clone::clone)));
            for (at, v) in edits {
                let i = at.index(bytes.len());
                bytes[i] = v;
            }
            let end = cut.index(bytes.len() + 1);
            let bytes = &bytes[..end];
            let _ = peek_header(bytes);
            if let Ok(v) = verify(bytes, &roster, NOW) {
                let k = HPKE.with(|k| HpkeSecretKey::from_bytes(k).expect("key"));
                let _ = open(&v, &id("msb"), &k);
            }
        }
    }

    thread_local! {
        static FIXTURE: Fixture = net();
        static HPKE: Vec<u8> = FIXTURE.with(|f| f.node("msb").hpke.as_bytes().to_vec());
        static ENVELOPE: Vec<u8> = FIXTURE.with(|f| seal_from_uppsala(f, &draft(&["msb", "nspl-hub"], b"payload")).bytes);
    }
}
