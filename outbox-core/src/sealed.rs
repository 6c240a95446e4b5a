//! What seals the library's traits: only the library implements `Dialect`, its per-concern
//! traits and `OutboxConnection`. A leaf of the crate.

/// Implemented by the library for its databases and connections only.
pub trait Sealed {}

impl<DB: sqlx::Database> Sealed for sqlx::Transaction<'_, DB> {}
impl<DB: sqlx::Database> Sealed for sqlx::pool::PoolConnection<DB> {}
