//! Five thousand events through NATS, Redis Streams and MQTT while relays and consumers are
//! killed: each applied exactly once.

use super::*;

/// Publishes through the inner sink, and on its `hang_at`-th batch publishes, then never
/// returns: the relay is killed there, between publishing and settling, so that its successor
/// publishes that batch again.
pub(super) struct CrashAfterPublishing<K> {
    inner: K,
    hang_at: usize,
    batches: AtomicUsize,
    hung: Arc<tokio::sync::Notify>,
}

impl<K: outbox::relay::Sink> outbox::relay::Sink for CrashAfterPublishing<K> {
    async fn publish(&self, batch: &[outbox::relay::Message]) -> Vec<outbox::relay::Delivery> {
        let results = self.inner.publish(batch).await;
        if self.batches.fetch_add(1, Ordering::SeqCst) + 1 == self.hang_at {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        results
    }

    fn keeps_order(&self) -> bool {
        self.inner.keeps_order()
    }
}

pub(super) const EVENTS: i64 = 5_000;
pub(super) const ACCOUNTS: i64 = 50;

/// The producer of the end-to-end runs: 5,000 deposits over 50 accounts recorded in its outbox,
/// 50 per transaction; the balances they add up to.
pub(super) async fn record_deposits(
    producer: &outbox_tests::RelayTable<Pg>,
) -> std::collections::HashMap<String, i64> {
    let mut expected = std::collections::HashMap::new();
    for first in (0..EVENTS).step_by(50) {
        let mut tx = producer.pool.begin().await.unwrap();
        for n in first..first + 50 {
            let account = format!("acc-{}", n % ACCOUNTS);
            let amount = n % 97 + 1;
            *expected.entry(account.clone()).or_default() += amount;
            let event = outbox::Event::new(
                "account",
                "Deposited",
                Some(&account),
                &serde_json::json!({ "account": account, "amount": amount }),
            )
            .unwrap();
            producer.outbox.record(&mut *tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    expected
}

/// Relays the producer's outbox through `sink()`, the relay killed twice right after publishing
/// a batch, before settling it; the third drains the outbox.
pub(super) async fn relay_killed_twice<K, F>(
    producer: &outbox_tests::RelayTable<Pg>,
    sink: impl Fn() -> F,
) where
    K: outbox::relay::Sink,
    F: std::future::Future<Output = K>,
{
    use outbox::relay::{Backoff, Relay};
    for hang_at in [12, 20, usize::MAX] {
        let hung = Arc::new(tokio::sync::Notify::new());
        let relay = tokio::spawn(
            Relay::builder(
                producer.pool.clone(),
                CrashAfterPublishing {
                    inner: sink().await,
                    hang_at,
                    batches: AtomicUsize::new(0),
                    hung: hung.clone(),
                },
            )
            .outbox(&producer.outbox)
            .batch_size(100)
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(1),
            ))
            .build()
            .run(std::future::pending()),
        );
        if hang_at == usize::MAX {
            outbox_tests::eventually(Duration::from_secs(120), "the outbox to drain", || async {
                producer.remaining().await == 0
            })
            .await;
        } else {
            tokio::time::timeout(Duration::from_secs(60), hung.notified())
                .await
                .expect("the relay reached the batch it dies after");
        }
        relay.abort();
        let _ = relay.await;
    }
}

/// The consumer's read model: balances, and one row per applied event (a second application
/// of an event would violate its key).
pub(super) struct ReadModel {
    pub(super) db: Pg,
    pub(super) inbox: Inbox,
    pub(super) balances: String,
    pub(super) applied: String,
}

impl ReadModel {
    pub(super) async fn new(name: &str) -> ReadModel {
        let db = Pg::connect().await;
        let id = run_id();
        let inbox = Inbox::for_table(TableName::new(format!("inbox_{name}_{id}")).unwrap());
        inbox.migrate(db.pool()).await.unwrap();
        let (balances, applied) = (format!("balances_{id}"), format!("applied_{id}"));
        db.execute(format!(
            "CREATE TABLE {balances} (account TEXT PRIMARY KEY, cents BIGINT NOT NULL);
             CREATE TABLE {applied} (event_id TEXT PRIMARY KEY, account TEXT NOT NULL, \
                                     amount BIGINT NOT NULL, times BIGINT NOT NULL)"
        ))
        .await;
        ReadModel {
            db,
            inbox,
            balances,
            applied,
        }
    }

    /// The handler applying one deposit event.
    pub(super) fn apply(
        &self,
        event_id: String,
        event: serde_json::Value,
    ) -> impl for<'c> FnOnce(
        &'c mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> outbox::inbox::Handler<'c, (), BoxError>
    + use<> {
        let (balances, applied) = (self.balances.clone(), self.applied.clone());
        move |tx| {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {balances} (account, cents) VALUES ($1, $2) \
                     ON CONFLICT (account) DO UPDATE SET cents = {balances}.cents + $2"
                )))
                .bind(event["account"].as_str())
                .bind(event["amount"].as_i64())
                .execute(&mut **tx)
                .await?;
                // How often each event was applied: the tests count, rather than let a second
                // application fail on the key.
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {applied} (event_id, account, amount, times) VALUES ($1, $2, $3, 1) \
                     ON CONFLICT (event_id) DO UPDATE SET times = {applied}.times + 1"
                )))
                .bind(event_id)
                .bind(event["account"].as_str())
                .bind(event["amount"].as_i64())
                .execute(&mut **tx)
                .await?;
                Ok::<_, BoxError>(())
            })
        }
    }

    /// Waits for every event to be applied, then checks each was applied once and the balances.
    pub(super) async fn assert_applied_once(
        &self,
        expected: &std::collections::HashMap<String, i64>,
        duplicates: &AtomicUsize,
        why: &str,
    ) {
        let applied = format!("SELECT COUNT(*) FROM {}", self.applied);
        outbox_tests::eventually(Duration::from_secs(120), "every event applied", || async {
            self.db.scalar(applied.clone()).await == EVENTS
        })
        .await;
        // Redeliveries still in flight are dropped too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.db.scalar(applied).await, EVENTS);
        let most = format!("SELECT COALESCE(MAX(times), 0) FROM {}", self.applied);
        assert_eq!(self.db.scalar(most).await, 1, "an event was applied twice");
        let duplicates = duplicates.load(Ordering::SeqCst);
        assert!(
            duplicates > 0,
            "{why} caused no redelivery: the test proves nothing"
        );
        for (account, cents) in expected {
            let got = self
                .db
                .scalar(format!(
                    "SELECT cents FROM {} WHERE account = '{account}'",
                    self.balances
                ))
                .await;
            assert_eq!(got, *cents, "balance of {account}");
        }
        eprintln!("{EVENTS} events applied once; {duplicates} duplicates dropped by the inbox");
    }

    pub(super) async fn drop_tables(self) {
        self.db
            .execute(format!(
                "DROP TABLE {}; DROP TABLE {}; DROP TABLE {}",
                self.balances,
                self.applied,
                self.inbox.table()
            ))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_a_twice_killed_relay_are_applied_exactly_once() {
    use futures::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
    use outbox_tests::RelayTable;

    let hint = "start RabbitMQ with scripts/services.sh";
    let producer = RelayTable::<Pg>::new().await;
    let expected = record_deposits(&producer).await;

    // The broker: a queue bound to the producer's exchange.
    let exchange = format!("{}.account", producer.name);
    let (_connection, channel, queue) = outbox_tests::amqp_queue(&exchange).await;
    let routing = Routing::template(&format!("{}.{{aggregate_type}}", producer.name)).unwrap();
    let sink = || async {
        RabbitMqSink::connect(&outbox_tests::amqp_url())
            .await
            .unwrap_or_else(|e| panic!("{e}; {hint}"))
            .exchange(routing.clone())
    };

    let model = Arc::new(ReadModel::new("e2e").await);
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "e2e".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let duplicates = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let (model, duplicates) = (model.clone(), duplicates.clone());
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery.unwrap();
                let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                let event_id = delivery
                    .properties
                    .message_id()
                    .clone()
                    .unwrap()
                    .to_string();
                let outcome = outbox::inbox::rabbitmq::process(
                    &model.inbox,
                    model.db.pool(),
                    "balances",
                    &delivery,
                    model.apply(event_id, event),
                )
                .await
                .unwrap();
                if outcome.is_duplicate() {
                    duplicates.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays")
        .await;
    consumer.abort();
    let _ = consumer.await;
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// Redis Streams: 5,000 events relayed by a relay killed twice right after publishing, consumed
/// through a consumer group by consumers of which two are killed between their commit and their
/// `XACK`: the entries they left pending are claimed by the next (`XAUTOCLAIM`) and dropped by
/// the inbox. Every event applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_redis_with_killed_relays_and_consumers_are_applied_once() {
    use outbox::inbox::InboxMessage;
    use outbox::inbox::redis::RedisConsumer;
    use outbox::sinks::{Routing, redis::RedisSink};
    use outbox_tests::RelayTable;

    let redis_url = "redis://127.0.0.1:6379";
    let hint = "start Redis with scripts/services.sh";
    let producer = RelayTable::<Pg>::new().await;
    let expected = record_deposits(&producer).await;
    let stream = format!("{}:account", producer.name);
    let routing = Routing::template(&format!("{}:{{aggregate_type}}", producer.name)).unwrap();
    let sink = || async {
        RedisSink::connect(redis_url)
            .await
            .unwrap_or_else(|e| panic!("{e}; {hint}"))
            .routing(routing.clone())
    };
    let model = Arc::new(ReadModel::new("redis").await);
    let duplicates = Arc::new(AtomicUsize::new(0));
    // A consumer of the group `balances`; with `dies_after`, it processes that many entries,
    // then commits the next one and dies before its `XACK`.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (model, duplicates, stream) = (model.clone(), duplicates.clone(), stream.clone());
        let stop = stop.clone();
        move |name: &'static str, dies_after: Option<usize>| {
            let (model, duplicates, stream) = (model.clone(), duplicates.clone(), stream.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let consumer = RedisConsumer::connect(redis_url, &stream, "balances", name)
                    .await
                    .unwrap_or_else(|e| panic!("{e}; {hint}"))
                    .min_idle(Duration::from_millis(500))
                    .block(Duration::from_millis(200));
                let mut processed = 0;
                while !stop.load(Ordering::SeqCst) {
                    for entry in consumer.next_batch().await.unwrap() {
                        let event: serde_json::Value =
                            serde_json::from_str(entry.field("payload").unwrap()).unwrap();
                        let id = entry.message_id().unwrap();
                        let handler = model.apply(id.clone(), event);
                        if dies_after == Some(processed) {
                            // Committed, never acknowledged: the crash.
                            let _ = model
                                .inbox
                                .process(model.db.pool(), "balances", &id, handler)
                                .await
                                .unwrap();
                            return;
                        }
                        let outcome = consumer
                            .process(&model.inbox, model.db.pool(), "balances", &entry, handler)
                            .await
                            .unwrap();
                        if outcome.is_duplicate() {
                            duplicates.fetch_add(1, Ordering::SeqCst);
                        }
                        processed += 1;
                    }
                }
            })
        }
    };
    // The consumers one after the other: each takes over what the one before left pending.
    let consumers = tokio::spawn(async move {
        consumer("first", Some(1_000)).await.unwrap();
        consumer("second", Some(1_500)).await.unwrap();
        consumer("last", None).await.unwrap();
    });
    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays and consumers")
        .await;
    stop.store(true, Ordering::SeqCst);
    consumers.await.unwrap();
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// MQTT: 5,000 events relayed by a relay killed twice right after publishing, consumed in a
/// persistent session with manual acknowledgements by consumers of which two die between a
/// commit and its `PUBACK`: the next resumes the session, the broker sends the unacknowledged
/// messages again, and the inbox drops them. Every event applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_mqtt_with_killed_relays_and_consumers_are_applied_once() {
    use outbox::inbox::InboxMessage;
    use outbox::inbox::mqtt::MqttConsumer;
    use outbox::sinks::{Routing, mqtt::MqttSink};
    use outbox_tests::RelayTable;

    let hint = "start Mosquitto with scripts/services.sh";
    let producer = RelayTable::<Pg>::new().await;
    let expected = record_deposits(&producer).await;
    let routing = Routing::template(&format!("{}/{{aggregate_type}}", producer.name)).unwrap();
    let sink = || async {
        MqttSink::connect("mqtt://127.0.0.1:1883")
            .await
            .unwrap_or_else(|e| panic!("{e}; {hint}"))
            .routing(routing.clone())
    };
    let model = Arc::new(ReadModel::new("mqtt").await);
    let duplicates = Arc::new(AtomicUsize::new(0));
    let url = format!("mqtt://127.0.0.1:1883?client_id={}", producer.name);
    let topic = format!("{}/#", producer.name);
    // The session starts, and subscribes, before anything is published.
    let first = MqttConsumer::connect(&url, &topic)
        .await
        .unwrap_or_else(|e| panic!("{e}; {hint}"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Consumes until `dies_after` messages were processed: the next one is committed, never
    // acknowledged, and the consumer is dropped (its connection closed).
    let consume = {
        let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
        move |consumer: MqttConsumer, dies_after: Option<usize>| {
            let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
            async move {
                let mut processed = 0;
                while !stop.load(Ordering::SeqCst) {
                    let Ok(Some(message)) =
                        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
                    else {
                        continue;
                    };
                    let event: serde_json::Value =
                        serde_json::from_slice(&message.payload).unwrap();
                    let id = message.message_id().unwrap();
                    let handler = model.apply(id.clone(), event);
                    if dies_after == Some(processed) {
                        let _ = model
                            .inbox
                            .process(model.db.pool(), "balances", &id, handler)
                            .await
                            .unwrap();
                        return;
                    }
                    let outcome = consumer
                        .process(&model.inbox, model.db.pool(), "balances", &message, handler)
                        .await
                        .unwrap();
                    if outcome.is_duplicate() {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                    processed += 1;
                }
            }
        }
    };
    let consumers = {
        let url = url.clone();
        tokio::spawn(async move {
            consume(first, Some(1_000)).await;
            for dies_after in [Some(1_500), None] {
                let consumer = MqttConsumer::connect(&url, &topic).await.unwrap();
                consume(consumer, dies_after).await;
            }
        })
    };
    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays and consumers")
        .await;
    stop.store(true, Ordering::SeqCst);
    consumers.await.unwrap();
    // A clean start under the consumers' client id ends their session on the broker.
    drop(MqttSink::connect(&url).await.unwrap());
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}
