// dfp console: one page, views chosen by the URL's hash (#/alerts?user=…), data from /api/*.
// Every value from the store is put into the page as text (textContent), never as markup.
"use strict";

const state = { csrf: "", version: null, route: "", busy: false };

// ---- small helpers -------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function fmtTime(t) { return t ? t.replace("T", " ").replace("Z", "") : ""; }
function fmtScore(x) { return x === null || x === undefined ? "" : Number(x).toFixed(2); }
function scoreCell(x) { return h("td", { class: "num score" + (x > 4 ? " high" : "") }, fmtScore(x)); }
function badge(label) { return label ? h("span", { class: "badge " + label }, label.replace("_", " ")) : ""; }
function go(view, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const qs = q.toString();
  location.hash = "#/" + view + (qs ? "?" + qs : "");
}

async function api(path, options) {
  const opts = options || {};
  const init = { method: opts.method || "GET", headers: {}, credentials: "same-origin" };
  if (opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-DFP-CSRF"] = state.csrf;
    init.body = JSON.stringify(opts.body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}

function who() {
  const el = document.getElementById("who");
  return el.value.trim();
}

function errorBox(e) { return h("p", { class: "error", role: "alert" }, String(e.message || e)); }

// ---- routing and live updates --------------------------------------------------------------------------

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "") || "overview";
  const [path, qs] = raw.split("?");
  const parts = path.split("/");
  return { view: parts[0], id: parts.slice(1).map(decodeURIComponent).join("/"), params: new URLSearchParams(qs || "") };
}

async function render() {
  const route = parseRoute();
  state.route = location.hash;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === route.view);
  const main = document.getElementById("main");
  const views = { overview, heatmap, alerts, incidents, event: eventView, incident: incidentView, suppressions };
  const view = views[route.view];
  try {
    const content = view ? await view(route) : h("p", { class: "error" }, "No such page: " + route.view);
    main.replaceChildren(content);
    main.dataset.view = route.view;
  } catch (e) {
    main.replaceChildren(errorBox(e));
  }
}

async function poll() {
  const live = document.getElementById("live");
  try {
    const { version } = await api("/api/version");
    const editing = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (state.version !== null && version !== state.version && !editing) await render();
    if (!editing || state.version === null) state.version = version;
    live.textContent = "live · checked " + new Date().toLocaleTimeString();
    live.classList.remove("off");
  } catch (e) {
    live.textContent = "store unreachable: " + e.message;
    live.classList.add("off");
  }
}

// ---- filter forms and tables ----------------------------------------------------------------------------

function filterForm(view, params, fields) {
  const inputs = {};
  const form = h("form", { class: "filters", id: "filters" });
  for (const [name, label, kind, options] of fields) {
    let input;
    if (kind === "select") {
      input = h("select", { name }, options.map(([v, t]) => h("option", { value: v, selected: params.get(name) === v }, t)));
    } else {
      input = h("input", { name, type: kind || "text", value: params.get(name) || "", size: kind === "number" ? 5 : 14, step: "any" });
    }
    inputs[name] = input;
    form.append(h("label", {}, label, input));
  }
  form.append(h("button", { type: "submit" }, "Apply"), h("button", { type: "button", class: "plain", onclick: () => go(view, {}) }, "Clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = {};
    for (const [name, input] of Object.entries(inputs)) p[name] = input.value.trim();
    go(view, p);
  });
  return form;
}

function pager(view, params, data) {
  const pages = Math.max(1, Math.ceil(data.total / data.per_page));
  const to = (page) => () => { const p = Object.fromEntries(params); p.page = page; go(view, p); };
  return h("div", { class: "pager" },
    h("button", { type: "button", class: "plain", disabled: data.page <= 1, onclick: to(data.page - 1) }, "← Newer"),
    h("span", { class: "muted" }, `page ${data.page} of ${pages} · ${data.total.toLocaleString()} rows`),
    h("button", { type: "button", class: "plain", disabled: data.page >= pages, onclick: to(data.page + 1) }, "Older →"));
}

function eventTable(rows, highlight) {
  return h("table", { class: "events" },
    h("thead", {}, h("tr", {}, ["Time", "User", "Risk", "App", "Country", "Browser", "IP", "Model", "Incident", "Status"].map((t) => h("th", { class: t === "Risk" ? "num" : "" }, t)))),
    h("tbody", {}, rows.map((r) => {
      const e = r.event || r;
      return h("tr", { class: "click" + (r.this ? " this" : ""), "data-id": e.id, onclick: () => go("event/" + encodeURIComponent(e.id), { time: e.time }) },
        h("td", {}, fmtTime(e.time)), h("td", { class: "user" }, e.username || ""), scoreCell(e.score), h("td", {}, e.app || ""),
        h("td", {}, e.country || ""), h("td", {}, e.browser || ""), h("td", {}, e.ip || ""), h("td", {}, e.model_kind || ""),
        h("td", {}, e.incident_id ? h("a", { href: "#/incident/" + encodeURIComponent(e.incident_id), onclick: (ev) => ev.stopPropagation() }, "incident") : ""),
        h("td", {}, e.suppressed ? badge("suppressed") : "", badge(e.mark)));
    })));
}

function countTable(title, rows, key) {
  return h("div", { class: "panel" }, h("h2", {}, title), h("table", {},
    h("tbody", {}, rows.map((r) => h("tr", { class: "click", onclick: () => go("alerts", key ? { [key]: r.value } : {}) },
      h("td", {}, r.value), h("td", { class: "num" }, r.alerts.toLocaleString()))))));
}

// ---- views ----------------------------------------------------------------------------------------------

async function overview(route) {
  const p = route.params;
  const d = await api("/api/overview?" + new URLSearchParams(Object.fromEntries(p)));
  const form = filterForm("overview", p, [["from", "From", "date"], ["to", "To", "date"]]);
  const cards = h("div", { class: "cards" },
    [["Events", d.events], ["Alerts", d.alerts], ["Incidents", d.incidents], ["Triage marks", d.marks]].map(([t, n]) =>
      h("div", { class: "card" }, t, h("b", {}, Number(n).toLocaleString()))));
  // Events (grey) and alerts (red) per bin, each scaled to its own maximum.
  const W = 1000, H = 150, n = d.series.length, bw = W / Math.max(1, n);
  const maxE = Math.max(1, ...d.series.map((b) => b.events)), maxA = Math.max(1, ...d.series.map((b) => b.alerts));
  const chart = s("svg", { viewBox: `0 0 ${W} ${H * 2 + 20}`, width: "100%", role: "img", "aria-label": "events and alerts over time" },
    d.series.map((b, i) => [
      s("rect", { x: i * bw + 1, y: H - (b.events / maxE) * H, width: Math.max(1, bw - 2), height: (b.events / maxE) * H, fill: "#9aa5b8" }, s("title", {}, `${fmtTime(b.start)}: ${b.events} events`)),
      s("rect", { x: i * bw + 1, y: 2 * H + 20 - (b.alerts / maxA) * H, width: Math.max(1, bw - 2), height: (b.alerts / maxA) * H, fill: "#c62828" }, s("title", {}, `${fmtTime(b.start)}: ${b.alerts} alerts`)),
    ]),
    s("text", { x: 4, y: 14, "font-size": 12, fill: "#6b7280" }, `events (max ${maxE} per bin)`),
    s("text", { x: 4, y: H + 34, "font-size": 12, fill: "#6b7280" }, `alerts (max ${maxA} per bin)`));
  const users = h("div", { class: "panel" }, h("h2", {}, "Users by risk"), h("table", { id: "top-users" },
    h("thead", {}, h("tr", {}, h("th", {}, "User"), h("th", { class: "num" }, "Highest risk"), h("th", { class: "num" }, "Alerts"), h("th", { class: "num" }, "Incidents"))),
    h("tbody", {}, d.top_users.map((u) => h("tr", { class: "click", onclick: () => go("alerts", { user: u.username }) },
      h("td", { class: "user" }, u.username), scoreCell(u.max_score), h("td", { class: "num" }, u.alerts), h("td", { class: "num" }, u.incidents))))));
  return h("section", {}, h("h1", {}, "Overview"), form,
    h("p", { class: "muted" }, `${fmtTime(d.from)} – ${fmtTime(d.to)} (stored: ${fmtTime(d.stored_from)} – ${fmtTime(d.stored_to)})`),
    cards, h("div", { class: "panel" }, h("h2", {}, "Events and alerts over time"), chart),
    h("div", { class: "cols" }, users, h("div", { class: "grid" },
      countTable("Alerts by country", d.by_country, "country"), countTable("Alerts by browser", d.by_browser, "browser"),
      countTable("Alerts by app", d.by_app, "app"), countTable("Alerts by model kind", d.by_model_kind, null))));
}

function heatColour(x) {
  if (x === null || x === undefined) return "#eef0f4";
  const t = Math.max(0, Math.min(1, x / 6));
  const r = 255, g = Math.round(245 - 200 * t), b = Math.round(220 - 200 * t);
  return `rgb(${r},${g},${b})`;
}

async function heatmap(route) {
  const p = route.params;
  const d = await api("/api/heatmap?" + new URLSearchParams(Object.fromEntries(p)));
  const form = filterForm("heatmap", p, [["from", "From", "date"], ["to", "To", "date"], ["users", "Users", "number"], ["bins", "Bins", "number"]]);
  const nb = d.bins.length, cw = Math.max(8, Math.floor(900 / Math.max(1, nb))), ch = 18, left = 220;
  const svg = s("svg", { width: left + nb * cw + 10, height: d.users.length * ch + 30, id: "heat", role: "img", "aria-label": "users by time, worst score" },
    d.users.map((u, row) => [
      s("text", { x: left - 6, y: row * ch + 13, "text-anchor": "end", "font-size": 12, fill: "#1d2330" }, u.username),
      u.cells.map((x, col) => s("rect", {
        class: "cell", x: left + col * cw, y: row * ch, width: cw, height: ch, fill: heatColour(x),
        "data-user": u.username, "data-bin": col,
        onclick: () => {
          const from = Date.parse(d.bins[col]);
          go("alerts", { user: u.username, from: d.bins[col], to: new Date(from + d.bin_us / 1000 - 1).toISOString(), alerts: "0" });
        },
      }, s("title", {}, `${u.username} · ${fmtTime(d.bins[col])} · ${u.events[col]} events · worst ${x === null ? "–" : fmtScore(x)}`)))]),
    s("text", { x: left, y: d.users.length * ch + 20, "font-size": 12, fill: "#6b7280" }, fmtTime(d.from)),
    s("text", { x: left + nb * cw, y: d.users.length * ch + 20, "font-size": 12, fill: "#6b7280", "text-anchor": "end" }, fmtTime(d.to)));
  return h("section", {}, h("h1", {}, "Heat map"), form,
    h("p", { class: "muted" }, "The users with the highest alert scores; colour: the worst score of the user's events in each bin. Click a cell for its events."),
    d.users.length ? h("div", { class: "panel" }, svg) : h("p", {}, "No alerts in this range."));
}

async function alerts(route) {
  const p = route.params;
  const d = await api("/api/events?" + new URLSearchParams(Object.fromEntries(p)));
  const form = filterForm("alerts", p, [
    ["user", "User"], ["from", "From", "date"], ["to", "To", "date"], ["country", "Country"], ["app", "App"], ["browser", "Browser"],
    ["min_score", "Min risk", "number"], ["q", "Search (user, app, IP)"],
    ["status", "Status", "select", [["", "any"], ["unmarked", "unmarked"], ["malicious", "malicious"], ["benign", "benign"], ["needs_review", "needs review"], ["suppressed", "suppressed"]]],
    ["alerts", "Rows", "select", [["1", "alerts"], ["0", "all events"]]],
    ["sort", "Sort", "select", [["time", "newest first"], ["score", "highest risk first"]]],
  ]);
  return h("section", {}, h("h1", {}, p.get("alerts") === "0" ? "Events" : "Alerts"), form, pager("alerts", p, d),
    d.rows.length ? h("div", { class: "panel" }, eventTable(d.rows)) : h("p", {}, "Nothing matches."), pager("alerts", p, d),
    h("p", {}, h("a", { href: "/api/labels.csv", download: "labels.csv" }, "Download the triage labels (for dfp eval --labels)")));
}

async function incidents(route) {
  const p = route.params;
  const d = await api("/api/incidents?" + new URLSearchParams(Object.fromEntries(p)));
  const form = filterForm("incidents", p, [
    ["user", "User or source"], ["from", "From", "date"], ["to", "To", "date"], ["min_score", "Min peak risk", "number"], ["q", "Search"],
    ["status", "Status", "select", [["", "any"], ["open", "open"], ["updated", "updated"], ["closed", "closed"], ["unmarked", "unmarked"], ["malicious", "malicious"], ["benign", "benign"], ["needs_review", "needs review"]]],
    ["sort", "Sort", "select", [["time", "latest first"], ["score", "highest risk first"]]],
  ]);
  const table = h("table", {},
    h("thead", {}, h("tr", {}, ["Last seen", "First seen", "Entity", "User / source", "Events", "Peak risk", "Reasons", "Status", "Mark"].map((t) => h("th", {}, t)))),
    h("tbody", {}, d.rows.map((r) => h("tr", { class: "click", onclick: () => go("incident/" + encodeURIComponent(r.incident_id)) },
      h("td", {}, fmtTime(r.last_seen)), h("td", {}, fmtTime(r.first_seen)), h("td", {}, r.entity), h("td", { class: "user" }, r.username || r.source || ""),
      h("td", { class: "num" }, r.events), scoreCell(r.peak_risk), h("td", {}, r.reasons || ""), h("td", {}, r.status), h("td", {}, badge(r.mark))))));
  return h("section", {}, h("h1", {}, "Incidents"), form, pager("incidents", p, d),
    d.rows.length ? h("div", { class: "panel" }, table) : h("p", {}, "Nothing matches."), pager("incidents", p, d));
}

function markForm(target, id, marks, time) {
  const label = h("select", { name: "label" }, [["malicious", "malicious"], ["benign", "benign"], ["needs_review", "needs review"]].map(([v, t]) =>
    h("option", { value: v, selected: marks.current && marks.current.label === v }, t)));
  const note = h("textarea", { name: "note", rows: 2, maxlength: 2000, placeholder: "why (optional)" });
  const status = h("p", { class: "status", role: "status" });
  const form = h("form", { class: "stack", id: "mark" }, h("label", {}, "Verdict", label), h("label", {}, "Note", note), h("button", { type: "submit" }, "Save mark"), status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      if (!who()) throw new Error("Write your name in the Analyst box at the top first.");
      await api("/api/mark", { method: "POST", body: { target, id, time: time || "", label: label.value, note: note.value, who: who() } });
      status.replaceChildren(h("span", { class: "ok" }, "Saved."));
      document.activeElement.blur();
      await render();
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  const history = h("ul", { class: "history" }, marks.history.map((m) =>
    h("li", {}, badge(m.label), " ", m.who, ", ", fmtTime(m.at), m.note ? ": " + m.note : "")));
  return h("div", { class: "panel" }, h("h2", {}, "Triage"), form, marks.history.length ? history : h("p", { class: "muted" }, "Not marked yet."));
}

function suppressForm(e) {
  const fields = ["country", "city", "app", "browser", "device", "ip"].filter((f) => e[f]);
  if (!e.username || !fields.length) return "";
  const field = h("select", { name: "field" }, fields.map((f) => h("option", { value: f }, `${f} = ${e[f]}`)));
  const until = h("input", { type: "date", name: "until" });
  const note = h("input", { name: "note", placeholder: "e.g. business trip", maxlength: 2000 });
  const status = h("p", { class: "status", role: "status" });
  const form = h("form", { class: "stack", id: "suppress" }, h("label", {}, "Suppress this user's events with", field), h("label", {}, "Until (empty: no end)", until), h("label", {}, "Note", note), h("button", { type: "submit" }, "Add suppression"), status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      if (!who()) throw new Error("Write your name in the Analyst box at the top first.");
      const r = await api("/api/suppressions", { method: "POST", body: { username: e.username, field: field.value, value: e[field.value], until: until.value, note: note.value, who: who() } });
      status.replaceChildren(h("span", { class: "ok" }, `Suppression #${r.id} added; inference pipelines with a suppress stage apply it.`));
    } catch (err) { status.replaceChildren(errorBox(err)); }
  });
  return h("div", { class: "panel" }, h("h2", {}, "Known benign?"), form);
}

async function eventView(route) {
  const time = route.params.get("time");
  const d = await api("/api/event/" + encodeURIComponent(route.id) + (time ? "?" + new URLSearchParams({ time }) : ""));
  const e = d.event;
  const maxZ = Math.max(1, ...d.features.map((f) => Math.abs(f.z)));
  const features = h("table", { id: "features" },
    h("thead", {}, h("tr", {}, h("th", {}, "Feature"), h("th", {}, "Value"), h("th", { class: "num" }, "z"), h("th", {}, ""))),
    h("tbody", {}, d.features.map((f) => {
      const bar = h("div", { class: "zbar" + (f.z > 0 ? " pos" : "") });
      bar.style.width = Math.round((Math.abs(f.z) / maxZ) * 200) + "px";
      const value = f.value === null ? "" : typeof f.value === "number" && !Number.isInteger(f.value) ? f.value.toFixed(3) : String(f.value);
      return h("tr", {}, h("td", {}, f.feature), h("td", { class: "wrap" }, value), h("td", { class: "num" }, fmtScore(f.z)), h("td", {}, bar));
    })));
  const profile = h("div", { class: "grid" }, ["country", "app", "browser", "device", "city"].filter((k) => (d.profile[k] || []).length).map((k) =>
    h("div", { class: "panel" }, h("h2", {}, `Usual ${k}`), h("table", {}, h("tbody", {}, d.profile[k].map((v) =>
      h("tr", { class: v.value === e[k] ? "this" : "" }, h("td", {}, v.value), h("td", { class: "num" }, v.events))))))));
  const windows = Object.entries(d.windows || {});
  return h("section", {},
    h("h1", {}, "Event ", h("span", { class: "id" }, e.id)),
    h("div", { class: "cards" },
      h("div", { class: "card" }, "User", h("b", { class: "user" }, e.username || "")),
      h("div", { class: "card" }, "Time", h("b", {}, fmtTime(e.time))),
      h("div", { class: "card" }, "Risk", h("b", {}, fmtScore(e.score))),
      h("div", { class: "card" }, "Model's risk", h("b", {}, fmtScore(d.risk_model ?? e.score))),
      h("div", { class: "card" }, "mean |z|", h("b", {}, fmtScore(e.mean_abs_z))),
      h("div", { class: "card" }, "Status", h("b", {}, e.suppressed ? badge("suppressed") : "", badge(e.mark) || (e.alert ? "alert" : "event")))),
    e.suppressed ? h("p", {}, "Suppressed by ", e.suppressed) : "",
    h("div", { class: "cols" },
      h("div", {},
        h("div", { class: "panel" }, h("h2", {}, "Why it stands out"),
          h("p", {}, "Top features: ", d.top_features || "–"),
          h("p", {}, "Signals that raised the risk: ", d.risk_signals || "none"),
          e.incident_id ? h("p", {}, "Part of ", h("a", { href: "#/incident/" + encodeURIComponent(e.incident_id) }, "incident " + e.incident_id)) : "",
          d.kept ? features : h("p", { class: "muted" }, "Per-feature z-scores are kept for alerts only.")),
        h("h2", {}, "The user's events around it"), h("div", { class: "panel" }, eventTable(d.neighbours)),
        h("h2", {}, `The user's profile (${d.profile.events || 0} stored events)`), profile,
        windows.length ? h("div", { class: "panel" }, h("h2", {}, "Windows (correlate)"), h("table", {}, h("tbody", {}, windows.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, v === null ? "" : String(v))))))) : ""),
      h("div", {}, markForm("event", e.id, d.marks, e.time), suppressForm(e), h("div", { class: "panel" }, h("p", {}, `Model: ${d.model_name || e.model_kind || "?"} ${d.model_version ? "v" + d.model_version : ""}`)))));
}

async function incidentView(route) {
  const d = await api("/api/incident/" + encodeURIComponent(route.id));
  const i = d.incident;
  const ev = d.events.filter((e) => e.time);
  const W = 900, H = 160;
  const t0 = ev.length ? Date.parse(ev[0].time) : 0, t1 = ev.length ? Date.parse(ev[ev.length - 1].time) : 1;
  const maxS = Math.max(1, ...ev.map((e) => e.score || 0));
  const x = (t) => 20 + ((t - t0) / Math.max(1, t1 - t0)) * (W - 40);
  const timeline = s("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "the incident's events over time" },
    s("line", { x1: 20, x2: W - 20, y1: H - 20, y2: H - 20, stroke: "#c5cad3" }),
    ev.map((e) => s("circle", { cx: x(Date.parse(e.time)), cy: H - 20 - ((e.score || 0) / maxS) * (H - 40), r: 6, fill: e.alert ? "#c62828" : "#9aa5b8", onclick: () => go("event/" + encodeURIComponent(e.id), { time: e.time }) },
      s("title", {}, `${fmtTime(e.time)} · ${e.username || ""} · risk ${fmtScore(e.score)}`))),
    s("text", { x: 20, y: H - 4, "font-size": 12, fill: "#6b7280" }, fmtTime(i.first_seen)),
    s("text", { x: W - 20, y: H - 4, "font-size": 12, fill: "#6b7280", "text-anchor": "end" }, fmtTime(i.last_seen)));
  return h("section", {},
    h("h1", {}, "Incident ", h("span", { class: "id" }, i.incident_id)),
    h("div", { class: "cards" },
      h("div", { class: "card" }, i.entity === "source" ? "Source" : "User", h("b", { class: "user" }, i.username || i.source || "")),
      h("div", { class: "card" }, "Peak risk", h("b", {}, fmtScore(i.peak_risk))),
      h("div", { class: "card" }, "Events", h("b", {}, i.events)),
      h("div", { class: "card" }, "Users", h("b", {}, i.users ?? 1)),
      h("div", { class: "card" }, "Status", h("b", {}, i.status, " ", badge(i.mark)))),
    h("p", {}, "Reasons: ", i.reasons || "–"),
    h("div", { class: "cols" },
      h("div", {}, h("div", { class: "panel" }, h("h2", {}, "Timeline"), timeline),
        h("h2", {}, `Member events (${d.events.length} stored of ${d.event_ids.length} listed)`), h("div", { class: "panel" }, eventTable(d.events))),
      markForm("incident", i.incident_id, d.marks)));
}

async function suppressions() {
  const d = await api("/api/suppressions");
  const remove = (id) => async () => {
    try { await api(`/api/suppressions/${id}/remove`, { method: "POST", body: {} }); await render(); } catch (e) { alert(e.message); }
  };
  const table = h("table", { id: "suppressions" },
    h("thead", {}, h("tr", {}, ["#", "User", "Field", "Value", "Until", "Note", "By", "Added", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, d.rows.map((r) => h("tr", { class: r.removed ? "muted" : "" },
      h("td", {}, r.id), h("td", { class: "user" }, r.username), h("td", {}, r.field), h("td", {}, r.value), h("td", {}, fmtTime(r.until) || "no end"),
      h("td", {}, r.note), h("td", {}, r.who), h("td", {}, fmtTime(r.created)),
      h("td", {}, r.removed ? "removed " + fmtTime(r.removed) : h("button", { type: "button", class: "plain", onclick: remove(r.id) }, "Remove"))))));
  const user = h("input", { name: "username", required: true }), value = h("input", { name: "value", required: true });
  const field = h("select", { name: "field" }, ["country", "city", "app", "browser", "device", "ip"].map((f) => h("option", { value: f }, f)));
  const until = h("input", { type: "date", name: "until" }), note = h("input", { name: "note" });
  const status = h("p", { role: "status" });
  const form = h("form", { class: "filters", id: "add-suppression" }, h("label", {}, "User", user), h("label", {}, "Field", field), h("label", {}, "Value", value),
    h("label", {}, "Until", until), h("label", {}, "Note", note), h("button", { type: "submit" }, "Add"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      if (!who()) throw new Error("Write your name in the Analyst box at the top first.");
      await api("/api/suppressions", { method: "POST", body: { username: user.value, field: field.value, value: value.value, until: until.value, note: note.value, who: who() } });
      document.activeElement.blur();
      await render();
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  return h("section", {}, h("h1", {}, "Suppressions"),
    h("p", { class: "muted" }, "Known-benign patterns: a user's events with this value, until a date, are marked suppressed by inference pipelines with a suppress stage (shown, not alerted)."),
    form, status, d.rows.length ? h("div", { class: "panel" }, table) : h("p", {}, "No suppressions."),
    h("p", {}, h("a", { href: "/api/suppressions.csv", download: "suppressions.csv" }, "Download as CSV (suppress stage, path:)")));
}

// ---- start ----------------------------------------------------------------------------------------------

async function start() {
  const whoBox = document.getElementById("who");
  whoBox.value = localStorage.getItem("dfp.who") || "";
  whoBox.addEventListener("change", () => localStorage.setItem("dfp.who", whoBox.value.trim()));
  try {
    const session = await api("/api/session");
    state.csrf = session.csrf;
    document.title = "dfp console · " + session.store;
  } catch (e) {
    document.getElementById("main").replaceChildren(errorBox(e));
    return;
  }
  // The store's version before the first page: a change after it refreshes the page.
  state.version = (await api("/api/version").catch(() => ({ version: null }))).version;
  window.addEventListener("hashchange", render);
  await render();
  await poll();
  setInterval(poll, 5000);
}

start();
