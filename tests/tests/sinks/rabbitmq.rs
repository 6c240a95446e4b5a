//! RabbitMQ: persistent, confirmed, `mandatory` deliveries, read back with lapin; a lost
//! connection; events no queue receives.

use super::*;

/// Everything in `queue`: `(event id, aggregate id, n)`, checking each message's properties.
async fn amqp_drain(channel: &lapin::Channel, queue: &str) -> Vec<(String, String, i64)> {
    use lapin::options::BasicGetOptions;
    let mut received = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let delivery = &message.delivery;
        let properties = &delivery.properties;
        assert_eq!(delivery.routing_key.as_str(), "Numbered");
        assert_eq!(*properties.delivery_mode(), Some(2), "not persistent");
        assert_eq!(
            properties.kind().as_ref().map(|kind| kind.as_str()),
            Some("Numbered")
        );
        let headers: HashMap<String, String> = properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .iter()
            .map(|(name, value)| match value {
                lapin::types::AMQPValue::LongString(text) => (name.to_string(), text.to_string()),
                other => panic!("header {name} is {other:?}"),
            })
            .collect();
        let id = properties.message_id().as_ref().unwrap().to_string();
        assert_eq!(headers[sinks::EVENT_ID], id);
        assert_eq!(headers[sinks::AGGREGATE_TYPE], "account");
        let n = n_of(&delivery.data);
        if n == 0 {
            assert_eq!(headers["traceparent"], TRACEPARENT);
        }
        received.push((id, headers[sinks::AGGREGATE_ID].clone(), n));
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_receives_exactly_the_committed_events_persistent_and_confirmed() {
    let table = RelayTable::<Pg>::new().await;
    let exchange = format!("{}.account", table.name);
    let (_connection, channel, queue) = amqp_queue(&exchange).await;
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;

    let received = amqp_drain(&channel, &queue).await;
    assert_eq!(received.len(), committed.len());
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let exchange = format!("{}.account", table.name);
    let (_connection, channel, queue) = amqp_queue(&exchange).await;
    let proxy = Proxy::start(addr(5672)).await;
    let sink =
        sinks::rabbitmq::RabbitMqSink::connect(&format!("amqp://guest:guest@{}/%2f", proxy.addr))
            .await
            .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
            .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    let committed = relay_across_an_outage(&table, sink, &proxy).await;
    let received = first_deliveries(amqp_drain(&channel, &queue).await);
    assert_eq!(per_aggregate(&received), per_aggregate(&committed));
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    table.drop_table().await;
}

/// By default an event no queue is bound to receive is returned by the broker: retried, then a
/// dead letter with the broker's reason, never confirmed and deleted unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_event_without_a_queue_is_retried_then_dead_not_lost() {
    let table = RelayTable::<Pg>::new().await;
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        // No queue is bound to this exchange; the sink's defaults otherwise.
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap());
    record_numbered(&table, 0, 3).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .max_attempts(2)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(50),
            ))
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    eventually(
        LIMIT,
        "the unroutable events to be dead-lettered",
        || async {
            table
                .outbox
                .dead_letters(&table.pool, 10)
                .await
                .unwrap()
                .len()
                == 3
        },
    )
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    for dead in table.outbox.dead_letters(&table.pool, 10).await.unwrap() {
        assert!(dead.last_error.contains("NO_ROUTE"), "{}", dead.last_error);
        assert_eq!(dead.message.attempts, 2, "retried before it was given up");
    }
    delete_exchange(&format!("{}.account", table.name)).await;
    table.drop_table().await;
}

/// `mandatory(false)` is the opt-out for fire-and-forget exchanges: the broker confirms an
/// unroutable event and it leaves the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_without_mandatory_drops_unroutable_events_as_asked() {
    let table = RelayTable::<Pg>::new().await;
    let sink = sinks::rabbitmq::RabbitMqSink::connect(&amqp_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .exchange(Routing::template(&format!("{}.{{aggregate_type}}", table.name)).unwrap())
        .mandatory(false);
    record_numbered(&table, 0, 3).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(table.pool.clone(), sink)
            .outbox(&table.outbox)
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    eventually(LIMIT, "the outbox to empty", || async {
        table.remaining().await == 0
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    assert!(
        table
            .outbox
            .dead_letters(&table.pool, 10)
            .await
            .unwrap()
            .is_empty()
    );
    delete_exchange(&format!("{}.account", table.name)).await;
    table.drop_table().await;
}

async fn delete_exchange(name: &str) {
    let (_connection, channel, _) = amqp_queue(name).await;
    channel
        .exchange_delete(name.into(), Default::default())
        .await
        .unwrap();
}
