//! The publish engine: a claimed batch to the sink in waves in which no aggregate appears twice
//! (or in one wave, to a sink that keeps order), each delivery bounded in time and searched by
//! halves for the event at fault, the results matched to the events, and an aggregate whose
//! event failed held back. The one engine every source goes through — the table, the log, and
//! the CockroachDB changefeed's receiver.

use super::*;

impl<S: Source, K: Sink> Relay<S, K> {
    /// Publishes in waves in which no aggregate appears twice — or, to a sink that
    /// [keeps order](Sink::keeps_order), in one wave with each aggregate's events in order. An
    /// aggregate whose event failed takes no further part in the batch (its later events are
    /// released untouched).
    pub(super) async fn publish(&self, messages: Vec<Message>) -> Settlement {
        let ordered = self.config.ordering == Ordering::PerAggregate;
        let together = self.sink.keeps_order();
        let mut settlement = Settlement::default();
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        let mut stalled = false;
        let waves = if ordered && !together {
            waves(messages)
        } else {
            vec![messages]
        };
        for wave in waves {
            if stalled {
                // A delivery timed out: the rest of the batch is released untried.
                break;
            }
            let wave: Vec<Message> = if blocked.is_empty() {
                wave
            } else {
                wave.into_iter()
                    .filter(|m| !blocked.contains(&aggregate_of(m)))
                    .collect()
            };
            if wave.is_empty() {
                continue;
            }
            // The enrichment step, if any, between claim and sink: what it fails for is settled
            // as a sink failure, and in per-aggregate order the aggregate's later events in the
            // wave wait. `refused` lines up with the claimed `wave`; the sink gets the rest.
            #[cfg_attr(not(feature = "opentelemetry"), allow(unused_mut))]
            let (wave, mut to_sink, refused) = match &self.config.enrich {
                None => (None, wave, None),
                Some(enricher) => {
                    let (to_sink, refused) =
                        prepare(enricher, &wave, ordered, self.config.delivery_timeout).await;
                    (Some(wave), to_sink, Some(refused))
                }
            };
            #[cfg(feature = "opentelemetry")]
            let spans = super::spans::SendSpans::start(
                &self.sink,
                self.config.table.as_str(),
                &mut to_sink,
            );
            let results = within(self.config.delivery_timeout, &self.sink, &to_sink).await;
            stalled = results.iter().any(Option::is_none);
            // Untried messages are reported to the spans as failures; they are settled as
            // nothing (released untouched).
            #[cfg(feature = "opentelemetry")]
            spans.finish(
                &results
                    .iter()
                    .map(|result| {
                        result.clone().unwrap_or_else(|| {
                            Err(SinkError::transient(
                                "not tried: a delivery before it timed out",
                            ))
                        })
                    })
                    .collect::<Vec<Delivery>>(),
            );
            let (wave, results) = match (wave, refused) {
                (Some(wave), Some(refused)) => {
                    let mut sent = results.into_iter();
                    let merged = refused
                        .into_iter()
                        .map(|refusal| match refusal {
                            Some(error) => Some(Err(error)),
                            None => sent.next().unwrap_or_else(|| Some(no_result())),
                        })
                        .collect();
                    (wave, merged)
                }
                _ => (to_sink, results),
            };
            let mut results = results.into_iter();
            for message in wave {
                let Some(result) = results.next().unwrap_or_else(|| Some(no_result())) else {
                    // Not tried: a delivery before it timed out. Released untouched.
                    continue;
                };
                match result {
                    Ok(()) => settlement.published.push(message.seq),
                    Err(error) => {
                        if ordered && !blocked.insert(aggregate_of(&message)) {
                            // An earlier event of its aggregate failed in this wave: this one
                            // was not tried, and waits for it.
                            continue;
                        }
                        let attempt = u32::try_from(message.attempts)
                            .unwrap_or(0)
                            .saturating_add(1);
                        if error.is_permanent() || attempt >= self.config.max_attempts {
                            tracing::warn!(
                                event_id = %message.id,
                                event_type = %message.event_type,
                                aggregate = %format_args!("{}/{}", message.aggregate_type, message.aggregate_id),
                                %error,
                                attempt,
                                "dead letter: the event is kept in the outbox until replayed"
                            );
                            settlement.dead.push((message.seq, error.to_string()));
                        } else {
                            let delay = self.config.backoff.delay(attempt);
                            self.failures.failed(&message, &error, attempt, delay);
                            settlement
                                .retry
                                .push((message.seq, error.to_string(), delay));
                        }
                    }
                }
            }
        }
        if !settlement.published.is_empty() {
            self.failures.delivered(settlement.published.len());
        }
        settlement
    }
}

pub(super) fn no_result() -> Delivery {
    Err(SinkError::transient(
        "the sink returned no result for this message",
    ))
}

/// Publishes `messages` to `sink`, each call bounded by `timeout`: one result per message,
/// `None` for a message not tried. When a call of several times out, its first half is tried
/// alone, then (if that answered) its second, each bounded the same way, down to the one
/// message whose call times out alone: that one fails, and the messages after it are left
/// untried. Whatever hangs, at most log2(n) + 1 calls time out.
pub(super) async fn within<K: Sink>(
    timeout: Duration,
    sink: &K,
    messages: &[Message],
) -> Vec<Option<Delivery>> {
    let mut results: Vec<Option<Delivery>> = vec![None; messages.len()];
    let mut parts = vec![(0, messages.len())];
    while let Some((from, to)) = parts.pop() {
        if from == to {
            continue;
        }
        match tokio::time::timeout(timeout, sink.publish(&messages[from..to])).await {
            Ok(answered) => {
                let mut answered = answered.into_iter();
                for result in &mut results[from..to] {
                    *result = Some(answered.next().unwrap_or_else(no_result));
                }
            }
            Err(_) if to - from == 1 => {
                let message = &messages[from];
                tracing::warn!(
                    event_id = %message.id,
                    event_type = %message.event_type,
                    ?timeout,
                    "the sink did not answer within the delivery timeout: a failed delivery"
                );
                results[from] = Some(Err(SinkError::transient(format!(
                    "the sink did not answer within {timeout:?} (the relay's delivery_timeout)"
                ))));
                break;
            }
            Err(_) => {
                let middle = from + (to - from) / 2;
                parts.push((middle, to));
                parts.push((from, middle));
            }
        }
    }
    results
}

/// `wave` through the enrichment step: the messages for the sink, and for each message of the
/// wave, the error that keeps it from the sink (`None`: it goes). In per-aggregate order, an
/// aggregate whose event failed sends none of its later ones.
pub(super) async fn prepare(
    enricher: &Enricher,
    wave: &[Message],
    ordered: bool,
    timeout: Duration,
) -> (Vec<Message>, Vec<Option<SinkError>>) {
    let enriched = enricher.enrich(wave, timeout).await;
    let mut failed = HashSet::new();
    let mut to_sink = Vec::with_capacity(wave.len());
    let mut refused = Vec::with_capacity(wave.len());
    for (message, result) in wave.iter().zip(enriched) {
        let held = ordered && failed.contains(&aggregate_of(message));
        match result {
            Ok(enriched) if !held => {
                to_sink.push(enriched);
                refused.push(None);
            }
            Ok(_) => refused.push(Some(SinkError::transient(
                "waits for an earlier event of its aggregate",
            ))),
            Err(error) => {
                if ordered {
                    failed.insert(aggregate_of(message));
                }
                refused.push(Some(error));
            }
        }
    }
    (to_sink, refused)
}

/// A message's aggregate, as a key.
pub(super) fn aggregate_of(message: &Message) -> (String, String) {
    (message.aggregate_type.clone(), message.aggregate_id.clone())
}

/// `messages` (in `seq` order) in waves in which no aggregate appears twice: an aggregate's
/// `n`th event in the `n`th wave, so that each wave publishes after the one before. One pass,
/// however many events an aggregate has in the batch.
pub(crate) fn waves(messages: Vec<Message>) -> Vec<Vec<Message>> {
    let mut seen: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(messages.len());
    let ranks: Vec<usize> = messages
        .iter()
        .map(|m| {
            let count = seen
                .entry((m.aggregate_type.as_str(), m.aggregate_id.as_str()))
                .or_insert(0);
            *count += 1;
            *count - 1
        })
        .collect();
    drop(seen);
    let mut waves: Vec<Vec<Message>> = Vec::new();
    for (message, rank) in messages.into_iter().zip(ranks) {
        if waves.len() <= rank {
            waves.resize_with(rank + 1, Vec::new);
        }
        waves[rank].push(message);
    }
    waves
}

/// How often, at most, a failing delivery is logged at warn: an outage is a few lines, not one
/// per event.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Rate-limits the warnings of failed deliveries and says when deliveries recover.
#[derive(Debug, Default)]
pub(super) struct FailureLog(std::sync::Mutex<Failures>);

#[derive(Debug, Default)]
pub(super) struct Failures {
    /// Failed deliveries since the last success.
    outage: u64,
    /// Failed deliveries since the last warning.
    unreported: u64,
    last_warning: Option<Instant>,
}

impl FailureLog {
    pub(super) fn failed(
        &self,
        message: &Message,
        error: &SinkError,
        attempt: u32,
        retry_in: Duration,
    ) {
        let mut failures = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        failures.outage += 1;
        if failures
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            tracing::warn!(
                event_id = %message.id,
                %error,
                attempt,
                ?retry_in,
                failed_since_last_warning = failures.unreported,
                "delivery failed; the event will be retried (further failures are summarised every {}s)",
                WARN_EVERY.as_secs()
            );
            failures.last_warning = Some(Instant::now());
            failures.unreported = 0;
        } else {
            failures.unreported += 1;
            tracing::debug!(event_id = %message.id, %error, attempt, ?retry_in, "delivery failed");
        }
    }

    pub(super) fn delivered(&self, published: usize) {
        let mut failures = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        if failures.outage > 0 {
            tracing::info!(
                failed_deliveries = failures.outage,
                published,
                "deliveries recovered"
            );
            *failures = Failures::default();
        }
    }
}
