use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct NoId {
    id: i64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "transfer", event_type = "MoneyTransferred")]
struct TwoIds {
    #[outbox(aggregate_id)]
    from: i64,
    #[outbox(aggregate_id)]
    to: i64,
}

fn main() {}
