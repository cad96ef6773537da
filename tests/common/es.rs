//! A stand-in for Elasticsearch on 127.0.0.1, for the tests of `elasticsearch-sink` and `dfp es setup`
//! (no Elasticsearch or OpenSearch server can be installed from the package registries here).
//!
//! It implements the parts of the API dfp uses, with Elasticsearch's semantics: `GET /` (with the
//! `X-Elastic-Product` header the official clients check), `PUT/GET /_index_template/NAME`, `_bulk`
//! (`index` creates or replaces and answers 201/200 with the version, `create` answers 409
//! `version_conflict_engine_exception` for an existing id, data streams take only `create` and need
//! `@timestamp`, a value that does not fit a template's numeric or date mapping is a 400
//! `mapper_parsing_exception`, gzip bodies), `GET /INDEX/_doc/ID`, `_count` and `_search` (match-all or
//! `ids`) over index patterns. Faults are injected per request (503 for the whole request, a connection
//! dropped after the documents were applied) and per document id (429 a number of times, 400 always).
//! tests/elasticsearch.rs drives it with the official Python client (PyPI `elasticsearch`) to keep it
//! honest.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};

/// Faults to inject.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next N bulk requests answer 503 as a whole (nothing applied).
    pub fail_requests: usize,
    /// The next N bulk requests are applied, then their connection is dropped before the answer ends.
    pub drop_requests: usize,
    /// Documents with these ids are refused with 429 this many more times each.
    pub item_429: HashMap<String, usize>,
    /// Documents with these ids are always refused with 400 (`mapper_parsing_exception`).
    pub item_400: HashSet<String>,
}

/// A stored document.
#[derive(Debug, Clone)]
pub struct Stored {
    pub version: u64,
    pub source: Value,
}

#[derive(Default)]
pub struct State {
    pub indices: BTreeMap<String, BTreeMap<String, Stored>>,
    pub templates: BTreeMap<String, Value>,
    pub faults: Faults,
    /// Bulk requests received, and how many of them were gzip-compressed.
    pub bulk_requests: usize,
    pub gzip_requests: usize,
    /// Bulk actions received (documents sent, including retries and duplicates).
    pub bulk_items: usize,
    /// `Authorization` headers seen.
    pub auth: HashSet<String>,
}

/// The running stand-in; stops when dropped.
pub struct EsStandIn {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    https: bool,
}

impl Drop for EsStandIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TLS listener for axum: a TCP accept, then the handshake (failed handshakes are skipped).
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.inner.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl EsStandIn {
    /// Starts on a free loopback port (plain HTTP).
    pub fn start() -> EsStandIn {
        Self::launch(None)
    }

    /// Starts serving HTTPS with the PEM certificate chain and key.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> EsStandIn {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert).expect("certificate file").map(|c| c.expect("certificate")).collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server certificate");
        Self::launch(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    fn launch(tls: Option<tokio_rustls::TlsAcceptor>) -> EsStandIn {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the Elasticsearch stand-in");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tls_on = tls.is_some();
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app =
                    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let st = Arc::clone(&st);
                        async move { handle(&st, method, uri, headers, body) }
                    });
                let stop = async move {
                    let _ = rx.await;
                };
                match tls {
                    None => {
                        let _ = axum::serve(listener, app).with_graceful_shutdown(stop).await;
                    }
                    Some(acceptor) => {
                        let listener = TlsListener { inner: listener, acceptor };
                        let _ = axum::serve(listener, app).with_graceful_shutdown(stop).await;
                    }
                }
            });
        });
        EsStandIn { addr, state, stop: Some(tx), thread: Some(thread), https: tls_on }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    /// Documents in indices matching `pattern` (`dfp-alerts-*`).
    pub fn count(&self, pattern: &str) -> usize {
        let st = self.state();
        st.indices.iter().filter(|(name, _)| matches(pattern, name)).map(|(_, docs)| docs.len()).sum()
    }

    /// Every (index, id, version, source) in indices matching `pattern`.
    pub fn docs(&self, pattern: &str) -> Vec<(String, String, u64, Value)> {
        let st = self.state();
        st.indices
            .iter()
            .filter(|(name, _)| matches(pattern, name))
            .flat_map(|(name, docs)| {
                docs.iter().map(move |(id, d)| (name.clone(), id.clone(), d.version, d.source.clone()))
            })
            .collect()
    }
}

/// `*` wildcards, comma-separated alternatives.
fn matches(pattern: &str, name: &str) -> bool {
    pattern.split(',').any(|p| glob_match(p.as_bytes(), name.as_bytes()))
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob_match(&p[1..], &s[i..])),
        Some(c) => s.first() == Some(c) && glob_match(&p[1..], &s[1..]),
    }
}

fn reply(status: u16, body: Value, headers: &HeaderMap) -> Response {
    let compat = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .filter(|a| a.contains("vnd.elasticsearch+json"))
        .map(|a| a.split(',').next().unwrap_or(a).trim().to_string());
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", compat.unwrap_or_else(|| "application/json".into()))
        .header("x-elastic-product", "Elasticsearch")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn error(status: u16, kind: &str, reason: &str, headers: &HeaderMap) -> Response {
    reply(
        status,
        json!({ "error": { "root_cause": [{ "type": kind, "reason": reason }], "type": kind, "reason": reason }, "status": status }),
        headers,
    )
}

fn handle(st: &Mutex<State>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        st.auth.insert(a.to_string());
    }
    let body: Vec<u8> = if headers.get("content-encoding").and_then(|v| v.to_str().ok()) == Some("gzip") {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).is_err() {
            return error(400, "parse_exception", "request body is not valid gzip", &headers);
        }
        if uri.path().ends_with("/_bulk") {
            st.gzip_requests += 1;
        }
        out
    } else {
        body.to_vec()
    };
    let path: Vec<&str> = uri.path().trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match (&method, path.as_slice()) {
        (&Method::GET, []) => reply(
            200,
            json!({
                "name": "dfp-stand-in", "cluster_name": "dfp-test", "cluster_uuid": "stand-in",
                "version": { "number": "9.1.0", "build_flavor": "default", "lucene_version": "10.2.2",
                             "minimum_wire_compatibility_version": "8.19.0",
                             "minimum_index_compatibility_version": "8.0.0" },
                "tagline": "You Know, for Search"
            }),
            &headers,
        ),
        (&Method::PUT, ["_index_template", name]) => match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("index_patterns").is_some() => {
                st.templates.insert(name.to_string(), v);
                reply(200, json!({ "acknowledged": true }), &headers)
            }
            Ok(_) => error(400, "action_request_validation_exception", "index patterns are missing", &headers),
            Err(e) => error(400, "x_content_parse_exception", &e.to_string(), &headers),
        },
        (&Method::GET, ["_index_template", name]) => match st.templates.get(*name) {
            Some(t) => reply(200, json!({ "index_templates": [{ "name": name, "index_template": t }] }), &headers),
            None => error(
                404,
                "resource_not_found_exception",
                &format!("index template matching [{name}] not found"),
                &headers,
            ),
        },
        (&Method::POST | &Method::PUT, ["_bulk"]) => bulk(&mut st, None, &body, &headers),
        (&Method::POST | &Method::PUT, [index, "_bulk"]) => bulk(&mut st, Some(index), &body, &headers),
        (&Method::GET, [index, "_doc", id]) => match st.indices.get(*index) {
            Some(docs) => match docs.get(*id) {
                Some(d) => reply(
                    200,
                    json!({ "_index": index, "_id": id, "_version": d.version, "_seq_no": d.version - 1,
                            "_primary_term": 1, "found": true, "_source": d.source }),
                    &headers,
                ),
                None => reply(404, json!({ "_index": index, "_id": id, "found": false }), &headers),
            },
            None => error(404, "index_not_found_exception", &format!("no such index [{index}]"), &headers),
        },
        (&Method::GET | &Method::POST, [index, "_count"]) => {
            if !index.contains('*') && !st.indices.contains_key(*index) {
                return error(404, "index_not_found_exception", &format!("no such index [{index}]"), &headers);
            }
            let n: usize = st.indices.iter().filter(|(k, _)| matches(index, k)).map(|(_, d)| d.len()).sum();
            reply(
                200,
                json!({ "count": n, "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 } }),
                &headers,
            )
        }
        (&Method::GET | &Method::POST, [index, "_search"]) => {
            let q: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(json!({})) };
            let ids: Option<HashSet<String>> = q
                .pointer("/query/ids/values")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
            let size = q.get("size").and_then(|v| v.as_u64()).unwrap_or(10) as usize;
            let hits: Vec<Value> = st
                .indices
                .iter()
                .filter(|(k, _)| matches(index, k))
                .flat_map(|(k, docs)| docs.iter().map(move |(id, d)| (k, id, d)))
                .filter(|(_, id, _)| ids.as_ref().is_none_or(|s| s.contains(*id)))
                .map(|(k, id, d)| json!({ "_index": k, "_id": id, "_score": 1.0, "_source": d.source }))
                .collect();
            let total = hits.len();
            reply(
                200,
                json!({ "took": 1, "timed_out": false, "_shards": { "total": 1, "successful": 1, "skipped": 0, "failed": 0 },
                        "hits": { "total": { "value": total, "relation": "eq" }, "max_score": 1.0,
                                  "hits": hits.into_iter().take(size).collect::<Vec<_>>() } }),
                &headers,
            )
        }
        _ => error(400, "illegal_argument_exception", &format!("no handler for [{method} {}]", uri.path()), &headers),
    }
}

/// The template whose patterns match `index` (highest priority first), if any.
fn template_for<'a>(st: &'a State, index: &str) -> Option<&'a Value> {
    st.templates
        .values()
        .filter(|t| {
            t.get("index_patterns")
                .and_then(|p| p.as_array())
                .is_some_and(|ps| ps.iter().filter_map(|p| p.as_str()).any(|p| matches(p, index)))
        })
        .max_by_key(|t| t.get("priority").and_then(|p| p.as_i64()).unwrap_or(0))
}

/// Checks a document against its template's explicit numeric/date/ip mappings, as a real index would.
fn mapping_error(template: Option<&Value>, source: &Value, id: &str) -> Option<String> {
    let props = template?.pointer("/template/mappings/properties")?.as_object()?;
    let doc = source.as_object()?;
    for (field, m) in props {
        let Some(v) = doc.get(field) else { continue };
        if v.is_null() {
            continue;
        }
        let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let ok = match ty {
            "float" | "double" | "long" | "integer" => {
                v.is_number() || v.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok())
            }
            "boolean" => v.is_boolean() || v.as_str().is_some_and(|s| s == "true" || s == "false"),
            "date" => v.as_str().is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()) || v.is_number(),
            "ip" => {
                m.get("ignore_malformed").and_then(|b| b.as_bool()) == Some(true)
                    || v.as_str().is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())
            }
            _ => true,
        };
        if !ok {
            return Some(format!("failed to parse field [{field}] of type [{ty}] in document with id '{id}'. Preview of field's value: '{}'", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())));
        }
    }
    None
}

fn bulk(st: &mut State, path_index: Option<&str>, body: &[u8], headers: &HeaderMap) -> Response {
    st.bulk_requests += 1;
    if st.faults.fail_requests > 0 {
        st.faults.fail_requests -= 1;
        return error(503, "unavailable_shards_exception", "[dfp][0] primary shard is not active", headers);
    }
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return error(400, "parse_exception", "the bulk body is not UTF-8", headers),
    };
    let mut lines = text.split('\n').filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(action_line) = lines.next() {
        let action: Value = match serde_json::from_str(action_line) {
            Ok(v) => v,
            Err(e) => return error(400, "x_content_parse_exception", &format!("malformed action line: {e}"), headers),
        };
        let Some((op, meta)) = action.as_object().and_then(|o| o.iter().next()) else {
            return error(400, "illegal_argument_exception", "malformed action/metadata line", headers);
        };
        let op = op.clone();
        if op != "index" && op != "create" {
            return error(400, "illegal_argument_exception", &format!("action [{op}] is not supported here"), headers);
        }
        let Some(source_line) = lines.next() else {
            return error(
                400,
                "illegal_argument_exception",
                "the bulk request must be terminated by a newline",
                headers,
            );
        };
        let index = meta.get("_index").and_then(|v| v.as_str()).or(path_index).map(str::to_string);
        let Some(index) = index else {
            return error(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;",
                headers,
            );
        };
        st.bulk_items += 1;
        let id = meta
            .get("_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("auto-{}", st.bulk_items));
        let fail = |status: u16, kind: &str, reason: String| {
            json!({ op.clone(): { "_index": index, "_id": id, "status": status,
                                  "error": { "type": kind, "reason": reason, "index": index } } })
        };
        let source: Value = match serde_json::from_str(source_line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                errors = true;
                items.push(fail(400, "document_parsing_exception", "failed to parse the document".into()));
                continue;
            }
        };
        if let Some(n) = st.faults.item_429.get_mut(&id).filter(|n| **n > 0) {
            *n -= 1;
            errors = true;
            items.push(fail(
                429,
                "es_rejected_execution_exception",
                "rejected execution of coordinating operation".into(),
            ));
            continue;
        }
        if st.faults.item_400.contains(&id) {
            errors = true;
            items.push(fail(
                400,
                "mapper_parsing_exception",
                format!("failed to parse document with id '{id}' (injected)"),
            ));
            continue;
        }
        let template = template_for(st, &index);
        let data_stream = template.is_some_and(|t| t.get("data_stream").is_some());
        if data_stream && op != "create" {
            errors = true;
            items.push(fail(
                400,
                "illegal_argument_exception",
                "only write ops with an op_type of create are allowed in data streams".to_string(),
            ));
            continue;
        }
        if data_stream && source.get("@timestamp").is_none() {
            errors = true;
            items.push(fail(
                400,
                "document_parsing_exception",
                "data stream timestamp field [@timestamp] is missing".into(),
            ));
            continue;
        }
        if let Some(reason) = mapping_error(template, &source, &id) {
            errors = true;
            items.push(fail(400, "document_parsing_exception", reason));
            continue;
        }
        let docs = st.indices.entry(index.clone()).or_default();
        match (op.as_str(), docs.get_mut(&id)) {
            ("create", Some(d)) => {
                errors = true;
                let reason =
                    format!("[{id}]: version conflict, document already exists (current version [{}])", d.version);
                items.push(fail(409, "version_conflict_engine_exception", reason));
            }
            (_, Some(d)) => {
                d.version += 1;
                d.source = source;
                items.push(json!({ op.clone(): { "_index": index, "_id": id, "_version": d.version, "result": "updated",
                    "_shards": { "total": 1, "successful": 1, "failed": 0 }, "_seq_no": d.version - 1, "_primary_term": 1, "status": 200 } }));
            }
            (_, None) => {
                docs.insert(id.clone(), Stored { version: 1, source });
                items.push(json!({ op.clone(): { "_index": index, "_id": id, "_version": 1, "result": "created",
                    "_shards": { "total": 1, "successful": 1, "failed": 0 }, "_seq_no": 0, "_primary_term": 1, "status": 201 } }));
            }
        }
    }
    let answer = json!({ "errors": errors, "took": 1, "items": items });
    if st.faults.drop_requests > 0 {
        st.faults.drop_requests -= 1;
        // Applied, then the connection breaks before the answer is complete: the client cannot know.
        let stream = futures_util::stream::iter(vec![
            Ok::<Bytes, std::io::Error>(Bytes::from_static(b"{\"errors\":")),
            Err(std::io::Error::other("connection dropped by the stand-in")),
        ]);
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-elastic-product", "Elasticsearch")
            .body(Body::from_stream(stream))
            .expect("response");
    }
    reply(200, answer, headers)
}
