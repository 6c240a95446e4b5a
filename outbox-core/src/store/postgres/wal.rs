//! What recording and `migrate` need of log tailing, with or without the `postgres-log`
//! feature: the names of the slot, the publication and the message prefix of an outbox table,
//! the encoding of events recorded as WAL messages, and the DDL.

use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{AssertSqlSafe, PgConnection};

use crate::admin::SlotStatus;
use crate::message::Message;
use crate::outbox::connection::NewRow;
use crate::{Error, Outbox, TableName};

/// Longest replication slot name PostgreSQL accepts.
const MAX_SLOT_LEN: usize = 63;

/// The replication objects of an outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogNames {
    /// The logical replication slot: `<schema>_<table>_relay`, lowercase.
    pub slot: String,
    /// The publication: `<schema>_<table>_pub`, lowercase.
    pub publication: String,
    /// The prefix of the table's WAL messages: `outbox:<table>`.
    pub prefix: String,
}

impl LogNames {
    pub(crate) fn of(table: &TableName) -> Self {
        let base = table.as_str().replace('.', "_").to_ascii_lowercase();
        let name = |suffix: &str| {
            let mut name = format!("{base}_{suffix}");
            if name.len() > MAX_SLOT_LEN {
                // Long names: cut, and keep them apart with a hash of the whole name.
                let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
                name.truncate(MAX_SLOT_LEN - 9);
                name = format!("{name}_{:08x}", hash as u32);
            }
            name
        };
        LogNames {
            slot: name("relay"),
            publication: name("pub"),
            prefix: Self::prefix(table),
        }
    }

    /// The prefix of `table`'s WAL messages, alone: what recording needs, on the write path.
    pub(crate) fn prefix(table: &TableName) -> String {
        format!("outbox:{table}")
    }
}

/// The content of an event recorded as a WAL message: a JSON object whose `payload` and
/// `headers` are the recorded JSON itself (not strings holding it).
pub(crate) fn encode(row: &NewRow) -> String {
    let text = |value: &str| serde_json::Value::from(value).to_string();
    format!(
        "{{\"id\":\"{}\",\"aggregate_type\":{},\"aggregate_id\":{},\"event_type\":{},\"headers\":{},\"payload\":{}}}",
        row.id,
        text(&row.aggregate_type),
        text(&row.aggregate_id),
        text(&row.event_type),
        row.headers.as_deref().unwrap_or("null"),
        row.payload,
    )
}

#[derive(Deserialize)]
struct Wire<'a> {
    id: uuid::Uuid,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    #[serde(borrow)]
    headers: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Reads back what [`encode`] wrote, as the message numbered `seq`.
#[cfg_attr(not(feature = "postgres-log"), allow(dead_code))]
pub(crate) fn decode(content: &[u8], seq: i64) -> Result<Message, serde_json::Error> {
    let wire: Wire<'_> = serde_json::from_slice(content)?;
    let mut message = Message::new(
        wire.id,
        seq,
        wire.aggregate_type,
        wire.aggregate_id,
        wire.event_type,
        wire.payload.get(),
    );
    if let Some(headers) = wire.headers.filter(|h| h.get() != "null") {
        message = message.with_headers(headers.get());
    }
    Ok(message)
}

/// Records `row` as a transactional logical decoding message.
pub(crate) async fn emit(
    conn: &mut PgConnection,
    outbox: &Outbox,
    row: &NewRow,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
        .bind(LogNames::prefix(outbox.table()))
        .bind(encode(row))
        .execute(conn)
        .await?;
    Ok(())
}

/// The table beside a log-tailed outbox where the relay records, per slot, the end of the last
/// transaction it settled (`<table>_log_position`): the server's own record of it
/// (`confirmed_flush_lsn`) can move back across a restart.
pub(crate) fn position_table(table: &TableName) -> String {
    table.companion("_log_position", '"')
}

/// The DDL of a log-tailed table, run in `migrate`'s transaction: the `parked` column and its
/// partial index, where the log source keeps the events it could not deliver (empty while all
/// goes well: recording never touches the index), and the table of the relay's position.
pub(crate) fn table_ddl(table: &TableName) -> String {
    let quoted = table.quoted('"');
    let (_, name) = table.parts();
    let position = position_table(table);
    format!(
        "ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS parked BOOLEAN NOT NULL DEFAULT false;
         CREATE INDEX IF NOT EXISTS \"{name}_parked_idx\" ON {quoted} (aggregate_type, aggregate_id, seq) WHERE parked;
         CREATE INDEX IF NOT EXISTS \"{name}_dead_idx\" ON {quoted} (seq) WHERE dead_at IS NOT NULL;
         DROP TRIGGER IF EXISTS \"{name}_notify\" ON {quoted};
         ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS commit_lsn PG_LSN;
         CREATE TABLE IF NOT EXISTS {position} (
             slot        TEXT        PRIMARY KEY,
             settled_lsn PG_LSN      NOT NULL,
             settled_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
         );"
    )
}

/// After the table exists: checks `wal_level`, then creates the publication (the table in it
/// for table mode, out of it for WAL messages, whose parked rows must not be streamed) and the
/// slot. Idempotent; a concurrent `migrate` creating the same slot is not an error.
pub(crate) async fn setup(conn: &mut PgConnection, outbox: &Outbox) -> Result<(), Error> {
    let table = outbox.table();
    let database = |source| Error::database("migrate", table, "PostgreSQL", source);
    let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut *conn)
        .await
        .map_err(database)?;
    if let Some(problem) = wal_level_problem(&wal_level) {
        return Err(Error::LogTailing {
            table: table.to_string(),
            problem,
        });
    }
    let names = LogNames::of(table);
    let quoted = table.quoted('"');
    let (schema, name) = table.parts();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&names.publication)
            .fetch_one(&mut *conn)
            .await
            .map_err(database)?;
    if !exists {
        let sql = format!(
            "CREATE PUBLICATION \"{}\" WITH (publish = 'insert')",
            names.publication
        );
        ignore_duplicate(sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await)
            .map_err(database)?;
    }
    let published: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 \
         AND schemaname = coalesce($2, current_schema()) AND tablename = $3)",
    )
    .bind(&names.publication)
    .bind(schema)
    .bind(name)
    .fetch_one(&mut *conn)
    .await
    .map_err(database)?;
    let change = match (outbox.writes_wal_messages(), published) {
        (false, false) => Some("ADD"),
        (true, true) => Some("DROP"),
        _ => None,
    };
    if let Some(change) = change {
        let sql = format!(
            "ALTER PUBLICATION \"{}\" {change} TABLE {quoted}",
            names.publication
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(database)?;
    }
    let slot = slot(&mut *conn, table).await.map_err(database)?;
    match slot {
        Some(slot) if slot.wal_status.as_deref() == Some("lost") => {
            return Err(invalidated(table, &names.slot));
        }
        Some(_) => {}
        None => {
            let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(&names.slot)
                .execute(&mut *conn)
                .await;
            ignore_duplicate(created.map(|_| ())).map_err(database)?;
        }
    }
    Ok(())
}

/// What to change when the server's `wal_level` cannot feed a logical slot.
fn wal_level_problem(wal_level: &str) -> Option<String> {
    (wal_level != "logical").then(|| {
        format!(
            "the server runs with wal_level = {wal_level}, and reading events from the \
             transaction log needs logical: run `ALTER SYSTEM SET wal_level = logical` as a \
             superuser and restart PostgreSQL (or record into a polled table: leave \
             `log_tailing` and `wal_messages` off)"
        )
    })
}

/// The slot of `table`, as `pg_replication_slots` shows it.
pub(crate) async fn slot<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    table: &TableName,
) -> Result<Option<SlotStatus>, sqlx::Error> {
    let slot = LogNames::of(table).slot;
    type Row = (bool, Option<i64>, Option<i64>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
           pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, wal_status \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_optional(conn)
    .await?;
    let bytes = |b: Option<i64>| b.and_then(|b| u64::try_from(b).ok()).unwrap_or(0);
    Ok(row.map(|(active, retained, lag, wal_status)| SlotStatus {
        slot,
        active,
        retained_bytes: bytes(retained),
        lag_bytes: bytes(lag),
        wal_status,
    }))
}

/// The error of a slot PostgreSQL invalidated, with the way back.
pub(crate) fn invalidated(table: &TableName, slot: &str) -> Error {
    Error::LogTailing {
        table: table.to_string(),
        problem: format!(
            "the replication slot `{slot}` was invalidated: it retained more WAL than \
             max_slot_wal_keep_size allows, and the events it had not confirmed are no longer \
             in the log. Drop it (`SELECT pg_drop_replication_slot('{slot}')`) and run \
             `outbox migrate` to create it again; in table mode the events not yet published \
             are still rows of the table (`outbox status` counts them): publish them with a \
             polling relay before starting the log relay again"
        ),
    }
}

/// `42710 duplicate_object`: another `migrate` created it first.
fn ignore_duplicate<T: Default>(result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
    match result {
        Err(error)
            if error
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == "42710") =>
        {
            Ok(T::default())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_events_decode_to_the_same_message() {
        let row = NewRow {
            id: uuid::Uuid::now_v7(),
            aggregate_type: "Account \"main\"".into(),
            aggregate_id: "42".into(),
            event_type: "AccountOpened".into(),
            payload: r#"{"b":1,"a":[true,null,"é"]}"#.into(),
            due: None,
            headers: Some(r#"{"traceparent":"00-ab-cd-01"}"#.into()),
        };
        let message = decode(encode(&row).as_bytes(), 7).expect("decodes");
        assert_eq!(message.id, row.id);
        assert_eq!(message.seq, 7);
        assert_eq!(message.aggregate_type, row.aggregate_type);
        assert_eq!(
            message.payload, row.payload,
            "the payload's text is kept as recorded"
        );
        assert_eq!(message.headers, row.headers);
        let bare = NewRow {
            headers: None,
            ..row
        };
        assert_eq!(
            decode(encode(&bare).as_bytes(), 1)
                .expect("decodes")
                .headers,
            None
        );
        assert!(decode(b"{\"id\":1}", 1).is_err());
    }

    #[test]
    fn a_server_without_logical_decoding_is_told_what_to_change() {
        assert_eq!(wal_level_problem("logical"), None);
        let problem = wal_level_problem("replica").expect("refused");
        assert!(problem.contains("wal_level = replica"), "{problem}");
        assert!(
            problem.contains("ALTER SYSTEM SET wal_level = logical"),
            "{problem}"
        );
        assert!(problem.contains("restart PostgreSQL"), "{problem}");
    }

    #[test]
    fn names_are_valid_slot_names_and_distinct() {
        let names = LogNames::of(&TableName::from_static("App.Outbox"));
        assert_eq!(names.slot, "app_outbox_relay");
        assert_eq!(names.publication, "app_outbox_pub");
        assert_eq!(names.prefix, "outbox:App.Outbox");
        let long = |c: &str| {
            LogNames::of(&TableName::new(format!("{}.{c}", "s".repeat(60))).expect("valid")).slot
        };
        let (a, b) = (long("table_one"), long("table_two"));
        assert!(a.len() <= MAX_SLOT_LEN && b.len() <= MAX_SLOT_LEN);
        assert_ne!(a, b);
    }
}
