//! What an operator asks of an outbox: how many events wait, how old the oldest is, which relays
//! are at work, the dead letters (listed, counted, replayed, purged — filtered by the database),
//! the latest events recorded. The same queries behind `outbox status`, `outbox dead-letters` and
//! `outbox tail`, for an application's own status page.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox::Error> {
//! use outbox::Outbox;
//!
//! for counts in Outbox::DEFAULT.status(&pool).await? {
//!     println!(
//!         "{}/{}: {} pending, {} dead, oldest {:?}",
//!         counts.aggregate_type, counts.event_type, counts.pending, counts.dead, counts.oldest_pending
//!     );
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::message::{DeadLetter, DeadLetterFilter, Message};
use std::future::Future;

use crate::audit::AuditSql;
use crate::{Error, Outbox, TableName};

/// The prefix of the PostgreSQL `application_name` by which [`Outbox::relays`] recognises a
/// relay's connections: `outbox relay` connects as `outbox-relay:<instance>`. A relay run in
/// your own process is listed too when its pool's connections are named that way
/// (`PgConnectOptions::application_name`).
pub const RELAY_APPLICATION_PREFIX: &str = "outbox-relay:";

/// The events of one aggregate type and event type in the outbox: a line of [`Outbox::status`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EventCounts {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The event type.
    pub event_type: String,
    /// Waiting to be published now (retries included; delayed events not yet due are not).
    pub pending: u64,
    /// Recorded to be delivered later ([`Event::deliver_after`](crate::Event::deliver_after)),
    /// not due yet.
    pub delayed: u64,
    /// Dead letters.
    pub dead: u64,
    /// Published and kept (retention mode).
    pub published: u64,
    /// Age of the oldest pending event: how far behind the relays are.
    pub oldest_pending: Option<Duration>,
    /// How long until the next delayed event is due.
    pub next_due: Option<Duration>,
}

/// The replication slot a log-tailing relay streams ([`Outbox::log_tailing`],
/// [`Outbox::wal_messages`]): a line of [`Outbox::slot`]. Serializes with these field names.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot's name (`<schema>_<table>_relay`).
    pub slot: String,
    /// A relay streams it now.
    pub active: bool,
    /// Bytes of WAL the server keeps for it: what a stopped relay costs the disk.
    pub retained_bytes: u64,
    /// Bytes of WAL written since the position the relay confirmed: how far behind it is.
    pub lag_bytes: u64,
    /// PostgreSQL's `wal_status`: `reserved`, `extended`, `unreserved` or `lost` (invalidated:
    /// see the recovery in the guide's log-tailing chapter).
    pub wal_status: Option<String>,
}

/// A relay at work on an outbox, as the database sees it: a line of [`Outbox::relays`].
/// Serializes as `{"instance": …, "detail": …}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RelayInstance {
    /// Its instance name.
    pub instance: String,
    /// Where it connects from and with how many connections (PostgreSQL), or its role (SQLite:
    /// holds the lease).
    pub detail: String,
}

/// A status row as the databases return it: aggregate type, event type, the counts (pending,
/// delayed, dead, published) and the ages in seconds (oldest pending, next due).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
type CountsRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
);

impl EventCounts {
    /// Counts as a database returns them (signed, an age in seconds that a clock step may have
    /// made negative).
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    pub(crate) fn from_row(
        (aggregate_type, event_type, pending, delayed, dead, published, age, due): CountsRow,
    ) -> Self {
        let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let seconds = |secs: Option<f64>| {
            secs.map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or_default())
        };
        EventCounts {
            aggregate_type,
            event_type,
            pending: count(pending),
            delayed: count(delayed),
            dead: count(dead),
            published: count(published),
            oldest_pending: seconds(age),
            next_due: seconds(due),
        }
    }
}

impl Outbox {
    /// Counts per aggregate type and event type (pending, dead, published and kept) with the
    /// age of the oldest pending event, ordered by aggregate type then event type.
    pub async fn status<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Vec<EventCounts>, Error> {
        DB::__status(pool, self.table())
            .await
            .map_err(|source| self.database_error::<DB>("status", source))
    }

    /// The relays at work on this outbox: on PostgreSQL the connections named
    /// [`RELAY_APPLICATION_PREFIX`]`<instance>`, on SQLite the holder of the relay lease.
    /// `None` on MySQL/MariaDB, which cannot tell.
    pub async fn relays<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Option<Vec<RelayInstance>>, Error> {
        DB::__relays(pool, self.table())
            .await
            .map_err(|source| self.database_error::<DB>("list relays", source))
    }

    /// The replication slot of this outbox, on PostgreSQL when its relay tails the log
    /// (`migrate` created it); `None` otherwise.
    pub async fn slot<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<Option<SlotStatus>, Error> {
        if !self.is_log_tailed() {
            return Ok(None);
        }
        DB::__slot(pool, self.table())
            .await
            .map_err(|source| self.database_error::<DB>("read the replication slot", source))
    }

    /// Checks that the outbox table is there and readable: an error naming the table
    /// otherwise (create it with [`migrate`](Outbox::migrate)).
    pub async fn check<DB: AdminSql>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        self.last_seq(pool).await.map(drop)
    }

    /// The highest `seq` recorded so far, 0 for an empty table: where
    /// [`events_after`](Outbox::events_after) starts to follow new events.
    pub async fn last_seq<DB: AdminSql>(&self, pool: &sqlx::Pool<DB>) -> Result<i64, Error> {
        DB::__last_seq(pool, self.table())
            .await
            .map_err(|source| self.database_error::<DB>("read", source))
    }

    /// The events recorded after `seq`, in order, at most `limit` and at most 16 MiB of payloads
    /// and headers ([`DEFAULT_MAX_BATCH_BYTES`](crate::relay::DEFAULT_MAX_BATCH_BYTES); always
    /// one event), whatever their state (pending, published and kept, dead). Call again after
    /// the last `seq` returned for the rest.
    pub async fn events_after<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<Message>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        DB::__events_after(pool, self.table(), seq, limit)
            .await
            .map_err(|source| self.database_error::<DB>("read", source))
    }

    /// The committed side of an [audit](crate::audit): every event of `range` in the table,
    /// pending, published and kept, or dead, in `seq` order — its id, order, aggregate and
    /// state, not its payload (read 10,000 rows a query).
    pub async fn committed<DB: AuditSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        range: &crate::audit::IdRange,
    ) -> Result<Vec<crate::audit::Committed>, Error> {
        const PAGE: i64 = 10_000;
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = DB::__committed(pool, self.table(), after, PAGE)
                .await
                .map_err(|source| self.database_error::<DB>("read for an audit", source))?;
            let Some(last) = page.last() else {
                return Ok(events);
            };
            after = last.seq;
            let full = page.len() as i64 == PAGE;
            events.extend(page.into_iter().filter(|event| range.contains(&event.id)));
            if !full {
                return Ok(events);
            }
        }
    }

    /// Dead letters of this outbox (at most `limit`, oldest first): events that failed for good,
    /// with their last error.
    pub async fn dead_letters<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        self.dead_letters_where(pool, &DeadLetterFilter::new(), limit)
            .await
    }

    /// The dead letters `filter` selects (at most `limit`, oldest first), selected by the
    /// database.
    pub async fn dead_letters_where<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        DB::__dead_letters(pool, self.table(), filter, limit)
            .await
            .map_err(|source| self.database_error::<DB>("dead letters", source))
    }

    /// How many dead letters `filter` selects.
    pub async fn count_dead_letters<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, Error> {
        DB::__count_dead_letters(pool, self.table(), filter)
            .await
            .map_err(|source| self.database_error::<DB>("dead letters", source))
    }

    /// Deletes the dead letters `filter` selects, for good; returns how many.
    pub async fn purge_dead_letters<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, Error> {
        DB::__purge_dead_letters(pool, self.table(), filter)
            .await
            .map_err(|source| self.database_error::<DB>("purge dead letters", source))
    }

    /// Makes the given dead letters deliverable again (attempts reset); returns how many.
    pub async fn replay_dead_letters<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        ids: &[uuid::Uuid],
    ) -> Result<u64, Error> {
        DB::__replay(pool, self.table(), Some(ids))
            .await
            .map_err(|source| self.database_error::<DB>("replay", source))
    }

    /// Makes every dead letter deliverable again; returns how many.
    pub async fn replay_all_dead_letters<DB: AdminSql>(
        &self,
        pool: &sqlx::Pool<DB>,
    ) -> Result<u64, Error> {
        DB::__replay(pool, self.table(), None)
            .await
            .map_err(|source| self.database_error::<DB>("replay", source))
    }

    fn database_error<DB: sqlx::Database>(
        &self,
        operation: &'static str,
        source: sqlx::Error,
    ) -> Error {
        Error::database(operation, self.table(), DB::NAME, source)
    }
}

/// A database's statements for what an operator asks: counts, relays, the slot, the latest
/// events, dead letters. Implemented by the library in each `store/<database>/admin.rs`; part of
/// [`Dialect`](crate::Dialect).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait AdminSql: sqlx::Database + crate::sealed::Sealed {
    /// The dead letters `filter` selects, oldest first, at most `limit`.
    #[doc(hidden)]
    fn __dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        filter: &'a DeadLetterFilter,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, sqlx::Error>> + Send + 'a;

    #[doc(hidden)]
    fn __count_dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        filter: &'a DeadLetterFilter,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Deletes the dead letters `filter` selects; how many.
    #[doc(hidden)]
    fn __purge_dead_letters<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        filter: &'a DeadLetterFilter,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Makes dead letters deliverable again, attempts reset. `ids`: `None` for all.
    #[doc(hidden)]
    fn __replay<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        ids: Option<&'a [uuid::Uuid]>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Counts per aggregate type and event type, in that order.
    #[doc(hidden)]
    fn __status<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Vec<EventCounts>, sqlx::Error>> + Send + 'a;

    /// The relays at work on this table, `None` where the database cannot tell.
    #[doc(hidden)]
    fn __relays<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Option<Vec<RelayInstance>>, sqlx::Error>> + Send + 'a;

    /// The log relay's replication slot of this table, where the database has them.
    #[doc(hidden)]
    fn __slot<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<Option<SlotStatus>, sqlx::Error>> + Send + 'a {
        let _ = (pool, table);
        async { Ok(None) }
    }

    /// The highest `seq` in the table, 0 when it is empty.
    #[doc(hidden)]
    fn __last_seq<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'a;

    /// The events recorded after `after` (a `seq`), whatever their state, in order, at most
    /// `limit`.
    #[doc(hidden)]
    fn __events_after<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Message>, sqlx::Error>> + Send + 'a;
}
