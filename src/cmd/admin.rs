//! `dfp tap` and `dfp top`: clients of a running pipeline's admin endpoint.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

/// Arguments of `dfp tap`.
#[derive(Args)]
pub(crate) struct TapArgs {
    /// The stage whose output rows to print (sinks: the rows they receive).
    stage: String,
    #[command(flatten)]
    endpoint: Endpoint,
    /// Stop after this many rows.
    #[arg(long)]
    limit: Option<u64>,
    /// Only rows whose COLUMN, as text, equals VALUE.
    #[arg(long, value_name = "COLUMN=VALUE")]
    filter: Option<String>,
}

/// Arguments of `dfp top`.
#[derive(Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Stop after this many refreshes (default: until the pipeline ends or Ctrl-C).
    #[arg(long)]
    iterations: Option<u64>,
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the admin endpoint is and how to get in.
#[derive(Args)]
pub(crate) struct Endpoint {
    /// The pipeline's admin address (its --metrics-addr or runtime.metrics): HOST:PORT, or
    /// https://HOST:PORT when it serves TLS.
    #[arg(long, default_value = "127.0.0.1:9464", env = "DFP_METRICS_ADDR")]
    addr: String,
    /// A file holding the endpoint's bearer token (runtime.admin.token_file).
    #[arg(long, value_name = "FILE", env = "DFP_ADMIN_TOKEN_FILE")]
    token_file: Option<String>,
    /// A PEM file of CA certificates to trust for https:// (besides the system's).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
}

/// An HTTP client of the admin endpoint.
struct AdminClient {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    fn new(e: &Endpoint, timeout: Option<Duration>) -> Result<Self> {
        let base = if e.addr.starts_with("http://") || e.addr.starts_with("https://") {
            e.addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", e.addr)
        };
        let token = match &e.token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path).with_context(|| format!("reading the token file {path}"))?;
                Some(t.trim().to_string())
            }
            None => None,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        if let Some(path) = &e.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA file {path}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("the CA file {path}"))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().context("building the HTTP client")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(AdminClient { base, client, token, runtime })
    }

    /// `GET path`: the status and the response (its body not read yet).
    fn get(&self, path: &str) -> Result<(u16, reqwest::Response)> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        // `send` starts the request's timer: inside the runtime.
        let resp = self.runtime.block_on(async { req.send().await }).map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            anyhow::anyhow!("cannot reach dfp at {} ({msg}; is the pipeline running with --metrics-addr?)", self.base)
        })?;
        let code = resp.status().as_u16();
        if code == 401 {
            bail!(
                "{} needs a token: pass --token-file (the pipeline's runtime.admin.token_file){}",
                self.base,
                if self.token.is_some() { "; the one given was refused" } else { "" }
            );
        }
        Ok((code, resp))
    }

    fn get_body(&self, path: &str) -> Result<(u16, String)> {
        let (code, resp) = self.get(path)?;
        let body = self.runtime.block_on(resp.text())?;
        Ok((code, body))
    }
}

/// `dfp tap`.
pub(crate) fn tap(args: TapArgs) -> Result<ExitCode> {
    let mut path = format!("/tap?stage={}", encode(&args.stage));
    if let Some(n) = args.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        path.push_str(&format!("&limit={n}"));
    }
    if let Some(f) = &args.filter {
        if !f.contains('=') {
            bail!("--filter must be COLUMN=VALUE, got {f:?}");
        }
        path.push_str(&format!("&filter={}", encode(f)));
    }
    let client = AdminClient::new(&args.endpoint, None)?;
    let (code, mut resp) = client.get(&path)?;
    if code != 200 {
        let body = client.runtime.block_on(resp.text()).unwrap_or_default();
        bail!("{} (from {})", body.trim(), client.base);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut pending: Vec<u8> = Vec::new();
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    loop {
        let Some(line) = lines.pop_front() else {
            match client.runtime.block_on(resp.chunk())? {
                Some(chunk) => {
                    pending.extend_from_slice(&chunk);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let rest = pending.split_off(i + 1);
                        lines.push_back(String::from_utf8_lossy(&pending).into_owned());
                        pending = rest;
                    }
                    continue;
                }
                None => break,
            }
        };
        if !line.starts_with("{\"$tap\"") {
            out.write_all(line.as_bytes())?;
            out.flush()?;
            continue;
        }
        let note: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let note = &note["$tap"];
        match note["event"].as_str() {
            Some("attached") => eprintln!(
                "tapping stage \"{}\" of {} (Ctrl-C to stop)",
                note["stage"].as_str().unwrap_or("?"),
                note["pipeline"].as_str().unwrap_or("?")
            ),
            Some("dropped") => eprintln!(
                "dfp tap: {} row(s) dropped so far: this reader is slower than the stage (the pipeline is not slowed)",
                note["dropped_rows"]
            ),
            Some("warning") => eprintln!("dfp tap: {}", note["message"].as_str().unwrap_or("")),
            Some("end") => {
                eprintln!(
                    "tap ended ({}): {} row(s) printed, {} dropped",
                    note["reason"].as_str().unwrap_or("?"),
                    note["rows"],
                    note["dropped_rows"]
                );
                break;
            }
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(client: &AdminClient) -> Result<Value> {
    let (code, body) = client.get_body("/stats")?;
    if code != 200 {
        bail!("{}/stats answered {code}: {}", client.base, body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{}/stats is not JSON", client.base))
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// `dfp top`.
pub(crate) fn top(args: TopArgs) -> Result<ExitCode> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let tty = std::io::stdout().is_terminal();
    let client = AdminClient::new(&args.endpoint, Some(Duration::from_secs(30)))?;
    let mut previous: Option<(Instant, Value)> = None;
    let mut shown = 0u64;
    loop {
        let now = Instant::now();
        let current = match stats(&client) {
            Ok(v) => v,
            Err(e) if previous.is_some() => {
                println!("pipeline gone: {e:#}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e),
        };
        let dt = previous.as_ref().map(|(t, _)| now.duration_since(*t).as_secs_f64()).filter(|d| *d > 0.0);
        let mut text = String::new();
        let ready = if current["ready"].as_bool() == Some(true) {
            "ready".to_string()
        } else {
            let why: Vec<&str> =
                current["not_ready"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            format!("NOT READY: {}", why.join("; "))
        };
        let busy: Vec<String> = current["busy_seconds"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(w, b)| {
                let before = previous.as_ref().and_then(|(_, p)| p["busy_seconds"][w].as_f64());
                match (dt, b.as_f64(), before) {
                    (Some(dt), Some(b), Some(p)) => format!("w{w} {:.0}%", 100.0 * (b - p) / dt),
                    _ => format!("w{w} -"),
                }
            })
            .collect();
        text.push_str(&format!(
            "{}  workers {}  up {:.0}s  {}\nbusy: {}\n\n",
            current["pipeline"].as_str().unwrap_or("?"),
            current["workers"],
            current["uptime_seconds"].as_f64().unwrap_or(0.0),
            ready,
            busy.join("  ")
        ));
        text.push_str(&format!(
            "{:<20} {:<16} {:>10} {:>10} {:>12} {:>8} {:>9} {:>10} {:>6}\n",
            "stage", "type", "in/s", "out/s", "rows out", "dead", "in-flight", "lag", "busy"
        ));
        for (i, s) in current["stages"].as_array().into_iter().flatten().enumerate() {
            let before = previous.as_ref().map(|(_, p)| &p["stages"][i]);
            let rate = |field: &str| match (dt, s[field].as_u64(), before.and_then(|b| b[field].as_u64())) {
                (Some(dt), Some(now), Some(then)) => fmt_rate(now.saturating_sub(then) as f64 / dt),
                _ => "-".to_string(),
            };
            let lag = s["lag_seconds"].as_f64().map(|l| format!("{l:.1}s")).unwrap_or_else(|| "-".into());
            let in_flight = if s["kind"] == "source" { s["in_flight"].to_string() } else { "-".into() };
            // The share of one worker's time the stage's calls took over the interval (all workers: can
            // exceed 100 %).
            let busy = match (dt, s["busy_us"].as_u64(), before.and_then(|b| b["busy_us"].as_u64())) {
                (Some(dt), Some(now), Some(then)) => format!("{:.0}%", now.saturating_sub(then) as f64 / 1e4 / dt),
                _ => "-".to_string(),
            };
            text.push_str(&format!(
                "{:<20} {:<16} {:>10} {:>10} {:>12} {:>8} {:>9} {:>10} {:>6}\n",
                s["id"].as_str().unwrap_or("?"),
                s["type"].as_str().unwrap_or("?"),
                rate("rows_in"),
                rate("rows_out"),
                s["rows_out"],
                s["dead_letters"],
                in_flight,
                lag,
                busy
            ));
        }
        if current["finished"].as_bool() == Some(true) {
            text.push_str("\nthe pipeline has finished\n");
        }
        if tty {
            print!("\x1b[2J\x1b[H{text}");
        } else {
            println!("{text}");
        }
        std::io::stdout().flush()?;
        shown += 1;
        if args.iterations.is_some_and(|n| shown >= n) || current["finished"].as_bool() == Some(true) {
            return Ok(ExitCode::SUCCESS);
        }
        previous = Some((now, current));
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn query_components_are_encoded() {
        assert_eq!(encode("user_name=a b@x.com"), "user_name%3Da%20b%40x.com");
        assert_eq!(encode("café"), "caf%C3%A9");
    }
}
