//! MySQL's and MariaDB's statements for the changefeed receiver's staging table
//! ([`crate::store::staging`]).

use sqlx::{AssertSqlSafe, MySql, MySqlPool};

use crate::{Outbox, TableName};

crate::store::staging::staging_statements!(
    MySql,
    MySqlPool,
    quote = '`',
    ddl = |_, s| format!(
        "CREATE TABLE IF NOT EXISTS {s} (
             id             VARCHAR(36)  NOT NULL PRIMARY KEY,
             wall           BIGINT       NOT NULL,
             logical        BIGINT       NOT NULL,
             seq            BIGINT       NOT NULL,
             aggregate_type VARCHAR(255) NOT NULL,
             aggregate_id   VARCHAR(255) NOT NULL,
             event_type     VARCHAR(255) NOT NULL,
             payload        LONGTEXT     NOT NULL,
             headers        LONGTEXT     NULL,
             released       BIGINT       NOT NULL DEFAULT 0,
             INDEX (released, wall, logical, seq)
         ) CHARACTER SET utf8mb4"
    ),
    // `IGNORE`: a known id is skipped and counts no row (`ON DUPLICATE KEY UPDATE` counts one,
    // since sqlx asks for found rows). The columns are wide enough for every value an outbox
    // row holds, so nothing else is there to ignore.
    insert = |s| format!(
        "INSERT IGNORE INTO {s} (id, wall, logical, seq, aggregate_type, aggregate_id, event_type, payload, headers) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    p = |_| "?".to_owned()
);
