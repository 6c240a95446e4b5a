//! Transactional recording against the real databases: every guarantee of the write path, once
//! per dialect (PostgreSQL, MariaDB/MySQL, SQLite).
#![allow(clippy::unwrap_used)]

use outbox::{Error, Outbox, OutboxEvent, TableName, outbox_event};
use outbox_tests::{Lite, My, Pg, TestDb, run_id};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
pub struct Account {
    #[outbox(aggregate_id)]
    pub id: String,
    pub owner: String,
}

/// An entity whose id is assigned by the database: `None` until it is stored.
#[derive(Debug, Serialize, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountDrafted")]
pub struct Draft {
    #[outbox(aggregate_id)]
    pub id: Option<String>,
    pub owner: String,
}

/// A plain `Serialize` type: described by the attribute's arguments, no derive.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    pub from: String,
    pub to: String,
    pub amount_cents: i64,
    pub memo: String,
    pub details: Details,
}

#[derive(Debug, Clone, Serialize)]
pub struct Details {
    pub tags: Vec<String>,
    pub nested: Option<Box<Details>>,
    pub blob: String,
}

#[derive(Debug)]
pub enum AppError {
    Db(sqlx::Error),
    Outbox(Error),
    Refused,
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Db(e)
    }
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Outbox(e)
    }
}

const CUSTOM: Outbox = Outbox::for_table(TableName::from_static("outbox_custom_table_test"));
const SMALL: Outbox = Outbox::new().max_payload_bytes(1024);

fn transfer(from: &str, memo: &str, blob_len: usize) -> Transfer {
    Transfer {
        from: from.to_owned(),
        to: "acc-2".to_owned(),
        amount_cents: 12_345,
        memo: memo.to_owned(),
        details: Details {
            tags: vec![
                "ünïcödé".into(),
                "日本語".into(),
                "emoji 🚀".into(),
                "quote \" and \\".into(),
            ],
            nested: Some(Box::new(Details {
                tags: vec![],
                nested: None,
                blob: "inner".into(),
            })),
            blob: "x".repeat(blob_len),
        },
    }
}

macro_rules! dialect_tests {
    ($module:ident, $harness:ty, $db:ty, $conn:ty) => {
        mod $module {
            use super::*;
            use sqlx::Transaction;

            type H = $harness;

            #[outbox_event]
            async fn open_account(
                tx: &mut Transaction<'_, $db>,
                id: &str,
                owner: &str,
            ) -> Result<Account, AppError> {
                sqlx::query(<H as TestDb>::INSERT_ACCOUNT)
                    .bind(id)
                    .bind(owner)
                    .execute(&mut **tx)
                    .await?;
                Ok(Account {
                    id: id.to_owned(),
                    owner: owner.to_owned(),
                })
            }

            /// Writes the business row, then fails through an early `return`.
            #[outbox_event]
            async fn open_account_then_refuse(
                tx: &mut Transaction<'_, $db>,
                id: &str,
            ) -> Result<Account, AppError> {
                sqlx::query(<H as TestDb>::INSERT_ACCOUNT)
                    .bind(id)
                    .bind("refused")
                    .execute(&mut **tx)
                    .await?;
                if !id.is_empty() {
                    return Err(AppError::Refused);
                }
                Ok(Account {
                    id: id.to_owned(),
                    owner: "refused".to_owned(),
                })
            }

            #[outbox_event]
            async fn open_on_connection(conn: &mut $conn, id: &str) -> Result<Account, AppError> {
                Ok(Account {
                    id: id.to_owned(),
                    owner: "autocommit".to_owned(),
                })
            }

            #[outbox_event]
            async fn draft(tx: &mut Transaction<'_, $db>, id: Option<String>) -> Result<Draft, AppError> {
                let _ = &tx;
                Ok(Draft {
                    id,
                    owner: "draft".to_owned(),
                })
            }

            #[outbox_event(
                aggregate_type = "transfer",
                event_type = "MoneyTransferred",
                aggregate_id = |t| t.from.clone()
            )]
            async fn record_transfer(
                tx: &mut Transaction<'_, $db>,
                transfer: Transfer,
            ) -> Result<Transfer, AppError> {
                let _ = &tx;
                Ok(transfer)
            }

            #[outbox_event(event_type = "AccountRenamed")]
            async fn rename(tx: &mut Transaction<'_, $db>, id: &str, owner: &str) -> Result<Account, AppError> {
                let _ = &tx;
                Ok(Account {
                    id: id.to_owned(),
                    owner: owner.to_owned(),
                })
            }

            #[outbox_event(outbox = CUSTOM)]
            async fn open_in_custom_table(tx: &mut Transaction<'_, $db>, id: &str) -> Result<Account, AppError> {
                let _ = &tx;
                Ok(Account {
                    id: id.to_owned(),
                    owner: "custom".to_owned(),
                })
            }

            #[outbox_event(outbox = SMALL, aggregate_type = "transfer", event_type = "Big", aggregate_id = |t| &t.from)]
            async fn record_with_small_limit(
                tx: &mut Transaction<'_, $db>,
                transfer: Transfer,
            ) -> Result<Transfer, AppError> {
                let _ = &tx;
                Ok(transfer)
            }

            /// Published an hour after it commits.
            #[outbox_event(delay = std::time::Duration::from_secs(3600))]
            async fn open_with_reminder(tx: &mut Transaction<'_, $db>, id: &str) -> Result<Account, AppError> {
                let _ = &tx;
                Ok(Account {
                    id: id.to_owned(),
                    owner: "reminded".to_owned(),
                })
            }

            /// Delayed or not, as the entity says.
            #[outbox_event(delay = |account| (account.owner == "later").then(|| std::time::Duration::from_secs(60)))]
            async fn open_maybe_later(tx: &mut Transaction<'_, $db>, id: &str, owner: &str) -> Result<Account, AppError> {
                let _ = &tx;
                Ok(Account {
                    id: id.to_owned(),
                    owner: owner.to_owned(),
                })
            }

            #[tokio::test]
            async fn the_attribute_delays_what_it_is_told_to() {
                let db = H::connect().await;
                let run = run_id();
                let mut tx = db.pool().begin().await.unwrap();
                open_with_reminder(&mut tx, &format!("{run}-1")).await.unwrap();
                open_maybe_later(&mut tx, &format!("{run}-2"), "later").await.unwrap();
                open_maybe_later(&mut tx, &format!("{run}-3"), "now").await.unwrap();
                tx.commit().await.unwrap();
                let count = |condition: &str| {
                    db.scalar(format!(
                        "SELECT count(*) FROM outbox WHERE aggregate_id LIKE '{run}%' AND {condition}"
                    ))
                };
                assert_eq!(count("scheduled").await, 2);
                assert_eq!(count("NOT scheduled").await, 1);
            }

            struct AccountService {
                owner: String,
            }

            impl AccountService {
                /// A method: `&self` plus the transaction.
                #[outbox_event]
                async fn open(&self, tx: &mut Transaction<'_, $db>, id: &str) -> Result<Account, AppError> {
                    open_account(tx, id, &self.owner).await?;
                    Ok(Account {
                        id: id.to_owned(),
                        owner: self.owner.clone(),
                    })
                }
            }

            #[tokio::test]
            async fn committed_call_records_exactly_one_row_with_the_entity_as_payload() {
                let db = H::connect().await;
                let run = run_id();
                let id = format!("{run}-1");
                let mut tx = db.pool().begin().await.unwrap();
                let account = open_account(&mut tx, &id, "Ada").await.unwrap();
                tx.commit().await.unwrap();

                assert_eq!(account, Account { id: id.clone(), owner: "Ada".into() });
                assert_eq!(db.accounts(&run).await, 1);
                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.len(), 1, "{rows:?}");
                let row = &rows[0];
                assert_eq!(row.aggregate_type, "account");
                assert_eq!(row.aggregate_id, id);
                assert_eq!(row.event_type, "AccountOpened");
                assert_eq!(row.payload, serde_json::to_value(&account).unwrap());
                assert_eq!(row.id.get_version_num(), 7, "event ids are UUIDv7");
                assert_eq!(row.attempts, 0);
                assert!(!row.published);
            }

            #[tokio::test]
            async fn rolled_back_transaction_records_nothing() {
                let db = H::connect().await;
                let run = run_id();
                let mut tx = db.pool().begin().await.unwrap();
                open_account(&mut tx, &format!("{run}-1"), "Ada").await.unwrap();
                tx.rollback().await.unwrap();

                // Dropping an uncommitted transaction rolls back too.
                let mut tx = db.pool().begin().await.unwrap();
                open_account(&mut tx, &format!("{run}-2"), "Bob").await.unwrap();
                drop(tx);

                assert_eq!(db.accounts(&run).await, 0);
                assert!(db.outbox_rows("outbox", &run).await.is_empty());
            }

            #[tokio::test]
            async fn err_return_records_nothing_even_when_the_transaction_commits() {
                let db = H::connect().await;
                let run = run_id();
                let mut tx = db.pool().begin().await.unwrap();
                let result = open_account_then_refuse(&mut tx, &format!("{run}-1")).await;
                assert!(matches!(result, Err(AppError::Refused)), "{result:?}");
                tx.commit().await.unwrap();

                assert_eq!(db.accounts(&run).await, 1, "the business row was committed");
                assert!(db.outbox_rows("outbox", &run).await.is_empty());
            }

            #[tokio::test]
            async fn autocommit_connection_is_refused_and_nothing_is_written() {
                let db = H::connect().await;
                let run = run_id();
                let mut conn = db.pool().acquire().await.unwrap();
                let result = open_on_connection(&mut conn, &format!("{run}-1")).await;
                match result {
                    Err(AppError::Outbox(Error::NoTransaction { event_type, table, dialect })) => {
                        assert_eq!(event_type, "AccountOpened");
                        assert_eq!(table, "outbox");
                        assert_eq!(dialect, <$db as sqlx::Database>::NAME);
                    }
                    other => panic!("expected NoTransaction, got {other:?}"),
                }
                assert!(db.outbox_rows("outbox", &run).await.is_empty());

                // The same connection inside a transaction is accepted.
                let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                open_on_connection(&mut tx, &format!("{run}-2")).await.unwrap();
                tx.commit().await.unwrap();
                assert_eq!(db.outbox_rows("outbox", &run).await.len(), 1);
            }

            #[tokio::test]
            async fn several_calls_in_one_transaction_are_recorded_in_call_order() {
                let db = H::connect().await;
                let run = run_id();
                let service = AccountService { owner: "Service".into() };
                let mut tx = db.pool().begin().await.unwrap();
                let mut expected = Vec::new();
                for i in 0..5 {
                    let id = format!("{run}-{i}");
                    if i % 2 == 0 {
                        open_account(&mut tx, &id, "Ada").await.unwrap();
                        expected.push((id, "Ada"));
                    } else {
                        // The method calls `open_account` (one event), then records its own.
                        service.open(&mut tx, &id).await.unwrap();
                        expected.push((id.clone(), "Service"));
                        expected.push((id, "Service"));
                    }
                }
                tx.commit().await.unwrap();

                let rows = db.outbox_rows("outbox", &run).await;
                let seen: Vec<_> = rows
                    .iter()
                    .map(|r| (r.aggregate_id.clone(), r.payload["owner"].as_str().unwrap().to_owned()))
                    .collect();
                let expected: Vec<_> = expected.into_iter().map(|(id, owner)| (id, owner.to_owned())).collect();
                assert_eq!(seen, expected);
                assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq && w[0].id < w[1].id));
            }

            #[tokio::test]
            async fn fifty_concurrent_transactions_half_rolled_back_record_exactly_the_committed_half() {
                let db = std::sync::Arc::new(H::connect().await);
                let run = run_id();
                let mut tasks = Vec::new();
                for i in 0..50 {
                    let db = db.clone();
                    let id = format!("{run}-{i:02}");
                    tasks.push(tokio::spawn(async move {
                        let mut tx = db.pool().begin().await.unwrap();
                        open_account(&mut tx, &id, "Concurrent").await.unwrap();
                        tokio::task::yield_now().await;
                        if i % 2 == 0 {
                            tx.commit().await.unwrap();
                        } else {
                            tx.rollback().await.unwrap();
                        }
                    }));
                }
                for task in tasks {
                    task.await.unwrap();
                }
                let mut recorded: Vec<_> = db
                    .outbox_rows("outbox", &run)
                    .await
                    .into_iter()
                    .map(|r| r.aggregate_id)
                    .collect();
                recorded.sort();
                let committed: Vec<_> = (0..50).step_by(2).map(|i| format!("{run}-{i:02}")).collect();
                assert_eq!(recorded, committed);
                assert_eq!(db.accounts(&run).await, 25);
            }

            #[tokio::test]
            async fn unicode_nested_and_one_mebibyte_payloads_round_trip() {
                let db = H::connect().await;
                let run = run_id();
                let small = transfer(&format!("{run}-a"), "ünïcödé ✓ — 日本語 — 🚀", 10);
                let big = transfer(&format!("{run}-b"), "big", 1024 * 1024);
                let mut tx = db.pool().begin().await.unwrap();
                record_transfer(&mut tx, small.clone()).await.unwrap();
                record_transfer(&mut tx, big.clone()).await.unwrap();
                tx.commit().await.unwrap();

                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.len(), 2);
                assert_eq!(rows[0].aggregate_type, "transfer");
                assert_eq!(rows[0].event_type, "MoneyTransferred");
                assert_eq!(rows[0].payload, serde_json::to_value(&small).unwrap());
                assert_eq!(rows[1].payload, serde_json::to_value(&big).unwrap());
                assert!(serde_json::to_string(&big).unwrap().len() > 1024 * 1024);
            }

            #[tokio::test]
            async fn missing_aggregate_id_is_not_persisted_and_writes_nothing() {
                let db = H::connect().await;
                let run = run_id();
                let mut tx = db.pool().begin().await.unwrap();
                match draft(&mut tx, None).await {
                    Err(AppError::Outbox(Error::NotPersisted { aggregate_type, event_type })) => {
                        assert_eq!((aggregate_type.as_str(), event_type.as_str()), ("account", "AccountDrafted"));
                    }
                    other => panic!("expected NotPersisted, got {other:?}"),
                }
                draft(&mut tx, Some(format!("{run}-1"))).await.unwrap();
                tx.commit().await.unwrap();
                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].event_type, "AccountDrafted");
            }

            #[tokio::test]
            async fn arguments_override_the_derive() {
                let db = H::connect().await;
                let run = run_id();
                let mut tx = db.pool().begin().await.unwrap();
                rename(&mut tx, &format!("{run}-1"), "Renamed").await.unwrap();
                tx.commit().await.unwrap();
                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].aggregate_type, "account", "kept from the derive");
                assert_eq!(rows[0].event_type, "AccountRenamed", "overridden");
            }

            #[tokio::test]
            async fn custom_table_is_migrated_and_recorded_into() {
                let db = H::connect().await;
                let run = run_id();
                CUSTOM.migrate(db.pool()).await.unwrap();
                CUSTOM.migrate(db.pool()).await.unwrap(); // idempotent
                let mut tx = db.pool().begin().await.unwrap();
                open_in_custom_table(&mut tx, &format!("{run}-1")).await.unwrap();
                tx.commit().await.unwrap();
                assert_eq!(db.outbox_rows("outbox_custom_table_test", &run).await.len(), 1);
                assert!(db.outbox_rows("outbox", &run).await.is_empty());
            }

            #[tokio::test]
            async fn oversized_payload_is_refused_before_anything_is_sent() {
                let db = H::connect().await;
                let run = run_id();
                let mut tx = db.pool().begin().await.unwrap();
                let result = record_with_small_limit(&mut tx, transfer(&format!("{run}-1"), "big", 2048)).await;
                match result {
                    Err(AppError::Outbox(Error::PayloadTooLarge { size, limit, .. })) => {
                        assert!(size > 2048);
                        assert_eq!(limit, 1024);
                    }
                    other => panic!("expected PayloadTooLarge, got {other:?}"),
                }
                // The transaction is still usable: nothing was sent.
                record_with_small_limit(&mut tx, transfer(&format!("{run}-2"), "small", 10)).await.unwrap();
                tx.commit().await.unwrap();
                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].aggregate_id, format!("{run}-2"));
            }

            #[tokio::test]
            async fn empty_or_oversized_metadata_is_refused_before_anything_is_sent() {
                let db = H::connect().await;
                let run = run_id();
                let payload = serde_json::json!({ "ok": true });
                let mut tx = db.pool().begin().await.unwrap();
                let no_type = outbox::Event::new("", "Opened", Some(format!("{run}-1")), &payload).unwrap();
                match outbox::record(&mut *tx, &no_type).await {
                    Err(Error::InvalidMetadata { field, problem, .. }) => {
                        assert_eq!((field, problem.as_str()), ("aggregate_type", "is empty"));
                    }
                    other => panic!("expected InvalidMetadata, got {other:?}"),
                }
                let long_id = format!("{run}-{}", "x".repeat(300));
                let too_long = outbox::Event::new("account", "Opened", Some(long_id), &payload).unwrap();
                match outbox::record(&mut *tx, &too_long).await {
                    Err(Error::InvalidMetadata { field, problem, .. }) => {
                        assert_eq!(field, "aggregate_id");
                        assert!(problem.contains("over the limit of 255"), "{problem}");
                    }
                    other => panic!("expected InvalidMetadata, got {other:?}"),
                }
                // Nothing was sent: the transaction is still usable.
                let fine = outbox::Event::new("account", "Opened", Some(format!("{run}-2")), &payload).unwrap();
                outbox::record(&mut *tx, &fine).await.unwrap();
                tx.commit().await.unwrap();
                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].aggregate_id, format!("{run}-2"));
            }

            #[tokio::test]
            async fn manual_api_records_like_the_attribute() {
                let db = H::connect().await;
                let run = run_id();
                let account = Account { id: format!("{run}-1"), owner: "Manual".into() };
                let t = transfer(&format!("{run}-2"), "manual", 1);
                let mut tx = db.pool().begin().await.unwrap();
                let first = outbox::record(&mut *tx, &account).await.unwrap();
                let event = outbox::Event::new("transfer", "ManualTransfer", Some(&t.from), &t).unwrap();
                let second = outbox::record(&mut *tx, &event).await.unwrap();
                tx.commit().await.unwrap();
                let rows = db.outbox_rows("outbox", &run).await;
                assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![first, second]);
                assert_eq!(rows[1].event_type, "ManualTransfer");
                assert_eq!(rows[1].payload, serde_json::to_value(&t).unwrap());
            }

            #[tokio::test]
            async fn migrate_is_idempotent_and_safe_to_run_concurrently() {
                let db = std::sync::Arc::new(H::connect().await);
                let table = format!("outbox_migrate_{}", run_id());
                let outbox = Outbox::for_table(TableName::new(table.clone()).unwrap());
                let runs = (0..4).map(|_| {
                    let (db, outbox) = (db.clone(), outbox.clone());
                    tokio::spawn(async move { outbox.migrate(db.pool()).await })
                });
                for run in futures::future::join_all(runs).await {
                    run.unwrap().unwrap();
                }
                outbox.migrate(db.pool()).await.unwrap();
                assert!(db.outbox_rows(&table, "").await.is_empty());
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
                    .execute(db.pool())
                    .await
                    .unwrap();
            }
        }
    };
}

dialect_tests!(postgres, Pg, sqlx::Postgres, sqlx::PgConnection);
dialect_tests!(mysql, My, sqlx::MySql, sqlx::MySqlConnection);
dialect_tests!(sqlite, Lite, sqlx::Sqlite, sqlx::SqliteConnection);

// --- Headers: from the outbox's source, overridden by the event's own -------------------------

fn trace_context() -> Vec<(String, String)> {
    vec![
        ("traceparent".into(), "00-from-the-source-01".into()),
        ("service".into(), "bank".into()),
    ]
}

const TRACED: Outbox =
    Outbox::for_table(TableName::from_static("outbox_headers_test")).header_source(trace_context);

#[outbox_event(outbox = TRACED)]
async fn open_traced(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &str,
) -> Result<Account, Error> {
    let _ = &mut *tx;
    Ok(Account {
        id: id.to_owned(),
        owner: "Ada".into(),
    })
}

#[tokio::test]
async fn headers_come_from_the_source_and_the_event_overrides_them() {
    let db = Pg::connect().await;
    TRACED.migrate(db.pool()).await.unwrap();
    let (by_attribute, by_event) = (format!("attr-{}", run_id()), format!("event-{}", run_id()));
    let mut tx = db.pool().begin().await.unwrap();
    open_traced(&mut tx, &by_attribute).await.unwrap();
    let event = outbox::Event::new("account", "Opened", Some(&by_event), &serde_json::json!({}))
        .unwrap()
        .header("traceparent", "00-from-the-event-01")
        .header("tenant", "t1");
    TRACED.record(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();

    let headers = |id: String| {
        let pool = db.pool().clone();
        async move {
            let text: String = sqlx::query_scalar(
                "SELECT headers::text FROM outbox_headers_test WHERE aggregate_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
    };
    assert_eq!(
        headers(by_attribute).await,
        serde_json::json!({ "traceparent": "00-from-the-source-01", "service": "bank" })
    );
    assert_eq!(
        headers(by_event).await,
        serde_json::json!({
            "traceparent": "00-from-the-event-01",
            "service": "bank",
            "tenant": "t1"
        })
    );
    // Without a source or event headers, nothing is stored.
    let plain = Outbox::for_table(TableName::from_static("outbox_headers_test"));
    let id = format!("plain-{}", run_id());
    let mut tx = db.pool().begin().await.unwrap();
    let event = outbox::Event::new("account", "Opened", Some(&id), &serde_json::json!({})).unwrap();
    plain.record(&mut *tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT headers::text FROM outbox_headers_test WHERE aggregate_id = $1")
            .bind(id)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(stored, None);
}
