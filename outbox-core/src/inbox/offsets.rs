//! Exactly-once processing of a partitioned log without an id per message: the consumer keeps
//! each partition's next offset in its own database, **in the same transaction** as its side
//! effects, and resumes from it (the way Kafka's documentation describes storing offsets
//! outside Kafka). A record below the stored offset was applied already and is skipped.
//!
//! [`Offsets`] is the table and its steps; [`kafka::OffsetConsumer`](super::kafka) (feature
//! `kafka`) is a Kafka consumer that seeks every partition it is assigned to the stored offset
//! and processes through it.
//!
//! ```no_run
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), BoxError> {
//! use outbox::inbox::{Offsets, Position};
//!
//! const OFFSETS: Offsets = Offsets::DEFAULT;
//! OFFSETS.migrate(&pool).await?; // once, at start-up
//!
//! let at = Position::new("bank.account", 2, 1_041);
//! let outcome = OFFSETS
//!     .process(&pool, "read-model", at, |tx| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE balances SET cents = cents + 100 WHERE account = 42")
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok::<_, BoxError>(())
//!         })
//!     })
//!     .await?;
//! if outcome.is_duplicate() {
//!     // offset 1,041 of partition 2 was applied before: nothing ran, nothing changed
//! }
//! # Ok(()) }
//! ```
//!
//! When to choose it over the [`Inbox`](super::Inbox): offsets need one row per partition, not
//! one per message, and no purge, and they work for records without an id. But they make each
//! *record* of the log apply once, not each *event*: an event published twice sits at two
//! offsets and is applied twice. The outbox publishes an event twice when a relay dies between
//! the broker's confirmation and settling the row (Kafka's idempotent producer drops only the
//! retries of one producer session). Choose offsets when the handler's effect tolerates that
//! (it sets state rather than adding to it) or the producer never republishes; choose the inbox
//! when every event must apply once whatever the producer did.

use crate::inbox::InboxSql;
use crate::{Error, OutboxConnection, TableName};

use super::{Handler, Processed, Recorded, check_key};

/// A consumer offsets table: one row per consumer group, topic and partition, holding the next
/// offset to apply. A `const`, like [`Inbox`](super::Inbox):
///
/// ```
/// use outbox::{TableName, inbox::Offsets};
///
/// pub const OFFSETS: Offsets = Offsets::for_table(TableName::from_static("billing_offsets"));
/// assert_eq!(OFFSETS.table().as_str(), "billing_offsets");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsets {
    table: TableName,
}

/// Where a record sits in a partitioned log: topic, partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition of the topic.
    pub partition: i32,
    /// The record's offset in the partition.
    pub offset: i64,
}

impl<'a> Position<'a> {
    /// The record at `offset` of `partition` of `topic`.
    pub const fn new(topic: &'a str, partition: i32, offset: i64) -> Self {
        Position {
            topic,
            partition,
            offset,
        }
    }
}

impl Default for Offsets {
    fn default() -> Self {
        Offsets::DEFAULT
    }
}

impl Offsets {
    /// Table `consumer_offsets`.
    pub const DEFAULT: Offsets = Offsets::for_table(TableName::from_static("consumer_offsets"));

    /// The offsets in `table`.
    pub const fn for_table(table: TableName) -> Self {
        Offsets { table }
    }

    /// The offsets table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Creates the table if it does not exist: primary key (`consumer_group`, `topic`,
    /// `partition_id`), `next_offset`, `updated_at`. Idempotent.
    pub async fn migrate<DB: InboxSql>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        let wrap = |source| Error::database("migrate offsets", &self.table, DB::NAME, source);
        let mut conn = pool.acquire().await.map_err(wrap)?;
        DB::__offsets_migrate(&mut conn, &self.table)
            .await
            .map_err(wrap)
    }

    /// The stored next offset of each partition of `topic` for `group`, by partition: where a
    /// consumer of the group resumes.
    pub async fn stored<DB: InboxSql>(
        &self,
        pool: &sqlx::Pool<DB>,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, Error> {
        check_key(group, "consumer group", group)?;
        check_key(group, "topic", topic)?;
        let wrap = |source| Error::database("read offsets", &self.table, DB::NAME, source);
        let mut conn = pool.acquire().await.map_err(wrap)?;
        DB::__offsets_load(&mut conn, &self.table, group, topic)
            .await
            .map_err(wrap)
    }

    /// Records that `group` applies the record `at`, through `conn`, which must be inside a
    /// transaction: the partition's next offset becomes the one after it. Returns
    /// [`Recorded::Duplicate`] when the stored next offset is past it already (applied by a
    /// committed transaction). The partition's row stays locked until the transaction ends, so a
    /// second consumer of the same partition (during a rebalance) waits, then sees the result.
    pub async fn advance<C>(
        &self,
        conn: &mut C,
        group: &str,
        at: Position<'_>,
    ) -> Result<Recorded, Error>
    where
        C: OutboxConnection + ?Sized,
        C::Dialect: InboxSql,
    {
        let next = check_position(group, at)?;
        if !conn.__in_transaction() {
            return Err(Error::NoTransaction {
                event_type: format!("offset of consumer group {group}"),
                table: self.table.to_string(),
                dialect: <C::Dialect as sqlx::Database>::NAME,
            });
        }
        let moved = <C::Dialect as InboxSql>::__offsets_advance(
            conn.__connection(),
            &self.table,
            (group, at.topic, at.partition),
            at.offset,
            next,
        )
        .await
        .map_err(|source| {
            Error::database(
                "advance offset",
                &self.table,
                <C::Dialect as sqlx::Database>::NAME,
                source,
            )
        })?;
        Ok(if moved {
            Recorded::New
        } else {
            tracing::debug!(table = %self.table, group, topic = at.topic, partition = at.partition,
                offset = at.offset, "record below the stored offset skipped");
            Recorded::Duplicate
        })
    }

    /// Processes the record `at` exactly once for `group`: begins a transaction on `pool`,
    /// advances the partition's offset past it, runs `handler` with the transaction and commits.
    /// A record below the stored offset returns [`Processed::Duplicate`] without running the
    /// handler; a handler error rolls everything back, the offset included.
    pub async fn process<DB, T, E, F>(
        &self,
        pool: &sqlx::Pool<DB>,
        group: &str,
        at: Position<'_>,
        handler: F,
    ) -> Result<Processed<T>, E>
    where
        DB: InboxSql,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut sqlx::Transaction<'static, DB>) -> Handler<'c, T, E>,
    {
        let wrap = |source| Error::database("process", &self.table, DB::NAME, source);
        let mut tx = crate::transaction::begin(pool, None).await.map_err(wrap)?;
        match self.advance(&mut *tx, group, at).await? {
            Recorded::Duplicate => {
                tx.rollback().await.map_err(wrap)?;
                return Ok(Processed::Duplicate);
            }
            Recorded::New => {}
        }
        // On an error the transaction is dropped, which rolls it back.
        let value = handler(&mut tx).await?;
        tx.commit().await.map_err(wrap)?;
        Ok(Processed::Done(value))
    }
}

/// The offset after `at`'s, once its group, topic, partition and offset are ones to store.
fn check_position(group: &str, at: Position<'_>) -> Result<i64, Error> {
    check_key(group, "consumer group", group)?;
    check_key(group, "topic", at.topic)?;
    let invalid = |field, problem: String| Error::InvalidInboxKey {
        consumer: group.to_owned(),
        field,
        problem,
    };
    if at.partition < 0 {
        return Err(invalid(
            "partition",
            format!("is negative ({})", at.partition),
        ));
    }
    match at.offset.checked_add(1) {
        Some(next) if at.offset >= 0 => Ok(next),
        _ => Err(invalid(
            "offset",
            format!("{} is not a record's offset", at.offset),
        )),
    }
}
