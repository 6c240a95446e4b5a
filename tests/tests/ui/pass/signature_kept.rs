// What compiles without `#[outbox_event]` compiles with it: docs and outer attributes, methods,
// generic databases with `where` clauses, early returns and `?`, `impl` blocks.
#![deny(warnings)]
include!("../prelude/account.rs");

struct Accounts {
    next: i64,
}

impl Accounts {
    /// Opens an account, refusing an empty owner before anything is recorded.
    #[outbox_event]
    #[inline]
    pub async fn open<DB>(
        &self,
        tx: &mut Transaction<'_, DB>,
        owner: &str,
    ) -> Result<Account, AppError>
    where
        DB: outbox::Dialect,
    {
        if owner.is_empty() {
            return Err(AppError);
        }
        let id: i64 = owner.len().try_into().map_err(|_| AppError)?;
        Ok(Account { id: id + self.next })
    }
}

#[outbox_event(aggregate_type = "account", event_type = "AccountClosed", aggregate_id = |a| a.id)]
async fn close(conn: &mut sqlx::PgConnection) -> Result<Account, AppError> {
    let _ = conn;
    Ok(Account { id: 1 })
}

fn main() {
    let accounts = Accounts { next: 1 };
    let _ = Accounts::open::<Postgres>;
    let _ = accounts.next;
    let _ = close;
}
