//! NATS JetStream: the committed events once each (the stream drops duplicates by
//! `Nats-Msg-Id`), and a relay that outlives a lost connection.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_receives_exactly_the_committed_events_once() {
    let table = RelayTable::<Pg>::new().await;
    let prefix = table.name.clone();
    let sink = sinks::nats::NatsSink::connect(&nats_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(
            Routing::template(&format!("{prefix}.{{aggregate_type}}.{{event_type}}")).unwrap(),
        );
    let stream_name = prefix.to_uppercase();
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();

    let committed = record_mix(&table).await;
    let relayed = Arc::new(Mutex::new(Vec::new()));
    relay_all(
        &table,
        Tee {
            inner: sink.clone(),
            seen: relayed.clone(),
        },
    )
    .await;

    let info = stream.get_info().await.unwrap();
    assert_eq!(info.state.messages, committed.len() as u64);
    let mut received = Vec::new();
    for seq in 1..=info.state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.account.Numbered")
        );
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name} header"))
                .as_str()
                .to_owned()
        };
        assert_eq!(header("Nats-Msg-Id"), header(sinks::EVENT_ID));
        assert_eq!(header(sinks::EVENT_TYPE), "Numbered");
        assert_eq!(header(sinks::AGGREGATE_TYPE), "account");
        let n = n_of(&message.payload);
        if n == 0 {
            assert_eq!(header("traceparent"), TRACEPARENT);
        }
        received.push((header(sinks::AGGREGATE_ID), n));
    }
    assert_eq!(per_aggregate(&received), per_aggregate(&committed));

    // The same events relayed again (a relay crash after publishing, before settling): the
    // stream's duplicate window drops them all.
    let again = relayed.lock().unwrap().clone();
    assert_eq!(again.len(), committed.len());
    let results = sink.publish(&again).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let info = stream.get_info().await.unwrap();
    assert_eq!(
        info.state.messages,
        committed.len() as u64,
        "redelivered events were stored twice"
    );

    sink.jetstream().delete_stream(&stream_name).await.unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let prefix = table.name.clone();
    let proxy = Proxy::start(addr(4222)).await;
    let sink = sinks::nats::NatsSink::connect(&format!("nats://{}", proxy.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap());
    let stream_name = prefix.to_uppercase();
    let stream = sink
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let committed = relay_across_an_outage(&table, sink.clone(), &proxy).await;
    let info = stream.get_info().await.unwrap();
    assert_eq!(
        info.state.messages,
        committed.len() as u64,
        "duplicates in the stream"
    );
    let mut received = Vec::new();
    for seq in 1..=info.state.messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| message.headers.get(name).unwrap().as_str().to_owned();
        received.push((
            header(sinks::EVENT_ID),
            header(sinks::AGGREGATE_ID),
            n_of(&message.payload),
        ));
    }
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    sink.jetstream().delete_stream(&stream_name).await.unwrap();
    table.drop_table().await;
}
