//! One relay for many outboxes.

use super::*;

/// One relay for many outboxes: 20 tenant schemas with an `outbox` table each, one tenant with
/// a backlog published slowly, the others with a little; every tenant's events delivered in
/// order; an event of a quiet tenant published while the busy one's backlog is still there (a
/// backlog delays others by a batch per turn, not by its size); a tenant created while the
/// relay runs served within a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_serves_many_tenants_fairly_and_finds_new_ones() {
    use std::time::Instant;

    use outbox::relay::many::Outboxes;
    use outbox::{Outbox, TableName};
    let db = Pg::connect().await;
    let pool = db.pool().clone();
    let prefix = format!("mt{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let tenant = |t: usize| format!("{prefix}_t{t:02}");
    let create = |t: usize, events: i64| {
        let pool = pool.clone();
        let schema = tenant(t);
        async move {
            let outbox = Outbox::for_table(TableName::new(format!("{schema}.outbox")).unwrap());
            outbox.migrate(&pool).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO \"{schema}\".outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                 SELECT gen_random_uuid(), '{schema}', 'agg-' || (i % 4), 'Numbered', jsonb_build_object('n', i) \
                 FROM generate_series(0, $1 - 1) AS i"
            )))
            .bind(events)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let busy = 3_000;
    create(0, busy).await;
    for t in 1..20 {
        create(t, 20).await;
    }

    let delivered = Arc::new(Mutex::new(Vec::<(String, String, i64, Instant)>::new()));
    let sink = {
        let (delivered, busy_tenant) = (delivered.clone(), tenant(0));
        HandlerSink::new(move |message: Message| {
            let (delivered, busy_tenant) = (delivered.clone(), busy_tenant.clone());
            async move {
                if message.aggregate_type == busy_tenant {
                    tokio::time::sleep(Duration::from_millis(2)).await; // a slow tenant
                }
                delivered.lock().unwrap().push((
                    message.aggregate_type.clone(),
                    message.aggregate_id.clone(),
                    n(&message),
                    Instant::now(),
                ));
                Ok(())
            }
        })
    };
    let outboxes = Outboxes::matching(pool.clone(), &format!("{prefix}_t*.outbox"))
        .unwrap()
        .refresh_every(Duration::from_millis(500));
    assert_eq!(outboxes.discover().await.unwrap().len(), 20);
    let (stop, relay) = spawn(
        Relay::builder(outboxes, sink)
            .batch_size(100)
            .poll_interval(Duration::from_millis(20))
            .build(),
    );

    // A quiet tenant's new event, while the busy one's backlog takes seconds to publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recorded = Instant::now();
    {
        let schema = tenant(7);
        let outbox = Outbox::for_table(TableName::new(format!("{schema}.outbox")).unwrap());
        let mut tx = pool.begin().await.unwrap();
        outbox
            .record(
                &mut *tx,
                &Event::new(
                    &schema,
                    "Numbered",
                    Some("agg-0"),
                    &serde_json::json!({ "n": 1000 }),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let busy_published = |delivered: &[(String, String, i64, Instant)]| {
        delivered.iter().filter(|(t, ..)| *t == tenant(0)).count()
    };
    eventually(LIMIT, "the quiet tenant's new event", || async {
        delivered
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, n, _)| *t == tenant(7) && *n == 1000)
    })
    .await;
    {
        let delivered = delivered.lock().unwrap();
        let arrived = delivered
            .iter()
            .find(|(t, _, n, _)| *t == tenant(7) && *n == 1000)
            .unwrap()
            .3;
        let behind = busy as usize - busy_published(&delivered);
        eprintln!(
            "the quiet tenant's event: published {:?} after it was recorded, {behind} of the busy tenant's {busy} still waiting",
            arrived - recorded
        );
        assert!(
            behind > 1_000,
            "the quiet tenant waited for the busy one's backlog: {behind} of it left"
        );
        assert!(
            arrived - recorded < Duration::from_secs(3),
            "published {:?} after it was recorded",
            arrived - recorded
        );
    }

    // A tenant created now is found at the next refresh.
    create(20, 10).await;
    eventually(LIMIT, "every event of the 21 tenants", || async {
        delivered.lock().unwrap().len() == busy as usize + 19 * 20 + 1 + 10
    })
    .await;
    stop.send(()).unwrap();
    relay.await.unwrap();

    let delivered = delivered.lock().unwrap().clone();
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for (t, aggregate, n, _) in &delivered {
        if let Some(before) = last.insert((t.clone(), aggregate.clone()), *n) {
            assert!(before < *n, "{t}/{aggregate}: {before} then {n}");
        }
    }
    let tenants: HashSet<&String> = delivered.iter().map(|(t, ..)| t).collect();
    assert_eq!(tenants.len(), 21);
    for t in 0..=20 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            tenant(t)
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
}
