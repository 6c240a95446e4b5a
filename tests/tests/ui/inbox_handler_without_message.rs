include!("prelude/account.rs");

use outbox::inbox::Processed;
use outbox::inbox_handler;

// No message to take the id from.
#[inbox_handler]
async fn apply(tx: &mut Transaction<'_, Postgres>) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

async fn consume(tx: &mut Transaction<'_, Postgres>) -> Result<bool, AppError> {
    Ok(matches!(apply(tx).await?, Processed::Done(())))
}

fn main() {
    let _ = consume;
}
