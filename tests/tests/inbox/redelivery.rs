//! A NATS message redelivered after a crash before its acknowledgement is dropped.

use super::*;

/// A handler whose side effect is one more in `effects`.
pub(super) fn count_effect(
    effects: Arc<AtomicUsize>,
) -> impl for<'c> FnOnce(
    &'c mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> outbox::inbox::Handler<'c, (), BoxError> {
    move |_| {
        Box::pin(async move {
            effects.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_message_redelivered_after_a_crash_before_its_ack_is_dropped() {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    use outbox::relay::Relay;
    use outbox_tests::RelayTable;

    let producer = RelayTable::<Pg>::new().await;
    let prefix = producer.name.clone();
    let (sink, stream) = outbox_tests::nats_stream(&prefix).await;
    let mut tx = producer.pool.begin().await.unwrap();
    let event = outbox::Event::new("account", "Opened", Some(7), &serde_json::json!({})).unwrap();
    let event_id = producer.outbox.record(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let relay = tokio::spawn(
        Relay::builder(producer.pool.clone(), sink.clone())
            .outbox(&producer.outbox)
            .build()
            .run(std::future::pending()),
    );

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("inbox-test".into()),
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let db = Pg::connect().await;
    let inbox = Inbox::for_table(TableName::new(format!("inbox_nats_{}", run_id())).unwrap());
    inbox.migrate(db.pool()).await.unwrap();
    let effects = Arc::new(AtomicUsize::new(0));
    // First delivery: processed and committed, then the consumer "crashes" before its ack.
    let first = messages.next().await.unwrap().unwrap();
    let id = outbox::inbox::InboxMessage::message_id(&first).unwrap();
    assert_eq!(id, event_id.to_string(), "the id is the outbox event id");
    let outcome = inbox
        .process(db.pool(), "nats-test", &id, count_effect(effects.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, Processed::Done(()));
    drop(first);

    // JetStream redelivers it after `ack_wait`: the helper finds the id, skips the handler, acks.
    let again = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a redelivery")
        .unwrap()
        .unwrap();
    assert!(again.info().unwrap().delivered >= 2);
    let outcome = outbox::inbox::nats::process(
        &inbox,
        db.pool(),
        "nats-test",
        &again,
        count_effect(effects.clone()),
    )
    .await
    .unwrap();
    assert!(outcome.is_duplicate());
    assert_eq!(effects.load(Ordering::SeqCst), 1);
    // Acknowledged: nothing comes back.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .is_err(),
        "the duplicate was not acknowledged"
    );

    relay.abort();
    sink.jetstream()
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
    db.execute(format!("DROP TABLE {}", inbox.table())).await;
    producer.drop_table().await;
}
