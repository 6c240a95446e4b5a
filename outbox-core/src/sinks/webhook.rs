//! HTTP webhook sink (feature `webhook`), with reqwest: events are POSTed in batches, as a JSON
//! array, each request signed as [Standard Webhooks](https://www.standardwebhooks.com) specify
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`; see [`signature`](super::signature)),
//! so that a receiver verifies it with the official library of its language.
//!
//! A request holds at most [`max_events`](WebhookSink::max_events) events and
//! [`max_bytes`](WebhookSink::max_bytes) of body; a relay batch larger than that is sent as
//! several requests, one after the other. How many events accumulate before a flush is the
//! relay's [`batch_size`](crate::relay::RelayBuilder::batch_size) and
//! [`poll_interval`](crate::relay::RelayBuilder::poll_interval).
//!
//! **Order.** The array's order is the order: an aggregate's consecutive events travel in one
//! request, oldest first, and a batch's requests are sent in sequence. After a request fails,
//! the batch's later events of the aggregates it held are not sent; they follow the failed
//! ones when those are retried. So a receiver that processes each request's elements in order,
//! and the requests as they come, sees every aggregate's events in order.
//!
//! Each element of the array is an object with the [fields] `id` (the event id:
//! deduplicate on it), `event_type`, `aggregate_type`, `aggregate_id`, `payload` (the recorded
//! JSON) and, when some were recorded, `headers` (trace context…) — the names of the Redis
//! sink's entries. With [`Envelope::CloudEvents`] the body is a CloudEvents batch
//! (`application/cloudevents-batch+json`).
//!
//! The receiver's answer decides the outcome:
//!
//! | answer | outcome |
//! | --- | --- |
//! | 2xx | delivered |
//! | 5xx, 408, 425, 429, timeout, connection refused or reset | retried in the call (a few times, with backoff, honouring a short `Retry-After`), then left to the relay's retries |
//! | 400, 404, 405, 410, 411, 413, 414, 415, 422 | refused for good: the request is split to find the event at fault, which is dead-lettered; the others are delivered |
//! | other 4xx (401, 403, 409…) | retried by the relay: credentials and conflicts can be fixed on the receiver's side |
//! | 3xx (a redirect) | not followed; retried by the relay, then dead-lettered, with an error naming the status and the `Location` |
//!
//! **Redirects are failures.** A redirect is never followed: a `302` or `303` would be
//! followed as a `GET` without the body, and a `307` or `308` would post the signed events to
//! a URL nobody configured. Standard Webhooks count only a 2xx as delivered, and so does the
//! sink: the events stay in the outbox, a warning is logged once per outage, and the URL the
//! receiver points to goes into the configuration. A client of your own given to
//! [`WebhookSink::with_client`] that follows redirects is caught too: an answer from another
//! URL than the configured one is a failed delivery.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::relay::Relay;
//! use outbox::sinks::webhook::WebhookSink;
//!
//! let secret = std::env::var("WEBHOOK_SECRET")?; // whsec_…
//! let sink = WebhookSink::connect("https://hooks.example.com/outbox", &secret)
//!     .await?
//!     .max_events(200);
//! Relay::builder(pool, sink).build().run(std::future::pending()).await;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

use super::signature::{ID_HEADER, SIGNATURE_HEADER, Secret, TIMESTAMP_HEADER, unix_seconds};
use super::{Envelope, SetupError, fields, recorded_headers, redacted};
use crate::message::Message;
use crate::sink::{Delivery, Destination, Sink, SinkError};

pub use reqwest;

const SINK: &str = "webhook";
/// The longest `Retry-After` waited for inside one call; a longer one is left to the relay.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// POSTs signed batches of events to a URL; see the [module](self) documentation.
#[derive(Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The signing secrets: the current one, then those still accepted during a rotation.
    secrets: Arc<Vec<Secret>>,
    envelope: Envelope,
    max_events: usize,
    max_bytes: usize,
    attempts: u32,
    backoff: Duration,
    /// Whether the current run of redirects was warned about (reset by a delivery).
    redirect_warned: Arc<AtomicBool>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url.as_str())
            .field("envelope", &self.envelope)
            .field("max_events", &self.max_events)
            .field("max_bytes", &self.max_bytes)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How one request ended.
enum Outcome {
    Delivered,
    /// The request itself was refused: the same body will never be accepted.
    Refused(String),
    /// Worth trying again later.
    Failed(String),
}

impl WebhookSink {
    /// A sink POSTing to `url` (`http://` or `https://`) signed with `secret` (`whsec_` and at
    /// least 24 bytes of key in base64, as Standard Webhooks write them). Checks that the
    /// receiver answers (any HTTP status will do) so that a wrong host or port is reported now.
    /// The client follows no redirect (see the [module](self) documentation).
    pub async fn connect(url: &str, secret: &str) -> Result<Self, SetupError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| SetupError::new(SINK, format!("cannot build the client: {error}")))?;
        Self::with_client(client, url, secret).await
    }

    /// Like [`WebhookSink::connect`], with your own reqwest client (re-exported as
    /// [`reqwest`]): custom root certificates, client certificates, proxies, timeouts. Build it
    /// with `.redirect(reqwest::redirect::Policy::none())`: an answer that comes from another
    /// URL than `url` (a redirect your client followed) is counted as a failed delivery.
    pub async fn with_client(
        client: reqwest::Client,
        url: &str,
        secret: &str,
    ) -> Result<Self, SetupError> {
        let url = reqwest::Url::parse(url)
            .map_err(|error| SetupError::new(SINK, format!("invalid URL {url:?}: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SetupError::new(
                SINK,
                format!("{url} is not an http:// or https:// URL"),
            ));
        }
        let secret = Secret::for_signing(secret)
            .map_err(|error| SetupError::new(SINK, error.to_string()))?;
        let answer = client.head(url.clone()).send().await.map_err(|error| {
            let problem = format!("{} does not answer: {error}", super::redacted(url.as_str()));
            if error.is_connect() || error.is_timeout() || error.is_request() {
                SetupError::unreachable(SINK, problem)
            } else {
                SetupError::new(SINK, problem)
            }
        })?;
        if answer.status().is_redirection() || answer.url() != &url {
            tracing::warn!(
                url = %redacted(url.as_str()),
                answer = %redirect_text(&answer),
                "the webhook receiver redirects: the sink follows no redirect, and every delivery will fail until the configured URL is the one the receiver answers at"
            );
        }
        Ok(WebhookSink {
            client,
            url,
            secrets: Arc::new(vec![secret]),
            envelope: Envelope::Payload,
            max_events: 100,
            max_bytes: 1 << 20,
            attempts: 3,
            backoff: Duration::from_millis(200),
            redirect_warned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Also signs with `secret`, during a rotation: each request then carries one signature per
    /// secret, and receivers that hold either one accept it.
    pub fn also_signed_with(mut self, secret: &str) -> Result<Self, SetupError> {
        let secret = Secret::for_signing(secret)
            .map_err(|error| SetupError::new(SINK, error.to_string()))?;
        Arc::make_mut(&mut self.secrets).push(secret);
        Ok(self)
    }

    /// The body's elements (default: the events with their metadata).
    pub fn envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    /// At most `events` events per request (default 100, at least 1).
    pub fn max_events(mut self, events: usize) -> Self {
        self.max_events = events.max(1);
        self
    }

    /// At most about `bytes` of body per request (default 1 MiB); an event larger than that is
    /// sent alone.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// How many times one call tries a request that failed for a reason worth retrying
    /// (default 3, at least 1), waiting `backoff`, then twice that, … in between (default 200 ms).
    pub fn retries(mut self, attempts: u32, backoff: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self
    }

    fn element(&self, message: &Message) -> String {
        match self.envelope {
            Envelope::CloudEvents { .. } => self.envelope.body(message),
            Envelope::Payload => {
                let payload: serde_json::Value = serde_json::from_str(&message.payload)
                    .unwrap_or_else(|_| serde_json::Value::String(message.payload.clone()));
                let mut element = serde_json::Map::new();
                for (name, value) in [
                    (fields::ID, message.id.to_string()),
                    (fields::EVENT_TYPE, message.event_type.clone()),
                    (fields::AGGREGATE_TYPE, message.aggregate_type.clone()),
                    (fields::AGGREGATE_ID, message.aggregate_id.clone()),
                ] {
                    element.insert(name.to_owned(), value.into());
                }
                element.insert(fields::PAYLOAD.to_owned(), payload);
                let headers = recorded_headers(message);
                if !headers.is_empty() {
                    element.insert(
                        fields::HEADERS.to_owned(),
                        headers
                            .into_iter()
                            .map(|(name, value)| (name, serde_json::Value::String(value)))
                            .collect::<serde_json::Map<_, _>>()
                            .into(),
                    );
                }
                serde_json::Value::Object(element).to_string()
            }
        }
    }

    fn content_type(&self) -> &'static str {
        match self.envelope {
            Envelope::Payload => "application/json",
            Envelope::CloudEvents { .. } => "application/cloudevents-batch+json",
        }
    }

    /// One signed POST of `elements`, retried in place while the failure is worth it.
    async fn post(&self, elements: &[&str]) -> Outcome {
        let body = format!("[{}]", elements.join(","));
        // The same batch sent again has the same id: derived from the body.
        let id = format!(
            "msg_{}",
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, body.as_bytes()).simple()
        );
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let now = SystemTime::now();
            let signature = self
                .secrets
                .iter()
                .map(|secret| secret.sign(&id, now, body.as_bytes()))
                .collect::<Vec<_>>()
                .join(" ");
            let sent = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, self.content_type())
                .header(ID_HEADER, &id)
                .header(TIMESTAMP_HEADER, unix_seconds(now).to_string())
                .header(SIGNATURE_HEADER, signature)
                .body(body.clone())
                .send()
                .await;
            let mut retry_after = None;
            match sent {
                Ok(response)
                    if response.status().is_redirection() || response.url() != &self.url =>
                {
                    let last = format!(
                        "{} answered {}: a redirect is not a delivery (the sink follows none); configure the URL the receiver answers at",
                        redacted(self.url.as_str()),
                        redirect_text(&response)
                    );
                    if !self.redirect_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %last, "webhook deliveries fail: the receiver redirects");
                    }
                    return Outcome::Failed(last);
                }
                Ok(response) if response.status().is_success() => {
                    self.redirect_warned.store(false, Ordering::Relaxed);
                    return Outcome::Delivered;
                }
                Ok(response) => {
                    let status = response.status();
                    retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = response.text().await.unwrap_or_default();
                    let text: String = text.chars().take(200).collect();
                    last = format!("{} answered {status}: {text}", self.url);
                    if refused_for_good(status) {
                        return Outcome::Refused(last);
                    }
                    if !worth_retrying_now(status) {
                        return Outcome::Failed(last);
                    }
                }
                Err(error) => last = format!("POST {} failed: {error}", self.url),
            }
            if attempt == self.attempts {
                break;
            }
            let pause = match retry_after {
                Some(asked) if asked > MAX_RETRY_AFTER => return Outcome::Failed(last),
                Some(asked) => asked,
                None => wait,
            };
            tokio::time::sleep(pause).await;
            wait *= 2;
        }
        Outcome::Failed(last)
    }

    /// Posts the events `part` (indices into `batch`), in order; a request refused for good is
    /// split in halves until the refused events are alone, so that one bad event does not take
    /// its neighbours to the dead letters. Events of an aggregate that has failed in this batch
    /// are not sent.
    async fn deliver<'b>(&self, part: Vec<usize>, batch: &Batch<'b>, state: &mut Progress<'b>) {
        let mut stack = vec![part];
        while let Some(part) = stack.pop() {
            let part: Vec<usize> = part
                .into_iter()
                .filter(|&index| state.sendable(batch, index))
                .collect();
            if part.is_empty() {
                continue;
            }
            let elements: Vec<&str> = part
                .iter()
                .map(|&index| batch.elements[index].as_str())
                .collect();
            match self.post(&elements).await {
                Outcome::Delivered => {
                    for index in part {
                        state.results[index] = Some(Ok(()));
                    }
                }
                Outcome::Failed(error) => {
                    let error = SinkError::transient(error);
                    for index in part {
                        state.results[index] = Some(Err(error.clone()));
                        state.failed.insert(batch.aggregate(index));
                    }
                }
                Outcome::Refused(error) if part.len() == 1 => {
                    // Dead-lettered by the relay: it holds nothing back.
                    state.results[part[0]] = Some(Err(SinkError::permanent(error)));
                }
                Outcome::Refused(_) => {
                    let (first, second) = part.split_at(part.len() / 2);
                    stack.push(second.to_vec());
                    stack.push(first.to_vec());
                }
            }
        }
    }
}

/// A relay batch with each event's element of the body.
struct Batch<'b> {
    messages: &'b [Message],
    elements: Vec<String>,
}

impl<'b> Batch<'b> {
    fn aggregate(&self, index: usize) -> (&'b str, &'b str) {
        let message = &self.messages[index];
        (&message.aggregate_type, &message.aggregate_id)
    }
}

/// What became of a batch's events so far, and the aggregates whose events failed.
struct Progress<'b> {
    results: Vec<Option<Delivery>>,
    failed: HashSet<(&'b str, &'b str)>,
}

impl<'b> Progress<'b> {
    /// False (and the event reported unsent) when an earlier event of its aggregate failed.
    fn sendable(&mut self, batch: &Batch<'b>, index: usize) -> bool {
        if self.failed.contains(&batch.aggregate(index)) {
            self.results[index] = Some(Err(SinkError::transient(
                "not sent: an earlier event of its aggregate failed",
            )));
            return false;
        }
        true
    }
}

/// How a redirecting answer reads in an error: `302 Found to /moved`, or the URL a client
/// that follows redirects ended at.
fn redirect_text(response: &reqwest::Response) -> String {
    let status = response.status();
    if !status.is_redirection() {
        return format!(
            "{status} from {}, after a redirect",
            redacted(response.url().as_str())
        );
    }
    match response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|location| String::from_utf8_lossy(location.as_bytes()).into_owned())
    {
        Some(location) => format!("{status} with Location: {}", redacted(&location)),
        None => format!("{status} without a Location"),
    }
}

/// Statuses that say the request itself is wrong: the same body will never be accepted.
fn refused_for_good(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        400 | 404 | 405 | 410 | 411 | 413 | 414 | 415 | 422
    )
}

/// Statuses worth a retry within the same call: the receiver is overloaded or restarting.
fn worth_retrying_now(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
}

impl Sink for WebhookSink {
    fn destination(&self, _message: &Message) -> Option<Destination> {
        let server = self
            .url
            .host_str()
            .zip(self.url.port_or_known_default())
            .map(|(host, port)| (host.to_owned(), port));
        Some(Destination::new("webhook", redacted(self.url.as_str())).with_server(server.as_ref()))
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let batch = Batch {
            messages: batch,
            elements: batch.iter().map(|message| self.element(message)).collect(),
        };
        let mut state = Progress {
            results: vec![None; batch.messages.len()],
            failed: HashSet::new(),
        };
        let mut next = 0;
        while next < batch.messages.len() {
            let mut part = Vec::new();
            let mut bytes = 0;
            while next < batch.messages.len() {
                if !state.sendable(&batch, next) {
                    next += 1;
                    continue;
                }
                let size = batch.elements[next].len() + 1;
                if !part.is_empty()
                    && (part.len() >= self.max_events || bytes + size > self.max_bytes)
                {
                    break;
                }
                bytes += size;
                part.push(next);
                next += 1;
            }
            self.deliver(part, &batch, &mut state).await;
        }
        state
            .results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(SinkError::transient("not sent"))))
            .collect()
    }

    /// Requests go one after the other, and an aggregate whose event failed sends nothing more.
    fn keeps_order(&self) -> bool {
        true
    }
}
