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
async fn by_reference(pool: &sqlx::PgPool) -> Result<Account, AppError> {
    let _ = pool;
    Ok(Account { id: 1 })
}

#[outbox_event]
async fn generic_pool(pool: &sqlx::Pool<Postgres>) -> Result<Account, AppError> {
    let _ = pool;
    Ok(Account { id: 1 })
}

#[outbox_event]
async fn by_value(pool: sqlx::PgPool) -> Result<Account, AppError> {
    let _ = pool;
    Ok(Account { id: 1 })
}

fn main() {}
