//! A web service with an outbox: the handler opens an account and records its event in one
//! transaction, and the relay runs beside the server and stops with it. The README's example.
//!
//! `DATABASE_URL=postgres://… cargo run -p outbox-examples --bin axum-service`, then
//! `curl -d '{"owner":"Ada"}' -H 'content-type: application/json' localhost:3000/accounts`.
use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use outbox::relay::{HandlerSink, Message, Relay};
use outbox::{OutboxEvent, outbox_event};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};

#[derive(Serialize, sqlx::FromRow, OutboxEvent)]
#[outbox(aggregate_type = "account", event_type = "AccountOpened")]
struct Account {
    #[outbox(aggregate_id)]
    id: i64,
    owner: String,
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
}

/// Inserts the account; `#[outbox_event]` records the returned `Account` in `tx`.
#[outbox_event]
async fn open_account(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
) -> Result<Account, AppError> {
    let sql = "INSERT INTO accounts (owner) VALUES ($1) RETURNING id, owner";
    Ok(sqlx::query_as(sql).bind(owner).fetch_one(&mut **tx).await?)
}

#[derive(Deserialize)]
struct Open {
    owner: String,
}

async fn open(
    State(pool): State<PgPool>,
    Json(open): Json<Open>,
) -> Result<Json<Account>, (StatusCode, String)> {
    let refuse = |error: AppError| (StatusCode::UNPROCESSABLE_ENTITY, error.to_string());
    let mut tx = pool.begin().await.map_err(|e| refuse(e.into()))?;
    let account = open_account(&mut tx, &open.owner).await.map_err(refuse)?;
    tx.commit().await.map_err(|e| refuse(e.into()))?; // the account and its event, or neither
    Ok(Json(account))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    let table = "CREATE TABLE IF NOT EXISTS accounts (id BIGSERIAL PRIMARY KEY, owner TEXT NOT NULL CHECK (owner <> ''))";
    sqlx::query(table).execute(&pool).await?;
    outbox::migrate(&pool).await?;

    // The relay, beside the server: any sink (NatsSink, KafkaSink, WebhookSink, …); here, stdout.
    let sink = HandlerSink::new(|event: Message| async move {
        println!("published {} {}", event.event_type, event.payload);
        Ok(())
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::builder(pool.clone(), sink).build();
    let relay = tokio::spawn(relay.run(async { stopped.await.unwrap_or(()) }));

    let app = Router::new()
        .route("/accounts", post(open))
        .with_state(pool);
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on http://{listen}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
        .await?;
    let _ = stop.send(()); // the relay settles the batch in hand, then returns
    relay.await?;
    Ok(())
}
