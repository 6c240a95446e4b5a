//! `outbox audit`: what the table committed against what a broker holds.

use std::time::SystemTime;

use outbox::Outbox;
use outbox::audit::{self, IdRange};

use crate::CliError;
use crate::cli::Audit;
use crate::config::SinkConfig;
use crate::db::{Db, with_pool};

/// Reads both sides, prints the report, and fails (exit 3) on loss, phantoms or disorder.
pub(crate) async fn run(
    db: &Db,
    outbox: &Outbox,
    sink: Option<&SinkConfig>,
    args: &Audit,
) -> Result<(), CliError> {
    let broker = args
        .broker
        .clone()
        .or_else(|| sink.map(|sink| sink.kind.clone()))
        .ok_or_else(|| {
            CliError::Config(
                "outbox audit needs a broker: --broker (nats, kafka, redis, rabbitmq) or a [sink] section"
                    .into(),
            )
        })?;
    let url = args
        .sink_url
        .clone()
        .or_else(|| sink.map(|sink| sink.url.clone()))
        .ok_or_else(|| {
            CliError::Config("outbox audit needs the broker's URL: --sink-url or sink.url".into())
        })?;
    if args.subject.is_some() && broker != "nats" {
        return Err(CliError::Config(format!(
            "--subject applies to NATS only, not to {broker:?}"
        )));
    }
    let range = range(args.from.as_deref(), args.to.as_deref())?;
    db.check_table(outbox).await?;
    // The table, then the broker: on a live system an event committed and published between
    // the two reads would look like a phantom, which is why a live audit ends its range (`--to`)
    // at a moment the relays have passed.
    let committed = with_pool!(db, pool => outbox.committed(pool, &range).await)
        .map_err(|error| CliError::Database(error.to_string()))?;
    let observed = read(&broker, &url, &args.read, args.subject.as_deref()).await?;
    let report = audit::compare(&committed, &observed, &range);
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|error| CliError::Other(error.to_string()))?;
        println!("{text}");
    } else {
        println!("{report}");
    }
    if report.is_clean() {
        return Ok(());
    }
    Err(CliError::AuditFailed(format!(
        "audit failed: {} missing, {} phantoms, {} order violations",
        report.missing, report.phantoms, report.order_violations
    )))
}

/// The broker side.
async fn read(
    broker: &str,
    url: &str,
    name: &str,
    subject: Option<&str>,
) -> Result<Vec<audit::Observed>, CliError> {
    let unreadable = |error: audit::read::ReadError| CliError::Sink(error.to_string());
    match broker {
        "nats" => {
            let client = async_nats_client(url).await?;
            audit::read::nats(&client, name, subject)
                .await
                .map_err(unreadable)
        }
        "kafka" => audit::read::kafka(url, name).await.map_err(unreadable),
        "redis" => audit::read::redis(url, name).await.map_err(unreadable),
        "rabbitmq" => audit::read::rabbitmq(url, name).await.map_err(unreadable),
        other => Err(CliError::Config(format!(
            "outbox audit reads nats, kafka, redis or rabbitmq, not {other:?} \
             (MQTT and webhooks keep no history to compare)"
        ))),
    }
}

async fn async_nats_client(url: &str) -> Result<async_nats::Client, CliError> {
    async_nats::connect(url).await.map_err(|error| {
        CliError::SinkUnreachable(format!(
            "cannot connect to NATS at {}: {error}",
            outbox::sinks::redacted(url)
        ))
    })
}

/// The ids the audit covers: each end an event id or an RFC 3339 instant.
fn range(from: Option<&str>, to: Option<&str>) -> Result<IdRange, CliError> {
    let mut range = IdRange::all();
    if let Some(from) = from {
        range = match bound(from, "--from")? {
            Bound::Id(id) => range.from(id),
            Bound::At(at) => range.from(IdRange::between(at, at).start().unwrap_or_default()),
        };
    }
    if let Some(to) = to {
        range = match bound(to, "--to")? {
            Bound::Id(id) => range.to(id),
            Bound::At(at) => range.to(IdRange::between(at, at).end().unwrap_or_default()),
        };
    }
    Ok(range)
}

enum Bound {
    Id(uuid::Uuid),
    At(SystemTime),
}

fn bound(text: &str, flag: &str) -> Result<Bound, CliError> {
    if let Ok(id) = text.parse() {
        return Ok(Bound::Id(id));
    }
    humantime::parse_rfc3339_weak(text)
        .map(Bound::At)
        .map_err(|_| {
            CliError::Config(format!(
                "{flag} {text:?} is neither an event id (a UUID) nor an RFC 3339 instant \
                 (2026-12-01T10:00:00Z)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_ids_or_instants_and_anything_else_is_refused() {
        let id = uuid::Uuid::now_v7();
        let wide = range(Some(&id.to_string()), Some("2999-01-01T00:00:00Z")).unwrap();
        assert!(wide.contains(&id));
        let early = range_of("2000-01-01T00:00:00Z");
        assert!(!early.contains(&id), "an id of now is after 2000");
        let error = range(Some("yesterday"), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--from \"yesterday\" is neither an event id (a UUID) nor an RFC 3339 instant \
             (2026-12-01T10:00:00Z)"
        );
        assert_eq!(error.exit_code(), 2);
    }

    fn range_of(to: &str) -> IdRange {
        range(None, Some(to)).unwrap()
    }
}
