//! End-to-end tests of `dfp report`: the HTML page it writes, rendered by headless Chromium, and its errors.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// A username that would inject an element (and end the data's script element) if the page were careless.
const EVIL: &str = "mallory</script><b id=\"pwned\">x";

/// How the fixture scores row `i`: 6 rows above 2.0 (two per user), one exactly at 2.0 (not an alert).
fn score(i: usize) -> f64 {
    if i.is_multiple_of(7) {
        3.0 + i as f64 / 10.0
    } else if i == 1 {
        2.0
    } else {
        0.4 + (i % 5) as f64 / 10.0
    }
}

/// 40 scored events over 3 users, 2 countries and 40 hours; returns the file and the alert count.
fn write_fixture(dir: &Path) -> (PathBuf, usize) {
    let users = ["alice@contoso.com", "bob@contoso.com", EVIL];
    let mut lines = String::new();
    let mut alerts = 0;
    for i in 0..40 {
        let s = score(i);
        if s > 2.0 {
            alerts += 1;
        }
        let even = i.is_multiple_of(2);
        let row = json!({
            "id": format!("ev-{i:02}"),
            "timestamp": format!("2026-01-0{}T{:02}:{:02}:00.123456Z", 1 + i / 24, i % 24, i),
            "username": users[i % 3],
            // An unbalanced HTML comment opener in the data must not change where the data's script ends.
            "appDisplayName": if i == 14 { "<!--<script>".to_string() } else { format!("App {}", i % 4) },
            "deviceDetailbrowser": if even { "Chrome 119" } else { "Firefox 120" },
            "deviceDetailoperatingSystem": "Windows 10",
            "location": if even { "Berlin, DE" } else { "Austin, US" },
            "city": if even { "Berlin" } else { "Austin" },
            "country": if even { "DE" } else { "US" },
            "ipAddress": format!("198.51.100.{i}"),
            "model_name": "DFP-azure-test",
            "model_version": 1,
            "model_kind": if i == 21 { "generic" } else { "user" },
            "appDisplayName_z_loss": 0.5 * s,
            "country_z_loss": -1.5 * s,
            "logcount_z_loss": 0.1,
            "mean_abs_z": s,
            "max_abs_z": 1.5 * s,
            "top_features": "country,appDisplayName",
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    let path = dir.join("scored.jsonl");
    std::fs::write(&path, lines).unwrap();
    (path, alerts)
}

/// The DOM of `url` after its scripts ran, as headless Chromium dumps it (killed after 60 s).
fn dump_dom(url: &str, profile: &Path) -> String {
    let bin = common::chromium();
    let mut child = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} ({e}); install Debian's chromium", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish rendering {url} within 60 s:\n{}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = out.join().unwrap().expect("chromium's output is UTF-8");
    let log = err.join().unwrap();
    assert!(status.success(), "chromium failed ({status}) on {url}:\n{log}");
    assert!(dom.contains("</html>"), "chromium dumped no page for {url}:\n{dom}\n{log}");
    dom
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The start tag that begins at byte `i` of `s`.
fn tag_at(s: &str, i: usize) -> &str {
    let end = s[i..].find('>').map_or(s.len(), |e| i + e + 1);
    &s[i..end]
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

#[test]
fn report_renders_alerts_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (scores, alerts) = write_fixture(dir.path());
    assert_eq!(alerts, 6);
    let page = dir.path().join("out/report.html");
    let out = common::dfp()
        .args(["report", "--scores"])
        .arg(&scores)
        .arg("--out")
        .arg(&page)
        .args(["--title", "Fixture <report>"])
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("6 alerts of 40 events"), "{text}");
    assert!(text.contains("3 users"), "{text}");

    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "the page names a URL");
    for attr in ["src=", "href=", "@import", "url("] {
        assert!(!html.contains(attr), "the page loads a resource ({attr})");
    }
    assert!(html.contains(r#"<script type="application/json" id="dfp-data">"#));
    assert!(!html.contains("</script><b"), "the data ends its script element");
    assert!(!html.contains("<!--<script>"), "the data holds an unescaped comment opener");
    assert!(html.contains("<title>Fixture &lt;report&gt;</title>"));

    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&file_url(&page), profile.path());

    // The header and the alert count.
    assert!(dom.contains("Fixture &lt;report&gt;"), "title missing");
    assert!(dom.contains(r#"<span id="alert-count""#) && dom.contains("6 of 6 alerts shown"), "{dom}");
    assert!(dom.contains("events read") && dom.contains(">40<"), "event count missing");

    // One table row per alert, highest score first, the event at exactly the threshold left out.
    assert_eq!(count(&dom, r#"<tr class="alert-row"#), alerts, "{dom}");
    let ids: Vec<&str> = dom.match_indices(r#"<tr class="alert-row"#).map(|(i, _)| tag_at(&dom, i)).collect();
    for (row, id) in ids.iter().zip(["ev-35", "ev-28", "ev-21", "ev-14", "ev-07", "ev-00"]) {
        assert!(row.contains(&format!("data-id=\"{id}\"")), "rows out of score order: {row}");
    }
    assert!(!dom.contains(r#"data-id="ev-01""#), "the event at the threshold became an alert");

    // The chart: one bar per hour with an alert.
    assert!(dom.contains(r#"<div id="chart"><svg"#), "no chart svg");
    assert_eq!(count(&dom, r#"<rect class="bar"#), 6, "one bar per alert hour");
    assert!(dom.contains("alerts per hour"));

    // Top users: the three users, two alerts each.
    assert_eq!(count(&dom, r#"<tr class="user-row"#), 3);
    for user in ["alice@contoso.com", "bob@contoso.com"] {
        assert!(dom.contains(&format!("<td class=\"user\">{user}</td>")), "{user} missing from the tables");
    }
    assert_eq!(count(&dom, r#"data-alerts="2""#), 3);

    // The malicious username is text, not markup; the comment opener in a field is text too.
    assert!(dom.contains(r#"mallory&lt;/script&gt;&lt;b id="pwned"&gt;x"#), "escaped username missing");
    assert!(!dom.contains(r#"<b id="pwned""#), "the username injected an element");
    assert!(dom.contains("&lt;!--&lt;script&gt;"), "the app name with a comment opener is not shown as text");

    // The highest-scoring alert is expanded: its per-feature z-scores as bars, largest |z| first, top
    // features highlighted.
    assert_eq!(count(&dom, r#"<tr class="alert-detail""#), 1);
    let detail = &dom[dom.find(r#"<tr class="alert-detail""#).unwrap()..];
    assert!(detail.starts_with(r#"<tr class="alert-detail" data-id="ev-35""#), "{}", tag_at(detail, 0));
    let bars: Vec<&str> = detail
        .match_indices(r#"<div class="zbar"#)
        .map(|(i, _)| tag_at(detail, i))
        .filter(|tag| !tag.starts_with(r#"<div class="zbars""#))
        .collect();
    assert_eq!(bars.len(), 3, "{detail}");
    assert!(bars[0].starts_with(r#"<div class="zbar top neg" data-feature="country" data-z="-9.75""#), "{}", bars[0]);
    assert!(bars[1].starts_with(r#"<div class="zbar top" data-feature="appDisplayName" data-z="3.25""#), "{}", bars[1]);
    assert!(bars[2].starts_with(r#"<div class="zbar" data-feature="logcount" data-z="0.1""#), "{}", bars[2]);
    assert!(detail.contains("198.51.100.35"), "the event's other fields are missing");

    // The filters, set through the URL fragment, narrow the chart, top users and table together.
    let dom = dump_dom(&format!("{}#user=bob%40contoso.com&country=US", file_url(&page)), profile.path());
    assert!(dom.contains("1 of 6 alerts shown"), "{dom}");
    assert_eq!(count(&dom, r#"<tr class="alert-row"#), 1);
    assert!(dom.contains(r#"data-id="ev-07""#));
    assert_eq!(count(&dom, r#"<tr class="user-row"#), 1);
    assert_eq!(count(&dom, r#"<rect class="bar"#), 1);

    let dom = dump_dom(&format!("{}#min=4&kind=user", file_url(&page)), profile.path());
    assert!(dom.contains("3 of 6 alerts shown"), "{dom}");
    assert_eq!(count(&dom, r#"<tr class="alert-row"#), 3);
    assert!(!dom.contains(r#"data-id="ev-21""#), "the generic-model alert passed the model filter");
}

#[test]
fn report_keeps_the_highest_alerts_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (scores, _) = write_fixture(dir.path());
    let page = dir.path().join("report.html");
    let out = common::dfp()
        .args(["report", "--max-alerts", "2", "--threshold", "-1", "--scores"])
        .arg(&scores)
        .arg("--out")
        .arg(&page)
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("40 alerts of 40 events"), "{text}");
    assert!(text.contains("keeps the 2 highest-scoring"), "{text}");
    let html = std::fs::read_to_string(&page).unwrap();
    let data = &html[html.find(r#"id="dfp-data">"#).unwrap() + 14..];
    let data: serde_json::Value = serde_json::from_str(&data[..data.find("</script>").unwrap()]).unwrap();
    let ids: Vec<&str> = data["alerts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ev-35", "ev-28"]);
    assert_eq!(data["alert_count"], 40);
    assert_eq!(data["features"], json!(["appDisplayName", "country", "logcount"]));

    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&file_url(&page), profile.path());
    assert!(dom.contains("2 highest-scoring of 40 alerts; 38 lower-scoring alerts were left out"), "{dom}");
    assert_eq!(count(&dom, r#"<tr class="alert-row"#), 2);
}

#[test]
fn report_errors_name_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = common::dfp()
            .args(["report", "--scores"])
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("r.html"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        (path.display().to_string(), common::text(&out))
    };
    let good = r#"{"username":"a","mean_abs_z":1.0}"#;

    let (path, text) = run("bad-json.jsonl", &format!("{good}\n\n{{\"username\": \"b\", \n"));
    assert!(text.contains(&format!("{path}:3")) && text.contains("not JSON"), "{text}");

    let (path, text) = run("no-score.jsonl", &format!("{good}\n{{\"username\":\"b\"}}\n"));
    assert!(text.contains(&format!("{path}:2")) && text.contains("`mean_abs_z`"), "{text}");

    let (path, text) = run("text-score.jsonl", &format!("{good}\n{good}\n{{\"mean_abs_z\":\"high\"}}\n"));
    assert!(text.contains(&format!("{path}:3")) && text.contains("not a number"), "{text}");

    let (path, text) = run("array.jsonl", "[1, 2]\n");
    assert!(text.contains(&format!("{path}:1")) && text.contains("JSON object"), "{text}");

    let missing = dir.path().join("missing.jsonl");
    let out = common::dfp().args(["report", "--scores"]).arg(&missing).args(["--out", "/dev/null"]).output().unwrap();
    assert!(!out.status.success());
    assert!(common::text(&out).contains(&missing.display().to_string()), "{}", common::text(&out));

    assert!(!dir.path().join("r.html").exists(), "a failed run wrote a page");
}

#[test]
fn report_lists_each_incident_once_and_shows_its_alerts_on_a_click() {
    let dir = tempfile::tempdir().unwrap();
    let (scores, _) = write_fixture(dir.path());
    // alice's alerts (ev-00, ev-21) belong to inc-a, bob's (ev-07, ev-28) to inc-b.
    let text = std::fs::read_to_string(&scores).unwrap();
    let mut lines = String::new();
    for line in text.lines() {
        let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
        let inc = match row["id"].as_str().unwrap() {
            "ev-00" | "ev-21" => Some("inc-a"),
            "ev-07" | "ev-28" => Some("inc-b"),
            _ => None,
        };
        if let Some(inc) = inc {
            row["incident_id"] = json!(inc);
        }
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    std::fs::write(&scores, lines).unwrap();
    // Incidents are written again as they grow and close: the last row of each is the one shown.
    let incident = |id: &str, status: &str, user: &str, events: u64, peak: f64| {
        json!({"incident_id": id, "status": status, "entity": "user", "username": user,
               "first_seen": "2026-01-01T00:00:00.123456Z", "last_seen": "2026-01-01T21:21:00.123456Z",
               "events": events, "event_ids": "ev-00,ev-21", "reasons": "unusual for the user's model",
               "peak_risk": peak})
        .to_string()
    };
    let incidents = dir.path().join("incidents.jsonl");
    std::fs::write(
        &incidents,
        [
            incident("inc-a", "open", "alice@contoso.com", 1, 3.0),
            incident("inc-b", "open", "bob@contoso.com", 1, 3.7),
            incident("inc-a", "closed", "alice@contoso.com", 2, 5.1),
            incident("inc-b", "updated", "bob@contoso.com", 2, 5.8),
            // A source incident: a spray over bob and mallory from one /24, named by its prefix.
            json!({"incident_id": "inc-s", "status": "closed", "entity": "source", "username": null,
                   "source": "203.0.113.0/24", "users": 2, "first_seen": "2026-01-01T07:07:00.123456Z",
                   "last_seen": "2026-01-02T11:35:00.123456Z", "events": 2, "event_ids": "ev-07,ev-35",
                   "reasons": "password spray", "peak_risk": 4.0})
            .to_string(),
        ]
        .join("\n"),
    )
    .unwrap();
    let page = dir.path().join("report.html");
    let out = common::dfp()
        .args(["report", "--scores"])
        .arg(&scores)
        .arg("--incidents")
        .arg(&incidents)
        .arg("--out")
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(common::text(&out).contains("6 alerts of 40 events") && common::text(&out).contains("3 incidents"));

    let profile = tempfile::tempdir().unwrap();
    let dom = dump_dom(&file_url(&page), profile.path());
    let rows: Vec<&str> = dom.match_indices(r#"<tr class="incident-row"#).map(|(i, _)| tag_at(&dom, i)).collect();
    assert_eq!(rows.len(), 3, "one row per incident: {dom}");
    assert!(rows[0].contains(r#"data-id="inc-b""#) && rows[0].contains(r#"data-status="updated""#), "{}", rows[0]);
    assert!(rows[1].contains(r#"data-id="inc-a""#) && rows[1].contains(r#"data-status="closed""#), "{}", rows[1]);
    assert!(rows[1].contains(r#"data-events="2""#), "{}", rows[1]);
    assert!(rows[2].contains(r#"data-id="inc-s""#), "{}", rows[2]);
    assert!(dom.contains("<td class=\"user\">source 203.0.113.0/24</td>"), "a source incident is named by its prefix");
    assert!(dom.contains(">incidents<"), "the incident count is among the figures");

    // A source incident shows the alerts it lists.
    let dom = dump_dom(&format!("{}#incident=inc-s", file_url(&page)), profile.path());
    assert!(dom.contains("2 of 6 alerts shown"), "{dom}");

    // An incident in the address shows its alerts only.
    let dom = dump_dom(&format!("{}#incident=inc-a", file_url(&page)), profile.path());
    assert!(dom.contains("2 of 6 alerts shown"), "{dom}");
    let ids: Vec<&str> = dom.match_indices(r#"<tr class="alert-row"#).map(|(i, _)| tag_at(&dom, i)).collect();
    assert!(ids[0].contains(r#"data-id="ev-21""#) && ids[1].contains(r#"data-id="ev-00""#), "{ids:?}");
    assert!(dom.contains("incident: inc-a"), "the filter is shown as a chip");

    // A row that is not an incident stops the command, naming the file and line.
    let bad = dir.path().join("bad-incidents.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{}\n", incident("inc-a", "open", "alice@contoso.com", 1, 3.0), json!({"id": "ev-00"})),
    )
    .unwrap();
    let out = common::dfp()
        .args(["report", "--scores"])
        .arg(&scores)
        .arg("--incidents")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("bad.html"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("bad-incidents.jsonl:2") && common::text(&out).contains("incident_id"),
        "{}",
        common::text(&out)
    );
}
