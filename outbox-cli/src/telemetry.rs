//! The relay's metrics on `/metrics` (Prometheus), and, when an OTLP endpoint is configured, its
//! spans and the same metrics exported over OTLP/HTTP to an OpenTelemetry collector.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::CliError;
use crate::config::TelemetryConfig;

/// How often metrics are exported over OTLP by default.
const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The OTLP settings after the file and the standard `OTEL_*` environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Otlp {
    /// The collector's OTLP/HTTP base URL; `/v1/traces` and `/v1/metrics` are appended.
    pub(crate) endpoint: String,
    pub(crate) protocol: Protocol,
    pub(crate) service_name: String,
    pub(crate) export_interval: Duration,
}

impl Otlp {
    /// The settings, or `None` when no endpoint is configured: the file's `[telemetry]`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_SERVICE_NAME`.
    pub(crate) fn resolve(
        config: &TelemetryConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Otlp>, CliError> {
        let Some(endpoint) = config
            .otlp_endpoint
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|endpoint| !endpoint.trim().is_empty())
        else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(CliError::Config(format!(
                "telemetry.otlp_endpoint {endpoint:?} is not an http:// or https:// URL: give the \
                 collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\""
            )));
        }
        let protocol = config
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        let protocol = match protocol.as_str() {
            "http/protobuf" => Protocol::HttpBinary,
            "http/json" => Protocol::HttpJson,
            "grpc" => {
                return Err(CliError::Config(
                    "telemetry.protocol \"grpc\" is not built in: use \"http/protobuf\" (a \
                     collector serves it on port 4318 beside gRPC's 4317) or \"http/json\""
                        .into(),
                ));
            }
            other => {
                return Err(CliError::Config(format!(
                    "telemetry.protocol {other:?} is unknown: use \"http/protobuf\" or \
                     \"http/json\""
                )));
            }
        };
        let service_name = config
            .service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "outbox-relay".into());
        let export_interval = config.export_interval.unwrap_or(DEFAULT_EXPORT_INTERVAL);
        if export_interval.is_zero() {
            return Err(CliError::Config(
                "telemetry.export_interval must be longer than 0s".into(),
            ));
        }
        Ok(Some(Otlp {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            protocol,
            service_name,
            export_interval,
        }))
    }
}

/// The installed exporters, flushed by [`Telemetry::shutdown`].
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) prometheus: PrometheusHandle,
    otlp: Option<(SdkTracerProvider, SdkMeterProvider)>,
}

/// Installs the global metrics recorder (Prometheus, and OTLP when configured) and, when
/// configured, the global tracer provider and W3C propagators.
pub(crate) fn install(otlp: Option<&Otlp>, instance: &str) -> Result<Telemetry, CliError> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .add_global_label("instance", instance.to_owned())
        .build_recorder();
    let handle = prometheus.handle();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        CliError::Other(format!("cannot install {what}: {error}"))
    };
    let Some(otlp) = otlp else {
        metrics::set_global_recorder(prometheus).map_err(|e| failed("metrics", &e))?;
        return Ok(Telemetry {
            prometheus: handle,
            otlp: None,
        });
    };
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(otlp.protocol)
        .with_endpoint(format!("{}/v1/traces", otlp.endpoint))
        .build()
        .map_err(|e| failed("the OTLP span exporter", &e))?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(otlp.protocol)
        .with_endpoint(format!("{}/v1/metrics", otlp.endpoint))
        .build()
        .map_err(|e| failed("the OTLP metric exporter", &e))?;
    let reader = PeriodicReader::builder(metric_exporter)
        .with_interval(otlp.export_interval)
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let bridge = metrics_opentelemetry::OpenTelemetryRecorder::new(
        metrics_opentelemetry::OpenTelemetryMetrics::new(
            opentelemetry::metrics::MeterProvider::meter(&meter, outbox::telemetry::SCOPE),
        ),
    );
    let fanout = metrics_util::layers::FanoutBuilder::default()
        .add_recorder(prometheus)
        .add_recorder(bridge)
        .build();
    metrics::set_global_recorder(fanout).map_err(|e| failed("metrics", &e))?;
    opentelemetry::global::set_tracer_provider(tracer.clone());
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    Ok(Telemetry {
        prometheus: handle,
        otlp: Some((tracer, meter)),
    })
}

impl Telemetry {
    /// Exports what is pending and stops the exporters (they block: off the runtime's threads).
    pub(crate) async fn shutdown(self) {
        let Some((tracer, meter)) = self.otlp else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || {
            let traces = tracer.shutdown();
            let metrics = meter.shutdown();
            (traces, metrics)
        })
        .await;
        match flushed {
            Ok((traces, metrics)) => {
                if let Err(error) = traces {
                    tracing::warn!(%error, "exporting the last spans over OTLP failed");
                }
                if let Err(error) = metrics {
                    tracing::warn!(%error, "exporting the last metrics over OTLP failed");
                }
            }
            Err(error) => tracing::warn!(%error, "stopping the OTLP exporters failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn otlp_is_off_without_an_endpoint_and_reads_the_standard_variables() {
        let none = Otlp::resolve(&TelemetryConfig::default(), env(&[])).unwrap();
        assert_eq!(none, None);
        let from_env = Otlp::resolve(
            &TelemetryConfig::default(),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_SERVICE_NAME", "billing-relay"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(from_env.endpoint, "http://collector:4318");
        assert_eq!(from_env.protocol, Protocol::HttpJson);
        assert_eq!(from_env.service_name, "billing-relay");
        let file = TelemetryConfig {
            otlp_endpoint: Some("https://otel.example:4318".into()),
            ..TelemetryConfig::default()
        };
        let from_file = Otlp::resolve(
            &file,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(from_file.endpoint, "https://otel.example:4318");
        assert_eq!(from_file.protocol, Protocol::HttpBinary);
        assert_eq!(from_file.service_name, "outbox-relay");
    }

    #[test]
    fn otlp_refuses_what_it_cannot_export_with_what_to_write() {
        let refused =
            |config: TelemetryConfig| Otlp::resolve(&config, env(&[])).unwrap_err().to_string();
        let grpc = refused(TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            protocol: Some("grpc".into()),
            ..TelemetryConfig::default()
        });
        assert!(grpc.contains("http/protobuf"), "{grpc}");
        let scheme = refused(TelemetryConfig {
            otlp_endpoint: Some("127.0.0.1:4318".into()),
            ..TelemetryConfig::default()
        });
        assert!(scheme.contains("http://127.0.0.1:4318"), "{scheme}");
        let unknown = refused(TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            protocol: Some("thrift".into()),
            ..TelemetryConfig::default()
        });
        assert!(unknown.contains("\"thrift\" is unknown"), "{unknown}");
    }
}
