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

#[outbox_event]
async fn open_account(id: i64) -> Result<Account, AppError> {
    Ok(Account { id })
}

fn main() {}
