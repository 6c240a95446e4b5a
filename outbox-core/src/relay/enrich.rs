//! An optional step between claim and sink: [`Enrich`] rewrites a message — its payload, its
//! headers, its event type (and so the routing key a template makes of it) — or looks data up,
//! with a pool or a cache of its own, before the sink publishes it. The table keeps the event
//! as recorded, so that the message model need not leak into the service's writes.
//!
//! An enrichment fails as a sink does: a transient [`SinkError`] is retried with the relay's
//! backoff, a permanent one (or the last attempt) makes the event a dead letter, and in
//! per-aggregate order the aggregate's later events wait for it. The event's id, `seq` and
//! attempts are the relay's: whatever the step returns, they are kept.
//!
//! ```
//! use outbox::relay::{ChannelSink, Message, Relay, SinkError};
//!
//! # async fn demo(pool: sqlx::PgPool) {
//! let (sink, _published) = ChannelSink::new(1024);
//! let owners = pool.clone();
//! let relay = Relay::builder(pool, sink)
//!     .enrich(move |mut message: Message| {
//!         let owners = owners.clone();
//!         async move {
//!             let owner: Option<String> =
//!                 sqlx::query_scalar("SELECT owner FROM accounts WHERE id = $1::int8")
//!                     .bind(&message.aggregate_id)
//!                     .fetch_optional(&owners)
//!                     .await
//!                     .map_err(|e| SinkError::transient(format!("owner lookup: {e}")))?;
//!             let owner = owner.ok_or_else(|| SinkError::permanent("no such account"))?;
//!             let mut payload: serde_json::Value = serde_json::from_str(&message.payload)
//!                 .map_err(|e| SinkError::permanent(e.to_string()))?;
//!             payload["owner_name"] = owner.into();
//!             message.payload = payload.to_string();
//!             Ok(message)
//!         }
//!     })
//!     .build();
//! # let _ = relay;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Message, SinkError};

/// Rewrites or completes a message before the sink publishes it: see the [module](self).
/// Implemented for every `Fn(Message) -> impl Future<Output = Result<Message, SinkError>>`.
pub trait Enrich: Send + Sync + 'static {
    /// The message to publish instead of `message`, or why there is none yet.
    fn enrich(&self, message: Message) -> impl Future<Output = Result<Message, SinkError>> + Send;
}

impl<F, Fut> Enrich for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Message, SinkError>> + Send,
{
    fn enrich(&self, message: Message) -> impl Future<Output = Result<Message, SinkError>> + Send {
        self(message)
    }
}

type Enriched<'a> = Pin<Box<dyn Future<Output = Result<Message, SinkError>> + Send + 'a>>;

/// [`Enrich`], object-safe, for the relay to hold without a type parameter.
trait DynEnrich: Send + Sync {
    fn enrich_boxed(&self, message: Message) -> Enriched<'_>;
}

impl<E: Enrich> DynEnrich for E {
    fn enrich_boxed(&self, message: Message) -> Enriched<'_> {
        Box::pin(self.enrich(message))
    }
}

/// The relay's enrichment step, if it has one.
#[derive(Clone)]
pub(crate) struct Enricher(Arc<dyn DynEnrich>);

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enricher")
    }
}

/// How many messages of a wave are enriched at once.
const CONCURRENCY: usize = 16;

impl Enricher {
    pub(crate) fn new(enrich: impl Enrich) -> Self {
        Enricher(Arc::new(enrich))
    }

    /// Each message of `wave`, enriched, in order, a few at a time. The relay's own fields
    /// (id, `seq`, attempts) are restored on what the step returns. A step that takes longer
    /// than `timeout` fails that message (a transient failure, retried and then dead-lettered).
    pub(crate) async fn enrich(
        &self,
        wave: &[Message],
        timeout: Duration,
    ) -> Vec<Result<Message, SinkError>> {
        use futures_util::StreamExt;
        futures_util::stream::iter(wave.iter().cloned())
            .map(|message| {
                let (id, seq, attempts) = (message.id, message.seq, message.attempts);
                let step = self.0.enrich_boxed(message);
                async move {
                    let mut enriched = tokio::time::timeout(timeout, step).await.map_err(|_| {
                        SinkError::transient(format!(
                            "the enrichment step did not finish within {timeout:?} (the relay's delivery_timeout)"
                        ))
                    })??;
                    enriched.id = id;
                    enriched.seq = seq;
                    enriched.attempts = attempts;
                    Ok(enriched)
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await
    }
}
