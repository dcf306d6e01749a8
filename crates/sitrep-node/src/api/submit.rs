//! `POST /v1/reports`: the submission body as typed serde structs, every
//! invalid field reported at once with its path, then the service's submit.
//!
//! How all errors come back at once: the body is one typed struct
//! ([`SubmitBody`], `deny_unknown_fields`) whose fields are [`Checked<T>`]:
//! each holds its raw JSON until [`Checked::decode`] decodes it as `T`
//! with `serde_path_to_error`, so one bad field does not hide the next and
//! each error names its path (`label.caveats[0]`). The report's own field
//! rules come from `sitrep_core::report::validate`, the same as over QUIC.
//!
//! Not here: policy, routing, sealing (the service does them).

use std::marker::PhantomData;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sitrep_core::envelope::MAX_AUTHOR_BYTES;
use sitrep_core::report::FieldError;
use sitrep_core::{Class, Label, Mode, NodeId, Precedence};
use sitrep_proto::v1 as pb;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::{ApiError, ApiState, ErrorBody, authorize, field};
use crate::config::Role;
use crate::error::SubmitError;
use crate::service::{Content, Submission};
use sitrep_store::SubmissionKey;

/// A field kept as raw JSON until it is decoded as `T`, so that every field
/// of a body is checked and reported, not just the first bad one.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub(super) struct Checked<T> {
    raw: Box<RawValue>,
    #[serde(skip)]
    of: PhantomData<T>,
}

impl<T: DeserializeOwned> Checked<T> {
    /// Decodes the field; a problem is reported at `name` plus the path
    /// inside it.
    fn decode(&self, name: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        let mut de = serde_json::Deserializer::from_str(self.raw.get());
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let at = match inner.as_str() {
                    "." => name.to_owned(),
                    p if p.starts_with('[') => format!("{name}{p}"),
                    p => format!("{name}.{p}"),
                };
                errors.push(field(at, e.into_inner().to_string()));
                None
            }
        }
    }
}

impl<T: PartialSchema> PartialSchema for Checked<T> {
    fn schema() -> RefOr<Schema> {
        T::schema()
    }
}

impl<T: ToSchema> ToSchema for Checked<T> {}

/// The body of `POST /v1/reports`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitBody {
    /// The situation report, in the proto3 JSON mapping of
    /// `sitrep.v1.SituationReport` (proto field names, enum names as strings).
    #[schema(value_type = Object)]
    report: Option<Checked<pb::SituationReport>>,
    /// Classification. Required.
    #[schema(value_type = LabelBody)]
    label: Option<Checked<LabelBody>>,
    /// `ROUTINE` (default), `PRIORITY`, `IMMEDIATE` or `FLASH`.
    #[schema(value_type = Option<PrecedenceName>)]
    precedence: Option<Checked<PrecedenceName>>,
    /// `ACTUAL`, `EXERCISE` or `TEST`. Required.
    #[schema(value_type = ModeName)]
    mode: Option<Checked<ModeName>>,
    /// Node ids of the recipients. Required, at least one, none twice.
    #[schema(value_type = Vec<String>)]
    recipients: Option<Checked<Vec<Recipient>>>,
    /// Expiry: an RFC 3339 time or ms since the epoch; default the node's `default_ttl`.
    #[schema(value_type = Option<String>)]
    expires: Option<Checked<Expiry>>,
    /// Person or role submitting.
    #[schema(value_type = Option<String>)]
    author: Option<Checked<String>>,
}

/// A classification label.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LabelBody {
    /// `OPEN`, `SENSITIVE`, `RESTRICTED`, `CONFIDENTIAL`, `SECRET` or `TOP_SECRET`.
    class: ClassName,
    /// Handling caveats.
    #[serde(default)]
    caveats: Vec<String>,
}

/// A class by its proto name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String, examples("SENSITIVE"))]
pub(super) struct ClassName(Class);

impl TryFrom<String> for ClassName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Class::parse(&s).map(Self).ok_or_else(|| {
            format!("{s:?} is not OPEN, SENSITIVE, RESTRICTED, CONFIDENTIAL, SECRET or TOP_SECRET")
        })
    }
}

/// A precedence by its proto name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String, examples("ROUTINE"))]
pub(super) struct PrecedenceName(Precedence);

impl TryFrom<String> for PrecedenceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Precedence::parse(&s)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is not ROUTINE, PRIORITY, IMMEDIATE or FLASH"))
    }
}

/// A mode by its proto name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(value_type = String, examples("ACTUAL"))]
pub(super) struct ModeName(Mode);

impl TryFrom<String> for ModeName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Mode::parse(&s)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is not ACTUAL, EXERCISE or TEST"))
    }
}

/// A recipient's node id.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Recipient(NodeId);

impl TryFrom<String> for Recipient {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        NodeId::new(&s).map(Self).map_err(|e| e.to_string())
    }
}

/// An expiry as written: ms since the epoch or an RFC 3339 time.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeInput {
    Ms(i64),
    Text(String),
}

/// An expiry, ms since the epoch.
#[derive(Debug, Deserialize)]
#[serde(try_from = "TimeInput")]
struct Expiry(i64);

impl TryFrom<TimeInput> for Expiry {
    type Error = String;
    fn try_from(t: TimeInput) -> Result<Self, String> {
        match t {
            TimeInput::Ms(ms) => Ok(Self(ms)),
            TimeInput::Text(s) => {
                let t = humantime::parse_rfc3339_weak(&s)
                    .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
                let d = t
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| "before 1970".to_owned())?;
                i64::try_from(d.as_millis())
                    .map(Self)
                    .map_err(|_| "out of range".to_owned())
            }
        }
    }
}

/// The answer to an accepted submission.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Accepted {
    /// The message id (UUIDv7).
    id: String,
}

impl SubmitBody {
    /// Decodes every field; all problems at once, or the submission.
    fn into_submission(self) -> Result<Submission, Vec<FieldError>> {
        let mut errors = Vec::new();
        let required = |name: &str, what: &str, errors: &mut Vec<FieldError>| {
            errors.push(field(name, format!("is required{what}")));
        };
        let report = match &self.report {
            None => {
                required("report", "", &mut errors);
                None
            }
            Some(r) => r.decode("report", &mut errors).inspect(|r| {
                if let Err(es) = sitrep_core::report::validate(r) {
                    errors.extend(
                        es.into_iter()
                            .map(|e| field(format!("report.{}", e.field), e.problem)),
                    );
                }
            }),
        };
        let label = match &self.label {
            None => {
                required("label", "", &mut errors);
                None
            }
            Some(l) => l.decode("label", &mut errors).and_then(|l| {
                let wire = pb::Label {
                    class: l.class.0.to_proto() as i32,
                    caveats: l.caveats,
                };
                Label::from_proto(Some(&wire))
                    .map_err(|e| errors.push(field("label.caveats", e.to_string())))
                    .ok()
            }),
        };
        let precedence = match &self.precedence {
            None => Some(Precedence::Routine),
            Some(p) => p.decode("precedence", &mut errors).map(|p| p.0),
        };
        let mode = match &self.mode {
            None => {
                required("mode", ": ACTUAL, EXERCISE or TEST", &mut errors);
                None
            }
            Some(m) => m.decode("mode", &mut errors).map(|m| m.0),
        };
        let recipients = match &self.recipients {
            None => {
                required("recipients", ": a list of node ids", &mut errors);
                None
            }
            Some(r) => r
                .decode("recipients", &mut errors)
                .map(|r| r.into_iter().map(|r| r.0).collect::<Vec<_>>()),
        };
        let expires_ms = self
            .expires
            .as_ref()
            .and_then(|e| e.decode("expires", &mut errors))
            .map(|e| e.0);
        let author = self
            .author
            .as_ref()
            .and_then(|a| a.decode("author", &mut errors))
            .unwrap_or_default();
        if author.len() > MAX_AUTHOR_BYTES {
            errors.push(field(
                "author",
                format!("is {} bytes, at most {MAX_AUTHOR_BYTES}", author.len()),
            ));
        }
        match (report, label, precedence, mode, recipients) {
            (Some(report), Some(label), Some(precedence), Some(mode), Some(recipients))
                if errors.is_empty() =>
            {
                Ok(Submission {
                    author,
                    label,
                    precedence,
                    mode,
                    recipients,
                    expires_ms,
                    content: Content::Report(report),
                })
            }
            _ => Err(errors),
        }
    }
}

/// Parses a `POST /v1/reports` body and checks every field, as the handler
/// does before the token's role and the label policy are looked at: the
/// submission, or every problem found, each naming its field (`body` for
/// JSON that does not parse). Public for the fuzz targets (`fuzz/`), which
/// feed it arbitrary bytes without an HTTP server.
///
/// # Errors
/// The [`FieldError`]s, at least one.
#[doc(hidden)]
pub fn parse_submit_body(raw: &[u8]) -> Result<Submission, Vec<FieldError>> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let body: SubmitBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." { "body".to_owned() } else { at };
        let inner = e.into_inner();
        let problem = if inner.is_syntax() || inner.is_eof() {
            format!("not JSON: {inner}")
        } else {
            inner.to_string()
        };
        vec![field(at, problem)]
    })?;
    body.into_submission()
}

/// The request header that makes a submission safe to retry.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on the answer to a retry that stored nothing new.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The longest idempotency key taken, in bytes.
pub(super) const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The submission key of a request: digests of its `Idempotency-Key` and of
/// its body, or `None` without the header. A key is 1 to 255 visible ASCII
/// characters.
fn submission_key(headers: &HeaderMap, body: &[u8]) -> Result<Option<SubmissionKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |problem: &str| ApiError::fields(vec![field("Idempotency-Key", problem)]);
    if values.next().is_some() {
        return Err(bad("is given more than once"));
    }
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(bad(&format!(
            "is {} bytes; it must be 1 to {MAX_IDEMPOTENCY_KEY}",
            key.len()
        )));
    }
    if !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "must be visible ASCII characters only (a UUID is a good key)",
        ));
    }
    let mut scoped = b"sitrep submission key v1\0".to_vec();
    scoped.extend_from_slice(key);
    Ok(Some(SubmissionKey {
        key: sitrep_crypto::sha256(&scoped),
        request: sitrep_crypto::sha256(body),
    }))
}

/// Validate, check policy, seal, store; `202 {id}` once durable.
#[utoipa::path(post, path = "/v1/reports", tag = "reports",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes the submission safe to retry: 1 to 255 visible ASCII characters, new for each report (a UUID). A request with a key already used answers with the first request's id and stores nothing new (also after a restart of the node), as long as the node remembers the message (7 days past its expiry). The same key with a different body is refused with 422."),
    ),
    request_body(content = SubmitBody, description = "A situation report with its label, mode and recipients"),
    responses(
        (status = 202, description = "Stored durably and queued; for a retry with a used Idempotency-Key, the first request's id, with `Idempotent-Replayed: true`", body = Accepted),
        (status = 400, description = "Invalid fields, every one named", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "Wrong role, or outside the label policy; nothing stored", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for a different request; nothing stored", body = ErrorBody),
        (status = 507, description = "The node's disk is nearly full or its queues are at their caps (`[limits] min_free_bytes`, `max_queue_bytes`, `max_peer_queue_bytes`); nothing stored, retry later", body = ErrorBody),
        (status = 503, description = "The store failed; retry", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub(super) async fn submit_report(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Role::Reporter)?;
    let key = submission_key(&headers, &raw)?;
    let sub = parse_submit_body(&raw).map_err(ApiError::fields)?;
    match state.service.submit_keyed(sub, key).await {
        Ok(done) => {
            let id = done.id.to_string();
            let mut response = (StatusCode::ACCEPTED, Json(Accepted { id: id.clone() })).into_response();
            if done.replayed {
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            } else {
                remember(&state, &raw, &id);
            }
            Ok(response)
        }
        Err(e) => Err(submit_error(e)),
    }
}

/// Keeps the body just accepted for "copy from my last report" (in
/// memory; see `ApiState::last_report`).
fn remember(state: &ApiState, raw: &Bytes, id: &str) {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(raw) else {
        return;
    };
    doc["id"] = id.into();
    doc["submitted_ms"] = crate::clock::now_ms().into();
    *state
        .last_report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(doc);
}

/// A refused submission as an answer: field errors as 400, policy and
/// routing as 403, a full store as 507, a failed store as 503.
pub(super) fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Invalid(es) => ApiError::fields(
            es.into_iter()
                .map(|e| field(format!("report.{}", e.field), e.problem))
                .collect(),
        ),
        SubmitError::Bad { field: f, problem } => ApiError::fields(vec![field(f, problem)]),
        e @ (SubmitError::Policy(_) | SubmitError::NoRoute(_)) => {
            ApiError::new(StatusCode::FORBIDDEN, e.to_string())
        }
        e @ SubmitError::Store(sitrep_store::StoreError::Full { .. }) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        e @ SubmitError::Store(_) => ApiError::unavailable(e),
        e @ SubmitError::KeyReused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(body: serde_json::Value) -> Vec<String> {
        let body: SubmitBody = serde_json::from_str(&body.to_string()).expect("the body's shape");
        match body.into_submission() {
            Ok(_) => Vec::new(),
            Err(es) => {
                let mut f: Vec<String> = es.into_iter().map(|e| e.field).collect();
                f.sort();
                f
            }
        }
    }

    #[test]
    fn every_bad_field_is_named_with_its_path() {
        let got = errors_of(serde_json::json!({
            "report": {"region_code": 3},
            "label": {"class": "OPEN", "caveats": [7]},
            "precedence": 4,
            "mode": "REAL",
            "recipients": ["ok-node", "Not A Node"],
            "expires": "next tuesday",
            "author": ["x"],
        }));
        assert_eq!(
            got,
            [
                "author",
                "expires",
                "label.caveats[0]",
                "mode",
                "precedence",
                "recipients[1]",
                "report.region_code"
            ]
        );
    }

    #[test]
    fn an_author_over_its_limit_is_named() {
        let mut body = serde_json::json!({
            "report": {},
            "label": {"class": "OPEN"},
            "mode": "EXERCISE",
            "recipients": ["ok-node"],
            "author": "x".repeat(MAX_AUTHOR_BYTES + 44),
        });
        let got = errors_of(body.clone());
        assert!(got.contains(&"author".to_owned()), "{got:?}");
        body["author"] = "x".repeat(MAX_AUTHOR_BYTES).into();
        assert!(!errors_of(body).contains(&"author".to_owned()));
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert_eq!(
            errors_of(serde_json::json!({})),
            ["label", "mode", "recipients", "report"]
        );
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_name() {
        let mut de = serde_json::Deserializer::from_str(r#"{"mode":"TEST","unexpected":true}"#);
        let e = serde_path_to_error::deserialize::<_, SubmitBody>(&mut de).expect_err("refused");
        assert_eq!(e.path().to_string(), "unexpected");
    }
}
