include!("prelude/account.rs");

#[outbox_event]
async fn open_account(id: i64) -> Result<Account, AppError> {
    Ok(Account { id })
}

fn main() {}
