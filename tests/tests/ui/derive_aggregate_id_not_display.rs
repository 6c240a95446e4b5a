use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize)]
struct AccountKey {
    bank: u32,
    number: u64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct Account {
    #[outbox(aggregate_id)]
    key: AccountKey,
}

fn main() {}
