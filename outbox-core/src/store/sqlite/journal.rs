//! SQLite's statements for the relays' journal ([`crate::store::journal`]).

use sqlx::{AssertSqlSafe, Sqlite, SqlitePool};

use crate::TableName;
use crate::store::journal::{Journal, parse};
use crate::store::table::pending;

/// The journal of `table`: `<table>_handling`.
fn journal(table: &TableName) -> String {
    table.companion("_handling", '"')
}

/// `migrate`'s DDL for the journal.
pub(super) fn journal_ddl(table: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
             claim  TEXT PRIMARY KEY,
             holder TEXT NOT NULL,
             seqs   TEXT NOT NULL
         );",
        journal(table)
    )
}

impl Journal for Sqlite {
    const JOURNAL_DIALECT: &'static str = "SQLite";

    async fn note(
        pool: &SqlitePool,
        table: &TableName,
        holder: &str,
        claim: &str,
        events: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let j = journal(table);
        let mut conn = pool.acquire().await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {j} WHERE holder = ?")))
            .bind(holder)
            .execute(&mut *conn)
            .await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {j} (claim, holder, seqs) VALUES (?, ?, ?)"
        )))
        .bind(claim)
        .bind(holder)
        .bind(events)
        .execute(&mut *conn)
        .await?;
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT seqs FROM {j} WHERE holder <> ?"
        )))
        .bind(holder)
        .fetch_all(&mut *conn)
        .await
    }

    async fn forget(pool: &SqlitePool, table: &TableName, holder: &str) -> Result<(), sqlx::Error> {
        let sql = format!("DELETE FROM {} WHERE holder = ?", journal(table));
        sqlx::query(AssertSqlSafe(sql))
            .bind(holder)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn sweep(pool: &SqlitePool, table: &TableName, holder: &str) -> Result<u64, sqlx::Error> {
        let j = journal(table);
        let notes: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT claim, seqs FROM {j} WHERE holder <> ?"
        )))
        .bind(holder)
        .fetch_all(pool)
        .await?;
        let mut swept = 0;
        for (claim, seqs) in notes {
            // The seqs are parsed numbers: safe to write into the statement.
            let listed: Vec<String> = parse(&seqs).map(|seq| seq.to_string()).collect();
            let live = !listed.is_empty()
                && sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM {t} o WHERE o.seq IN ({list}) AND {pending})",
                    t = table.quoted('"'),
                    list = listed.join(","),
                    pending = pending("o"),
                )))
                .fetch_one(pool)
                .await?
                    != 0;
            if !live {
                swept += sqlx::query(AssertSqlSafe(format!("DELETE FROM {j} WHERE claim = ?")))
                    .bind(&claim)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
        }
        Ok(swept)
    }
}
