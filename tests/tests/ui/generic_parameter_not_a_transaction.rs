include!("prelude/account.rs");

#[outbox_event]
async fn open_account<'e, E>(executor: E) -> Result<Account, AppError>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let _ = executor;
    Ok(Account { id: 1 })
}

fn main() {}
