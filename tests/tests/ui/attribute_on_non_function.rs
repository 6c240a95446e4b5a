use outbox::outbox_event;

#[outbox_event]
struct NotAFunction {
    id: i64,
}

fn main() {}
