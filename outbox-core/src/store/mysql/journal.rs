//! MySQL's and MariaDB's statements for the relays' journal ([`crate::store::journal`]).

use sqlx::{AssertSqlSafe, MySql, MySqlPool};

use crate::TableName;
use crate::store::journal::Journal;

/// `migrate`'s DDL for the journal.
pub(super) fn journal_ddl(table: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
             claim    CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
             holder   CHAR(36) CHARACTER SET ascii NOT NULL,
             seqs     MEDIUMTEXT  NOT NULL,
             noted_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
         ) ENGINE = InnoDB",
        journal(table)
    )
}

crate::store::journal::statement_journal!(MySql, MySqlPool, '`', "MySQL");
