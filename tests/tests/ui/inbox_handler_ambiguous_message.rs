include!("prelude/account.rs");

use outbox::inbox::Processed;
use outbox::inbox_handler;
use outbox::relay::Message;

// Two candidates, neither named `message`.
#[inbox_handler]
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    first: &Message,
    second: &Message,
) -> Result<(), AppError> {
    let _ = (tx, first, second);
    Ok(())
}

async fn consume(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<bool, AppError> {
    Ok(matches!(apply(tx, message, message).await?, Processed::Done(())))
}

fn main() {
    let _ = consume;
}
