//! A national roll-up as a human table: a heading, one line per region
//! (code, name, beredskapsläge, ICU, beds, transports, planned care, last
//! report, OVERDUE / STALE marks), then the national totals.
//!
//! Takes the roll-up as the API serves it (`GET /v1/feeds/{name}`, or one
//! event of `…/events`): the proto3 JSON mapping with the proto's field
//! names, so zero and false fields are left out and 64-bit integers are
//! strings. Used by `sitrep demo --national`; anything that shows a feed
//! can use it.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

/// A numeric field: a JSON number, or a string (the JSON mapping of 64-bit
/// integers); 0 when absent or not a number.
pub(crate) fn number(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// The preparedness level (beredskapsläge) as it is said in Swedish.
fn level(s: &str) -> &str {
    match s {
        "NORMAL" => "normalläge",
        "STAFF_ALERT" => "stabsläge",
        "REINFORCED" => "förstärkningsläge",
        "DISASTER" => "katastrofläge",
        "" | "PREPAREDNESS_LEVEL_UNSPECIFIED" => "-",
        other => other,
    }
}

/// A resource status; `-` when not reported.
fn status(s: &str) -> &str {
    match s {
        "" | "RESOURCE_STATUS_UNSPECIFIED" => "-",
        other => other,
    }
}

/// RFC 3339 to the second, UTC; `-` for 0.
pub(crate) fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The table for one roll-up (see the module doc), lines ending in `\n`.
pub(crate) fn print_table(rollup: &Value) -> String {
    let mut out = String::new();
    let label = rollup
        .pointer("/label/class")
        .and_then(Value::as_str)
        .unwrap_or("-");
    let withheld = rollup
        .get("withheld")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let _ = write!(
        out,
        "{} ({}) from {}, sequence {}, built {}, label {label}",
        text(rollup, "feed"),
        status(text(rollup, "mode")),
        text(rollup, "aggregator"),
        number(rollup, "sequence"),
        time(number(rollup, "built_unix_ms")),
    );
    if withheld > 0 {
        let _ = write!(out, ", {withheld} withheld above SENSITIVE");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<4} {:<26} {:<17} {:>13} {:>5} {:>13} {:<10} {:<12} {:<20} MARKS",
        "CODE",
        "REGION",
        "BEREDSKAPSLÄGE",
        "ICU AVAIL/OCC",
        "FREE‰",
        "BEDS AVAIL/OCC",
        "TRANSPORTS",
        "PLANNED CARE",
        "LAST REPORT",
    );
    for r in rollup
        .get("regions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let code = text(r, "region_code");
        let name = text(r, "region_name");
        let line = if flag(r, "never_reported") {
            format!(
                "{code:<4} {name:<26} {:<17} {:>13} {:>5} {:>13} {:<10} {:<12} {:<20} NO REPORT",
                "-", "-", "-", "-", "-", "-", "-"
            )
        } else {
            let marks: Vec<&str> = [("overdue", "OVERDUE"), ("stale", "STALE")]
                .into_iter()
                .filter(|(k, _)| flag(r, k))
                .map(|(_, m)| m)
                .collect();
            format!(
                "{code:<4} {name:<26} {:<17} {:>13} {:>5} {:>13} {:<10} {:<12} {:<20} {}",
                level(text(r, "preparedness_level")),
                format!("{}/{}", number(r, "icu_available"), number(r, "icu_occupied")),
                number(r, "icu_free_permille"),
                format!("{}/{}", number(r, "beds_available"), number(r, "beds_occupied")),
                status(text(r, "transports_status")),
                status(text(r, "planned_care_status")),
                time(number(r, "last_report_unix_ms")),
                marks.join(" "),
            )
        };
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let t = rollup.get("totals").cloned().unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "TOTAL {}/{} regions reporting, {} overdue, {} stale, {} never reported; ICU {}/{} ({}‰ free); \
         beds {}/{}; {} transport units; {} procedures postponed; {} regions with a critical resource",
        number(&t, "regions_reporting"),
        number(&t, "regions_total"),
        number(&t, "regions_overdue"),
        number(&t, "regions_stale"),
        number(&t, "regions_never_reported"),
        number(&t, "icu_available"),
        number(&t, "icu_occupied"),
        number(&t, "icu_free_permille"),
        number(&t, "beds_available"),
        number(&t, "beds_occupied"),
        number(&t, "transports_available_units"),
        number(&t, "postponed_procedures"),
        number(&t, "regions_critical"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_marks_and_totals_from_the_json_mapping() {
        let rollup = serde_json::json!({
            "feed": "national-open",
            "mode": "ACTUAL",
            "aggregator": "nspl-hub",
            "sequence": "7",
            "built_unix_ms": "1790000000000",
            "label": { "class": "SENSITIVE" },
            "regions": [
                {
                    "region_code": "03",
                    "region_name": "Region Uppsala",
                    "preparedness_level": "REINFORCED",
                    "icu_available": 6,
                    "icu_occupied": 44,
                    "icu_free_permille": 120,
                    "beds_available": 40,
                    "beds_occupied": 760,
                    "transports_status": "ADEQUATE",
                    "planned_care_status": "STRAINED",
                    "last_report_unix_ms": "1790000000000"
                },
                {
                    "region_code": "25",
                    "region_name": "Region Norrbotten",
                    "preparedness_level": "NORMAL",
                    "icu_occupied": 12,
                    "last_report_unix_ms": "1790000000000",
                    "overdue": true
                },
                { "region_code": "09", "region_name": "Region Gotland", "never_reported": true }
            ],
            "totals": { "regions_reporting": 2, "regions_total": 3, "regions_overdue": 1,
                        "regions_never_reported": 1, "icu_available": 6, "icu_occupied": 56,
                        "icu_free_permille": 96 }
        });
        let t = print_table(&rollup);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(
            lines[0].starts_with("national-open (ACTUAL) from nspl-hub, sequence 7, built 2026-"),
            "{t}"
        );
        assert!(lines[2].starts_with("03   Region Uppsala"), "{t}");
        assert!(lines[2].contains("förstärkningsläge"), "{t}");
        assert!(lines[2].contains(" 6/44 "), "{t}");
        assert!(lines[2].contains("2026-09-21T"), "{t}");
        assert!(lines[3].ends_with("OVERDUE"), "{t}");
        assert!(lines[3].contains(" 0/12 "), "{t}");
        assert!(lines[4].ends_with("NO REPORT"), "{t}");
        assert!(
            lines[5].starts_with(
                "TOTAL 2/3 regions reporting, 1 overdue, 0 stale, 1 never reported; ICU 6/56 (96‰ free)"
            ),
            "{t}"
        );
        // Columns line up whatever the letters: Rust pads by characters.
        let col = |l: &str| l.chars().take_while(|c| *c != '/').count();
        assert_eq!(col(lines[2]), col(lines[3]), "{t}");
    }
}
