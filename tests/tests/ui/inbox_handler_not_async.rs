include!("prelude/account.rs");

use outbox::inbox::Processed;
use outbox::inbox_handler;
use outbox::relay::Message;

#[inbox_handler]
fn apply(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<(), AppError> {
    let _ = (tx, message);
    Ok(())
}

// Callers written against the fixed handler report nothing more: one mistake, one error.
async fn consume(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<bool, AppError> {
    Ok(matches!(apply(tx, message).await?, Processed::Done(())))
}

fn main() {
    let _ = consume;
}
