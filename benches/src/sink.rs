//! `sink <name>`: events per second relayed from a preloaded PostgreSQL table into a real
//! broker, against the same relay into the in-process sink (the baseline: what the relay and
//! the database allow); then commit-to-publish latency at a steady 1,000 events/s, "published"
//! meaning the broker acknowledged the event.
//!
//! Brokers on 127.0.0.1 (start them with `scripts/services.sh`): NATS 4222, Redis 6379, Kafka
//! (tansu) 9092, RabbitMQ 5672, Mosquitto 1883; the webhook receiver runs in this process and
//! verifies every signature.

use std::time::Duration;

use outbox::relay::Sink;
use outbox::sinks::{self, Routing};
use sqlx::PgPool;

use crate::relay::{
    EVENTS, drop_table, fresh_table, in_process, in_process_ordered, latency, latency_seconds,
    throughput, throughput_over,
};

type BoxError = Box<dyn std::error::Error>;

/// The sinks this scenario knows.
pub(crate) const NAMES: &str = "nats, redis, kafka, rabbitmq, mqtt, webhook (or all)";

/// Every sink, in the order `sink all` measures them.
const ALL: [&str; 6] = ["nats", "kafka", "redis", "webhook", "mqtt", "rabbitmq"];

/// What one sink measured, beside the in-process sink in the same run.
pub(crate) struct Measured {
    name: String,
    /// Events/s of the in-process sink, then of the sink, over many aggregates.
    base: f64,
    rate: f64,
    /// Latency quantiles (ms) at 1,000 events/s.
    p50: f64,
    p99: f64,
    /// Events/s over one hot aggregate: an in-process channel, then the sink.
    hot_base: f64,
    hot: f64,
    /// How many of an aggregate's events the sink takes per call.
    together: &'static str,
}

const PREFIX: &str = "outbox_bench";
const SECRET: &str = "whsec_b3V0Ym94LWJlbmNoLXNlY3JldC1vZi0yNGI=";

/// Events of the hot-aggregate run: all of one aggregate.
const HOT_EVENTS: i64 = 5_000;

/// Measures throughput with `first` over many aggregates, with `hot` over one, then latency
/// with `second` (each its own connection where the sink is not shared).
async fn measure<K: Sink>(
    pool: &PgPool,
    name: &str,
    [first, hot, second]: [K; 3],
) -> Result<Measured, BoxError> {
    fresh_table(pool).await?;
    let base = throughput(pool, vec![in_process()]).await?;
    let rate = throughput(pool, vec![first]).await?;
    let together = if hot.keeps_order() { "a batch" } else { "one" };
    let hot_base = throughput_over(pool, vec![in_process_ordered()], HOT_EVENTS, 1).await?;
    let hot = throughput_over(pool, vec![hot], HOT_EVENTS, 1).await?;
    let seconds = latency_seconds();
    let (b50, b99) = latency(pool, in_process(), false, 1_000, seconds).await?;
    let (p50, p99) = latency(pool, second, false, 1_000, seconds).await?;
    drop_table(pool).await?;
    println!("## sink {name}: {EVENTS} preloaded events, one relay\n");
    println!("| sink | events/s | ratio to in-process | p50 ms at 1,000/s | p99 ms at 1,000/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("| in-process (baseline) | {base:.0} | 1.000 | {b50:.1} | {b99:.1} |");
    println!(
        "| {name} | {rate:.0} | {:.3} | {p50:.1} | {p99:.1} |",
        rate / base
    );
    println!("\nlatency: from commit to the broker's acknowledgement, polling every 25 ms");
    println!("\n### one hot aggregate: {HOT_EVENTS} preloaded events of a single aggregate\n");
    println!("| sink | events/s | ratio to in-process | events per sink call |");
    println!("| --- | ---: | ---: | --- |");
    println!("| in-process channel (baseline) | {hot_base:.0} | 1.000 | a batch |");
    println!("| {name} | {hot:.0} | {:.3} | {together} |", hot / hot_base);
    println!(
        "\nsummary: sink={name} events_per_s={rate:.0} hot_aggregate_events_per_s={hot:.0} p50_ms={p50:.1} p99_ms={p99:.1}"
    );
    Ok(Measured {
        name: name.to_owned(),
        base,
        rate,
        p50,
        p99,
        hot_base,
        hot,
        together,
    })
}

/// `sink all`: every sink one after the other, then one table of them all.
pub(crate) async fn run_all(pool: &PgPool) -> Result<(), BoxError> {
    let mut all = Vec::new();
    for name in ALL {
        all.push(run(pool, name).await?);
        println!();
    }
    println!("## every sink, one run: {EVENTS} preloaded events, one relay\n");
    println!(
        "| sink | events/s | ratio to in-process, same run | p50 ms | p99 ms | \
         hot aggregate events/s | events per sink call | ratio to in-process channel |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    for m in &all {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {} | {:.2} |",
            m.name,
            m.rate,
            m.rate / m.base,
            m.p50,
            m.p99,
            m.hot,
            m.together,
            m.hot / m.hot_base
        );
    }
    let rates: Vec<String> = all
        .iter()
        .map(|m| format!("{}={:.0}", m.name, m.rate))
        .collect();
    println!("\nsummary: sinks events_per_s {}", rates.join(" "));
    Ok(())
}

fn hint(error: impl std::fmt::Display) -> BoxError {
    format!("{error} (start the brokers with scripts/services.sh)").into()
}

pub(crate) async fn run(pool: &PgPool, name: &str) -> Result<Measured, BoxError> {
    let routing = Routing::template(&format!("{PREFIX}.{{aggregate_type}}"))?;
    match name {
        "nats" => {
            let sink = sinks::nats::NatsSink::connect("nats://127.0.0.1:4222")
                .await
                .map_err(hint)?
                .routing(routing);
            let stream = "OUTBOX_BENCH";
            let _ = sink.jetstream().delete_stream(stream).await;
            sink.jetstream()
                .create_stream(async_nats::jetstream::stream::Config {
                    name: stream.into(),
                    subjects: vec![format!("{PREFIX}.>")],
                    ..Default::default()
                })
                .await?;
            let measured = measure(pool, name, [sink.clone(), sink.clone(), sink.clone()]).await?;
            sink.jetstream().delete_stream(stream).await?;
            Ok(measured)
        }
        "redis" => {
            let sink = sinks::redis::RedisSink::connect("redis://127.0.0.1:6379")
                .await
                .map_err(hint)?
                .routing(routing);
            let key = format!("{PREFIX}.account");
            let client = redis::Client::open("redis://127.0.0.1:6379")?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            let measured = measure(pool, name, [sink.clone(), sink.clone(), sink.clone()]).await?;
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            Ok(measured)
        }
        "kafka" => {
            use sinks::kafka::rdkafka::admin::{
                AdminClient, AdminOptions, NewTopic, TopicReplication,
            };
            let bootstrap = "127.0.0.1:9092";
            let sink = sinks::kafka::KafkaSink::connect(bootstrap)
                .await
                .map_err(hint)?
                .routing(routing);
            let admin: AdminClient<_> = sinks::kafka::rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()?;
            let topic = format!("{PREFIX}.account");
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let _ = admin.delete_topics(&[&topic], &options).await;
            admin
                .create_topics(
                    &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
                    &options,
                )
                .await?;
            let measured = measure(pool, name, [sink.clone(), sink.clone(), sink.clone()]).await?;
            let _ = admin.delete_topics(&[&topic], &options).await;
            Ok(measured)
        }
        "rabbitmq" => {
            use sinks::rabbitmq::lapin;
            let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
            // A durable queue bound to the exchange, so that the broker stores what it confirms.
            let connection = lapin::Connection::connect(url, Default::default())
                .await
                .map_err(hint)?;
            let channel = connection.create_channel().await?;
            let exchange = format!("{PREFIX}.account");
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    lapin::ExchangeKind::Topic,
                    lapin::options::ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await?;
            channel
                .queue_declare(
                    PREFIX.into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await?;
            channel
                .queue_bind(
                    PREFIX.into(),
                    exchange.as_str().into(),
                    "#".into(),
                    Default::default(),
                    Default::default(),
                )
                .await?;
            let make = || async {
                sinks::rabbitmq::RabbitMqSink::connect(url)
                    .await
                    .map(|sink| sink.exchange(routing.clone()))
            };
            let sinks = [
                make().await.map_err(hint)?,
                make().await.map_err(hint)?,
                make().await.map_err(hint)?,
            ];
            let measured = measure(pool, name, sinks).await?;
            let mut rows = Vec::new();
            for window in [500, 5_000] {
                let rate = rabbitmq_alone(url, &exchange, PLAIN_EVENTS, window).await?;
                rows.push((
                    format!("lapin alone, {window} confirms awaited at a time"),
                    rate,
                ));
            }
            print_alone("RabbitMQ", &rows);
            channel
                .queue_delete(PREFIX.into(), Default::default())
                .await?;
            Ok(measured)
        }
        "mqtt" => {
            let routing = Routing::template(&format!("{PREFIX}/{{aggregate_type}}"))?;
            let make = || async {
                sinks::mqtt::MqttSink::connect("mqtt://127.0.0.1:1883")
                    .await
                    .map(|sink| sink.routing(routing.clone()))
            };
            let sinks = [
                make().await.map_err(hint)?,
                make().await.map_err(hint)?,
                make().await.map_err(hint)?,
            ];
            let measured = measure(pool, name, sinks).await?;
            let mut rows = Vec::new();
            for (connections, window) in [(1, None), (1, Some(500)), (4, Some(125))] {
                let (rate, in_flight) = mqtt_alone(PLAIN_EVENTS, connections, window).await?;
                let pattern = match window {
                    None => "all queued at once".to_owned(),
                    Some(window) => format!("{window} at a time, acks awaited"),
                };
                rows.push((
                    format!(
                        "rumqttc alone, {connections} connection(s), {pattern} ({} in flight: the broker's receive maximum)",
                        in_flight.map_or("?".to_owned(), |w| w.to_string())
                    ),
                    rate,
                ));
            }
            print_alone("Mosquitto", &rows);
            Ok(measured)
        }
        "webhook" => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/hook", listener.local_addr()?);
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(receive).head(|| async { "" }));
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            let sink = sinks::webhook::WebhookSink::connect(&url, SECRET)
                .await?
                .max_events(500);
            let measured = measure(pool, name, [sink.clone(), sink.clone(), sink.clone()]).await?;
            server.abort();
            Ok(measured)
        }
        other => Err(format!("unknown sink {other:?}; available: {NAMES}").into()),
    }
}

/// Messages each run of a broker's client alone publishes.
const PLAIN_EVENTS: usize = 100_000;

/// A body and headers like the relay's: the event `{"n": i}` and its ids.
fn plain_message(i: usize) -> (String, Vec<(&'static str, String)>) {
    let id = uuid::Uuid::now_v7().to_string();
    let headers = vec![
        (sinks::EVENT_ID, id),
        (sinks::EVENT_TYPE, "Numbered".to_owned()),
        (sinks::AGGREGATE_TYPE, "account".to_owned()),
        (sinks::AGGREGATE_ID, (i % 1_000).to_string()),
    ];
    (format!("{{\"n\":{i}}}"), headers)
}

fn print_alone(broker: &str, rows: &[(String, f64)]) {
    println!("\n### {broker} alone: {PLAIN_EVENTS} messages like the relay's, same guarantees\n");
    println!("| client | events/s |");
    println!("| --- | ---: |");
    for (client, rate) in rows {
        println!("| {client} | {rate:.0} |");
    }
}

/// Events per second of lapin publishing `count` persistent, mandatory messages to `exchange`
/// (bound to a durable queue) with publisher confirms, `window` published then all their
/// confirms awaited, as the sink does with a batch.
async fn rabbitmq_alone(
    url: &str,
    exchange: &str,
    count: usize,
    window: usize,
) -> Result<f64, BoxError> {
    use sinks::rabbitmq::lapin::{self, BasicProperties, types::AMQPValue, types::FieldTable};
    let connection = lapin::Connection::connect(url, Default::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(Default::default()).await?;
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < count {
        let mut confirms = Vec::with_capacity(window);
        for i in sent..(sent + window).min(count) {
            let (body, headers) = plain_message(i);
            let mut table = FieldTable::default();
            for (name, value) in headers.iter() {
                table.insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
            }
            let id = headers[0].1.clone();
            let properties = BasicProperties::default()
                .with_message_id(id.into())
                .with_type("Numbered".into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(table);
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        "Numbered".into(),
                        lapin::options::BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body.as_bytes(),
                        properties,
                    )
                    .await?,
            );
        }
        sent += confirms.len();
        for confirm in confirms {
            if !confirm.await?.is_ack() {
                return Err("the broker did not confirm a message".into());
            }
        }
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    connection.close(200, "done".into()).await?;
    Ok(rate)
}

/// Events per second of rumqttc publishing `count` messages with QoS 1 over `connections`
/// connections (clean sessions, `TCP_NODELAY`, as the sink connects), `window` queued at a time
/// and all their `PUBACK`s awaited before the next (the sink's pattern with a batch), or all at
/// once; and how many publishes the broker let each connection keep in flight.
async fn mqtt_alone(
    count: usize,
    connections: usize,
    window: Option<usize>,
) -> Result<(f64, Option<u16>), BoxError> {
    use sinks::mqtt::rumqttc::v5::mqttbytes::QoS;
    use sinks::mqtt::rumqttc::v5::{AsyncClient, Event, MqttOptions, mqttbytes::v5::Packet};
    let mut links = Vec::new();
    let mut in_flight = None;
    for c in 0..connections {
        let mut options = MqttOptions::new(format!("outbox-bench-alone-{c}"), "127.0.0.1", 1883);
        options.set_clean_start(true);
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut events) = AsyncClient::new(options, 1024);
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await? {
                in_flight = ack.properties.and_then(|p| p.receive_max).or(in_flight);
                break;
            }
        }
        links.push((client, events));
    }
    let start = std::time::Instant::now();
    let share = count / connections;
    let window = window.unwrap_or(share);
    let mut tasks = Vec::new();
    for (c, (client, mut events)) in links.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut next = c * share;
            let end = next + share;
            while next < end {
                let chunk = window.min(end - next);
                let publish = async {
                    for i in next..next + chunk {
                        let (body, _) = plain_message(i);
                        client
                            .publish(format!("{PREFIX}/account"), QoS::AtLeastOnce, false, body)
                            .await
                            .map_err(|error| error.to_string())?;
                    }
                    Ok::<_, String>(())
                };
                let acks = async {
                    let mut acked = 0;
                    while acked < chunk {
                        let event = events.poll().await.map_err(|error| error.to_string())?;
                        if let Event::Incoming(Packet::PubAck(_)) = event {
                            acked += 1;
                        }
                    }
                    Ok::<_, String>(())
                };
                let (published, acked) = tokio::join!(publish, acks);
                published.and(acked)?;
                next += chunk;
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await?.map_err(BoxError::from)?;
    }
    Ok((
        (share * connections) as f64 / start.elapsed().as_secs_f64(),
        in_flight,
    ))
}

/// The webhook receiver: verifies the signature, parses the batch.
async fn receive(
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let verified = sinks::signature::verify(SECRET, &headers, &body);
    match (
        verified,
        serde_json::from_slice::<Vec<serde_json::Value>>(&body),
    ) {
        (Ok(()), Ok(_)) => axum::http::StatusCode::OK,
        (Err(_), _) => axum::http::StatusCode::UNAUTHORIZED,
        (_, Err(_)) => axum::http::StatusCode::BAD_REQUEST,
    }
}
