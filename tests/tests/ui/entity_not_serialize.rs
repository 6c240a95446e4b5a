include!("prelude/account.rs");

struct Secret {
    id: i64,
}

#[outbox_event(aggregate_type = "secret", event_type = "SecretMade", aggregate_id = |s| s.id)]
async fn make_secret(tx: &mut Transaction<'_, Postgres>) -> Result<Secret, AppError> {
    let _ = tx;
    Ok(Secret { id: 1 })
}

fn main() {}
