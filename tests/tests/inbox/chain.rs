//! `#[inbox_handler]`, and a consumer that is also a producer.

use super::*;

mod service {
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
pub(super) async fn chain_setup(db: &Pg) {
    service::INBOX.migrate(db.pool()).await.unwrap();
    service::OUTBOX.migrate(db.pool()).await.unwrap();
    db.execute(
        "BEGIN; SELECT pg_advisory_xact_lock(7340); \
         CREATE TABLE IF NOT EXISTS welcomed_chain_test (account TEXT NOT NULL); COMMIT"
            .into(),
    )
    .await;
}

/// A relayed `AccountOpened` for `account`, as a consumer receives it.
pub(super) async fn opened_message(pool: &sqlx::PgPool, account: &str) -> outbox::relay::Message {
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
    let first = service::deliver(&pool, &message).await.unwrap();
    assert_eq!(first, Processed::Done(account.clone()));
    for _ in 0..2 {
        assert!(
            service::deliver(&pool, &message)
                .await
                .unwrap()
                .is_duplicate()
        );
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (pool, message) = (pool.clone(), message.clone());
            tokio::spawn(async move { service::deliver(&pool, &message).await.unwrap() })
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
    let error = service::deliver(&pool, &message).await.unwrap_err();
    assert!(matches!(error, service::AppError::Json(_)), "{error}");
    let entries = db
        .scalar(format!(
            "SELECT COUNT(*) FROM inbox_chain_test WHERE message_id = '{}'",
            message.id
        ))
        .await;
    assert_eq!(entries, 0, "a failed handler recorded the message id");
    message.payload = good_payload;
    assert_eq!(
        service::deliver(&pool, &message).await.unwrap(),
        Processed::Done(account)
    );
}

// --- End to end: producer, relay (killed twice), RabbitMQ, consumer with its inbox ------------
