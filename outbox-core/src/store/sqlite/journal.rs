//! SQLite's statements for the relays' journal ([`crate::store::journal`]).

use sqlx::{AssertSqlSafe, Sqlite, SqlitePool};

use crate::TableName;
use crate::store::journal::Journal;

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

crate::store::journal::statement_journal!(Sqlite, SqlitePool, '"', "SQLite");
