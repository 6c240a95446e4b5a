//! A consumer cancelled while its transaction begins leaves none open; an old MariaDB inbox
//! made to compare ids byte for byte.

use super::*;

/// A consumer cancelled while its transaction begins — the server slow to answer `BEGIN`, the
/// consumer's task aborted meanwhile — leaves no transaction open on the pool's connection: the
/// next statement run on the pool is committed. (sqlx counts a transaction only once the server
/// answered `BEGIN`, so a `pool.begin()` cancelled while waiting returns its connection to the
/// pool inside a transaction that nobody ends.) `proxied` reaches the database through `proxy`
/// with one connection.
pub(super) async fn cancelled_while_beginning<D: TestDb>(
    fixture: Fixture<D>,
    proxied: sqlx::Pool<D::Database>,
    proxy: &outbox_tests::Proxy,
) where
    for<'c> &'c mut <D::Database as sqlx::Database>::Connection:
        sqlx::Executor<'c, Database = D::Database>,
{
    // The pool's one connection, open and idle.
    let warm = format!("UPDATE {} SET n = n", fixture.effects);
    sqlx::raw_sql(AssertSqlSafe(warm))
        .execute(&proxied)
        .await
        .unwrap();
    // In the pool once the ping sqlx sends on its release is answered.
    outbox_tests::eventually(
        Duration::from_secs(10),
        "the connection idle in the pool",
        || {
            let idle = proxied.num_idle();
            async move { idle == 1 }
        },
    )
    .await;
    proxy.hold();
    let consumer = tokio::spawn({
        let (inbox, pool, effects) = (
            fixture.inbox.clone(),
            proxied.clone(),
            fixture.effects.clone(),
        );
        async move { deliver(&inbox, &pool, &effects, "m-1").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // `BEGIN` sent, its answer held
    consumer.abort();
    assert!(
        consumer.await.unwrap_err().is_cancelled(),
        "the consumer finished while the server's answers were held"
    );
    proxy.release();
    let write = format!("UPDATE {} SET n = n + 100", fixture.effects);
    tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::raw_sql(AssertSqlSafe(write)).execute(&proxied),
    )
    .await
    .expect("the connection came back to the pool")
    .unwrap();
    assert_eq!(
        fixture.effects().await,
        100,
        "the write ran in the transaction the cancelled BEGIN left open, and was never committed"
    );
    assert_eq!(
        fixture.entries("TRUE").await,
        0,
        "the message was never processed"
    );
    proxied.close().await;
    fixture.drop_tables().await;
}

/// The cancelled-`BEGIN` test on each database with row locks: a pool of one connection that
/// reaches the server through a proxy.
macro_rules! cancelled_while_beginning_tests {
    ($($test:ident: $db:ty, $url:path, $options:ty;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let fixture = Fixture::<$db>::new().await;
                let options: $options = $url().parse().unwrap();
                let target = (options.get_host(), options.get_port());
                let target = tokio::net::lookup_host(target).await.unwrap().next().unwrap();
                let proxy = outbox_tests::Proxy::start(target).await;
                let proxied = sqlx::pool::PoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .connect_with(options.host("127.0.0.1").port(proxy.addr.port()))
                    .await
                    .unwrap();
                cancelled_while_beginning(fixture, proxied, &proxy).await;
            }
        )*
    };
}

cancelled_while_beginning_tests! {
    a_consumer_cancelled_while_beginning_leaves_no_transaction_open_on_postgres:
        Pg, outbox_tests::postgres_url, sqlx::postgres::PgConnectOptions;
    a_consumer_cancelled_while_beginning_leaves_no_transaction_open_on_mysql:
        My, outbox_tests::mysql_url, sqlx::mysql::MySqlConnectOptions;
}

/// An inbox table made by the earlier migration on MariaDB (text keys under `utf8mb4_bin`, which
/// pads with spaces) is made binary by `migrate`, keeping its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_makes_an_old_mysql_inbox_compare_ids_byte_for_byte() {
    let db = My::connect().await;
    let table = format!("inbox_{}", run_id());
    db.execute(format!(
        "CREATE TABLE {table} (consumer VARCHAR(255) NOT NULL, message_id VARCHAR(255) NOT NULL, \
         processed_at DATETIME(6) NOT NULL, PRIMARY KEY (consumer, message_id), \
         INDEX processed_idx (processed_at)) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
    ))
    .await;
    db.execute(format!(
        "INSERT INTO {table} VALUES ('c', 'm', UTC_TIMESTAMP(6))"
    ))
    .await;
    let inbox = Inbox::for_table(TableName::new(table.clone()).unwrap());
    // Twice: the upgrade is idempotent.
    inbox.migrate(db.pool()).await.unwrap();
    inbox.migrate(db.pool()).await.unwrap();
    let text_columns = db
        .scalar(format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = '{table}' AND data_type <> 'varbinary' \
             AND column_name IN ('consumer', 'message_id')"
        ))
        .await;
    assert_eq!(text_columns, 0, "the key columns are binary");
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(
        inbox.record(&mut *tx, "c", "m").await.unwrap(),
        Recorded::Duplicate,
        "the entry recorded before the upgrade is kept"
    );
    assert_eq!(
        inbox.record(&mut *tx, "c", "m ").await.unwrap(),
        Recorded::New
    );
    tx.rollback().await.unwrap();
    db.execute(format!("DROP TABLE {table}")).await;
}

// --- `#[inbox_handler]`, and a consumer that is also a producer -------------------------------
