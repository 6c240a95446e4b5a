//! `outbox dead-letters`: list, show, replay and purge the events that ran out of attempts. The
//! filters and limits are applied by the database.

use std::io::Write;

use outbox::Outbox;
use outbox::relay::DeadLetterFilter;

use crate::CliError;
use crate::cli::DeadLetters;
use crate::db::{Db, with_pool};

/// Dead letters replayed per statement.
const REPLAY_BATCH: usize = 500;

/// Runs one `dead-letters` command.
pub(crate) async fn run(db: &Db, outbox: &Outbox, command: DeadLetters) -> Result<(), CliError> {
    db.check_table(outbox).await?;
    dead_letters(db, outbox, command).await
}

async fn dead_letters(db: &Db, outbox: &Outbox, command: DeadLetters) -> Result<(), CliError> {
    let database = |error: outbox::Error| CliError::Database(error.to_string());
    match command {
        DeadLetters::List {
            limit,
            filter,
            json,
        } => {
            let query = filter.to_query();
            let letters =
                with_pool!(db, pool => outbox.dead_letters_where(pool, &query, limit).await)
                    .map_err(database)?;
            for letter in letters {
                let message = &letter.message;
                if json {
                    let line = serde_json::json!({
                        "id": message.id.to_string(),
                        "aggregate_type": message.aggregate_type,
                        "aggregate_id": message.aggregate_id,
                        "event_type": message.event_type,
                        "attempts": message.attempts,
                        "last_error": letter.last_error,
                        "dead_for_secs": letter.dead_for.as_secs_f64(),
                        "payload": serde_json::from_str::<serde_json::Value>(&message.payload)
                            .unwrap_or_else(|_| message.payload.clone().into()),
                    });
                    println!("{line}");
                } else {
                    println!(
                        "{}  {} {} {}  attempts {}  {}",
                        message.id,
                        message.aggregate_type,
                        message.aggregate_id,
                        message.event_type,
                        message.attempts,
                        letter.last_error
                    );
                }
            }
            Ok(())
        }
        DeadLetters::Replay {
            ids,
            all,
            filter,
            yes,
        } => {
            if ids.is_empty() && !all {
                return Err(CliError::Config(
                    "name the dead letters to replay by id, or pass --all".into(),
                ));
            }
            let query = filter.to_query();
            let total = if all {
                with_pool!(db, pool => outbox.count_dead_letters(pool, &query).await)
                    .map_err(database)?
            } else {
                ids.len() as u64
            };
            let what = match (all, filter.is_empty()) {
                (true, true) => format!("every dead letter ({total})"),
                (true, false) => format!("the {total} dead letters selected"),
                (false, _) => format!("{total} dead letters"),
            };
            if !yes && !confirm(&format!("replay {what} of `{}`?", outbox.table())) {
                return Err(CliError::Other("nothing replayed".into()));
            }
            let progress = total > REPLAY_BATCH as u64;
            let mut replayed = 0;
            if all {
                // Each round selects the next batch in the database; a replayed event is no
                // longer dead, so the next round starts after it.
                loop {
                    let batch = with_pool!(db, pool => outbox.dead_letters_where(pool, &query, REPLAY_BATCH).await)
                        .map_err(database)?;
                    let batch: Vec<uuid::Uuid> =
                        batch.into_iter().map(|letter| letter.message.id).collect();
                    let done = match batch.as_slice() {
                        [] => 0,
                        ids => with_pool!(db, pool => outbox.replay_dead_letters(pool, ids).await)
                            .map_err(database)?,
                    };
                    replayed += done;
                    if progress {
                        eprint!("\rreplayed {replayed} of {total}");
                    }
                    if done == 0 {
                        break;
                    }
                }
            } else {
                for batch in ids.chunks(REPLAY_BATCH) {
                    replayed +=
                        with_pool!(db, pool => outbox.replay_dead_letters(pool, batch).await)
                            .map_err(database)?;
                    if progress {
                        eprint!("\rreplayed {replayed} of {total}");
                    }
                }
            }
            if progress {
                eprintln!();
            }
            println!("{replayed} dead letters replayed");
            Ok(())
        }
        DeadLetters::Show { id } => {
            let query = DeadLetterFilter::new().id(id);
            let letters = with_pool!(db, pool => outbox.dead_letters_where(pool, &query, 1).await)
                .map_err(database)?;
            let letter = letters.into_iter().next().ok_or_else(|| {
                CliError::Other(format!("no dead letter {id} in `{}`", outbox.table()))
            })?;
            let message = &letter.message;
            let shown = serde_json::json!({
                "id": message.id.to_string(),
                "seq": message.seq,
                "aggregate_type": message.aggregate_type,
                "aggregate_id": message.aggregate_id,
                "event_type": message.event_type,
                "attempts": message.attempts,
                "last_error": letter.last_error,
                "headers": message.headers.as_deref().and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok()),
                "payload": serde_json::from_str::<serde_json::Value>(&message.payload)
                    .unwrap_or_else(|_| message.payload.clone().into()),
            });
            let text = serde_json::to_string_pretty(&shown)
                .map_err(|error| CliError::Other(error.to_string()))?;
            println!("{text}");
            Ok(())
        }
        DeadLetters::Purge { filter, yes } => {
            let what = if filter.is_empty() {
                "every dead letter".to_owned()
            } else {
                "the dead letters the filters select".to_owned()
            };
            if !yes && !confirm(&format!("delete {what} of `{}` for good?", outbox.table())) {
                return Err(CliError::Other("nothing deleted".into()));
            }
            let query = filter.to_query();
            let purged = with_pool!(db, pool => outbox.purge_dead_letters(pool, &query).await)
                .map_err(database)?;
            println!("{purged} dead letters deleted");
            Ok(())
        }
    }
}

/// Asks `question` on stderr; true for a yes on stdin.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}
