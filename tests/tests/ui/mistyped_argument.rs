include!("prelude/account.rs");

#[outbox_event(aggregate_type = account, event_type = "", aggregate_id = "id", outbox = "billing")]
async fn open_account(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    let _ = tx;
    Ok(Account { id: 1 })
}

#[outbox_event(aggregate_id)]
async fn missing_value(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    let _ = tx;
    Ok(Account { id: 1 })
}

fn main() {}
