//! Field-level validation of situation reports.
//!
//! Every problem is reported, not just the first, each with the path of the
//! field (`beds[2].occupied`) and what is wrong, so that a reporter fixes a
//! report in one round.

use std::collections::BTreeSet;

use sitrep_proto::v1 as pb;

/// SCB county codes (län) of Sweden's 21 regions.
pub const COUNTY_CODES: [&str; 21] = [
    "01", "03", "04", "05", "06", "07", "08", "09", "10", "12", "13", "14", "17", "18", "19", "20", "21",
    "22", "23", "24", "25",
];

/// 200 bytes for names and short texts.
pub const MAX_SHORT_TEXT: usize = 200;
/// 20,000 bytes for the assessment and action plan: a few pages.
pub const MAX_LONG_TEXT: usize = 20_000;
/// 256 entries per list: every facility of the largest region, with room.
pub const MAX_LIST: usize = 256;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    /// Path of the field, e.g. `beds[2].occupied`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            problem: problem.into(),
        });
    }

    fn text(&mut self, field: &str, value: &str, required: bool, max: usize) {
        if required && value.trim().is_empty() {
            self.add(field, "is required");
        }
        if value.len() > max {
            self.add(field, format!("is {} bytes, at most {max}", value.len()));
        }
    }

    fn list<T>(&mut self, field: &str, list: &[T]) {
        if list.len() > MAX_LIST {
            self.add(field, format!("has {} entries, at most {MAX_LIST}", list.len()));
        }
    }

    fn known<E: TryFrom<i32>>(&mut self, field: &str, value: i32, what: &str) {
        if value == 0 || E::try_from(value).is_err() {
            self.add(field, format!("{what} {value} is unknown or unspecified"));
        }
    }
}

/// Validates a report. `Ok(())` or every problem found.
///
/// # Errors
/// The list of [`FieldError`]s, sorted by field.
pub fn validate(r: &pb::SituationReport) -> Result<(), Vec<FieldError>> {
    let mut p = Problems(Vec::new());
    if !COUNTY_CODES.contains(&r.region_code.as_str()) {
        p.add(
            "region_code",
            format!("{:?} is not an SCB county code", r.region_code),
        );
    }
    p.text("reporting_unit", &r.reporting_unit, true, MAX_SHORT_TEXT);
    if r.report_number == 0 {
        p.add("report_number", "must be at least 1");
    }
    p.known::<pb::ReportVersion>("version", r.version, "version");
    match &r.period {
        None => p.add("period", "is required"),
        Some(period) => {
            if period.start_unix_ms <= 0 {
                p.add("period.start_unix_ms", "is required");
            }
            if period.end_unix_ms < period.start_unix_ms {
                p.add("period.end_unix_ms", "is before period.start_unix_ms");
            }
            if r.next_report_due_unix_ms != 0 && r.next_report_due_unix_ms < period.start_unix_ms {
                p.add("next_report_due_unix_ms", "is before the period starts");
            }
        }
    }
    if r.next_report_due_unix_ms < 0 {
        p.add("next_report_due_unix_ms", "is negative");
    }
    p.known::<pb::PreparednessLevel>("preparedness_level", r.preparedness_level, "preparedness level");

    p.list("beds", &r.beds);
    let mut bed_types = BTreeSet::new();
    for (i, b) in r.beds.iter().enumerate() {
        let f = |name: &str| format!("beds[{i}].{name}");
        p.known::<pb::BedType>(&f("type"), b.r#type, "bed type");
        if b.r#type != 0 && !bed_types.insert(b.r#type) {
            p.add(f("type"), "is listed twice");
        }
        let capacity = u64::from(b.baseline) + u64::from(b.surge_72h);
        if u64::from(b.occupied) > capacity {
            p.add(
                f("occupied"),
                format!("{} exceeds baseline + surge_72h = {capacity}", b.occupied),
            );
        }
        if u64::from(b.available) + u64::from(b.occupied) > capacity {
            p.add(
                f("available"),
                format!(
                    "available {} + occupied {} exceeds baseline + surge_72h = {capacity}",
                    b.available, b.occupied
                ),
            );
        }
        if b.surge_24h > b.surge_72h {
            p.add(
                f("surge_24h"),
                format!("{} exceeds surge_72h {}", b.surge_24h, b.surge_72h),
            );
        }
        if b.with_ventilator > b.available {
            p.add(
                f("with_ventilator"),
                format!("{} exceeds available {}", b.with_ventilator, b.available),
            );
        }
    }
    p.list("facilities", &r.facilities);
    for (i, fac) in r.facilities.iter().enumerate() {
        p.text(&format!("facilities[{i}].id"), &fac.id, true, MAX_SHORT_TEXT);
        p.text(&format!("facilities[{i}].name"), &fac.name, true, MAX_SHORT_TEXT);
        p.known::<pb::ResourceStatus>(&format!("facilities[{i}].status"), fac.status, "status");
    }
    p.list("supplies", &r.supplies);
    for (i, s) in r.supplies.iter().enumerate() {
        p.text(&format!("supplies[{i}].code"), &s.code, true, MAX_SHORT_TEXT);
        p.text(&format!("supplies[{i}].name"), &s.name, false, MAX_SHORT_TEXT);
        p.known::<pb::ResourceStatus>(&format!("supplies[{i}].status"), s.status, "status");
    }
    if let Some(s) = &r.staffing {
        p.known::<pb::ResourceStatus>("staffing.status", s.status, "status");
    }
    if let Some(t) = &r.transports {
        p.known::<pb::ResourceStatus>("transports.status", t.status, "status");
    }
    if let Some(c) = &r.planned_care {
        p.known::<pb::ResourceStatus>("planned_care.status", c.status, "status");
    }
    p.list("incidents", &r.incidents);
    for (i, inc) in r.incidents.iter().enumerate() {
        p.text(&format!("incidents[{i}].kind"), &inc.kind, true, MAX_SHORT_TEXT);
        p.text(
            &format!("incidents[{i}].location"),
            &inc.location,
            false,
            MAX_SHORT_TEXT,
        );
        p.known::<pb::ResourceStatus>(&format!("incidents[{i}].severity"), inc.severity, "severity");
    }
    p.list("requests", &r.requests);
    for (i, req) in r.requests.iter().enumerate() {
        p.text(
            &format!("requests[{i}].resource"),
            &req.resource,
            true,
            MAX_SHORT_TEXT,
        );
        if req.quantity == 0 {
            p.add(format!("requests[{i}].quantity"), "must be at least 1");
        }
    }
    p.text("assessment", &r.assessment, false, MAX_LONG_TEXT);
    p.text("action_plan", &r.action_plan, false, MAX_LONG_TEXT);
    p.text("prepared_by", &r.prepared_by, true, MAX_SHORT_TEXT);
    p.text("approved_by", &r.approved_by, false, MAX_SHORT_TEXT);

    if p.0.is_empty() {
        Ok(())
    } else {
        p.0.sort();
        Err(p.0)
    }
}

/// A realistic Region Uppsala ICU-capacity report, for examples, tests and the demo.
#[must_use]
pub fn example_uppsala(now_ms: i64) -> pb::SituationReport {
    use pb::ResourceStatus::{Adequate, Critical, Strained};
    let hour = 3_600_000;
    pb::SituationReport {
        region_code: "03".into(),
        reporting_unit: "Region Uppsala, regional särskild sjukvårdsledning (RSSL)".into(),
        report_number: 14,
        version: pb::ReportVersion::Update as i32,
        period: Some(pb::Period {
            start_unix_ms: now_ms - 6 * hour,
            end_unix_ms: now_ms,
        }),
        next_report_due_unix_ms: now_ms + 6 * hour,
        preparedness_level: pb::PreparednessLevel::Reinforced as i32,
        beds: vec![
            pb::BedCapacity {
                r#type: pb::BedType::IcuAdult as i32,
                available: 4,
                occupied: 38,
                baseline: 36,
                surge_24h: 6,
                surge_72h: 12,
                with_ventilator: 3,
            },
            pb::BedCapacity {
                r#type: pb::BedType::IcuPediatric as i32,
                available: 2,
                occupied: 6,
                baseline: 8,
                surge_24h: 0,
                surge_72h: 2,
                with_ventilator: 2,
            },
        ],
        facilities: vec![pb::Facility {
            id: "SE2321000032-AKADEMISKA".into(),
            name: "Akademiska sjukhuset".into(),
            status: Strained as i32,
        }],
        supplies: vec![
            pb::Supply {
                code: "PPE-FFP3".into(),
                name: "Andningsskydd FFP3".into(),
                on_hand: 12_000,
                days_of_supply: 9,
                status: Strained as i32,
            },
            pb::Supply {
                code: "N01AX10".into(),
                name: "Propofol".into(),
                on_hand: 800,
                days_of_supply: 3,
                status: Critical as i32,
            },
        ],
        staffing: Some(pb::Staffing {
            status: Strained as i32,
            shortfall: 22,
        }),
        transports: Some(pb::Transports {
            status: Adequate as i32,
            available_units: 11,
        }),
        planned_care: Some(pb::PlannedCare {
            status: Strained as i32,
            postponed_procedures: 140,
        }),
        incidents: vec![],
        requests: vec![pb::ResourceRequest {
            resource: "ICU_ADULT beds".into(),
            quantity: 4,
            needed_by_unix_ms: now_ms + 24 * hour,
        }],
        assessment: "IVA-beläggningen över basnivå sedan två dygn. Förstärkningsläge.".into(),
        action_plan: "Öppnar 6 extra IVA-platser inom 24 h; begär avlastning via NSPL.".into(),
        prepared_by: "Tjänsteman i beredskap (TiB), Region Uppsala".into(),
        approved_by: "Regional särskild sjukvårdsledare".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn the_example_is_valid() {
        assert_eq!(validate(&example_uppsala(NOW)), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut r = example_uppsala(NOW);
        r.region_code = "99".into();
        r.beds[0].occupied = 100; // > 36 + 12
        r.beds[1].surge_24h = 5; // > surge_72h 2
        r.prepared_by.clear();
        r.requests[0].quantity = 0;
        let errors = validate(&r).expect_err("invalid");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "beds[0].available",
                "beds[0].occupied",
                "beds[1].surge_24h",
                "prepared_by",
                "region_code",
                "requests[0].quantity"
            ]
        );
        assert!(
            errors[1].problem.contains("exceeds baseline + surge_72h = 48"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_enums_and_missing_parts_are_refused() {
        let mut r = example_uppsala(NOW);
        r.version = 0;
        r.preparedness_level = 42;
        r.beds[0].r#type = 0;
        r.beds.push(r.beds[1]);
        r.period = None;
        let fields: Vec<String> = validate(&r)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "beds[0].type",
                "beds[2].type",
                "period",
                "preparedness_level",
                "version"
            ]
        );
    }
}
