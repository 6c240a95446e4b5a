include!("prelude/account.rs");

#[outbox_event]
async fn owned(tx: Transaction<'static, Postgres>) -> Result<Account, AppError> {
    tx.commit().await.ok();
    Ok(Account { id: 1 })
}

#[outbox_event]
async fn shared(tx: &Transaction<'static, Postgres>) -> Result<Account, AppError> {
    let _ = tx;
    Ok(Account { id: 1 })
}

fn main() {}
