//! The admin endpoint: HTTP on axum/hyper, on its own small runtime (never on a worker).
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
//!
//! **Protection** ([`AdminOptions`]). With a token, every request needs `Authorization: Bearer TOKEN`
//! (`401` otherwise) — `/healthz` and `/readyz` stay open for probes unless `protect_health` is set;
//! `/tap` (event rows: user names, addresses) and `/stats` are always behind it. With TLS the endpoint
//! serves HTTPS from a PEM certificate chain and key, read again whenever either file changes (a renewed
//! certificate needs no restart). Limits: at most `max_connections` open connections (more are closed at
//! once), request heads of at most 64 KiB (a longer request line or header is refused with 431), 10 s to
//! send a request head, at most 8 taps at a time; the server runs on 2 threads plus at most 8 tap threads,
//! whatever the number of connections. Listening on a non-loopback address without a token is allowed but
//! warned about, at start and in `/readyz`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::DataType;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::metrics::enable_metrics;
use super::stats::RunStats;
use super::ObserveError;

/// Checks that `addr` is a `HOST:PORT` this machine can resolve.
pub fn check_addr(addr: &str) -> Result<SocketAddr, String> {
    let mut found = addr.to_socket_addrs().map_err(|e| format!("\"{addr}\" is not a HOST:PORT address ({e})"))?;
    found.next().ok_or_else(|| format!("\"{addr}\" resolves to no address"))
}

/// Most connections open at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Most bytes of a request head (request line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Time to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Taps served at once (each holds a thread while it streams).
const MAX_TAPS: usize = 8;

/// HTTPS for the admin endpoint: PEM files, read again when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// How the admin endpoint is protected. `Debug` hides the token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminOptions {
    /// The bearer token every request must carry (see `protect_health`); none: open.
    pub token: Option<String>,
    /// Require the token on `/healthz` and `/readyz` too (default: they stay open for probes).
    pub protect_health: bool,
    /// Serve HTTPS.
    pub tls: Option<AdminTls>,
    /// Most open connections (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: Option<usize>,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("protect_health", &self.protect_health)
            .field("tls", &self.tls)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A running admin endpoint; stops when dropped or [`shut down`](AdminServer::shutdown).
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The certificate and key, loaded again when a file's modification time changes.
#[derive(Debug)]
struct ReloadingCert {
    files: AdminTls,
    current: RwLock<(Arc<rustls::sign::CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_cert(
    files: &AdminTls,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the private key {}: {e}", files.key.display()))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key {} cannot be used: {e}", files.key.display()))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|e| format!("{} does not match {}: {e}", files.key.display(), files.cert.display()))?;
    Ok(ck)
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let (cert_m, key_m) = (modified(&self.files.cert), modified(&self.files.key));
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.1 == cert_m && cur.2 == key_m {
                return Some(Arc::clone(&cur.0));
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        match load_cert(&self.files, &self.provider) {
            Ok(ck) => {
                tracing::info!(cert = %self.files.cert.display(), "admin endpoint: certificate reloaded");
                *cur = (Arc::new(ck), cert_m, key_m);
            }
            Err(e) => {
                // Half-written files during a renewal: keep serving the old pair, try again next time.
                tracing::warn!("admin endpoint: keeping the previous certificate: {e}");
            }
        }
        Some(Arc::clone(&cur.0))
    }
}

fn tls_acceptor(files: &AdminTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let ck = load_cert(files, &provider)?;
    let resolver = ReloadingCert {
        files: files.clone(),
        current: RwLock::new((Arc::new(ck), modified(&files.cert), modified(&files.key))),
        provider: Arc::clone(&provider),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[derive(Clone)]
struct AppState {
    stats: Arc<RunStats>,
    token: Option<Arc<str>>,
    protect_health: bool,
    taps: Arc<tokio::sync::Semaphore>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port), enables metrics, and serves the run `stats`, open to
    /// anyone who can reach it (see [`start_with`](AdminServer::start_with)).
    pub fn start(addr: &str, stats: Arc<RunStats>) -> Result<AdminServer, ObserveError> {
        Self::start_with(addr, stats, &AdminOptions::default())
    }

    /// Binds `addr`, enables metrics, and serves the run `stats` with `options` (token, TLS, limits).
    pub fn start_with(addr: &str, stats: Arc<RunStats>, options: &AdminOptions) -> Result<AdminServer, ObserveError> {
        let bind_err = |message: String| ObserveError::Bind { addr: addr.to_string(), message };
        let target = check_addr(addr).map_err(bind_err)?;
        if options.token.as_deref().is_some_and(str::is_empty) {
            return Err(bind_err("the admin token is empty".into()));
        }
        enable_metrics()?;
        let tls = options.tls.as_ref().map(tls_acceptor).transpose().map_err(bind_err)?;
        let listener = std::net::TcpListener::bind(target).map_err(|e| bind_err(e.to_string()))?;
        let local = listener.local_addr().map_err(|e| bind_err(e.to_string()))?;
        listener.set_nonblocking(true).map_err(|e| bind_err(e.to_string()))?;
        if !local.ip().is_loopback() && options.token.is_none() {
            let msg = format!(
                "the admin endpoint listens on {local} without a token: anyone who can reach it can read /stats and tap event rows (set runtime.admin.token_file)"
            );
            tracing::warn!("{msg}");
            stats.warn("", msg);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(MAX_TAPS)
            .thread_name("dfp-admin")
            .enable_all()
            .build()
            .map_err(|e| bind_err(format!("cannot start the admin runtime: {e}")))?;
        let state = AppState {
            stats,
            token: options.token.as_deref().map(Arc::from),
            protect_health: options.protect_health,
            taps: Arc::new(tokio::sync::Semaphore::new(MAX_TAPS)),
        };
        let router = router(state);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let limit = options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1);
        let thread = std::thread::Builder::new()
            .name("dfp-admin".into())
            .spawn(move || {
                runtime.block_on(serve(listener, router, tls, limit, flag));
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(|e| bind_err(e.to_string()))?;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %local, scheme, token = options.token.is_some(), "admin endpoint: /metrics /healthz /readyz /stats /tap");
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

/// Accepts connections until `stop`: each holds a permit (over the limit, a connection is closed at once)
/// and is served by hyper with a bounded request head and a time limit to send it.
async fn serve(
    listener: std::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limit: usize,
    stop: Arc<AtomicBool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin endpoint: {e}");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut refused = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (tcp, _) = match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
            Err(_) => continue,
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::debug!("admin endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(limit, refused, "admin endpoint: connection limit reached; closing new connections");
            }
            drop(tcp);
            continue;
        };
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper_util::service::TowerToHyperService::new(router);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            match tls {
                None => {
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
                }
                Some(acceptor) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await {
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/stats", get(stats_page))
        .route("/tap", get(tap))
        .fallback(|uri: axum::http::Uri| async move {
            text(StatusCode::NOT_FOUND, format!("no such path: {}\n", uri.path()))
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else { return next.run(request).await };
    let path = request.uri().path();
    if !state.protect_health && (path == "/healthz" || path == "/readyz") {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if crate::hash::same_bytes(g.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "this admin endpoint needs a token: Authorization: Bearer TOKEN (dfp top/tap: --token-file)\n",
            );
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn index(State(state): State<AppState>) -> Response {
    text(
        StatusCode::OK,
        format!("dfp admin endpoint for {}: /metrics /healthz /readyz /stats /tap?stage=ID\n", state.stats.pipeline),
    )
}

async fn metrics_page() -> Response {
    let body = super::metrics().map(|m| m.encode()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.stats.readiness() {
        Ok(()) => {
            // Problems that do not stop the run are listed, but the pipeline stays ready.
            let warnings: String = state.stats.warnings().iter().map(|w| format!("warning: {w}\n")).collect();
            text(StatusCode::OK, format!("ready\n{warnings}"))
        }
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{}\n", why.join("\n"))),
    }
}

async fn stats_page(State(state): State<AppState>) -> Response {
    let body = serde_json::to_string(&state.stats.snapshot()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Keeps the rows of `batch` whose `column`, as text, equals `value`. `None` when the column is missing.
fn filter_rows(batch: &RecordBatch, column: &str, value: &str) -> Option<RecordBatch> {
    let col = batch.column_by_name(column)?;
    let text = cast(col, &DataType::Utf8).ok()?;
    let text = text.as_any().downcast_ref::<StringArray>()?;
    let keep: BooleanArray = (0..text.len()).map(|i| Some(text.is_valid(i) && text.value(i) == value)).collect();
    filter_record_batch(batch, &keep).ok()
}

async fn tap(State(state): State<AppState>, Query(params): Query<Vec<(String, String)>>) -> Response {
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let stats = Arc::clone(&state.stats);
    let Some(stage) = param("stage").filter(|s| !s.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "missing ?stage=ID\n");
    };
    let Some(index) = stats.stage_index(&stage) else {
        let msg = format!("no stage \"{stage}\" in {}; stages: {}\n", stats.pipeline, stats.stage_ids().join(", "));
        return text(StatusCode::NOT_FOUND, msg);
    };
    let limit = match param("limit").map(|l| l.parse::<u64>()) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => return text(StatusCode::BAD_REQUEST, "limit must be a positive integer\n"),
    };
    let filter = match param("filter").filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => match f.split_once('=') {
            Some((c, v)) if !c.is_empty() => Some((c.to_string(), v.to_string())),
            _ => return text(StatusCode::BAD_REQUEST, "filter must be COLUMN=VALUE\n"),
        },
    };
    if stats.finished.load(Ordering::Relaxed) {
        return text(StatusCode::GONE, "the pipeline has finished\n");
    }
    let Ok(permit) = Arc::clone(&state.taps).try_acquire_owned() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("{MAX_TAPS} taps are open already; try again later\n"));
    };
    let Some(handle) = stats.taps.subscribe(index) else {
        return text(StatusCode::NOT_FOUND, "no such stage\n");
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let send = |bytes: Vec<u8>| tx.blocking_send(Ok(Bytes::from(bytes))).is_ok();
        stream_tap(&stats, &stage, handle, limit, filter, send);
    });
    let body =
        Body::from_stream(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Streams one tap's rows through `send` (false once the reader is gone), on a blocking thread.
fn stream_tap(
    stats: &RunStats,
    stage: &str,
    handle: super::tap::TapHandle,
    limit: Option<u64>,
    filter: Option<(String, String)>,
    send: impl Fn(Vec<u8>) -> bool,
) {
    let note = |v: serde_json::Value| format!("{}\n", json!({ "$tap": v })).into_bytes();
    if !send(note(json!({"event": "attached", "stage": stage, "pipeline": stats.pipeline}))) {
        return;
    }
    let (mut rows, mut reported_drops, mut warned) = (0u64, 0u64, false);
    let reason = loop {
        let batch = match handle.rx.recv_timeout(Duration::from_millis(500)) {
            Ok(b) => Some(b),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break "the pipeline finished",
        };
        let mut out = Vec::new();
        if let Some(batch) = batch {
            let mut data = batch.data;
            if let Some((c, v)) = &filter {
                match filter_rows(&data, c, v) {
                    Some(d) => data = d,
                    None => {
                        if !warned {
                            warned = true;
                            let msg = format!("stage \"{stage}\" has no column \"{c}\"");
                            out.extend(note(json!({"event": "warning", "message": msg})));
                        }
                        data = data.slice(0, 0);
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
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                if w.write(&data).and_then(|_| w.finish()).is_ok() {
                    rows += data.num_rows() as u64;
                }
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
            out.extend(note(json!({"event": "dropped", "dropped_rows": dropped})));
        }
        // An empty chunk still tells whether the reader is there.
        if !send(out) {
            return;
        }
        if limit.is_some_and(|max| rows >= max) {
            break "limit reached";
        }
    };
    let dropped = handle.dropped_rows.load(Ordering::Relaxed);
    let _ = send(note(json!({"event": "end", "reason": reason, "rows": rows, "dropped_rows": dropped})));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_hide_the_token() {
        let o = AdminOptions { token: Some("s3cret-token".into()), ..Default::default() };
        let debug = format!("{o:?}");
        assert!(!debug.contains("s3cret") && debug.contains("***"), "{debug}");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(check_addr("127.0.0.1:9464").is_ok());
        assert!(check_addr("9464").is_err());
        assert!(check_addr("127.0.0.1:99999").is_err());
    }
}
