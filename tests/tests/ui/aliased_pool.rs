use outbox_core::{outbox_event, OutboxEvent};
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct Account {
    #[outbox(aggregate_id)]
    id: i64,
}

#[derive(Debug)]
struct AppError;

impl From<outbox_core::Error> for AppError {
    fn from(_: outbox_core::Error) -> Self {
        AppError
    }
}

/// An alias hides the pool from the macro; the type checker still finds it.
type Db = sqlx::PgPool;

#[outbox_event]
async fn open_account(db: &mut Db) -> Result<Account, AppError> {
    let _ = db;
    Ok(Account { id: 1 })
}

fn main() {}
