//! The dialects: how each database stores the outbox. Everything dialect-specific lives here.

/// The inbox methods of `OutboxConnection` in a dialect's impl: each calls the function of the
/// same name in the dialect's `inbox` module.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
macro_rules! inbox_methods {
    () => {
        async fn __inbox_insert(
            &mut self,
            table: &TableName,
            consumer: &str,
            message_id: &str,
        ) -> Result<bool, sqlx::Error> {
            inbox::insert(self, table, consumer, message_id).await
        }

        async fn __inbox_migrate(&mut self, table: &TableName) -> Result<(), sqlx::Error> {
            inbox::migrate(self, table).await
        }

        async fn __inbox_purge(
            &mut self,
            table: &TableName,
            older_than_ms: i64,
            limit: i64,
        ) -> Result<u64, sqlx::Error> {
            inbox::purge(self, table, older_than_ms, limit).await
        }
    };
}

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
