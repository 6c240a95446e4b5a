//! The statements of the changefeed receiver's staging table
//! ([`Staging`](crate::changefeed::Staging)), written once for the three databases.

/// The staging statements of one database. `$p` numbers a placeholder (`$1` or `?`), `$ddl`
/// is the table's DDL and `$insert` the insert that skips a known id, both given the quoted
/// staging table.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! staging_statements {
    ($db:ty, $pool:ty, quote = $quote:literal, ddl = $ddl:expr, insert = $insert:expr, p = $p:expr) => {
        /// The staging table of `table`: `<table>_changefeed`.
        fn staging(table: &TableName) -> String {
            table.companion("_changefeed", $quote)
        }

        impl $crate::changefeed::Staging for $db {
            async fn migrate_staging(pool: &$pool, table: &TableName) -> Result<(), sqlx::Error> {
                let ddl: fn(&TableName, &str) -> String = $ddl;
                sqlx::raw_sql(AssertSqlSafe(ddl(table, &staging(table))))
                    .execute(pool)
                    .await?;
                Ok(())
            }

            async fn stage(
                pool: &$pool,
                table: &TableName,
                rows: &[$crate::changefeed::Staged],
            ) -> Result<Vec<bool>, sqlx::Error> {
                let insert: fn(&str) -> String = $insert;
                let sql = insert(&staging(table));
                let mut tx = pool.begin().await?;
                let mut fresh = Vec::with_capacity(rows.len());
                for row in rows {
                    let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                        .bind(row.id.hyphenated().to_string())
                        .bind(row.updated.0)
                        .bind(row.updated.1)
                        .bind(row.seq)
                        .bind(&row.aggregate_type)
                        .bind(&row.aggregate_id)
                        .bind(&row.event_type)
                        .bind(&row.payload)
                        .bind(&row.headers)
                        .execute(&mut *tx)
                        .await?;
                    fresh.push(done.rows_affected() > 0);
                }
                tx.commit().await?;
                Ok(fresh)
            }

            async fn release(
                pool: &$pool,
                outbox: &Outbox,
                before: $crate::changefeed::Timestamp,
                limit: i64,
                now: i64,
            ) -> Result<usize, sqlx::Error> {
                let p: fn(usize) -> String = $p;
                let s = staging(outbox.table());
                let mut tx = pool.begin().await?;
                let rows: Vec<(String, String, String, String, String, Option<String>)> =
                    sqlx::query_as(AssertSqlSafe(format!(
                        "SELECT id, aggregate_type, aggregate_id, event_type, payload, headers \
                         FROM {s} WHERE released = 0 AND (wall < {w} OR (wall = {w2} AND logical < {l})) \
                         ORDER BY wall, logical, seq, id LIMIT {n}",
                        w = p(1),
                        w2 = p(2),
                        l = p(3),
                        n = p(4),
                    )))
                    .bind(before.0)
                    .bind(before.0)
                    .bind(before.1)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut ids = Vec::with_capacity(rows.len());
                for (id, aggregate_type, aggregate_id, event_type, payload, headers) in rows {
                    let uuid = uuid::Uuid::parse_str(&id)
                        .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
                    let row = $crate::outbox::connection::NewRow {
                        id: uuid,
                        aggregate_type,
                        aggregate_id,
                        event_type,
                        payload,
                        headers,
                        due: None,
                    };
                    <$db as $crate::outbox::RecordingSql>::__insert(&mut *tx, outbox, &row).await?;
                    // A parsed UUID: safe to write into the statement.
                    ids.push(format!("'{}'", uuid.hyphenated()));
                }
                if !ids.is_empty() {
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {s} SET released = {now}, payload = '', headers = NULL WHERE id IN ({})",
                        ids.join(", "),
                        now = p(1),
                    )))
                    .bind(now.max(1))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(ids.len())
            }

            async fn forget_released(
                pool: &$pool,
                table: &TableName,
                cutoff: i64,
            ) -> Result<u64, sqlx::Error> {
                let p: fn(usize) -> String = $p;
                let sql = format!(
                    "DELETE FROM {} WHERE released > 0 AND released < {}",
                    staging(table),
                    p(1)
                );
                Ok(sqlx::query(AssertSqlSafe(sql))
                    .bind(cutoff)
                    .execute(pool)
                    .await?
                    .rows_affected())
            }
        }
    };
}
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) use staging_statements;
