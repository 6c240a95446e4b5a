//! `outbox changefeed`: the HTTPS endpoint a CockroachDB changefeed posts the outbox table's
//! rows to. [`outbox::changefeed::Receiver`] stores them in an outbox table of its own (a SQLite
//! file by default), and the ordinary relay, with the `[relay]` settings, publishes that table
//! to the configured sink.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use outbox::Dialect;
use outbox::Outbox;
use outbox::changefeed::{Receiver, ReceiverConfig};
use outbox::relay::Relay;
use outbox::sinks::redacted;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

use crate::CliError;
use crate::commands::relay::{batch_size, configured, connect_sink};
use crate::config::Config;
use crate::db::{Db, with_pool};
use crate::http::SinkProblem;
use crate::shutdown::shutdown_signal;
use crate::sink::AnySink;
use crate::telemetry::Otlp;

/// The flags of `outbox changefeed`.
pub(crate) struct Options {
    pub(crate) listen: Option<String>,
    pub(crate) sink_url: Option<String>,
    pub(crate) secret: Option<String>,
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The receiver's own database when `changefeed.store` is not set: a SQLite file in the
/// working directory.
pub(crate) const DEFAULT_STORE: &str = "sqlite://outbox-changefeed.db?mode=rwc";

/// Serves until SIGINT or SIGTERM.
pub(crate) async fn run(config: &Config, options: Options) -> Result<(), CliError> {
    let settings = &config.changefeed;
    let sink_config = config.sink_with_url(options.sink_url)?;
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Err(CliError::Config(
            "CockroachDB's webhook sink speaks only HTTPS: set changefeed.cert and changefeed.key \
             (PEM files) in the configuration file"
                .into(),
        ));
    };
    let tls = tls_config(cert, key)?;
    let mut receiver_config = ReceiverConfig::default();
    match options.secret.or_else(|| settings.secret.clone()) {
        Some(secret) if secret.is_empty() => {
            return Err(CliError::Config("the changefeed secret is empty".into()));
        }
        Some(secret) => receiver_config = receiver_config.secret(secret),
        None => tracing::warn!(
            "no changefeed secret: any client that reaches the endpoint can publish \
             (set changefeed.secret or OUTBOX_CHANGEFEED_SECRET, and the changefeed's \
             webhook_auth_header)"
        ),
    }
    if let Some(bytes) = settings.max_body_bytes {
        if bytes == 0 {
            return Err(CliError::Config(
                "changefeed.max_body_bytes must be at least 1".into(),
            ));
        }
        receiver_config = receiver_config.max_body_bytes(bytes);
    }
    if let Some(period) = settings.remember {
        receiver_config = receiver_config.remember(period);
    }
    let batch = batch_size(&config.relay, None)?;
    let store = settings.store.as_deref().unwrap_or(DEFAULT_STORE);
    let db = Db::connect_as(store, None).await?;
    let listen = options
        .listen
        .or_else(|| settings.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8443".into());
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|error| CliError::Config(format!("cannot listen on {listen}: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| CliError::Other(error.to_string()))?;

    // The receiver's counters, its resolved timestamp and the relay's metrics, on /metrics
    // (and over OTLP when configured).
    let instance = config
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("changefeed-{}", std::process::id()));
    let otlp = Otlp::resolve(&config.telemetry, |name| std::env::var(name).ok())?;
    let telemetry = crate::telemetry::install(otlp.as_ref(), &instance)?;

    // Owned, so that the server can keep it once the sink is connected.
    let mut shutdown = Box::pin(shutdown_signal());
    let problem = SinkProblem::default();
    let sink = tokio::select! {
        sink = connect_sink(&sink_config, None, &problem) => sink?,
        () = &mut shutdown => return Ok(()),
    };
    eprintln!(
        "outbox changefeed: https://{address} -> {} (the receiver's outbox) -> {} {}",
        redacted(store),
        sink_config.kind,
        redacted(&sink_config.url)
    );
    let service = Service {
        receiver_config,
        sink,
        tls: TlsAcceptor::from(Arc::new(tls)),
        listener,
        metrics: telemetry.prometheus.clone(),
        config,
        batch,
    };
    with_pool!(&db, pool => service.run(pool.clone(), shutdown).await)?;
    telemetry.shutdown().await;
    eprintln!("outbox changefeed: stopped");
    Ok(())
}

/// What the endpoint and the relay behind it are made of.
struct Service<'a> {
    receiver_config: ReceiverConfig,
    sink: AnySink,
    tls: TlsAcceptor,
    listener: TcpListener,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    config: &'a Config,
    batch: usize,
}

impl Service<'_> {
    /// The endpoint storing into `pool`, and the relay publishing from it, until `shutdown`.
    async fn run<DB: Dialect>(
        self,
        pool: sqlx::Pool<DB>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CliError> {
        let cap = self.receiver_config.max_body_bytes;
        let receiver = Receiver::open(pool.clone(), Outbox::DEFAULT, self.receiver_config)
            .await
            .map_err(|error| CliError::Database(format!("changefeed.store: {error}")))?;
        let receiver = Arc::new(receiver);
        let relay = configured(
            Relay::builder(pool, self.sink).outbox(receiver.outbox()),
            &self.config.relay,
            self.batch,
        )
        .build();
        let health = Arc::clone(&receiver);
        let metrics = self.metrics;
        let app = axum::Router::new()
            .route(
                "/health",
                // 503 while the receiver's database fails.
                axum::routing::get(move || {
                    let answer = match health.health() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("the receiver's database fails: {reason}\n"),
                        ),
                    };
                    async move { answer }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let text = metrics.render();
                    async move { text }
                }),
            )
            .fallback(axum::routing::post(receive::<DB>))
            // The receiver answers 413 itself, with the cap in its reason: let one byte more in.
            .layer(DefaultBodyLimit::max(cap.saturating_add(1)))
            // CockroachDB 25.2+ gzips requests with `compression = 'gzip'`: decompressed here,
            // the cap applying to what comes out; another encoding is answered 415.
            .layer(tower_http::decompression::RequestDecompressionLayer::new())
            .with_state(receiver);
        // One signal stops both: the endpoint first takes no more requests, the relay settles
        // the batch in hand.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let listener = TlsListener::start(self.listener, self.tls);
        let server = axum::serve(listener, app).with_graceful_shutdown(wait(stopped.clone()));
        let relay = relay.run(wait(stopped));
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let (served, (), ()) = tokio::join!(server.into_future(), relay, signal);
        served.map_err(|error| CliError::Other(format!("the changefeed endpoint stopped: {error}")))
    }
}

/// One changefeed request: the receiver's answer, with the reason when it refuses.
async fn receive<DB: Dialect>(
    State(receiver): State<Arc<Receiver<DB>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match receiver.receive(authorization, &body).await {
        Ok(received) => (
            StatusCode::OK,
            format!(
                "staged {}, replays {}, deletes {}\n",
                received.staged, received.replays, received.deletes
            ),
        ),
        Err(error) => (
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
            format!("{error}\n"),
        ),
    }
}

/// The server's TLS configuration from PEM files.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|error| {
            CliError::Config(format!("changefeed.cert {}: {error}", cert.display()))
        })?;
    if certs.is_empty() {
        return Err(CliError::Config(format!(
            "changefeed.cert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| CliError::Config(format!("changefeed.key {}: {error}", key.display())))?;
    // Named, not left to the crate features: more than one provider is built in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| CliError::Config(format!("TLS: {error}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| CliError::Config(format!("changefeed.cert and changefeed.key: {error}")))
}

/// TCP connections with their TLS handshake done, for `axum::serve`: handshakes run
/// concurrently in a task of their own, so that a slow or failing client holds up no other.
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn start(listener: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, accepted) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%error, "changefeed endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%peer, %error, "changefeed endpoint: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "changefeed endpoint: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        TlsListener {
            accepted,
            local,
            task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
