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

mod cancellation;
mod chain;
mod kafka;
mod killed_relays;
mod per_database;
mod redelivery;
