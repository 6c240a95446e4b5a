//! A claim of the log relay: a streamed batch, settled by confirming its transactions (and, in
//! table mode, deleting its rows), or parked rows claimed as a polling relay claims them.

use super::*;

impl Drop for StreamClaim {
    fn drop(&mut self) {
        if !self.settled {
            // Unsettled: the slot still holds these events; stream them again.
            self.inner.broken.store(true, Atomic::SeqCst);
        }
    }
}

impl StreamClaim {
    /// Sorts the events by what the relay did with them.
    pub(super) fn outcome(&self, settlement: Settlement) -> Outcome {
        let published: HashSet<i64> = settlement.published.into_iter().collect();
        let retry: HashMap<i64, (String, Duration)> = settlement
            .retry
            .into_iter()
            .map(|(seq, error, delay)| (seq, (error, delay)))
            .collect();
        let dead: HashMap<i64, String> = settlement.dead.into_iter().collect();
        let mut outcome = Outcome::default();
        let key = |m: &Message| (m.aggregate_type.clone(), m.aggregate_id.clone());
        let tried = self.events.iter().map(|event| {
            let seq = event.message.seq;
            let fate = if published.contains(&seq) {
                Fate::Published
            } else if let Some((error, delay)) = retry.get(&seq) {
                Fate::Retry(error.clone(), *delay)
            } else if let Some(error) = dead.get(&seq) {
                Fate::Dead(error.clone())
            } else {
                Fate::Behind
            };
            (event, fate)
        });
        let behind = self.behind.iter().map(|event| (event, Fate::Behind));
        let undecodable = self.dead.iter().map(|event| {
            let error = event.undecodable.clone().unwrap_or_default();
            (event, Fate::Dead(error))
        });
        let retain = self.inner.retain;
        for (event, fate) in tried.chain(behind).chain(undecodable) {
            let message = &event.message;
            if event.row && (retain || !matches!(fate, Fate::Published)) {
                outcome.commit_positions.push((message.seq, event.commit));
            }
            if matches!(fate, Fate::Retry(..) | Fate::Behind) {
                outcome.held.insert(key(message));
            }
            match (fate, event.row) {
                (Fate::Published, true) => outcome.published_rows.push(message.seq),
                (Fate::Published, false) => {}
                (Fate::Retry(error, delay), true) => {
                    outcome.parked_rows.push(message.seq);
                    outcome.retry_rows.push((message.seq, error, delay));
                }
                (Fate::Dead(error), true) => {
                    outcome.parked_rows.push(message.seq);
                    outcome.dead_rows.push((message.seq, error));
                }
                (Fate::Behind, true) => outcome.parked_rows.push(message.seq),
                (fate, false) => {
                    let (attempts, error, delay, dead) = match fate {
                        Fate::Retry(error, delay) => {
                            (message.attempts + 1, Some(error), delay, false)
                        }
                        Fate::Dead(error) => {
                            (message.attempts + 1, Some(error), Duration::ZERO, true)
                        }
                        _ => (message.attempts, None, Duration::ZERO, false),
                    };
                    outcome.parked_messages.push(Parked {
                        message: message.clone(),
                        attempts,
                        error,
                        delay,
                        dead,
                    });
                }
            }
        }
        let mut xids: Vec<i64> = self
            .events
            .iter()
            .chain(&self.behind)
            .filter(|e| e.row)
            .map(|e| i64::from(e.xid))
            .collect();
        xids.sort_unstable();
        xids.dedup();
        outcome.xids = xids;
        // Parked in the log's order, so that their rows' `seq` keep it.
        outcome
            .parked_messages
            .sort_by_key(|p| std::cmp::Reverse(p.message.seq));
        outcome
    }
}

impl Claim for LogClaim {
    fn take_messages(&mut self) -> Vec<Message> {
        match &mut self.0 {
            Batch::Parked(claim, _) => claim.take_messages(),
            Batch::Log(claim) => std::mem::take(&mut claim.messages),
        }
    }

    /// The parked events' claims note what they hold like a polling relay's; the log's events
    /// keep no note (the slot and the relay's position say where the stream stands).
    async fn in_hand(&mut self, messages: &[Message]) -> Result<HashMap<i64, u32>, Error> {
        match &mut self.0 {
            Batch::Parked(claim, _) => claim.in_hand(messages).await,
            Batch::Log(_) => Ok(HashMap::new()),
        }
    }

    async fn settle(self, settlement: Settlement) -> Result<(), Error> {
        match self.0 {
            Batch::Parked(claim, inner) => {
                claim.settle(settlement).await?;
                // An aggregate whose parked events are all gone flows from the log again.
                let mut state = inner.state.lock().await;
                inner.refresh_parked(&mut state).await
            }
            Batch::Log(mut claim) => {
                let outcome = claim.outcome(settlement);
                let inner = Arc::clone(&claim.inner);
                let written =
                    match tokio::time::timeout(SETTLE_TIMEOUT, inner.write(&outcome, claim.ack))
                        .await
                    {
                        Ok(written) => written.map_err(inner.database_error("settle")),
                        Err(_) => Err(inner.log_error(format!(
                            "the batch's writes took longer than {SETTLE_TIMEOUT:?}"
                        ))),
                    };
                let mut state = inner.state.lock().await;
                if let Err(error) = written {
                    // Unconfirmed, its events are still in the slot: end the stream now (the
                    // server may be waiting for it to shut down) and stream them again.
                    state.stream = None;
                    return Err(error);
                }
                if let Some(stream) = state.stream.as_mut() {
                    stream.in_flight = false;
                    if let Some(ack) = claim.ack {
                        stream.client.update_applied_lsn(ack);
                    }
                }
                state.parked.extend(outcome.held);
                claim.settled = true;
                Ok(())
            }
        }
    }
}
