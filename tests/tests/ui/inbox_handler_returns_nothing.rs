include!("prelude/account.rs");

use outbox::inbox_handler;
use outbox::relay::Message;

// A failure could not roll the entry back.
#[inbox_handler]
async fn apply(tx: &mut Transaction<'_, Postgres>, message: &Message) {
    let _ = (tx, message);
}

fn main() {}
