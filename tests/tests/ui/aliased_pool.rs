include!("prelude/account.rs");

/// An alias hides the pool from the macro; the type checker still finds it.
type Db = sqlx::PgPool;

#[outbox_event]
async fn open_account(db: &mut Db) -> Result<Account, AppError> {
    let _ = db;
    Ok(Account { id: 1 })
}

fn main() {}
