include!("prelude/account.rs");

use outbox::inbox_handler;

struct Payload {
    amount: i64,
}

// The message's type has no id to deduplicate on.
#[inbox_handler(consumer = "ledger")]
async fn apply(tx: &mut Transaction<'_, Postgres>, message: &Payload) -> Result<(), AppError> {
    let _ = (tx, message.amount);
    Ok(())
}

fn main() {}
