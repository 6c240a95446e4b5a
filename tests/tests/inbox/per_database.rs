//! The inbox and the consumer offsets on each database: one effect per message however often
//! it is delivered, no trace of a failed attempt, purging, and the refusals.

use super::*;

pub(super) async fn the_same_message_ten_times_has_one_effect<D: TestDb>()
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

pub(super) async fn a_failing_handler_leaves_no_trace_and_the_retry_succeeds<D: TestDb>()
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

pub(super) async fn purge_keeps_entries_younger_than_the_retention<D: TestDb>()
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

pub(super) async fn record_refuses_bad_keys_and_connections_outside_a_transaction<D: TestDb>()
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
pub(super) async fn offsets_fixture<D: TestDb>() -> (Fixture<D>, Offsets)
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
pub(super) async fn apply_at<DB: Dialect>(
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

pub(super) async fn offsets_apply_each_record_once_and_resume_past_it<D: TestDb>()
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

pub(super) async fn a_failing_handler_leaves_the_offset_where_it_was<D: TestDb>()
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

pub(super) async fn offsets_refuse_bad_positions_and_connections_outside_a_transaction<D: TestDb>()
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
