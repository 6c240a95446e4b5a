//! `outbox tail`: prints events as they are recorded.

use std::io::Write;
use std::time::Duration;

use outbox::Outbox;

use crate::CliError;
use crate::db::Db;
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
    let mut last = if from_start {
        0
    } else {
        db.last_seq(outbox).await?
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let rows = db.recorded_after(outbox, last, 1_000).await?;
        for row in &rows {
            if json {
                let line =
                    serde_json::to_string(row).map_err(|e| CliError::Other(e.to_string()))?;
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
        if rows.len() < 1_000 {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
