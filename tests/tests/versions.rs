//! Event versions: `#[outbox(version = N)]` travels as the header `outbox-event-version` from
//! the derive, the attribute and the manual API alike, is in the registry, and is not carried
//! over to an event type the attribute names itself.
#![allow(clippy::unwrap_used)]

use outbox::inbox::InboxMessage;
use outbox::relay::{ChannelSink, Relay};
use outbox::sinks::EVENT_VERSION;
use outbox::{Event, Outbox, OutboxEvent, TableName, outbox_event, registered_events};
use serde::Serialize;
use sqlx::{Sqlite, SqlitePool, Transaction};

const OUTBOX: Outbox = Outbox::for_table(TableName::from_static("versions_outbox"));

#[derive(Debug, Serialize, OutboxEvent)]
#[outbox(
    aggregate_type = "reminder",
    event_type = "ReminderScheduled",
    version = 3
)]
struct Reminder {
    #[outbox(aggregate_id)]
    id: i64,
    text: String,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct AppError(#[from] outbox::Error);

#[outbox_event(outbox = OUTBOX)]
async fn schedule(_tx: &mut Transaction<'_, Sqlite>, id: i64) -> Result<Reminder, AppError> {
    Ok(Reminder {
        id,
        text: "pay the rent".into(),
    })
}

/// The id comes from the arguments, the type (and so the version) from the derive.
#[outbox_event(outbox = OUTBOX, aggregate_id = |r| r.id * 10)]
async fn schedule_scaled(_tx: &mut Transaction<'_, Sqlite>, id: i64) -> Result<Reminder, AppError> {
    Ok(Reminder {
        id,
        text: "scaled".into(),
    })
}

/// Another event type: the derive's version does not describe it.
#[outbox_event(outbox = OUTBOX, event_type = "ReminderMoved")]
async fn relocate(_tx: &mut Transaction<'_, Sqlite>, id: i64) -> Result<Reminder, AppError> {
    Ok(Reminder {
        id,
        text: "moved".into(),
    })
}

#[test]
fn the_registry_knows_the_versions() {
    let version_of = |event_type: &str, function: Option<&str>| {
        registered_events()
            .find(|d| d.event_type() == event_type && d.function() == function)
            .unwrap_or_else(|| panic!("{event_type} / {function:?} is not registered"))
            .version()
    };
    assert_eq!(Reminder::VERSION, Some(3));
    assert_eq!(version_of("ReminderScheduled", None), Some(3));
    assert_eq!(version_of("ReminderScheduled", Some("schedule")), Some(3));
    assert_eq!(
        version_of("ReminderScheduled", Some("schedule_scaled")),
        Some(3)
    );
    assert_eq!(version_of("ReminderMoved", Some("relocate")), None);
}

#[tokio::test]
async fn the_version_is_recorded_as_a_header_and_reaches_the_consumer() {
    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    OUTBOX.migrate(&pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    schedule(&mut tx, 1).await.unwrap();
    schedule_scaled(&mut tx, 2).await.unwrap();
    relocate(&mut tx, 3).await.unwrap();
    let manual = Event::new(
        "reminder",
        "ReminderSnoozed",
        Some(4),
        &serde_json::json!({}),
    )
    .unwrap()
    .version(7);
    OUTBOX.record(&mut *tx, &manual).await.unwrap();
    tx.commit().await.unwrap();

    let (sink, mut received) = ChannelSink::new(8);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(
        Relay::builder(pool.clone(), sink)
            .outbox(&OUTBOX)
            .build()
            .run(async {
                let _ = stopped.await;
            }),
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let message = received.recv().await.unwrap();
        seen.push((
            message.event_type.clone(),
            message.aggregate_id.clone(),
            message.header(EVENT_VERSION),
        ));
    }
    stop.send(()).unwrap();
    relay.await.unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("ReminderMoved".to_owned(), "3".to_owned(), None),
            (
                "ReminderScheduled".to_owned(),
                "1".to_owned(),
                Some("3".to_owned())
            ),
            (
                "ReminderScheduled".to_owned(),
                "20".to_owned(),
                Some("3".to_owned())
            ),
            (
                "ReminderSnoozed".to_owned(),
                "4".to_owned(),
                Some("7".to_owned())
            ),
        ]
    );
}

#[test]
fn the_catalog_shows_versions_and_says_when_a_payload_has_no_schema() {
    use outbox::catalog::Catalog;
    use outbox::relay::Destination;

    let document = Catalog::new("Reminders", "1.0.0").document(|message| {
        let topic = format!("{}.events", message.aggregate_type);
        Some(Destination::new("kafka", topic))
    });
    let messages = &document["components"]["messages"];
    let scheduled = &messages["ReminderScheduled.v3"];
    assert_eq!(scheduled["x-outbox"]["version"], 3);
    assert_eq!(
        scheduled["x-outbox"]["dataschema"],
        "urn:outbox:schema:reminder:ReminderScheduled:v3"
    );
    let recorded_by = scheduled["x-outbox"]["recordedBy"].as_array().unwrap();
    assert!(
        recorded_by.iter().any(|f| f == "versions::schedule"),
        "{recorded_by:?}"
    );
    let description = scheduled["payload"]["description"].as_str().unwrap();
    assert!(
        description.contains("schemars::JsonSchema"),
        "{description}"
    );
    assert!(
        messages["ReminderMoved"].is_object(),
        "an unversioned type has no suffix"
    );
    let channel = &document["channels"]["reminder.events"];
    assert_eq!(channel["address"], "reminder.events");
    assert!(channel["messages"]["ReminderScheduled.v3"].is_object());
    assert_eq!(
        document["operations"]["send_reminder.events"]["action"],
        "send"
    );
}
