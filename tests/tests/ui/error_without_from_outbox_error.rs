include!("prelude/account.rs");

#[derive(Debug)]
enum ServiceError {
    Database(sqlx::Error),
}

#[outbox_event]
async fn open_account(tx: &mut Transaction<'_, Postgres>) -> Result<Account, ServiceError> {
    let _ = tx;
    let _ = ServiceError::Database;
    Ok(Account { id: 1 })
}

fn main() {}
