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

struct Secret {
    id: i64,
}

#[outbox_event(aggregate_type = "secret", event_type = "SecretMade", aggregate_id = |s| s.id)]
async fn make_secret(tx: &mut Transaction<'_, Postgres>) -> Result<Secret, AppError> {
    let _ = tx;
    Ok(Secret { id: 1 })
}

fn main() {}
