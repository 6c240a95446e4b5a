//! `outbox status`: pending, dead and kept events per aggregate and event type, and the relays
//! at work.

use outbox::Outbox;
use outbox::admin::{EventCounts, RelayInstance, SlotStatus};
use outbox::changefeed::CockroachVersion;
use serde::Serialize;

use crate::CliError;
use crate::config::TablesSetting;
use crate::db::{Db, with_pool};

/// Prints the status of `outbox`, as a table or JSON.
pub(crate) async fn run(
    db: &Db,
    outbox: &Outbox,
    tables: Option<&TablesSetting>,
    json: bool,
) -> Result<(), CliError> {
    if let Some(tables) = tables {
        return many(db, tables, json).await;
    }
    if let Db::Postgres(pool) = db
        && let Some(version) = outbox::store::postgres::cockroach_version(pool)
            .await
            .map_err(|error| CliError::Database(error.to_string()))?
    {
        return cockroach_status(pool, outbox, version, json).await;
    }
    db.check_table(outbox).await?;
    let counts = with_pool!(db, pool => outbox.status(pool).await)
        .map_err(|error| CliError::Database(error.to_string()))?;
    let relays = with_pool!(db, pool => outbox.relays(pool).await)
        .map_err(|error| CliError::Database(format!("cannot list the relays: {error}")))?;
    let slot = with_pool!(db, pool => outbox.slot(pool).await).map_err(|error| {
        CliError::Database(format!("cannot read the replication slot: {error}"))
    })?;
    let rows: Vec<StatusRow> = counts.into_iter().map(StatusRow::from).collect();
    print_status(&rows, relays.as_deref(), slot.as_ref(), json)
}

/// CockroachDB: no relay, no pending count — a changefeed publishes the table and row-level TTL
/// empties it. What matters is the changefeed's high-water timestamp: how far behind it is.
async fn cockroach_status(
    pool: &sqlx::PgPool,
    outbox: &Outbox,
    version: CockroachVersion,
    json: bool,
) -> Result<(), CliError> {
    let jobs = outbox::store::postgres::changefeed_jobs(pool, outbox.table())
        .await
        .map_err(|error| CliError::Database(format!("cannot list the changefeed jobs: {error}")))?;
    if json {
        let status = serde_json::json!({
            "cockroachdb": version.to_string(),
            "changefeeds": jobs.iter().map(|job| serde_json::json!({
                "job": job,
                "behind_secs": job.high_water.map(|hlc| hlc.lag_seconds()),
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&status)
            .map_err(|error| CliError::Other(error.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "CockroachDB {version}: a changefeed publishes `{}`, row-level TTL deletes its rows",
        outbox.table()
    );
    if jobs.is_empty() {
        println!(
            "changefeeds: none names `{}` - create one with `outbox changefeed-sql --execute`",
            outbox.table()
        );
    }
    for job in &jobs {
        let behind = job.high_water.map_or_else(
            || "no checkpoint yet".to_owned(),
            |hlc| format!("{:.1} s behind (high water {hlc})", hlc.lag_seconds()),
        );
        println!("changefeed job {}: {}, {behind}", job.id, job.status);
    }
    Ok(())
}

/// `relay.tables`: each table's counts, a section per table (a JSON object per table).
async fn many(db: &Db, tables: &TablesSetting, json: bool) -> Result<(), CliError> {
    let database = |error: outbox::Error| CliError::Database(error.to_string());
    let found = with_pool!(db, pool => {
        crate::commands::relay::outboxes(pool.clone(), tables)?.discover().await
    })
    .map_err(database)?;
    let mut all = Vec::with_capacity(found.len());
    for table in found {
        let outbox = Outbox::for_table(table.clone());
        let counts = with_pool!(db, pool => outbox.status(pool).await).map_err(database)?;
        let rows: Vec<StatusRow> = counts.into_iter().map(StatusRow::from).collect();
        all.push((table, rows));
    }
    if json {
        let status: Vec<serde_json::Value> = all
            .iter()
            .map(|(table, rows)| serde_json::json!({ "table": table.to_string(), "events": rows }))
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "tables": status }))
            .map_err(|error| CliError::Other(error.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!("{} tables", all.len());
    for (table, rows) in &all {
        println!("\ntable {table}");
        print_counts(rows);
    }
    Ok(())
}

/// One line of `outbox status`.
#[derive(Debug, Serialize)]
struct StatusRow {
    aggregate_type: String,
    event_type: String,
    pending: u64,
    /// Delayed events not due yet.
    delayed: u64,
    dead: u64,
    /// Published and kept (retention mode).
    published: u64,
    /// Age of the oldest pending event in seconds: the relays' lag.
    oldest_pending_secs: Option<f64>,
    /// Seconds until the next delayed event is due.
    next_due_secs: Option<f64>,
}

impl From<EventCounts> for StatusRow {
    fn from(counts: EventCounts) -> Self {
        StatusRow {
            oldest_pending_secs: counts.oldest_pending.map(|age| age.as_secs_f64()),
            next_due_secs: counts.next_due.map(|due| due.as_secs_f64()),
            delayed: counts.delayed,
            aggregate_type: counts.aggregate_type,
            event_type: counts.event_type,
            pending: counts.pending,
            dead: counts.dead,
            published: counts.published,
        }
    }
}

fn print_status(
    rows: &[StatusRow],
    relays: Option<&[RelayInstance]>,
    slot: Option<&SlotStatus>,
    json: bool,
) -> Result<(), CliError> {
    if json {
        let status = serde_json::json!({ "events": rows, "relays": relays, "slot": slot });
        let text = serde_json::to_string_pretty(&status)
            .map_err(|error| CliError::Other(error.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    print_counts(rows);
    // Relays share the work by row locks (or, on SQLite, take turns under a lease): there are
    // no partitions to show, only who is at work.
    match relays {
        None => println!("relays: not visible on MySQL/MariaDB"),
        Some([]) => println!("relays: none running"),
        Some(relays) => {
            for relay in relays {
                println!("relay {}: {}", relay.instance, relay.detail);
            }
        }
    }
    if let Some(slot) = slot {
        println!(
            "slot {}: {}, {} bytes of WAL retained, {} bytes behind{}",
            slot.slot,
            if slot.active {
                "streamed by a relay"
            } else {
                "no relay streams it"
            },
            slot.retained_bytes,
            slot.lag_bytes,
            match slot.wal_status.as_deref() {
                Some("lost") =>
                    " - INVALIDATED: see the recovery in docs/log-tailing.md".to_owned(),
                Some(status) => format!(" (wal_status {status})"),
                None => String::new(),
            }
        );
    }
    Ok(())
}

/// The counts as a table, and their total.
fn print_counts(rows: &[StatusRow]) {
    println!(
        "{:<20} {:<28} {:>9} {:>6} {:>9} {:>12} {:>8} {:>12}",
        "aggregate_type",
        "event_type",
        "pending",
        "dead",
        "kept",
        "oldest (s)",
        "delayed",
        "next due (s)"
    );
    let seconds = |secs: Option<f64>| secs.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
    for row in rows {
        println!(
            "{:<20} {:<28} {:>9} {:>6} {:>9} {:>12} {:>8} {:>12}",
            row.aggregate_type,
            row.event_type,
            row.pending,
            row.dead,
            row.published,
            seconds(row.oldest_pending_secs),
            row.delayed,
            seconds(row.next_due_secs),
        );
    }
    let (pending, dead, delayed): (u64, u64, u64) =
        rows.iter().fold((0, 0, 0), |(p, d, l), row| {
            (p + row.pending, d + row.dead, l + row.delayed)
        });
    println!("total: {pending} pending, {dead} dead, {delayed} delayed");
}
