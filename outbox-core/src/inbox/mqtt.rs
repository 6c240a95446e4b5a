//! MQTT consumers through the inbox (feature `mqtt`): an [`MqttConsumer`] subscribes with QoS 1
//! in a persistent session, [`MqttConsumer::process`] runs each message through the [`Inbox`]
//! and only then acknowledges it (`PUBACK`, manual acknowledgements).
//!
//! The session outlives the connection (`clean start` off, a session expiry of a week): the
//! broker keeps what was published to the subscription while the consumer was away, and a
//! message delivered but not acknowledged — the consumer crashed between its commit and its
//! `PUBACK`, or its handler failed — is sent again when the session resumes. The inbox drops a
//! message whose effect was committed. The client id names the session: give each consumer a
//! stable one (`?client_id=` in the URL), the same after a restart.
//!
//! The id is the `outbox-event-id` user property that the outbox's
//! [`MqttSink`](crate::sinks::mqtt::MqttSink) sets.
//!
//! On Mosquitto, raise `max_queued_messages` (1,000 by default): beyond it, the broker drops
//! what it queues for a consumer that is away (`scripts/services.sh` sets 1,000,000).
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), BoxError> {
//! use outbox::inbox::Inbox;
//! use outbox::inbox::mqtt::MqttConsumer;
//!
//! let consumer =
//!     MqttConsumer::connect("mqtt://127.0.0.1:1883?client_id=read-model-1", "bank/#").await?;
//! while let Some(message) = consumer.next().await {
//!     let payload = message.payload.clone();
//!     consumer
//!         .process(&Inbox::DEFAULT, &pool, "read-model", &message, |tx| {
//!             Box::pin(async move {
//!                 let event: serde_json::Value = serde_json::from_slice(&payload)?;
//!                 sqlx::query("INSERT INTO seen (n) VALUES ($1)")
//!                     .bind(event["n"].as_i64())
//!                     .execute(&mut **tx)
//!                     .await?;
//!                 Ok::<_, BoxError>(())
//!             })
//!         })
//!         .await?;
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Mutex, mpsc};

use super::{Handler, Inbox, InboxMessage, Processed, process_then_acknowledge};
use crate::inbox::InboxSql;
use crate::sinks::SetupError;
use crate::{Error, sinks};

const BROKER: &str = "MQTT";

/// How long the broker keeps the session of a consumer that is away: a week.
const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 60 * 60;

impl InboxMessage for Publish {
    fn message_id(&self) -> Result<String, Error> {
        self.header(sinks::EVENT_ID).ok_or(Error::MissingMessageId {
            broker: BROKER,
            expected: "an `outbox-event-id` user property",
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.properties
            .as_ref()?
            .user_properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }

    fn destination(&self) -> Option<crate::sink::Destination> {
        let topic = std::str::from_utf8(&self.topic).ok()?;
        Some(crate::sink::Destination::new("mqtt", topic))
    }
}

/// A subscriber in a persistent session with manual acknowledgements; see the [module](self).
pub struct MqttConsumer {
    client: AsyncClient,
    messages: Mutex<mpsc::UnboundedReceiver<Publish>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MqttConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConsumer").finish_non_exhaustive()
    }
}

impl Drop for MqttConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttConsumer {
    /// Connects to `url` (`mqtt://[user:password@]host[:port]?client_id=…`; the client id is
    /// required: it names the session), resumes or starts the session, and subscribes to
    /// `topic` (a filter, wildcards allowed) with QoS 1. Returns once the broker acknowledged
    /// the subscription: what is published after that reaches the session.
    pub async fn connect(url: &str, topic: &str) -> Result<MqttConsumer, SetupError> {
        if !url.contains("client_id=") {
            return Err(SetupError::new(
                BROKER,
                "the URL has no `client_id`: a persistent session needs a stable one \
                 (`mqtt://host:1883?client_id=read-model-1`)",
            ));
        }
        let mut options = MqttOptions::parse_url(url)
            .map_err(|error| SetupError::new(BROKER, format!("invalid URL: {error}")))?;
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
            .set_manual_acks(true);
        Self::with_options(options, topic).await
    }

    /// [`connect`](Self::connect) with rumqttc's options (e.g. for TLS); the session settings
    /// and manual acknowledgements are set here.
    pub async fn with_options(
        mut options: MqttOptions,
        topic: &str,
    ) -> Result<MqttConsumer, SetupError> {
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
            .set_manual_acks(true);
        let (client, mut events) = AsyncClient::new(options.clone(), 1024);
        let timeout = Duration::from_secs(options.connection_timeout()) + Duration::from_secs(1);
        let connected = tokio::time::timeout(timeout, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(error),
                }
            }
        })
        .await;
        let (host, port) = options.broker_address();
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(SetupError::unreachable(
                    BROKER,
                    format!("cannot connect to {host}:{port}: {error}"),
                ));
            }
            Err(_) => {
                return Err(SetupError::unreachable(
                    BROKER,
                    format!(
                        "no CONNACK from {host}:{port} within {}s",
                        timeout.as_secs()
                    ),
                ));
            }
        }
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .map_err(|error| SetupError::new(BROKER, format!("subscribe to {topic}: {error}")))?;
        // Unbounded: the event loop must never wait for the consumer, which waits for the event
        // loop to send its acknowledgements (the broker bounds what is in flight).
        let (sender, messages) = mpsc::unbounded_channel();
        // Subscribed once the broker says so: what is published after `connect` returns reaches
        // this session. A resumed session's messages may come first; they are kept.
        let subscribed = tokio::time::timeout(timeout, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => return Ok(ack),
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = sender.send(publish);
                    }
                    Ok(_) => {}
                    Err(error) => return Err(error.to_string()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no SUBACK within {}s", timeout.as_secs())))
        .map_err(|error| SetupError::new(BROKER, format!("subscribe to {topic}: {error}")))?;
        if let Some(refused) = subscribed
            .return_codes
            .iter()
            .find(|code| !matches!(code, SubscribeReasonCode::Success(_)))
        {
            return Err(SetupError::new(
                BROKER,
                format!("the broker refused the subscription to {topic}: {refused:?}"),
            ));
        }
        let task = tokio::spawn(drive(events, sender));
        Ok(MqttConsumer {
            client,
            messages: Mutex::new(messages),
            task,
        })
    }

    /// The next message; `None` once the consumer is closed.
    pub async fn next(&self) -> Option<Publish> {
        self.messages.lock().await.recv().await
    }

    /// Processes `message` exactly once for `consumer` (see [`Inbox::process`]), then
    /// acknowledges it: after the commit, or at once for a duplicate. A handler error rolls
    /// back and leaves the message unacknowledged: the broker sends it again when the session
    /// resumes. A message without an id is neither processed nor acknowledged.
    pub async fn process<DB, T, E, F>(
        &self,
        inbox: &Inbox,
        pool: &sqlx::Pool<DB>,
        consumer: &str,
        message: &Publish,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        DB: InboxSql,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
    {
        process_then_acknowledge(
            inbox,
            pool,
            consumer,
            message,
            handler,
            BROKER,
            || async { self.client.ack(message).await.map_err(|e| e.to_string()) },
            || async { Ok(()) }, // unacknowledged: sent again when the session resumes
        )
        .await
    }
}

/// Polls the event loop: each incoming publish goes to the consumer; a lost connection is
/// opened again (rumqttc reconnects on the next poll), the session resuming.
async fn drive(mut events: EventLoop, messages: mpsc::UnboundedSender<Publish>) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if messages.send(publish).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "MQTT consumer: connection lost; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
