//! The 4 KiB report both the `path` and the `compare` benches submit
//! (included with `#[path]`; not a bench of its own).

use anyhow::{Context as _, anyhow, ensure};
use prost::Message as _;
use sitrep_core::{Class, Label, Mode, NodeId, Precedence};
use sitrep_node::{Content, Submission};
use sitrep_proto::v1 as pb;

/// Uppsala's example report with the assessment padded so that the encoded
/// report is `bytes` long.
pub(crate) fn report_template(bytes: usize) -> anyhow::Result<pb::SituationReport> {
    let mut r = sitrep_core::report::example_uppsala(sitrep_node::clock::now_ms());
    r.assessment.clear();
    // Field tag + a two-byte length for an assessment of this size.
    let overhead = r.encoded_len() + 3;
    ensure!(overhead < bytes, "the example report is already {overhead} bytes");
    r.assessment = "IVA-beläggning över basnivå. "
        .chars()
        .cycle()
        .take(bytes - overhead)
        .collect();
    // Non-ASCII characters are two bytes: trim to the byte budget.
    while r.encoded_len() > bytes {
        r.assessment.pop();
    }
    sitrep_core::report::validate(&r).map_err(|e| anyhow!("report template invalid: {e:?}"))?;
    Ok(r)
}

/// Report number `number` (+1) from `template`, SENSITIVE, EXERCISE, to `recipient`.
pub(crate) fn submission(
    template: &pb::SituationReport,
    number: usize,
    recipient: &str,
) -> anyhow::Result<Submission> {
    let mut r = template.clone();
    r.report_number = u32::try_from(number % 1_000_000).context("report number")? + 1;
    Ok(Submission {
        author: "TiB Region Uppsala".into(),
        label: Label::new(Class::Sensitive),
        precedence: Precedence::Routine,
        mode: Mode::Exercise,
        recipients: vec![NodeId::new(recipient).context("node id")?],
        expires_ms: None,
        content: Content::Report(r),
    })
}
