//! One relay for many outboxes: a table per tenant, found by a pattern. SQLite, no server.
//!
//! ```text
//! cargo run -p outbox-examples --bin tenants
//! ```
//!
//! Three tenants record into their own outbox table (`outbox_acme`, `outbox_globex`,
//! `outbox_initech`); one relay, given `Outboxes::matching(pool, "outbox_*")`, publishes them
//! all, taking the tables in turn; a fourth tenant created while it runs is found at the next
//! refresh.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox::relay::many::Outboxes;
use outbox::relay::{HandlerSink, Message, Relay};
use outbox::{Event, Outbox, TableName};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

/// A tenant's outbox table, migrated, with `events` events recorded in one transaction.
async fn tenant(pool: &SqlitePool, name: &str, events: u32) -> Result<(), outbox::Error> {
    let outbox = Outbox::for_table(TableName::new(format!("outbox_{name}"))?);
    outbox.migrate(pool).await?;
    let database = |source| outbox::Error::Database {
        operation: "begin",
        table: name.to_owned(),
        dialect: "SQLite",
        source,
    };
    let mut tx = pool.begin().await.map_err(database)?;
    for n in 0..events {
        let event = Event::new(
            name,
            "InvoiceIssued",
            Some(n % 2),
            &serde_json::json!({ "n": n }),
        )?;
        outbox.record(&mut *tx, &event).await?;
    }
    tx.commit().await.map_err(database)?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("outbox-tenants-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await?;
    for (name, events) in [("acme", 6), ("globex", 3), ("initech", 3)] {
        tenant(&pool, name, events).await?;
    }

    let published = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let published = published.clone();
        HandlerSink::new(move |message: Message| {
            let published = published.clone();
            async move {
                println!(
                    "published {} #{} of {}",
                    message.event_type, message.payload, message.aggregate_type
                );
                published
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(message.aggregate_type);
                Ok(())
            }
        })
    };
    let tenants =
        Outboxes::matching(pool.clone(), "outbox_*")?.refresh_every(Duration::from_millis(200));
    println!(
        "serving {}",
        tenants
            .discover()
            .await?
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    // A small batch, so that the turns show: each table's batch in turn.
    let relay = Relay::builder(tenants, sink).batch_size(2).build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tenant(&pool, "umbrella", 2).await?;
    println!("created tenant umbrella while the relay runs");
    // Found at the next refresh (200 ms), then served in turn: wait for it, 10 s at most.
    let served = || {
        published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|tenant| *tenant == "umbrella")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    task.await?;

    let published = published.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for name in ["acme", "globex", "initech", "umbrella"] {
        let count = published.iter().filter(|tenant| *tenant == name).count();
        println!("{name}: {count} events published");
    }
    pool.close().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
