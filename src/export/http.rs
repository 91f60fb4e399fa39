//! Uploads: one multipart `POST` per batch to the agent (TCP or a Unix
//! socket), the agentless intake (TLS) or an explicit URL.
//!
//! The policy is `docs/datadog-intake.md`'s: each attempt is bounded by the
//! upload timeout; a transport error or a 5xx is tried once more after a
//! random wait within the period; any other non-2xx answer is final; a 404
//! from an agent means an agent too old to take profiles, which is said
//! once. Once `stop()` asks, there are no more waits: what is queued gets
//! one attempt each until the stop deadline, and what is left is counted
//! as an upload error.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use tokio::sync::watch;
use tokio::time::Instant;

use super::event::{self, VERSION};
use super::queue::Queue;
use super::Batch;
use crate::config::Endpoint;
use crate::metrics::{Counter, Counters};

/// Builds the HTTP client for `endpoint`: the user's own when given (for
/// TCP and TLS; a Unix socket always gets a client of its own), else one
/// with rustls over ring and the platform's certificates.
pub(crate) fn client(
    endpoint: &Endpoint,
    user: Option<reqwest::Client>,
) -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> {
    if let (Some(c), None) = (&user, &endpoint.uds) {
        return Ok(c.clone());
    }
    let mut builder = reqwest::Client::builder().user_agent(format!("ferroprof/{VERSION}"));
    if let Some(path) = &endpoint.uds {
        builder = builder.unix_socket(path.as_path());
    }
    // Always preconfigured, even for plain HTTP: reqwest builds its TLS
    // setup at `build()`, and without a process-wide rustls provider (which
    // a library must not install) it has none of its own. Only HTTPS reads
    // the platform's certificates: a minimal container has none, and a
    // plain-HTTP agent must not need them.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let tls = if endpoint.url.scheme() == "https" {
        use rustls_platform_verifier::BuilderVerifierExt;
        versions.with_platform_verifier()?.with_no_client_auth()
    } else {
        versions
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    builder = builder.tls_backend_preconfigured(tls);
    Ok(builder.build()?)
}

/// Why a batch was given up on at stop.
const STOP_DEADLINE: &str = "stop() deadline reached before the upload finished";

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Accepted,
    /// Transport error or 5xx: worth one more try.
    Retry(String),
    /// Anything else: give up on this batch.
    Final(String),
}

/// Posts batches from the queue until told to stop.
pub(crate) struct Uploader {
    client: reqwest::Client,
    endpoint: Endpoint,
    headers: HeaderMap,
    timeout: Duration,
    period: Duration,
    base_tags: Arc<str>,
    counters: Arc<Counters>,
    said_404: bool,
    rng: u64,
}

impl Uploader {
    pub fn new(
        client: reqwest::Client,
        endpoint: Endpoint,
        timeout: Duration,
        period: Duration,
        base_tags: Arc<str>,
        counters: Arc<Counters>,
    ) -> Self {
        let mut headers = HeaderMap::new();
        let static_header = |v: &'static str| HeaderValue::from_static(v);
        headers.insert(
            HeaderName::from_static("dd-evp-origin"),
            static_header("ferroprof"),
        );
        headers.insert(
            HeaderName::from_static("dd-evp-origin-version"),
            static_header(VERSION),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("ferroprof/{VERSION}")) {
            headers.insert(USER_AGENT, v);
        }
        if let Some(id) = event::container_id().and_then(|id| HeaderValue::from_str(&id).ok()) {
            headers.insert(HeaderName::from_static("datadog-container-id"), id);
        }
        if let Some(key) = &endpoint.api_key {
            if let Ok(mut v) = HeaderValue::from_str(key.expose()) {
                v.set_sensitive(true);
                headers.insert(HeaderName::from_static("dd-api-key"), v);
            }
        }
        let seed = u64::from_le_bytes(event::random_bytes()[..8].try_into().unwrap_or([1; 8]));
        Uploader {
            client,
            endpoint,
            headers,
            timeout,
            period,
            base_tags,
            counters,
            said_404: false,
            rng: seed | 1,
        }
    }

    /// Sends what the queue gives until `stop` carries a deadline, then
    /// drains the queue within it.
    pub async fn run(mut self, queue: Arc<Queue>, mut stop: watch::Receiver<Option<Instant>>) {
        loop {
            let deadline = *stop.borrow_and_update();
            if let Some(deadline) = deadline {
                self.drain(&queue, deadline).await;
                return;
            }
            let batch = tokio::select! {
                b = queue.pop() => b,
                changed = stop.changed() => {
                    if changed.is_err() {
                        // The period loop is gone without a deadline (it
                        // panicked): nobody waits for the queue any more.
                        return;
                    }
                    continue;
                }
            };
            self.upload(batch, &mut stop).await;
        }
    }

    /// Up to two attempts at one batch; a stop request cuts the wait
    /// between them and bounds the second attempt by its deadline.
    async fn upload(&mut self, batch: Batch, stop: &mut watch::Receiver<Option<Instant>>) {
        let first = self.attempt_until_stop(&batch, stop).await;
        let why = match first {
            Attempt::Accepted => return self.accepted(&batch),
            Attempt::Final(why) => return self.failed(&batch, &why),
            Attempt::Retry(why) => why,
        };
        self.counters.add(Counter::UploadRetry, 1, &[]);
        let wait = self.random_wait();
        log::debug!(
            "ferroprof: upload of batch {} failed ({why}); retrying in {wait:?}",
            batch.seq
        );
        let deadline = tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            d = wait_deadline(stop) => Some(d),
        };
        let second = match deadline {
            None => self.attempt_until_stop(&batch, stop).await,
            Some(d) => self.attempt_until(&batch, d).await,
        };
        match second {
            Attempt::Accepted => self.accepted(&batch),
            Attempt::Retry(why) | Attempt::Final(why) => self.failed(&batch, &why),
        }
    }

    /// One attempt; if `stop()` asks meanwhile, it may go on only until the
    /// stop deadline.
    async fn attempt_until_stop(
        &mut self,
        batch: &Batch,
        stop: &mut watch::Receiver<Option<Instant>>,
    ) -> Attempt {
        let attempt = self.attempt(batch);
        tokio::pin!(attempt);
        tokio::select! {
            a = &mut attempt => a,
            deadline = wait_deadline(stop) => {
                tokio::time::timeout_at(deadline, attempt)
                    .await
                    .unwrap_or_else(|_| Attempt::Final(STOP_DEADLINE.to_owned()))
            }
        }
    }

    /// One attempt, cut at `deadline`.
    async fn attempt_until(&mut self, batch: &Batch, deadline: Instant) -> Attempt {
        tokio::time::timeout_at(deadline, self.attempt(batch))
            .await
            .unwrap_or_else(|_| Attempt::Final(STOP_DEADLINE.to_owned()))
    }

    /// After `stop()`: one attempt per queued batch until the deadline,
    /// the newest (the last, partial period) first, then the rest oldest
    /// first.
    async fn drain(&mut self, queue: &Queue, deadline: Instant) {
        let newest = queue.try_pop_newest();
        let rest = std::iter::from_fn(|| queue.try_pop());
        for batch in newest.into_iter().chain(rest) {
            if Instant::now() >= deadline {
                self.failed(&batch, STOP_DEADLINE);
                continue;
            }
            match self.attempt_until(&batch, deadline).await {
                Attempt::Accepted => self.accepted(&batch),
                Attempt::Retry(why) | Attempt::Final(why) => self.failed(&batch, &why),
            }
        }
    }

    fn accepted(&self, batch: &Batch) {
        self.counters.add(Counter::UploadSuccess, 1, &[]);
        self.counters
            .add(Counter::UploadedProfileBytes, batch.profile_bytes(), &[]);
        log::debug!(
            "ferroprof: uploaded batch {} ({} bytes)",
            batch.seq,
            batch.profile_bytes()
        );
    }

    fn failed(&self, batch: &Batch, why: &str) {
        self.counters.add(Counter::UploadError, 1, &[]);
        log::warn!(
            "ferroprof: could not upload profiles of batch {} to {}: {why}",
            batch.seq,
            self.endpoint.describe()
        );
    }

    /// One POST, bounded by the upload timeout.
    async fn attempt(&mut self, batch: &Batch) -> Attempt {
        let event = event::event_json(batch, &self.base_tags);
        let request = self
            .client
            .post(self.endpoint.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout)
            .multipart(event::form(batch, event));
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(describe(&e)),
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Accepted;
        }
        let body = match tokio::time::timeout(Duration::from_secs(1), response.text()).await {
            Ok(Ok(text)) => text.chars().take(200).collect::<String>(),
            _ => String::new(),
        };
        if status.is_server_error() {
            return Attempt::Retry(format!("HTTP {status} {body}"));
        }
        if status == reqwest::StatusCode::NOT_FOUND && self.endpoint.is_agent {
            if !self.said_404 {
                self.said_404 = true;
                log::error!(
                    "ferroprof: the agent at {} does not accept profiles (HTTP 404); \
                     need Datadog Agent >= 7.20",
                    self.endpoint.describe()
                );
            }
            return Attempt::Final(
                "agent does not accept profiles; need Datadog Agent >= 7.20".to_owned(),
            );
        }
        Attempt::Final(format!("HTTP {status} {body}"))
    }

    /// Uniform in [0, period), from a xorshift generator.
    fn random_wait(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let nanos = self.period.as_nanos().max(1) as u64;
        Duration::from_nanos(self.rng % nanos)
    }
}

/// Resolves once `stop` carries a deadline (never, if the sender is gone
/// without one).
async fn wait_deadline(stop: &mut watch::Receiver<Option<Instant>>) -> Instant {
    loop {
        if let Some(d) = *stop.borrow_and_update() {
            return d;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A transport error with its causes, without the URL's query or secrets
/// (the API key travels in a header, which reqwest errors never show).
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "transport error".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
