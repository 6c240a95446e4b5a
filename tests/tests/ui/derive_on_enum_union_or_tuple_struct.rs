use outbox::OutboxEvent;

#[derive(OutboxEvent)]
#[outbox(aggregate_type = "account")]
enum AccountEvent {
    Opened { id: i64 },
    Closed { id: i64 },
}

#[derive(OutboxEvent)]
#[outbox(aggregate_type = "account")]
union Raw {
    id: i64,
}

#[derive(OutboxEvent)]
#[outbox(aggregate_type = "account")]
struct Tuple(#[outbox(aggregate_id)] i64);

fn main() {}
