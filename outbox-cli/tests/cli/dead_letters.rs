//! `outbox dead-letters`: list, show, replay, purge.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    record(&table, 3).await;
    let pool = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET dead_at = now(), attempts = 10, last_error = 'broker said no' \
         WHERE payload->>'n' IN ('0', '2')"
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(status(&table), (1, 2));

    let listed = outbox(&["--table", &table, "dead-letters", "list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let letters: Vec<serde_json::Value> = stdout(&listed)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["last_error"], "broker said no");
    assert_eq!(letters[0]["payload"]["n"], 0);

    let filtered = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "list",
        "--json",
        "--aggregate-id",
        "acc-2",
    ]);
    assert_eq!(
        stdout(&filtered).lines().count(),
        1,
        "{}",
        stdout(&filtered)
    );
    let old = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "list",
        "--older-than",
        "3600",
    ]);
    assert_eq!(stdout(&old), "", "they died a moment ago");
    let one = letters[0]["id"].as_str().unwrap();
    let replayed = outbox(&["--table", &table, "dead-letters", "replay", one, "--yes"]);
    assert_eq!(
        stdout(&replayed),
        "1 dead letters replayed\n",
        "{}",
        stderr(&replayed)
    );
    assert_eq!(status(&table), (2, 1));
    // Without --yes, a "no" replays nothing.
    let mut asked = Command::new(OUTBOX)
        .args(["--table", &table, "dead-letters", "replay", "--all"])
        .env("OUTBOX_DATABASE_URL", postgres_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    asked.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let refused = asked.wait_with_output().unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).ends_with("outbox: error: nothing replayed\n"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(status(&table), (2, 1));
    let all = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "replay",
        "--all",
        "--yes",
    ]);
    assert_eq!(stdout(&all), "1 dead letters replayed\n");
    assert_eq!(status(&table), (3, 0));

    // One dies again: shown in full, then purged for good.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET dead_at = now(), attempts = 10, last_error = 'refused: 422' \
         WHERE payload->>'n' = '1'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let listed = outbox(&["--table", &table, "dead-letters", "list", "--json"]);
    let letter: serde_json::Value = serde_json::from_str(stdout(&listed).trim()).unwrap();
    let id = letter["id"].as_str().unwrap();
    let shown = outbox(&["--table", &table, "dead-letters", "show", id]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["last_error"], "refused: 422");
    assert_eq!(shown["payload"]["n"], 1);
    assert_eq!(shown["attempts"], 10);
    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = outbox(&["--table", &table, "dead-letters", "show", &unknown]);
    assert_eq!(
        stderr(&missing),
        format!("outbox: error: no dead letter {unknown} in `{table}`\n")
    );
    let purged = outbox(&[
        "--table",
        &table,
        "dead-letters",
        "purge",
        "--event-type",
        "Deposited",
        "--yes",
    ]);
    assert_eq!(
        stdout(&purged),
        "1 dead letters deleted\n",
        "{}",
        stderr(&purged)
    );
    assert_eq!(status(&table), (2, 0));
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}
