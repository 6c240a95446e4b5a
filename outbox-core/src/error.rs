//! The one error type of the runtime.

/// Everything that can go wrong while recording or configuring the outbox.
///
/// Service errors convert from it (`impl From<outbox::Error> for AppError`), which is what
/// lets `#[outbox_event]` use `?` on the recording step inside your function.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection given to [`record`](crate::record) is in autocommit mode. Writing the row
    /// would commit it at once, independently of the business data, which is the dual write
    /// the outbox exists to prevent; nothing was written.
    #[error(
        "cannot record `{event_type}` into `{table}`: the {dialect} connection is not inside a \
         transaction (begin one with `pool.begin()` and pass `&mut tx`); nothing was written"
    )]
    NoTransaction {
        /// Event type that was being recorded.
        event_type: String,
        /// Outbox table the row was meant for.
        table: String,
        /// Database dialect of the connection.
        dialect: &'static str,
    },

    /// The entity has no aggregate id yet (an `Option` id that is still `None`): it was not
    /// persisted, so an event about it cannot name it. Nothing was written.
    #[error(
        "cannot record `{event_type}`: its `{aggregate_type}` aggregate id is missing (`None`), \
         so the entity was not persisted yet; write it first and return the stored entity"
    )]
    NotPersisted {
        /// Aggregate type of the event.
        aggregate_type: String,
        /// Event type of the event.
        event_type: String,
    },

    /// The entity could not be serialized to JSON (a map with non-string keys, a failing
    /// `Serialize` implementation, ...). Nothing was written.
    #[error("cannot serialize `{event_type}` to JSON: {source}")]
    Serialize {
        /// Event type of the event.
        event_type: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// The serialized payload is larger than the configured limit
    /// ([`Outbox::max_payload_bytes`](crate::Outbox::max_payload_bytes)). Nothing was written.
    #[error(
        "cannot record `{event_type}`: its payload is {size} bytes, over the limit of {limit} \
         bytes (raise it with `Outbox::max_payload_bytes` or slim the event)"
    )]
    PayloadTooLarge {
        /// Event type of the event.
        event_type: String,
        /// Size of the serialized payload in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },

    /// A metadata value (aggregate type, aggregate id or event type) is empty or too long for
    /// its column. Nothing was written.
    #[error("cannot record `{event_type}`: {field} {problem}")]
    InvalidMetadata {
        /// Event type of the event (possibly the offending value itself).
        event_type: String,
        /// Which field: `aggregate_type`, `aggregate_id` or `event_type`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// A configured table name is not a plain SQL identifier. Names are never quoted into SQL
    /// unchecked, so configuration cannot inject SQL.
    #[error("invalid outbox table name {name:?}: {reason}")]
    InvalidTableName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An SQLite relay lost its lease while publishing a batch (it was stalled longer than the
    /// lease lasts): the relay that took over publishes the batch again. Raise
    /// `RelayBuilder::lease_ttl` if this recurs.
    #[error(
        "the relay lease of outbox table `{table}` passed to another relay during a batch; \
         that relay publishes the batch again"
    )]
    LeaseLost {
        /// The outbox table.
        table: String,
    },

    /// An inbox was given an empty consumer name or message id, one over 255 bytes (the
    /// width of the MySQL columns), or one holding a NUL character (which PostgreSQL's text
    /// cannot store).
    #[error("inbox of consumer {consumer:?}: the {field} {problem}")]
    InvalidInboxKey {
        /// The consumer name.
        consumer: String,
        /// `consumer name` or `message id`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// A message from a broker carries no id to deduplicate on.
    #[error(
        "the {broker} message has no id: expected {expected}; publish it through the outbox, \
         or set a message id"
    )]
    MissingMessageId {
        /// Which broker's message.
        broker: &'static str,
        /// Where the id was looked for.
        expected: &'static str,
    },

    /// A broker's client refused what a consumer helper asked of it (subscribe, assign, seek),
    /// or was configured in a way the helper cannot work with.
    #[error("{broker} consumer: cannot {operation}: {problem}")]
    Consumer {
        /// Which broker.
        broker: &'static str,
        /// What was being done.
        operation: &'static str,
        /// The client's error, or what to change.
        problem: String,
    },

    /// A feature that this database does not have.
    #[error("{feature} is not available on {dialect}: {hint}")]
    Unsupported {
        /// The feature asked for.
        feature: &'static str,
        /// Database dialect.
        dialect: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// Tailing PostgreSQL's transaction log cannot go on: the server's settings, the
    /// replication slot or the connection settings need a change, which `problem` names.
    #[error("log tailing of outbox table `{table}`: {problem}")]
    LogTailing {
        /// The outbox table.
        table: String,
        /// What is wrong, and what to change.
        problem: String,
    },

    /// The replication URL given to a log stream is not one.
    #[error("invalid replication URL: {problem}")]
    InvalidReplicationUrl {
        /// What is wrong with it (never its password).
        problem: String,
    },

    /// The database refused an operation.
    #[error("{operation} on table `{table}` failed ({dialect}): {source}")]
    Database {
        /// What was being done: `record`, `migrate`, ...
        operation: &'static str,
        /// The table involved.
        table: String,
        /// Database dialect.
        dialect: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// [`Error::Database`] for `operation` on `table`.
    pub(crate) fn database(
        operation: &'static str,
        table: &impl std::fmt::Display,
        dialect: &'static str,
        source: sqlx::Error,
    ) -> Self {
        Error::Database {
            operation,
            table: table.to_string(),
            dialect,
            source,
        }
    }
}
