use outbox_core::{outbox_event, OutboxEvent};
use serde::Serialize;
use sqlx::Postgres;

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
async fn open_account<'e, E>(executor: E) -> Result<Account, AppError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let _ = executor;
    Ok(Account { id: 1 })
}

fn main() {}
