include!("prelude/account.rs");

#[outbox_event]
fn open_account(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    let _ = tx;
    Ok(Account { id: 1 })
}

fn main() {}
