//! What the broker examples share: a SQLite outbox holding a few committed events, a relay run
//! into a sink until the outbox is empty, and — for the brokers with an inbox helper — a read
//! model that consumes them back exactly once. Each `sink-*` example is this plus the few lines
//! that set up its broker's sink and consumer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::inbox::{Handler, Inbox, Processed};
use outbox::relay::{Delivery, Message, Relay, Sink};
use outbox::{TableName, outbox_event};
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

/// Prints each message the inner sink delivered, and keeps their ids.
struct Printing<K> {
    sink: K,
    published: Arc<Mutex<HashSet<String>>>,
}

impl<K: Sink> Sink for Printing<K> {
    async fn publish(&self, batch: &[Message]) -> Vec<Delivery> {
        let results = self.sink.publish(batch).await;
        for (message, result) in batch.iter().zip(&results) {
            match result {
                Ok(()) => {
                    self.published
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(message.id.to_string());
                    println!(
                        "published {} of {} {}  (message id {})",
                        message.event_type,
                        message.aggregate_type,
                        message.aggregate_id,
                        message.id
                    )
                }
                Err(error) => println!("not yet published {}: {error}", message.id),
            }
        }
        results
    }

    fn keeps_order(&self) -> bool {
        self.sink.keeps_order()
    }
}

/// Relays the outbox of `pool` into `sink` until it is empty (at most 30 s), then prints how
/// many events were published and how many are left. Returns the ids of the events published.
pub async fn relay_until_empty<K: Sink>(
    pool: &SqlitePool,
    sink: K,
) -> Result<HashSet<String>, BankError> {
    let count = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(pool);
    let recorded = count().await?;
    let published = Arc::new(Mutex::new(HashSet::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = Printing {
        sink,
        published: published.clone(),
    };
    let relay = tokio::spawn(Relay::builder(pool.clone(), sink).build().run(async {
        let _ = stopped.await;
    }));
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
    let published = published
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    Ok(published)
}

/// The consuming side of the broker examples: a read model of account owners, kept in the
/// example's SQLite database (in a real deployment, the consuming service's own) exactly once
/// through an inbox. The broker's inbox helper runs [`apply`](ReadModel::apply) for each message
/// and acknowledges it only after the commit.
#[derive(Debug)]
pub struct ReadModel {
    pool: SqlitePool,
    awaited: HashSet<String>,
    delivered: Vec<(String, Vec<u8>)>,
}

impl ReadModel {
    /// The inbox that remembers which messages the read model applied.
    pub const INBOX: Inbox = Inbox::for_table(TableName::from_static("read_model_inbox"));
    /// The consumer's name in the inbox (and its group or session at the broker).
    pub const CONSUMER: &'static str = "bank-read-model";
    /// How long the examples wait for the broker to deliver what the relay published.
    pub const PATIENCE: Duration = Duration::from_secs(30);

    /// Creates the read model's tables in `pool`; it waits for the events `published`.
    pub async fn new(pool: &SqlitePool, published: HashSet<String>) -> Result<Self, BankError> {
        Self::INBOX.migrate(pool).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS read_model_owners \
             (account INTEGER PRIMARY KEY, owner TEXT NOT NULL)",
        )
        .execute(pool)
        .await?;
        Ok(ReadModel {
            pool: pool.clone(),
            awaited: published,
            delivered: Vec::new(),
        })
    }

    /// The database the read model and its inbox live in.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The handler of the message `id` carrying `payload` (an `AccountOpenedEvent`): records the
    /// account's owner in the inbox's transaction.
    pub fn apply(
        &mut self,
        id: &str,
        payload: &[u8],
    ) -> impl for<'c> FnOnce(&'c mut Transaction<'static, Sqlite>) -> Handler<'c, (), BankError> + use<>
    {
        // What this run published comes again below; an earlier run's leftovers do not.
        if self.awaited.remove(id) {
            self.delivered.push((id.to_owned(), payload.to_vec()));
        }
        Self::record_owner(payload)
    }

    fn record_owner(
        payload: &[u8],
    ) -> impl for<'c> FnOnce(&'c mut Transaction<'static, Sqlite>) -> Handler<'c, (), BankError> + use<>
    {
        let account = serde_json::from_slice::<Account>(payload);
        move |tx| {
            Box::pin(async move {
                let account = account?;
                // An upsert: a group that is new reads the stream from its start, where an
                // earlier run of the example left accounts of the same numbers.
                sqlx::query(
                    "INSERT INTO read_model_owners (account, owner) VALUES (?, ?) \
                     ON CONFLICT (account) DO UPDATE SET owner = excluded.owner",
                )
                .bind(account.id)
                .bind(&account.owner)
                .execute(&mut **tx)
                .await?;
                println!(
                    "applied AccountOpenedEvent of account {} ({})",
                    account.id, account.owner
                );
                Ok(())
            })
        }
    }

    /// Whether every event this run published has come back from the broker.
    pub fn has_all(&self) -> bool {
        self.awaited.is_empty()
    }

    /// What a broker's redelivery of each message this run published would do: the inbox finds
    /// it and skips the handler. Then prints the read model: one line per account, and how many
    /// there are.
    pub async fn redeliver_and_print(self) -> Result<(), BankError> {
        for (id, payload) in &self.delivered {
            let handler = Self::record_owner(payload);
            match Self::INBOX
                .process(&self.pool, Self::CONSUMER, id, handler)
                .await?
            {
                Processed::Done(()) => println!("message {id} applied on its second delivery"),
                Processed::Duplicate => {
                    println!("message {id} delivered again: skipped by the inbox")
                }
            }
        }
        let owners: Vec<(i64, String)> =
            sqlx::query_as("SELECT account, owner FROM read_model_owners ORDER BY account")
                .fetch_all(&self.pool)
                .await?;
        println!("\nread model: {} accounts", owners.len());
        for (account, owner) in owners {
            println!("  account {account}: {owner}");
        }
        Ok(())
    }
}

/// The database file of an example: the first argument, else one in the temporary directory.
pub fn database_path(example: &str) -> std::path::PathBuf {
    std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("outbox-{example}.db")))
}
