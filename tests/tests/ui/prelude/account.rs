// Shared by the UI cases: a valid event and error type, so each case shows one mistake.
#[allow(unused_imports)]
use outbox::{OutboxEvent, outbox_event};
#[allow(unused_imports)]
use serde::Serialize;
#[allow(unused_imports)]
use sqlx::{Postgres, Transaction};

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct Account {
    #[outbox(aggregate_id)]
    id: i64,
}

#[derive(Debug)]
struct AppError;

impl From<outbox::Error> for AppError {
    fn from(_: outbox::Error) -> Self {
        AppError
    }
}
