//! The bank's accounts recorded as WAL messages (no outbox row) and relayed from PostgreSQL's
//! transaction log, in commit order.
//!
//! ```text
//! scripts/services.sh                                            # PostgreSQL with wal_level = logical
//! cargo run -p outbox-examples --features log --bin log-tailing  # DATABASE_URL overrides the default
//! ```

use outbox::relay::{ChannelSink, Relay};
use outbox::store::postgres::LogStream;
use outbox::{Outbox, TableName, outbox_event};
use outbox_examples::{Account, BankError};
use sqlx::{PgPool, Postgres, Transaction};

/// One constant switches the annotated functions from table rows to WAL messages.
const LOG_OUTBOX: Outbox =
    Outbox::for_table(TableName::from_static("log_example_outbox")).wal_messages();

#[outbox_event(outbox = LOG_OUTBOX)]
async fn open_account(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, BankError> {
    Ok(sqlx::query_as(
        "INSERT INTO log_example_accounts (owner, balance_cents, spending_limit_cents) VALUES ($1, 0, 0) \
         RETURNING id, owner, balance_cents, spending_limit_cents",
    )
    .bind(owner)
    .fetch_one(&mut **tx)
    .await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPool::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS log_example_accounts (id BIGSERIAL PRIMARY KEY, owner TEXT NOT NULL, \
         balance_cents BIGINT NOT NULL, spending_limit_cents BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    // The table (for parked events), the publication and the replication slot.
    LOG_OUTBOX.migrate(&pool).await?;

    let (sink, mut events) = ChannelSink::new(16);
    let log = LogStream::new(pool.clone(), &url)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(log, sink)
            .outbox(&LOG_OUTBOX)
            .build()
            .run(async {
                let _ = stopped.await;
            }),
    );

    // Ada's transaction records first but commits last: the log publishes in commit order.
    let mut ada = pool.begin().await?;
    open_account(&mut ada, "Ada").await?;
    let mut grace = pool.begin().await?;
    open_account(&mut grace, "Grace").await?;
    grace.commit().await?;
    let mut rolled_back = pool.begin().await?;
    open_account(&mut rolled_back, "Nobody").await?;
    rolled_back.rollback().await?;
    ada.commit().await?;
    let mut linus = pool.begin().await?;
    open_account(&mut linus, "Linus").await?;
    linus.commit().await?;

    for _ in 0..3 {
        let message = events.recv().await.ok_or("the relay stopped")?;
        let owner: serde_json::Value = serde_json::from_str(&message.payload)?;
        println!(
            "published {} of {} {}: owner {}",
            message.event_type, message.aggregate_type, message.aggregate_id, owner["owner"]
        );
    }
    stop.send(()).ok();
    relay.await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM log_example_outbox")
        .fetch_one(&pool)
        .await?;
    let slot = LOG_OUTBOX.slot(&pool).await?.ok_or("no slot")?;
    println!(
        "3 events published from the log; {rows} rows in the outbox table; slot {} confirmed ({} bytes behind)",
        slot.slot, slot.lag_bytes
    );
    Ok(())
}
