use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox(agregate_type = "account", event_type = 7)]
struct Misspelled {
    #[outbox(aggregate_id)]
    id: i64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox(event_type = "AccountOpened", event_type = "AccountCreated")]
struct MissingAggregateType {
    #[outbox(aggregate_id = "id")]
    id: i64,
}

fn main() {}
