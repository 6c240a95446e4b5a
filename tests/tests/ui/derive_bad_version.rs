use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", version = "2")]
struct Quoted {
    #[outbox(aggregate_id)]
    id: i64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", version = 0)]
struct Zero {
    #[outbox(aggregate_id)]
    id: i64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", version = 2u8, version = 3)]
struct SuffixedTwice {
    #[outbox(aggregate_id)]
    id: i64,
}

fn main() {}
