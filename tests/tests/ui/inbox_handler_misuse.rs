include!("prelude/account.rs");

use outbox::inbox_handler;
use outbox::relay::Message;

// Not async.
#[inbox_handler]
fn not_async(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<(), AppError> {
    let _ = (tx, message);
    Ok(())
}

// A pool instead of the transaction: the inbox entry would commit alone.
#[inbox_handler]
async fn pool(pool: &sqlx::PgPool, message: &Message) -> Result<(), AppError> {
    let _ = (pool, message);
    Ok(())
}

// Returns nothing: a failure could not roll the entry back.
#[inbox_handler]
async fn returns_nothing(tx: &mut Transaction<'_, Postgres>, message: &Message) {
    let _ = (tx, message);
}

// No message to take the id from.
#[inbox_handler]
async fn no_message(tx: &mut Transaction<'_, Postgres>) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

// Two candidates, neither named `message`.
#[inbox_handler]
async fn two_candidates(
    tx: &mut Transaction<'_, Postgres>,
    first: &Message,
    second: &Message,
) -> Result<(), AppError> {
    let _ = (tx, first, second);
    Ok(())
}

// Arguments it does not know, or of the wrong kind.
#[inbox_handler(consumer = 42, queue = "x")]
async fn bad_arguments(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<(), AppError> {
    let _ = (tx, message);
    Ok(())
}

fn main() {}
