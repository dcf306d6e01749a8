//! `sitrep demo --national [--once]`: the national network of
//! `deploy/demo/national.toml` (all 21 regions, the NSPL hub, Socialstyrelsen
//! and MSB) in this process, on loopback, with data in a temp dir.
//!
//! The hub builds two feeds, `national-open` (SENSITIVE at most) and
//! `national-secure` (up to SECRET). Socialstyrelsen subscribes to both and
//! MSB to the open one, through their HTTP APIs as a user would. Every region
//! then sends one ACTUAL situation report to the hub (synthetic figures,
//! varied per region; Region Norrbotten's next report is already overdue),
//! and Region Uppsala one classified report that travels on `secure` and
//! only ever shows in `national-secure`. The national table is printed as
//! it fills at Socialstyrelsen, from its API.
//!
//! `--once` exits 0 only when both authorities hold a `national-open`
//! roll-up with all 21 regions reporting and Socialstyrelsen's
//! `national-secure` roll-up holds the classified input.
//!
//! Not here: starting and wiring the nodes (shared with `demo.rs`), the
//! table (`table.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use sitrep_core::feed::FeedSpec;
use sitrep_core::{Channel, Class, Label, Mode, NodeId, Precedence};
use sitrep_devpki::Topology;
use sitrep_node::config::Role;
use sitrep_node::{Content, Node, Submission};
use sitrep_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::demo;
use crate::table::{number, print_table};

/// The national topology, built in: the demo needs nothing but this binary.
const TOPOLOGY: &str = include_str!("../../../deploy/demo/national.toml");
/// 90 s for the subscriptions to be answered and every report to be in
/// both authorities' roll-ups.
const DEADLINE: Duration = Duration::from_secs(90);
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;
const HUB: &str = "nspl-hub";
const SOCIALSTYRELSEN: &str = "socialstyrelsen";
const MSB: &str = "msb";
const OPEN_FEED: &str = "national-open";
const SECURE_FEED: &str = "national-secure";
/// The region that sends the classified report (cleared SECRET, on `secure`).
const CLASSIFIED_REGION: &str = "03";
/// The region whose next report was due half an hour ago.
const OVERDUE_REGION: &str = "25";
/// Sweden's regions: every row of a complete roll-up.
const REGIONS: usize = sitrep_core::report::COUNTY_CODES.len();

/// What varies per region: size and its main hospital.
struct Profile {
    code: &'static str,
    /// Inhabitants, thousands (rounded).
    population_k: u32,
    /// Has a university hospital (with paediatric intensive care).
    university: bool,
    hospital_id: &'static str,
    hospital: &'static str,
}

const fn p(
    code: &'static str,
    population_k: u32,
    university: bool,
    hospital_id: &'static str,
    hospital: &'static str,
) -> Profile {
    Profile {
        code,
        population_k,
        university,
        hospital_id,
        hospital,
    }
}

const PROFILES: [Profile; REGIONS] = [
    p("01", 2450, true, "SE-01-KS", "Karolinska universitetssjukhuset"),
    p("03", 400, true, "SE-03-AKADEMISKA", "Akademiska sjukhuset"),
    p("04", 300, false, "SE-04-MALARSJUKHUSET", "Mälarsjukhuset"),
    p("05", 470, true, "SE-05-US", "Universitetssjukhuset i Linköping"),
    p("06", 370, false, "SE-06-RYHOV", "Länssjukhuset Ryhov"),
    p("07", 205, false, "SE-07-CLV", "Centrallasarettet Växjö"),
    p("08", 247, false, "SE-08-LSK", "Länssjukhuset i Kalmar"),
    p("09", 61, false, "SE-09-VISBY", "Visby lasarett"),
    p("10", 157, false, "SE-10-BLS", "Blekingesjukhuset"),
    p("12", 1420, true, "SE-12-SUS", "Skånes universitetssjukhus"),
    p("13", 345, false, "SE-13-HSH", "Hallands sjukhus Halmstad"),
    p("14", 1750, true, "SE-14-SU", "Sahlgrenska universitetssjukhuset"),
    p("17", 284, false, "SE-17-CSK", "Centralsjukhuset i Karlstad"),
    p("18", 306, true, "SE-18-USO", "Universitetssjukhuset Örebro"),
    p("19", 280, false, "SE-19-VS", "Västmanlands sjukhus Västerås"),
    p("20", 288, false, "SE-20-FALU", "Falu lasarett"),
    p("21", 288, false, "SE-21-GAVLE", "Gävle sjukhus"),
    p("22", 243, false, "SE-22-SUNDSVALL", "Sundsvalls sjukhus"),
    p("23", 132, false, "SE-23-OSTERSUND", "Östersunds sjukhus"),
    p("24", 275, true, "SE-24-NUS", "Norrlands universitetssjukhus"),
    p("25", 250, false, "SE-25-SUNDERBY", "Sunderby sjukhus"),
];

/// One bed type: `occupied` of `baseline`, surge beds opened (the 24 h
/// surge) when `open_surge`; what is left is available.
fn beds(
    kind: pb::BedType,
    baseline: u32,
    occupied: u32,
    open_surge: bool,
    ventilated: bool,
) -> pb::BedCapacity {
    let surge_72h = baseline / 3 + 2;
    let surge_24h = surge_72h / 2;
    // Never more occupied than the 72 h capacity (validate's rule).
    let occupied = occupied.min(baseline + surge_72h);
    let capacity = if open_surge {
        baseline + surge_24h
    } else {
        baseline
    };
    let available = capacity.saturating_sub(occupied);
    pb::BedCapacity {
        r#type: kind as i32,
        available,
        occupied,
        baseline,
        surge_24h,
        surge_72h,
        with_ventilator: if ventilated { available * 3 / 4 } else { 0 },
    }
}

/// Region `p`'s report (`name` from the roster), at `now`: figures derived
/// from its size and county code, so every run shows the same picture.
fn report(p: &Profile, name: &str, now: i64) -> anyhow::Result<pb::SituationReport> {
    use pb::ResourceStatus::{Adequate, Critical, Strained};
    let c: u32 = p
        .code
        .parse()
        .with_context(|| format!("county code {}", p.code))?;
    let gotland = p.code == "09";
    // 0..=22, spread over the regions: how hard each is pressed.
    let load = (c * 37) % 23;
    // ICU occupancy in % of the baseline; Gotland is cut off from the mainland.
    let icu_pct = if gotland { 125 } else { 82 + load };
    let pop = p.population_k;
    let mut r = sitrep_core::report::example_uppsala(now);
    r.region_code = p.code.into();
    r.reporting_unit = format!("{name}, regional särskild sjukvårdsledning (RSSL)");
    r.report_number = 8 + c % 9;
    r.next_report_due_unix_ms = if p.code == OVERDUE_REGION {
        now - 30 * MINUTE
    } else {
        now + 4 * HOUR
    };
    r.preparedness_level = match icu_pct {
        _ if gotland => pb::PreparednessLevel::Disaster,
        100.. => pb::PreparednessLevel::Reinforced,
        95.. => pb::PreparednessLevel::StaffAlert,
        _ => pb::PreparednessLevel::Normal,
    } as i32;

    let icu_baseline = (pop * 40 / 1000 * if p.university { 12 } else { 10 } / 10).max(4);
    let mut bed_list = vec![beds(
        pb::BedType::IcuAdult,
        icu_baseline,
        icu_baseline * icu_pct / 100,
        icu_pct >= 95,
        true,
    )];
    if p.university {
        let b = (pop / 200).max(4);
        bed_list.push(beds(
            pb::BedType::IcuPediatric,
            b,
            b * (60 + load) / 100,
            false,
            true,
        ));
    }
    let neonatal = (pop / 70).max(2);
    bed_list.push(beds(
        pb::BedType::IcuNeonatal,
        neonatal,
        neonatal * (70 + load) / 100,
        false,
        true,
    ));
    let general = pop * 2;
    bed_list.push(beds(
        pb::BedType::MedicalSurgical,
        general,
        general * (90 + load / 3) / 100,
        icu_pct >= 95,
        false,
    ));
    let icu_free = bed_list[0].available;
    r.beds = bed_list;

    let pressed = |critical_at: u32, strained_at: u32| {
        if icu_pct >= critical_at {
            Critical
        } else if icu_pct >= strained_at {
            Strained
        } else {
            Adequate
        }
    };
    r.facilities = vec![pb::Facility {
        id: p.hospital_id.into(),
        name: p.hospital.into(),
        status: pressed(103, 95) as i32,
    }];
    let ffp3_days = 5 + (c * 11) % 20;
    let propofol_days = 2 + (c * 5) % 12;
    r.supplies = vec![
        pb::Supply {
            code: "PPE-FFP3".into(),
            name: "Andningsskydd FFP3".into(),
            on_hand: pop * 30,
            days_of_supply: ffp3_days,
            status: if ffp3_days < 7 { Strained } else { Adequate } as i32,
        },
        pb::Supply {
            code: "N01AX10".into(),
            name: "Propofol".into(),
            on_hand: pop * 2,
            days_of_supply: propofol_days,
            status: match propofol_days {
                ..=3 => Critical,
                4..=6 => Strained,
                _ => Adequate,
            } as i32,
        },
    ];
    r.staffing = Some(pb::Staffing {
        status: pressed(100, 95) as i32,
        shortfall: pop / 20 * load / 10,
    });
    r.transports = Some(if gotland {
        pb::Transports {
            status: Critical as i32,
            available_units: 1,
        }
    } else {
        pb::Transports {
            status: if load >= 18 { Strained } else { Adequate } as i32,
            available_units: (pop / 25).max(2),
        }
    });
    let planned = pressed(100, 95);
    r.planned_care = Some(pb::PlannedCare {
        status: planned as i32,
        postponed_procedures: if planned == Adequate {
            0
        } else {
            pop * (icu_pct - 90) / 10
        },
    });
    r.incidents = if gotland {
        vec![pb::Incident {
            kind: "TRANSPORT_DISRUPTION".into(),
            location: "Visby hamn".into(),
            severity: Critical as i32,
            casualties: 0,
        }]
    } else {
        Vec::new()
    };
    r.requests = if icu_free <= 1 {
        vec![pb::ResourceRequest {
            resource: "ICU_ADULT beds".into(),
            quantity: 2 + load / 5,
            needed_by_unix_ms: now + 24 * HOUR,
        }]
    } else {
        Vec::new()
    };
    r.assessment = match pb::PreparednessLevel::try_from(r.preparedness_level) {
        Ok(pb::PreparednessLevel::Disaster) => {
            "Färjetrafiken inställd; IVA fullt; behov av flygtransport till fastlandet."
        }
        Ok(pb::PreparednessLevel::Reinforced) => {
            "IVA-beläggningen över basnivå; förstärkningsläge, extra platser öppnade, planerad vård skjuts upp."
        }
        Ok(pb::PreparednessLevel::StaffAlert) => "Ansträngt men hanterbart läge på IVA; stabsläge.",
        _ => "Läget stabilt; kapacitet att ta emot patienter från andra regioner.",
    }
    .into();
    r.action_plan = if icu_free <= 1 {
        "Begär avlastning via NSPL; öppnar reservplatser inom 24 h.".into()
    } else {
        "Fortsatt bevakning; nästa rapport enligt plan.".into()
    };
    r.prepared_by = format!("Tjänsteman i beredskap (TiB), {name}");
    r.approved_by = "Regional särskild sjukvårdsledare".into();
    sitrep_core::report::validate(&r).map_err(|errors| {
        let errors: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.problem))
            .collect();
        anyhow!("{name}'s report is not valid: {}", errors.join("; "))
    })?;
    Ok(r)
}

/// The hub's feeds.
fn feeds() -> Vec<FeedSpec> {
    vec![
        FeedSpec::national(OPEN_FEED, Channel::Open, Mode::Actual, Class::Sensitive),
        FeedSpec::national(SECURE_FEED, Channel::Secure, Mode::Actual, Class::Secret),
    ]
}

pub(crate) fn run(once: bool) -> anyhow::Result<()> {
    demo::init_tracing()?;
    let dir = tempfile::Builder::new()
        .prefix("sitrep-national-")
        .tempdir()
        .context("temp dir")?;
    let topology = demo::topology(TOPOLOGY, "built-in national topology", once)?;
    let pki = dir.path().join("pki");
    sitrep_devpki::generate(&topology, &pki)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("async runtime")?;
    runtime.block_on(run_network(&topology, &pki, once))
}

async fn run_network(topology: &Topology, pki: &Path, once: bool) -> anyhow::Result<()> {
    let nodes = demo::start_nodes(topology, pki, |id, config| {
        if id == HUB {
            config.feeds = feeds();
            config.limits.feed_min_interval = Duration::from_millis(200);
        }
    })
    .await?;
    println!(
        "sitrep demo --national: {} nodes on loopback (21 regions, {HUB}, {SOCIALSTYRELSEN}, {MSB}); \
         data and tokens in {}",
        nodes.len(),
        pki.display()
    );
    for id in [HUB, SOCIALSTYRELSEN, MSB] {
        println!("  {id:<16} API {}", demo::api_url(&nodes, id));
    }
    let mut tasks = tokio::task::JoinSet::new();
    let changed = demo::forward_changes(&nodes, &mut tasks);
    let result = scenario(topology, &nodes, pki, changed).await;
    if !once && result.is_ok() {
        print_walkthrough(&nodes, pki);
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    tasks.abort_all();
    demo::shutdown_all(nodes).await;
    result
}

/// How to look at the roll-ups while the network runs.
fn print_walkthrough(nodes: &BTreeMap<String, Node>, pki: &Path) {
    let ss = demo::api_url(nodes, SOCIALSTYRELSEN);
    let ss_token = demo::token(pki, SOCIALSTYRELSEN, Role::Reader);
    let msb = demo::api_url(nodes, MSB);
    let msb_token = demo::token(pki, MSB, Role::Reader);
    let curl = |token: &str| format!("curl -H \"Authorization: Bearer {token}\"");
    demo::print_console(
        nodes,
        pki,
        &[
            ("national picture (reader)", SOCIALSTYRELSEN, Role::Reader),
            ("MSB (reader)", MSB, Role::Reader),
            ("hub operator", HUB, Role::Operator),
        ],
    );
    println!("\nIn another terminal (development tokens of this run):");
    println!("  # Socialstyrelsen: the open and the secure roll-up, and the live updates");
    println!("  {} {ss}/v1/feeds/{OPEN_FEED}", curl(&ss_token));
    println!("  {} {ss}/v1/feeds/{SECURE_FEED}", curl(&ss_token));
    println!("  {} -N {ss}/v1/feeds/{OPEN_FEED}/events", curl(&ss_token));
    println!("  # MSB: the open roll-up, and its subscriptions");
    println!("  {} {msb}/v1/feeds/{OPEN_FEED}", curl(&msb_token));
    println!("  {} {msb}/v1/feeds", curl(&msb_token));
    println!("  # The hub's operator: peers, queues, counters");
    println!(
        "  sitrep status --api {} --token {}",
        demo::api_url(nodes, HUB),
        demo::token(pki, HUB, Role::Operator)
    );
    println!("Ctrl-C to stop.");
}

/// A node's HTTP API with its reader token.
struct Api {
    who: &'static str,
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn of(nodes: &BTreeMap<String, Node>, pki: &Path, who: &'static str) -> anyhow::Result<Self> {
        let base = demo::api_url(nodes, who);
        let token = demo::token(pki, who, Role::Reader);
        if base.is_empty() || token.is_empty() {
            bail!("{who} has no API or no reader token");
        }
        Ok(Self {
            who,
            base,
            token,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
        })
    }

    /// One request (blocking HTTP on a blocking thread): status and JSON body.
    async fn call(&self, post: Option<Value>, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let agent = self.agent.clone();
        let who = self.who;
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u16, Value)> {
            let resp = match post {
                Some(body) => agent.post(&url).header("Authorization", &auth).send_json(&body),
                None => agent.get(&url).header("Authorization", &auth).call(),
            };
            let mut resp = resp.with_context(|| format!("{who}'s API at {url}"))?;
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .read_to_string()
                .with_context(|| format!("{who}'s answer from {url}"))?;
            Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
        })
        .await
        .context("HTTP request task")?
    }

    /// `POST /v1/feeds/{feed}/subscribe`; expects 202.
    async fn subscribe(&self, feed: &str, channel: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .call(
                Some(json!({ "channel": channel })),
                &format!("/v1/feeds/{feed}/subscribe"),
            )
            .await?;
        if status != 202 {
            bail!("{} subscribing to {feed} on {channel}: {status} {body}", self.who);
        }
        Ok(body
            .get("request_id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned())
    }

    /// The latest roll-up of `feed` held here; `None` before the first.
    async fn rollup(&self, feed: &str) -> anyhow::Result<Option<Value>> {
        match self.call(None, &format!("/v1/feeds/{feed}")).await? {
            (200, v) => Ok(Some(v)),
            (404, _) => Ok(None),
            (status, body) => bail!("{} GET /v1/feeds/{feed}: {status} {body}", self.who),
        }
    }

    /// `state (reason)` of `feed` in `GET /v1/feeds`, for messages.
    async fn subscription_state(&self, feed: &str) -> String {
        let Ok((200, list)) = self.call(None, "/v1/feeds").await else {
            return "unknown".into();
        };
        list.get("feeds")
            .and_then(Value::as_array)
            .and_then(|fs| {
                fs.iter()
                    .find(|f| f.get("name").and_then(Value::as_str) == Some(feed))
            })
            .map_or_else(
                || "not listed".into(),
                |f| {
                    let s = f.get("state").and_then(Value::as_str).unwrap_or("?");
                    match f.get("reason").and_then(Value::as_str) {
                        Some(r) => format!("{s} ({r})"),
                        None => s.to_owned(),
                    }
                },
            )
    }
}

/// The three roll-ups the scenario watches, as the authorities hold them.
#[derive(Debug, Default)]
struct View {
    ss_open: Option<Value>,
    msb_open: Option<Value>,
    ss_secure: Option<Value>,
}

/// `(reporting, total)` regions of a roll-up.
fn reporting(rollup: Option<&Value>) -> (u64, u64) {
    let t = rollup.and_then(|r| r.get("totals")).unwrap_or(&Value::Null);
    (number(t, "regions_reporting"), number(t, "regions_total"))
}

fn complete(rollup: Option<&Value>) -> bool {
    let all = REGIONS as u64;
    reporting(rollup) == (all, all)
}

fn withheld(rollup: Option<&Value>) -> &[Value] {
    rollup
        .and_then(|r| r.get("withheld"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn label(rollup: Option<&Value>) -> &str {
    rollup
        .and_then(|r| r.pointer("/label/class"))
        .and_then(Value::as_str)
        .unwrap_or("-")
}

struct Watcher {
    ss: Api,
    msb: Api,
    changed: mpsc::Receiver<()>,
    deadline: Instant,
}

impl Watcher {
    async fn look(&self) -> anyhow::Result<View> {
        Ok(View {
            ss_open: self.ss.rollup(OPEN_FEED).await?,
            msb_open: self.msb.rollup(OPEN_FEED).await?,
            ss_secure: self.ss.rollup(SECURE_FEED).await?,
        })
    }

    /// Waits for any node's state to change; false at the deadline.
    async fn next_change(&mut self) -> bool {
        match tokio::time::timeout_at(self.deadline, self.changed.recv()).await {
            Ok(Some(())) => {
                // One look covers every change queued so far.
                while self.changed.try_recv().is_ok() {}
                true
            }
            _ => false,
        }
    }

    /// What the view lacks, with each subscription's state, for the error.
    async fn missing(&self, v: &View) -> String {
        let mut out = Vec::new();
        for (api, feed, rollup) in [
            (&self.ss, OPEN_FEED, v.ss_open.as_ref()),
            (&self.msb, OPEN_FEED, v.msb_open.as_ref()),
        ] {
            if rollup.is_none() {
                let state = api.subscription_state(feed).await;
                out.push(format!(
                    "{} holds no {feed} roll-up (subscription {state})",
                    api.who
                ));
            } else if !complete(rollup) {
                let (n, total) = reporting(rollup);
                out.push(format!(
                    "{feed} at {}: only {n}/{total} regions reporting",
                    api.who
                ));
            }
        }
        if v.ss_secure.is_none() {
            let state = self.ss.subscription_state(SECURE_FEED).await;
            out.push(format!(
                "{} holds no {SECURE_FEED} roll-up (subscription {state})",
                self.ss.who
            ));
        } else if withheld(v.ss_secure.as_ref()).is_empty() {
            out.push(format!(
                "{SECURE_FEED} at {} does not hold the classified input from region {CLASSIFIED_REGION}",
                self.ss.who
            ));
        }
        out.join("; ")
    }
}

async fn scenario(
    topology: &Topology,
    nodes: &BTreeMap<String, Node>,
    pki: &Path,
    changed: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let mut w = Watcher {
        ss: Api::of(nodes, pki, SOCIALSTYRELSEN)?,
        msb: Api::of(nodes, pki, MSB)?,
        changed,
        deadline: Instant::now() + DEADLINE,
    };
    // The authorities subscribe through their APIs.
    for (api, feed, channel) in [
        (&w.ss, OPEN_FEED, "open"),
        (&w.msb, OPEN_FEED, "open"),
        (&w.ss, SECURE_FEED, "secure"),
    ] {
        let request = api.subscribe(feed, channel).await?;
        println!(
            "  {:<16} subscribes to {feed} on {channel} (request {request})",
            api.who
        );
    }
    // The hub answers each with its roll-up as it stands (no region yet).
    loop {
        let v = w.look().await?;
        if v.ss_open.is_some() && v.msb_open.is_some() && v.ss_secure.is_some() {
            println!("  subscriptions answered: every authority holds its first roll-up");
            break;
        }
        if !w.next_change().await {
            bail!(
                "no first roll-up within {}s: {}",
                DEADLINE.as_secs(),
                w.missing(&v).await
            );
        }
    }

    // Every region reports to the hub; Uppsala also sends a classified report.
    let now = sitrep_node::clock::now_ms();
    let hub = NodeId::new(HUB)?;
    let mut sent = 0;
    for t in topology.nodes.iter().filter(|t| t.kind == "REGION") {
        let profile = PROFILES
            .iter()
            .find(|p| p.code == t.region_code)
            .ok_or_else(|| anyhow!("{}: no profile for county code {:?}", t.id, t.region_code))?;
        let node = nodes
            .get(&t.id)
            .ok_or_else(|| anyhow!("{} is not running", t.id))?;
        let report = report(profile, &t.name, now)?;
        let level = pb::PreparednessLevel::try_from(report.preparedness_level)
            .unwrap_or(pb::PreparednessLevel::Normal);
        let precedence = match level {
            pb::PreparednessLevel::Normal | pb::PreparednessLevel::StaffAlert => Precedence::Routine,
            _ => Precedence::Priority,
        };
        let mut submissions = vec![(Class::Sensitive, precedence, report.clone())];
        if t.region_code == CLASSIFIED_REGION {
            let mut classified = report;
            classified.report_number += 1;
            classified.preparedness_level = pb::PreparednessLevel::Disaster as i32;
            classified.assessment = format!(
                "Sabotage mot reservkraften vid {} misstänks; uppgifter rör rikets säkerhet.",
                profile.hospital
            );
            submissions.push((Class::Restricted, Precedence::Immediate, classified));
        }
        for (class, precedence, report) in submissions {
            node.submit(Submission {
                author: format!("TiB {}", t.name),
                label: Label::new(class),
                precedence,
                mode: Mode::Actual,
                recipients: vec![hub.clone()],
                expires_ms: None,
                content: Content::Report(report),
            })
            .await
            .with_context(|| format!("submitting {}'s report", t.id))?;
            sent += 1;
        }
    }
    println!(
        "  {sent} reports submitted to {HUB}: one per region (ACTUAL, SENSITIVE; Region Norrbotten's \
         next report was due 30 min ago) and one RESTRICTED from Region Uppsala, on secure"
    );

    // Follow the roll-ups at the authorities until both are complete.
    let mut shown = 0;
    let v = loop {
        let v = w.look().await?;
        let (n, total) = reporting(v.ss_open.as_ref());
        if n > shown {
            println!("{OPEN_FEED} at {SOCIALSTYRELSEN}: {n}/{total} regions reporting");
            shown = n;
        }
        if complete(v.ss_open.as_ref())
            && complete(v.msb_open.as_ref())
            && !withheld(v.ss_secure.as_ref()).is_empty()
        {
            break v;
        }
        if !w.next_change().await {
            bail!(
                "the national picture is not complete within {}s: {}",
                DEADLINE.as_secs(),
                w.missing(&v).await
            );
        }
    };
    let ss_open = v.ss_open.as_ref().unwrap_or(&Value::Null);
    println!("\n{}", print_table(ss_open));
    let secure = v.ss_secure.as_ref();
    let (n, total) = reporting(secure);
    let sources: Vec<String> = withheld(secure)
        .iter()
        .map(|s| {
            format!(
                "region {} report #{} {}",
                s.get("region_code").and_then(Value::as_str).unwrap_or("?"),
                number(s, "report_number"),
                s.pointer("/label/class").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    println!(
        "{SECURE_FEED} at {SOCIALSTYRELSEN}: label {}, {} withheld from the open feed ({}), {n}/{total} regions reporting",
        label(secure),
        sources.len(),
        sources.join(", ")
    );
    let (n, total) = reporting(v.msb_open.as_ref());
    println!(
        "{OPEN_FEED} at {MSB}: {n}/{total} regions reporting, label {}, {} overdue",
        label(v.msb_open.as_ref()),
        number(
            v.msb_open
                .as_ref()
                .and_then(|r| r.get("totals"))
                .unwrap_or(&Value::Null),
            "regions_overdue"
        )
    );
    println!(
        "sitrep demo --national: complete: {SOCIALSTYRELSEN} and {MSB} hold all {REGIONS} regions; \
         the classified input is only in {SECURE_FEED}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn the_topology_has_every_region_once_with_a_profile() {
        let t = demo::topology(TOPOLOGY, "national", false).expect("topology");
        let mut codes: Vec<&str> = t
            .nodes
            .iter()
            .filter(|n| n.kind == "REGION")
            .map(|n| n.region_code.as_str())
            .collect();
        codes.sort_unstable();
        assert_eq!(codes, sitrep_core::report::COUNTY_CODES);
        for (profile, code) in PROFILES.iter().zip(sitrep_core::report::COUNTY_CODES) {
            assert_eq!(profile.code, code);
        }
    }

    #[test]
    fn every_regions_report_is_valid_and_only_norrbotten_is_overdue() {
        for p in &PROFILES {
            let r = report(p, "Region X", NOW).expect("valid");
            assert_eq!(r.region_code, p.code);
            assert_eq!(
                r.next_report_due_unix_ms < NOW,
                p.code == OVERDUE_REGION,
                "{}",
                p.code
            );
        }
    }
}
