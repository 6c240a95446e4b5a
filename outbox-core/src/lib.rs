//! # outbox — the transactional outbox for Rust services
//!
//! A service that writes its database and then publishes a message loses or invents events
//! whenever one of the two fails. The outbox removes that dual write: the event is written as a
//! row of an outbox table **in the same database transaction** as the business data, and a
//! relay publishes the rows afterwards.
//!
//! This crate records events; put `#[outbox_event]` on the service function that changes your
//! data and returns the changed entity:
//!
//! ```no_run
//! # #[cfg(feature = "postgres")] mod demo {
//! use outbox::{OutboxEvent, outbox_event};
//! use serde::Serialize;
//! use sqlx::{Postgres, Transaction};
//!
//! #[derive(Serialize, OutboxEvent, sqlx::FromRow)]
//! #[outbox(aggregate_type = "account", event_type = "AccountOpened")]
//! pub struct Account {
//!     #[outbox(aggregate_id)]
//!     pub id: i64,
//!     pub owner: String,
//! }
//!
//! #[derive(Debug)]
//! pub enum AppError { Db(sqlx::Error), Outbox(outbox::Error) }
//! impl From<sqlx::Error> for AppError { fn from(e: sqlx::Error) -> Self { AppError::Db(e) } }
//! impl From<outbox::Error> for AppError { fn from(e: outbox::Error) -> Self { AppError::Outbox(e) } }
//!
//! /// Opens an account; the `AccountOpened` event commits or rolls back with it.
//! #[outbox_event]
//! pub async fn open_account(
//!     tx: &mut Transaction<'_, Postgres>,
//!     owner: &str,
//! ) -> Result<Account, AppError> {
//!     let account = sqlx::query_as("INSERT INTO accounts (owner) VALUES ($1) RETURNING id, owner")
//!         .bind(owner)
//!         .fetch_one(&mut **tx)
//!         .await?;
//!     Ok(account)
//! }
//! # }
//! ```
//!
//! * [`OutboxEvent`] (and its derive) says what an entity's event is;
//! * [`outbox_event`] records the returned entity through the function's own transaction, and
//!   refuses at compile time what cannot be transactional;
//! * [`record`] is the same step by hand, [`Event`] describes a value without the derive;
//! * [`migrate`] creates the table, [`Outbox`] configures another table or payload limit;
//! * [`registered_events`] lists every event type the program can emit;
//! * [`relay`] publishes the recorded events to a sink, in order per aggregate; [`inbox`]
//!   processes them exactly once on the consumer's side;
//! * [`admin`] answers what an operator asks (status, relays at work, dead letters, the latest
//!   events), and [`store`] holds each database's SQL; [`Dialect`], the bound generic code
//!   writes, is made of one sealed trait per concern (see [`store`]).
//!
//! ## Layers
//!
//! The crate's modules, bottom to top. A module imports only modules of its own layer or
//! below, and none in a circle: `tests/tests/house.rs` reads this table and the source, and
//! fails on an import that breaks it.
//!
//! | layer | modules | what they hold |
//! | --- | --- | --- |
//! | 0 | error, table, message, sink, consumed, envelope, event, registry, sealed, transaction | what flows and what names it: errors, table names, the message, the sink trait and its destination, a consumed message, header names and routing, events and their registry, sealing, beginning a transaction |
//! | 1 | telemetry, sinks, catalog | spans and context propagation; the broker sinks; the AsyncAPI catalog |
//! | 2 | outbox | recording: the table's configuration, `record`, the connections it records through |
//! | 3 | relay, inbox, admin, audit | what uses a recorded outbox: publishing, consuming, operating, auditing |
//! | 4 | changefeed, __private | the CockroachDB receiver (on the relay); the macros' support |
//! | 5 | store | every database's SQL, implementing the concerns' traits |
//!
//! ## Cargo features
//!
//! Read from the package's manifest, so that the list is always whole:
//!
#![doc = document_features::document_features!()]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod audit;
pub mod catalog;
pub mod changefeed;
mod consumed;
mod envelope;
mod error;
mod event;
pub mod inbox;
mod message;
mod outbox;
mod registry;
pub mod relay;
mod sealed;
mod sink;
pub mod sinks;
pub mod store;
mod table;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod telemetry;
mod transaction;

pub use error::Error;
pub use event::{Event, OutboxEvent, Recordable, Schedule};
pub use outbox::OutboxConnection;
pub use outbox::{Outbox, migrate, record};
pub use registry::{EventDescriptor, Origin, registered_events};
pub use store::Dialect;
pub use table::TableName;

/// `#[outbox_event]`: records the entity an async service function returns as an outbox event,
/// through the function's own transaction.
///
/// The function must be `async`, take exactly one transaction parameter
/// (`&mut sqlx::Transaction<'_, DB>` or `&mut PgConnection`/`MySqlConnection`/`SqliteConnection`,
/// named anything) and return `Result<T, E>` where `T: Serialize` and
/// `E: From<outbox::Error>`. On `Ok(entity)` the entity is recorded with
/// [`record`] before the function returns; on `Err` nothing is recorded. A pool, a transaction
/// taken by value, a missing transaction or a non-`Result` return are compile errors.
///
/// Arguments, all optional:
///
/// * `aggregate_type = "..."`, `event_type = "..."`: override what `#[derive(OutboxEvent)]`
///   says, or describe a plain `Serialize` type;
/// * `aggregate_id = |entity| entity.id`: a closure over `&T` returning a `Display` value or an
///   `Option` of one;
/// * `outbox = PATH`: an [`Outbox`] constant to record into another table.
///
/// Without the derive, give all three of `aggregate_type`, `event_type` and `aggregate_id`.
#[cfg(feature = "macros")]
pub use outbox_derive::outbox_event;

/// `#[inbox_handler]`: processes a message exactly once, the consumer-side mirror of
/// [`outbox_event`]. Before the function's body runs, the message id is recorded in the
/// [inbox](inbox::Inbox) through the function's own transaction; a message whose id is already
/// there returns [`Processed::Duplicate`](inbox::Processed::Duplicate) without running the body.
///
/// The function must be `async`, take one transaction parameter (as for [`outbox_event`]) and
/// the message — the parameter named `message`, or the only other one — whose type implements
/// [`InboxMessage`](inbox::InboxMessage), and return `Result<T, E>` with
/// `E: From<outbox::Error>`. The attribute changes the return type to
/// `Result<Processed<T>, E>`. On `Err`, roll the transaction back (drop it): the id is not
/// recorded and the message can be retried. The caller commits, then acknowledges the message.
///
/// ```
/// # #[cfg(feature = "postgres")] mod demo {
/// use outbox::inbox::Processed;
/// use outbox::inbox_handler;
/// use outbox::relay::Message;
/// use sqlx::{Postgres, Transaction};
///
/// #[inbox_handler(consumer = "read-model")]
/// async fn on_account_event(
///     tx: &mut Transaction<'_, Postgres>,
///     message: &Message,
/// ) -> Result<(), outbox::Error> {
///     // apply `message.payload` to the read model through `tx`
///     Ok(())
/// }
///
/// async fn consume(pool: &sqlx::PgPool, message: &Message) -> Result<(), Box<dyn std::error::Error>> {
///     let mut tx = pool.begin().await?;
///     match on_account_event(&mut tx, message).await? {
///         Processed::Done(()) => tx.commit().await?,
///         Processed::Duplicate => tx.rollback().await?,
///     }
///     Ok(()) // now acknowledge the message to the broker
/// }
/// # }
/// ```
///
/// Arguments, both optional: `consumer = "..."`, the consumer's name in the inbox (default: the
/// function's name); `inbox = PATH`, an [`Inbox`](inbox::Inbox) constant for another table.
#[cfg(feature = "macros")]
pub use outbox_derive::inbox_handler;

/// `#[derive(OutboxEvent)]`: implements [`OutboxEvent`] from
/// `#[outbox(aggregate_type = "...", event_type = "...")]` on a struct with named fields and
/// `#[outbox(aggregate_id)]` on exactly one field. `event_type` defaults to the type's name.
#[cfg(feature = "macros")]
pub use outbox_derive::OutboxEvent;

#[doc(hidden)]
pub mod __private;
