//! Delayed events: a payment reminder sent two seconds after an order is placed — only if the
//! order's transaction commits, and only if the order is not paid by then. SQLite, no server.
//!
//! ```text
//! cargo run -p outbox-examples --bin reminders
//! ```
//!
//! Placing an order records `OrderPlaced` (published at once) and a `PaymentReminder` delayed
//! by `#[outbox_event(delay = …)]`; paying cancels the reminder in the payment's transaction.
//! Of two orders, the unpaid one gets its reminder; the paid one never does.

use std::time::{Duration, Instant};

use outbox::relay::{HandlerSink, Message, Relay};
use outbox::{Outbox, OutboxEvent, outbox_event};
use outbox_examples::BankError;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Sqlite, Transaction};

/// The reminder's delay: a day in a real shop, two seconds here.
const REMIND_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, OutboxEvent)]
#[outbox(aggregate_type = "order", event_type = "OrderPlaced")]
struct Order {
    #[outbox(aggregate_id)]
    id: i64,
    total_cents: i64,
}

#[derive(Debug, Serialize, OutboxEvent)]
#[outbox(aggregate_type = "order", event_type = "PaymentReminder")]
struct Reminder {
    #[outbox(aggregate_id)]
    order: i64,
}

/// Stores the order; `OrderPlaced` is recorded with it.
#[outbox_event]
async fn place_order(
    tx: &mut Transaction<'_, Sqlite>,
    total_cents: i64,
) -> Result<Order, BankError> {
    let id =
        sqlx::query_scalar("INSERT INTO orders (total_cents, paid) VALUES (?, false) RETURNING id")
            .bind(total_cents)
            .fetch_one(&mut **tx)
            .await?;
    Ok(Order { id, total_cents })
}

/// The reminder, published `REMIND_AFTER` after the transaction commits. Its id is kept with
/// the order, so that paying can cancel it.
#[outbox_event(delay = REMIND_AFTER)]
async fn schedule_reminder(
    tx: &mut Transaction<'_, Sqlite>,
    order: i64,
) -> Result<Reminder, BankError> {
    let _ = &tx;
    Ok(Reminder { order })
}

/// Marks the order paid and cancels its reminder, in one transaction: if the payment rolls
/// back, the reminder stays.
async fn pay(pool: &SqlitePool, order: i64) -> Result<bool, Box<dyn std::error::Error>> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE orders SET paid = true WHERE id = ?")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    // The reminder's event id (`Outbox::record` returns it, for an application that keeps it
    // with the order; here it is looked up).
    let reminder: String = sqlx::query_scalar(
        "SELECT id FROM outbox WHERE event_type = 'PaymentReminder' AND aggregate_id = ?",
    )
    .bind(order.to_string())
    .fetch_one(&mut *tx)
    .await?;
    let cancelled = Outbox::DEFAULT
        .cancel(&mut *tx, sqlx::types::Uuid::parse_str(&reminder)?)
        .await?;
    tx.commit().await?;
    Ok(cancelled)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("outbox-reminders-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await?;
    outbox::migrate(&pool).await?;
    sqlx::raw_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL, paid BOOLEAN NOT NULL)")
        .execute(&pool)
        .await?;

    let started = Instant::now();
    let mut orders = Vec::new();
    for total_cents in [4_200, 1_999] {
        let mut tx = pool.begin().await?;
        let order = place_order(&mut tx, total_cents).await?;
        schedule_reminder(&mut tx, order.id).await?;
        tx.commit().await?;
        println!("placed order {} ({} cents)", order.id, order.total_cents);
        orders.push(order.id);
    }
    let cancelled = pay(&pool, orders[1]).await?;
    println!("paid order {}: reminder cancelled: {cancelled}", orders[1]);

    let sink = HandlerSink::new(move |message: Message| async move {
        println!(
            "published {} for order {} after {:.1} s",
            message.event_type,
            message.aggregate_id,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
    let relay = Relay::builder(pool.clone(), sink)
        .poll_interval(Duration::from_millis(50))
        .build();
    relay
        .run(tokio::time::sleep(REMIND_AFTER + Duration::from_secs(1)))
        .await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await?;
    println!("{left} events left in the outbox");
    pool.close().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
