//! Redis Streams: the committed events in the stream, and a relay that outlives a lost
//! connection.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_receive_exactly_the_committed_events() {
    let table = RelayTable::<Pg>::new().await;
    let prefix = table.name.clone();
    let sink = sinks::redis::RedisSink::connect(&redis_url())
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{prefix}:{{aggregate_type}}")).unwrap());
    let committed = record_mix(&table).await;
    relay_all(&table, sink).await;

    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:account");
    let entries: Vec<(String, HashMap<String, String>)> = ::redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(entries.len(), committed.len());
    let mut received = Vec::new();
    for (_, fields) in &entries {
        // The documented naming, shared with the webhook's elements.
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut expected = vec![
            "aggregate_id",
            "aggregate_type",
            "content_type",
            "event_type",
            "id",
            "payload",
        ];
        if fields.contains_key("headers") {
            expected.push("headers");
            expected.sort_unstable();
        }
        assert_eq!(names, expected);
        assert_eq!(fields["event_type"], "Numbered");
        assert_eq!(fields["content_type"], "application/json");
        assert_eq!(fields["aggregate_type"], "account");
        assert!(fields["id"].parse::<uuid::Uuid>().is_ok());
        let n = n_of(fields["payload"].as_bytes());
        if n == 0 {
            assert!(fields["headers"].contains("traceparent"), "{fields:?}");
        }
        received.push((fields["aggregate_id"].clone(), n));
    }
    assert_eq!(per_aggregate(&received), per_aggregate(&committed));
    let _: () = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    table.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sink_survives_a_lost_connection() {
    let table = RelayTable::<Pg>::new().await;
    let proxy = Proxy::start(addr(6379)).await;
    let key = format!("{}:account", table.name);
    let sink = sinks::redis::RedisSink::connect(&format!("redis://{}", proxy.addr))
        .await
        .unwrap_or_else(|e| panic!("{e}; {START_HINT}"))
        .routing(Routing::template(&format!("{}:{{aggregate_type}}", table.name)).unwrap());
    let committed = relay_across_an_outage(&table, sink, &proxy).await;
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, HashMap<String, String>)> = ::redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .unwrap();
    let received = entries
        .iter()
        .map(|(_, fields)| {
            (
                fields["id"].clone(),
                fields["aggregate_id"].clone(),
                n_of(fields["payload"].as_bytes()),
            )
        })
        .collect();
    assert_eq!(
        per_aggregate(&first_deliveries(received)),
        per_aggregate(&committed)
    );
    let _: () = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    table.drop_table().await;
}
