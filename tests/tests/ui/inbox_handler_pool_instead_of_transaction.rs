include!("prelude/account.rs");

use outbox::inbox::Processed;
use outbox::inbox_handler;
use outbox::relay::Message;

// The inbox entry would commit alone, apart from the handler's writes.
#[inbox_handler]
async fn apply(pool: &sqlx::PgPool, message: &Message) -> Result<(), AppError> {
    let _ = (pool, message);
    Ok(())
}

async fn consume(pool: &sqlx::PgPool, message: &Message) -> Result<bool, AppError> {
    Ok(matches!(apply(pool, message).await?, Processed::Done(())))
}

fn main() {
    let _ = consume;
}
