//! Configuration, recording and migrations.

use std::future::Future;
use std::time::Duration;

pub(crate) mod connection;

use crate::event::{Recordable, Schedule};
use crate::{Error, TableName};
use connection::{Due, NewRow};
pub use connection::{OutboxConnection, RecordingSql};

/// When a [`Schedule`] falls, as the dialects write it.
fn due(schedule: Schedule) -> Due {
    let micros = |duration: Duration| i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
    match schedule {
        Schedule::After(delay) => Due {
            micros: micros(delay),
            from_now: true,
        },
        Schedule::At(when) => Due {
            // An instant before the epoch is long past: due at once.
            micros: when.duration_since(std::time::UNIX_EPOCH).map_or(0, micros),
            from_now: false,
        },
    }
}

/// Longest aggregate type, aggregate id or event type accepted (the width of the MySQL columns).
const MAX_METADATA_LEN: usize = 255;

/// Where and how events are recorded: the table and the payload limit.
///
/// The free functions [`record`] and [`migrate`] use [`Outbox::DEFAULT`] (table `outbox`).
/// Build a `const` to use another table, also from the attribute:
///
/// ```
/// use outbox::{Outbox, TableName};
///
/// pub const BILLING: Outbox =
///     Outbox::for_table(TableName::from_static("billing_outbox")).max_payload_bytes(64 * 1024);
///
/// // #[outbox_event(outbox = BILLING)]
/// // async fn create_invoice(tx: &mut sqlx::Transaction<'_, Postgres>, ...) -> Result<Invoice, AppError>
/// assert_eq!(BILLING.table().as_str(), "billing_outbox");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    table: TableName,
    max_payload_bytes: usize,
    notify_on_commit: bool,
    header_source: Option<HeaderSource>,
    trace_context: bool,
    delivery: Delivery,
    row_ttl: Duration,
}

/// How recorded events reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Rows of the outbox table, claimed by a polling relay.
    Polled,
    /// Rows of the outbox table, streamed from PostgreSQL's transaction log.
    LogTable,
    /// No row: a logical decoding message in PostgreSQL's transaction log.
    LogMessages,
}

/// A function giving the headers to record with every event, e.g. the current trace context.
#[derive(Debug, Clone, Copy)]
struct HeaderSource(fn() -> Vec<(String, String)>);

impl PartialEq for HeaderSource {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl Eq for HeaderSource {}

impl Outbox {
    /// Payload limit of a new `Outbox`: 8 MiB of JSON.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

    /// How long a row stays on CockroachDB by default: one day.
    pub const DEFAULT_ROW_TTL: Duration = Duration::from_secs(24 * 60 * 60);

    /// The default configuration: table `outbox`, payloads up to 8 MiB.
    pub const DEFAULT: Outbox = Outbox::new();

    /// The default configuration.
    pub const fn new() -> Self {
        Outbox::for_table(TableName::DEFAULT)
    }

    /// Records into (and migrates) `table` instead of `outbox`.
    pub const fn for_table(table: TableName) -> Self {
        Outbox {
            table,
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
            notify_on_commit: false,
            header_source: None,
            trace_context: false,
            delivery: Delivery::Polled,
            row_ttl: Self::DEFAULT_ROW_TTL,
        }
    }

    /// Refuses payloads whose JSON is larger than `bytes` with [`Error::PayloadTooLarge`], before
    /// anything is sent to the database.
    pub const fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// PostgreSQL: [`migrate`](Outbox::migrate) installs a trigger that sends a `NOTIFY` when
    /// events are committed, so that an idle relay wakes at once instead of at its next poll.
    /// Off by default: PostgreSQL serializes the commits of notifying transactions, which costs
    /// concurrent writers a large share of their throughput (see BENCHMARKS.md).
    /// Migrating with it off removes the trigger. Other dialects ignore it.
    pub const fn notify_on_commit(mut self, notify: bool) -> Self {
        self.notify_on_commit = notify;
        self
    }

    /// Records the headers `source` returns with every event (from the attribute and the manual
    /// API alike): typically the current trace context, so that consumers continue the trace.
    /// Headers set on an [`Event`](crate::Event) win over those of the source.
    ///
    /// ```
    /// use outbox::Outbox;
    ///
    /// fn trace_context() -> Vec<(String, String)> {
    ///     // e.g. from OpenTelemetry's current context, with a TextMapPropagator
    ///     vec![("traceparent".into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())]
    /// }
    ///
    /// pub const OUTBOX: Outbox = Outbox::new().header_source(trace_context);
    /// ```
    pub const fn header_source(mut self, source: fn() -> Vec<(String, String)>) -> Self {
        self.header_source = Some(HeaderSource(source));
        self
    }

    /// Records the current OpenTelemetry context with every event (feature `opentelemetry`),
    /// from the attribute and the manual API alike: the headers the globally installed
    /// propagator writes (`traceparent` and `tracestate` with W3C trace context, `baggage` with
    /// the baggage propagator). The relay's span for the event continues that context, and the
    /// consumer's continues the relay's: one trace from the request to the consumer (see
    /// [`telemetry`](crate::telemetry)). Headers from a [`header_source`](Outbox::header_source)
    /// and from the [`Event`](crate::Event) win over it.
    ///
    /// ```
    /// use outbox::Outbox;
    ///
    /// pub const OUTBOX: Outbox = Outbox::new().record_trace_context();
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub const fn record_trace_context(mut self) -> Self {
        self.trace_context = true;
        self
    }

    /// PostgreSQL: events are rows of the outbox table, as by default, but the relay reads them
    /// from the transaction log ([`LogStream`](crate::store::postgres::LogStream), feature
    /// `postgres-log`) instead of claiming them. [`migrate`](Outbox::migrate) creates the lean
    /// table that suits it (no claim index, no trigger: order comes from the log), the
    /// publication and the replication slot, and fails with what to change when the server's
    /// `wal_level` is not `logical`. Recording is unchanged.
    pub const fn log_tailing(mut self) -> Self {
        self.delivery = Delivery::LogTable;
        self
    }

    /// PostgreSQL: records each event as a logical decoding message in the transaction log
    /// (`pg_logical_emit_message`, transactional) instead of a table row: no row, no index, no
    /// vacuum. Only a log-tailing relay ([`LogStream`](crate::store::postgres::LogStream))
    /// reads them; implies [`log_tailing`](Outbox::log_tailing). The table still exists: it
    /// holds the events whose delivery failed (retries and dead letters), as usual. Other
    /// databases refuse to record with [`Error::Unsupported`].
    ///
    /// The message's prefix is `outbox:<table>` and its content a JSON object:
    /// `{"id": "<uuid>", "aggregate_type": "…", "aggregate_id": "…", "event_type": "…",
    /// "headers": {…} | null, "payload": <the payload's JSON>}`.
    pub const fn wal_messages(mut self) -> Self {
        self.delivery = Delivery::LogMessages;
        self
    }

    /// CockroachDB: how long a row stays in the table before row-level TTL deletes it
    /// (default [`DEFAULT_ROW_TTL`](Self::DEFAULT_ROW_TTL), at least a second):
    /// [`migrate`](Outbox::migrate) creates the table with it. The changefeed that publishes the
    /// table has emitted a row long before; one that is behind still emits it, from the history
    /// its protected timestamp keeps. Other databases ignore it (their relay purges).
    pub const fn row_ttl(mut self, ttl: Duration) -> Self {
        self.row_ttl = ttl;
        self
    }

    /// The row TTL on CockroachDB ([`row_ttl`](Outbox::row_ttl)).
    pub fn row_ttl_value(&self) -> Duration {
        self.row_ttl
    }

    /// Whether `migrate` installs the `NOTIFY` trigger.
    pub fn notifies_on_commit(&self) -> bool {
        self.notify_on_commit && self.delivery == Delivery::Polled
    }

    /// Whether the relay reads these events from PostgreSQL's transaction log
    /// ([`log_tailing`](Outbox::log_tailing) or [`wal_messages`](Outbox::wal_messages)).
    pub fn is_log_tailed(&self) -> bool {
        self.delivery != Delivery::Polled
    }

    /// Whether events are recorded as logical decoding messages ([`wal_messages`](Outbox::wal_messages)).
    pub fn writes_wal_messages(&self) -> bool {
        self.delivery == Delivery::LogMessages
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Writes `event` as one outbox row through `conn`, which must be inside a transaction: the
    /// row commits or rolls back with the rest of that transaction. Returns the event's id (a
    /// UUIDv7, time-ordered), which travels downstream as the message id.
    ///
    /// Fails without writing anything when the connection is not in a transaction
    /// ([`Error::NoTransaction`]), the aggregate id is missing ([`Error::NotPersisted`]), the
    /// entity does not serialize or is too large, or a metadata value is empty or over 255
    /// bytes. A database error is returned as [`Error::Database`]; the caller's transaction
    /// decides what happens next (usually: roll back).
    ///
    /// The returned future does not hold `event`: everything is checked and serialized before
    /// the first `.await`, so it is `Send` whatever the event type.
    pub fn record<'a, C, E>(
        &'a self,
        conn: &'a mut C,
        event: &E,
    ) -> impl Future<Output = Result<uuid::Uuid, Error>> + Send + 'a
    where
        C: OutboxConnection + ?Sized,
        E: Recordable + ?Sized,
    {
        let prepared = self.prepare(&*conn, event);
        async move { self.insert(conn, prepared?).await }
    }

    /// Every check that needs no round trip, in the order a user would fix them.
    fn prepare<C, E>(&self, conn: &C, event: &E) -> Result<NewRow, Error>
    where
        C: OutboxConnection + ?Sized,
        E: Recordable + ?Sized,
    {
        let event_type = event.event_type();
        let aggregate_type = event.aggregate_type();
        check_metadata(event_type, "event_type", event_type)?;
        check_metadata(event_type, "aggregate_type", aggregate_type)?;
        let aggregate_id = event.aggregate_id().ok_or_else(|| Error::NotPersisted {
            aggregate_type: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
        })?;
        check_metadata(event_type, "aggregate_id", &aggregate_id)?;
        let dialect = <C::Dialect as sqlx::Database>::NAME;
        if self.writes_wal_messages() && dialect != "PostgreSQL" {
            return Err(Error::Unsupported {
                feature: "recording events as WAL messages (`Outbox::wal_messages`)",
                dialect,
                hint: "record into the outbox table (leave `wal_messages` off)",
            });
        }
        let due = event.schedule().map(due);
        if due.is_some() && self.is_log_tailed() {
            return Err(Error::Unsupported {
                feature: "delayed events (`deliver_after`, `deliver_at`)",
                dialect: "an outbox tailed from the transaction log",
                hint: "the log delivers events in commit order, as they are written; record \
                       delayed events into an outbox whose relay polls its table (another \
                       `Outbox` on a table of its own)",
            });
        }
        if !conn.__in_transaction() {
            return Err(Error::NoTransaction {
                event_type: event_type.to_owned(),
                table: self.table.to_string(),
                dialect,
            });
        }
        let payload = event.to_json().map_err(|source| Error::Serialize {
            event_type: event_type.to_owned(),
            source,
        })?;
        if payload.len() > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                event_type: event_type.to_owned(),
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        Ok(NewRow {
            id: uuid::Uuid::now_v7(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.into_owned(),
            event_type: event_type.to_owned(),
            payload: payload.into_owned(),
            headers: self.headers(event.headers(), event.version()),
            due,
        })
    }

    /// The headers to record as a JSON object: the trace context, the source's over it, the
    /// event's over them, and the event type's version.
    fn headers(&self, own: &[(String, String)], version: Option<u32>) -> Option<String> {
        let mut headers = serde_json::Map::new();
        #[cfg(feature = "opentelemetry")]
        let traced = self
            .trace_context
            .then(crate::telemetry::current_headers)
            .unwrap_or_default();
        #[cfg(not(feature = "opentelemetry"))]
        let traced: Vec<(String, String)> = Vec::new();
        let from_source = self.header_source.map(|source| (source.0)());
        for (name, value) in traced.iter().chain(from_source.iter().flatten()).chain(own) {
            headers.insert(name.clone(), serde_json::Value::String(value.clone()));
        }
        if let Some(version) = version {
            headers.insert(
                crate::envelope::EVENT_VERSION.to_owned(),
                serde_json::Value::String(version.to_string()),
            );
        }
        (!headers.is_empty()).then(|| serde_json::Value::Object(headers).to_string())
    }

    /// Cancels the delayed event `id` ([`Event::deliver_after`](crate::Event::deliver_after)):
    /// deletes it unless it was published (or became a dead letter) already. Returns whether it
    /// was cancelled; `false` also for an id that is not a delayed event of this outbox.
    ///
    /// Through the caller's transaction, the cancellation commits or rolls back with the
    /// business change that calls for it — "the order was paid: cancel the reminder". A relay
    /// publishing the event at that moment holds its row: the cancellation waits for it, then
    /// finds it published and returns `false`.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool, reminder: uuid::Uuid) -> Result<(), outbox::Error> {
    /// let mut tx = pool.begin().await.map_err(|e| outbox::Error::Database {
    /// #   operation: "begin", table: "outbox".into(), dialect: "PostgreSQL", source: e })?;
    /// // ... mark the order paid through `tx` ...
    /// let cancelled = outbox::Outbox::DEFAULT.cancel(&mut *tx, reminder).await?;
    /// # let _ = cancelled;
    /// # Ok(()) }
    /// ```
    pub async fn cancel<C>(&self, conn: &mut C, id: uuid::Uuid) -> Result<bool, Error>
    where
        C: OutboxConnection + ?Sized,
    {
        let dialect = <C::Dialect as sqlx::Database>::NAME;
        let cancelled =
            <C::Dialect as RecordingSql>::__cancel(conn.__connection(), &self.table, id)
                .await
                .map_err(|source| Error::database("cancel", &self.table, dialect, source))?;
        tracing::debug!(table = %self.table, event_id = %id, cancelled, "cancel a delayed event");
        Ok(cancelled)
    }

    /// Creates the outbox table for the pool's dialect if it does not exist. Idempotent and safe
    /// to run from several processes at once.
    pub async fn migrate<DB: RecordingSql>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        let wrap = |source| Error::database("migrate", &self.table, DB::NAME, source);
        let mut conn = pool.acquire().await.map_err(wrap)?;
        DB::__migrate(&mut conn, self).await.map_err(wrap)?;
        if self.is_log_tailed() {
            DB::__migrate_log(&mut conn, self).await?;
        }
        Ok(())
    }

    async fn insert<C>(&self, conn: &mut C, row: NewRow) -> Result<uuid::Uuid, Error>
    where
        C: OutboxConnection + ?Sized,
    {
        let dialect = <C::Dialect as sqlx::Database>::NAME;
        <C::Dialect as RecordingSql>::__insert(conn.__connection(), self, &row)
            .await
            .map_err(|source| Error::database("record", &self.table, dialect, source))?;
        tracing::trace!(
            table = %self.table,
            event_id = %row.id,
            event_type = %row.event_type,
            aggregate_type = %row.aggregate_type,
            aggregate_id = %row.aggregate_id,
            "recorded outbox event"
        );
        Ok(row.id)
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

fn check_metadata(event_type: &str, field: &'static str, value: &str) -> Result<(), Error> {
    let problem = if value.is_empty() {
        "is empty".to_owned()
    } else if value.len() > MAX_METADATA_LEN {
        format!(
            "is {} bytes long, over the limit of {MAX_METADATA_LEN}",
            value.len()
        )
    } else {
        return Ok(());
    };
    Err(Error::InvalidMetadata {
        event_type: event_type.chars().take(MAX_METADATA_LEN).collect(),
        field,
        problem,
    })
}

/// Records `event` in the default outbox table through `conn`, inside the caller's transaction.
/// This is the call `#[outbox_event]` expands to; see [`Outbox::record`] for the details.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox::OutboxEvent;
///
/// #[derive(serde::Serialize, OutboxEvent)]
/// #[outbox(aggregate_type = "account", event_type = "AccountOpened")]
/// struct Account { #[outbox(aggregate_id)] id: i64, owner: String }
///
/// let mut tx = pool.begin().await?;
/// let account = Account { id: 1, owner: "Ada".into() };
/// sqlx::query("INSERT INTO accounts (id, owner) VALUES ($1, $2)")
///     .bind(account.id)
///     .bind(&account.owner)
///     .execute(&mut *tx)
///     .await?;
/// outbox::record(&mut *tx, &account).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub fn record<'a, C, E>(
    conn: &'a mut C,
    event: &E,
) -> impl Future<Output = Result<uuid::Uuid, Error>> + Send + 'a
where
    C: OutboxConnection + ?Sized,
    E: Recordable + ?Sized,
{
    DEFAULT_OUTBOX.record(conn, event)
}

/// [`Outbox::DEFAULT`] with a `'static` address, for futures that borrow it.
static DEFAULT_OUTBOX: Outbox = Outbox::DEFAULT;

/// Creates the default outbox table (`outbox`) for the pool's dialect if it does not exist.
/// Idempotent, and safe to run from several processes at once.
pub async fn migrate<DB: RecordingSql>(pool: &sqlx::Pool<DB>) -> Result<(), Error> {
    DEFAULT_OUTBOX.migrate(pool).await
}
