//! What the fuzz targets check, one function per target: each takes the fuzzer's bytes and
//! panics when the code under test breaks a rule (a panic of its own, a hang the fuzzer's
//! timeout catches, an input accepted that should be refused, a refusal that does not say what
//! is wrong). The same functions replay the committed corpus in `tests/corpus.rs` on the stable
//! toolchain; `scripts/fuzz.sh` runs them under libFuzzer for a bounded time.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use outbox::inbox::{Inbox, Recorded};
use outbox::relay::Message;
use outbox::sinks::Routing;
use outbox::sinks::signature::{self, Secret, SignatureError};
use outbox::{Error, TableName};

/// The CLI's configuration module, compiled from its source: the command has no library, and
/// this way the target reads files exactly as `outbox --config` does.
#[path = "../../outbox-cli/src/config.rs"]
#[allow(dead_code, unreachable_pub, clippy::all)]
mod config;
#[path = "../../outbox-cli/src/error.rs"]
#[allow(dead_code, unreachable_pub)]
mod error;

use error::CliError;

/// The bytes as text: what comes from a file, a variable or a header is text by the time it
/// reaches the library, so invalid UTF-8 is replaced rather than skipped.
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Splits the input at `0xFF` bytes (never part of UTF-8 text) into `n` fields, the last
/// taking the rest; missing fields are empty.
fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut fields: Vec<String> = data.splitn(n, |&b| b == 0xFF).map(text).collect();
    fields.resize(n, String::new());
    fields
}

/// The rule for a table name, said independently of the library: one or two `.`-separated
/// parts, each an ASCII letter or `_` then letters, digits or `_`, at most 63 bytes.
fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            part.len() <= 63
                && part
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// A table name from configuration: accepted exactly when it follows the rule, kept as
/// written and quoted part by part; refused with the name and a reason that says it is about a
/// table name.
pub fn table_name(data: &[u8]) {
    let name = text(data);
    match TableName::new(name.clone()) {
        Ok(table) => {
            assert!(is_table_name(&name), "{name:?} was accepted");
            assert_eq!(table.as_str(), name);
            let quoted: Vec<String> = name.split('.').map(|part| format!("\"{part}\"")).collect();
            assert_eq!(table.quoted('"'), quoted.join("."));
        }
        Err(Error::InvalidTableName {
            name: refused,
            reason,
        }) => {
            assert!(!is_table_name(&name), "{name:?} was refused: {reason}");
            assert_eq!(refused, name, "the error names what was refused");
            assert!(reason.contains("table name"), "unclear reason: {reason}");
        }
        Err(other) => panic!("{name:?}: not a table-name error: {other}"),
    }
}

/// The three placeholders a template may hold.
const PLACEHOLDERS: [&str; 3] = ["{aggregate_type}", "{event_type}", "{aggregate_id}"];

/// A routing template (first field) rendered for a message with the other three fields as its
/// aggregate type, event type and aggregate id: accepted exactly when its braces are only
/// those of known placeholders, and then rendered placeholder by placeholder; refused with a
/// sentence that quotes the template.
pub fn routing_template(data: &[u8]) {
    let [template, aggregate_type, event_type, aggregate_id]: [String; 4] =
        fields(data, 4).try_into().unwrap();
    let bare = PLACEHOLDERS
        .iter()
        .fold(template.clone(), |text, placeholder| {
            text.replace(placeholder, "\u{0}")
        });
    let well_formed = !template.is_empty() && !bare.contains(['{', '}']);
    match Routing::template(&template) {
        Ok(routing) => {
            assert!(well_formed, "{template:?} was accepted");
            let message = Message::new(
                uuid::Uuid::nil(),
                1,
                aggregate_type.as_str(),
                aggregate_id.as_str(),
                event_type.as_str(),
                "{}",
            );
            // Left to right, so that a value holding a placeholder's text is not expanded.
            let mut expected = String::new();
            let mut rest = template.as_str();
            while !rest.is_empty() {
                let found = PLACEHOLDERS
                    .iter()
                    .zip([&aggregate_type, &event_type, &aggregate_id])
                    .find(|(placeholder, _)| rest.starts_with(**placeholder));
                match found {
                    Some((placeholder, value)) => {
                        expected.push_str(value);
                        rest = &rest[placeholder.len()..];
                    }
                    None => {
                        let c = rest.chars().next().unwrap();
                        expected.push(c);
                        rest = &rest[c.len_utf8()..];
                    }
                }
            }
            assert_eq!(routing.destination(&message), expected);
        }
        Err(error) => {
            assert!(!well_formed, "{template:?} was refused: {error}");
            let error = error.to_string();
            assert!(
                error.contains(&format!("template {template:?}")),
                "the refusal does not quote the template: {error}"
            );
        }
    }
}

/// The CLI's configuration file: read or refused, never a panic; a refusal names the file,
/// and the line when it gives one is a line of the file. What the file names is then checked
/// as `outbox` checks it: the table, the routing templates.
pub fn config_file(data: &[u8]) {
    let text = text(data);
    match config::Config::parse(&text, Path::new("outbox.toml")) {
        Ok(config) => {
            if let Some(table) = &config.table {
                table_name(table.as_bytes());
            }
            if let Some(sink) = &config.sink {
                for template in sink.routing.iter().chain(sink.routes.values()) {
                    routing_template(template.as_bytes());
                }
            }
        }
        Err(CliError::Config(message)) => {
            let rest = message
                .strip_prefix("outbox.toml:")
                .unwrap_or_else(|| panic!("the refusal does not name the file: {message}"));
            if let Some((line, _)) = rest.split_once(": ")
                && let Ok(line) = line.parse::<usize>()
            {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of a file of {lines}: {message}"
                );
            }
            assert!(
                rest.trim().len() > 3,
                "the refusal does not say why: {message}"
            );
        }
        Err(other) => panic!("not a configuration error: {other}"),
    }
}

/// The headers of a webhook request: each one whose value is a valid header value.
fn webhook_headers(id: &str, timestamp: &str, signature: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        (signature::ID_HEADER, id),
        (signature::TIMESTAMP_HEADER, timestamp),
        (signature::SIGNATURE_HEADER, signature),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers
}

/// A key the round trip signs with.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook request as a receiver gets it — secret, `webhook-id`, `webhook-timestamp`,
/// `webhook-signature` and body, all from the fuzzer: never a panic; a secret is refused as
/// [`SignatureError::InvalidSecret`]; a request verifies only with a signature the secret
/// makes for it. Then the round trip: what [`Secret::sign`] signs now for that id and body
/// verifies, and the same signature for another body does not.
pub fn webhook_signature(data: &[u8]) {
    let [secret, id, timestamp, presented, body]: [String; 5] = fields(data, 5).try_into().unwrap();
    let headers = webhook_headers(&id, &timestamp, &presented);
    match signature::verify(&secret, &headers, body.as_bytes()) {
        Ok(()) => {
            let key = Secret::new(&secret).unwrap();
            let at = timestamp
                .parse::<u64>()
                .map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
                .unwrap();
            let genuine = key.sign(&id, at, body.as_bytes());
            assert!(
                presented.split(' ').any(|token| token == genuine),
                "a request verified without the secret's signature: {presented:?}"
            );
        }
        Err(SignatureError::InvalidSecret) => {
            assert!(
                Secret::new(&secret).is_err(),
                "{secret:?} refused, then taken"
            );
        }
        Err(SignatureError::Refused(reason)) => {
            assert!(!reason.trim().is_empty(), "a refusal with no reason");
        }
        Err(SignatureError::SecretTooShort { bytes }) => {
            panic!("a receiver's check refused a secret of {bytes} bytes: only signing asks for 24")
        }
    }
    // Ids our sink sends are event UUIDs, but a receiver may sign its own: any id a header can
    // carry as text.
    let key = Secret::new(SECRET).unwrap();
    let now = SystemTime::now();
    let signed = key.sign(&id, now, body.as_bytes());
    let seconds = signature::unix_seconds(now).to_string();
    let headers = webhook_headers(&id, &seconds, &signed);
    if headers.len() == 3 && headers[signature::ID_HEADER].to_str().is_ok() {
        assert_eq!(
            signature::verify(SECRET, &headers, body.as_bytes()),
            Ok(()),
            "a request signed for id {id:?} does not verify"
        );
        let mut other = body.clone().into_bytes();
        other.push(b'x');
        assert!(signature::verify(SECRET, &headers, &other).is_err());
    }
}

/// The three databases the inbox target records in, and a runtime to drive them.
struct Inboxes {
    runtime: tokio::runtime::Runtime,
    postgres: sqlx::PgPool,
    mysql: sqlx::MySqlPool,
    sqlite: sqlx::SqlitePool,
}

const INBOX: Inbox = Inbox::for_table(TableName::from_static("fuzz_inbox"));

/// Connects once per process (a missing server is a panic saying how to start it) and
/// creates the inbox table in each database.
fn inboxes() -> &'static Inboxes {
    static INBOXES: OnceLock<Inboxes> = OnceLock::new();
    INBOXES.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = |variable: &str, default: &str| {
            std::env::var(variable).unwrap_or_else(|_| default.to_owned())
        };
        const HINT: &str = "run `scripts/services.sh` (it starts the test databases), or set \
             OUTBOX_TEST_POSTGRES_URL / OUTBOX_TEST_MYSQL_URL";
        let (postgres, mysql, sqlite) = runtime.block_on(async {
            let postgres = sqlx::PgPool::connect(&url(
                "OUTBOX_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ))
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL: {error}; {HINT}"));
            let mysql = sqlx::MySqlPool::connect(&url(
                "OUTBOX_TEST_MYSQL_URL",
                "mysql://root@127.0.0.1:3306/test",
            ))
            .await
            .unwrap_or_else(|error| panic!("MySQL/MariaDB: {error}; {HINT}"));
            // One connection that never closes: each holds a database of its own.
            let sqlite = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect("sqlite::memory:")
                .await
                .unwrap();
            INBOX.migrate(&postgres).await.unwrap();
            INBOX.migrate(&mysql).await.unwrap();
            INBOX.migrate(&sqlite).await.unwrap();
            (postgres, mysql, sqlite)
        });
        Inboxes {
            runtime,
            postgres,
            mysql,
            sqlite,
        }
    })
}

/// Whether the inbox takes `key`: not empty, at most 255 bytes, no NUL.
fn is_inbox_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && !key.contains('\0')
}

/// Records ids `a` then `b` for one consumer in one transaction, rolled back.
async fn record_two<DB: outbox::Dialect>(
    pool: &sqlx::Pool<DB>,
    consumer: &str,
    a: &str,
    b: &str,
) -> (Result<Recorded, Error>, Result<Recorded, Error>) {
    let mut tx = pool.begin().await.unwrap();
    let first = INBOX.record(&mut *tx, consumer, a).await;
    let second = INBOX.record(&mut *tx, consumer, b).await;
    tx.rollback().await.unwrap();
    (first, second)
}

/// The outcome the inbox must give for `id` after `earlier` (if any) was recorded.
fn check_record(
    database: &str,
    consumer: &str,
    id: &str,
    earlier: Option<&str>,
    recorded: Result<Recorded, Error>,
) {
    match recorded {
        Ok(recorded) => {
            assert!(
                is_inbox_key(consumer) && is_inbox_key(id),
                "{database}: ({consumer:?}, {id:?}) was taken"
            );
            let expected = if earlier == Some(id) {
                Recorded::Duplicate
            } else {
                Recorded::New
            };
            assert_eq!(
                recorded, expected,
                "{database}: id {id:?} after {earlier:?}"
            );
        }
        Err(Error::InvalidInboxKey { problem, .. }) => {
            assert!(
                !(is_inbox_key(consumer) && is_inbox_key(id)),
                "{database}: ({consumer:?}, {id:?}) refused: {problem}"
            );
        }
        Err(other) => panic!("{database}: ({consumer:?}, {id:?}): not a clear refusal: {other}"),
    }
}

/// Inbox keys — a consumer name and two message ids — recorded in one transaction on
/// PostgreSQL, MySQL/MariaDB and SQLite: a key is taken exactly when it is not empty, at most
/// 255 bytes and free of NUL, and refused with [`Error::InvalidInboxKey`] otherwise (never a
/// database error); the second id is a duplicate exactly when its bytes are the first's.
pub fn inbox_ids(data: &[u8]) {
    let [consumer, a, b]: [String; 3] = fields(data, 3).try_into().unwrap();
    let inboxes = inboxes();
    let results = inboxes.runtime.block_on(async {
        [
            (
                "PostgreSQL",
                record_two(&inboxes.postgres, &consumer, &a, &b).await,
            ),
            ("MySQL", record_two(&inboxes.mysql, &consumer, &a, &b).await),
            (
                "SQLite",
                record_two(&inboxes.sqlite, &consumer, &a, &b).await,
            ),
        ]
    });
    for (database, (first, second)) in results {
        let taken = first.is_ok();
        check_record(database, &consumer, &a, None, first);
        check_record(database, &consumer, &b, taken.then_some(a.as_str()), second);
    }
}
