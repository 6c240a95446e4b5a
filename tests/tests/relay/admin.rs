//! What an operator reads and does: dead letters filtered and counted, status, tail, purge.

use super::*;

/// Dead letters are selected and counted by the database: by id, event type, aggregate and
/// age, with the limit applied there.
pub(super) async fn dead_letters_are_filtered_and_counted_by_the_database<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    table.preload(40, 4).await; // aggregates agg-0..agg-3, ten events each
    // Every event of agg-1 and agg-2 is refused for good.
    let sink = HandlerSink::new(|message: Message| async move {
        if message.aggregate_id == "agg-1" || message.aggregate_id == "agg-2" {
            return Err(SinkError::permanent(format!(
                "refused {}",
                message.aggregate_id
            )));
        }
        Ok(())
    });
    let (stop, relay) = spawn(relay(&table, table.pool.clone(), sink).build());
    eventually(LIMIT, "20 dead letters", || async {
        table
            .outbox
            .count_dead_letters(&table.pool, &DeadLetterFilter::new())
            .await
            .unwrap()
            == 20
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();

    let outbox = &table.outbox;
    let pool = &table.pool;
    let only_agg_1 = DeadLetterFilter::new().aggregate_id("agg-1");
    let letters = outbox
        .dead_letters_where(pool, &only_agg_1, 100)
        .await
        .unwrap();
    assert_eq!(letters.len(), 10);
    assert!(
        letters
            .iter()
            .all(|letter| letter.message.aggregate_id == "agg-1")
    );
    assert!(
        letters
            .windows(2)
            .all(|w| w[0].message.seq < w[1].message.seq),
        "oldest first"
    );
    assert_eq!(letters[0].last_error, "refused agg-1");
    assert_eq!(
        outbox.count_dead_letters(pool, &only_agg_1).await.unwrap(),
        10
    );
    let limited = outbox
        .dead_letters_where(pool, &DeadLetterFilter::new(), 3)
        .await
        .unwrap();
    assert_eq!(limited.len(), 3);
    let by_id = outbox
        .dead_letters_where(pool, &DeadLetterFilter::new().id(letters[4].message.id), 10)
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].message.id, letters[4].message.id);
    let typed = DeadLetterFilter::new()
        .event_type("Numbered")
        .aggregate_type("test")
        .aggregate_id("agg-2");
    assert_eq!(outbox.count_dead_letters(pool, &typed).await.unwrap(), 10);
    let other_type = DeadLetterFilter::new().event_type("Other");
    assert_eq!(
        outbox.count_dead_letters(pool, &other_type).await.unwrap(),
        0
    );
    let old = DeadLetterFilter::new().dead_for_at_least(Duration::from_secs(3600));
    assert_eq!(
        outbox.count_dead_letters(pool, &old).await.unwrap(),
        0,
        "none is an hour dead"
    );
    let recent = DeadLetterFilter::new().dead_for_at_least(Duration::ZERO);
    assert_eq!(outbox.count_dead_letters(pool, &recent).await.unwrap(), 20);

    // The filters' index holds the dead letters alone (MySQL has no partial indexes).
    let index = format!("{}_dead_idx", table.name);
    let partial = match D::NAME {
        "PostgreSQL" => Some(format!(
            "SELECT count(*) FROM pg_indexes WHERE indexname = '{index}' \
             AND indexdef LIKE '%WHERE (dead_at IS NOT NULL)'"
        )),
        "SQLite" => Some(format!(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '{index}' \
             AND sql LIKE '%WHERE dead_at IS NOT NULL'"
        )),
        _ => None,
    };
    if let Some(sql) = partial {
        assert_eq!(table.db.scalar(sql).await, 1, "partial index {index}");
    }
    table.drop_table().await;
}

/// The queries behind `outbox status`, `tail` and `dead-letters purge`, as library calls: the
/// counts per type, the relays at work, the events in order, and purging by filter.
pub(super) async fn status_tail_and_purge_read_what_the_database_holds<D: TestDb>() {
    let table = RelayTable::<D>::new().await;
    let (outbox, pool) = (&table.outbox, &table.pool);
    outbox.check(pool).await.unwrap();
    assert_eq!(outbox.last_seq(pool).await.unwrap(), 0, "an empty table");
    table.preload(40, 4).await; // agg-0..agg-3, ten events each, type `Numbered`
    let counts = outbox.status(pool).await.unwrap();
    assert_eq!(
        counts.len(),
        1,
        "one aggregate type and event type: {counts:?}"
    );
    assert_eq!(
        (
            counts[0].aggregate_type.as_str(),
            counts[0].event_type.as_str()
        ),
        ("test", "Numbered")
    );
    assert_eq!(
        (counts[0].pending, counts[0].dead, counts[0].published),
        (40, 0, 0)
    );
    assert!(counts[0].oldest_pending.is_some());

    let events = outbox.events_after(pool, 0, 1_000).await.unwrap();
    assert_eq!(events.len(), 40);
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "in seq order"
    );
    assert_eq!(
        (0..40).collect::<Vec<_>>(),
        events.iter().map(n).collect::<Vec<_>>()
    );
    let last = outbox.last_seq(pool).await.unwrap();
    assert_eq!(last, events[39].seq);
    assert!(
        outbox
            .events_after(pool, last, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let after_ten = outbox.events_after(pool, events[9].seq, 5).await.unwrap();
    assert_eq!(
        after_ten.iter().map(n).collect::<Vec<_>>(),
        vec![10, 11, 12, 13, 14]
    );

    // agg-1 is refused for good; the rest is published and kept.
    let sink = HandlerSink::new(|message: Message| async move {
        if message.aggregate_id == "agg-1" {
            return Err(SinkError::permanent("refused"));
        }
        Ok(())
    });
    let (stop, relay) = spawn(
        relay(&table, table.pool.clone(), sink)
            .retention(Duration::from_secs(3600))
            .build(),
    );
    eventually(LIMIT, "30 kept and 10 dead", || async {
        let counts = outbox.status(pool).await.unwrap();
        counts.len() == 1 && (counts[0].pending, counts[0].dead, counts[0].published) == (0, 10, 30)
    })
    .await;
    let relays = outbox.relays(pool).await.unwrap();
    match D::NAME {
        "SQLite" => {
            let relays = relays.expect("SQLite shows the lease holder");
            assert_eq!(relays.len(), 1, "{relays:?}");
            assert_eq!(relays[0].detail, "holds the lease");
        }
        "MariaDB/MySQL" => assert_eq!(relays, None, "MySQL cannot tell"),
        // The test's pool does not name its connections: no relay is recognised.
        _ => assert_eq!(relays, Some(Vec::new())),
    }
    stop.send(()).unwrap();
    relay.await.unwrap();
    assert_eq!(outbox.status(pool).await.unwrap()[0].oldest_pending, None);
    if D::NAME == "SQLite" {
        assert_eq!(
            outbox.relays(pool).await.unwrap(),
            Some(Vec::new()),
            "lease released"
        );
    }

    let some = DeadLetterFilter::new()
        .aggregate_id("agg-1")
        .event_type("Other");
    assert_eq!(outbox.purge_dead_letters(pool, &some).await.unwrap(), 0);
    let first = outbox.dead_letters(pool, 1).await.unwrap();
    let one = DeadLetterFilter::new().id(first[0].message.id);
    assert_eq!(outbox.purge_dead_letters(pool, &one).await.unwrap(), 1);
    let all = DeadLetterFilter::new();
    assert_eq!(outbox.purge_dead_letters(pool, &all).await.unwrap(), 9);
    assert_eq!(outbox.count_dead_letters(pool, &all).await.unwrap(), 0);
    assert_eq!(
        table.count("published_at IS NOT NULL").await,
        30,
        "kept events untouched"
    );

    let missing = outbox::Outbox::for_table(
        outbox::TableName::new(format!("{}_missing", table.name)).unwrap(),
    );
    let error = missing.check(pool).await.unwrap_err();
    assert!(error.to_string().contains("_missing"), "{error}");
    table.drop_table().await;
}
