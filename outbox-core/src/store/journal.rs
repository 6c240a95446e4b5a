//! The relays' journal of the events in their hands (`<table>_handling`): what lets a relay
//! that dies while handling an event — a panic in a sink or an enrichment step, a payload that
//! exhausts memory, a kill — count that against the event, so that the event ends a dead letter
//! instead of killing every relay that claims it, for ever.
//!
//! A claim holds its events under row locks (or a lease) in a transaction that a crash rolls
//! back, so nothing the claim writes survives the crash. The journal is written beside it, on
//! its own: before the sink is called, the relay notes the claimed events (one row: the claim,
//! the relay's holder id, each event's `seq` and the last 32 bits of its id, so that a note never
//! matches an event of a table dropped and created again), and deletes its earlier notes in the
//! same statement; a graceful stop deletes them all. A note left by *another* holder on an event
//! that is claimed again is therefore a relay that stopped with it in hand without settling it
//! (crashed, killed, cut from the database). The relay then handles the suspects one at a time,
//! each noted alone, so that a crash is counted against the one event it happened on; with its
//! failed attempts, that count dead-letters it at `max_attempts`
//! ([`Claim::in_hand`](crate::relay::source::Claim::in_hand)). Notes whose events are all
//! settled are swept by maintenance.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::message::Message;
use crate::{Error, TableName};

/// A database's statements for the journal. Implemented by the library for each database.
#[doc(hidden)]
pub trait Journal: sqlx::Database {
    /// The database's name, for errors.
    const JOURNAL_DIALECT: &'static str;

    /// Deletes `holder`'s earlier notes, notes `events` (`seq:fingerprint`, comma-separated) as
    /// claim `claim` of `holder`, and returns the lists of the other holders' notes.
    fn note<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        holder: &'a str,
        claim: &'a str,
        events: &'a str,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send + 'a;

    /// Deletes `holder`'s notes (a graceful stop).
    fn forget<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        holder: &'a str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Deletes the other holders' notes none of whose events is pending any more.
    fn sweep<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        holder: &'a str,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}

/// The journal in plain statements, one at a time on one connection (`$quote` quotes names):
/// MySQL/MariaDB and SQLite, which have no data-modifying `WITH` and no arrays to sweep by.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
macro_rules! statement_journal {
    ($db:ty, $pool:ty, $quote:literal, $dialect:literal) => {
        /// The journal of `table`: `<table>_handling`.
        fn journal(table: &TableName) -> String {
            table.companion("_handling", $quote)
        }

        impl Journal for $db {
            const JOURNAL_DIALECT: &'static str = $dialect;

            async fn note(
                pool: &$pool,
                table: &TableName,
                holder: &str,
                claim: &str,
                events: &str,
            ) -> Result<Vec<String>, sqlx::Error> {
                let j = journal(table);
                let mut conn = pool.acquire().await?;
                sqlx::query(AssertSqlSafe(format!("DELETE FROM {j} WHERE holder = ?")))
                    .bind(holder)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {j} (claim, holder, seqs) VALUES (?, ?, ?)"
                )))
                .bind(claim)
                .bind(holder)
                .bind(events)
                .execute(&mut *conn)
                .await?;
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT seqs FROM {j} WHERE holder <> ?"
                )))
                .bind(holder)
                .fetch_all(&mut *conn)
                .await
            }

            async fn forget(
                pool: &$pool,
                table: &TableName,
                holder: &str,
            ) -> Result<(), sqlx::Error> {
                let sql = format!("DELETE FROM {} WHERE holder = ?", journal(table));
                sqlx::query(AssertSqlSafe(sql))
                    .bind(holder)
                    .execute(pool)
                    .await?;
                Ok(())
            }

            async fn sweep(
                pool: &$pool,
                table: &TableName,
                holder: &str,
            ) -> Result<u64, sqlx::Error> {
                let j = journal(table);
                let notes: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT claim, seqs FROM {j} WHERE holder <> ?"
                )))
                .bind(holder)
                .fetch_all(pool)
                .await?;
                let mut swept = 0;
                for (claim, seqs) in notes {
                    // The seqs are parsed numbers: safe to write into the statement.
                    let listed: Vec<String> = $crate::store::journal::parse(&seqs)
                        .map(|seq| seq.to_string())
                        .collect();
                    let live = !listed.is_empty()
                        && sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
                            "SELECT EXISTS (SELECT 1 FROM {t} o WHERE o.seq IN ({list}) AND {pending})",
                            t = table.quoted($quote),
                            list = listed.join(","),
                            pending = $crate::store::table::pending("o"),
                        )))
                        .fetch_one(pool)
                        .await?
                            != 0;
                    if !live {
                        swept += sqlx::query(AssertSqlSafe(format!(
                            "DELETE FROM {j} WHERE claim = ?"
                        )))
                        .bind(&claim)
                        .execute(pool)
                        .await?
                        .rows_affected();
                    }
                }
                Ok(swept)
            }
        }
    };
}
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use statement_journal;

/// A source's side of the journal: its holder id, and whether the table has a journal (a table
/// migrated by an older version has none: crashes are then not counted, and a warning says so).
#[derive(Debug)]
pub(crate) struct Hands {
    table: TableName,
    holder: String,
    kept: AtomicBool,
}

impl Hands {
    pub(crate) fn new(table: &TableName) -> Self {
        Hands {
            table: table.clone(),
            holder: uuid::Uuid::now_v7().to_string(),
            kept: AtomicBool::new(true),
        }
    }

    /// Notes `messages` as in this relay's hands; returns, by `seq`, the notes other holders
    /// left on them (relays that stopped with them in hand), for those that have any.
    pub(crate) async fn note<DB: Journal>(
        &self,
        pool: &sqlx::Pool<DB>,
        messages: &[Message],
    ) -> Result<HashMap<i64, u32>, Error> {
        if messages.is_empty() || !self.kept.load(Ordering::Relaxed) {
            return Ok(HashMap::new());
        }
        let claim = uuid::Uuid::now_v7().to_string();
        let entries: Vec<String> = messages.iter().map(entry).collect();
        let listed = entries.join(",");
        match DB::note(pool, &self.table, &self.holder, &claim, &listed).await {
            Ok(others) => Ok(stops(messages, &others)),
            Err(error) => self
                .missing(error, DB::JOURNAL_DIALECT)
                .map(|()| HashMap::new()),
        }
    }

    /// Deletes this relay's notes: it stops gracefully.
    pub(crate) async fn forget<DB: Journal>(&self, pool: &sqlx::Pool<DB>) {
        if !self.kept.load(Ordering::Relaxed) {
            return;
        }
        if let Err(error) = DB::forget(pool, &self.table, &self.holder).await {
            tracing::debug!(%error, table = %self.table, "could not delete the relay's journal notes; maintenance will");
        }
    }

    /// Deletes the notes that count for nothing any more.
    pub(crate) async fn sweep<DB: Journal>(&self, pool: &sqlx::Pool<DB>) -> Result<(), Error> {
        if !self.kept.load(Ordering::Relaxed) {
            return Ok(());
        }
        match DB::sweep(pool, &self.table, &self.holder).await {
            Ok(_) => Ok(()),
            Err(error) => self.missing(error, DB::JOURNAL_DIALECT),
        }
    }

    /// A table without a journal: warned about once, and crashes go uncounted. Any other error
    /// is returned.
    fn missing(&self, error: sqlx::Error, dialect: &'static str) -> Result<(), Error> {
        let missing = matches!(&error, sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("42P01" | "42S02"))
                || db.message().contains("no such table"));
        if !missing {
            return Err(Error::database(
                "note the events in hand",
                &self.table,
                dialect,
                error,
            ));
        }
        if self.kept.swap(false, Ordering::Relaxed) {
            tracing::warn!(table = %self.table,
                "the outbox has no journal table (`{}_handling`): run `migrate` again with this version, so that an event that kills the relay is counted against and ends a dead letter",
                self.table.parts().1);
        }
        Ok(())
    }
}

/// An event as a note lists it: `seq:fingerprint`, the fingerprint being the last 32 bits of
/// its id (random in a UUIDv7), in hex.
fn entry(message: &Message) -> String {
    format!("{}:{:08x}", message.seq, message.id.as_u128() as u32)
}

/// The `seq`s a note lists; anything else in it is ignored.
pub(crate) fn parse(listed: &str) -> impl Iterator<Item = i64> + '_ {
    listed
        .split(',')
        .filter_map(|entry| entry.split(':').next()?.trim().parse().ok())
}

/// For each of `messages` that the other holders' notes list (same `seq`, same fingerprint),
/// how many notes list it.
fn stops(messages: &[Message], others: &[String]) -> HashMap<i64, u32> {
    let ours: HashSet<String> = messages.iter().map(entry).collect();
    let mut stops: HashMap<i64, u32> = HashMap::new();
    for note in others {
        for listed in note.split(',').filter(|listed| ours.contains(*listed)) {
            if let Some(seq) = parse(listed).next() {
                *stops.entry(seq).or_default() += 1;
            }
        }
    }
    stops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64) -> Message {
        Message::new(uuid::Uuid::now_v7(), seq, "a", "1", "E", "{}")
    }

    #[test]
    fn each_note_of_another_holder_counts_once_per_event_it_lists() {
        let ours: Vec<Message> = (2..=5).map(message).collect();
        let e = |i: usize| entry(&ours[i]);
        let others = vec![
            format!("1:00000000,{},{}", e(0), e(1)),
            format!("{},9:00000000", e(1)),
            format!("x,,{}", e(2)),
        ];
        let stops = stops(&ours, &others);
        assert_eq!(stops.get(&2), Some(&1));
        assert_eq!(stops.get(&3), Some(&2));
        assert_eq!(stops.get(&4), Some(&1));
        assert_eq!(stops.get(&5), None);
        assert_eq!(parse("7:0a0b0c0d,8:00000001").collect::<Vec<_>>(), [7, 8]);
    }

    #[test]
    fn a_note_of_a_table_created_again_does_not_count() {
        // Same seq, another event (the table was dropped and created again).
        let ours = vec![message(1)];
        let stale = vec![entry(&message(1))];
        assert!(stops(&ours, &stale).is_empty());
    }
}
