// What compiles without `#[outbox_event]` compiles with it: docs and outer attributes, methods,
// generic databases with `where` clauses, early returns and `?`, `impl` blocks, named
// lifetimes, `impl Trait` arguments, `cfg`'d functions.
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

/// Named lifetimes and `impl Trait` arguments.
#[outbox_event]
async fn rename<'a>(
    tx: &'a mut Transaction<'_, Postgres>,
    owner: impl std::fmt::Display + Send,
    previous: &'a str,
) -> Result<Account, AppError> {
    let _ = (owner.to_string(), previous);
    Ok(Account { id: 1 })
}

async fn call_rename(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    rename(tx, "Ada", "Bob").await
}

/// A `cfg`'d function, the `cfg` under the attribute: the expansion keeps it, so the function
/// is compiled out, as without the attribute.
#[outbox_event]
#[cfg(any())]
async fn never_compiled(tx: &mut Transaction<'_, Postgres>) -> Result<Account, AppError> {
    this_does_not_exist()
}

fn main() {
    let _ = call_rename;
    let accounts = Accounts { next: 1 };
    let _ = Accounts::open::<Postgres>;
    let _ = accounts.next;
    let _ = close;
}
