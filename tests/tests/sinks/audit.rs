//! The audit on each broker it reads: a relay in retention mode publishes a mix of committed
//! and rolled-back events, the audit finds every one and nothing else; then faults are put into
//! the broker with its own client — an event marked published that never reached it, a message
//! no transaction committed, a redelivered copy, two events of one aggregate in the wrong order
//! — and the audit counts each one.

use outbox::audit::{self, AuditReport, IdRange};

use super::*;

/// One broker's side of the test: where the relay publishes, and how to put a message of our
/// own there (`id`, aggregate `aggregate`) with the broker's client.
enum Broker {
    Nats {
        client: async_nats::Client,
        subject: String,
        stream: String,
    },
    Kafka {
        bootstrap: String,
        topic: String,
    },
    Redis {
        key: String,
    },
    RabbitMq {
        channel: lapin::Channel,
        exchange: String,
        queue: String,
        _connection: lapin::Connection,
    },
}

impl Broker {
    async fn publish(&self, id: uuid::Uuid, aggregate: &str) {
        let id = id.to_string();
        let body = br#"{"n": -1}"#.to_vec();
        match self {
            Broker::Nats {
                client, subject, ..
            } => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(sinks::EVENT_ID, id.as_str());
                headers.insert(sinks::AGGREGATE_ID, aggregate);
                async_nats::jetstream::new(client.clone())
                    .publish_with_headers(subject.clone(), headers, body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            Broker::Kafka { bootstrap, topic } => {
                use rdkafka::message::{Header, OwnedHeaders};
                use rdkafka::producer::{FutureProducer, FutureRecord};
                let producer: FutureProducer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .create()
                    .unwrap();
                let headers = OwnedHeaders::new().insert(Header {
                    key: sinks::EVENT_ID,
                    value: Some(id.as_str()),
                });
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(aggregate)
                            .payload(&body)
                            .headers(headers),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            }
            Broker::Redis { key } => {
                let client = ::redis::Client::open(redis_url()).unwrap();
                let mut connection = client.get_multiplexed_async_connection().await.unwrap();
                let _: String = ::redis::cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg(sinks::fields::ID)
                    .arg(&id)
                    .arg(sinks::fields::AGGREGATE_ID)
                    .arg(aggregate)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
            Broker::RabbitMq {
                channel, exchange, ..
            } => {
                let properties = lapin::BasicProperties::default().with_message_id(id.into());
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "Numbered".into(),
                        lapin::options::BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    }

    async fn audit(&self, table: &RelayTable<Pg>, range: IdRange) -> AuditReport {
        let committed = table.outbox.committed(&table.pool, &range).await.unwrap();
        let observed = match self {
            Broker::Nats { client, stream, .. } => audit::read::nats(client, stream, None).await,
            Broker::Kafka { bootstrap, topic } => audit::read::kafka(bootstrap, topic).await,
            Broker::Redis { key } => audit::read::redis(&redis_url(), key).await,
            Broker::RabbitMq { queue, .. } => audit::read::rabbitmq(&amqp_url(), queue).await,
        }
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"));
        audit::compare(&committed, &observed, &range)
    }
}

/// Relays `table` into `sink`, keeping what it published (retention), until nothing is pending.
async fn relay_keeping<K: Sink>(table: &RelayTable<Pg>, sink: K) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .batch_size(50)
            .retention(Duration::from_secs(3_600))
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    drained(table).await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// Records an event of aggregate `aggregate` and marks it published without relaying it.
async fn published_behind_the_relays_back(table: &RelayTable<Pg>, aggregate: &str) -> uuid::Uuid {
    let mut tx = table.pool.begin().await.unwrap();
    let event = Event::new(
        "account",
        "Numbered",
        Some(aggregate),
        &serde_json::json!({}),
    )
    .unwrap();
    table.outbox.record(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let sql = format!(
        "UPDATE {} SET published_at = now() WHERE published_at IS NULL RETURNING id",
        table.name
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&table.pool)
        .await
        .unwrap()
}

/// The whole scenario on one broker.
async fn audit_finds_every_fault(table: RelayTable<Pg>, broker: Broker, sink: impl Sink) {
    let committed = record_mix(&table).await;
    relay_keeping(&table, sink).await;

    let report = broker.audit(&table, IdRange::all()).await;
    assert!(report.is_clean(), "{report}");
    let n = committed.len() as u64;
    assert_eq!(
        (
            report.committed,
            report.published,
            report.observed,
            report.delivered
        ),
        (n, n, n, n),
        "{report}"
    );
    assert_eq!(report.duplicates + report.pending + report.unidentified, 0);

    // Lost: published according to the table, never sent.
    let lost = published_behind_the_relays_back(&table, "a0").await;
    // A phantom: on the broker, never committed.
    let phantom = uuid::Uuid::now_v7();
    broker.publish(phantom, "a1").await;
    // A redelivery of the first event.
    let first = table
        .outbox
        .committed(&table.pool, &IdRange::all())
        .await
        .unwrap()[0]
        .clone();
    broker.publish(first.id, &first.aggregate_id).await;
    // Two events of aggregate `z`, committed in order, on the broker the other way round.
    let z1 = published_behind_the_relays_back(&table, "z").await;
    let z2 = published_behind_the_relays_back(&table, "z").await;
    broker.publish(z2, "z").await;
    broker.publish(z1, "z").await;

    let report = broker.audit(&table, IdRange::all()).await;
    assert!(!report.is_clean(), "{report}");
    assert_eq!(report.missing_ids, [lost], "{report}");
    assert_eq!(report.phantom_ids, [phantom], "{report}");
    assert_eq!(report.duplicates, 1, "{report}");
    assert_eq!(report.duplicated[0].id, first.id);
    assert_eq!(report.order_violations, 1, "{report}");
    assert_eq!(report.violations[0].late, z1);
    assert_eq!(report.violations[0].overtaken_by, z2);
    assert_eq!(report.committed, n + 3);
    assert_eq!(report.observed, n + 4);

    // Narrowed to the events the first audit covered, only the redelivered copy remains.
    let all = table
        .outbox
        .committed(&table.pool, &IdRange::all())
        .await
        .unwrap();
    let range = IdRange::all().to(all[committed.len() - 1].id);
    let report = broker.audit(&table, range).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (report.committed, report.delivered, report.duplicates),
        (n, n, 1)
    );
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_nats_stream() {
    let table = RelayTable::<Pg>::new().await;
    let (sink, _) = outbox_tests::nats_stream(&table.name).await;
    let stream = table.name.to_uppercase();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let broker = Broker::Nats {
        client,
        subject: format!("{}.account", table.name),
        stream: stream.clone(),
    };
    audit_finds_every_fault(table, broker, sink.clone()).await;
    sink.jetstream().delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_kafka_topic_over_three_partitions() {
    let table = RelayTable::<Pg>::new().await;
    let bootstrap = format!("127.0.0.1:{KAFKA_PORT}");
    let topic = format!("{}.account", table.name);
    outbox_tests::kafka_topic(&bootstrap, &topic, 3).await;
    let sink = sinks::kafka::KafkaSink::connect(&bootstrap)
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let broker = Broker::Kafka { bootstrap, topic };
    audit_finds_every_fault(table, broker, sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_redis_stream() {
    let table = RelayTable::<Pg>::new().await;
    let sink = sinks::redis::RedisSink::connect(&redis_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{}:{{aggregate_type}}", table.name)).unwrap());
    let key = format!("{}:account", table.name);
    audit_finds_every_fault(table, Broker::Redis { key: key.clone() }, sink).await;
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_of_a_rabbitmq_queue_leaves_its_messages_there() {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;
    let table = RelayTable::<Pg>::new().await;
    let exchange = format!("{}.account", table.name);
    // A queue of the test's, bound to the exchange; not exclusive, so that the audit's own
    // connection may read it.
    let (connection, channel, bound) = amqp_queue(&exchange).await;
    let queue = format!("{}.audit", table.name);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_delete(bound.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let broker = Broker::RabbitMq {
        channel: channel.clone(),
        exchange,
        queue: queue.clone(),
        _connection: connection,
    };
    // The three audits of the scenario read the same queue: each left every message there.
    audit_finds_every_fault(table, broker, sink).await;
    let held = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(held, 45 + 4, "the audits consumed messages");
}

#[tokio::test]
async fn a_missing_stream_topic_or_queue_is_a_clear_error() {
    let client = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"));
    let error = audit::read::nats(&client, "NO_SUCH_STREAM_AUDIT", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("audit: cannot read NO_SUCH_STREAM_AUDIT from NATS: "),
        "{error}"
    );
    let error = audit::read::rabbitmq(&amqp_url(), "no-such-queue-audit")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("audit: cannot read no-such-queue-audit from RabbitMQ: ")
            && error.contains("NOT_FOUND"),
        "{error}"
    );
    let error = audit::read::kafka(&format!("127.0.0.1:{KAFKA_PORT}"), "no-such-topic-audit")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("audit: cannot read no-such-topic-audit from Kafka: "),
        "{error}"
    );
}
