include!("prelude/account.rs");

use outbox::inbox::Processed;
use outbox::inbox_handler;
use outbox::relay::Message;

// Arguments it does not know, or of the wrong kind.
#[inbox_handler(consumer = 42, queue = "x")]
async fn apply(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<(), AppError> {
    let _ = (tx, message);
    Ok(())
}

async fn consume(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<bool, AppError> {
    Ok(matches!(apply(tx, message).await?, Processed::Done(())))
}

fn main() {
    let _ = consume;
}
