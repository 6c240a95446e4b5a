//! `outbox tail`: prints events as they are recorded.

use std::io::Write;
use std::time::Duration;

use outbox::Outbox;
use serde::Serialize;

use crate::CliError;
use crate::db::{Db, with_pool};
use crate::shutdown::shutdown_signal;

/// Follows `outbox` until SIGINT or SIGTERM.
pub(crate) async fn run(
    db: &Db,
    outbox: &Outbox,
    json: bool,
    from_start: bool,
) -> Result<(), CliError> {
    db.check_table(outbox).await?;
    tail(db, outbox, json, from_start).await
}

/// Follows the table: prints what was recorded since the last poll, every 100 ms. Events the
/// relay publishes and deletes between two polls are not seen: with `relay.retention` set, the
/// relay keeps them and nothing is missed.
async fn tail(db: &Db, outbox: &Outbox, json: bool, from_start: bool) -> Result<(), CliError> {
    let unreadable = |error: outbox::Error| {
        CliError::Database(format!("cannot read `{}`: {error}", outbox.table()))
    };
    let mut last = if from_start {
        0
    } else {
        with_pool!(db, pool => outbox.last_seq(pool).await).map_err(unreadable)?
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let events = with_pool!(db, pool => outbox.events_after(pool, last, 1_000).await)
            .map_err(unreadable)?;
        for event in &events {
            let row = TailRow::from(event);
            if json {
                let line =
                    serde_json::to_string(&row).map_err(|e| CliError::Other(e.to_string()))?;
                println!("{line}");
            } else {
                println!(
                    "{:>8}  {}  {} {}  {}  {}",
                    row.seq,
                    row.id,
                    row.aggregate_type,
                    row.aggregate_id,
                    row.event_type,
                    row.payload
                );
            }
            last = row.seq;
        }
        let _ = std::io::stdout().flush();
        if events.len() < 1_000 {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// One recorded event, as `outbox tail` prints it.
#[derive(Debug, Serialize)]
struct TailRow<'a> {
    seq: i64,
    id: String,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    event_type: &'a str,
    payload: &'a str,
}

impl<'a> From<&'a outbox::relay::Message> for TailRow<'a> {
    fn from(message: &'a outbox::relay::Message) -> Self {
        TailRow {
            seq: message.seq,
            id: message.id.to_string(),
            aggregate_type: &message.aggregate_type,
            aggregate_id: &message.aggregate_id,
            event_type: &message.event_type,
            payload: &message.payload,
        }
    }
}
