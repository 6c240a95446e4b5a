//! Delayed events: published at their time, cancellable until then.

use super::*;

/// Delayed events: none published before its time, each within a poll interval (and a margin
/// for a loaded machine) after it; they hold back nothing of their aggregate; `status` counts
/// them apart; a cancellation rolled back changes nothing, a committed one means never; an
/// outbox tailed from the log refuses them.
pub(super) async fn delayed_events_wait_for_their_time_and_can_be_cancelled<D: TestDb>() {
    use std::time::{Instant, SystemTime};
    let table = RelayTable::<D>::new().await;
    let delay = Duration::from_secs(3);
    let event = |n: i64, aggregate: &str| {
        Event::new(
            "test",
            "Numbered",
            Some(aggregate),
            &serde_json::json!({ "n": n }),
        )
        .unwrap()
    };
    let start = Instant::now();
    let mut tx = table.pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for event in [
        event(0, "agg-0").deliver_after(delay), // before 1 in its aggregate, yet 1 goes first
        event(1, "agg-0"),
        event(2, "agg-1").deliver_at(SystemTime::now() + delay),
        event(3, "agg-1").deliver_after(delay), // cancelled, rolled back: published
        event(4, "agg-2").deliver_after(delay), // cancelled for good
        event(5, "agg-2").deliver_at(SystemTime::UNIX_EPOCH), // long past: at once
    ] {
        ids.push(table.outbox.record(&mut *tx, &event).await.unwrap());
    }
    tx.commit().await.unwrap();
    let committed = Instant::now();

    let status = table.outbox.status(&table.pool).await.unwrap();
    let sum = |f: fn(&outbox::admin::EventCounts) -> u64| status.iter().map(f).sum::<u64>();
    assert_eq!(
        (sum(|c| c.pending), sum(|c| c.delayed)),
        (2, 4),
        "{status:?}"
    );
    let next_due = status.iter().find_map(|c| c.next_due).unwrap();
    assert!(next_due <= delay, "{next_due:?}");

    let mut tx = table.pool.begin().await.unwrap();
    assert!(table.outbox.cancel(&mut *tx, ids[3]).await.unwrap());
    tx.rollback().await.unwrap();
    let mut tx = table.pool.begin().await.unwrap();
    assert!(table.outbox.cancel(&mut *tx, ids[4]).await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = table.pool.begin().await.unwrap();
    assert!(
        !table.outbox.cancel(&mut *tx, ids[4]).await.unwrap(),
        "gone already"
    );
    assert!(
        !table.outbox.cancel(&mut *tx, ids[1]).await.unwrap(),
        "not a delayed event"
    );
    tx.commit().await.unwrap();

    let arrivals = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let sink = {
        let arrivals = arrivals.clone();
        HandlerSink::new(move |message: Message| {
            let arrivals = arrivals.clone();
            async move {
                arrivals.lock().unwrap().push((n(&message), Instant::now()));
                Ok(())
            }
        })
    };
    let poll = Duration::from_millis(50);
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .poll_interval(poll)
            .build(),
    );
    eventually(LIMIT, "the five events not cancelled", || async {
        arrivals.lock().unwrap().len() == 5
    })
    .await;
    // Nothing more comes: the cancelled event is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    relay.await.unwrap();
    let arrivals = arrivals.lock().unwrap().clone();
    let order: Vec<i64> = arrivals.iter().map(|(n, _)| *n).collect();
    assert_eq!(order.len(), 5, "{order:?}");
    assert!(
        !order.contains(&4),
        "a cancelled event was published: {order:?}"
    );
    let at = |n: i64| arrivals.iter().find(|(m, _)| *m == n).unwrap().1;
    for n in [1, 5] {
        assert!(
            at(n) < start + delay,
            "event {n} waited for the delayed ones: {order:?}"
        );
    }
    for n in [0, 2, 3] {
        let (early, late) = (
            start + delay,
            committed + delay + poll + Duration::from_secs(2),
        );
        assert!(
            at(n) >= early,
            "event {n} published {:?} early",
            early - at(n)
        );
        assert!(at(n) <= late, "event {n} published {:?} late", at(n) - late);
    }
    assert_eq!(table.remaining().await, 0);

    // The log delivers in commit order: a delay cannot be honoured there.
    let tailed = table.outbox.clone().log_tailing();
    let mut tx = table.pool.begin().await.unwrap();
    let refused = tailed
        .record(&mut *tx, &event(9, "agg-9").deliver_after(delay))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, outbox::Error::Unsupported { .. }),
        "{refused}"
    );
    drop(tx);
    table.drop_table().await;
}
