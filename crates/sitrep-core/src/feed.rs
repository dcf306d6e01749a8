//! The national roll-up, sans I/O: the latest report per (region, mode) an
//! aggregator holds, and the `NationalRollup` of a feed built from them
//! (DESIGN §8, issue 10).
//!
//! - **Latest** follows `report_number`, then `version` (INITIAL < UPDATE <
//!   FINAL): a report that arrives late never replaces a newer one, an
//!   equal one changes nothing, and after a FINAL only a higher
//!   `report_number` (the next period) replaces it.
//! - **Modes never mix**: a feed has one mode and sees only inputs of it.
//! - **Labels**: a feed takes inputs up to its `max_class`; an `open` feed
//!   only those that came on the open channel (OPEN, SENSITIVE), and says
//!   nothing about others, not even that they exist. The roll-up's label
//!   is the high-water mark of the inputs used (class and caveats). A
//!   `secure` feed lists in `withheld` the inputs it used that are above
//!   the open feed's limit (SENSITIVE).
//! - **Rows** cover every region of the roster (or of the feed's region
//!   filter), including those that never reported; `stale` when the last
//!   report arrived longer ago than the feed's limit, `overdue` when its
//!   `next_report_due` has passed.
//!
//! Cost: an update is O(regions · log regions) whatever the number of
//! reports received or subscribers (the latest input per region is kept,
//! nothing else).
//!
//! Not here: where inputs come from (the node's inbox), subscriptions, or
//! sealing the roll-up to subscribers.

use std::collections::BTreeMap;

use sitrep_proto::v1 as pb;

use crate::{Channel, Class, Label, MessageId, Mode};

/// A configured feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// Name, e.g. `national-icu`.
    pub name: String,
    /// The channel its roll-ups travel on.
    pub channel: Channel,
    /// The only mode it takes.
    pub mode: Mode,
    /// The highest class of input it takes (at most what its channel carries).
    pub max_class: Class,
    /// A region whose last report is older than this is `stale`, ms.
    pub stale_after_ms: i64,
    /// Only these SCB county codes; empty: every region of the roster.
    pub regions: Vec<String>,
}

impl FeedSpec {
    /// A feed of every region of the roster, stale after six hours.
    #[must_use]
    pub fn national(name: &str, channel: Channel, mode: Mode, max_class: Class) -> Self {
        Self {
            name: name.to_owned(),
            channel,
            mode,
            max_class,
            stale_after_ms: 6 * 3_600_000,
            regions: Vec::new(),
        }
    }
}

/// The highest class the open channel carries: what an open feed may say.
pub const OPEN_LIMIT: Class = Class::Sensitive;

/// One region's report as the aggregator received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// The message id of the report.
    pub id: MessageId,
    /// SHA-256 of the signed envelope as received.
    pub envelope_sha256: [u8; 32],
    /// When the aggregator received it, ms since the epoch.
    pub received_ms: i64,
    /// The envelope's label.
    pub label: Label,
    /// The envelope's mode.
    pub mode: Mode,
    /// The channel it arrived on.
    pub channel: Channel,
    /// The report.
    pub report: pb::SituationReport,
}

impl Input {
    /// Where this report stands in its region's sequence.
    fn order(&self) -> (u32, i32) {
        (self.report.report_number, version_rank(self.report.version))
    }
}

fn version_rank(v: i32) -> i32 {
    match pb::ReportVersion::try_from(v) {
        Ok(pb::ReportVersion::Initial) => 1,
        Ok(pb::ReportVersion::Update) => 2,
        Ok(pb::ReportVersion::Final) => 3,
        _ => 0,
    }
}

/// A region of the roster: SCB county code and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Region {
    /// SCB county code, e.g. `03`.
    pub code: String,
    /// Human name, e.g. `Region Uppsala`.
    pub name: String,
}

/// The latest report per (region, mode, channel) an aggregator holds.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    inputs: BTreeMap<(String, Mode, Channel), Input>,
}

/// What [`Latest::offer`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// It is now the latest of its region, mode and channel.
    Newer,
    /// An equal or newer report is already held; nothing changed.
    NotNewer,
}

impl Latest {
    /// Takes a report if it is newer than the one held for its region,
    /// mode and channel.
    pub fn offer(&mut self, input: Input) -> Offered {
        let key = (input.report.region_code.clone(), input.mode, input.channel);
        match self.inputs.get(&key) {
            Some(held) if held.order() >= input.order() => Offered::NotNewer,
            _ => {
                self.inputs.insert(key, input);
                Offered::Newer
            }
        }
    }

    /// The input a feed uses for `region`: the newest among those of the
    /// feed's mode, on a channel it may take, at or below its class.
    fn for_feed(&self, feed: &FeedSpec, region: &str) -> Option<&Input> {
        let channels: &[Channel] = match feed.channel {
            Channel::Open => &[Channel::Open],
            Channel::Secure => &[Channel::Open, Channel::Secure],
        };
        channels
            .iter()
            .filter_map(|c| self.inputs.get(&(region.to_owned(), feed.mode, *c)))
            .filter(|i| i.label.class <= feed.max_class)
            .filter(|i| feed.channel == Channel::Secure || i.label.class <= OPEN_LIMIT)
            .max_by_key(|i| (i.order(), i.received_ms))
    }

    /// Reports held, all regions, modes and channels.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

fn permille(available: u32, occupied: u32) -> u32 {
    let total = u64::from(available) + u64::from(occupied);
    (u64::from(available) * 1000)
        .checked_div(total)
        .map_or(0, |p| u32::try_from(p).unwrap_or(1000))
}

/// Available, occupied and with-ventilator beds of `kind`, summed, with free ‰.
fn beds_of(beds: &[pb::BedCapacity], kind: pb::BedType) -> pb::IcuCapacity {
    let mut c = pb::IcuCapacity::default();
    for b in beds.iter().filter(|b| b.r#type == kind as i32) {
        c.available = c.available.saturating_add(b.available);
        c.occupied = c.occupied.saturating_add(b.occupied);
        c.with_ventilator = c.with_ventilator.saturating_add(b.with_ventilator);
    }
    c.free_permille = permille(c.available, c.occupied);
    c
}

fn add_icu(total: &mut pb::IcuCapacity, c: &pb::IcuCapacity) {
    total.available = total.available.saturating_add(c.available);
    total.occupied = total.occupied.saturating_add(c.occupied);
    total.with_ventilator = total.with_ventilator.saturating_add(c.with_ventilator);
    total.free_permille = permille(total.available, total.occupied);
}

fn status(s: Option<i32>) -> i32 {
    s.unwrap_or(pb::ResourceStatus::Unspecified as i32)
}

/// One region's row from its input (or none), at `now_ms`.
fn row(feed: &FeedSpec, region: &Region, input: Option<&Input>, now_ms: i64) -> pb::RegionRow {
    let Some(input) = input else {
        return pb::RegionRow {
            region_code: region.code.clone(),
            region_name: region.name.clone(),
            never_reported: true,
            ..pb::RegionRow::default()
        };
    };
    let r = &input.report;
    let adult = beds_of(&r.beds, pb::BedType::IcuAdult);
    let pediatric = beds_of(&r.beds, pb::BedType::IcuPediatric);
    let neonatal = beds_of(&r.beds, pb::BedType::IcuNeonatal);
    let icu_available = adult
        .available
        .saturating_add(pediatric.available)
        .saturating_add(neonatal.available);
    let icu_occupied = adult
        .occupied
        .saturating_add(pediatric.occupied)
        .saturating_add(neonatal.occupied);
    let general = beds_of(&r.beds, pb::BedType::MedicalSurgical);
    pb::RegionRow {
        region_code: region.code.clone(),
        region_name: region.name.clone(),
        preparedness_level: r.preparedness_level,
        icu_available,
        icu_occupied,
        icu_free_permille: permille(icu_available, icu_occupied),
        critical_supplies: r
            .supplies
            .iter()
            .filter(|s| s.status == pb::ResourceStatus::Critical as i32)
            .map(|s| s.code.clone())
            .collect(),
        last_report_unix_ms: input.received_ms,
        stale: now_ms.saturating_sub(input.received_ms) > feed.stale_after_ms,
        overdue: r.next_report_due_unix_ms > 0 && now_ms > r.next_report_due_unix_ms,
        icu_adult: Some(adult),
        icu_pediatric: Some(pediatric),
        icu_neonatal: Some(neonatal),
        beds_available: general.available,
        beds_occupied: general.occupied,
        transports_status: status(r.transports.as_ref().map(|t| t.status)),
        transports_available_units: r.transports.as_ref().map_or(0, |t| t.available_units),
        planned_care_status: status(r.planned_care.as_ref().map(|p| p.status)),
        postponed_procedures: r.planned_care.as_ref().map_or(0, |p| p.postponed_procedures),
        staffing_status: status(r.staffing.as_ref().map(|s| s.status)),
        staffing_shortfall: r.staffing.as_ref().map_or(0, |s| s.shortfall),
        incidents: u32::try_from(r.incidents.len()).unwrap_or(u32::MAX),
        never_reported: false,
        report_number: r.report_number,
        report_version: r.version,
        next_report_due_unix_ms: r.next_report_due_unix_ms,
    }
}

fn source(input: &Input) -> pb::RollupSource {
    pb::RollupSource {
        region_code: input.report.region_code.clone(),
        report_id: input.id.as_bytes().to_vec(),
        envelope_sha256: input.envelope_sha256.to_vec(),
        received_unix_ms: input.received_ms,
        label: Some(input.label.to_proto()),
        report_number: input.report.report_number,
        report_version: input.report.version,
    }
}

/// The high-water mark of `labels`: the highest class and every caveat
/// (sorted, once). [`Class::Open`] with no caveats when there are none.
#[must_use]
pub fn high_water<'a>(labels: impl IntoIterator<Item = &'a Label>) -> Label {
    let mut out = Label::new(Class::Open);
    for l in labels {
        out.class = out.class.max(l.class);
        out.caveats.extend(l.caveats.iter().cloned());
    }
    out.caveats.sort_unstable();
    out.caveats.dedup();
    out
}

/// The national totals over `rows`.
fn totals(rows: &[pb::RegionRow]) -> pb::NationalTotals {
    let mut totals = pb::NationalTotals::default();
    let (mut adult, mut pediatric, mut neonatal) = Default::default();
    let none = pb::IcuCapacity::default();
    let critical = pb::ResourceStatus::Critical as i32;
    for row in rows {
        totals.regions_total += 1;
        if row.never_reported {
            totals.regions_never_reported += 1;
            continue;
        }
        totals.regions_reporting += 1;
        totals.regions_stale += u32::from(row.stale);
        totals.regions_overdue += u32::from(row.overdue);
        totals.regions_critical += u32::from(
            [
                row.staffing_status,
                row.transports_status,
                row.planned_care_status,
            ]
            .contains(&critical),
        );
        add_icu(&mut adult, row.icu_adult.as_ref().unwrap_or(&none));
        add_icu(&mut pediatric, row.icu_pediatric.as_ref().unwrap_or(&none));
        add_icu(&mut neonatal, row.icu_neonatal.as_ref().unwrap_or(&none));
        totals.beds_available = totals.beds_available.saturating_add(row.beds_available);
        totals.beds_occupied = totals.beds_occupied.saturating_add(row.beds_occupied);
        totals.transports_available_units = totals
            .transports_available_units
            .saturating_add(row.transports_available_units);
        totals.postponed_procedures = totals
            .postponed_procedures
            .saturating_add(row.postponed_procedures);
        totals.incidents = totals.incidents.saturating_add(row.incidents);
    }
    totals.icu_available = adult
        .available
        .saturating_add(pediatric.available)
        .saturating_add(neonatal.available);
    totals.icu_occupied = adult
        .occupied
        .saturating_add(pediatric.occupied)
        .saturating_add(neonatal.occupied);
    totals.icu_free_permille = permille(totals.icu_available, totals.icu_occupied);
    totals.icu_adult = Some(adult);
    totals.icu_pediatric = Some(pediatric);
    totals.icu_neonatal = Some(neonatal);
    totals
}

/// Builds the feed's roll-up at `now_ms` over `regions` (the roster's
/// regions; the feed's own filter applies on top).
#[must_use]
pub fn rollup(
    feed: &FeedSpec,
    latest: &Latest,
    regions: &[Region],
    aggregator: &str,
    now_ms: i64,
    sequence: u64,
) -> pb::NationalRollup {
    let mut rows = Vec::new();
    let mut used = Vec::new();
    let mut sorted: Vec<&Region> = regions
        .iter()
        .filter(|r| feed.regions.is_empty() || feed.regions.contains(&r.code))
        .collect();
    sorted.sort();
    sorted.dedup_by(|a, b| a.code == b.code);
    for region in sorted {
        let input = latest.for_feed(feed, &region.code);
        rows.push(row(feed, region, input, now_ms));
        if let Some(i) = input {
            used.push(i);
        }
    }
    let totals = totals(&rows);
    let label = high_water(used.iter().map(|i| &i.label));
    let withheld = match feed.channel {
        Channel::Open => Vec::new(),
        Channel::Secure => used
            .iter()
            .filter(|i| i.label.class > OPEN_LIMIT)
            .map(|i| source(i))
            .collect(),
    };
    pb::NationalRollup {
        feed: feed.name.clone(),
        period: None,
        aggregator: aggregator.to_owned(),
        regions: rows,
        totals: Some(totals),
        sources: used.iter().map(|i| source(i)).collect(),
        label: Some(label.to_proto()),
        withheld,
        mode: feed.mode.to_proto() as i32,
        built_unix_ms: now_ms,
        sequence,
    }
}

/// Whether two roll-ups say the same (everything but when they were built
/// and their sequence): an aggregator publishes only a change.
#[must_use]
pub fn same_content(a: &pb::NationalRollup, b: &pb::NationalRollup) -> bool {
    let strip = |r: &pb::NationalRollup| pb::NationalRollup {
        built_unix_ms: 0,
        sequence: 0,
        ..r.clone()
    };
    strip(a) == strip(b)
}

/// The first moment after `rollup` was built at which a row's `stale` or
/// `overdue` flips with no new report; `None` if none ever will.
#[must_use]
pub fn next_flip(feed: &FeedSpec, rollup: &pb::NationalRollup) -> Option<i64> {
    rollup
        .regions
        .iter()
        .filter(|r| !r.never_reported)
        .flat_map(|r| {
            let stale = (!r.stale).then(|| {
                r.last_report_unix_ms
                    .saturating_add(feed.stale_after_ms)
                    .saturating_add(1)
            });
            let overdue = (!r.overdue && r.next_report_due_unix_ms > 0)
                .then(|| r.next_report_due_unix_ms.saturating_add(1));
            [stale, overdue]
        })
        .flatten()
        .filter(|t| *t > rollup.built_unix_ms)
        .min()
}

/// Checks one source of `rollup` against the report it names (already
/// verified: signature, digest): the source says that report's region,
/// number and version, and the region's row holds exactly the figures the
/// report gives. Returns what does not match, empty if all does.
#[must_use]
pub fn check_source(
    rollup: &pb::NationalRollup,
    source: &pb::RollupSource,
    report: &pb::SituationReport,
) -> Vec<String> {
    let mut problems = Vec::new();
    if source.region_code != report.region_code {
        problems.push(format!(
            "source says region {} but the report is from region {}",
            source.region_code, report.region_code
        ));
    }
    if source.report_number != report.report_number || source.report_version != report.version {
        problems.push(format!(
            "source says report {} version {} but the report is number {} version {}",
            source.report_number, source.report_version, report.report_number, report.version
        ));
    }
    let Some(got) = rollup
        .regions
        .iter()
        .find(|r| r.region_code == source.region_code)
    else {
        problems.push(format!("no row for region {}", source.region_code));
        return problems;
    };
    // The row as the report makes it; the flags depend on the feed's limit
    // and the time, so they are taken as given.
    let feed = FeedSpec {
        name: rollup.feed.clone(),
        channel: Channel::Open,
        mode: Mode::Actual,
        max_class: Class::TopSecret,
        stale_after_ms: i64::MAX,
        regions: Vec::new(),
    };
    let input = Input {
        id: MessageId::new_v7(0, [0; 10]),
        envelope_sha256: [0; 32],
        received_ms: source.received_unix_ms,
        label: Label::new(Class::Open),
        mode: Mode::Actual,
        channel: Channel::Open,
        report: report.clone(),
    };
    let region = Region {
        code: got.region_code.clone(),
        name: got.region_name.clone(),
    };
    let mut want = row(&feed, &region, Some(&input), rollup.built_unix_ms);
    want.stale = got.stale;
    want.overdue = got.overdue;
    if want != *got {
        problems.push(format!(
            "the row of region {} does not hold the report's figures",
            source.region_code
        ));
    }
    problems
}

/// The roll-up as a subscriber that asked for `regions` sees it (empty:
/// all). Totals are recomputed over the rows kept; sources and `withheld`
/// keep only those of the rows kept.
#[must_use]
pub fn restrict(rollup: &pb::NationalRollup, regions: &[String]) -> pb::NationalRollup {
    if regions.is_empty() {
        return rollup.clone();
    }
    // A set: linear in rows, whatever the filter's length.
    let wanted: std::collections::BTreeSet<&str> = regions.iter().map(String::as_str).collect();
    let keep = |code: &str| wanted.contains(code);
    let mut out = rollup.clone();
    out.regions.retain(|r| keep(&r.region_code));
    out.sources.retain(|s| keep(&s.region_code));
    out.withheld.retain(|s| keep(&s.region_code));
    out.totals = Some(totals(&out.regions));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn regions() -> Vec<Region> {
        [
            ("03", "Region Uppsala"),
            ("01", "Region Stockholm"),
            ("09", "Region Gotland"),
        ]
        .iter()
        .map(|(c, n)| Region {
            code: (*c).into(),
            name: (*n).into(),
        })
        .collect()
    }

    fn feed(channel: Channel, max_class: Class) -> FeedSpec {
        FeedSpec {
            name: "national-icu".into(),
            channel,
            mode: Mode::Actual,
            max_class,
            stale_after_ms: 6 * HOUR,
            regions: Vec::new(),
        }
    }

    fn report(region: &str, number: u32, version: pb::ReportVersion, icu_free: u32) -> pb::SituationReport {
        pb::SituationReport {
            region_code: region.into(),
            report_number: number,
            version: version as i32,
            next_report_due_unix_ms: NOW + 4 * HOUR,
            preparedness_level: pb::PreparednessLevel::StaffAlert as i32,
            beds: vec![
                pb::BedCapacity {
                    r#type: pb::BedType::IcuAdult as i32,
                    available: icu_free,
                    occupied: 10,
                    with_ventilator: icu_free / 2,
                    ..pb::BedCapacity::default()
                },
                pb::BedCapacity {
                    r#type: pb::BedType::IcuNeonatal as i32,
                    available: 2,
                    occupied: 3,
                    ..pb::BedCapacity::default()
                },
                pb::BedCapacity {
                    r#type: pb::BedType::MedicalSurgical as i32,
                    available: 40,
                    occupied: 400,
                    ..pb::BedCapacity::default()
                },
            ],
            supplies: vec![pb::Supply {
                code: "PPE-FFP3".into(),
                status: pb::ResourceStatus::Critical as i32,
                ..pb::Supply::default()
            }],
            transports: Some(pb::Transports {
                status: pb::ResourceStatus::Strained as i32,
                available_units: 7,
            }),
            planned_care: Some(pb::PlannedCare {
                status: pb::ResourceStatus::Critical as i32,
                postponed_procedures: 12,
            }),
            incidents: vec![pb::Incident::default(), pb::Incident::default()],
            ..pb::SituationReport::default()
        }
    }

    /// A region's first report (number 1, INITIAL) received at `NOW`.
    fn first(region: &str, icu_free: u32, class: Class, mode: Mode) -> Input {
        input(
            report(region, 1, pb::ReportVersion::Initial, icu_free),
            class,
            mode,
            NOW,
        )
    }

    fn input(report: pb::SituationReport, class: Class, mode: Mode, received_ms: i64) -> Input {
        let channel = if class.is_security_classified() {
            Channel::Secure
        } else {
            Channel::Open
        };
        let n = u8::try_from(report.report_number % 256).unwrap_or(0);
        Input {
            id: MessageId::new_v7(received_ms, [n; 10]),
            envelope_sha256: [n; 32],
            received_ms,
            label: Label::new(class),
            mode,
            channel,
            report,
        }
    }

    #[test]
    fn a_late_older_report_never_replaces_a_newer_one_and_final_closes_the_period() {
        let mut l = Latest::default();
        let v = |n, ver| input(report("03", n, ver, 5), Class::Sensitive, Mode::Actual, NOW);
        assert_eq!(l.offer(v(2, pb::ReportVersion::Initial)), Offered::Newer);
        assert_eq!(
            l.offer(v(1, pb::ReportVersion::Final)),
            Offered::NotNewer,
            "older number"
        );
        assert_eq!(
            l.offer(v(2, pb::ReportVersion::Initial)),
            Offered::NotNewer,
            "the same again"
        );
        assert_eq!(l.offer(v(2, pb::ReportVersion::Update)), Offered::Newer);
        assert_eq!(l.offer(v(2, pb::ReportVersion::Final)), Offered::Newer);
        assert_eq!(
            l.offer(v(2, pb::ReportVersion::Update)),
            Offered::NotNewer,
            "after FINAL"
        );
        assert_eq!(
            l.offer(v(3, pb::ReportVersion::Initial)),
            Offered::Newer,
            "the next period"
        );
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn every_roster_region_has_a_row_and_the_figures_are_the_reports() {
        let mut l = Latest::default();
        l.offer(first("03", 5, Class::Sensitive, Mode::Actual));
        let r = rollup(
            &feed(Channel::Open, Class::Sensitive),
            &l,
            &regions(),
            "nspl-hub",
            NOW,
            7,
        );
        let codes: Vec<&str> = r.regions.iter().map(|r| r.region_code.as_str()).collect();
        assert_eq!(codes, ["01", "03", "09"]);
        let up = &r.regions[1];
        assert_eq!((up.icu_available, up.icu_occupied), (7, 13));
        assert_eq!(up.icu_free_permille, 7 * 1000 / 20);
        let adult = up.icu_adult.as_ref().expect("adult");
        assert_eq!(
            (
                adult.available,
                adult.occupied,
                adult.with_ventilator,
                adult.free_permille
            ),
            (5, 10, 2, 333)
        );
        assert_eq!((up.beds_available, up.beds_occupied), (40, 400));
        assert_eq!(up.transports_available_units, 7);
        assert_eq!(up.postponed_procedures, 12);
        assert_eq!(up.incidents, 2);
        assert_eq!(up.critical_supplies, ["PPE-FFP3"]);
        assert_eq!(up.region_name, "Region Uppsala");
        assert!(!up.never_reported && !up.stale && !up.overdue);
        for never in [&r.regions[0], &r.regions[2]] {
            assert!(never.never_reported, "{never:?}");
            assert_eq!(never.icu_available, 0);
        }
        let t = r.totals.as_ref().expect("totals");
        assert_eq!(
            (
                t.regions_total,
                t.regions_reporting,
                t.regions_never_reported,
                t.regions_critical
            ),
            (3, 1, 2, 1)
        );
        assert_eq!((t.icu_available, t.icu_occupied, t.beds_available), (7, 13, 40));
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.sources[0].region_code, "03");
        assert_eq!(r.sequence, 7);
        assert_eq!(r.aggregator, "nspl-hub");
    }

    #[test]
    fn stale_and_overdue_flip_at_their_times() {
        let mut l = Latest::default();
        l.offer(first("03", 5, Class::Open, Mode::Actual));
        let f = feed(Channel::Open, Class::Sensitive);
        let at = |t| {
            let r = rollup(&f, &l, &regions(), "hub", t, 1);
            let row = r
                .regions
                .iter()
                .find(|r| r.region_code == "03")
                .cloned()
                .expect("row");
            (row.overdue, row.stale)
        };
        assert_eq!(
            at(NOW + 4 * HOUR),
            (false, false),
            "due at exactly 4 h: not yet overdue"
        );
        assert_eq!(at(NOW + 4 * HOUR + 1), (true, false));
        assert_eq!(
            at(NOW + 6 * HOUR),
            (true, false),
            "stale limit 6 h: not yet stale"
        );
        assert_eq!(at(NOW + 6 * HOUR + 1), (true, true));
        let r = rollup(&f, &l, &regions(), "hub", NOW + 7 * HOUR, 1);
        let t = r.totals.expect("totals");
        assert_eq!((t.regions_overdue, t.regions_stale), (1, 1));
    }

    #[test]
    fn next_flip_is_the_first_moment_a_flag_changes_and_only_a_change_is_new_content() {
        let mut l = Latest::default();
        l.offer(first("03", 5, Class::Open, Mode::Actual));
        let f = feed(Channel::Open, Class::Sensitive);
        let fresh = rollup(&f, &l, &regions(), "hub", NOW, 1);
        assert_eq!(next_flip(&f, &fresh), Some(NOW + 4 * HOUR + 1), "overdue first");
        let overdue = rollup(&f, &l, &regions(), "hub", NOW + 4 * HOUR + 1, 2);
        assert_eq!(next_flip(&f, &overdue), Some(NOW + 6 * HOUR + 1), "then stale");
        let both = rollup(&f, &l, &regions(), "hub", NOW + 7 * HOUR, 3);
        assert_eq!(next_flip(&f, &both), None, "nothing more flips without a report");
        assert!(!same_content(&fresh, &overdue), "a flag flipped");
        let later = rollup(&f, &l, &regions(), "hub", NOW + HOUR, 9);
        assert!(same_content(&fresh, &later), "built later, same content");
        assert_eq!(
            next_flip(&f, &rollup(&f, &Latest::default(), &regions(), "hub", NOW, 1)),
            None
        );
    }

    #[test]
    fn check_source_finds_a_changed_figure_and_a_wrong_source() {
        let mut l = Latest::default();
        let r03 = report("03", 4, pb::ReportVersion::Update, 5);
        l.offer(input(r03.clone(), Class::Open, Mode::Actual, NOW));
        let f = feed(Channel::Open, Class::Sensitive);
        let honest = rollup(&f, &l, &regions(), "hub", NOW + 5 * HOUR, 1);
        let src = honest.sources[0].clone();
        assert_eq!(check_source(&honest, &src, &r03), Vec::<String>::new());

        let mut changed = honest.clone();
        for row in &mut changed.regions {
            if row.region_code == "03" {
                row.icu_available += 1;
            }
        }
        let problems = check_source(&changed, &src, &r03);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("does not hold the report's figures"),
            "{problems:?}"
        );

        let mut wrong = src.clone();
        wrong.report_number = 3;
        let problems = check_source(&honest, &wrong, &r03);
        assert!(problems.iter().any(|p| p.contains("report 3")), "{problems:?}");
    }

    #[test]
    fn modes_never_mix() {
        let mut l = Latest::default();
        l.offer(first("03", 5, Class::Open, Mode::Exercise));
        l.offer(first("01", 9, Class::Open, Mode::Actual));
        let actual = rollup(
            &feed(Channel::Open, Class::Sensitive),
            &l,
            &regions(),
            "hub",
            NOW,
            1,
        );
        assert!(
            actual
                .regions
                .iter()
                .find(|r| r.region_code == "03")
                .expect("row")
                .never_reported
        );
        assert_eq!(actual.sources.len(), 1);
        let mut ex = feed(Channel::Open, Class::Sensitive);
        ex.mode = Mode::Exercise;
        let exercise = rollup(&ex, &l, &regions(), "hub", NOW, 1);
        assert!(
            exercise
                .regions
                .iter()
                .find(|r| r.region_code == "01")
                .expect("row")
                .never_reported
        );
        assert_eq!(exercise.sources.len(), 1);
        assert_eq!(exercise.mode, pb::Mode::Exercise as i32);
    }

    #[test]
    fn an_open_feed_says_nothing_of_classified_inputs_and_a_secure_feed_withholds_them() {
        let mut l = Latest::default();
        // Uppsala: an open report 1, then a classified report 2 on the secure channel.
        l.offer(first("03", 5, Class::Sensitive, Mode::Actual));
        let mut secret = input(
            report("03", 2, pb::ReportVersion::Initial, 1),
            Class::Secret,
            Mode::Actual,
            NOW + 1,
        );
        secret.label.caveats = vec!["SE-ONLY".into()];
        let secret_id = secret.id;
        l.offer(secret);
        l.offer(first("01", 9, Class::Open, Mode::Actual));

        let open = rollup(
            &feed(Channel::Open, Class::Sensitive),
            &l,
            &regions(),
            "hub",
            NOW + 2,
            1,
        );
        let up = open.regions.iter().find(|r| r.region_code == "03").expect("row");
        assert_eq!(
            (up.report_number, up.icu_available),
            (1, 7),
            "the open report, not the classified one"
        );
        assert!(open.withheld.is_empty());
        let label = Label::from_proto(open.label.as_ref()).expect("label");
        assert_eq!(label, Label::new(Class::Sensitive));
        let wire = prost::Message::encode_to_vec(&open);
        let needle = secret_id.as_bytes();
        assert!(
            !wire.windows(needle.len()).any(|w| w == needle),
            "the classified id is not in the open roll-up"
        );
        assert!(!wire.windows(7).any(|w| w == b"SE-ONLY"));

        let secure = rollup(
            &feed(Channel::Secure, Class::Secret),
            &l,
            &regions(),
            "hub",
            NOW + 2,
            1,
        );
        let up = secure
            .regions
            .iter()
            .find(|r| r.region_code == "03")
            .expect("row");
        assert_eq!(
            (up.report_number, up.icu_available),
            (2, 3),
            "the newer classified report"
        );
        let label = Label::from_proto(secure.label.as_ref()).expect("label");
        assert_eq!(label.class, Class::Secret);
        assert_eq!(label.caveats, ["SE-ONLY"]);
        assert_eq!(secure.withheld.len(), 1);
        assert_eq!(secure.withheld[0].report_id, secret_id.as_bytes().to_vec());
        assert_eq!(secure.sources.len(), 2);

        // A secure feed capped below the input's class takes the open one.
        let capped = rollup(
            &feed(Channel::Secure, Class::Restricted),
            &l,
            &regions(),
            "hub",
            NOW + 2,
            1,
        );
        let up = capped
            .regions
            .iter()
            .find(|r| r.region_code == "03")
            .expect("row");
        assert_eq!(up.report_number, 1);
        assert!(capped.withheld.is_empty());
    }

    #[test]
    fn a_region_filter_keeps_its_rows_and_sources_only() {
        let mut l = Latest::default();
        l.offer(first("03", 5, Class::Open, Mode::Actual));
        l.offer(first("01", 9, Class::Open, Mode::Actual));
        let mut f = feed(Channel::Open, Class::Sensitive);
        f.regions = vec!["03".into(), "09".into()];
        let r = rollup(&f, &l, &regions(), "hub", NOW, 1);
        let codes: Vec<&str> = r.regions.iter().map(|r| r.region_code.as_str()).collect();
        assert_eq!(codes, ["03", "09"]);
        assert_eq!(r.totals.as_ref().expect("totals").regions_total, 2);
        let all = rollup(
            &feed(Channel::Open, Class::Sensitive),
            &l,
            &regions(),
            "hub",
            NOW,
            1,
        );
        let only = restrict(&all, &["01".into()]);
        assert_eq!(only.regions.len(), 1);
        assert_eq!(only.sources.len(), 1);
        assert_eq!(only.sources[0].region_code, "01");
        let t = only.totals.as_ref().expect("totals");
        assert_eq!(
            (t.regions_total, t.regions_reporting, t.icu_available),
            (1, 1, 11)
        );
    }

    #[test]
    fn the_order_reports_arrive_in_does_not_change_the_rollup() {
        let inputs = [
            first("03", 5, Class::Sensitive, Mode::Actual),
            input(
                report("03", 1, pb::ReportVersion::Final, 6),
                Class::Sensitive,
                Mode::Actual,
                NOW + 1,
            ),
            input(
                report("03", 2, pb::ReportVersion::Initial, 7),
                Class::Sensitive,
                Mode::Actual,
                NOW + 2,
            ),
            input(
                report("01", 4, pb::ReportVersion::Update, 8),
                Class::Open,
                Mode::Actual,
                NOW + 3,
            ),
        ];
        let f = feed(Channel::Open, Class::Sensitive);
        let mut first = None;
        // Every order of the four (Heap's algorithm).
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        let mut c = vec![0; order.len()];
        let mut check = |order: &[usize]| {
            let mut l = Latest::default();
            for &i in order {
                l.offer(inputs[i].clone());
            }
            let r = rollup(&f, &l, &regions(), "hub", NOW + 10, 1);
            match &first {
                None => first = Some(r),
                Some(want) => assert_eq!(&r, want, "order {order:?}"),
            }
        };
        check(&order);
        let mut i = 0;
        while i < order.len() {
            if c[i] < i {
                order.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                check(&order);
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        let r = first.expect("checked");
        let up = r.regions.iter().find(|r| r.region_code == "03").expect("row");
        assert_eq!(
            (up.report_number, up.icu_adult.as_ref().expect("adult").available),
            (2, 7)
        );
    }

    #[test]
    fn high_water_takes_the_highest_class_and_every_caveat_once() {
        let mut a = Label::new(Class::Restricted);
        a.caveats = vec!["B".into(), "A".into()];
        let mut b = Label::new(Class::Sensitive);
        b.caveats = vec!["A".into(), "C".into()];
        let hw = high_water([&a, &b]);
        assert_eq!(hw.class, Class::Restricted);
        assert_eq!(hw.caveats, ["A", "B", "C"]);
        assert_eq!(high_water([]), Label::new(Class::Open));
    }
}
