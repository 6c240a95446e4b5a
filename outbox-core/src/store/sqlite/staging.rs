//! SQLite's statements for the changefeed receiver's staging table
//! ([`crate::store::staging`]).

use sqlx::{AssertSqlSafe, Sqlite, SqlitePool};

use crate::{Outbox, TableName};

crate::store::staging::staging_statements!(
    Sqlite,
    SqlitePool,
    quote = '"',
    ddl = |table, s| {
        format!(
        "CREATE TABLE IF NOT EXISTS {s} (
             id             TEXT    PRIMARY KEY,
             wall           INTEGER NOT NULL,
             logical        INTEGER NOT NULL,
             seq            INTEGER NOT NULL,
             aggregate_type TEXT    NOT NULL,
             aggregate_id   TEXT    NOT NULL,
             event_type     TEXT    NOT NULL,
             payload        TEXT    NOT NULL,
             headers        TEXT,
             released       INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS {index} ON \"{name}_changefeed\" (released, wall, logical, seq);",
        index = table.companion("_changefeed_idx", '"'),
        name = table.parts().1,
    )
    },
    insert = |s| format!(
        "INSERT INTO {s} (id, wall, logical, seq, aggregate_type, aggregate_id, event_type, payload, headers) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
    ),
    p = |_| "?".to_owned()
);
