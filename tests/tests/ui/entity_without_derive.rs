include!("prelude/account.rs");

#[derive(Serialize)]
struct Deposit {
    account: i64,
}

#[outbox_event]
async fn deposit(tx: &mut Transaction<'_, Postgres>) -> Result<Deposit, AppError> {
    let _ = tx;
    Ok(Deposit { account: 1 })
}

fn main() {}
