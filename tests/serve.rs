//! `dfp serve`, the analyst console, end to end: the real binary on a store a real pipeline wrote, its API
//! answering bad requests with clear 4xx, its token, and an analyst's session in headless Chromium
//! (Debian's, driven over the DevTools protocol): overview, filter, one event, a benign mark, a
//! suppression, then the exported labels and a pipeline run that applies the suppression.

mod common;
use common::{chromium, dfp, text};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BOB: &str = "<b>bob</b>@corp.example";

/// Scored-looking rows (three users, hourly from 2026-11-01; every fifth of cat's is an alert in an
/// incident) and one incident, as JSON lines; a pipeline that stores them through `suppress`.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let mut events = String::new();
    let mut cat_alerts = Vec::new();
    for i in 0..240u32 {
        let user = ["ann@corp.example", BOB, "cat@corp.example"][(i % 3) as usize];
        let alert = i % 5 == 0;
        let risk = if alert { 2.5 + f64::from(i % 7) * 0.5 } else { 0.2 + f64::from(i % 4) * 0.3 };
        let id = format!("ev-{i:03}");
        let in_incident = alert && user.starts_with("cat");
        if in_incident {
            cat_alerts.push(id.clone());
        }
        let row = json!({
            "id": id, "timestamp": format!("2026-11-{:02}T{:02}:00:00Z", 1 + i / 24, i % 24), "username": user,
            "appDisplayName": if i % 2 == 0 { "Office 365" } else { "Teams" },
            "location.countryOrRegion": if alert { "PT" } else { "US" }, "country": if alert { "PT" } else { "US" },
            "ipAddress": format!("198.51.100.{}", i % 9), "risk": risk, "mean_abs_z": risk, "model_kind": "user",
            "appDisplayName_z_loss": risk * 2.0, "logcount_z_loss": -0.4, "logcount": 3,
            "top_features": "appDisplayName,logcount", "risk_signals": if in_incident { "place +1.2" } else { "" },
            "incident_id": if in_incident { Value::from("inc-cat") } else { Value::Null },
        });
        events.push_str(&row.to_string());
        events.push('\n');
    }
    std::fs::write(dir.join("events.jsonl"), events).unwrap();
    let incident = json!({
        "incident_id": "inc-cat", "status": "closed", "entity": "user", "username": "cat@corp.example", "users": 1,
        "first_seen": "2026-11-01T00:00:00Z", "last_seen": "2026-11-10T23:00:00Z", "events": cat_alerts.len(),
        "event_ids": cat_alerts.join(","), "reasons": "new country", "peak_risk": 5.5,
    });
    std::fs::write(dir.join("incidents.jsonl"), format!("{incident}\n")).unwrap();
    let store = dir.join("alerts.db");
    let yaml = format!(
        r#"version: 1
family: azure
runtime: {{ workers: 1 }}
stages:
  rows:      {{ type: file-source, path: "{d}/events.jsonl", format: jsonl }}
  muted:     {{ type: suppress, inputs: [rows], store: "{s}" }}
  incidents: {{ type: file-source, path: "{d}/incidents.jsonl", format: jsonl }}
  store:     {{ type: alert-store, inputs: [muted, incidents], path: "{s}" }}
"#,
        d = dir.display(),
        s = store.display()
    );
    let pipeline = dir.join("store.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    run_pipeline(&pipeline);
    (store, pipeline)
}

fn run_pipeline(pipeline: &Path) {
    let out = dfp().args(["run", "-q"]).arg(pipeline).output().unwrap();
    assert!(out.status.success(), "the store pipeline failed:\n{}", text(&out));
}

/// A running `dfp serve` on a free loopback port; killed when dropped.
struct Console {
    child: Child,
    addr: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(store: &Path, extra: &[&str]) -> Console {
    let mut child = dfp()
        .args(["serve", "--addr", "127.0.0.1:0", "--store"])
        .arg(store)
        .args(extra)
        .env_remove("DFP_SERVE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("dfp serve printed its address within 30 s");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("dfp serve's first line names its address: {line:?}"))
        .to_string();
    Console { child, addr }
}

/// One HTTP/1.1 exchange: (status, headers in lower case, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers: HashMap<String, String> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string())).collect();
    let body = if headers.get("transfer-encoding").is_some_and(|t| t == "chunked") {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, headers, body)
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http(addr, "GET", path, &[], "");
    (status, body)
}

fn csrf(addr: &str) -> String {
    let (status, body) = get(addr, "/api/session");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["csrf"].as_str().unwrap().to_string()
}

fn post(addr: &str, path: &str, csrf: &str, body: &str) -> (u16, String) {
    let (status, _, body) =
        http(addr, "POST", path, &[("Content-Type", "application/json"), ("X-DFP-CSRF", csrf)], body);
    (status, body)
}

#[test]
fn every_route_answers_and_bad_requests_get_a_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = fixture(dir.path());
    let c = serve(&store, &[]);
    let a = c.addr.as_str();
    for path in [
        "/",
        "/app.js",
        "/app.css",
        "/healthz",
        "/api/version",
        "/api/overview",
        "/api/overview?from=2026-11-02&to=2026-11-05&bins=12",
        "/api/heatmap?bins=20&users=2",
        "/api/events?user=cat%40corp.example&sort=score&per_page=5",
        "/api/events?alerts=0&q=office&page=2",
        "/api/incidents?status=closed",
        "/api/event/ev-000",
        "/api/event/ev-000?time=2026-11-01T00:00:00Z",
        "/api/incident/inc-cat",
        "/api/suppressions",
        "/api/labels.csv",
        "/api/suppressions.csv",
    ] {
        let (status, body) = get(a, path);
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let (_, overview) = get(a, "/api/overview");
    let overview: Value = serde_json::from_str(&overview).unwrap();
    assert_eq!((overview["events"].as_i64(), overview["alerts"].as_i64()), (Some(240), Some(48)));

    let token = csrf(a);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("GET", "/api/events?page=0", String::new(), 400, "\"page\""),
        ("GET", "/api/events?per_page=100000", String::new(), 400, "\"per_page\""),
        ("GET", "/api/events?min_score=high", String::new(), 400, "\"min_score\" must be a number"),
        ("GET", "/api/events?from=yesterday", String::new(), 400, "\"from\""),
        ("GET", "/api/events?colour=red", String::new(), 400, "unknown parameter \"colour\""),
        ("GET", "/api/events?user=a&user=b", String::new(), 400, "given twice"),
        ("GET", "/api/events?status=evil", String::new(), 400, "\"status\" must be one of"),
        ("GET", "/api/events?sort=random", String::new(), 400, "\"sort\""),
        ("GET", "/api/overview?bins=0", String::new(), 400, "\"bins\""),
        ("GET", "/api/overview?from=2026-12-01&to=2026-11-01", String::new(), 400, "before"),
        ("GET", "/api/heatmap?users=-1", String::new(), 400, "\"users\""),
        ("GET", "/api/incidents?status=evil", String::new(), 400, "\"status\""),
        ("GET", "/api/incidents?min_score=%F0%9F%92%A5", String::new(), 400, "\"min_score\""),
        ("GET", "/api/event/no-such-event", String::new(), 404, "no event with id"),
        ("GET", "/api/event/ev-000?time=soon", String::new(), 400, "\"time\""),
        ("GET", "/api/event/ev-000?colour=red", String::new(), 400, "unknown parameter \"colour\""),
        ("GET", "/api/incident/no-such-incident", String::new(), 404, "no incident with id"),
        ("GET", "/api/nothing-here", String::new(), 404, "no such page"),
        ("POST", "/api/mark", "{not json".into(), 400, "must be JSON"),
        ("POST", "/api/mark", "[1, 2]".into(), 400, "JSON object"),
        (
            "POST",
            "/api/mark",
            json!({ "target": "event", "id": "ev-000", "label": "evil", "who": "ann" }).to_string(),
            400,
            "\"label\"",
        ),
        (
            "POST",
            "/api/mark",
            json!({ "target": "user", "id": "ev-000", "label": "benign", "who": "ann" }).to_string(),
            400,
            "\"target\"",
        ),
        (
            "POST",
            "/api/mark",
            json!({ "target": "event", "id": "ev-000", "label": "benign" }).to_string(),
            400,
            "\"who\"",
        ),
        (
            "POST",
            "/api/mark",
            json!({ "target": "event", "id": "ev-000", "label": "benign", "who": 7 }).to_string(),
            400,
            "\"who\" must be text",
        ),
        (
            "POST",
            "/api/mark",
            json!({ "target": "event", "id": "nope", "label": "benign", "who": "ann" }).to_string(),
            404,
            "no event",
        ),
        (
            "POST",
            "/api/mark",
            json!({ "target": "event", "id": "ev-000", "time": "soon", "label": "benign", "who": "ann" }).to_string(),
            400,
            "\"time\"",
        ),
        (
            "POST",
            "/api/mark",
            json!({ "target": "event", "id": "ev-000", "label": "benign", "who": "ann", "note": "x".repeat(3000) })
                .to_string(),
            400,
            "longer than",
        ),
        (
            "POST",
            "/api/suppressions",
            json!({ "username": "ann", "field": "colour", "value": "red", "who": "ann" }).to_string(),
            400,
            "\"field\"",
        ),
        (
            "POST",
            "/api/suppressions",
            json!({ "username": "ann", "field": "country", "value": "PT", "until": "soon", "who": "ann" }).to_string(),
            400,
            "\"until\"",
        ),
        (
            "POST",
            "/api/suppressions",
            json!({ "field": "country", "value": "PT", "who": "ann" }).to_string(),
            400,
            "\"username\"",
        ),
        ("POST", "/api/suppressions/abc/remove", "{}".into(), 400, "by its number"),
        ("POST", "/api/suppressions/999/remove", "{}".into(), 404, "no active suppression"),
    ];
    for (method, path, body, want, says) in &cases {
        let (status, _, answer) =
            http(a, method, path, &[("Content-Type", "application/json"), ("X-DFP-CSRF", &token)], body);
        assert_eq!(status, *want, "{method} {path} {body}: {answer}");
        let message = serde_json::from_str::<Value>(&answer).ok().and_then(|v| v["error"].as_str().map(str::to_string));
        let message = message.unwrap_or_else(|| panic!("{method} {path}: the error is JSON with \"error\": {answer}"));
        assert!(message.contains(says), "{method} {path}: {message:?} should say {says:?}");
    }
    // Changes need the page's CSRF value and may not come from another site or host name.
    let mark = json!({ "target": "event", "id": "ev-000", "label": "benign", "who": "ann" }).to_string();
    let (status, _, body) = http(a, "POST", "/api/mark", &[("Content-Type", "application/json")], &mark);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-DFP-CSRF"), "{body}");
    let (status, _, _) = http(
        a,
        "POST",
        "/api/mark",
        &[("Content-Type", "application/json"), ("X-DFP-CSRF", &token), ("Origin", "http://evil.example")],
        &mark,
    );
    assert_eq!(status, 403, "a post from another origin");
    let (status, _, body) = http(a, "GET", "/api/overview", &[("Host", "evil.example:80")], "");
    assert_eq!(status, 421, "a request for another host name (DNS rebinding): {body}");
    let (status, _) = post(a, "/api/mark", &token, &mark);
    assert_eq!(status, 200, "the same mark, sent as the page sends it");
    let (_, headers, _) = http(a, "GET", "/", &[], "");
    assert!(headers["content-security-policy"].contains("script-src 'self'"), "{headers:?}");
}

#[test]
fn a_token_guards_every_request_and_a_public_address_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = fixture(dir.path());
    let out = dfp()
        .args(["serve", "--addr", "0.0.0.0:0", "--store"])
        .arg(&store)
        .env_remove("DFP_SERVE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("give an access token"), "{}", text(&out));
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let out = dfp().args(["serve", "--store"]).arg(&store).arg("--token-file").arg(&short).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("shorter than 16"), "{}", text(&out));
    let out = dfp().args(["serve", "--store"]).arg(dir.path().join("none.db")).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("no such alert store"), "{}", text(&out));

    let token = "0123456789abcdef-secret";
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let c = serve(&store, &["--token-file", file.to_str().unwrap()]);
    let a = c.addr.as_str();
    let (status, _) = get(a, "/api/overview");
    assert_eq!(status, 401);
    let (status, headers, _) = http(a, "GET", "/", &[], "");
    assert_eq!((status, headers.get("location").map(String::as_str)), (303, Some("/login")));
    let (status, _, _) = http(a, "GET", "/api/overview", &[("Authorization", &format!("Bearer {token}"))], "");
    assert_eq!(status, 200);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, headers, _) = http(a, "POST", "/login", &form, "token=wrong");
    assert_eq!((status, headers.get("location").map(String::as_str)), (303, Some("/login?wrong=1")));
    assert!(!headers.contains_key("set-cookie"));
    let (status, _, page) = http(a, "GET", "/login?wrong=1", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("role=\"alert\"") && page.contains("That token is not"), "the page says why: {page}");
    let (_, _, page) = http(a, "GET", "/login", &[], "");
    assert!(!page.contains("That token is not"), "a first visit is not told it was wrong");
    let (status, headers, _) = http(a, "POST", "/login", &form, &format!("token={token}"));
    assert_eq!(status, 303);
    let cookie = headers["set-cookie"].clone();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let (status, _, _) = http(a, "GET", "/api/overview", &[("Cookie", &pair)], "");
    assert_eq!(status, 200, "the login cookie opens the console");
    let (status, _, _) = http(a, "GET", "/api/overview", &[("Cookie", "dfp_token=0123456789abcdef-secreT")], "");
    assert_eq!(status, 401);
}

// ---- headless Chromium over the DevTools protocol (on a pipe: --remote-debugging-pipe) ----------------

/// A headless Chromium with one page, driven by DevTools messages on its pipe.
struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        // Chromium reads fd 3 and writes fd 4: the pipes' own descriptors must be other ones (those taken
        // while looking stay open until the child has started).
        let mut taken = Vec::new();
        let (child_reads, to, from, child_writes) = loop {
            let (child_reads, to) = std::io::pipe().unwrap();
            let (from, child_writes) = std::io::pipe().unwrap();
            if [&child_reads.as_raw_fd(), &to.as_raw_fd(), &from.as_raw_fd(), &child_writes.as_raw_fd()]
                .iter()
                .all(|fd| **fd > 4)
            {
                break (child_reads, to, from, child_writes);
            }
            taken.push((child_reads, to, from, child_writes));
        };
        let (r, w) = (child_reads.as_raw_fd(), child_writes.as_raw_fd());
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (dup2) run, on descriptors that the
        // parent created and keeps open until the child has started.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start chromium ({e}); install Debian's chromium"));
        drop((child_reads, child_writes, taken));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser { child, to, from: rx, next: 0, session: String::new(), _profile: profile };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }), false);
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call("Target.attachToTarget", json!({ "targetId": target, "flatten": true }), false);
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Runtime.enable", json!({}), true);
        b.call("Page.enable", json!({}), true);
        b
    }

    fn call(&mut self, method: &str, params: Value, on_page: bool) -> Value {
        self.try_call(method, params, on_page).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value, on_page: bool) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if on_page {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply =
                self.from.recv_timeout(left).unwrap_or_else(|_| panic!("chromium did not answer {method} in 60 s"));
            if reply["id"] == json!(id) {
                return match reply.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }), true);
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value; a thrown error fails the test.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "awaitPromise": true, "returnByValue": true }),
            true,
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("in the page: {}\n{js}", e["exception"]["description"].as_str().unwrap_or(&e.to_string()));
        }
        r["result"]["value"].clone()
    }

    /// Waits (up to 20 s, across page loads) until `condition` (a JS expression) is truthy in the page;
    /// returns its value.
    fn wait(&mut self, condition: &str, what: &str) -> Value {
        let js = format!("(() => {{ try {{ return ({condition}); }} catch (e) {{ return null; }} }})()");
        let started = Instant::now();
        loop {
            let r = self.try_call(
                "Runtime.evaluate",
                json!({ "expression": js, "awaitPromise": true, "returnByValue": true }),
                true,
            );
            // A page that is navigating answers with an error: ask again in the next one.
            if let Ok(r) = r {
                let v = r["result"]["value"].clone();
                if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                    return v;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                let page = self.try_call(
                    "Runtime.evaluate",
                    json!({ "expression": "location.href + '\\n' + document.body.innerText.slice(0, 600)", "returnByValue": true }),
                    true,
                );
                panic!("waited 20 s for {what} ({condition}); the page:\n{page:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn an_analyst_triages_in_headless_chromium_and_the_marks_reach_eval_and_inference() {
    let dir = tempfile::tempdir().unwrap();
    let (store, pipeline) = fixture(dir.path());
    let c = serve(&store, &[]);
    let base = format!("http://{}", c.addr);
    let mut b = Browser::start();

    // Overview: counts, and a user name holding HTML shown as text.
    b.goto(&format!("{base}/#/overview"));
    b.wait("document.querySelector('#top-users tbody tr')", "the overview's users");
    assert_eq!(b.eval("document.querySelector('.card b').textContent"), json!("240"));
    let users = b.eval("[...document.querySelectorAll('#top-users td.user')].map(t => t.textContent)");
    assert!(users.as_array().unwrap().contains(&json!(BOB)), "{users}");
    assert_eq!(b.eval("document.querySelectorAll('main b b, main td.user b').length"), json!(0), "no markup from data");

    // Live: a row written while the page is open shows up without a reload (written as the sink writes:
    // the event and its hour's count).
    {
        let db = rusqlite::Connection::open(&store).unwrap();
        db.execute_batch(
            "INSERT INTO events (key, id, time_us, username, score, alert) VALUES (-99, 'live-1', 1793968200000000, 'dan', 9.0, 1);
             INSERT INTO event_hours (hour, events) VALUES (1793968200000000 / 3600000000, 1)
                 ON CONFLICT(hour) DO UPDATE SET events = events + 1;",
        )
        .unwrap();
    }
    b.wait("document.querySelector('.card b').textContent === '241'", "the overview refreshed by itself");

    // Alerts: filter with the form.
    b.goto(&format!("{base}/#/alerts"));
    b.wait("document.querySelector('table.events tbody tr')", "the alert list");
    b.eval(
        "(() => { const f = document.querySelector('#filters'); f.querySelector('[name=user]').value = 'cat@corp.example'; \
         f.querySelector('[name=sort]').value = 'score'; f.requestSubmit(); return true; })()",
    );
    b.wait("location.hash.includes('user=cat')", "the filter in the URL");
    b.wait(
        "[...document.querySelectorAll('table.events td.user')].length > 0 && \
         [...document.querySelectorAll('table.events td.user')].every(t => t.textContent === 'cat@corp.example')",
        "only cat's alerts",
    );
    // One event in depth: z-scores, profile, neighbours.
    let id = b.eval("document.querySelector('table.events tbody tr').dataset.id");
    let id = id.as_str().unwrap().to_string();
    b.eval("document.querySelector('table.events tbody tr').click(), true");
    b.wait("document.querySelector('#features tbody tr')", "the event's features");
    b.wait("location.hash.includes('?time=20')", "the event's link carries its time (found through the time index)");
    assert_eq!(b.eval("document.querySelector('#features tbody td').textContent"), json!("appDisplayName"));
    b.wait("document.querySelector('tr.this')", "the event among its neighbours");

    // Triage: benign, with a note; then a suppression of this user's country.
    b.eval(
        "(() => { const w = document.querySelector('#who'); w.value = 'analyst-1'; \
         w.dispatchEvent(new Event('change')); const f = document.querySelector('#mark'); \
         f.querySelector('[name=label]').value = 'benign'; f.querySelector('[name=note]').value = 'travel <i>ok</i>'; \
         f.requestSubmit(); return true; })()",
    );
    b.wait("document.querySelector('#mark') && document.querySelector('.history li')", "the mark in the history");
    let history = b.eval("document.querySelector('.history li').textContent");
    assert!(
        history.as_str().unwrap().contains("analyst-1") && history.as_str().unwrap().contains("travel <i>ok</i>"),
        "{history}"
    );
    b.eval(
        "(() => { const f = document.querySelector('#suppress'); f.querySelector('[name=field]').value = 'country'; \
         f.querySelector('[name=until]').value = '2026-12-31'; f.querySelector('[name=note]').value = 'trip'; \
         f.requestSubmit(); return true; })()",
    );
    let added = Instant::now();
    while !get(&c.addr, "/api/suppressions.csv").1.contains("cat@corp.example") {
        assert!(added.elapsed() < Duration::from_secs(20), "the suppression form added nothing in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The marks reach `dfp eval` as labels, the suppression reaches the `suppress` stage.
    let (status, labels) = get(&c.addr, "/api/labels.csv");
    assert_eq!(status, 200);
    assert_eq!(labels, format!("id,label,kind\n{id},0,triage-event\n"));
    let labels_file = dir.path().join("labels.csv");
    std::fs::write(&labels_file, &labels).unwrap();
    let scores = dir.path().join("scores.jsonl");
    std::fs::write(&scores, format!("{}\n", json!({ "id": id, "risk": 4.0 }))).unwrap();
    let out = dfp()
        .args(["eval", "--field", "risk", "--threshold", "2"])
        .arg("--scores")
        .arg(&scores)
        .arg("--labels")
        .arg(&labels_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "dfp eval reads the exported labels:\n{}", text(&out));
    let (_, csv) = get(&c.addr, "/api/suppressions.csv");
    assert!(csv.contains("cat@corp.example,country,PT,2026-12-31T23:59:59.999999Z,trip"), "{csv}");
    run_pipeline(&pipeline);
    let (_, suppressed) = get(&c.addr, "/api/events?status=suppressed&per_page=500");
    let suppressed: Value = serde_json::from_str(&suppressed).unwrap();
    let rows = suppressed["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 16, "cat's 16 PT events: {suppressed}");
    assert!(rows.iter().all(|r| r["username"] == "cat@corp.example" && r["alert"] == json!(false)));
    assert!(rows[0]["suppressed"].as_str().unwrap().contains("country=PT until 2026-12-31: trip (analyst-1)"));
    let (_, overview) = get(&c.addr, "/api/overview");
    let overview: Value = serde_json::from_str(&overview).unwrap();
    assert_eq!(overview["alerts"], json!(48 + 1 - 16), "suppressed events are no longer alerts");

    // A token-guarded console: the login page, then the overview.
    drop(c);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "fedcba9876543210-token\n").unwrap();
    let c = serve(&store, &["--token-file", token_file.to_str().unwrap()]);
    b.goto(&format!("http://{}/", c.addr));
    b.wait("location.pathname === '/login' && document.querySelector('#token')", "the login page");
    b.eval(
        "(() => { document.querySelector('#token').value = 'fedcba9876543210-token'; \
         document.querySelector('form').submit(); return true; })()",
    );
    b.wait("document.querySelector('#top-users')", "the overview after logging in");
}
