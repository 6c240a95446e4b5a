//! `outbox cancel`: delayed events deleted before they are due, each in a transaction of its own.

use outbox::Outbox;

use crate::CliError;
use crate::db::{Db, with_pool};

/// Cancels each of `ids`; fails when some could not be cancelled.
pub(crate) async fn run(db: &Db, outbox: &Outbox, ids: &[uuid::Uuid]) -> Result<(), CliError> {
    db.check_table(outbox).await?;
    let database = |error: &dyn std::fmt::Display| CliError::Database(error.to_string());
    let mut missed = Vec::new();
    for id in ids {
        let cancelled = with_pool!(db, pool => {
            let mut tx = pool.begin().await.map_err(|e| database(&e))?;
            let cancelled = outbox.cancel(&mut *tx, *id).await.map_err(|e| database(&e))?;
            tx.commit().await.map_err(|e| database(&e))?;
            cancelled
        });
        if cancelled {
            println!("cancelled {id}");
        } else {
            missed.push(id.to_string());
        }
    }
    if missed.is_empty() {
        return Ok(());
    }
    Err(CliError::Other(format!(
        "not cancelled (published already, dead, or not a delayed event of `{}`): {}",
        outbox.table(),
        missed.join(", ")
    )))
}
