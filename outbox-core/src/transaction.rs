//! Beginning a transaction that a cancelled caller cannot leave open. A leaf of the crate.

/// Begins a transaction on a connection of `pool`, with `statement` in place of `BEGIN` when
/// given: [`begin_on`] a connection acquired first (cancelling an acquisition is safe).
pub(crate) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    begin_on(pool.acquire().await?, statement).await
}

/// Begins a transaction on `conn` in a task of its own. sqlx counts a transaction only once the
/// server has answered its `BEGIN`: a caller cancelled while waiting for that answer — a relay
/// task aborted, a consumer's `select!` or timeout — would hand the connection back to the pool
/// inside a transaction nobody ends, where its next user's statements would run, never commit
/// and keep their locks. Run apart, the `BEGIN` completes whatever becomes of the caller, and a
/// transaction nobody takes is rolled back when the task drops it.
pub(crate) async fn begin_on<DB: sqlx::Database>(
    conn: sqlx::pool::PoolConnection<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let statement = statement.map(sqlx::SqlSafeStr::into_sql_str);
    match tokio::spawn(sqlx::Transaction::begin(conn, statement)).await {
        Ok(begun) => begun,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        Err(_) => Err(sqlx::Error::WorkerCrashed), // the runtime is shutting down
    }
}
