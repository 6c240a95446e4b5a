use outbox_core::{outbox_event, OutboxEvent};
use serde::Serialize;
use sqlx::{Postgres, Transaction};

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

#[outbox_event]
async fn open_account(
    tx: &mut Transaction<'_, Postgres>,
    audit: &mut Transaction<'_, Postgres>,
) -> Result<Account, AppError> {
    let _ = (tx, audit);
    Ok(Account { id: 1 })
}

fn main() {}
