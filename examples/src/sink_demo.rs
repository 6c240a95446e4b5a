//! What the broker examples share: a SQLite outbox holding a few committed events, and a relay
//! run into a sink until the outbox is empty. Each `sink-*` example is this plus the few lines
//! that set up its broker's sink.

use std::time::Duration;

use outbox::outbox_event;
use outbox::relay::{Delivery, Message, Relay, Sink};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Sqlite, Transaction};

use crate::{Account, BankError};

/// Opens an account; its `AccountOpenedEvent` is recorded in `tx`.
#[outbox_event]
async fn open_account(tx: &mut Transaction<'_, Sqlite>, owner: &str) -> Result<Account, BankError> {
    let account = sqlx::query_as(
        "INSERT INTO accounts (owner, balance_cents, spending_limit_cents) VALUES (?, 0, 100000) \
         RETURNING id, owner, balance_cents, spending_limit_cents",
    )
    .bind(owner)
    .fetch_one(&mut **tx)
    .await?;
    Ok(account)
}

/// A fresh SQLite database at `path` whose outbox holds three `AccountOpenedEvent`s (a fourth
/// account was opened in a transaction that rolled back: its event is not there).
pub async fn bank_with_events(path: &std::path::Path) -> Result<SqlitePool, BankError> {
    let _ = std::fs::remove_file(path);
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await?;
    outbox::migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, \
         balance_cents INTEGER NOT NULL, spending_limit_cents INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let mut tx = pool.begin().await?;
    for owner in ["Ada", "Grace", "Edsger"] {
        open_account(&mut tx, owner).await?;
    }
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    open_account(&mut tx, "Rolled Back").await?;
    tx.rollback().await?;
    Ok(pool)
}

/// Prints each message the inner sink delivered.
struct Printing<K>(K);

impl<K: Sink> Sink for Printing<K> {
    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let results = self.0.publish(batch).await;
        for (message, result) in batch.iter().zip(&results) {
            match result {
                Ok(()) => println!(
                    "published {} of {} {}  (message id {})",
                    message.event_type, message.aggregate_type, message.aggregate_id, message.id
                ),
                Err(error) => println!("not yet published {}: {error}", message.id),
            }
        }
        results
    }

    fn keeps_order(&self) -> bool {
        self.0.keeps_order()
    }
}

/// Relays the outbox of `pool` into `sink` until it is empty (at most 30 s), then prints how
/// many events were published and how many are left.
pub async fn relay_until_empty<K: Sink>(pool: &SqlitePool, sink: K) -> Result<(), BankError> {
    let count = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(pool);
    let recorded = count().await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(pool.clone(), Printing(sink))
            .build()
            .run(async {
                let _ = stopped.await;
            }),
    );
    for _ in 0..300 {
        if count().await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let _ = relay.await;
    let left = count().await?;
    println!(
        "\n{} events published; {left} left in the outbox.",
        recorded - left
    );
    Ok(())
}

/// The database file of an example: the first argument, else one in the temporary directory.
pub fn database_path(example: &str) -> std::path::PathBuf {
    std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("outbox-{example}.db")))
}
