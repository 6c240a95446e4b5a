//! The receiver: a request's rows made durable in the staging table within a bounded time, and
//! the task that moves them into the outbox table, in commit order, as resolved timestamps
//! arrive.

use super::request::parse;
use super::*;

/// Receives a CockroachDB changefeed of the outbox table into an outbox table of its own, from
/// which a [`Relay`](crate::relay::Relay) publishes: see the [module](self) for the protocol
/// and the guarantees.
#[derive(Debug)]
pub struct Receiver<DB: Staging> {
    pool: sqlx::Pool<DB>,
    outbox: Outbox,
    config: ReceiverConfig,
    shared: Arc<Shared>,
    /// The newest resolved timestamp, for the releasing task; dropped with the receiver, which
    /// ends the task.
    resolved: tokio::sync::watch::Sender<Option<Hlc>>,
}

/// What the receiver and its releasing task both see.
#[derive(Debug, Default)]
struct Shared {
    /// Everything staged before this timestamp has been moved to the outbox table.
    released: Mutex<Option<Hlc>>,
    /// Why storing requests fails, until a request is stored again.
    storing: Mutex<Option<String>>,
    /// Why moving rows to the outbox table fails, until a move succeeds again. Apart from
    /// `storing`, so that a stored request does not hide a release that keeps failing.
    releasing: Mutex<Option<String>>,
}

/// Sets one of [`Shared`]'s failure reasons.
fn set(slot: &Mutex<Option<String>>, reason: Option<String>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = reason;
}

/// How many rows one release transaction moves.
const RELEASE_CHUNK: i64 = 1000;

impl<DB: Staging> Receiver<DB> {
    /// A receiver storing into `outbox`'s table in `pool` (created, with the staging table
    /// `<table>_changefeed`, when missing). Publish that table with a relay of the same pool
    /// and outbox. Starts the task that moves rows on as resolved timestamps arrive; it ends
    /// when the receiver is dropped.
    pub async fn open(
        pool: sqlx::Pool<DB>,
        outbox: Outbox,
        config: ReceiverConfig,
    ) -> Result<Self, crate::Error> {
        outbox.migrate(&pool).await?;
        DB::migrate_staging(&pool, outbox.table())
            .await
            .map_err(|source| {
                crate::Error::database("migrate", outbox.table(), DB::NAME, source)
            })?;
        let shared = Arc::new(Shared::default());
        let (resolved, watch) = tokio::sync::watch::channel(None);
        tokio::spawn(release_as_resolved(
            pool.clone(),
            outbox.clone(),
            config.remember,
            Arc::clone(&shared),
            watch,
        ));
        Ok(Receiver {
            pool,
            outbox,
            config,
            shared,
            resolved,
        })
    }

    /// The outbox whose table the receiver fills: give it to the relay that publishes it.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Whether the receiver's database works: `Err` with the reason while storing or releasing
    /// fails, for a health check to report.
    pub fn health(&self) -> Result<(), String> {
        for slot in [&self.shared.storing, &self.shared.releasing] {
            if let Some(reason) = &*slot.lock().unwrap_or_else(|p| p.into_inner()) {
                return Err(reason.clone());
            }
        }
        Ok(())
    }

    /// The last resolved timestamp received: every row committed before it has been received.
    pub fn resolved(&self) -> Option<Hlc> {
        *self.resolved.borrow()
    }

    /// Every row committed before this timestamp has been moved to the outbox table, in order,
    /// for the relay to publish.
    pub fn released(&self) -> Option<Hlc> {
        *self
            .shared
            .released
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Handles one request: its `Authorization` header, if any, and its body. `Ok` is answered
    /// with 200; an error with [`ChangefeedError::status`].
    pub async fn receive(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ChangefeedError> {
        let result = self.receive_checked(authorization, body).await;
        if let Err(error) = &result {
            tracing::warn!(%error, status = error.status(), "changefeed request refused");
        }
        result
    }

    async fn receive_checked(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ChangefeedError> {
        if let Some(secret) = &self.config.secret {
            let given = authorization.unwrap_or("");
            if !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
                return Err(ChangefeedError::Unauthorized);
            }
        }
        if body.len() > self.config.max_body_bytes {
            return Err(ChangefeedError::TooLarge {
                size: body.len(),
                cap: self.config.max_body_bytes,
            });
        }
        let (staged, mut received) = parse(body)?;
        if !staged.is_empty() {
            self.stage(&staged, &mut received).await?;
        }
        if let Some(resolved) = received.resolved {
            self.resolve(resolved);
        }
        Ok(received)
    }

    /// Makes `rows` durable within [`ReceiverConfig::answer_within`].
    async fn stage(&self, rows: &[Staged], received: &mut Received) -> Result<(), ChangefeedError> {
        let unavailable = |reason: String| {
            set(&self.shared.storing, Some(reason.clone()));
            ChangefeedError::Unavailable {
                rows: rows.len(),
                reason,
            }
        };
        let within = self.config.answer_within;
        let fresh =
            match tokio::time::timeout(within, DB::stage(&self.pool, self.outbox.table(), rows))
                .await
            {
                Ok(Ok(fresh)) => fresh,
                Ok(Err(error)) => {
                    return Err(unavailable(format!(
                        "{} `{}`: {error}",
                        DB::NAME,
                        self.outbox.table()
                    )));
                }
                Err(_) => {
                    return Err(unavailable(format!(
                        "{} `{}` did not answer within {within:?}",
                        DB::NAME,
                        self.outbox.table()
                    )));
                }
            };
        set(&self.shared.storing, None);
        let released = self.released();
        let mut late = 0;
        for (row, fresh) in rows.iter().zip(fresh) {
            if !fresh {
                received.replays += 1;
                continue;
            }
            received.staged += 1;
            if released.is_some_and(|released| row.updated < released.stored()) {
                late += 1;
            }
        }
        metrics::counter!("outbox_changefeed_events_total").increment(received.staged as u64);
        if late > 0 {
            tracing::warn!(
                late,
                released = %released.map(|r| r.to_string()).unwrap_or_default(),
                "changefeed rows arrived after a resolved timestamp that covered them (a replay \
                 older than the receiver remembers, or a changefeed created again): they are \
                 published with the next resolved timestamp, possibly after later events of \
                 their aggregates"
            );
        }
        Ok(())
    }

    /// Hands a resolved timestamp to the releasing task.
    fn resolve(&self, resolved: Hlc) {
        self.resolved.send_if_modified(|newest| {
            if newest.is_some_and(|newest| newest >= resolved) {
                return false;
            }
            *newest = Some(resolved);
            true
        });
        // The timestamp, not a lag computed now: a lag set only when a resolved message arrives
        // would stop growing exactly when the feed stalls. `time() - this` is the lag.
        if let Some(newest) = *self.resolved.borrow() {
            metrics::gauge!("outbox_changefeed_resolved_timestamp_seconds")
                .set(newest.wall as f64 / 1e9);
        }
    }
}

/// The releasing task: on each newer resolved timestamp, moves what it covers into the outbox
/// table, in order, a chunk per transaction; forgets old released ids now and then. Retries
/// after a failure; ends when the receiver is dropped.
async fn release_as_resolved<DB: Staging>(
    pool: sqlx::Pool<DB>,
    outbox: Outbox,
    remember: Duration,
    shared: Arc<Shared>,
    mut watch: tokio::sync::watch::Receiver<Option<Hlc>>,
) {
    let mut failures = 0_u32;
    let mut forgotten_at: Option<std::time::Instant> = None;
    let backoff = crate::relay::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let target = *watch.borrow_and_update();
        let done = *shared.released.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(target) = target.filter(|target| done.is_none_or(|done| done < *target)) {
            match release_all(&pool, &outbox, target).await {
                Ok(moved) => {
                    failures = 0;
                    set(&shared.releasing, None);
                    *shared.released.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
                    if moved > 0 {
                        tracing::debug!(moved, resolved = %target, "changefeed rows released");
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let reason = format!("{} `{}`: {error}", DB::NAME, outbox.table());
                    tracing::warn!(%reason, "releasing changefeed rows failed; retrying");
                    set(&shared.releasing, Some(reason));
                    tokio::time::sleep(backoff.delay(failures)).await;
                    continue;
                }
            }
        }
        if forgotten_at.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            let cutoff = unix_seconds()
                .saturating_sub(i64::try_from(remember.as_secs()).unwrap_or(i64::MAX));
            match DB::forget_released(&pool, outbox.table(), cutoff).await {
                Ok(_) => forgotten_at = Some(std::time::Instant::now()),
                Err(error) => tracing::warn!(%error, "forgetting old changefeed ids failed"),
            }
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// Moves every staged row before `before`, chunk by chunk.
async fn release_all<DB: Staging>(
    pool: &sqlx::Pool<DB>,
    outbox: &Outbox,
    before: Hlc,
) -> Result<usize, sqlx::Error> {
    let mut moved = 0;
    loop {
        let chunk =
            DB::release(pool, outbox, before.stored(), RELEASE_CHUNK, unix_seconds()).await?;
        moved += chunk;
        if (chunk as i64) < RELEASE_CHUNK {
            return Ok(moved);
        }
    }
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
