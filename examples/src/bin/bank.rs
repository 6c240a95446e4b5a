//! The bank on PostgreSQL: a service whose methods record their events, concurrent transfers,
//! and an outbox table of its own.
//!
//! ```text
//! scripts/services.sh                      # PostgreSQL on 127.0.0.1:5432
//! cargo run -p outbox-examples --bin bank  # DATABASE_URL overrides the default
//! cargo run -p outbox-examples --bin bank -- --catalog   # prints the AsyncAPI catalog instead
//! ```
//!
//! Writers of one account serialize on its row (`SELECT ... FOR UPDATE`), so each account's
//! events are recorded in commit order: the order a relay will publish them in.

use std::sync::Arc;

use outbox::{Outbox, TableName, outbox_event};
use outbox_examples::{Account, BankError, TransactionEntity, check_debit};
use sqlx::{PgPool, Postgres, Transaction};

/// The bank's events go to their own table.
const BANK_OUTBOX: Outbox = Outbox::for_table(TableName::from_static("bank_outbox"));

struct Bank {
    pool: PgPool,
}

impl Bank {
    #[outbox_event(outbox = BANK_OUTBOX)]
    async fn open_account(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        owner: &str,
        limit_cents: i64,
    ) -> Result<Account, BankError> {
        let account = sqlx::query_as(
            "INSERT INTO bank_accounts (owner, balance_cents, spending_limit_cents) VALUES ($1, 0, $2) \
             RETURNING id, owner, balance_cents, spending_limit_cents",
        )
        .bind(owner)
        .bind(limit_cents)
        .fetch_one(&mut **tx)
        .await?;
        Ok(account)
    }

    /// Moves money on one account, holding its row lock until commit.
    #[outbox_event(outbox = BANK_OUTBOX)]
    async fn post(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        account_id: i64,
        kind: &str,
        amount_cents: i64,
    ) -> Result<TransactionEntity, BankError> {
        let account: Account =
            sqlx::query_as("SELECT * FROM bank_accounts WHERE id = $1 FOR UPDATE")
                .bind(account_id)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(BankError::NoAccount(account_id))?;
        let delta = if kind == "DEBIT" {
            check_debit(&account, amount_cents)?;
            -amount_cents
        } else {
            amount_cents
        };
        let account: Account = sqlx::query_as(
            "UPDATE bank_accounts SET balance_cents = balance_cents + $1 WHERE id = $2 RETURNING *",
        )
        .bind(delta)
        .bind(account_id)
        .fetch_one(&mut **tx)
        .await?;
        let id = sqlx::query_scalar(
            "INSERT INTO bank_transactions (account_id, amount_cents, transaction_type) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(account_id)
        .bind(amount_cents)
        .bind(kind)
        .fetch_one(&mut **tx)
        .await?;
        Ok(TransactionEntity {
            id,
            account,
            amount_cents,
            transaction_type: kind.to_owned(),
            transaction_status: "COMPLETED".to_owned(),
        })
    }

    /// Debit and credit in one transaction. Accounts are locked in id order, so concurrent
    /// transfers in opposite directions cannot deadlock.
    async fn transfer(&self, from: i64, to: i64, amount_cents: i64) -> Result<(), BankError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT id FROM bank_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(vec![from, to])
            .execute(&mut *tx)
            .await?;
        self.post(&mut tx, from, "DEBIT", amount_cents).await?;
        self.post(&mut tx, to, "CREDIT", amount_cents).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The AsyncAPI document of every event the bank emits, as a relay routing them to NATS
/// subjects `bank.<aggregate type>.<event type>` publishes them.
fn catalog() -> Result<serde_json::Value, outbox::sinks::SetupError> {
    let routing = outbox::sinks::Routing::template("bank.{aggregate_type}.{event_type}")?;
    Ok(outbox::catalog::Catalog::new("Bank events", "1.0.0")
        .description("The events the bank records in its outbox, relayed to NATS JetStream.")
        .server("production", "nats.bank.internal:4222", "nats")
        .document(|message| {
            let subject = routing.destination(message);
            Some(outbox::relay::Destination::new("nats", subject))
        }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|arg| arg == "--catalog") {
        println!("{}", serde_json::to_string_pretty(&catalog()?)?);
        return Ok(());
    }
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("OUTBOX_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPool::connect(&url).await.map_err(|e| {
        format!("cannot reach PostgreSQL at {url}: {e} (start it with scripts/services.sh)")
    })?;

    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bank_transactions, bank_accounts, bank_outbox;
         CREATE TABLE bank_accounts (id BIGSERIAL PRIMARY KEY, owner TEXT NOT NULL,
           balance_cents BIGINT NOT NULL, spending_limit_cents BIGINT NOT NULL);
         CREATE TABLE bank_transactions (id BIGSERIAL PRIMARY KEY,
           account_id BIGINT NOT NULL REFERENCES bank_accounts(id),
           amount_cents BIGINT NOT NULL, transaction_type TEXT NOT NULL);",
    )
    .execute(&pool)
    .await?;
    BANK_OUTBOX.migrate(&pool).await?;

    let bank = Arc::new(Bank { pool: pool.clone() });
    let mut tx = pool.begin().await?;
    let mut ids = Vec::new();
    for owner in ["Ada", "Grace", "Edsger", "Barbara"] {
        let account = bank.open_account(&mut tx, owner, 30_000).await?;
        bank.post(&mut tx, account.id, "DEPOSIT", 100_000).await?;
        ids.push(account.id);
    }
    tx.commit().await?;
    println!("opened {} accounts with 1000.00 each", ids.len());

    // 40 concurrent transfers around the ring of accounts; some are refused by the limit.
    let transfers = (0..40).map(|i| {
        let bank = bank.clone();
        let (from, to) = (ids[i % ids.len()], ids[(i + 1) % ids.len()]);
        let amount = 2_500 + (i as i64 % 7) * 6_000;
        tokio::spawn(async move { bank.transfer(from, to, amount).await })
    });
    let (mut done, mut refused) = (0, 0);
    for transfer in transfers {
        match transfer.await? {
            Ok(()) => done += 1,
            Err(BankError::OverLimit { .. } | BankError::InsufficientFunds { .. }) => refused += 1,
            Err(other) => return Err(other.into()),
        }
    }
    println!("{done} transfers committed, {refused} refused (and recorded nothing)");

    let (events, debits, credits): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE payload->>'transaction_type' = 'DEBIT'),
                count(*) FILTER (WHERE payload->>'transaction_type' = 'CREDIT') FROM bank_outbox",
    )
    .fetch_one(&pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT sum(balance_cents)::bigint FROM bank_accounts")
        .fetch_one(&pool)
        .await?;
    println!("bank_outbox: {events} events, {debits} debits, {credits} credits");
    println!(
        "money in the bank: {:.2} (unchanged by transfers)",
        total as f64 / 100.0
    );
    if debits != done || credits != done || total != 4 * 100_000 {
        return Err("the outbox does not match the committed work".into());
    }

    // Per account, the balances carried by its events follow commit order.
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (payload->'account'->>'id')::bigint, (payload->'account'->>'balance_cents')::bigint
         FROM bank_outbox WHERE event_type = 'TransactionCreatedEvent' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await?;
    for id in &ids {
        let final_balance: i64 =
            sqlx::query_scalar("SELECT balance_cents FROM bank_accounts WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await?;
        let last_event = rows
            .iter()
            .rev()
            .find(|(account, _)| account == id)
            .map(|(_, b)| *b);
        if last_event != Some(final_balance) {
            return Err(format!(
                "account {id}: last event says {last_event:?}, the table {final_balance}"
            )
            .into());
        }
    }
    println!("each account's last event carries its final balance: events are in commit order");
    Ok(())
}
