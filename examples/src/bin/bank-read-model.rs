//! A consumer of the bank's events that keeps a local read model — each account's owner,
//! balance and spending limit — exactly once, with an inbox. Run the bank first:
//!
//! ```text
//! cargo run -p outbox-examples --bin bank              # records the bank's events
//! cargo run -p outbox-examples --bin bank-read-model   # relays and applies them
//! ```
//!
//! The relay publishes the bank's outbox into a channel standing in for a broker, and every
//! message is delivered **twice**, as a broker redelivers after a lost acknowledgement. Balances
//! are applied as deltas, which would double on a duplicate: the inbox is what keeps the read
//! model equal to the bank.
//!
//! On the way, the relay *enriches* each `TransactionCreatedEvent` with its account owner's name,
//! read from the bank's table at publish time (`Relay::builder(...).enrich(...)`): the bank
//! records its entity as it is, and consumers get what they need.

use outbox::inbox::{Inbox, Processed};
use outbox::relay::{ChannelSink, Message, Relay, SinkError};
use outbox::{Outbox, TableName, inbox_handler};
use outbox_examples::{Account, BankError, TransactionEntity};
use sqlx::{PgPool, Postgres, Transaction};

const BANK_OUTBOX: Outbox = Outbox::for_table(TableName::from_static("bank_outbox"));
const READ_MODEL_INBOX: Inbox = Inbox::for_table(TableName::from_static("read_model_inbox"));

/// Applies one bank event to the read model, in the transaction that records its id.
#[inbox_handler(consumer = "bank-read-model", inbox = READ_MODEL_INBOX)]
async fn apply(tx: &mut Transaction<'_, Postgres>, message: &Message) -> Result<(), BankError> {
    match message.event_type.as_str() {
        "AccountOpenedEvent" => {
            let account: Account = serde_json::from_str(&message.payload)?;
            sqlx::query(
                "INSERT INTO read_model_accounts (id, owner, balance_cents, spending_limit_cents) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE \
                 SET owner = $2, spending_limit_cents = $4, \
                     balance_cents = read_model_accounts.balance_cents + $3",
            )
            .bind(account.id)
            .bind(&account.owner)
            .bind(account.balance_cents)
            .bind(account.spending_limit_cents)
            .execute(&mut **tx)
            .await?;
        }
        "TransactionCreatedEvent" => {
            let movement: TransactionEntity = serde_json::from_str(&message.payload)?;
            let delta = match movement.transaction_type.as_str() {
                "DEBIT" => -movement.amount_cents,
                _ => movement.amount_cents,
            };
            // A delta, not the balance carried in the event: applied twice, it would be wrong.
            sqlx::query(
                "INSERT INTO read_model_accounts (id, owner, balance_cents, spending_limit_cents) \
                 VALUES ($1, '', $2, 0) ON CONFLICT (id) DO UPDATE \
                 SET balance_cents = read_model_accounts.balance_cents + $2",
            )
            .bind(movement.account.id)
            .bind(delta)
            .execute(&mut **tx)
            .await?;
        }
        _ => {} // events this service does not care about are recorded as seen, nothing else
    }
    Ok(())
}

/// The relay's enrichment step: a `TransactionCreatedEvent` gains `owner_name`, the owner of its
/// account as the bank's table says now. A failed lookup is retried (transient); an account
/// that does not exist is a dead letter (permanent).
async fn with_owner_name(pool: PgPool, mut message: Message) -> Result<Message, SinkError> {
    if message.event_type != "TransactionCreatedEvent" {
        return Ok(message);
    }
    let mut payload: serde_json::Value = serde_json::from_str(&message.payload)
        .map_err(|e| SinkError::permanent(format!("payload: {e}")))?;
    let account = payload["account"]["id"]
        .as_i64()
        .ok_or_else(|| SinkError::permanent("the event names no account"))?;
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM bank_accounts WHERE id = $1")
        .bind(account)
        .fetch_optional(&pool)
        .await
        .map_err(|e| SinkError::transient(format!("owner lookup: {e}")))?;
    payload["owner_name"] = owner
        .ok_or_else(|| SinkError::permanent(format!("no account {account}")))?
        .into();
    message.payload = payload.to_string();
    Ok(message)
}

/// One delivery: the handler and the inbox entry commit together, or not at all.
async fn deliver(pool: &PgPool, message: &Message) -> Result<bool, BankError> {
    let mut tx = pool.begin().await?;
    match apply(&mut tx, message).await? {
        Processed::Done(()) => {
            tx.commit().await?;
            Ok(true)
        }
        Processed::Duplicate => Ok(false), // dropping `tx` rolls back; acknowledge the message
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("OUTBOX_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPool::connect(&url).await.map_err(|e| {
        format!("cannot reach PostgreSQL at {url}: {e} (start it with scripts/services.sh)")
    })?;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM bank_outbox")
        .fetch_one(&pool)
        .await
        .map_err(|e| {
            format!("no bank outbox ({e}): run `cargo run -p outbox-examples --bin bank` first")
        })?;

    // The read model's own tables (in a real deployment: another service's database).
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS read_model_accounts, read_model_inbox;
         CREATE TABLE read_model_accounts (id BIGINT PRIMARY KEY, owner TEXT NOT NULL,
           balance_cents BIGINT NOT NULL, spending_limit_cents BIGINT NOT NULL);",
    )
    .execute(&pool)
    .await?;
    READ_MODEL_INBOX.migrate(&pool).await?;

    let (sink, mut received) = ChannelSink::new(256);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let owners = pool.clone();
    let relay = tokio::spawn(
        Relay::builder(pool.clone(), sink)
            .outbox(&BANK_OUTBOX)
            .enrich(move |message: Message| with_owner_name(owners.clone(), message))
            .build()
            .run(async {
                let _ = stopped.await;
            }),
    );
    let (mut applied, mut dropped, mut enriched) = (0, 0, 0);
    for _ in 0..pending {
        let message = received.recv().await.ok_or("the relay stopped")?;
        if message.event_type == "TransactionCreatedEvent" {
            let payload: serde_json::Value = serde_json::from_str(&message.payload)?;
            if payload["owner_name"] != payload["account"]["owner"] {
                return Err(format!("not enriched with its owner's name: {payload}").into());
            }
            enriched += 1;
        }
        for _delivery in 0..2 {
            if deliver(&pool, &message).await? {
                applied += 1;
            } else {
                dropped += 1;
            }
        }
    }
    let _ = stop.send(());
    relay.await?;
    println!("{applied} events applied, {dropped} duplicate deliveries dropped by the inbox");
    println!("{enriched} transaction events carried their owner's name, read at publish time");

    let differences: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bank_accounts b FULL JOIN read_model_accounts r USING (id)
         WHERE b.owner IS DISTINCT FROM r.owner
            OR b.balance_cents IS DISTINCT FROM r.balance_cents
            OR b.spending_limit_cents IS DISTINCT FROM r.spending_limit_cents",
    )
    .fetch_one(&pool)
    .await?;
    let accounts: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT id, owner, balance_cents FROM read_model_accounts ORDER BY id")
            .fetch_all(&pool)
            .await?;
    for (id, owner, balance) in &accounts {
        println!("account {id} ({owner}): {:.2}", *balance as f64 / 100.0);
    }
    if differences != 0 {
        return Err(
            format!("the read model differs from the bank in {differences} accounts").into(),
        );
    }
    println!(
        "the read model matches the bank: {} accounts",
        accounts.len()
    );
    Ok(())
}
