//! Kafka: the inbox mode and the offsets mode across killed relays, deaths and rebalances.

use super::killed_relays::*;
use super::*;

/// A tansu broker of the test's own (stopped when dropped) and, on it, a three-partition topic
/// for the account events of `producer`, which holds the 5,000 deposits: returns the broker, its
/// bootstrap address, the topic and the deposits expected per account.
pub(super) async fn kafka_run(
    producer: &outbox_tests::RelayTable<Pg>,
) -> (
    outbox_tests::Tansu,
    String,
    String,
    std::collections::HashMap<String, i64>,
) {
    let port = outbox_tests::free_port();
    let broker = outbox_tests::Tansu::start(port, ([127, 0, 0, 1], port).into());
    let bootstrap = format!("127.0.0.1:{port}");
    let expected = record_deposits(producer).await;
    let topic = format!("{}.account", producer.name);
    outbox_tests::kafka_topic(&bootstrap, &topic, 3).await;
    (broker, bootstrap, topic, expected)
}

/// The Kafka sink of the consumer tests: to `<prefix>.<aggregate type>`, one record per produced
/// batch. tansu 0.6 answers a fetch from an offset inside a record batch with the batches that
/// *start* at or after it (its storage lists batches by base offset), so a consumer resuming
/// from an offset in the middle of a batch never sees that batch's remaining records; Apache
/// Kafka returns the batch that holds the offset and the client drops what comes before it.
/// With one record per batch every offset starts a batch, and a resumed consumer reads exactly
/// what Kafka would give it.
pub(super) async fn tansu_sink(bootstrap: &str, prefix: &str) -> outbox::sinks::kafka::KafkaSink {
    let mut config = outbox::sinks::kafka::rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1");
    let routing =
        outbox::sinks::Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    outbox::sinks::kafka::KafkaSink::with_config(config)
        .await
        .unwrap()
        .routing(routing)
}

/// Kafka: 5,000 events relayed to a three-partition topic by a relay killed twice right after
/// publishing, consumed in a consumer group by consumers of which two die between a commit and
/// the commit of its offset: the next member starts from the last committed offsets, and the
/// inbox drops what it reads again. Every event applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_kafka_with_killed_relays_and_consumers_are_applied_once() {
    use outbox::inbox::InboxMessage;
    use outbox::sinks::kafka::rdkafka;
    use outbox_tests::RelayTable;
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let producer = RelayTable::<Pg>::new().await;
    let (_broker, bootstrap, topic, expected) = kafka_run(&producer).await;
    let sink = || tansu_sink(&bootstrap, &producer.name);
    let model = Arc::new(ReadModel::new("kafka").await);
    let duplicates = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    let member = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || -> StreamConsumer {
            let consumer: StreamConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "balances")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            consumer
        }
    };
    // Consumes until `dies_after` records were processed: the next is committed to the
    // database, its offset never, and the member is dropped.
    let consume = {
        let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
        move |consumer: StreamConsumer, dies_after: Option<usize>| {
            let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
            async move {
                let mut processed = 0;
                let mut stopped = stop.subscribe();
                loop {
                    // Stopping is the only cancellation; rdkafka's `recv` is cancel-safe (it
                    // returns a record or leaves it in the client's queue).
                    let record = tokio::select! {
                        record = consumer.recv() => record,
                        _ = stopped.wait_for(|stopped| *stopped) => break,
                    };
                    let record = record.unwrap().detach();
                    let event: serde_json::Value =
                        serde_json::from_slice(record.payload().unwrap()).unwrap();
                    let id = record.message_id().unwrap();
                    let handler = model.apply(id.clone(), event);
                    if dies_after == Some(processed) {
                        let _ = model
                            .inbox
                            .process(model.db.pool(), "balances", &id, handler)
                            .await
                            .unwrap();
                        return;
                    }
                    let outcome = outbox::inbox::kafka::process(
                        &model.inbox,
                        model.db.pool(),
                        "balances",
                        &consumer,
                        &record,
                        handler,
                    )
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
    let consumers = tokio::spawn(async move {
        for dies_after in [Some(1_000), Some(1_500), None] {
            consume(member(), dies_after).await;
        }
    });
    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays and consumers")
        .await;
    stop.send_replace(true);
    consumers.await.unwrap();
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// Kafka offset mode: 5,000 events relayed to a three-partition topic by a relay killed twice
/// right after publishing (so the topic holds some events twice), consumed by `OffsetConsumer`s
/// of one group that keep their offsets in the read model's database. The first member dies
/// right after a commit; its successor resumes from the stored offsets; a third member joins in
/// the middle of the run (a rebalance splits the partitions between the two) and later dies too
/// (a rebalance gives them back). Every record of the topic is applied exactly once — an event
/// the relay published twice sits at two offsets and is applied twice, which is what offset mode
/// promises and why the inbox exists — none is skipped, and no member reads a record below its
/// partition's stored offset (each resumed from the database, not from the topic's start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_offset_mode_applies_every_record_once_across_deaths_and_rebalances() {
    use outbox::inbox::Offsets;
    use outbox::inbox::kafka::OffsetConsumer;
    use outbox::sinks::kafka::rdkafka;
    use outbox_tests::RelayTable;
    use rdkafka::Message as _;

    let producer = RelayTable::<Pg>::new().await;
    let (_broker, bootstrap, topic, expected) = kafka_run(&producer).await;
    let sink = || tansu_sink(&bootstrap, &producer.name);
    let model = Arc::new(ReadModel::new("kafka_offsets").await);
    let offsets = Offsets::for_table(TableName::new(format!("offsets_{}", run_id())).unwrap());
    offsets.migrate(model.db.pool()).await.unwrap();
    let duplicates = Arc::new(AtomicUsize::new(0));
    let applied = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    let member = {
        let (bootstrap, topic, offsets) = (bootstrap.clone(), topic.clone(), offsets.clone());
        let pool = model.db.pool().clone();
        move || {
            let mut config = rdkafka::ClientConfig::new();
            config
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "balances")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500");
            let consumer = OffsetConsumer::new(&config, pool.clone(), offsets.clone()).unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            consumer
        }
    };
    // Consumes until `dies_after` records were applied (dropped right after that commit), or
    // until stopped; returns how many it applied.
    let consume = {
        let (model, duplicates, applied, stop) = (
            model.clone(),
            duplicates.clone(),
            applied.clone(),
            stop.clone(),
        );
        move |consumer: OffsetConsumer<sqlx::Postgres>, dies_after: Option<usize>| {
            let (model, duplicates, applied, stop) = (
                model.clone(),
                duplicates.clone(),
                applied.clone(),
                stop.clone(),
            );
            async move {
                let mut processed = 0;
                let mut stopped = stop.subscribe();
                while dies_after != Some(processed) {
                    let record = tokio::select! {
                        record = consumer.recv() => record.unwrap(),
                        _ = stopped.wait_for(|stopped| *stopped) => break,
                    };
                    let event: serde_json::Value =
                        serde_json::from_slice(record.payload().unwrap()).unwrap();
                    let id = outbox::inbox::InboxMessage::message_id(&record).unwrap();
                    let outcome = consumer
                        .process(&record, model.apply(id, event))
                        .await
                        .unwrap();
                    if outcome.is_duplicate() {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    } else {
                        processed += 1;
                        applied.fetch_add(1, Ordering::SeqCst);
                    }
                }
                processed
            }
        }
    };
    let (first, second) = (consume.clone(), consume.clone());
    let steady = tokio::spawn({
        let member = member.clone();
        async move {
            first(member(), Some(1_000)).await;
            second(member(), None).await
        }
    });
    let joiner = tokio::spawn({
        let applied = applied.clone();
        async move {
            outbox_tests::eventually(Duration::from_secs(120), "1,800 records applied", || {
                let applied = applied.load(Ordering::SeqCst);
                async move { applied >= 1_800 }
            })
            .await;
            consume(member(), Some(600)).await
        }
    });
    relay_killed_twice(&producer, sink).await;

    // What the topic holds, read with Kafka's client: the number of records of each event.
    let log = outbox::audit::read::kafka(&bootstrap, &topic)
        .await
        .unwrap();
    let mut records = std::collections::HashMap::<String, i64>::new();
    for observed in &log {
        *records
            .entry(observed.id.expect("an outbox event id").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        records.len() as i64,
        EVENTS,
        "events missing from the topic"
    );
    let total = log.len() as i64;
    assert!(
        total > EVENTS,
        "the killed relays published nothing twice: the test proves less than it says"
    );
    let sum = format!(
        "SELECT COALESCE(SUM(times), 0)::BIGINT FROM {}",
        model.applied
    );
    outbox_tests::eventually(Duration::from_secs(120), "every record applied", || async {
        model.db.scalar(sum.clone()).await >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let second = steady.await.unwrap();
    let joined = joiner.await.unwrap();
    assert_eq!(
        joined, 600,
        "the member that joined got no partition: no rebalance"
    );
    assert!(second > 0);

    // Each record applied once: every event as often as the topic holds it, none skipped.
    let times: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event_id, times FROM {}",
        model.applied
    )))
    .fetch_all(model.db.pool())
    .await
    .unwrap();
    assert_eq!(times.len() as i64, EVENTS, "events never applied");
    for (id, times) in &times {
        assert_eq!(times, &records[id], "event {id}: applied {times} times");
    }
    assert_eq!(
        duplicates.load(Ordering::SeqCst),
        0,
        "a member read records below its partition's stored offset: it did not resume from it"
    );
    // The balances are the side effects of exactly those applications, and of the right events.
    let balances: Vec<(String, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT b.account, b.cents, SUM(a.amount * a.times)::BIGINT, SUM(a.amount)::BIGINT \
         FROM {} b JOIN {} a ON a.account = b.account GROUP BY b.account, b.cents",
        model.balances, model.applied
    )))
    .fetch_all(model.db.pool())
    .await
    .unwrap();
    assert_eq!(balances.len(), expected.len());
    for (account, cents, applications, once) in balances {
        assert_eq!(cents, applications, "balance of {account}");
        assert_eq!(once, expected[&account], "events of {account}");
    }
    let stored: i64 = offsets
        .stored(model.db.pool(), "balances", &topic)
        .await
        .unwrap()
        .iter()
        .map(|&(_, next)| next)
        .sum();
    assert_eq!(stored, total, "the stored offsets are past every record");
    eprintln!(
        "{total} records of {EVENTS} events applied once each; members applied 1,000 + {second} + {joined}"
    );
    model
        .db
        .execute(format!("DROP TABLE {}", offsets.table()))
        .await;
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}
