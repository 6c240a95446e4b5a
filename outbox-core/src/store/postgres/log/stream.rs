//! The replication stream: connecting (or standing by while another relay streams the slot),
//! reading `pgoutput`, grouping a transaction's events, and confirming positions.

use super::*;

impl LogSource {
    pub(super) fn new(log: LogStream, config: &SourceConfig) -> Self {
        let names = LogNames::of(&config.table);
        let mut replication = log.replication;
        replication.slot.clone_from(&names.slot);
        replication.publication = names.publication.clone().into();
        replication.application_name = Some(format!(
            "{}{}",
            crate::admin::RELAY_APPLICATION_PREFIX,
            config.table
        ));
        let parked = TableSource::new(
            log.pool.clone(),
            &SourceConfig {
                parked_only: true,
                listen: false,
                ..config.clone()
            },
        );
        LogSource {
            inner: Arc::new(Inner {
                pool: log.pool,
                table: config.table.clone(),
                names,
                replication,
                ordering: config.ordering,
                retain: config.retain,
                max_batch_bytes: config.max_batch_bytes,
                parked,
                state: Mutex::new(State::default()),
                broken: AtomicBool::new(false),
                position: wal::position_table(&config.table),
                settled: tokio::sync::watch::Sender::new(None),
                recorder_started: AtomicBool::new(false),
            }),
        }
    }
}

impl Inner {
    pub(super) fn database_error(
        &self,
        operation: &'static str,
    ) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |source| Error::database(operation, &self.table, "PostgreSQL", source)
    }

    pub(super) fn log_error(&self, problem: String) -> Error {
        Error::LogTailing {
            table: self.table.to_string(),
            problem,
        }
    }

    /// The aggregates with a pending parked event, read from the table.
    pub(super) async fn load_parked(&self) -> Result<HashSet<(String, String)>, Error> {
        let sql = format!(
            "SELECT DISTINCT o.aggregate_type, o.aggregate_id FROM {} o WHERE o.parked AND {}",
            self.table.quoted('"'),
            pending("o")
        );
        let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(self.database_error("read parked events"))?;
        Ok(rows.into_iter().collect())
    }

    pub(super) async fn refresh_parked(&self, state: &mut State) -> Result<(), Error> {
        state.parked = self.load_parked().await?;
        state.parked_loaded = true;
        Ok(())
    }

    /// Opens the stream, unless another relay holds the slot (then: standby, `None`).
    pub(super) async fn connect(&self) -> Result<Option<Stream>, Error> {
        let (schema, name): (String, String) = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass",
        )
        .bind(self.table.quoted('"'))
        .fetch_one(&self.pool)
        .await
        .map_err(self.database_error("open the log"))?;
        let slot = wal::slot(&self.pool, &self.table)
            .await
            .map_err(self.database_error("open the log"))?;
        match slot {
            None => {
                return Err(self.log_error(format!(
                    "the replication slot `{}` does not exist: run `migrate` (or `outbox \
                     migrate`) with `log_tailing` or `wal_messages` set on the Outbox",
                    self.names.slot
                )));
            }
            Some(slot) if slot.wal_status.as_deref() == Some("lost") => {
                return Err(wal::invalidated(&self.table, &self.names.slot));
            }
            Some(_) => {}
        }
        let settled = self.recorded_position().await?;
        let mut replication = self.replication.clone();
        if let Some(settled) = settled {
            // The server skips what ended before it, and confirms it at once.
            replication.start_lsn = settled;
        }
        let started = async {
            let mut client = ReplicationClient::connect(replication).await?;
            client.wait_started().await?;
            Ok::<_, pgwire_replication::PgWireError>(client)
        };
        let client = match tokio::time::timeout(START_TIMEOUT, started).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                let text = error.to_string();
                if text.contains("55006") || text.contains("is active for PID") {
                    return Ok(None);
                }
                if text.contains("can no longer get changes") {
                    return Err(wal::invalidated(&self.table, &self.names.slot));
                }
                let hint = if text.contains("42501") {
                    "; the replication URL's role needs the REPLICATION attribute \
                     (`ALTER ROLE <role> REPLICATION`) or to be a superuser"
                } else {
                    ""
                };
                return Err(self.log_error(format!(
                    "cannot stream the replication slot `{}` ({}): {text}{hint}",
                    self.names.slot,
                    self.replication.display_connection()
                )));
            }
            Err(_) => {
                return Err(self.log_error(format!(
                    "the server did not start streaming the slot `{}` within {START_TIMEOUT:?}",
                    self.names.slot
                )));
            }
        };
        tracing::info!(table = %self.table, slot = %self.names.slot, "streaming the outbox from the transaction log");
        Ok(Some(Stream {
            client,
            relation: None,
            qualified: (schema, name),
            open: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: false,
            committed_at: 0,
            xid: 0,
            settled: settled.unwrap_or(Lsn(0)),
        }))
    }

    /// The relay's record of the end of the last transaction it settled, if any.
    pub(super) async fn recorded_position(&self) -> Result<Option<Lsn>, Error> {
        let sql = format!(
            "SELECT settled_lsn::text FROM {} WHERE slot = $1",
            self.position
        );
        let recorded: Option<String> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&self.names.slot)
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => self
                    .log_error(format!(
                        "the table {} where the relay records its position does not exist: \
                         run `migrate` (or `outbox migrate`) again with this version",
                        self.position
                    )),
                _ => self.database_error("read the relay's position")(error),
            })?;
        recorded
            .map(|text| {
                Lsn::parse(&text).map_err(|error| {
                    self.log_error(format!("the recorded position {text:?}: {error}"))
                })
            })
            .transpose()
    }

    /// Writes `settled` as the relay's position, in `conn`'s transaction or on its own. Never
    /// moves it back.
    pub(super) async fn record_position(
        &self,
        conn: &mut PgConnection,
        settled: Lsn,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {p} (slot, settled_lsn) VALUES ($1, $2::pg_lsn) \
             ON CONFLICT (slot) DO UPDATE SET settled_lsn = greatest({p}.settled_lsn, excluded.settled_lsn), \
             settled_at = clock_timestamp()",
            p = self.position
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&self.names.slot)
            .bind(settled.to_pg_string())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Writes the latest position a WAL-mode settlement left to the recorder task, now (when
    /// the relay stops, and every 2 s in case a write of the task failed).
    pub(super) async fn flush_position(&self) -> Result<(), sqlx::Error> {
        let latest = *self.settled.borrow();
        if let Some(settled) = latest {
            let mut conn = self.pool.acquire().await?;
            self.record_position(&mut conn, settled).await?;
        }
        Ok(())
    }

    /// Hands `settled` to the task that records WAL-mode positions, starting it the first time.
    /// The settlement does not wait for the write: a crash republishes the batch in flight and
    /// what was settled during the one write under way.
    pub(super) fn record_later(self: &Arc<Self>, settled: Lsn) {
        self.settled.send_replace(Some(settled));
        if self.recorder_started.swap(true, Atomic::SeqCst) {
            return;
        }
        let inner = Arc::downgrade(self);
        let mut latest = self.settled.subscribe();
        latest.mark_changed();
        tokio::spawn(async move {
            // Ends when the source is dropped (the sender with it).
            while latest.changed().await.is_ok() {
                let Some(settled) = *latest.borrow_and_update() else {
                    continue;
                };
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let written = async {
                    let mut conn = inner.pool.acquire().await?;
                    inner.record_position(&mut conn, settled).await
                };
                if let Err(error) = written.await {
                    tracing::warn!(%error, table = %inner.table,
                        "could not record the relay's position; trying again with the next settlement");
                }
            }
        });
    }

    /// The stream, connecting when due. `None`: standby, or waiting to connect again.
    pub(super) async fn stream<'s>(
        &self,
        state: &'s mut State,
    ) -> Result<Option<&'s mut Stream>, Error> {
        if self.broken.swap(false, Atomic::SeqCst) {
            // Its events are still in the slot: stream them again.
            state.stream = None;
        }
        if state.stream.is_none() {
            if state.retry_at.is_some_and(|at| Instant::now() < at) {
                return Ok(None);
            }
            state.retry_at = Some(Instant::now() + RECONNECT_EVERY);
            match self.connect().await? {
                Some(stream) => {
                    state.standby = false;
                    state.stream = Some(stream);
                }
                None => {
                    if !state.standby {
                        state.standby = true;
                        tracing::info!(table = %self.table, slot = %self.names.slot,
                            "another relay streams this outbox's slot: standing by to take over");
                    }
                    return Ok(None);
                }
            }
        }
        Ok(state.stream.as_mut())
    }

    pub(super) fn handle(&self, stream: &mut Stream, event: ReplicationEvent) -> Result<(), Error> {
        match event {
            ReplicationEvent::Begin {
                commit_time_micros,
                xid,
                ..
            } => {
                stream.open.clear();
                stream.committed_at = commit_time_micros;
                stream.xid = xid;
            }
            ReplicationEvent::XLogData { data, .. } => match data.first() {
                Some(b'R') => {
                    if let Some(relation) = parse_relation(&data[1..], &stream.qualified)
                        .map_err(|problem| self.log_error(problem))?
                    {
                        stream.relation = Some(relation);
                    }
                }
                Some(b'I') => {
                    if let Some(message) = parse_insert(&data[1..], stream.relation)
                        .map_err(|problem| self.log_error(problem))?
                    {
                        stream.open.push(Event {
                            message,
                            row: true,
                            commit_end: None,
                            commit: Lsn(0),
                            committed_at: stream.committed_at,
                            xid: stream.xid,
                            undecodable: None,
                        });
                    }
                }
                _ => {}
            },
            ReplicationEvent::Message {
                transactional: true,
                lsn,
                prefix,
                content,
            } if prefix == self.names.prefix => {
                // Negated, a WAL message's position never meets a row's `seq` (positive).
                let seq = -i64::try_from(lsn.as_u64()).unwrap_or(i64::MAX);
                let event = match wal::decode(&content, seq) {
                    Ok(message) => Event {
                        message,
                        row: false,
                        commit_end: None,
                        commit: Lsn(0),
                        committed_at: stream.committed_at,
                        xid: stream.xid,
                        undecodable: None,
                    },
                    Err(error) => Event {
                        message: Message::new(
                            uuid::Uuid::now_v7(),
                            seq,
                            "outbox",
                            format!("wal {lsn}"),
                            "outbox.undecodable",
                            serde_json::Value::from(String::from_utf8_lossy(&content)).to_string(),
                        ),
                        row: false,
                        commit_end: None,
                        commit: Lsn(0),
                        committed_at: stream.committed_at,
                        xid: stream.xid,
                        undecodable: Some(format!(
                            "the WAL message at {lsn} does not decode as an outbox event: {error}"
                        )),
                    },
                };
                stream.open.push(event);
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if end_lsn <= stream.settled {
                    // Settled before: the server sent it again (its position moved back).
                    if !stream.open.is_empty() {
                        tracing::debug!(table = %self.table, %end_lsn, settled = %stream.settled,
                            events = stream.open.len(), "skipping a transaction the relay settled before");
                    }
                    stream.open.clear();
                    if stream.queue.is_empty() && !stream.in_flight {
                        stream.client.update_applied_lsn(end_lsn);
                    }
                } else if let Some(last) = stream.open.last_mut() {
                    last.commit_end = Some(end_lsn);
                    for event in &mut stream.open {
                        event.commit = end_lsn;
                    }
                    stream.queued_bytes += stream.open.iter().map(Event::size).sum::<usize>();
                    stream.queue.extend(stream.open.drain(..));
                } else if stream.queue.is_empty() && !stream.in_flight {
                    stream.client.update_applied_lsn(end_lsn);
                }
            }
            // Everything before it was received and settled: let the slot move on (else it
            // would retain the WAL of every other table's writes).
            ReplicationEvent::KeepAlive { wal_end, .. }
                if stream.open.is_empty() && stream.queue.is_empty() && !stream.in_flight =>
            {
                stream.client.update_applied_lsn(wal_end);
            }
            _ => {}
        }
        Ok(())
    }

    /// Receives what already arrived, until `want` events or the byte budget are queued.
    pub(super) fn pump(&self, state: &mut State, want: usize) -> Result<(), Error> {
        let Some(stream) = state.stream.as_mut() else {
            return Ok(());
        };
        while stream.queue.len() < want && stream.queued_bytes < self.max_batch_bytes {
            match stream.client.recv().now_or_never() {
                None => break,
                Some(Ok(Some(event))) => {
                    if let Err(error) = self.handle(stream, event) {
                        state.stream = None;
                        return Err(error);
                    }
                }
                Some(Ok(None)) => {
                    state.stream = None;
                    break;
                }
                Some(Err(error)) => {
                    state.stream = None;
                    return Err(self.log_error(format!("the replication stream ended: {error}")));
                }
            }
        }
        Ok(())
    }

    /// Writes what a settled batch of the log leaves to the table, in one transaction: deletes
    /// (or marks) the published rows, parks the rest, and records `settled` as the relay's
    /// position. A batch that leaves nothing else to write (WAL mode) has its position
    /// recorded by a task of its own, without waiting.
    pub(super) async fn write(
        self: &Arc<Self>,
        outcome: &Outcome,
        settled: Option<Lsn>,
    ) -> Result<(), sqlx::Error> {
        if outcome.is_empty() {
            if let Some(settled) = settled {
                self.record_later(settled);
            }
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        if !outcome.xids.is_empty() {
            wait_visible(&mut conn, &outcome.xids).await?;
        }
        let mut tx = crate::transaction::begin_on(conn, None).await?;
        let rows = Settlement {
            published: outcome.published_rows.clone(),
            retry: outcome.retry_rows.clone(),
            dead: outcome.dead_rows.clone(),
        };
        <Postgres as RowLocking>::settle(&mut tx, &self.table, self.retain, &rows).await?;
        let t = self.table.quoted('"');
        if !outcome.parked_rows.is_empty() {
            let sql = format!("UPDATE {t} SET parked = true WHERE seq = ANY($1)");
            sqlx::query(AssertSqlSafe(sql))
                .bind(&outcome.parked_rows)
                .execute(&mut *tx)
                .await?;
        }
        if !outcome.parked_messages.is_empty() {
            park_messages(&mut tx, &t, &outcome.parked_messages).await?;
        }
        if !outcome.commit_positions.is_empty() {
            let (seqs, positions): (Vec<i64>, Vec<String>) = outcome
                .commit_positions
                .iter()
                .map(|(seq, lsn)| (*seq, lsn.to_pg_string()))
                .unzip();
            let sql = format!(
                "UPDATE {t} o SET commit_lsn = r.lsn::pg_lsn \
                 FROM unnest($1::int8[], $2::text[]) AS r(seq, lsn) WHERE o.seq = r.seq"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(seqs)
                .bind(positions)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(settled) = settled {
            self.record_position(&mut tx, settled).await?;
        }
        tx.commit().await
    }
}
