//! `dfp serve`: the analyst console, a web application over an alert store (the SQLite file an
//! `alert-store` sink writes), on axum. Pages, script and styles are in the binary (`serve/`); the pages
//! ask the JSON API below, which `dfp_stages::console` answers. Nothing is fetched from another host.
//!
//! Access: on a loopback address the console needs no token (only this machine can reach it); on any
//! other address it refuses to start without one (`--token-file`, or `DFP_SERVE_TOKEN`), and with one,
//! every request carries it (the login page sets it as an HttpOnly, SameSite=Strict cookie; programs send
//! `Authorization: Bearer …`). Requests that change something (marks, suppressions) are JSON posts with the
//! console's per-process CSRF value in `X-DFP-CSRF`, which only a page served by the console can read, and
//! a post from another origin is refused. Without a token, a request whose `Host` is not the console's own
//! address is refused, so that a web page elsewhere cannot reach a loopback console through DNS rebinding.
//!
//! API (all JSON unless said; a bad parameter is a 400 naming it, an unknown id a 404):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/overview?from&to&bins` | events and alerts over time, alerts by country/browser/app/model, top users |
//! | `GET /api/heatmap?from&to&bins&users` | users × time bins, the worst score in each |
//! | `GET /api/events?user&from&to&country&app&browser&min_score&status&q&alerts&sort&page&per_page` | alerts (or events) |
//! | `GET /api/incidents?user&from&to&min_score&status&q&sort&page&per_page` | incidents |
//! | `GET /api/event/{id}?time`, `GET /api/incident/{id}` | one in depth (`time`: the event's, to find it at once) |
//! | `POST /api/mark` `{target, id, time, label, note, who}` | triage (`time`: an event's, optional) |
//! | `GET /api/suppressions`, `POST /api/suppressions` `{username, field, value, until, note, who}`, `POST /api/suppressions/{id}/remove` | suppressions |
//! | `GET /api/labels.csv`, `GET /api/suppressions.csv` | exports for `dfp eval --labels` and `suppress` `path:` |
//! | `GET /api/version` | changes whenever the store does (the pages poll it) |
//! | `GET /healthz` | `ok` |

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use dfp_stages::console::{Console, ConsoleError};
use serde_json::{json, Value};

/// Arguments of `dfp serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The alert store (an `alert-store` sink's `path`).
    #[arg(long)]
    store: PathBuf,
    /// Where to listen. Any address other than a loopback one needs a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// A file whose first line is the access token (at least 16 characters). Also DFP_SERVE_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// The console's shared state.
struct App {
    console: Console,
    token: Option<String>,
    /// The value pages send back with every change (`X-DFP-CSRF`).
    csrf: String,
    /// The `Host` values the console answers to (its own address, and `localhost` on loopback).
    hosts: Vec<String>,
}

type Shared = Arc<App>;

pub(crate) fn serve(args: ServeArgs) -> Result<ExitCode> {
    let console = Console::open(&args.store).map_err(|e| anyhow::anyhow!(e))?;
    let addr: SocketAddr = args
        .addr
        .to_socket_addrs()
        .with_context(|| format!("--addr {}: not an address (write 127.0.0.1:8080 or 0.0.0.0:8080)", args.addr))?
        .next()
        .with_context(|| format!("--addr {}: resolves to no address", args.addr))?;
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        ),
        None => std::env::var("DFP_SERVE_TOKEN").ok().map(|t| t.trim().to_string()),
    };
    if let Some(t) = &token {
        if t.chars().count() < 16 {
            bail!("the access token is shorter than 16 characters: use a long random one (openssl rand -hex 24)");
        }
    }
    if !addr.ip().is_loopback() && token.is_none() {
        bail!(
            "--addr {addr} is reachable from other machines: give an access token (--token-file FILE or \
             DFP_SERVE_TOKEN), or listen on 127.0.0.1"
        );
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_io().build().context("starting the console's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let mut hosts = vec![bound.to_string()];
        if bound.ip().is_loopback() {
            hosts.push(format!("localhost:{}", bound.port()));
            if bound.port() == 80 {
                hosts.extend(["localhost".to_string(), bound.ip().to_string()]);
            }
        }
        let app = Arc::new(App { console, token, csrf: random_hex(16), hosts });
        println!(
            "dfp serve: http://{bound}/ (store {}{}; Ctrl-C stops)",
            args.store.display(),
            if app.token.is_some() { ", token required" } else { "" }
        );
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        ctrlc::set_handler(move || {
            let _ = stop_tx.send(());
        })
        .context("installing the Ctrl-C handler")?;
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async move {
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            })
            .await
            .context("the console stopped")?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { asset(HTML, include_str!("serve/index.html")) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("serve/app.js")) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("serve/app.css")) }))
        .route("/login", get(login_page).post(login))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/session", get(session))
        .route("/api/version", get(version))
        .route("/api/overview", get(overview))
        .route("/api/heatmap", get(heatmap))
        .route("/api/events", get(events))
        .route("/api/incidents", get(incidents))
        .route("/api/event/{id}", get(event))
        .route("/api/incident/{id}", get(incident))
        .route("/api/mark", post(mark))
        .route("/api/suppressions", get(suppressions).post(suppress))
        .route("/api/suppressions/{id}/remove", post(unsuppress))
        .route("/api/labels.csv", get(labels))
        .route("/api/suppressions.csv", get(suppressions_csv))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page or API route".into()) })
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

/// A JSON error body with its status.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn console_error(e: ConsoleError) -> Response {
    match e {
        ConsoleError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        ConsoleError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        ConsoleError::Store(m) => {
            tracing::error!(error = %m, "console: the store could not answer");
            error(StatusCode::INTERNAL_SERVER_ERROR, "the store could not answer (see the console's log)".into())
        }
    }
}

const HTML: &str = "text/html; charset=utf-8";

/// A file built into the binary (a page, the script, the styles).
fn asset(kind: &'static str, body: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    // Without /dev/urandom, the clock and the process id (still unguessable enough for a loopback console).
    if buf.iter().all(|b| *b == 0) {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id());
        buf = seed.to_le_bytes()[..bytes.min(16)].to_vec();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit (a token compared byte by byte would leak its prefix through timing).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("dfp_token="))
        .next()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Host check, token, CSRF, and the security headers every answer carries.
async fn guard(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !app.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) && app.token.is_none() {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this console answers to {}, not \"{host}\"", app.hosts[0]),
        );
    }
    let path = req.uri().path().to_string();
    let open = matches!(path.as_str(), "/login" | "/healthz" | "/app.css");
    if let (Some(token), false) = (&app.token, open) {
        let given = bearer(headers).or_else(|| cookie_token(headers));
        if !given.is_some_and(|g| same(g, token)) {
            return if path.starts_with("/api/") || req.method() != Method::GET {
                error(StatusCode::UNAUTHORIZED, "a valid access token is required (log in at /login)".into())
            } else {
                (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response()
            };
        }
    }
    if req.method() == Method::POST {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            let own = origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(host));
            if !own {
                return error(StatusCode::FORBIDDEN, format!("a change from another site ({origin}) is refused"));
            }
        }
        if path != "/login" {
            let csrf = headers.get("x-dfp-csrf").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !same(csrf, &app.csrf) {
                return error(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-DFP-CSRF header (read it from GET /api/session)".into(),
                );
            }
        }
    }
    let api = path.starts_with("/api/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; \
             form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// The login page; after a wrong token (`?wrong=1`, where [`login`] sends it back) it says so.
async fn login_page(RawQuery(query): RawQuery) -> Response {
    const PAGE: &str = include_str!("serve/login.html");
    if query.as_deref() != Some("wrong=1") {
        return asset(HTML, PAGE);
    }
    let said = "<p class=\"error\" role=\"alert\">That token is not this console's: check the file or variable \
                <code>dfp serve</code> was started with.</p>\n  <form";
    asset(HTML, PAGE.replacen("<form", said, 1))
}

async fn login(
    State(app): State<Shared>,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return error(StatusCode::BAD_REQUEST, "send the form field \"token\"".into());
    };
    match &app.token {
        Some(token) if same(form.token.trim(), token) => {
            let cookie = format!("dfp_token={token}; HttpOnly; SameSite=Strict; Path=/");
            (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/".to_string())]).into_response()
        }
        Some(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/login?wrong=1")]).into_response(),
        None => (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response(),
    }
}

async fn session(State(app): State<Shared>) -> Response {
    Json(json!({ "csrf": app.csrf, "store": app.console.path().display().to_string(), "token": app.token.is_some() }))
        .into_response()
}

/// Runs a console call off the async thread (SQLite blocks) and turns its answer into a response.
async fn answer<T, F>(app: &Shared, call: F) -> Response
where
    F: FnOnce(&Console) -> Result<T, ConsoleError> + Send + 'static,
    T: IntoResponse + Send + 'static,
{
    let console = app.console.clone();
    match tokio::task::spawn_blocking(move || call(&console)).await {
        Ok(Ok(v)) => v.into_response(),
        Ok(Err(e)) => console_error(e),
        Err(e) => {
            tracing::error!(error = %e, "console: a query panicked");
            error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed (see the console's log)".into())
        }
    }
}

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// A request refused before it reaches the console: its status and message.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn pairs(q: Pairs) -> Result<Vec<(String, String)>, Reject> {
    q.map(|Query(p)| p).map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("the query string cannot be read: {e}")))
}

macro_rules! listing {
    ($name:ident, $method:ident) => {
        async fn $name(State(app): State<Shared>, q: Pairs) -> Response {
            match pairs(q) {
                Ok(p) => answer(&app, move |c| c.$method(&p).map(Json)).await,
                Err(r) => r.into_response(),
            }
        }
    };
}
listing!(overview, overview);
listing!(heatmap, heatmap);
listing!(events, events);
listing!(incidents, incidents);

async fn version(State(app): State<Shared>) -> Response {
    answer(&app, |c| c.version().map(|v| Json(json!({ "version": v })))).await
}

async fn event(State(app): State<Shared>, Path(id): Path<String>, q: Pairs) -> Response {
    match pairs(q) {
        Ok(p) => answer(&app, move |c| c.event(&id, &p).map(Json)).await,
        Err(r) => r.into_response(),
    }
}

async fn incident(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    answer(&app, move |c| c.incident(&id).map(Json)).await
}

/// A JSON object body's text field (missing: empty); an error naming a field of another type.
fn field(body: &Value, name: &str) -> Result<String, Reject> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Reject(StatusCode::BAD_REQUEST, format!("\"{name}\" must be text, not {other}"))),
    }
}

fn body(b: Result<Json<Value>, JsonRejection>) -> Result<Value, Reject> {
    match b {
        Ok(Json(v @ Value::Object(_))) => Ok(v),
        Ok(Json(_)) => Err(Reject(StatusCode::BAD_REQUEST, "the body must be a JSON object".into())),
        Err(e) => Err(Reject(e.status(), format!("the body must be JSON (Content-Type: application/json): {e}"))),
    }
}

async fn mark(State(app): State<Shared>, b: Result<Json<Value>, JsonRejection>) -> Response {
    let fields = body(b).and_then(|v| {
        let text = |name: &str| field(&v, name);
        Ok([text("target")?, text("id")?, text("time")?, text("label")?, text("note")?, text("who")?])
    });
    match fields {
        Ok([target, id, time, label, note, who]) => {
            answer(&app, move |c| c.mark(&target, &id, &time, &label, &note, &who).map(Json)).await
        }
        Err(r) => r.into_response(),
    }
}

async fn suppressions(State(app): State<Shared>) -> Response {
    answer(&app, |c| c.suppressions().map(Json)).await
}

async fn suppress(State(app): State<Shared>, b: Result<Json<Value>, JsonRejection>) -> Response {
    let fields = body(b).and_then(|v| {
        Ok([
            field(&v, "username")?,
            field(&v, "field")?,
            field(&v, "value")?,
            field(&v, "until")?,
            field(&v, "note")?,
            field(&v, "who")?,
        ])
    });
    match fields {
        Ok([user, f, value, until, note, who]) => {
            answer(&app, move |c| c.suppress(&user, &f, &value, &until, &note, &who).map(Json)).await
        }
        Err(r) => r.into_response(),
    }
}

async fn unsuppress(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, format!("a suppression is named by its number, not \"{id}\""));
    };
    answer(&app, move |c| c.unsuppress(id).map(Json)).await
}

fn csv(name: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response()
}

async fn labels(State(app): State<Shared>) -> Response {
    answer(&app, |c| c.labels_csv().map(|b| csv("labels.csv", b))).await
}

async fn suppressions_csv(State(app): State<Shared>) -> Response {
    answer(&app, |c| c.suppressions_csv().map(|b| csv("suppressions.csv", b))).await
}
