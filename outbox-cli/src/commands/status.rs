//! `outbox status`: pending, dead and kept events per aggregate and event type, and the relays
//! at work.

use outbox::Outbox;

use crate::CliError;
use crate::db::{self, Db};

/// Prints the status of `outbox`, as a table or JSON.
pub(crate) async fn run(db: &Db, outbox: &Outbox, json: bool) -> Result<(), CliError> {
    db.check_table(outbox).await?;
    let rows = db.status(outbox).await?;
    let relays = db.relays(outbox).await?;
    print_status(&rows, relays.as_deref(), json)
}

fn print_status(
    rows: &[db::StatusRow],
    relays: Option<&[db::RelayInstance]>,
    json: bool,
) -> Result<(), CliError> {
    if json {
        let status = serde_json::json!({ "events": rows, "relays": relays });
        let text = serde_json::to_string_pretty(&status)
            .map_err(|error| CliError::Other(error.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "{:<20} {:<28} {:>9} {:>6} {:>9} {:>12}",
        "aggregate_type", "event_type", "pending", "dead", "kept", "oldest (s)"
    );
    for row in rows {
        let age = row
            .oldest_pending_secs
            .map(|age| format!("{age:.1}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<28} {:>9} {:>6} {:>9} {:>12}",
            row.aggregate_type, row.event_type, row.pending, row.dead, row.published, age
        );
    }
    let (pending, dead): (i64, i64) = rows
        .iter()
        .fold((0, 0), |(p, d), row| (p + row.pending, d + row.dead));
    println!("total: {pending} pending, {dead} dead");
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
    Ok(())
}
