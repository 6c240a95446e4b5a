include!("prelude/account.rs");

#[outbox_event]
async fn by_reference(pool: &sqlx::PgPool) -> Result<Account, AppError> {
    let _ = pool;
    Ok(Account { id: 1 })
}

#[outbox_event]
async fn generic_pool(pool: &sqlx::Pool<Postgres>) -> Result<Account, AppError> {
    let _ = pool;
    Ok(Account { id: 1 })
}

#[outbox_event]
async fn by_value(pool: sqlx::PgPool) -> Result<Account, AppError> {
    let _ = pool;
    Ok(Account { id: 1 })
}

fn main() {}
