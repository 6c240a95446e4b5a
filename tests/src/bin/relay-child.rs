//! A relay in a process of its own, for the crash tests: `relay-child <database url> <outbox
//! table> [batch]` relays the table, recording each delivery in `<table>_deliveries` (committed
//! before the sink acknowledges) so that the test can count deliveries across SIGKILLs.
//!
//! For the poison tests, the sink can be made to misbehave on one event (`{"n": N}`):
//! `RELAY_CHILD_PANIC_ON=N` panics (the process dies, as with a bug in a sink or a serializer),
//! `RELAY_CHILD_HANG_ON=N` never answers. `RELAY_CHILD_MAX_ATTEMPTS` and
//! `RELAY_CHILD_DELIVERY_TIMEOUT_MS` set the relay's `max_attempts` and `delivery_timeout`.

use std::time::Duration;

use outbox::relay::{HandlerSink, Message, Relay, SinkError};
use outbox::{Outbox, TableName};

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: relay-child <database url> <outbox table> [batch]";
    let url = args.next().ok_or(usage)?;
    let table = args.next().ok_or(usage)?;
    let batch: usize = args.next().map_or(Ok(200), |b| b.parse())?;
    println!("relaying {table}");
    if url.starts_with("postgres") {
        let insert = format!("INSERT INTO {table}_deliveries (n) VALUES ($1)");
        relay(sqlx::PgPool::connect(&url).await?, table, insert, batch).await
    } else if url.starts_with("mysql") {
        let insert = format!("INSERT INTO {table}_deliveries (n) VALUES (?)");
        relay(sqlx::MySqlPool::connect(&url).await?, table, insert, batch).await
    } else {
        let insert = format!("INSERT INTO {table}_deliveries (n) VALUES (?)");
        relay(sqlx::SqlitePool::connect(&url).await?, table, insert, batch).await
    }
}

async fn relay<DB: outbox::Dialect>(
    pool: sqlx::Pool<DB>,
    table: String,
    insert: String,
    batch: usize,
) -> Result<(), Failure>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let outbox = Outbox::for_table(TableName::new(table)?);
    let setting = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse::<i64>().ok())
    };
    let (panic_on, hang_on) = (
        setting("RELAY_CHILD_PANIC_ON"),
        setting("RELAY_CHILD_HANG_ON"),
    );
    let sink = {
        let pool = pool.clone();
        HandlerSink::new(move |message: Message| {
            let (pool, insert) = (pool.clone(), insert.clone());
            async move {
                let payload: serde_json::Value = serde_json::from_str(&message.payload)
                    .map_err(|e| SinkError::permanent(e.to_string()))?;
                let n = payload["n"].as_i64();
                if n.is_some() && n == panic_on {
                    panic!("relay-child: the sink panics on event {n:?}");
                }
                if n.is_some() && n == hang_on {
                    std::future::pending::<()>().await;
                }
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(payload["n"].as_i64())
                    .execute(&pool)
                    .await
                    .map_err(|e| SinkError::transient(e.to_string()))?;
                Ok(())
            }
        })
    };
    let mut relay = Relay::builder(pool, sink)
        .outbox(&outbox)
        .batch_size(batch)
        .lease_ttl(Duration::from_secs(1))
        .backoff(outbox::relay::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ));
    if let Some(attempts) = setting("RELAY_CHILD_MAX_ATTEMPTS") {
        relay = relay.max_attempts(u32::try_from(attempts)?);
    }
    if let Some(millis) = setting("RELAY_CHILD_DELIVERY_TIMEOUT_MS") {
        relay = relay.delivery_timeout(Duration::from_millis(u64::try_from(millis)?));
    }
    relay.build().run(std::future::pending()).await;
    Ok(())
}
