//! The quickstart: an online bank on an embedded SQLite file — no server needed.
//!
//! ```text
//! cargo run -p outbox-examples --bin quickstart
//! ```
//!
//! It opens two accounts, deposits, transfers, tries two transfers that must fail (and are rolled
//! back), then prints the outbox: exactly the events of the committed work. Last, a relay
//! publishes them (into a channel, standing in for a broker) and empties the outbox.

use outbox::outbox_event;
use outbox::relay::{ChannelSink, Relay};
use outbox_examples::{Account, BankError, TransactionEntity, check_debit};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Sqlite, Transaction};

type Tx<'c> = Transaction<'c, Sqlite>;

/// Opens an account. The `AccountOpenedEvent` is recorded in `tx`, with the account.
#[outbox_event]
async fn open_account(
    tx: &mut Tx<'_>,
    owner: &str,
    limit_cents: i64,
) -> Result<Account, BankError> {
    let account = sqlx::query_as(
        "INSERT INTO accounts (owner, balance_cents, spending_limit_cents) VALUES (?, 0, ?) \
         RETURNING id, owner, balance_cents, spending_limit_cents",
    )
    .bind(owner)
    .bind(limit_cents)
    .fetch_one(&mut **tx)
    .await?;
    Ok(account)
}

/// Moves money on one account and records the movement (`TransactionCreatedEvent`).
#[outbox_event]
async fn post(
    tx: &mut Tx<'_>,
    account_id: i64,
    kind: &str,
    amount_cents: i64,
) -> Result<TransactionEntity, BankError> {
    let account: Account = sqlx::query_as("SELECT * FROM accounts WHERE id = ?")
        .bind(account_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(BankError::NoAccount(account_id))?;
    let delta = if kind == "DEBIT" {
        check_debit(&account, amount_cents)?; // an `Err` here records nothing
        -amount_cents
    } else {
        amount_cents
    };
    let account: Account = sqlx::query_as(
        "UPDATE accounts SET balance_cents = balance_cents + ? WHERE id = ? RETURNING *",
    )
    .bind(delta)
    .bind(account_id)
    .fetch_one(&mut **tx)
    .await?;
    let id = sqlx::query_scalar(
        "INSERT INTO transactions (account_id, amount_cents, transaction_type) VALUES (?, ?, ?) RETURNING id",
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

/// A transfer is a debit and a credit in one database transaction: two events, or none.
async fn transfer(
    pool: &SqlitePool,
    from: i64,
    to: i64,
    amount_cents: i64,
) -> Result<(), BankError> {
    let mut tx = pool.begin().await?;
    post(&mut tx, from, "DEBIT", amount_cents).await?;
    post(&mut tx, to, "CREDIT", amount_cents).await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("outbox-quickstart.db"));
    let _ = std::fs::remove_file(&path);
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await?;
    println!("database: {}", path.display());

    // The schema: the outbox table, and the bank's own tables.
    outbox::migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, \
           balance_cents INTEGER NOT NULL, spending_limit_cents INTEGER NOT NULL);
         CREATE TABLE transactions (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES accounts(id), \
           amount_cents INTEGER NOT NULL, transaction_type TEXT NOT NULL);",
    )
    .execute(&pool)
    .await?;

    let mut tx = pool.begin().await?;
    let ada = open_account(&mut tx, "Ada", 100_000).await?;
    let grace = open_account(&mut tx, "Grace", 50_000).await?;
    post(&mut tx, ada.id, "DEPOSIT", 75_000).await?;
    tx.commit().await?;
    println!(
        "opened accounts {} (Ada) and {} (Grace), deposited 750.00 for Ada",
        ada.id, grace.id
    );

    transfer(&pool, ada.id, grace.id, 12_000).await?;
    println!("transferred 120.00 from Ada to Grace");

    // The debit succeeds and records its event in the transaction, then the credit fails (no
    // such account): the transaction rolls back, and the debit's event goes with it.
    match transfer(&pool, grace.id, 999, 5_000).await {
        Err(error) => {
            println!("rolled back a transfer of 50.00 from Grace to account 999: {error}")
        }
        Ok(()) => return Err("the transfer to a missing account should have failed".into()),
    }
    // A refused debit records nothing either.
    match transfer(&pool, grace.id, ada.id, 40_000).await {
        Err(error) => println!("refused a transfer of 400.00 from Grace: {error}"),
        Ok(()) => return Err("the overdrawing transfer should have failed".into()),
    }

    println!("\nthe outbox holds exactly the committed events:\n");
    println!(
        "{:>3}  {:<24} {:<12} {:>4}  payload",
        "seq", "event_type", "aggregate", "id"
    );
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT seq, event_type, aggregate_type, aggregate_id, payload FROM outbox ORDER BY seq",
    )
    .fetch_all(&pool)
    .await?;
    for (seq, event_type, aggregate_type, aggregate_id, payload) in &rows {
        println!("{seq:>3}  {event_type:<24} {aggregate_type:<12} {aggregate_id:>4}  {payload}");
    }
    println!("\n{} events recorded.", rows.len());

    // The relay publishes them, in order per aggregate, and removes them from the outbox. Here
    // the sink is a channel; a broker sink takes its place in a real service.
    let (sink, mut published) = ChannelSink::new(64);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(Relay::builder(pool.clone(), sink).build().run(async {
        let _ = stopped.await;
    }));
    println!("\nthe relay publishes them:\n");
    for _ in 0..rows.len() {
        let message = published.recv().await.ok_or("the relay stopped")?;
        println!(
            "published {} of {} {}  (message id {})",
            message.event_type, message.aggregate_type, message.aggregate_id, message.id
        );
    }
    let _ = stop.send(());
    relay.await?; // returns once the batch in hand is settled
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await?;
    println!(
        "\n{} events published; {left} left in the outbox.",
        rows.len()
    );
    Ok(())
}
