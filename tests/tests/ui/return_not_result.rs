include!("prelude/account.rs");

#[outbox_event]
async fn returns_entity(tx: &mut Transaction<'_, Postgres>) -> Account {
    let _ = tx;
    Account { id: 1 }
}

#[outbox_event]
async fn returns_nothing(tx: &mut Transaction<'_, Postgres>) {
    let _ = tx;
}

fn main() {}
