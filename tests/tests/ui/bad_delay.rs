include!("prelude/account.rs");

// A delay must be a `Duration` or a `SystemTime` (or an `Option` of one): not a string.
#[outbox_event(delay = "1h")]
async fn remind_in_an_hour(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    let _ = tx;
    Ok(Account { id: 1 })
}

// A closure over the entity takes the entity, and only it.
#[outbox_event(delay = |a, b| None::<std::time::Duration>)]
async fn two_parameters(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    let _ = tx;
    Ok(Account { id: 1 })
}

fn main() {}
