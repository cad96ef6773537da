//! What every Kafka client of dfp shares (`kafka-source`, `kafka-sink`, `dfp produce`): the librdkafka
//! configuration, a client context that reports librdkafka's errors and logs through `tracing`, and error
//! texts that never carry a secret.
//!
//! **Secrets.** librdkafka's own errors can quote a property's value (rdkafka's `ClientConfig` error
//! shows the rejected key *and value*: a mistyped `sasl.pasword: hunter2` would print the password).
//! Every text that leaves this module — errors, log lines — goes through a [`Redactor`] that replaces the
//! values of secret-looking properties ([`is_secret_key`]) and the value of the property an error is
//! about with `***`. [`Properties`] (the `properties:` map of the Kafka stages) shows `***` for those
//! values in `Debug`.
//!
//! **Failing fast and clearly.** librdkafka retries a broker it cannot reach (or whose certificate it does
//! not trust) forever in the background. [`connect`] asks for metadata in short rounds and stops at the
//! first TLS or authentication error the context saw, with librdkafka's reason (which names the broker:
//! `ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: … certificate verify failed`), instead of a
//! bare timeout after half a minute.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use schemars::JsonSchema;
use serde::Deserialize;

/// Whether a librdkafka property holds a secret: passwords, secrets, tokens, keys, every `sasl.*`
/// property but the mechanism and the Kerberos service names, and `ssl.*key*` (key material, key
/// passwords).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if matches!(k.as_str(), "sasl.mechanism" | "sasl.mechanisms" | "sasl.kerberos.service.name") {
        return false;
    }
    ["password", "secret", "token", "credential"].iter().any(|w| k.contains(w))
        || k.starts_with("sasl.")
        || (k.starts_with("ssl.") && k.contains("key") && !k.ends_with(".location"))
        || k.ends_with(".key")
}

/// The `properties:` of a Kafka stage: librdkafka properties passed through. `Debug` shows secret values
/// as `***`.
#[derive(Clone, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(transparent)]
pub struct Properties(pub BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_secret_key(k) { "***" } else { v.as_str() })))
            .finish()
    }
}

impl Properties {
    /// The properties as pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Replaces secret values in texts.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// A redactor for the secret values among `properties`.
    pub fn new<'a>(properties: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut values: Vec<String> = properties
            .into_iter()
            .filter(|(k, v)| is_secret_key(k) && !v.is_empty())
            .map(|(_, v)| v.to_string())
            .collect();
        // Longest first, so that a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor { values }
    }

    /// `text` with every secret value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    /// A librdkafka error as text, without secrets; a configuration error's value is never shown.
    pub fn error(&self, e: &KafkaError) -> String {
        match e {
            KafkaError::ClientConfig(_, desc, key, value) => {
                let desc = if value.is_empty() { desc.clone() } else { desc.replace(value.as_str(), "***") };
                self.redact(&format!("invalid configuration property `{key}`: {desc}"))
            }
            other => self.redact(&other.to_string()),
        }
    }
}

/// What a client's context learnt: its redactor, the first TLS or authentication error and the latest
/// error librdkafka reported. Shared between the context and whoever created the client.
#[derive(Debug, Default)]
pub struct ClientState {
    redactor: Redactor,
    fatal: Mutex<Option<String>>,
    last: Mutex<Option<String>>,
}

impl ClientState {
    /// The redactor of this client's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The first TLS or authentication error librdkafka reported, if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The latest error librdkafka reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records an error librdkafka reported (already redacted); TLS and authentication failures are
    /// fatal: retrying will not fix a certificate nobody vouches for or a wrong password.
    fn saw(&self, reason: &str) {
        let fatal =
            ["SSL handshake failed", "certificate verify failed", "SASL authentication", "Authentication failed"]
                .iter()
                .any(|p| reason.contains(p));
        if fatal {
            self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| reason.to_string());
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }
}

/// The client context of dfp's Kafka clients: librdkafka's log lines and errors go to `tracing`
/// (redacted), and what they say is kept in a [`ClientState`] for [`connect`].
pub struct DfpContext {
    state: Arc<ClientState>,
}

impl ClientContext for DfpContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let msg = self.state.redactor.redact(log_message);
        // Connection failures come as log lines from librdkafka's own threads (its error events wait for a
        // poll that a client being set up does not make yet).
        if fac == "FAIL" || fac == "ERROR" {
            self.state.saw(&msg);
        }
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {msg}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac}: {msg}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.state.redactor.redact(reason);
        tracing::warn!(target: "librdkafka", "{}: {reason}", self.state.redactor.error(&error));
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) {
            self.state.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| reason.clone());
        }
        self.state.saw(&reason);
    }
}

impl ConsumerContext for DfpContext {}

impl ProducerContext for DfpContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// A librdkafka configuration: `bootstrap.servers`, dfp's defaults, then `properties` (which override).
pub fn client_config<'a>(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    // Warnings and errors reach the context's log callback (rdkafka takes the level from the `log` crate,
    // which dfp does not use: it would be off).
    cfg.set_log_level(RDKafkaLogLevel::Warning);
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        cfg.set(*k, *v);
    }
    for (k, v) in properties {
        cfg.set(k, v);
    }
    cfg
}

/// Creates a client (consumer or producer) with a [`DfpContext`]; the error is redacted. Returns the
/// client and its [`ClientState`].
pub fn create<T: FromClientConfigAndContext<DfpContext>>(
    cfg: &ClientConfig,
    redactor: Redactor,
) -> Result<(T, Arc<ClientState>), String> {
    let state = Arc::new(ClientState { redactor: redactor.clone(), ..Default::default() });
    let client =
        T::from_config_and_context(cfg, DfpContext { state: Arc::clone(&state) }).map_err(|e| redactor.error(&e))?;
    Ok((client, state))
}

/// Waits until the brokers answer a metadata request (for `topic`, when given), at most `timeout`, and
/// returns the answer; stops early at a TLS or authentication error. The error names the brokers and says
/// what librdkafka saw.
/// `serve` hands librdkafka's queued events (its log lines, its errors) to the context: a producer's or a
/// consumer's `poll`, or nothing for a client that polls on its own thread.
pub fn connect<C: ClientContext>(
    client: &Client<C>,
    state: &ClientState,
    brokers: &str,
    topic: Option<&str>,
    timeout: Duration,
    serve: &dyn Fn(Duration),
) -> Result<rdkafka::metadata::Metadata, String> {
    let started = Instant::now();
    loop {
        serve(Duration::from_millis(50));
        let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        let attempt = client.fetch_metadata(topic, Duration::from_millis(500).min(left));
        serve(Duration::ZERO);
        if let Some(fatal) = state.fatal_error() {
            let hint = if fatal.contains("certificate") {
                " (is ssl.ca.location the CA that signed the broker's certificate?)"
            } else if fatal.contains("SASL") || fatal.contains("uthentication") {
                " (check sasl.mechanism, sasl.username and sasl.password)"
            } else {
                ""
            };
            return Err(format!("cannot connect to {brokers}: {fatal}{hint}"));
        }
        match attempt {
            Ok(metadata) => return Ok(metadata),
            Err(e) if started.elapsed() >= timeout => {
                let seen = state.last_error().map(|l| format!(" (librdkafka: {l})")).unwrap_or_default();
                return Err(format!(
                    "no answer from {brokers} within {:.0} s: {}{seen}",
                    timeout.as_secs_f64(),
                    state.redactor().error(&e)
                ));
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_recognised() {
        for k in [
            "sasl.password",
            "sasl.pasword",
            "sasl.username",
            "sasl.oauthbearer.client.secret",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "api.token",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.mechanism",
            "ssl.ca.location",
            "ssl.key.location",
            "bootstrap.servers",
            "group.id",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_a_secret() {
        let props = Properties(
            [("sasl.pasword".to_string(), "hunter2-s3cret".to_string()), ("security.protocol".into(), "SSL".into())]
                .into_iter()
                .collect(),
        );
        let debug = format!("{props:?}");
        assert!(!debug.contains("hunter2") && debug.contains("***") && debug.contains("SSL"), "{debug}");
        let redactor = Redactor::new(props.pairs());
        let cfg = client_config("127.0.0.1:1", &[], props.pairs());
        let e = create::<rdkafka::producer::BaseProducer<DfpContext>>(&cfg, redactor.clone()).err().expect("refused");
        assert!(e.starts_with("invalid configuration property `sasl.pasword`"), "{e}");
        assert!(!e.contains("hunter2") && e.contains("sasl.pasword"), "{e}");
        assert_eq!(redactor.redact("user:hunter2-s3cret@host"), "user:***@host");
    }
}
