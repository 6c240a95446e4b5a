//! A relay in a process of its own, for the crash tests: relays the outbox table named by its
//! first argument, recording each delivery in `<table>_deliveries` (committed before the sink
//! acknowledges) so that the test can count deliveries across SIGKILLs.

use outbox_core::relay::{HandlerSink, Message, Relay, SinkError};
use outbox_core::{Outbox, TableName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let table = std::env::args()
        .nth(1)
        .ok_or("usage: relay-child <outbox table>")?;
    let batch: usize = std::env::args().nth(2).map_or(Ok(200), |b| b.parse())?;
    let pool = sqlx::PgPool::connect(&outbox_tests::postgres_url()).await?;
    let outbox = Outbox::for_table(TableName::new(table.clone())?);
    let insert = format!("INSERT INTO {table}_deliveries (n) VALUES ($1)");
    let sink = {
        let pool = pool.clone();
        HandlerSink::new(move |message: Message| {
            let (pool, insert) = (pool.clone(), insert.clone());
            async move {
                let payload: serde_json::Value = serde_json::from_str(&message.payload)
                    .map_err(|e| SinkError::permanent(e.to_string()))?;
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(payload["n"].as_i64())
                    .execute(&pool)
                    .await
                    .map_err(|e| SinkError::transient(e.to_string()))?;
                Ok(())
            }
        })
    };
    println!("relaying {table}");
    Relay::builder(pool, sink)
        .outbox(&outbox)
        .batch_size(batch)
        .build()
        .run(std::future::pending())
        .await;
    Ok(())
}
