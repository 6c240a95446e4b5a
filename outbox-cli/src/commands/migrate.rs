//! `outbox migrate`: creates or upgrades the outbox table, and the inbox table.

use outbox::Outbox;
use outbox::inbox::Inbox;

use crate::CliError;
use crate::db::{Db, with_pool};
use crate::settings::table_name;

/// Migrates `outbox` and, unless `no_inbox`, the inbox table (default `inbox`).
pub(crate) async fn run(
    db: &Db,
    outbox: &Outbox,
    inbox_table: Option<&str>,
    no_inbox: bool,
) -> Result<(), CliError> {
    let migrated = with_pool!(db, pool => outbox.migrate(pool).await);
    migrated.map_err(|error| CliError::Database(error.to_string()))?;
    println!("outbox table `{}` is ready", outbox.table());
    if !no_inbox {
        let inbox = Inbox::for_table(table_name(inbox_table.unwrap_or("inbox"))?);
        let migrated = with_pool!(db, pool => inbox.migrate(pool).await);
        migrated.map_err(|error| CliError::Database(error.to_string()))?;
        println!("inbox table `{}` is ready", inbox.table());
    }
    Ok(())
}
