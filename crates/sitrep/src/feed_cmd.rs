//! `sitrep feed list | show | watch | subscribe | unsubscribe | verify`: the
//! national feeds through the node's API (reader token).

use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::client::{ApiArgs, Client};
use crate::table::{flag, number as n, time as when};

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

/// `feed list`: the feeds built or asked for here, one line each.
pub(crate) fn list(args: &ApiArgs, json: bool) -> anyhow::Result<()> {
    let v = Client::new(args).ok("GET", "/v1/feeds", None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<7} {:<9} {:<16} {:>9} {:>8} {:>7} {:>5} {:>7}  SUBSCRIBERS / REASON",
        "FEED", "ROLE", "CHANNEL", "STATE", "AGGREGATOR", "REGIONS", "OVERDUE", "STALE", "SEQ", "LAG s"
    );
    for f in v.get("feeds").and_then(Value::as_array).into_iter().flatten() {
        let tail = match f.get("subscribers").and_then(Value::as_array) {
            Some(subs) if !subs.is_empty() => subs
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            _ => f.get("reason").and_then(Value::as_str).unwrap_or("").to_owned(),
        };
        let seq = n(f, "sequence");
        println!(
            "{:<20} {:<10} {:<7} {:<9} {:<16} {:>9} {:>8} {:>7} {:>5} {:>7.1}  {tail}",
            s(f, "name"),
            s(f, "role"),
            s(f, "channel"),
            s(f, "state"),
            s(f, "aggregator"),
            format!("{}/{}", n(f, "reporting"), n(f, "regions")),
            n(f, "overdue"),
            n(f, "stale"),
            // The sequence is microseconds-based: its last digits tell updates apart.
            if seq == 0 {
                "-".into()
            } else {
                format!("…{:04}", seq % 10_000)
            },
            f.get("lag_s").and_then(Value::as_f64).unwrap_or(0.0),
        );
    }
    Ok(())
}

/// `feed show NAME`: the latest roll-up.
pub(crate) fn show(args: &ApiArgs, name: &str, json: bool) -> anyhow::Result<()> {
    let v = Client::new(args).ok("GET", &format!("/v1/feeds/{name}"), None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", crate::table::print_table(&v));
    }
    Ok(())
}

/// `feed watch NAME`: one line per update, from the feed's event stream;
/// reconnects and resumes after the last update seen.
pub(crate) fn watch(args: &ApiArgs, name: &str, json: bool) -> anyhow::Result<()> {
    let client = Client::new(args);
    let url = format!("{}/v1/feeds/{name}/events", client.base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut last: Option<u64> = None;
    loop {
        let mut req = agent.get(&url);
        if let Some(t) = &client.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        if let Some(l) = last {
            req = req.header("Last-Event-ID", &l.to_string());
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("feed watch: {e}; retrying in 2 s");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            let text = resp.into_body().read_to_string().unwrap_or_default();
            bail!("{status}: {text}");
        }
        let mut data = String::new();
        let mut id = None;
        for line in std::io::BufReader::new(resp.into_body().into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let r: Value = serde_json::from_str(&data).context("an event that is not JSON")?;
                data.clear();
                last = id.or(last);
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let t = r.get("totals").cloned().unwrap_or(Value::Null);
                    println!(
                        "{}  {} sequence {}: {}/{} reporting, {} overdue, {} stale; IVA free {}‰; label {}",
                        when(n(&r, "built_unix_ms")),
                        s(&r, "feed"),
                        n(&r, "sequence"),
                        n(&t, "regions_reporting"),
                        n(&t, "regions_total"),
                        n(&t, "regions_overdue"),
                        n(&t, "regions_stale"),
                        n(&t, "icu_free_permille"),
                        r.get("label").map_or("-".into(), |l| s(l, "class")),
                    );
                }
            }
        }
        eprintln!("feed watch: the stream ended; resuming");
    }
}

/// `feed subscribe NAME`: a signed SUBSCRIBE to the aggregator; with
/// `--wait`, until the first update or the refusal arrives.
pub(crate) fn subscribe(
    args: &ApiArgs,
    name: &str,
    aggregator: Option<&str>,
    channel: &str,
    regions: &[String],
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let client = Client::new(args);
    let mut body = json!({ "channel": channel, "regions": regions });
    if let Some(a) = aggregator {
        body["aggregator"] = Value::from(a);
    }
    let v = client.ok("POST", &format!("/v1/feeds/{name}/subscribe"), Some(&body))?;
    println!("subscription to {name} requested: {}", s(&v, "request_id"));
    let Some(timeout) = wait else { return Ok(()) };
    let deadline = Instant::now() + timeout;
    loop {
        let list = client.ok("GET", "/v1/feeds", None)?;
        let state = list
            .get("feeds")
            .and_then(Value::as_array)
            .and_then(|fs| {
                fs.iter()
                    .find(|f| f["name"] == name && f["role"] == "subscriber" && f["channel"] == channel)
            })
            .cloned()
            .unwrap_or(Value::Null);
        match state.get("state").and_then(Value::as_str) {
            Some("active") => {
                println!(
                    "{name}: active, first roll-up received (sequence {})",
                    n(&state, "sequence")
                );
                return Ok(());
            }
            Some("refused" | "ended") => bail!("{name}: {}: {}", s(&state, "state"), s(&state, "reason")),
            _ if Instant::now() >= deadline => bail!("{name}: no answer within {}s", timeout.as_secs()),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `feed unsubscribe NAME`.
pub(crate) fn unsubscribe(args: &ApiArgs, name: &str) -> anyhow::Result<()> {
    let v = Client::new(args).ok("POST", &format!("/v1/feeds/{name}/unsubscribe"), None)?;
    println!("unsubscribed from {name}: {}", s(&v, "request_id"));
    Ok(())
}

/// `feed verify NAME`: the roll-up (held at the node, or `--rollup FILE`)
/// checked against the reports in the node's inbox. Exit 1 unless every
/// source checks out.
pub(crate) fn verify(args: &ApiArgs, name: &str, rollup: Option<&Path>) -> anyhow::Result<()> {
    let body = rollup
        .map(|p| -> anyhow::Result<Value> {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
        })
        .transpose()?;
    let v = Client::new(args).ok("POST", &format!("/v1/feeds/{name}/verify"), body.as_ref())?;
    for src in v.get("sources").and_then(Value::as_array).into_iter().flatten() {
        let ok = flag(src, "ok");
        let problems: Vec<&str> = src
            .get("problems")
            .and_then(Value::as_array)
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{} region {} report {}{}",
            if ok { "ok  " } else { "FAIL" },
            s(src, "region_code"),
            s(src, "report_id"),
            if ok {
                String::new()
            } else {
                format!(": {}", problems.join("; "))
            }
        );
    }
    if flag(&v, "ok") {
        println!(
            "{name} sequence {}: every source verified against this node's inbox",
            n(&v, "sequence")
        );
        Ok(())
    } else {
        bail!("{name} sequence {}: verification failed", n(&v, "sequence"))
    }
}
