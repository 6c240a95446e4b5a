//! Spans and metrics over OTLP, decoded by a stand-in collector.

use super::*;

/// An OpenTelemetry collector's OTLP/HTTP receiver, as the test's stand-in: decodes the
/// protobuf export requests with the OTLP protocol's own types and keeps what they carry.
#[derive(Clone, Default)]
pub(super) struct Collector {
    spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    services: Arc<Mutex<HashSet<String>>>,
    metrics: Arc<Mutex<HashSet<String>>>,
}

impl Collector {
    async fn serve(&self, port: u16) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use prost::Message as _;

        fn service_name(
            resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
        ) -> Option<String> {
            let attribute = resource?
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")?;
            match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(name) => Some(name.clone()),
                _ => None,
            }
        }

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let traces = self.clone();
        let metrics = self.clone();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let collector = traces.clone();
                    async move {
                        let request = ExportTraceServiceRequest::decode(body).unwrap();
                        for resource in request.resource_spans {
                            if let Some(name) = service_name(resource.resource.as_ref()) {
                                collector.services.lock().unwrap().insert(name);
                            }
                            for scope in resource.scope_spans {
                                collector.spans.lock().unwrap().extend(scope.spans);
                            }
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                }),
            )
            .route(
                "/v1/metrics",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let collector = metrics.clone();
                    async move {
                        let request = ExportMetricsServiceRequest::decode(body).unwrap();
                        for resource in request.resource_metrics {
                            for scope in resource.scope_metrics {
                                let names = scope.metrics.into_iter().map(|metric| metric.name);
                                collector.metrics.lock().unwrap().extend(names);
                            }
                        }
                        (
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }
}

/// With `[telemetry] otlp_endpoint`, the relay service exports its spans and metrics over
/// OTLP/HTTP (protobuf): the `send` span of a relayed event continues the trace recorded with
/// it, and the relay's counters arrive as OpenTelemetry metrics, under the configured service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_service_exports_its_spans_and_metrics_over_otlp() {
    let table = unique("otlp");
    let migrated = outbox(&["--table", &table, "migrate", "--no-inbox"]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let mut stream = stream_for(&table).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    let event = Event::new("account", "Opened", Some("acc-1"), &serde_json::json!({}))
        .unwrap()
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"));
    let mut tx = pool.begin().await.unwrap();
    Outbox::for_table(TableName::new(table.clone()).unwrap())
        .record(&mut *tx, &event)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let collector = Collector::default();
    let collector_port = free_port();
    collector.serve(collector_port).await;
    let config = relay_config(&table, free_port());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{collector_port}\"\n\
         service_name = \"billing-relay\"\nexport_interval = \"200ms\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let relay = KillOnDrop(start_relay(&config));
    wait_for("the relay to publish", Duration::from_secs(30), || {
        status(&table).0 == 0
    });
    signal(&relay.0, "TERM");
    let mut relay = relay;
    let code = relay.0.wait().unwrap();
    assert!(code.success(), "the relay exited with {code}");
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // The batch exporter flushes on shutdown; the metrics reader every 200 ms and on shutdown.
    let spans = collector.spans.lock().unwrap().clone();
    let send = spans
        .iter()
        .find(|span| span.name == format!("send {table}.account"))
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            panic!("no send span among {names:?}")
        });
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(&send.trace_id),
        trace_id,
        "the span continues the recorded trace"
    );
    assert_eq!(hex(&send.parent_span_id), parent_id);
    assert_eq!(
        send.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Producer as i32
    );
    assert!(
        collector.services.lock().unwrap().contains("billing-relay"),
        "the spans carry the configured service.name"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.contains("outbox_events_published_total"),
        "the relay's counters are exported: {metrics:?}"
    );
    std::fs::remove_file(config).unwrap();
}
