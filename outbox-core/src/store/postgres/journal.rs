//! PostgreSQL's statements for the relays' journal ([`crate::store::journal`]).

use sqlx::{AssertSqlSafe, PgPool, Postgres};

use crate::TableName;
use crate::store::journal::Journal;
use crate::store::table::pending;

/// The journal of `table`: `<table>_handling`.
fn journal(table: &TableName) -> String {
    table.companion("_handling", '"')
}

/// `migrate`'s DDL for the journal: unlogged, since it only serves to count crashes of the
/// relay (a crash of the server empties it, and costs at most a count).
pub(super) fn journal_ddl(table: &TableName) -> String {
    format!(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {} (
             claim    TEXT        PRIMARY KEY,
             holder   TEXT        NOT NULL,
             seqs     TEXT        NOT NULL,
             noted_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
         );",
        journal(table)
    )
}

impl Journal for Postgres {
    const JOURNAL_DIALECT: &'static str = "PostgreSQL";

    async fn note(
        pool: &PgPool,
        table: &TableName,
        holder: &str,
        claim: &str,
        events: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        // One round trip: the sub-statements see the same snapshot, so the select sees neither
        // the deletion nor the insertion (both of this holder's rows, which it leaves out).
        let j = journal(table);
        let sql = format!(
            "WITH earlier AS (DELETE FROM {j} WHERE holder = $1), \
                  noted AS (INSERT INTO {j} (claim, holder, seqs) VALUES ($2, $1, $3)) \
             SELECT seqs FROM {j} WHERE holder <> $1"
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(holder)
            .bind(claim)
            .bind(events)
            .fetch_all(pool)
            .await
    }

    async fn forget(pool: &PgPool, table: &TableName, holder: &str) -> Result<(), sqlx::Error> {
        let sql = format!("DELETE FROM {} WHERE holder = $1", journal(table));
        sqlx::query(AssertSqlSafe(sql))
            .bind(holder)
            .execute(pool)
            .await?;
        Ok(())
    }

    async fn sweep(pool: &PgPool, table: &TableName, holder: &str) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM {j} j WHERE j.holder <> $1 AND NOT EXISTS (SELECT 1 FROM {t} o \
             WHERE o.seq = ANY(ARRAY(SELECT split_part(e, ':', 1)::int8 \
               FROM unnest(string_to_array(j.seqs, ',')) AS e)) AND {pending})",
            j = journal(table),
            t = table.quoted('"'),
            pending = pending("o"),
        );
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(holder)
            .execute(pool)
            .await?
            .rows_affected())
    }
}
