//! Client commands: talk to the local node's HTTP API.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

/// How to reach the API.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiArgs {
    /// The node's API, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "SITREP_API", default_value = "http://127.0.0.1:7400")]
    pub(crate) api: String,
    /// Bearer token for the role the command needs.
    #[arg(long, env = "SITREP_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

pub(crate) struct Client {
    pub(crate) base: String,
    pub(crate) token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn new(args: &ApiArgs) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self {
            base: args.api.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
            agent,
        }
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.request_with(method, path, body, &[])
            .map(|(status, _, value)| (status, value))
    }

    /// [`Client::request`] with extra request headers; also returns the
    /// answer's headers.
    pub(crate) fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<(u16, ureq::http::HeaderMap, Value)> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let resp = if method == "POST" {
            let mut req = self.agent.post(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            for (name, value) in extra {
                req = req.header(*name, *value);
            }
            req.send_json(body.unwrap_or(&Value::Null))
        } else {
            let mut req = self.agent.get(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        };
        let mut resp = resp.with_context(|| format!("cannot reach the node's API at {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("reading the API's answer")?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, resp.headers().clone(), value))
    }

    /// GET or POST, and turn API errors into one-line messages.
    pub(crate) fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = self.request(method, path, body)?;
        api_answer(status, v)
    }
}

/// A 2xx answer's body, or the API's error as a one-line message.
fn api_answer(status: u16, v: Value) -> anyhow::Result<Value> {
    if (200..300).contains(&status) {
        return Ok(v);
    }
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("request failed")
        .to_owned();
    let fields: Vec<String> = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.get("field").and_then(Value::as_str).unwrap_or("?"),
                        e.get("problem").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if fields.is_empty() {
        bail!("{status}: {error}");
    }
    bail!("{status}: {error}: {}", fields.join("; "))
}

/// How `report submit` sends.
#[derive(Debug, Clone)]
pub(crate) struct SubmitOptions {
    /// Follow delivery until final.
    pub(crate) wait: bool,
    /// How long following may take.
    pub(crate) timeout: Duration,
    /// The submission's idempotency key; `None`: a new random one.
    pub(crate) key: Option<String>,
    /// How long to keep retrying a submission whose answer did not arrive.
    pub(crate) retry_for: Duration,
}

/// Submits with an `Idempotency-Key`, retrying with the same key while the
/// node cannot be reached, the connection is cut before the answer, or the
/// node answers that it is busy or its store is unavailable (408, 429, 502,
/// 503, 504): a retry can never store the report twice.
pub(crate) fn submit(args: &ApiArgs, file: &Path, opts: &SubmitOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("report file {}", file.display()))?;
    let body: Value =
        serde_json::from_str(&text).with_context(|| format!("report file {}: not JSON", file.display()))?;
    let c = Client::new(args);
    let key = match &opts.key {
        Some(k) => k.clone(),
        None => {
            let mut b = [0u8; 16];
            sitrep_crypto::random_bytes(&mut b).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
            hex::encode(b)
        }
    };
    let start = Instant::now();
    let mut pause = Duration::from_millis(250);
    let v = loop {
        let why = match c.request_with("POST", "/v1/reports", Some(&body), &[("Idempotency-Key", &key)]) {
            Ok((status, headers, v)) if !matches!(status, 408 | 429 | 502 | 503 | 504) => {
                if headers.get("idempotent-replayed").is_some() {
                    eprintln!("the node had stored this submission already (key {key}); its id:");
                }
                break api_answer(status, v)?;
            }
            Ok((status, _, v)) => format!(
                "{status}: {}",
                v.get("error").and_then(Value::as_str).unwrap_or("busy")
            ),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() + pause > opts.retry_for {
            bail!(
                "{why}; gave up after {:.0?}. Whether the node stored it is unknown: \
                 rerun with --idempotency-key {key} to find out without storing it twice",
                start.elapsed()
            );
        }
        eprintln!("{why}; retrying in {pause:.1?} with the same Idempotency-Key {key}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    };
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the API answered without an id"))?
        .to_owned();
    println!("{id}");
    if opts.wait {
        follow(&c, &id, opts.timeout)?;
    }
    Ok(())
}

/// Prints each recipient's state as it changes until every one is final.
fn follow(c: &Client, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let v = c.ok("GET", &format!("/v1/reports/{id}"), None)?;
        for r in v
            .get("recipients")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let who = r
                .get("recipient")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let state = r.get("state").and_then(Value::as_str).unwrap_or("?").to_owned();
            if seen.get(&who) != Some(&state) {
                let at = r.get("at").and_then(Value::as_str).unwrap_or("");
                let extra = r
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default();
                println!("{who} {state} {at}{extra}");
                seen.insert(who, state);
            }
        }
        if v.get("final").and_then(Value::as_bool) == Some(true) {
            let failed: Vec<&String> = seen
                .iter()
                .filter(|(_, s)| *s != "DELIVERED")
                .map(|(w, _)| w)
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            bail!(
                "not delivered to {}",
                failed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "no final state for every recipient within {}",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn report_status(args: &ApiArgs, id: &str) -> anyhow::Result<()> {
    let v = Client::new(args).ok("GET", &format!("/v1/reports/{id}"), None)?;
    println!(
        "{:<24} {:<10} {:<24} {:<16} REASON",
        "RECIPIENT", "STATE", "AT", "HOP"
    );
    for r in v
        .get("recipients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        println!(
            "{:<24} {:<10} {:<24} {:<16} {}",
            s("recipient"),
            s("state"),
            s("at"),
            s("hop"),
            s("reason")
        );
    }
    Ok(())
}

pub(crate) fn inbox(args: &ApiArgs, after: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match after {
        Some(a) => format!("/v1/inbox?after={a}"),
        None => "/v1/inbox".to_owned(),
    };
    let v = Client::new(args).ok("GET", &path, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<36} {:<18} {:<10} {:<10} {:<24} REPORT",
        "ID", "ORIGIN", "CLASS", "PRECEDENCE", "RECEIVED"
    );
    for item in v.get("items").and_then(Value::as_array).into_iter().flatten() {
        let s = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let class = item
            .pointer("/label/class")
            .and_then(Value::as_str)
            .unwrap_or("-");
        let report = item.get("report").map_or_else(String::new, |r| {
            format!(
                "region {} #{} {}",
                r.get("region_code").and_then(Value::as_str).unwrap_or("?"),
                r.get("report_number")
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                r.get("preparedness_level").and_then(Value::as_str).unwrap_or("")
            )
        });
        println!(
            "{:<36} {:<18} {:<10} {:<10} {:<24} {report}",
            s("id"),
            s("origin"),
            class,
            s("precedence"),
            s("received")
        );
    }
    if let Some(next) = v.get("next").and_then(Value::as_str) {
        eprintln!("next page: sitrep inbox --after {next}");
    }
    Ok(())
}

pub(crate) fn status(args: &ApiArgs, json: bool) -> anyhow::Result<()> {
    let v = Client::new(args).ok("GET", "/v1/status", None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", status_table(&v));
    Ok(())
}

pub(crate) fn roster_summary(args: &ApiArgs) -> anyhow::Result<()> {
    let v = Client::new(args).ok("GET", "/v1/status", None)?;
    let r = v.get("roster").cloned().unwrap_or(Value::Null);
    println!(
        "roster of {}: network {}, serial {}, valid until {} ({:.1} days left)",
        v.get("node").and_then(Value::as_str).unwrap_or("?"),
        r.get("network").and_then(Value::as_str).unwrap_or("?"),
        r.get("serial").map(ToString::to_string).unwrap_or_default(),
        r.get("not_after").and_then(Value::as_str).unwrap_or("?"),
        r.get("days_left").and_then(Value::as_f64).unwrap_or(0.0)
    );
    Ok(())
}

/// The status document as readable tables.
pub(crate) fn status_table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let r = v.get("roster").cloned().unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "node {}  at {}  roster serial {} ({:.1} days left)",
        s(v, "node"),
        s(v, "time"),
        r.get("serial").map(ToString::to_string).unwrap_or_default(),
        r.get("days_left").and_then(Value::as_f64).unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "\n{:<20} {:<8} {:<10} {:<26} {:>8}  LAST ERROR",
        "PEER", "CHANNEL", "CONNECTED", "LAST SEEN", "RTT ms"
    );
    for p in v.get("peers").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<10} {:<26} {:>8}  {}",
            s(p, "peer"),
            s(p, "channel"),
            p.get("connected")
                .and_then(Value::as_bool)
                .map_or("-", |c| if c { "yes" } else { "NO" }),
            s(p, "last_seen"),
            p.get("rtt_ms")
                .and_then(Value::as_f64)
                .map_or("-".into(), |x| format!("{x:.2}")),
            s(p, "last_error")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<8} {:>8} {:>12} {:>14}",
        "OUTBOX", "CHANNEL", "DEPTH", "BYTES", "OLDEST AGE s"
    );
    for o in v.get("outboxes").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>8} {:>12} {:>14}",
            s(o, "next_hop"),
            s(o, "channel"),
            o.get("depth").map(ToString::to_string).unwrap_or_default(),
            o.get("bytes").map(ToString::to_string).unwrap_or_default(),
            o.get("oldest_age_s")
                .and_then(Value::as_f64)
                .map_or("-".into(), |x| format!("{x:.1}"))
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<26} {:>10}",
        "CERTIFICATE", "NOT AFTER", "DAYS LEFT"
    );
    for c in v
        .get("certificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "{:<20} {:<26} {:>10.1}",
            s(c, "channel"),
            s(c, "not_after"),
            c.get("days_left").and_then(Value::as_f64).unwrap_or(0.0)
        );
    }
    let _ = writeln!(out, "\nCOUNTERS");
    if let Some(Value::Object(m)) = v.get("counters") {
        for (k, n) in m {
            let _ = writeln!(out, "  {k:<32} {n}");
        }
    }
    for st in v.get("stores").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(
            out,
            "store {:<8} {} bytes on disk",
            s(st, "channel"),
            st.get("disk_bytes").map(ToString::to_string).unwrap_or_default()
        );
    }
    out
}
