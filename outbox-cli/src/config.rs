//! The relay's configuration: a TOML file, then environment variables, then flags, each
//! overriding the one before.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::CliError;

/// The whole file. Unknown keys are refused, so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `postgres://…`, `mysql://…`, `sqlite://…`.
    pub(crate) database_url: Option<String>,
    /// The outbox table (default `outbox`).
    pub(crate) table: Option<String>,
    /// This relay's name, in logs and metrics (default: host name and process id).
    pub(crate) instance_id: Option<String>,
    #[serde(default)]
    pub(crate) relay: RelayConfig,
    pub(crate) sink: Option<SinkConfig>,
    #[serde(default)]
    pub(crate) http: HttpConfig,
    #[serde(default)]
    pub(crate) telemetry: TelemetryConfig,
    #[serde(default)]
    pub(crate) changefeed: ChangefeedConfig,
}

/// `[changefeed]`: `outbox changefeed`, the HTTPS endpoint a CockroachDB changefeed posts the
/// outbox table's rows to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangefeedConfig {
    /// Where to listen (default `127.0.0.1:8443`).
    pub(crate) listen: Option<String>,
    /// The server certificate chain, PEM (CockroachDB's webhook sink speaks only HTTPS).
    pub(crate) cert: Option<std::path::PathBuf>,
    /// The certificate's private key, PEM.
    pub(crate) key: Option<std::path::PathBuf>,
    /// The `Authorization` header value the changefeed sends (its `webhook_auth_header`
    /// option); prefer `OUTBOX_CHANGEFEED_SECRET`.
    pub(crate) secret: Option<String>,
    /// The largest request body accepted (default 64 MiB); `outbox changefeed-sql` chooses
    /// the changefeed's flush size from it.
    pub(crate) max_body_bytes: Option<usize>,
    /// The receiver's own database, where rows wait for a resolved timestamp and from which
    /// the relay publishes them (default `sqlite://outbox-changefeed.db?mode=rwc`).
    pub(crate) store: Option<String>,
    /// How long the ids of published events are remembered to drop replays, e.g. `"25h"` (the
    /// default): longer than `row_ttl`.
    #[serde(default, with = "humantime_serde")]
    pub(crate) remember: Option<Duration>,
    /// The receiver's address as CockroachDB's nodes reach it, `https://host:port/`: the URL
    /// `outbox changefeed-sql` writes into `CREATE CHANGEFEED`.
    pub(crate) public_url: Option<String>,
    /// How long a row stays in a CockroachDB outbox table before row-level TTL deletes it,
    /// e.g. `"1d"` (the default): `outbox migrate` and `outbox changefeed-sql` set it.
    #[serde(default, with = "humantime_serde")]
    pub(crate) row_ttl: Option<Duration>,
}

/// `[telemetry]`: the relay's spans and metrics over OTLP, besides `/metrics`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryConfig {
    /// The collector's OTLP/HTTP address, e.g. `"http://127.0.0.1:4318"` (default:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; neither: no export).
    pub(crate) otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json` (default: `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub(crate) protocol: Option<String>,
    /// The `service.name` resource attribute (default: `OTEL_SERVICE_NAME`, then
    /// `outbox-relay`).
    pub(crate) service_name: Option<String>,
    /// How often metrics are exported, e.g. `"10s"` (the default).
    #[serde(default, with = "humantime_serde")]
    pub(crate) export_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelayConfig {
    pub(crate) batch_size: Option<usize>,
    /// Most bytes of payloads and headers claimed at once (default 16 MiB; always one event).
    pub(crate) max_batch_bytes: Option<usize>,
    pub(crate) max_attempts: Option<u32>,
    /// How long an idle relay sleeps between polls, e.g. `"25ms"`.
    #[serde(default, with = "humantime_serde")]
    pub(crate) poll_interval: Option<Duration>,
    /// The longest one delivery may take before it counts as failed, e.g. `"30s"` (default 60 s).
    #[serde(default, with = "humantime_serde")]
    pub(crate) delivery_timeout: Option<Duration>,
    /// Keep published events this long, e.g. `"1d"` (default: delete them at once).
    #[serde(default, with = "humantime_serde")]
    pub(crate) retention: Option<Duration>,
    /// `per-aggregate` (default) or `unordered`.
    pub(crate) ordering: Option<OrderingSetting>,
    /// Where the relay reads events: `table` (default: claims rows), `log` (PostgreSQL: rows
    /// streamed from the transaction log) or `wal-messages` (PostgreSQL: events recorded as
    /// WAL messages, no rows).
    pub(crate) source: Option<SourceSetting>,
    /// The replication connection of `source = "log"` / `"wal-messages"` (default:
    /// `database_url`); its role needs the `REPLICATION` attribute.
    pub(crate) replication_url: Option<String>,
    /// Serve many outbox tables instead of `table`: a pattern (`"tenant_*.outbox"`, `*` for
    /// any run of characters) looked for again every 10 s, or a list of names.
    pub(crate) tables: Option<TablesSetting>,
}

/// `relay.tables`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TablesSetting {
    /// Every outbox table whose name matches.
    Pattern(String),
    /// These tables.
    List(Vec<String>),
}

/// `relay.source`, checked when the file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SourceSetting {
    #[default]
    Table,
    Log,
    WalMessages,
}

/// `relay.ordering`, checked when the file is read.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OrderingSetting {
    PerAggregate,
    Unordered,
}

impl From<OrderingSetting> for outbox::relay::Ordering {
    fn from(setting: OrderingSetting) -> Self {
        match setting {
            OrderingSetting::PerAggregate => outbox::relay::Ordering::PerAggregate,
            OrderingSetting::Unordered => outbox::relay::Ordering::Unordered,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpConfig {
    /// Where `/metrics` and `/health` are served (default `127.0.0.1:9464`).
    pub(crate) listen: Option<String>,
}

/// Where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkConfig {
    /// `nats`, `kafka`, `rabbitmq`, `redis`, `mqtt` or `webhook`.
    pub(crate) kind: String,
    /// The broker's URL (Kafka: the bootstrap servers; webhook: the endpoint).
    pub(crate) url: String,
    /// Destination template: subject, topic, exchange, stream key or MQTT topic.
    pub(crate) routing: Option<String>,
    /// Per event type: another destination template.
    #[serde(default)]
    pub(crate) routes: BTreeMap<String, String>,
    /// RabbitMQ: the routing key template (default `{event_type}`).
    pub(crate) routing_key: Option<String>,
    /// RabbitMQ: publish `mandatory` (default true), so that an event no queue receives is
    /// retried and dead-lettered instead of dropped.
    pub(crate) mandatory: Option<bool>,
    /// Kafka: `compression.type` (default `lz4`; `none`, `gzip`, `snappy`, `lz4`, `zstd`).
    pub(crate) compression: Option<String>,
    /// Webhook: the signing secret, `whsec_…` (prefer `OUTBOX_WEBHOOK_SECRET`).
    pub(crate) secret: Option<String>,
    /// `payload` (default) or `cloudevents`.
    pub(crate) envelope: Option<String>,
    /// The CloudEvents `source` attribute (default `/outbox`).
    pub(crate) source: Option<String>,
}

impl Config {
    /// The `[sink]` section, its URL replaced by `url` when given; an error saying what to add
    /// when there is none.
    pub(crate) fn sink_with_url(&self, url: Option<String>) -> Result<SinkConfig, CliError> {
        let mut sink = self.sink.clone().ok_or_else(|| {
            CliError::Config(
                "no sink: add a [sink] section with `kind` and `url` to the configuration file"
                    .into(),
            )
        })?;
        if let Some(url) = url {
            sink.url = url;
        }
        Ok(sink)
    }

    /// Reads `path`; a missing file, bad TOML or an unknown key is an error naming the file.
    pub(crate) fn load(path: &Path) -> Result<Config, CliError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            CliError::Config(format!("cannot read {}: {error}", path.display()))
        })?;
        Config::parse(&text, path)
    }

    /// Reads the text of the file `path`: bad TOML or an unknown key is an error naming the
    /// file and, where the parser points at one, the line.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, CliError> {
        toml::from_str(text).map_err(|error| {
            let message = error.message().to_owned();
            let line = error
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1);
            match line {
                Some(line) => CliError::Config(format!("{}:{line}: {message}", path.display())),
                None => CliError::Config(format!("{}: {message}", path.display())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guide's "complete configuration file" (`docs/operate.md`), as a user copies it.
    fn guide_config() -> String {
        let guide = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operate.md"));
        let start = guide
            .find("A complete configuration file:\n\n```toml\n")
            .expect("the guide shows a complete configuration file");
        let body = &guide[start..];
        let body = &body[body.find("```toml\n").unwrap_or(0) + "```toml\n".len()..];
        body[..body.find("```").unwrap_or(body.len())].to_owned()
    }

    #[test]
    fn the_guide_configuration_file_is_read_whole() {
        let config: Config = toml::from_str(&guide_config()).unwrap();
        assert!(config.sink.is_some());
        let telemetry = &config.telemetry;
        assert_eq!(
            telemetry.otlp_endpoint.as_deref(),
            Some("http://otel-collector.internal:4318")
        );
        assert_eq!(telemetry.export_interval, Some(Duration::from_secs(10)));
        assert_eq!(config.relay.max_batch_bytes, Some(16 * 1024 * 1024));
    }
}
