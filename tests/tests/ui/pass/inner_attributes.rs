// Inner attributes as the first lines of an annotated body stay in the body, where they apply
// to the whole function, as without the attribute. Warnings are errors here, so an `allow` that
// stopped applying would fail the case.
#![deny(warnings)]
include!("../prelude/account.rs");

#[outbox_event]
async fn open_account(tx: &mut Transaction<'_, Postgres>, note: &str) -> Result<Account, AppError> {
    #![allow(unused_variables)]
    let unused = 1;
    Ok(Account { id: 1 })
}

#[outbox::inbox_handler(consumer = "read-model")]
async fn apply(tx: &mut Transaction<'_, Postgres>, message: &str) -> Result<(), AppError> {
    #![allow(unused_variables)]
    let unused = 1;
    Ok(())
}

fn main() {
    let _ = open_account;
    let _ = apply;
}
