//! The admin endpoint: a small HTTP/1.1 server on its own threads (never on a worker).
//!
//! | path | answer |
//! | --- | --- |
//! | `/metrics` | Prometheus text exposition |
//! | `/healthz` | `200 ok` while the process serves |
//! | `/readyz` | `200 ready` (then a `warning: …` line per problem that does not stop the run), or `503` with one reason per line |
//! | `/stats` | the run's [`StatsSnapshot`](super::StatsSnapshot) as JSON (for `dfp top`) |
//! | `/tap?stage=ID[&limit=N][&filter=COLUMN=VALUE]` | rows leaving a stage, as JSON lines, until the limit or the end of the run |
//!
//! Tap streams: each row is a JSON object on its own line; lines of the form `{"$tap": {...}}` are notes
//! from the server (`attached`, `dropped` with the running count of rows dropped for a slow reader,
//! `warning`, and a final `end` with the reason and the totals).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use serde_json::json;

use super::metrics::enable_metrics;
use super::stats::RunStats;
use super::ObserveError;

/// Checks that `addr` is a `HOST:PORT` this machine can resolve.
pub fn check_addr(addr: &str) -> Result<SocketAddr, String> {
    let mut found = addr.to_socket_addrs().map_err(|e| format!("\"{addr}\" is not a HOST:PORT address ({e})"))?;
    found.next().ok_or_else(|| format!("\"{addr}\" resolves to no address"))
}

/// A running admin endpoint; stops when dropped or [`shut down`](AdminServer::shutdown).
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port), enables metrics, and serves the run `stats`.
    pub fn start(addr: &str, stats: Arc<RunStats>) -> Result<AdminServer, ObserveError> {
        let target = check_addr(addr).map_err(|e| ObserveError::Bind { addr: addr.to_string(), message: e })?;
        enable_metrics()?;
        let listener = TcpListener::bind(target)
            .map_err(|e| ObserveError::Bind { addr: addr.to_string(), message: e.to_string() })?;
        let local =
            listener.local_addr().map_err(|e| ObserveError::Bind { addr: addr.to_string(), message: e.to_string() })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ObserveError::Bind { addr: addr.to_string(), message: e.to_string() })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dfp-admin".into())
            .spawn(move || accept_loop(listener, flag, stats))
            .map_err(|e| ObserveError::Bind { addr: addr.to_string(), message: e.to_string() })?;
        tracing::info!(addr = %local, "admin endpoint: /metrics /healthz /readyz /stats /tap");
        Ok(AdminServer { addr: local, stop, thread: Some(thread) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections (open tap streams end with the run).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, stats: Arc<RunStats>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stats = Arc::clone(&stats);
                let _ = std::thread::Builder::new().name("dfp-admin-conn".into()).spawn(move || {
                    if let Err(e) = handle(stream, &stats) {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Decodes `%XX` and `+` in a query component.
pub(crate) fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn handle(stream: TcpStream, stats: &Arc<RunStats>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut stream = stream;
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET is served\n");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match path {
        "/metrics" => {
            let body = super::metrics().map(|m| m.encode()).unwrap_or_default();
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n"),
        "/readyz" => match stats.readiness() {
            Ok(()) => {
                // Problems that do not stop the run are listed, but the pipeline stays ready.
                let warnings: String = stats.warnings().iter().map(|w| format!("warning: {w}\n")).collect();
                respond(&mut stream, "200 OK", "text/plain", &format!("ready\n{warnings}"))
            }
            Err(why) => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                &format!("not ready\n{}\n", why.join("\n")),
            ),
        },
        "/stats" => {
            let body = serde_json::to_string(&stats.snapshot()).unwrap_or_default();
            respond(&mut stream, "200 OK", "application/json", &body)
        }
        "/tap" => tap(stream, stats, param("stage"), param("limit"), param("filter")),
        "/" => respond(
            &mut stream,
            "200 OK",
            "text/plain",
            &format!("dfp admin endpoint for {}: /metrics /healthz /readyz /stats /tap?stage=ID\n", stats.pipeline),
        ),
        _ => respond(&mut stream, "404 Not Found", "text/plain", &format!("no such path: {path}\n")),
    }
}

/// Keeps the rows of `batch` whose `column`, as text, equals `value`. `None` when the column is missing.
fn filter_rows(batch: &RecordBatch, column: &str, value: &str) -> Option<RecordBatch> {
    let col = batch.column_by_name(column)?;
    let text = cast(col, &DataType::Utf8).ok()?;
    let text = text.as_any().downcast_ref::<StringArray>()?;
    let keep: BooleanArray = (0..text.len()).map(|i| Some(text.is_valid(i) && text.value(i) == value)).collect();
    filter_record_batch(batch, &keep).ok()
}

fn tap(
    mut stream: TcpStream,
    stats: &Arc<RunStats>,
    stage: Option<&str>,
    limit: Option<&str>,
    filter: Option<&str>,
) -> std::io::Result<()> {
    let Some(stage) = stage.filter(|s| !s.is_empty()) else {
        return respond(&mut stream, "400 Bad Request", "text/plain", "missing ?stage=ID\n");
    };
    let Some(index) = stats.stage_index(stage) else {
        let msg = format!("no stage \"{stage}\" in {}; stages: {}\n", stats.pipeline, stats.stage_ids().join(", "));
        return respond(&mut stream, "404 Not Found", "text/plain", &msg);
    };
    let limit = match limit.map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => return respond(&mut stream, "400 Bad Request", "text/plain", "limit must be a positive integer\n"),
    };
    let filter = match filter.filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => match f.split_once('=') {
            Some((c, v)) if !c.is_empty() => Some((c.to_string(), v.to_string())),
            _ => return respond(&mut stream, "400 Bad Request", "text/plain", "filter must be COLUMN=VALUE\n"),
        },
    };
    if stats.finished.load(Ordering::Relaxed) {
        return respond(&mut stream, "410 Gone", "text/plain", "the pipeline has finished\n");
    }
    let Some(handle) = stats.taps.subscribe(index) else {
        return respond(&mut stream, "404 Not Found", "text/plain", "no such stage\n");
    };
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")?;
    let note = |v: serde_json::Value| format!("{}\n", json!({ "$tap": v }));
    stream.write_all(note(json!({"event": "attached", "stage": stage, "pipeline": stats.pipeline})).as_bytes())?;
    stream.flush()?;
    let (mut rows, mut reported_drops, mut warned) = (0u64, 0u64, false);
    let reason = loop {
        let batch = match handle.rx.recv_timeout(Duration::from_millis(500)) {
            Ok(b) => Some(b),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break "the pipeline finished",
        };
        if let Some(batch) = batch {
            let mut data = batch.data;
            if let Some((c, v)) = &filter {
                match filter_rows(&data, c, v) {
                    Some(d) => data = d,
                    None => {
                        if !warned {
                            warned = true;
                            let msg = format!("stage \"{stage}\" has no column \"{c}\"");
                            stream.write_all(note(json!({"event": "warning", "message": msg})).as_bytes())?;
                        }
                        continue;
                    }
                }
            }
            if let Some(max) = limit {
                let left = (max - rows) as usize;
                if data.num_rows() > left {
                    data = data.slice(0, left);
                }
            }
            if data.num_rows() > 0 {
                let mut buf = Vec::new();
                {
                    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                    if w.write(&data).and_then(|_| w.finish()).is_err() {
                        continue;
                    }
                }
                stream.write_all(&buf)?;
                rows += data.num_rows() as u64;
            }
        }
        let dropped = handle.dropped_rows.load(Ordering::Relaxed);
        if dropped > reported_drops {
            if let Some(m) = super::metrics() {
                m.tap_rows_dropped.add(
                    dropped - reported_drops,
                    &[
                        opentelemetry::KeyValue::new("pipeline", stats.pipeline.clone()),
                        opentelemetry::KeyValue::new("stage", stage.to_string()),
                    ],
                );
            }
            reported_drops = dropped;
            stream.write_all(note(json!({"event": "dropped", "dropped_rows": dropped})).as_bytes())?;
        }
        stream.flush()?;
        if limit.is_some_and(|max| rows >= max) {
            break "limit reached";
        }
    };
    let dropped = handle.dropped_rows.load(Ordering::Relaxed);
    stream
        .write_all(note(json!({"event": "end", "reason": reason, "rows": rows, "dropped_rows": dropped})).as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_are_decoded() {
        assert_eq!(url_decode("a%3Db+c"), "a=b c");
        assert_eq!(url_decode("caf%C3%A9"), "café");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("%zz"), "%zz");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(check_addr("127.0.0.1:9464").is_ok());
        assert!(check_addr("9464").is_err());
        assert!(check_addr("127.0.0.1:99999").is_err());
    }
}
