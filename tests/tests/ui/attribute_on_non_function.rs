use outbox_core::outbox_event;

#[outbox_event]
struct NotAFunction {
    id: i64,
}

fn main() {}
