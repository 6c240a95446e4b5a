//! The consumer inbox against the real databases: each message's side effect happens exactly
//! once however often, and however concurrently, it is delivered; a failed attempt leaves no
//! trace; old entries are purged.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outbox::inbox::{Inbox, Offsets, Position, Processed, Recorded};
use outbox::{Dialect, TableName};
use outbox_tests::{Lite, My, Pg, TestDb, run_id};
use sqlx::AssertSqlSafe;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An inbox table of its own and a one-row table counting the side effects.
struct Fixture<D: TestDb> {
    db: D,
    inbox: Inbox,
    effects: String,
}

impl<D: TestDb> Fixture<D>
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    async fn new() -> Self {
        let db = D::connect().await;
        let id = run_id();
        let inbox = Inbox::for_table(TableName::new(format!("inbox_{id}")).unwrap());
        inbox.migrate(db.pool()).await.unwrap();
        let effects = format!("effects_{id}");
        db.execute(format!("CREATE TABLE {effects} (n BIGINT NOT NULL)"))
            .await;
        db.execute(format!("INSERT INTO {effects} (n) VALUES (0)"))
            .await;
        Fixture { db, inbox, effects }
    }

    async fn effects(&self) -> i64 {
        self.db
            .scalar(format!("SELECT n FROM {}", self.effects))
            .await
    }

    async fn entries(&self, condition: &str) -> i64 {
        self.db
            .scalar(format!(
                "SELECT COUNT(*) FROM {} WHERE {condition}",
                self.inbox.table()
            ))
            .await
    }

    /// Processes `message_id` for consumer `c`: the side effect is one more in the counter.
    async fn deliver(&self, message_id: &str) -> Result<Processed<()>, BoxError> {
        deliver(&self.inbox, self.db.pool(), &self.effects, message_id).await
    }

    async fn drop_tables(self) {
        self.db
            .execute(format!(
                "DROP TABLE {}; DROP TABLE {}",
                self.inbox.table(),
                self.effects
            ))
            .await;
    }
}

async fn deliver<DB: Dialect>(
    inbox: &Inbox,
    pool: &sqlx::Pool<DB>,
    effects: &str,
    message_id: &str,
) -> Result<Processed<()>, BoxError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let sql = format!("UPDATE {effects} SET n = n + 1");
    inbox
        .process(pool, "counter", message_id, |tx| {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **tx).await?;
                Ok::<_, BoxError>(())
            })
        })
        .await
}

async fn the_same_message_ten_times_has_one_effect<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let fixture = Fixture::<D>::new().await;
    // One after the other.
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        outcomes.push(fixture.deliver("message-1").await.unwrap());
    }
    assert_eq!(outcomes[0], Processed::Done(()));
    assert!(
        outcomes[1..].iter().all(Processed::is_duplicate),
        "{outcomes:?}"
    );
    assert_eq!(fixture.effects().await, 1);

    // At the same time, from 10 tasks: the first to insert the id wins, the others wait for its
    // commit and find a duplicate.
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (inbox, pool, effects) = (
                fixture.inbox.clone(),
                fixture.db.pool().clone(),
                fixture.effects.clone(),
            );
            let done = done.clone();
            tokio::spawn(async move {
                match deliver(&inbox, &pool, &effects, "message-2").await.unwrap() {
                    Processed::Done(()) => done.fetch_add(1, Ordering::SeqCst),
                    Processed::Duplicate => 0,
                };
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 1, "processed more than once");
    assert_eq!(fixture.effects().await, 2);
    assert_eq!(fixture.entries("TRUE").await, 2);
    fixture.drop_tables().await;
}

async fn a_failing_handler_leaves_no_trace_and_the_retry_succeeds<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let fixture = Fixture::<D>::new().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    for attempt in 1..=3 {
        let sql = format!("UPDATE {} SET n = n + 1", fixture.effects);
        let attempts = attempts.clone();
        let outcome = fixture
            .inbox
            .process(fixture.db.pool(), "counter", "flaky", |tx| {
                Box::pin(async move {
                    // The side effect happens, then the handler fails on its first two attempts.
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **tx).await?;
                    if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err::<(), BoxError>("downstream unavailable".into());
                    }
                    Ok(())
                })
            })
            .await;
        if attempt < 3 {
            assert_eq!(outcome.unwrap_err().to_string(), "downstream unavailable");
            assert_eq!(
                fixture.effects().await,
                0,
                "a failed attempt left its effect"
            );
            assert_eq!(
                fixture.entries("TRUE").await,
                0,
                "a failed attempt left its id"
            );
        } else {
            assert_eq!(outcome.unwrap(), Processed::Done(()));
        }
    }
    assert_eq!(fixture.effects().await, 1);
    assert_eq!(fixture.entries("message_id = 'flaky'").await, 1);
    assert!(fixture.deliver("flaky").await.unwrap().is_duplicate());
    assert_eq!(fixture.effects().await, 1);
    fixture.drop_tables().await;
}

async fn purge_keeps_entries_younger_than_the_retention<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let fixture = Fixture::<D>::new().await;
    for n in 0..12 {
        let outcome = fixture.deliver(&format!("m{n}")).await.unwrap();
        assert_eq!(outcome, Processed::Done(()));
    }
    let keep_an_hour = fixture.inbox.clone().retention(Duration::from_secs(3600));
    assert_eq!(keep_an_hour.purge(fixture.db.pool()).await.unwrap(), 0);
    assert_eq!(fixture.entries("TRUE").await, 12);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let keep_nothing = fixture.inbox.clone().retention(Duration::ZERO);
    assert_eq!(keep_nothing.purge(fixture.db.pool()).await.unwrap(), 12);
    assert_eq!(fixture.entries("TRUE").await, 0);
    // A purged id is new again: the retention must outlast any redelivery.
    assert_eq!(fixture.deliver("m0").await.unwrap(), Processed::Done(()));
    fixture.drop_tables().await;
}

async fn record_refuses_bad_keys_and_connections_outside_a_transaction<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let fixture = Fixture::<D>::new().await;
    let mut tx = fixture.db.pool().begin().await.unwrap();
    let error = fixture.inbox.record(&mut *tx, "", "m").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "inbox of consumer \"\": the consumer name is empty"
    );
    let long = "x".repeat(256);
    let error = fixture
        .inbox
        .record(&mut *tx, "c", &long)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the message id is 256 bytes long, more than 255"),
        "{error}"
    );
    let error = fixture
        .inbox
        .record(&mut *tx, "c", "m\0")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "inbox of consumer \"c\": the message id holds a NUL character (at byte 1), \
         which PostgreSQL cannot store"
    );
    assert_eq!(
        fixture.inbox.record(&mut *tx, "c", "m").await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        fixture.inbox.record(&mut *tx, "c", "m").await.unwrap(),
        Recorded::Duplicate
    );
    // Ids are compared byte for byte: MariaDB's text collations pad with spaces and may fold
    // case or accents, which would skip a distinct message as a duplicate.
    for other in ["m ", "M", "m\t", "\u{1d5c6}"] {
        assert_eq!(
            fixture.inbox.record(&mut *tx, "c", other).await.unwrap(),
            Recorded::New,
            "{other:?} is not the id \"m\""
        );
    }
    assert_eq!(
        fixture.inbox.record(&mut *tx, "c ", "m").await.unwrap(),
        Recorded::New,
        "consumer \"c \" is not consumer \"c\""
    );
    assert_eq!(
        fixture
            .inbox
            .record(&mut *tx, "other consumer", "m")
            .await
            .unwrap(),
        Recorded::New,
        "each consumer has its own ids"
    );
    tx.rollback().await.unwrap();
    let mut conn = fixture.db.pool().acquire().await.unwrap();
    let error = fixture
        .inbox
        .record(&mut *conn, "c", "m")
        .await
        .unwrap_err();
    assert!(
        matches!(error, outbox::Error::NoTransaction { .. }),
        "{error}"
    );
    drop(conn);
    fixture.drop_tables().await;
}

/// An offsets table of its own and a counter of side effects, for consumer group `group`.
async fn offsets_fixture<D: TestDb>() -> (Fixture<D>, Offsets)
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let fixture = Fixture::<D>::new().await;
    let offsets = Offsets::for_table(TableName::new(format!("offsets_{}", run_id())).unwrap());
    offsets.migrate(fixture.db.pool()).await.unwrap();
    offsets.migrate(fixture.db.pool()).await.unwrap();
    (fixture, offsets)
}

/// Processes the record `at` for `group`: the side effect is one more in the counter.
async fn apply_at<DB: Dialect>(
    offsets: &Offsets,
    pool: &sqlx::Pool<DB>,
    effects: &str,
    group: &str,
    at: Position<'_>,
) -> Result<Processed<()>, BoxError>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let sql = format!("UPDATE {effects} SET n = n + 1");
    offsets
        .process(pool, group, at, |tx| {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **tx).await?;
                Ok::<_, BoxError>(())
            })
        })
        .await
}

async fn offsets_apply_each_record_once_and_resume_past_it<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let (fixture, offsets) = offsets_fixture::<D>().await;
    let (pool, effects) = (fixture.db.pool(), fixture.effects.as_str());
    let apply = |group: &'static str, partition, offset| {
        apply_at(
            &offsets,
            pool,
            effects,
            group,
            Position::new("bank.account", partition, offset),
        )
    };
    for offset in 0..5 {
        assert_eq!(apply("g", 0, offset).await.unwrap(), Processed::Done(()));
    }
    assert_eq!(
        offsets.stored(pool, "g", "bank.account").await.unwrap(),
        [(0, 5)]
    );
    // Read again from an older position: every record below the stored offset is skipped.
    for offset in 0..5 {
        assert!(apply("g", 0, offset).await.unwrap().is_duplicate());
    }
    assert_eq!(fixture.effects().await, 5);
    // Offsets may leave gaps (compacted topics, transaction markers): a later record applies.
    assert_eq!(apply("g", 0, 9).await.unwrap(), Processed::Done(()));
    assert!(apply("g", 0, 7).await.unwrap().is_duplicate());
    // Each partition, and each group, has its own offset.
    assert_eq!(apply("g", 1, 0).await.unwrap(), Processed::Done(()));
    assert_eq!(apply("other", 0, 0).await.unwrap(), Processed::Done(()));
    assert_eq!(
        offsets.stored(pool, "g", "bank.account").await.unwrap(),
        [(0, 10), (1, 1)]
    );
    assert_eq!(
        offsets.stored(pool, "other", "bank.account").await.unwrap(),
        [(0, 1)]
    );
    assert!(
        offsets
            .stored(pool, "g", "elsewhere")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(fixture.effects().await, 8);

    // Two members on one partition at once (a rebalance): ten tasks apply the same record, the
    // first to lock the partition's row wins and the others see its commit.
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (offsets, pool) = (offsets.clone(), pool.clone());
            let (effects, done) = (fixture.effects.clone(), done.clone());
            tokio::spawn(async move {
                let at = Position::new("bank.account", 2, 0);
                if let Processed::Done(()) =
                    apply_at(&offsets, &pool, &effects, "g", at).await.unwrap()
                {
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 1, "applied more than once");
    assert_eq!(fixture.effects().await, 9);
    fixture
        .db
        .execute(format!("DROP TABLE {}", offsets.table()))
        .await;
    fixture.drop_tables().await;
}

async fn a_failing_handler_leaves_the_offset_where_it_was<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let (fixture, offsets) = offsets_fixture::<D>().await;
    let pool = fixture.db.pool();
    let at = Position::new("t", 0, 3);
    let sql = format!("UPDATE {} SET n = n + 1", fixture.effects);
    let outcome = offsets
        .process(pool, "g", at, |tx| {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **tx).await?;
                Err::<(), BoxError>("downstream unavailable".into())
            })
        })
        .await;
    assert_eq!(outcome.unwrap_err().to_string(), "downstream unavailable");
    assert_eq!(
        fixture.effects().await,
        0,
        "a failed attempt left its effect"
    );
    assert!(
        offsets.stored(pool, "g", "t").await.unwrap().is_empty(),
        "a failed attempt moved the offset"
    );
    let retried = apply_at(&offsets, pool, &fixture.effects, "g", at).await;
    assert_eq!(retried.unwrap(), Processed::Done(()));
    assert_eq!(offsets.stored(pool, "g", "t").await.unwrap(), [(0, 4)]);
    assert_eq!(fixture.effects().await, 1);
    fixture
        .db
        .execute(format!("DROP TABLE {}", offsets.table()))
        .await;
    fixture.drop_tables().await;
}

async fn offsets_refuse_bad_positions_and_connections_outside_a_transaction<D: TestDb>()
where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    let (fixture, offsets) = offsets_fixture::<D>().await;
    let mut tx = fixture.db.pool().begin().await.unwrap();
    for (group, at, message) in [
        (
            "",
            Position::new("t", 0, 0),
            "inbox of consumer \"\": the consumer group is empty",
        ),
        (
            "g",
            Position::new("", 0, 0),
            "inbox of consumer \"g\": the topic is empty",
        ),
        (
            "g",
            Position::new("t", -1, 0),
            "inbox of consumer \"g\": the partition is negative (-1)",
        ),
        (
            "g",
            Position::new("t", 0, -2),
            "inbox of consumer \"g\": the offset -2 is not a record's offset",
        ),
        (
            "g",
            Position::new("t", 0, i64::MAX),
            "inbox of consumer \"g\": the offset 9223372036854775807 is not a record's offset",
        ),
    ] {
        let error = offsets.advance(&mut *tx, group, at).await.unwrap_err();
        assert_eq!(error.to_string(), message);
    }
    let at = Position::new("t", 0, 0);
    assert_eq!(
        offsets.advance(&mut *tx, "g", at).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        offsets.advance(&mut *tx, "g", at).await.unwrap(),
        Recorded::Duplicate
    );
    tx.rollback().await.unwrap();
    assert!(
        offsets
            .stored(fixture.db.pool(), "g", "t")
            .await
            .unwrap()
            .is_empty()
    );
    let mut conn = fixture.db.pool().acquire().await.unwrap();
    let error = offsets.advance(&mut *conn, "g", at).await.unwrap_err();
    assert!(
        matches!(error, outbox::Error::NoTransaction { .. }),
        "{error}"
    );
    drop(conn);
    fixture
        .db
        .execute(format!("DROP TABLE {}", offsets.table()))
        .await;
    fixture.drop_tables().await;
}

macro_rules! inbox_tests {
    ($module:ident, $db:ty) => {
        mod $module {
            use super::*;

            inbox_tests!(@each $db;
                the_same_message_ten_times_has_one_effect,
                a_failing_handler_leaves_no_trace_and_the_retry_succeeds,
                purge_keeps_entries_younger_than_the_retention,
                record_refuses_bad_keys_and_connections_outside_a_transaction,
                offsets_apply_each_record_once_and_resume_past_it,
                a_failing_handler_leaves_the_offset_where_it_was,
                offsets_refuse_bad_positions_and_connections_outside_a_transaction
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

inbox_tests!(postgres, Pg);
inbox_tests!(mysql, My);
inbox_tests!(sqlite, Lite);

/// A consumer cancelled while its transaction begins — the server slow to answer `BEGIN`, the
/// consumer's task aborted meanwhile — leaves no transaction open on the pool's connection: the
/// next statement run on the pool is committed. (sqlx counts a transaction only once the server
/// answered `BEGIN`, so a `pool.begin()` cancelled while waiting returns its connection to the
/// pool inside a transaction that nobody ends.) `proxied` reaches the database through `proxy`
/// with one connection.
async fn cancelled_while_beginning<D: TestDb>(
    fixture: Fixture<D>,
    proxied: sqlx::Pool<D::Database>,
    proxy: &outbox_tests::Proxy,
) where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    // The pool's one connection, open and idle.
    let warm = format!("UPDATE {} SET n = n", fixture.effects);
    sqlx::raw_sql(AssertSqlSafe(warm))
        .execute(&proxied)
        .await
        .unwrap();
    // In the pool once the ping sqlx sends on its release is answered.
    outbox_tests::eventually(
        Duration::from_secs(10),
        "the connection idle in the pool",
        || {
            let idle = proxied.num_idle();
            async move { idle == 1 }
        },
    )
    .await;
    proxy.hold();
    let consumer = tokio::spawn({
        let (inbox, pool, effects) = (
            fixture.inbox.clone(),
            proxied.clone(),
            fixture.effects.clone(),
        );
        async move { deliver(&inbox, &pool, &effects, "m-1").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // `BEGIN` sent, its answer held
    consumer.abort();
    assert!(
        consumer.await.unwrap_err().is_cancelled(),
        "the consumer finished while the server's answers were held"
    );
    proxy.release();
    let write = format!("UPDATE {} SET n = n + 100", fixture.effects);
    tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::raw_sql(AssertSqlSafe(write)).execute(&proxied),
    )
    .await
    .expect("the connection came back to the pool")
    .unwrap();
    assert_eq!(
        fixture.effects().await,
        100,
        "the write ran in the transaction the cancelled BEGIN left open, and was never committed"
    );
    assert_eq!(
        fixture.entries("TRUE").await,
        0,
        "the message was never processed"
    );
    proxied.close().await;
    fixture.drop_tables().await;
}

/// The cancelled-`BEGIN` test on each database with row locks: a pool of one connection that
/// reaches the server through a proxy.
macro_rules! cancelled_while_beginning_tests {
    ($($test:ident: $db:ty, $url:path, $options:ty;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let fixture = Fixture::<$db>::new().await;
                let options: $options = $url().parse().unwrap();
                let target = (options.get_host(), options.get_port());
                let target = tokio::net::lookup_host(target).await.unwrap().next().unwrap();
                let proxy = outbox_tests::Proxy::start(target).await;
                let proxied = sqlx::pool::PoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .connect_with(options.host("127.0.0.1").port(proxy.addr.port()))
                    .await
                    .unwrap();
                cancelled_while_beginning(fixture, proxied, &proxy).await;
            }
        )*
    };
}

cancelled_while_beginning_tests! {
    a_consumer_cancelled_while_beginning_leaves_no_transaction_open_on_postgres:
        Pg, outbox_tests::postgres_url, sqlx::postgres::PgConnectOptions;
    a_consumer_cancelled_while_beginning_leaves_no_transaction_open_on_mysql:
        My, outbox_tests::mysql_url, sqlx::mysql::MySqlConnectOptions;
}

/// An inbox table made by the earlier migration on MariaDB (text keys under `utf8mb4_bin`, which
/// pads with spaces) is made binary by `migrate`, keeping its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_makes_an_old_mysql_inbox_compare_ids_byte_for_byte() {
    let db = My::connect().await;
    let table = format!("inbox_{}", run_id());
    db.execute(format!(
        "CREATE TABLE {table} (consumer VARCHAR(255) NOT NULL, message_id VARCHAR(255) NOT NULL, \
         processed_at DATETIME(6) NOT NULL, PRIMARY KEY (consumer, message_id), \
         INDEX processed_idx (processed_at)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
    ))
    .await;
    db.execute(format!(
        "INSERT INTO {table} VALUES ('c', 'm', UTC_TIMESTAMP(6))"
    ))
    .await;
    let inbox = Inbox::for_table(TableName::new(table.clone()).unwrap());
    // Twice: the upgrade is idempotent.
    inbox.migrate(db.pool()).await.unwrap();
    inbox.migrate(db.pool()).await.unwrap();
    let text_columns = db
        .scalar(format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = '{table}' AND data_type <> 'varbinary' \
             AND column_name IN ('consumer', 'message_id')"
        ))
        .await;
    assert_eq!(text_columns, 0, "the key columns are binary");
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(
        inbox.record(&mut *tx, "c", "m").await.unwrap(),
        Recorded::Duplicate,
        "the entry recorded before the upgrade is kept"
    );
    assert_eq!(
        inbox.record(&mut *tx, "c", "m ").await.unwrap(),
        Recorded::New
    );
    tx.rollback().await.unwrap();
    db.execute(format!("DROP TABLE {table}")).await;
}

// --- `#[inbox_handler]`, and a consumer that is also a producer -------------------------------

mod chain {
    use outbox::inbox::{Inbox, Processed};
    use outbox::relay::Message;
    use outbox::{Outbox, OutboxEvent, TableName, inbox_handler, outbox_event};
    use sqlx::{Postgres, Transaction};

    pub const INBOX: Inbox = Inbox::for_table(TableName::from_static("inbox_chain_test"));
    pub const OUTBOX: Outbox = Outbox::for_table(TableName::from_static("outbox_chain_test"));

    #[derive(Debug, thiserror::Error)]
    pub enum AppError {
        #[error(transparent)]
        Outbox(#[from] outbox::Error),
        #[error(transparent)]
        Database(#[from] sqlx::Error),
        #[error(transparent)]
        Json(#[from] serde_json::Error),
    }

    /// What the welcome service emits once per opened account.
    #[derive(serde::Serialize, OutboxEvent)]
    #[outbox(aggregate_type = "welcome", event_type = "WelcomeSent")]
    pub struct Welcome {
        #[outbox(aggregate_id)]
        pub account: String,
    }

    #[outbox_event(outbox = OUTBOX)]
    async fn send_welcome(
        tx: &mut Transaction<'_, Postgres>,
        account: &str,
    ) -> Result<Welcome, AppError> {
        sqlx::query("INSERT INTO welcomed_chain_test (account) VALUES ($1)")
            .bind(account)
            .execute(&mut **tx)
            .await?;
        Ok(Welcome {
            account: account.to_owned(),
        })
    }

    /// Handles `AccountOpened`: its own write and its own event, in the transaction that records
    /// the message id.
    #[inbox_handler(consumer = "welcome", inbox = INBOX)]
    pub async fn on_account_opened(
        tx: &mut Transaction<'_, Postgres>,
        message: &Message,
    ) -> Result<String, AppError> {
        let opened: serde_json::Value = serde_json::from_str(&message.payload)?;
        let account = opened["account"].as_str().unwrap_or_default().to_owned();
        send_welcome(tx, &account).await?;
        Ok(account)
    }

    /// One delivery: begin, handle, commit (or roll back a duplicate).
    pub async fn deliver(
        pool: &sqlx::PgPool,
        message: &Message,
    ) -> Result<Processed<String>, AppError> {
        let mut tx = pool.begin().await?;
        let processed = on_account_opened(&mut tx, message).await?;
        match processed {
            Processed::Done(_) => tx.commit().await?,
            Processed::Duplicate => tx.rollback().await?,
        }
        Ok(processed)
    }
}

/// The tables of the chain, shared by its tests: created under a lock, since concurrent
/// `CREATE TABLE IF NOT EXISTS` can collide in PostgreSQL's catalog.
async fn chain_setup(db: &Pg) {
    chain::INBOX.migrate(db.pool()).await.unwrap();
    chain::OUTBOX.migrate(db.pool()).await.unwrap();
    db.execute(
        "BEGIN; SELECT pg_advisory_xact_lock(7340); \
         CREATE TABLE IF NOT EXISTS welcomed_chain_test (account TEXT NOT NULL); COMMIT"
            .into(),
    )
    .await;
}

/// A relayed `AccountOpened` for `account`, as a consumer receives it.
async fn opened_message(pool: &sqlx::PgPool, account: &str) -> outbox::relay::Message {
    let table = format!("opened_{}", run_id());
    let outbox = outbox::Outbox::for_table(TableName::new(table.clone()).unwrap());
    outbox.migrate(pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let event = outbox::Event::new(
        "account",
        "AccountOpened",
        Some(account),
        &serde_json::json!({ "account": account }),
    )
    .unwrap();
    outbox.record(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let (sink, mut received) = outbox::relay::ChannelSink::new(4);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        outbox::relay::Relay::builder(pool.clone(), sink)
            .outbox(&outbox)
            .build()
            .run(async move {
                let _ = stopped.await;
            }),
    );
    let message = received.recv().await.unwrap();
    stop.send(()).unwrap();
    relay.await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(pool)
        .await
        .unwrap();
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_produces_records_its_event_once_per_message() {
    let db = Pg::connect().await;
    let pool = db.pool().clone();
    chain_setup(&db).await;
    let account = format!("acc-{}", run_id());
    let message = opened_message(&pool, &account).await;

    // Redelivered three times, then ten times at once.
    let first = chain::deliver(&pool, &message).await.unwrap();
    assert_eq!(first, Processed::Done(account.clone()));
    for _ in 0..2 {
        assert!(
            chain::deliver(&pool, &message)
                .await
                .unwrap()
                .is_duplicate()
        );
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (pool, message) = (pool.clone(), message.clone());
            tokio::spawn(async move { chain::deliver(&pool, &message).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_duplicate());
    }

    let welcomed = db
        .scalar(format!(
            "SELECT COUNT(*) FROM welcomed_chain_test WHERE account = '{account}'"
        ))
        .await;
    assert_eq!(
        welcomed, 1,
        "the handler's own write happened more than once"
    );
    let events = db
        .scalar(format!(
            "SELECT COUNT(*) FROM outbox_chain_test WHERE aggregate_id = '{account}' \
             AND event_type = 'WelcomeSent'"
        ))
        .await;
    assert_eq!(events, 1, "the handler's event was recorded more than once");
    let entries = db
        .scalar(format!(
            "SELECT COUNT(*) FROM inbox_chain_test WHERE consumer = 'welcome' AND message_id = '{}'",
            message.id
        ))
        .await;
    assert_eq!(entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_inbox_handler_records_nothing_and_its_retry_works() {
    let db = Pg::connect().await;
    let pool = db.pool().clone();
    chain_setup(&db).await;
    let account = format!("acc-{}", run_id());
    let mut message = opened_message(&pool, &account).await;
    let good_payload = message.payload.clone();
    message.payload = "not json".into();
    let error = chain::deliver(&pool, &message).await.unwrap_err();
    assert!(matches!(error, chain::AppError::Json(_)), "{error}");
    let entries = db
        .scalar(format!(
            "SELECT COUNT(*) FROM inbox_chain_test WHERE message_id = '{}'",
            message.id
        ))
        .await;
    assert_eq!(entries, 0, "a failed handler recorded the message id");
    message.payload = good_payload;
    assert_eq!(
        chain::deliver(&pool, &message).await.unwrap(),
        Processed::Done(account)
    );
}

// --- End to end: producer, relay (killed twice), RabbitMQ, consumer with its inbox ------------

/// Publishes through the inner sink, and on its `hang_at`-th batch publishes, then never
/// returns: the relay is killed there, between publishing and settling, so that its successor
/// publishes that batch again.
struct CrashAfterPublishing<K> {
    inner: K,
    hang_at: usize,
    batches: AtomicUsize,
    hung: Arc<tokio::sync::Notify>,
}

impl<K: outbox::relay::Sink> outbox::relay::Sink for CrashAfterPublishing<K> {
    async fn publish(&self, batch: &[outbox::relay::Message]) -> Vec<outbox::relay::Delivery> {
        let results = self.inner.publish(batch).await;
        if self.batches.fetch_add(1, Ordering::SeqCst) + 1 == self.hang_at {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        results
    }

    fn keeps_order(&self) -> bool {
        self.inner.keeps_order()
    }
}

const EVENTS: i64 = 5_000;
const ACCOUNTS: i64 = 50;

/// The producer of the end-to-end runs: 5,000 deposits over 50 accounts recorded in its outbox,
/// 50 per transaction; the balances they add up to.
async fn record_deposits(
    producer: &outbox_tests::RelayTable<Pg>,
) -> std::collections::HashMap<String, i64> {
    let mut expected = std::collections::HashMap::new();
    for first in (0..EVENTS).step_by(50) {
        let mut tx = producer.pool.begin().await.unwrap();
        for n in first..first + 50 {
            let account = format!("acc-{}", n % ACCOUNTS);
            let amount = n % 97 + 1;
            *expected.entry(account.clone()).or_default() += amount;
            let event = outbox::Event::new(
                "account",
                "Deposited",
                Some(&account),
                &serde_json::json!({ "account": account, "amount": amount }),
            )
            .unwrap();
            producer.outbox.record(&mut *tx, &event).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    expected
}

/// Relays the producer's outbox through `sink()`, the relay killed twice right after publishing
/// a batch, before settling it; the third drains the outbox.
async fn relay_killed_twice<K, F>(producer: &outbox_tests::RelayTable<Pg>, sink: impl Fn() -> F)
where
    K: outbox::relay::Sink,
    F: std::future::Future<Output = K>,
{
    use outbox::relay::{Backoff, Relay};
    for hang_at in [12, 20, usize::MAX] {
        let hung = Arc::new(tokio::sync::Notify::new());
        let relay = tokio::spawn(
            Relay::builder(
                producer.pool.clone(),
                CrashAfterPublishing {
                    inner: sink().await,
                    hang_at,
                    batches: AtomicUsize::new(0),
                    hung: hung.clone(),
                },
            )
            .outbox(&producer.outbox)
            .batch_size(100)
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(1),
            ))
            .build()
            .run(std::future::pending()),
        );
        if hang_at == usize::MAX {
            outbox_tests::eventually(Duration::from_secs(120), "the outbox to drain", || async {
                producer.remaining().await == 0
            })
            .await;
        } else {
            tokio::time::timeout(Duration::from_secs(60), hung.notified())
                .await
                .expect("the relay reached the batch it dies after");
        }
        relay.abort();
        let _ = relay.await;
    }
}

/// The consumer's read model: balances, and one row per applied event (a second application
/// of an event would violate its key).
struct ReadModel {
    db: Pg,
    inbox: Inbox,
    balances: String,
    applied: String,
}

impl ReadModel {
    async fn new(name: &str) -> ReadModel {
        let db = Pg::connect().await;
        let id = run_id();
        let inbox = Inbox::for_table(TableName::new(format!("inbox_{name}_{id}")).unwrap());
        inbox.migrate(db.pool()).await.unwrap();
        let (balances, applied) = (format!("balances_{id}"), format!("applied_{id}"));
        db.execute(format!(
            "CREATE TABLE {balances} (account TEXT PRIMARY KEY, cents BIGINT NOT NULL);
             CREATE TABLE {applied} (event_id TEXT PRIMARY KEY, account TEXT NOT NULL, \
                                     amount BIGINT NOT NULL, times BIGINT NOT NULL)"
        ))
        .await;
        ReadModel {
            db,
            inbox,
            balances,
            applied,
        }
    }

    /// The handler applying one deposit event.
    fn apply(
        &self,
        event_id: String,
        event: serde_json::Value,
    ) -> impl for<'c> FnOnce(
        &'c mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> outbox::inbox::Handler<'c, (), BoxError>
    + use<> {
        let (balances, applied) = (self.balances.clone(), self.applied.clone());
        move |tx| {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {balances} (account, cents) VALUES ($1, $2) \
                     ON CONFLICT (account) DO UPDATE SET cents = {balances}.cents + $2"
                )))
                .bind(event["account"].as_str())
                .bind(event["amount"].as_i64())
                .execute(&mut **tx)
                .await?;
                // How often each event was applied: the tests count, rather than let a second
                // application fail on the key.
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {applied} (event_id, account, amount, times) VALUES ($1, $2, $3, 1) \
                     ON CONFLICT (event_id) DO UPDATE SET times = {applied}.times + 1"
                )))
                .bind(event_id)
                .bind(event["account"].as_str())
                .bind(event["amount"].as_i64())
                .execute(&mut **tx)
                .await?;
                Ok::<_, BoxError>(())
            })
        }
    }

    /// Waits for every event to be applied, then checks each was applied once and the balances.
    async fn assert_applied_once(
        &self,
        expected: &std::collections::HashMap<String, i64>,
        duplicates: &AtomicUsize,
        why: &str,
    ) {
        let applied = format!("SELECT COUNT(*) FROM {}", self.applied);
        outbox_tests::eventually(Duration::from_secs(120), "every event applied", || async {
            self.db.scalar(applied.clone()).await == EVENTS
        })
        .await;
        // Redeliveries still in flight are dropped too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.db.scalar(applied).await, EVENTS);
        let most = format!("SELECT COALESCE(MAX(times), 0) FROM {}", self.applied);
        assert_eq!(self.db.scalar(most).await, 1, "an event was applied twice");
        let duplicates = duplicates.load(Ordering::SeqCst);
        assert!(
            duplicates > 0,
            "{why} caused no redelivery: the test proves nothing"
        );
        for (account, cents) in expected {
            let got = self
                .db
                .scalar(format!(
                    "SELECT cents FROM {} WHERE account = '{account}'",
                    self.balances
                ))
                .await;
            assert_eq!(got, *cents, "balance of {account}");
        }
        eprintln!("{EVENTS} events applied once; {duplicates} duplicates dropped by the inbox");
    }

    async fn drop_tables(self) {
        self.db
            .execute(format!(
                "DROP TABLE {}; DROP TABLE {}; DROP TABLE {}",
                self.balances,
                self.applied,
                self.inbox.table()
            ))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_a_twice_killed_relay_are_applied_exactly_once() {
    use futures::StreamExt;
    use lapin::options::BasicConsumeOptions;
    use outbox::sinks::{Routing, rabbitmq::RabbitMqSink};
    use outbox_tests::RelayTable;

    let hint = "start RabbitMQ with scripts/services.sh";
    let producer = RelayTable::<Pg>::new().await;
    let expected = record_deposits(&producer).await;

    // The broker: a queue bound to the producer's exchange.
    let exchange = format!("{}.account", producer.name);
    let (_connection, channel, queue) = outbox_tests::amqp_queue(&exchange).await;
    let routing = Routing::template(&format!("{}.{{aggregate_type}}", producer.name)).unwrap();
    let sink = || async {
        RabbitMqSink::connect(&outbox_tests::amqp_url())
            .await
            .unwrap_or_else(|e| panic!("{e}; {hint}"))
            .exchange(routing.clone())
    };

    let model = Arc::new(ReadModel::new("e2e").await);
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "e2e".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let duplicates = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let (model, duplicates) = (model.clone(), duplicates.clone());
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery.unwrap();
                let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
                let event_id = delivery
                    .properties
                    .message_id()
                    .clone()
                    .unwrap()
                    .to_string();
                let outcome = outbox::inbox::rabbitmq::process(
                    &model.inbox,
                    model.db.pool(),
                    "balances",
                    &delivery,
                    model.apply(event_id, event),
                )
                .await
                .unwrap();
                if outcome.is_duplicate() {
                    duplicates.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays")
        .await;
    consumer.abort();
    let _ = consumer.await;
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// Redis Streams: 5,000 events relayed by a relay killed twice right after publishing, consumed
/// through a consumer group by consumers of which two are killed between their commit and their
/// `XACK`: the entries they left pending are claimed by the next (`XAUTOCLAIM`) and dropped by
/// the inbox. Every event applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_redis_with_killed_relays_and_consumers_are_applied_once() {
    use outbox::inbox::InboxMessage;
    use outbox::inbox::redis::StreamConsumer;
    use outbox::sinks::{Routing, redis::RedisSink};
    use outbox_tests::RelayTable;

    let redis_url = "redis://127.0.0.1:6379";
    let hint = "start Redis with scripts/services.sh";
    let producer = RelayTable::<Pg>::new().await;
    let expected = record_deposits(&producer).await;
    let stream = format!("{}:account", producer.name);
    let routing = Routing::template(&format!("{}:{{aggregate_type}}", producer.name)).unwrap();
    let sink = || async {
        RedisSink::connect(redis_url)
            .await
            .unwrap_or_else(|e| panic!("{e}; {hint}"))
            .routing(routing.clone())
    };
    let model = Arc::new(ReadModel::new("redis").await);
    let duplicates = Arc::new(AtomicUsize::new(0));
    // A consumer of the group `balances`; with `dies_after`, it processes that many entries,
    // then commits the next one and dies before its `XACK`.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (model, duplicates, stream) = (model.clone(), duplicates.clone(), stream.clone());
        let stop = stop.clone();
        move |name: &'static str, dies_after: Option<usize>| {
            let (model, duplicates, stream) = (model.clone(), duplicates.clone(), stream.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let consumer = StreamConsumer::connect(redis_url, &stream, "balances", name)
                    .await
                    .unwrap_or_else(|e| panic!("{e}; {hint}"))
                    .min_idle(Duration::from_millis(500))
                    .block(Duration::from_millis(200));
                let mut processed = 0;
                while !stop.load(Ordering::SeqCst) {
                    for entry in consumer.next_batch().await.unwrap() {
                        let event: serde_json::Value =
                            serde_json::from_str(entry.field("payload").unwrap()).unwrap();
                        let id = entry.message_id().unwrap();
                        let handler = model.apply(id.clone(), event);
                        if dies_after == Some(processed) {
                            // Committed, never acknowledged: the crash.
                            let _ = model
                                .inbox
                                .process(model.db.pool(), "balances", &id, handler)
                                .await
                                .unwrap();
                            return;
                        }
                        let outcome = consumer
                            .process(&model.inbox, model.db.pool(), "balances", &entry, handler)
                            .await
                            .unwrap();
                        if outcome.is_duplicate() {
                            duplicates.fetch_add(1, Ordering::SeqCst);
                        }
                        processed += 1;
                    }
                }
            })
        }
    };
    // The consumers one after the other: each takes over what the one before left pending.
    let consumers = tokio::spawn(async move {
        consumer("first", Some(1_000)).await.unwrap();
        consumer("second", Some(1_500)).await.unwrap();
        consumer("last", None).await.unwrap();
    });
    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays and consumers")
        .await;
    stop.store(true, Ordering::SeqCst);
    consumers.await.unwrap();
    let client = redis::Client::open(redis_url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut connection)
        .await
        .unwrap();
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// MQTT: 5,000 events relayed by a relay killed twice right after publishing, consumed in a
/// persistent session with manual acknowledgements by consumers of which two die between a
/// commit and its `PUBACK`: the next resumes the session, the broker sends the unacknowledged
/// messages again, and the inbox drops them. Every event applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_mqtt_with_killed_relays_and_consumers_are_applied_once() {
    use outbox::inbox::InboxMessage;
    use outbox::inbox::mqtt::MqttConsumer;
    use outbox::sinks::{Routing, mqtt::MqttSink};
    use outbox_tests::RelayTable;

    let hint = "start Mosquitto with scripts/services.sh";
    let producer = RelayTable::<Pg>::new().await;
    let expected = record_deposits(&producer).await;
    let routing = Routing::template(&format!("{}/{{aggregate_type}}", producer.name)).unwrap();
    let sink = || async {
        MqttSink::connect("mqtt://127.0.0.1:1883")
            .await
            .unwrap_or_else(|e| panic!("{e}; {hint}"))
            .routing(routing.clone())
    };
    let model = Arc::new(ReadModel::new("mqtt").await);
    let duplicates = Arc::new(AtomicUsize::new(0));
    let url = format!("mqtt://127.0.0.1:1883?client_id={}", producer.name);
    let topic = format!("{}/#", producer.name);
    // The session starts, and subscribes, before anything is published.
    let first = MqttConsumer::connect(&url, &topic)
        .await
        .unwrap_or_else(|e| panic!("{e}; {hint}"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Consumes until `dies_after` messages were processed: the next one is committed, never
    // acknowledged, and the consumer is dropped (its connection closed).
    let consume = {
        let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
        move |consumer: MqttConsumer, dies_after: Option<usize>| {
            let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
            async move {
                let mut processed = 0;
                while !stop.load(Ordering::SeqCst) {
                    let Ok(Some(message)) =
                        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
                    else {
                        continue;
                    };
                    let event: serde_json::Value =
                        serde_json::from_slice(&message.payload).unwrap();
                    let id = message.message_id().unwrap();
                    let handler = model.apply(id.clone(), event);
                    if dies_after == Some(processed) {
                        let _ = model
                            .inbox
                            .process(model.db.pool(), "balances", &id, handler)
                            .await
                            .unwrap();
                        return;
                    }
                    let outcome = consumer
                        .process(&model.inbox, model.db.pool(), "balances", &message, handler)
                        .await
                        .unwrap();
                    if outcome.is_duplicate() {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                    processed += 1;
                }
            }
        }
    };
    let consumers = {
        let url = url.clone();
        tokio::spawn(async move {
            consume(first, Some(1_000)).await;
            for dies_after in [Some(1_500), None] {
                let consumer = MqttConsumer::connect(&url, &topic).await.unwrap();
                consume(consumer, dies_after).await;
            }
        })
    };
    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays and consumers")
        .await;
    stop.store(true, Ordering::SeqCst);
    consumers.await.unwrap();
    // A clean start under the consumers' client id ends their session on the broker.
    drop(MqttSink::connect(&url).await.unwrap());
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// A tansu broker of the test's own (stopped when dropped) and, on it, a three-partition topic
/// for the account events of `producer`, which holds the 5,000 deposits: returns the broker, its
/// bootstrap address, the topic and the deposits expected per account.
async fn kafka_run(
    producer: &outbox_tests::RelayTable<Pg>,
) -> (
    outbox_tests::Tansu,
    String,
    String,
    std::collections::HashMap<String, i64>,
) {
    let port = outbox_tests::free_port();
    let broker = outbox_tests::Tansu::start(port, ([127, 0, 0, 1], port).into());
    let bootstrap = format!("127.0.0.1:{port}");
    let expected = record_deposits(producer).await;
    let topic = format!("{}.account", producer.name);
    outbox_tests::kafka_topic(&bootstrap, &topic, 3).await;
    (broker, bootstrap, topic, expected)
}

/// The Kafka sink of the consumer tests: to `<prefix>.<aggregate type>`, one record per produced
/// batch. tansu 0.6 answers a fetch from an offset inside a record batch with the batches that
/// *start* at or after it (its storage lists batches by base offset), so a consumer resuming
/// from an offset in the middle of a batch never sees that batch's remaining records; Apache
/// Kafka returns the batch that holds the offset and the client drops what comes before it.
/// With one record per batch every offset starts a batch, and a resumed consumer reads exactly
/// what Kafka would give it.
async fn tansu_sink(bootstrap: &str, prefix: &str) -> outbox::sinks::kafka::KafkaSink {
    let mut config = outbox::sinks::kafka::rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1");
    let routing =
        outbox::sinks::Routing::template(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    outbox::sinks::kafka::KafkaSink::with_config(config)
        .await
        .unwrap()
        .routing(routing)
}

/// Kafka: 5,000 events relayed to a three-partition topic by a relay killed twice right after
/// publishing, consumed in a consumer group by consumers of which two die between a commit and
/// the commit of its offset: the next member starts from the last committed offsets, and the
/// inbox drops what it reads again. Every event applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_kafka_with_killed_relays_and_consumers_are_applied_once() {
    use outbox::inbox::InboxMessage;
    use outbox::sinks::kafka::rdkafka;
    use outbox_tests::RelayTable;
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let producer = RelayTable::<Pg>::new().await;
    let (_broker, bootstrap, topic, expected) = kafka_run(&producer).await;
    let sink = || tansu_sink(&bootstrap, &producer.name);
    let model = Arc::new(ReadModel::new("kafka").await);
    let duplicates = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    let member = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || -> StreamConsumer {
            let consumer: StreamConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "balances")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            consumer
        }
    };
    // Consumes until `dies_after` records were processed: the next is committed to the
    // database, its offset never, and the member is dropped.
    let consume = {
        let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
        move |consumer: StreamConsumer, dies_after: Option<usize>| {
            let (model, duplicates, stop) = (model.clone(), duplicates.clone(), stop.clone());
            async move {
                let mut processed = 0;
                let mut stopped = stop.subscribe();
                loop {
                    // Stopping is the only cancellation; rdkafka's `recv` is cancel-safe (it
                    // returns a record or leaves it in the client's queue).
                    let record = tokio::select! {
                        record = consumer.recv() => record,
                        _ = stopped.wait_for(|stopped| *stopped) => break,
                    };
                    let record = record.unwrap().detach();
                    let event: serde_json::Value =
                        serde_json::from_slice(record.payload().unwrap()).unwrap();
                    let id = record.message_id().unwrap();
                    let handler = model.apply(id.clone(), event);
                    if dies_after == Some(processed) {
                        let _ = model
                            .inbox
                            .process(model.db.pool(), "balances", &id, handler)
                            .await
                            .unwrap();
                        return;
                    }
                    let outcome = outbox::inbox::kafka::process(
                        &model.inbox,
                        model.db.pool(),
                        "balances",
                        &consumer,
                        &record,
                        handler,
                    )
                    .await
                    .unwrap();
                    if outcome.is_duplicate() {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    }
                    processed += 1;
                }
            }
        }
    };
    let consumers = tokio::spawn(async move {
        for dies_after in [Some(1_000), Some(1_500), None] {
            consume(member(), dies_after).await;
        }
    });
    relay_killed_twice(&producer, sink).await;
    model
        .assert_applied_once(&expected, &duplicates, "the killed relays and consumers")
        .await;
    stop.send_replace(true);
    consumers.await.unwrap();
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// Kafka offset mode: 5,000 events relayed to a three-partition topic by a relay killed twice
/// right after publishing (so the topic holds some events twice), consumed by `OffsetConsumer`s
/// of one group that keep their offsets in the read model's database. The first member dies
/// right after a commit; its successor resumes from the stored offsets; a third member joins in
/// the middle of the run (a rebalance splits the partitions between the two) and later dies too
/// (a rebalance gives them back). Every record of the topic is applied exactly once — an event
/// the relay published twice sits at two offsets and is applied twice, which is what offset mode
/// promises and why the inbox exists — none is skipped, and no member reads a record below its
/// partition's stored offset (each resumed from the database, not from the topic's start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_offset_mode_applies_every_record_once_across_deaths_and_rebalances() {
    use outbox::inbox::Offsets;
    use outbox::inbox::kafka::OffsetConsumer;
    use outbox::sinks::kafka::rdkafka;
    use outbox_tests::RelayTable;
    use rdkafka::Message as _;

    let producer = RelayTable::<Pg>::new().await;
    let (_broker, bootstrap, topic, expected) = kafka_run(&producer).await;
    let sink = || tansu_sink(&bootstrap, &producer.name);
    let model = Arc::new(ReadModel::new("kafka_offsets").await);
    let offsets = Offsets::for_table(TableName::new(format!("offsets_{}", run_id())).unwrap());
    offsets.migrate(model.db.pool()).await.unwrap();
    let duplicates = Arc::new(AtomicUsize::new(0));
    let applied = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::watch::channel(false).0);
    let member = {
        let (bootstrap, topic, offsets) = (bootstrap.clone(), topic.clone(), offsets.clone());
        let pool = model.db.pool().clone();
        move || {
            let mut config = rdkafka::ClientConfig::new();
            config
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "balances")
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500");
            let consumer = OffsetConsumer::new(&config, pool.clone(), offsets.clone()).unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            consumer
        }
    };
    // Consumes until `dies_after` records were applied (dropped right after that commit), or
    // until stopped; returns how many it applied.
    let consume = {
        let (model, duplicates, applied, stop) = (
            model.clone(),
            duplicates.clone(),
            applied.clone(),
            stop.clone(),
        );
        move |consumer: OffsetConsumer<sqlx::Postgres>, dies_after: Option<usize>| {
            let (model, duplicates, applied, stop) = (
                model.clone(),
                duplicates.clone(),
                applied.clone(),
                stop.clone(),
            );
            async move {
                let mut processed = 0;
                let mut stopped = stop.subscribe();
                while dies_after != Some(processed) {
                    let record = tokio::select! {
                        record = consumer.recv() => record.unwrap(),
                        _ = stopped.wait_for(|stopped| *stopped) => break,
                    };
                    let event: serde_json::Value =
                        serde_json::from_slice(record.payload().unwrap()).unwrap();
                    let id = outbox::inbox::InboxMessage::message_id(&record).unwrap();
                    let outcome = consumer
                        .process(&record, model.apply(id, event))
                        .await
                        .unwrap();
                    if outcome.is_duplicate() {
                        duplicates.fetch_add(1, Ordering::SeqCst);
                    } else {
                        processed += 1;
                        applied.fetch_add(1, Ordering::SeqCst);
                    }
                }
                processed
            }
        }
    };
    let (first, second) = (consume.clone(), consume.clone());
    let steady = tokio::spawn({
        let member = member.clone();
        async move {
            first(member(), Some(1_000)).await;
            second(member(), None).await
        }
    });
    let joiner = tokio::spawn({
        let applied = applied.clone();
        async move {
            outbox_tests::eventually(Duration::from_secs(120), "1,800 records applied", || {
                let applied = applied.load(Ordering::SeqCst);
                async move { applied >= 1_800 }
            })
            .await;
            consume(member(), Some(600)).await
        }
    });
    relay_killed_twice(&producer, sink).await;

    // What the topic holds, read with Kafka's client: the number of records of each event.
    let log = outbox::audit::read::kafka(&bootstrap, &topic)
        .await
        .unwrap();
    let mut records = std::collections::HashMap::<String, i64>::new();
    for observed in &log {
        *records
            .entry(observed.id.expect("an outbox event id").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        records.len() as i64,
        EVENTS,
        "events missing from the topic"
    );
    let total = log.len() as i64;
    assert!(
        total > EVENTS,
        "the killed relays published nothing twice: the test proves less than it says"
    );
    let sum = format!(
        "SELECT COALESCE(SUM(times), 0)::BIGINT FROM {}",
        model.applied
    );
    outbox_tests::eventually(Duration::from_secs(120), "every record applied", || async {
        model.db.scalar(sum.clone()).await >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let second = steady.await.unwrap();
    let joined = joiner.await.unwrap();
    assert_eq!(
        joined, 600,
        "the member that joined got no partition: no rebalance"
    );
    assert!(second > 0);

    // Each record applied once: every event as often as the topic holds it, none skipped.
    let times: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event_id, times FROM {}",
        model.applied
    )))
    .fetch_all(model.db.pool())
    .await
    .unwrap();
    assert_eq!(times.len() as i64, EVENTS, "events never applied");
    for (id, times) in &times {
        assert_eq!(times, &records[id], "event {id}: applied {times} times");
    }
    assert_eq!(
        duplicates.load(Ordering::SeqCst),
        0,
        "a member read records below its partition's stored offset: it did not resume from it"
    );
    // The balances are the side effects of exactly those applications, and of the right events.
    let balances: Vec<(String, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT b.account, b.cents, SUM(a.amount * a.times)::BIGINT, SUM(a.amount)::BIGINT \
         FROM {} b JOIN {} a ON a.account = b.account GROUP BY b.account, b.cents",
        model.balances, model.applied
    )))
    .fetch_all(model.db.pool())
    .await
    .unwrap();
    assert_eq!(balances.len(), expected.len());
    for (account, cents, applications, once) in balances {
        assert_eq!(cents, applications, "balance of {account}");
        assert_eq!(once, expected[&account], "events of {account}");
    }
    let stored: i64 = offsets
        .stored(model.db.pool(), "balances", &topic)
        .await
        .unwrap()
        .iter()
        .map(|&(_, next)| next)
        .sum();
    assert_eq!(stored, total, "the stored offsets are past every record");
    eprintln!(
        "{total} records of {EVENTS} events applied once each; members applied 1,000 + {second} + {joined}"
    );
    model
        .db
        .execute(format!("DROP TABLE {}", offsets.table()))
        .await;
    Arc::into_inner(model).unwrap().drop_tables().await;
    producer.drop_table().await;
}

/// A handler whose side effect is one more in `effects`.
fn count_effect(
    effects: Arc<AtomicUsize>,
) -> impl for<'c> FnOnce(
    &'c mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> outbox::inbox::Handler<'c, (), BoxError> {
    move |_| {
        Box::pin(async move {
            effects.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_message_redelivered_after_a_crash_before_its_ack_is_dropped() {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    use outbox::relay::Relay;
    use outbox_tests::RelayTable;

    let producer = RelayTable::<Pg>::new().await;
    let prefix = producer.name.clone();
    let (sink, stream) = outbox_tests::nats_stream(&prefix).await;
    let mut tx = producer.pool.begin().await.unwrap();
    let event = outbox::Event::new("account", "Opened", Some(7), &serde_json::json!({})).unwrap();
    let event_id = producer.outbox.record(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let relay = tokio::spawn(
        Relay::builder(producer.pool.clone(), sink.clone())
            .outbox(&producer.outbox)
            .build()
            .run(std::future::pending()),
    );

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("inbox-test".into()),
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let db = Pg::connect().await;
    let inbox = Inbox::for_table(TableName::new(format!("inbox_nats_{}", run_id())).unwrap());
    inbox.migrate(db.pool()).await.unwrap();
    let effects = Arc::new(AtomicUsize::new(0));
    // First delivery: processed and committed, then the consumer "crashes" before its ack.
    let first = messages.next().await.unwrap().unwrap();
    let id = outbox::inbox::InboxMessage::message_id(&first).unwrap();
    assert_eq!(id, event_id.to_string(), "the id is the outbox event id");
    let outcome = inbox
        .process(db.pool(), "nats-test", &id, count_effect(effects.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, Processed::Done(()));
    drop(first);

    // JetStream redelivers it after `ack_wait`: the helper finds the id, skips the handler, acks.
    let again = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a redelivery")
        .unwrap()
        .unwrap();
    assert!(again.info().unwrap().delivered >= 2);
    let outcome = outbox::inbox::nats::process(
        &inbox,
        db.pool(),
        "nats-test",
        &again,
        count_effect(effects.clone()),
    )
    .await
    .unwrap();
    assert!(outcome.is_duplicate());
    assert_eq!(effects.load(Ordering::SeqCst), 1);
    // Acknowledged: nothing comes back.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .is_err(),
        "the duplicate was not acknowledged"
    );

    relay.abort();
    sink.jetstream()
        .delete_stream(prefix.to_uppercase())
        .await
        .unwrap();
    db.execute(format!("DROP TABLE {}", inbox.table())).await;
    producer.drop_table().await;
}
