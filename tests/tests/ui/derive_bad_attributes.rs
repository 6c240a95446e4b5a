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

// The derive failed, but the types' uses report nothing more: one mistake, one error.
fn recordable<T: OutboxEvent>() {}

fn main() {
    recordable::<Misspelled>();
    recordable::<MissingAggregateType>();
}
