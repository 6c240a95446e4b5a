//! Functions generic over the database, connection parameters written as
//! `&mut <DB as Database>::Connection`, and the registry of event types.
#![allow(clippy::unwrap_used)]

use outbox::{Dialect, Error, Origin, OutboxEvent, outbox_event, registered_events};
use outbox_tests::{Lite, My, Pg, TestDb, run_id};
use serde::Serialize;
use sqlx::{Database, Transaction};

#[derive(Debug, Serialize, OutboxEvent)]
#[outbox(aggregate_type = "customer", event_type = "CustomerRegistered")]
pub struct Customer {
    #[outbox(aggregate_id)]
    pub id: String,
}

#[derive(Debug)]
pub struct AppError(#[allow(dead_code)] Error);

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError(e)
    }
}

/// One service for every database.
#[outbox_event]
pub async fn register<DB: Dialect>(
    tx: &mut Transaction<'_, DB>,
    id: String,
) -> Result<Customer, AppError> {
    let _ = &tx;
    Ok(Customer { id })
}

/// The connection form, named through the database type.
#[outbox_event(event_type = "CustomerVerified")]
pub async fn verify<DB>(
    conn: &mut <DB as Database>::Connection,
    id: String,
) -> Result<Customer, AppError>
where
    DB: Dialect,
{
    let _ = &conn;
    Ok(Customer { id })
}

async fn generic_functions_record_on<H: TestDb>() {
    let db = H::connect().await;
    let run = run_id();
    let mut tx = db.pool().begin().await.unwrap();
    register(&mut tx, format!("{run}-1")).await.unwrap();
    verify::<H::Database>(&mut tx, format!("{run}-1"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows = db.outbox_rows("outbox", &run).await;
    let types: Vec<_> = rows.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["CustomerRegistered", "CustomerVerified"],
        "on {}",
        H::NAME
    );
}

#[tokio::test]
async fn generic_functions_record_on_postgres() {
    generic_functions_record_on::<Pg>().await;
}

#[tokio::test]
async fn generic_functions_record_on_mysql() {
    generic_functions_record_on::<My>().await;
}

#[tokio::test]
async fn generic_functions_record_on_sqlite() {
    generic_functions_record_on::<Lite>().await;
}

#[test]
fn registry_lists_derived_types_and_annotated_functions() {
    let events: Vec<_> = registered_events().collect();
    let module = module_path!();

    let derived = events
        .iter()
        .find(|e| e.origin() == Origin::Type { name: "Customer" })
        .unwrap_or_else(|| panic!("Customer is not registered: {events:#?}"));
    assert_eq!(derived.aggregate_type(), "customer");
    assert_eq!(derived.event_type(), "CustomerRegistered");
    assert_eq!(derived.module_path(), module);
    assert_eq!(derived.function(), None);

    let register = events
        .iter()
        .find(|e| e.function() == Some("register"))
        .unwrap_or_else(|| panic!("register is not registered: {events:#?}"));
    assert_eq!(
        (register.aggregate_type(), register.event_type()),
        ("customer", "CustomerRegistered"),
        "taken from the derive"
    );
    assert_eq!(register.module_path(), module);

    let verify = events
        .iter()
        .find(|e| e.function() == Some("verify"))
        .unwrap();
    assert_eq!(
        (verify.aggregate_type(), verify.event_type()),
        ("customer", "CustomerVerified"),
        "the argument overrides the derive"
    );

    // Exactly one descriptor per type and per function of this file: nothing is submitted twice.
    let mut here: Vec<_> = events
        .iter()
        .filter(|e| e.module_path() == module)
        .map(|e| match e.origin() {
            Origin::Type { name } => format!("type {name}"),
            Origin::Function { name } => format!("fn {name}"),
            other => format!("{other:?}"),
        })
        .collect();
    here.sort();
    assert_eq!(
        here,
        [
            "fn count",
            "fn register",
            "fn verify",
            "type Counter",
            "type Customer"
        ]
    );
}

/// A `!Sync` entity still gives a `Send` future: recording holds nothing of it across `.await`.
#[test]
fn annotated_futures_are_send_even_for_non_sync_entities() {
    #[derive(Serialize, OutboxEvent)]
    #[outbox(aggregate_type = "counter")]
    struct Counter {
        #[outbox(aggregate_id)]
        id: u32,
        hits: std::cell::Cell<u32>,
    }

    #[outbox_event]
    async fn count(tx: &mut Transaction<'_, sqlx::Postgres>) -> Result<Counter, AppError> {
        let _ = &tx;
        Ok(Counter {
            id: 1,
            hits: std::cell::Cell::new(0),
        })
    }

    fn assert_send<F: std::future::Future + Send>(_: F) {}
    let _ = |tx: &'static mut Transaction<'static, sqlx::Postgres>| assert_send(count(tx));
    assert_eq!(
        <Counter as OutboxEvent>::EVENT_TYPE,
        "Counter",
        "event_type defaults to the type name"
    );
}
