include!("prelude/account.rs");

#[outbox_event]
async fn open_account(
    tx: &mut Transaction<'_, Postgres>,
    audit: &mut Transaction<'_, Postgres>,
) -> Result<Account, AppError> {
    let _ = (tx, audit);
    Ok(Account { id: 1 })
}

fn main() {}
