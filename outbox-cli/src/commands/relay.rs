//! `outbox relay`: the relay as a service, with `/metrics` and `/health`.
//!
//! What a person must fix (the configuration, refused credentials) stops the command at once.
//! An unreachable broker or receiver does not: the service starts, answers 503 on `/health`,
//! logs, and tries again with backoff, so that a broker outage never turns into a restart loop
//! under systemd.

use std::time::Duration;

use outbox::relay::many::Outboxes;
use outbox::relay::{Backoff, IntoSource, Ordering, Relay, RelayBuilder, Sink};
use outbox::sinks::redacted;
use outbox::store::postgres::LogStream;

use crate::CliError;
use crate::config::{RelayConfig, TablesSetting};
use crate::db::{Db, with_pool};
use crate::http::{SinkProblem, serve};
use crate::settings::{Settings, table_name};
use crate::shutdown::shutdown_signal;
use crate::sink::AnySink;
use crate::telemetry::Otlp;

/// The flags of `outbox relay`.
pub(crate) struct Options {
    pub(crate) batch_size: Option<usize>,
    pub(crate) listen: Option<String>,
    pub(crate) sink_url: Option<String>,
    pub(crate) webhook_secret: Option<String>,
    pub(crate) instance: String,
}

/// Runs the relay until SIGINT or SIGTERM.
pub(crate) async fn run(settings: &Settings, db: Db, options: Options) -> Result<(), CliError> {
    let config = &settings.config;
    let outbox = &settings.outbox;
    let sink_config = config.sink_with_url(options.sink_url)?;
    let relay_config = &config.relay;
    let batch = batch_size(relay_config, options.batch_size)?;
    if let Db::Postgres(pool) = &db {
        // CockroachDB's outbox is published by a changefeed: say so now, not in a log line.
        outbox::store::postgres::check_relay_support(pool, outbox.table())
            .await
            .map_err(|error| match error {
                outbox::Error::Unsupported { .. } => CliError::Config(error.to_string()),
                error => CliError::Database(error.to_string()),
            })?;
    }
    let tables = relay_config.tables.as_ref();
    if tables.is_some() && outbox.is_log_tailed() {
        return Err(CliError::Config(
            "relay.tables serves many tables by polling them: it cannot be combined with \
             relay.source = \"log\" or \"wal-messages\""
                .into(),
        ));
    }
    // Settings first, then the database: a mistake in the file is reported as such.
    if tables.is_none() {
        db.check_table(outbox).await?;
    }
    let instance = options.instance;
    let listen = options
        .listen
        .or_else(|| config.http.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9464".into());
    let otlp = Otlp::resolve(&config.telemetry, |name| std::env::var(name).ok())?;
    let telemetry = crate::telemetry::install(otlp.as_ref(), &instance)?;
    let metrics = telemetry.prometheus.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|error| CliError::Config(format!("cannot listen on {listen}: {error}")))?;
    let sink_problem = SinkProblem::default();
    let server = tokio::spawn(serve(
        listener,
        metrics,
        db.clone(),
        outbox.clone(),
        sink_problem.clone(),
    ));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let secret = options.webhook_secret.as_deref();
    let connect = connect_sink(&sink_config, secret, &sink_problem);
    let sink = tokio::select! {
        sink = connect => sink?,
        () = &mut shutdown => {
            server.abort();
            eprintln!("outbox relay {instance}: stopped before the sink was reachable");
            return Ok(());
        }
    };
    eprintln!(
        "outbox relay {instance}: table `{}` of {} -> {} {}; /metrics and /health on http://{listen}",
        outbox.table(),
        redacted(&settings.database_url),
        sink_config.kind,
        redacted(&sink_config.url),
    );
    if let Some(otlp) = &otlp {
        eprintln!(
            "outbox relay {instance}: spans and metrics over OTLP to {} as `{}`",
            redacted(&otlp.endpoint),
            otlp.service_name,
        );
    }
    // One builder for every source and database: the settings apply alike.
    macro_rules! run_relay {
        ($source:expr) => {{
            configured(
                Relay::builder($source, sink).outbox(outbox),
                relay_config,
                batch,
            )
            .build()
            .run(&mut shutdown)
            .await;
        }};
    }
    match (&db, outbox.is_log_tailed()) {
        (Db::Postgres(pool), true) => {
            let url = relay_config
                .replication_url
                .as_deref()
                .unwrap_or(&settings.database_url);
            let log = LogStream::new(pool.clone(), url)
                .map_err(|error| CliError::Config(error.to_string()))?;
            run_relay!(log)
        }
        (_, true) => {
            server.abort();
            return Err(CliError::Config(
                "relay.source = \"log\" and \"wal-messages\" tail PostgreSQL's transaction log: \
                 use them with a postgres:// database_url, or remove the setting"
                    .into(),
            ));
        }
        (db, false) => match tables {
            None => with_pool!(db, pool => run_relay!(pool.clone())),
            Some(tables) => with_pool!(db, pool => {
                let outboxes = outboxes(pool.clone(), tables)?;
                let found = outboxes
                    .discover()
                    .await
                    .map_err(|error| CliError::Database(error.to_string()))?;
                eprintln!(
                    "outbox relay {instance}: {} tables: {}",
                    found.len(),
                    found.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                run_relay!(outboxes)
            }),
        },
    }
    server.abort();
    telemetry.shutdown().await;
    eprintln!("outbox relay {instance}: stopped");
    Ok(())
}

/// The batch size: the flag's, the file's, or 500; refused when 0, as is a zero
/// `relay.max_batch_bytes`.
pub(crate) fn batch_size(
    relay_config: &RelayConfig,
    flag: Option<usize>,
) -> Result<usize, CliError> {
    let batch = flag.or(relay_config.batch_size).unwrap_or(500);
    if batch == 0 {
        return Err(CliError::Config("the batch size must be at least 1".into()));
    }
    if relay_config.max_batch_bytes == Some(0) {
        return Err(CliError::Config(
            "relay.max_batch_bytes must be at least 1 (a batch always takes one event)".into(),
        ));
    }
    Ok(batch)
}

/// The `[relay]` settings on a relay: the same for every source, database and command
/// (`outbox relay`, `outbox changefeed`).
pub(crate) fn configured<F: IntoSource, K: Sink>(
    builder: RelayBuilder<F, K>,
    relay_config: &RelayConfig,
    batch: usize,
) -> RelayBuilder<F, K> {
    let ordering = relay_config
        .ordering
        .map_or(Ordering::PerAggregate, Ordering::from);
    let mut builder = builder.batch_size(batch).ordering(ordering);
    if let Some(bytes) = relay_config.max_batch_bytes {
        builder = builder.max_batch_bytes(bytes);
    }
    if let Some(attempts) = relay_config.max_attempts {
        builder = builder.max_attempts(attempts);
    }
    if let Some(interval) = relay_config.poll_interval {
        builder = builder.poll_interval(interval);
    }
    if let Some(timeout) = relay_config.delivery_timeout {
        builder = builder.delivery_timeout(timeout);
    }
    if let Some(period) = relay_config.retention {
        builder = builder.retention(period);
    }
    builder
}

/// The tables of `relay.tables`.
pub(crate) fn outboxes<DB: outbox::Dialect>(
    pool: sqlx::Pool<DB>,
    tables: &TablesSetting,
) -> Result<Outboxes<DB>, CliError> {
    match tables {
        TablesSetting::Pattern(pattern) => Outboxes::matching(pool, pattern)
            .map_err(|error| CliError::Config(format!("relay.tables: {error}"))),
        TablesSetting::List(names) => {
            let tables = names
                .iter()
                .map(|name| table_name(name))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Outboxes::tables(pool, tables))
        }
    }
}

/// Connects the sink, waiting for an unreachable broker: every failed try is logged and shown
/// on `/health`, and the next one follows after a delay doubling from 1 s to 30 s.
pub(crate) async fn connect_sink(
    config: &crate::config::SinkConfig,
    webhook_secret: Option<&str>,
    problem: &SinkProblem,
) -> Result<AnySink, CliError> {
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut failures = 0_u32;
    loop {
        match AnySink::connect(config, webhook_secret).await {
            Ok(sink) => {
                if failures > 0 {
                    tracing::info!(
                        sink = %config.kind,
                        failures,
                        "the sink is reachable again; relaying"
                    );
                }
                *problem.lock().unwrap_or_else(|poison| poison.into_inner()) = None;
                return Ok(sink);
            }
            Err(CliError::SinkUnreachable(error)) => {
                failures = failures.saturating_add(1);
                let delay = backoff.delay(failures);
                tracing::warn!(
                    %error,
                    retry_in = ?delay,
                    "the sink is unreachable; waiting for it (/health answers 503 meanwhile)"
                );
                *problem.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(error);
                tokio::time::sleep(delay).await;
            }
            Err(other) => return Err(other),
        }
    }
}
