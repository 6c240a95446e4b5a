//! The inbox on PostgreSQL: `INSERT ... ON CONFLICT DO NOTHING` on the primary key.

use sqlx::{AssertSqlSafe, PgConnection};

use crate::TableName;

pub(crate) async fn insert(
    conn: &mut PgConnection,
    table: &TableName,
    consumer: &str,
    message_id: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        table.quoted('"')
    );
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(consumer)
        .bind(message_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn migrate(conn: &mut PgConnection, table: &TableName) -> Result<(), sqlx::Error> {
    let quoted = table.quoted('"');
    let (schema, name) = table.parts();
    let mut sql = String::new();
    if let Some(schema) = schema {
        sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";"));
    }
    sql.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {quoted} (
             consumer     TEXT        NOT NULL,
             message_id   TEXT        NOT NULL,
             processed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
             PRIMARY KEY (consumer, message_id)
         );
         CREATE INDEX IF NOT EXISTS \"{name}_processed_idx\" ON {quoted} (processed_at);"
    ));
    // Serialized like the outbox's migration: concurrent CREATE ... IF NOT EXISTS can collide.
    let mut tx = sqlx::Connection::begin(conn).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("outbox migrate {table}"))
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    tx.commit().await
}

pub(crate) async fn purge(
    conn: &mut PgConnection,
    table: &TableName,
    older_than_ms: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let quoted = table.quoted('"');
    let sql = format!(
        "DELETE FROM {quoted} WHERE ctid IN (SELECT ctid FROM {quoted} \
         WHERE processed_at < clock_timestamp() - make_interval(secs => $1::double precision / 1000) \
         LIMIT $2)"
    );
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(older_than_ms)
        .bind(limit)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}
