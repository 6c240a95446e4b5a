//! PostgreSQL's statements for the changefeed receiver's staging table
//! ([`crate::store::staging`]).

use sqlx::{AssertSqlSafe, PgPool, Postgres};

use crate::{Outbox, TableName};

crate::store::staging::staging_statements!(
    Postgres,
    PgPool,
    quote = '"',
    ddl = |table, s| {
        format!(
        "CREATE TABLE IF NOT EXISTS {s} (
             id             TEXT   PRIMARY KEY,
             wall           BIGINT NOT NULL,
             logical        BIGINT NOT NULL,
             seq            BIGINT NOT NULL,
             aggregate_type TEXT   NOT NULL,
             aggregate_id   TEXT   NOT NULL,
             event_type     TEXT   NOT NULL,
             payload        TEXT   NOT NULL,
             headers        TEXT,
             released       BIGINT NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS \"{name}_changefeed_idx\" ON {s} (released, wall, logical, seq);",
        name = table.parts().1,
    )
    },
    insert = |s| format!(
        "INSERT INTO {s} (id, wall, logical, seq, aggregate_type, aggregate_id, event_type, payload, headers) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING"
    ),
    p = |n| format!("${n}")
);
