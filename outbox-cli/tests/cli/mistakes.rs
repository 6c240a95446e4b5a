//! What a person must fix, said in one line; the help and the guide agree with the binary.

use super::*;

#[test]
fn every_mistake_is_one_line_that_says_what_to_fix() {
    assert_eq!(
        fails(&[], &["status"]),
        (
            2,
            "outbox: error: no database URL: set `database_url` in the configuration file, \
             OUTBOX_DATABASE_URL, or --database-url\n"
                .to_owned()
        )
    );
    assert_eq!(
        fails(&[], &["--database-url", "redis://127.0.0.1", "status"]),
        (
            2,
            "outbox: error: database URL \"redis://127.0.0.1\" is not postgres://, mysql:// or sqlite://\n"
                .to_owned()
        )
    );
    let (code, text) = fails(
        &[],
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
            "status",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: cannot connect to postgres://postgres@127.0.0.1:1/test: ")
            && text.contains("Connection refused"),
        "{text}"
    );
    let (code, text) = fails(
        &[],
        &[
            "--database-url",
            "mysql://root:wrong@127.0.0.1:3306/test",
            "status",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: cannot connect to mysql://root:***@127.0.0.1:3306/test: ")
            && text.contains("Access denied"),
        "{text}"
    );
    let url = postgres_url();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--table", "no_such_outbox", "status"],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: outbox table `no_such_outbox` is not usable")
            && text.ends_with("create it with `outbox migrate`\n"),
        "{text}"
    );
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--table", "bad name", "status"],
    );
    assert_eq!(code, 2);
    assert!(
        text.starts_with("outbox: error: invalid outbox table name \"bad name\""),
        "{text}"
    );

    let config = std::env::temp_dir().join(format!("{}.toml", unique("bad")));
    std::fs::write(&config, "table = \"outbox\"\n[relay]\nbatchsize = 10\n").unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "status"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        text,
        format!(
            "outbox: error: {}:3: unknown field `batchsize`, expected one of `batch_size`, \
             `max_batch_bytes`, `max_attempts`, `poll_interval`, `delivery_timeout`, \
             `retention`, `ordering`, `source`, `replication_url`, `tables`\n",
            config.display()
        )
    );

    std::fs::write(
        &config,
        "table = \"outbox\"\n[relay]\nmax_batch_bytes = 0\n[sink]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n",
    )
    .unwrap();
    assert_eq!(
        fails(
            &[("OUTBOX_DATABASE_URL", &url)],
            &["--config", config.to_str().unwrap(), "relay"],
        ),
        (
            2,
            "outbox: error: relay.max_batch_bytes must be at least 1 (a batch always takes one \
             event)\n"
                .to_owned()
        )
    );

    // Durations read as humane strings and `ordering` is one of two words, checked on reading.
    for (setting, problem) in [
        (
            "ordering = \"sideways\"",
            "unknown variant `sideways`, expected `per-aggregate` or `unordered`",
        ),
        (
            "poll_interval = \"soon\"",
            "invalid value: string \"soon\", expected a duration",
        ),
        (
            "source = \"binlog\"",
            "unknown variant `binlog`, expected one of `table`, `log`, `wal-messages`",
        ),
    ] {
        std::fs::write(&config, format!("table = \"outbox\"\n[relay]\n{setting}\n")).unwrap();
        assert_eq!(
            fails(
                &[("OUTBOX_DATABASE_URL", &url)],
                &["--config", config.to_str().unwrap(), "status"],
            ),
            (
                2,
                format!("outbox: error: {}:3: {problem}\n", config.display())
            )
        );
    }
    std::fs::write(
        &config,
        "table = \"outbox\"\n[relay]\npoll_interval = \"25ms\"\nretention = \"1d\"\nordering = \"unordered\"\n",
    )
    .unwrap();
    // The configuration's table, created first: on a fresh database nothing else may have.
    let migrated = Command::new(OUTBOX)
        .args([
            "--config",
            config.to_str().unwrap(),
            "migrate",
            "--no-inbox",
        ])
        .env("OUTBOX_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let read = Command::new(OUTBOX)
        .args(["--config", config.to_str().unwrap(), "status"])
        .env("OUTBOX_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", stderr(&read));

    // Only PostgreSQL has a transaction log to tail.
    std::fs::write(&config, "table = \"outbox\"\n[relay]\nsource = \"log\"\n").unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", "sqlite://:memory:")],
        &[
            "--config",
            config.to_str().unwrap(),
            "migrate",
            "--no-inbox",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.contains("tailing the transaction log") && text.contains("not available on SQLite"),
        "{text}"
    );

    // A sink that refuses the credentials.
    let table = unique("cli");
    assert!(
        outbox(&["--table", &table, "migrate", "--no-inbox"])
            .status
            .success()
    );
    std::fs::write(
        &config,
        format!(
            "table = \"{table}\"\n[sink]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:wrong@127.0.0.1:5672/%2f\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "relay"],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: RabbitMQ sink: cannot connect to amqp://guest:***@"),
        "refused credentials stop the relay, the password masked: {text}"
    );

    // Settings that do not apply to the sink, or are not known, are refused before connecting.
    for (sink, problem) in [
        (
            "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nmandatory = false\n",
            "outbox: error: sink.mandatory applies to the rabbitmq sink only, not to \"nats\"\n",
        ),
        (
            "kind = \"kafka\"\nurl = \"127.0.0.1:1\"\ncompression = \"brotli\"\n",
            "outbox: error: sink.compression \"brotli\" is not one of none, gzip, snappy, lz4, zstd\n",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://127.0.0.1:1/hook\"\nsecret = \"s\"\nrouting = \"x\"\n",
            "outbox: error: sink.routing does not apply to the webhook sink: it posts every event to sink.url\n",
        ),
    ] {
        std::fs::write(
            &config,
            format!(
                "table = \"{table}\"\n[sink]\n{sink}[http]\nlisten = \"127.0.0.1:{}\"\n",
                free_port()
            ),
        )
        .unwrap();
        assert_eq!(
            fails(
                &[("OUTBOX_DATABASE_URL", &url)],
                &["--config", config.to_str().unwrap(), "relay"],
            ),
            (2, problem.to_owned())
        );
    }

    // A webhook secret that is not a Standard Webhooks one is refused before any request.
    std::fs::write(
        &config,
        format!(
            "table = \"{table}\"\n[sink]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/hook\"\nsecret = \"s3cret\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let (_, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "relay"],
    );
    assert!(
        text.contains("the webhook secret is not `whsec_` followed by base64"),
        "{text}"
    );

    // The relay's database connections carry an application name; the error shows the URL as
    // the user wrote it.
    let (code, text) = fails(
        &[],
        &[
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
            "relay",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        text.starts_with("outbox: error: cannot connect to postgres://postgres@127.0.0.1:1/test: "),
        "{text}"
    );
    assert!(!text.contains("application_name"), "{text}");
    std::fs::write(&config, format!("table = \"{table}\"\n")).unwrap();
    let (code, text) = fails(
        &[("OUTBOX_DATABASE_URL", &url)],
        &["--config", config.to_str().unwrap(), "relay"],
    );
    assert_eq!(code, 2);
    assert_eq!(
        text,
        "outbox: error: no sink: add a [sink] section with `kind` and `url` to the configuration file\n"
    );
    std::fs::remove_file(config).unwrap();
}

/// The guide's table of commands names every command `outbox --help` lists, so that it cannot
/// drift from the binary.
#[test]
fn the_guide_lists_every_command() {
    let output = Command::new(OUTBOX).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|command| *command != "help")
        .collect();
    assert!(commands.len() >= 9, "{commands:?}");
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operate.md"))
        .unwrap();
    let missing: Vec<&&str> = commands
        .iter()
        .filter(|command| !guide.contains(&format!("| `outbox {command}")))
        .collect();
    assert!(
        missing.is_empty(),
        "commands missing from docs/operate.md: {missing:?}"
    );
}

#[test]
fn relay_help_says_what_happens_to_unroutable_and_undeliverable_events() {
    let output = Command::new(OUTBOX)
        .args(["relay", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    for promise in [
        "mandatory",
        "NO_ROUTE",
        "dead letter",
        "mandatory = false",
        "`/health` answers 503",
    ] {
        assert!(help.contains(promise), "`{promise}` missing from:\n{help}");
    }
}
