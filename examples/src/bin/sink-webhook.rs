//! Relays the outbox to a signed HTTP webhook. The receiver runs in the same process here, and
//! checks each request with `signature::verify` as a real receiver would.
//!
//! ```text
//! cargo run -p outbox-examples --features webhook --bin sink-webhook
//! ```

use axum::http::{HeaderMap, StatusCode};
use outbox::sinks::signature::verify;
use outbox::sinks::webhook::WebhookSink;
use outbox_examples::sink_demo::{bank_with_events, database_path, relay_until_empty};

/// Shared between the relay and the receiver: `whsec_` and the key in base64.
const SECRET: &str = "whsec_c2hhcmVkIGJ5IHJlbGF5IGFuZCByZWNlaXZlcg==";

/// The receiving service: refuses a request whose signature does not match its body.
async fn receive(headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    match verify(SECRET, &headers, &body) {
        Ok(()) => {
            println!("receiver: {} verified bytes", body.len());
            StatusCode::OK
        }
        Err(error) => {
            println!("receiver: refused: {error}");
            StatusCode::UNAUTHORIZED
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = bank_with_events(&database_path("sink-webhook")).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/events", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(receive).head(|| async { "" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sink = WebhookSink::connect(&url, SECRET).await?.max_events(100);
    relay_until_empty(&pool, sink).await?;
    Ok(())
}
