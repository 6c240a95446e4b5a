//! The relay service's HTTP endpoint: `/metrics` for Prometheus, `/health` for the
//! orchestrator.

use std::sync::{Arc, Mutex};

use outbox::Outbox;

use crate::db::{Db, with_pool};

/// Why the service is not healthy, besides the database: the sink it is still waiting for.
pub(crate) type SinkProblem = Arc<Mutex<Option<String>>>;

/// `/metrics` in the Prometheus text format; `/health`: 200 while the database answers and the
/// sink is connected, 503 with the reason otherwise.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    db: Db,
    outbox: Outbox,
    sink_problem: SinkProblem,
) {
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let text = metrics.render();
                async move { text }
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || {
                let (db, outbox) = (db.clone(), outbox.clone());
                let sink = sink_problem
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .clone();
                async move {
                    let ping = with_pool!(&db, pool => outbox.check(pool).await);
                    match (ping, sink) {
                        (Err(error), _) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("database unreachable: {error}\n"),
                        ),
                        (Ok(()), Some(problem)) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("sink unreachable: {problem}\n"),
                        ),
                        (Ok(()), None) => (StatusCode::OK, "ok\n".to_owned()),
                    }
                }
            }),
        );
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("outbox: error: the metrics endpoint stopped: {error}");
    }
}
