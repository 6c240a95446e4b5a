//! The relay's guarantees against the real databases: committed ⇒ published, rolled back ⇒
//! never, per-aggregate order across racing relays, crashes, lost connections, failing sinks,
//! poison events, retention. Each generic test runs once per dialect (PostgreSQL, MariaDB/MySQL,
//! SQLite; see `relay_tests!` at the end); waking on `NOTIFY` and the metrics are tested on
//! PostgreSQL, the dialect-independent part of the relay being the same. Every test is bounded
//! in time.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use outbox::Event;
use outbox::relay::{
    Backoff, ChannelSink, DeadLetterFilter, HandlerSink, Message, Relay, RelayBuilder, Sink,
    SinkError,
};
use outbox_tests::{Lite, My, Pg, Poison, RelayTable, TestDb, eventually, n, spawn};

const LIMIT: Duration = Duration::from_secs(60);

fn fast_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
}

/// A relay of `table` into `sink`. On SQLite, where relays take turns under a lease, a crashed
/// relay holds up its successor for 1 s instead of 10.
fn relay<D: TestDb, K: Sink>(
    table: &RelayTable<D>,
    pool: sqlx::Pool<D::Database>,
    sink: K,
) -> RelayBuilder<sqlx::Pool<D::Database>, K> {
    Relay::builder(pool, sink)
        .outbox(&table.outbox)
        .lease_ttl(Duration::from_secs(1))
}

mod admin;
mod batches;
mod concurrency;
mod delayed;
mod delivery;
mod failures;
mod steps;
mod tenants;

use admin::*;
use batches::*;
use delayed::*;
use delivery::*;
use failures::*;

/// One test per generic test above and dialect.
macro_rules! relay_tests {
    ($module:ident, $db:ty) => {
        mod $module {
            use super::*;

            relay_tests!(@each $db;
                committed_events_are_published_and_rolled_back_events_never_are,
                four_racing_relays_keep_per_aggregate_order,
                relay_aborted_mid_batch_loses_nothing_and_duplicates_at_most_its_batches,
                relay_survives_cut_connections_and_a_failing_sink,
                poison_event_becomes_a_dead_letter_and_replays_once_fixed,
                retention_keeps_published_events_then_purges_them,
                relay_process_killed_with_sigkill_loses_nothing,
                a_poison_event_that_kills_the_relay_process_ends_a_dead_letter,
                unordered_relay_lets_later_events_pass_a_failing_one,
                dead_letters_are_filtered_and_counted_by_the_database,
                status_tail_and_purge_read_what_the_database_holds,
                byte_budget_splits_batches_and_keeps_order,
                delayed_events_wait_for_their_time_and_can_be_cancelled
            );
        }
    };
    (@each $db:ty; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test::<$db>().await;
            }
        )*
    };
}

relay_tests!(postgres, Pg);
relay_tests!(mysql, My);
relay_tests!(sqlite, Lite);
