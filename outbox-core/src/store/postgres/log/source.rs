//! The log as a relay [`Source`]: a batch from the stream, or parked rows due again.

use super::*;

impl Source for LogSource {
    type Claim = LogClaim;

    async fn claim(&self, max: usize) -> Result<Option<LogClaim>, Error> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        if !state.parked_loaded {
            inner.refresh_parked(&mut state).await?;
        }
        // The parked events, every other claim while there are any.
        state.parked_turn = !state.parked_turn;
        if state.parked_turn
            && !state.parked.is_empty()
            && let Some(claim) = inner.parked.claim(max).await?
        {
            return Ok(Some(LogClaim(Batch::Parked(claim, Arc::clone(inner)))));
        }
        if inner.stream(&mut state).await?.is_none() {
            return Ok(None);
        }
        inner.pump(&mut state, max)?;
        let ordered = inner.ordering == Ordering::PerAggregate;
        let State { stream, parked, .. } = &mut *state;
        let Some(stream) = stream.as_mut() else {
            return Ok(None);
        };
        if stream.queue.is_empty() {
            return Ok(None);
        }
        // As many as the batch and the byte budget take, and always the first.
        let mut bytes = 0_usize;
        let take = stream
            .queue
            .iter()
            .take(max.max(1))
            .take_while(|event| {
                bytes = bytes.saturating_add(event.size());
                bytes <= inner.max_batch_bytes
            })
            .count()
            .max(1);
        let mut events: Vec<Event> = stream.queue.drain(..take).collect();
        stream.queued_bytes = stream
            .queued_bytes
            .saturating_sub(events.iter().map(Event::size).sum());
        let ack = events.iter().rev().find_map(|e| e.commit_end);
        let mut behind = Vec::new();
        let mut dead = Vec::new();
        events.retain(|event| {
            if event.undecodable.is_some() {
                dead.push(event.clone());
                return false;
            }
            let key = (
                event.message.aggregate_type.clone(),
                event.message.aggregate_id.clone(),
            );
            if ordered && parked.contains(&key) {
                behind.push(event.clone());
                return false;
            }
            true
        });
        stream.in_flight = true;
        let messages = events.iter().map(|e| e.message.clone()).collect();
        Ok(Some(LogClaim(Batch::Log(StreamClaim {
            inner: Arc::clone(inner),
            messages,
            events,
            behind,
            dead,
            ack,
            settled: false,
        }))))
    }

    async fn wait(&self, timeout: Duration) {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let deadline = Instant::now() + timeout;
        let Some(stream) = state.stream.as_mut() else {
            let until = state.retry_at.map_or(deadline, |at| at.min(deadline));
            drop(state);
            tokio::time::sleep_until(until.into()).await;
            return;
        };
        while stream.queue.is_empty() {
            match tokio::time::timeout_at(deadline.into(), stream.client.recv()).await {
                Err(_) => return,
                Ok(Ok(Some(event))) => {
                    if let Err(error) = inner.handle(stream, event) {
                        tracing::warn!(%error, "outbox log stream");
                        state.stream = None;
                        return;
                    }
                }
                Ok(Ok(None)) => {
                    state.stream = None;
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, table = %inner.table, "the replication stream ended; reconnecting");
                    state.stream = None;
                    return;
                }
            }
        }
    }

    async fn maintain(&self, retention: Option<Duration>) -> Result<f64, Error> {
        let inner = &self.inner;
        // The latest WAL-mode position, again, in case a write of the recorder failed.
        inner
            .flush_position()
            .await
            .map_err(inner.database_error("record the relay's position"))?;
        let table_lag = inner.parked.maintain(retention).await?;
        let slot = wal::slot(&inner.pool, &inner.table)
            .await
            .map_err(inner.database_error("read the slot"))?;
        if let Some(slot) = &slot {
            let table = inner.table.to_string();
            metrics::gauge!("outbox_slot_retained_bytes", "table" => table.clone())
                .set(slot.retained_bytes as f64);
            metrics::gauge!("outbox_slot_lag_bytes", "table" => table.clone())
                .set(slot.lag_bytes as f64);
            metrics::gauge!("outbox_slot_active", "table" => table)
                .set(f64::from(u8::from(slot.active)));
            if slot.wal_status.as_deref() == Some("lost") {
                return Err(wal::invalidated(&inner.table, &inner.names.slot));
            }
        }
        let mut state = inner.state.lock().await;
        inner.refresh_parked(&mut state).await?;
        // The oldest event received and not yet published.
        let queued = state
            .stream
            .as_ref()
            .and_then(|s| s.queue.front().map(|e| e.committed_at))
            .map_or(0.0, age_of);
        Ok(table_lag.max(queued))
    }

    async fn close(&self) {
        if let Err(error) = self.inner.flush_position().await {
            tracing::warn!(%error, table = %self.inner.table,
                "could not record the relay's last position: a restart may publish the last 50 ms again");
        }
        let mut state = self.inner.state.lock().await;
        if let Some(mut stream) = state.stream.take() {
            // The worker sends no last status with CopyDone: let the latest confirmation go
            // out first, so that a graceful stop publishes nothing twice.
            tokio::time::sleep(STATUS_INTERVAL * 2).await;
            // CopyDone: the slot is free for a standby at once.
            if let Err(error) = stream.client.shutdown().await {
                tracing::debug!(%error, "closing the replication stream");
            }
        }
    }
}

/// Seconds since `micros` (µs since 2000-01-01, PostgreSQL's epoch).
pub(super) fn age_of(micros: i64) -> f64 {
    const POSTGRES_EPOCH: i64 = 946_684_800_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    (now - POSTGRES_EPOCH - micros).max(0) as f64 / 1e6
}
