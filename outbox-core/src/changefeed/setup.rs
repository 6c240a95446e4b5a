//! The SQL that points a CockroachDB changefeed of the outbox table at a [`Receiver`]
//! (super::Receiver), and the row-level TTL that cleans the table: what `outbox changefeed-sql`
//! prints or runs. Checked against CockroachDB's documentation of `CREATE CHANGEFEED`, the
//! webhook sink and row-level TTL (v24.1); see the tests for the statements line by line.

use std::time::Duration;

use base64::Engine as _;

use crate::TableName;

/// A CockroachDB version, as `version()` reports it (`CockroachDB CCL v24.1.3 (x86_64-…)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CockroachVersion {
    /// The year-based major version (`24`).
    pub major: u32,
    /// The release within the year (`1`).
    pub minor: u32,
}

impl CockroachVersion {
    /// The first version with the `ttl_disable_changefeed_replication` storage parameter.
    pub const TTL_WITHOUT_CHANGEFEED: CockroachVersion = CockroachVersion {
        major: 24,
        minor: 1,
    };

    /// The version in a `version()` string, or `None` when the server is not CockroachDB
    /// (PostgreSQL answers `PostgreSQL 15.4 …`). A CockroachDB whose version cannot be read is
    /// taken as the current release.
    pub fn detect(version: &str) -> Option<CockroachVersion> {
        if !version.starts_with("CockroachDB") {
            return None;
        }
        let number = version
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))
            .and_then(|number| {
                let mut parts = number.split('.');
                let major = parts.next()?.parse().ok()?;
                let minor = parts.next()?.parse().ok()?;
                Some(CockroachVersion { major, minor })
            });
        Some(number.unwrap_or(CockroachVersion::TTL_WITHOUT_CHANGEFEED))
    }
}

impl std::fmt::Display for CockroachVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

/// The storage parameters of the outbox table's row-level TTL: rows are deleted `ttl` after
/// `created_at` by an hourly job, and — from v24.1 — those deletes are kept out of changefeeds.
///
/// The expiry is an expression on `created_at` (CockroachDB recommends
/// `ttl_expiration_expression` over `ttl_expire_after`, which adds a hidden column), evaluated
/// in UTC and with a whole number of seconds, so that no time zone or month length enters it.
/// A delete never loses an event: a changefeed reads the row's insert from the history its
/// protected timestamp keeps, however far behind it is.
pub fn ttl_parameters(ttl: Duration, version: CockroachVersion) -> String {
    let seconds = ttl.as_secs().max(1);
    let mut parameters = format!(
        "ttl_expiration_expression = '((created_at AT TIME ZONE ''UTC'') + INTERVAL ''{seconds} seconds'') AT TIME ZONE ''UTC''', ttl_job_cron = '@hourly'"
    );
    if version >= CockroachVersion::TTL_WITHOUT_CHANGEFEED {
        parameters.push_str(", ttl_disable_changefeed_replication = true");
    }
    parameters
}

/// What cannot become a changefeed statement.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatementError {
    /// CockroachDB's webhook sink speaks HTTPS only.
    #[error(
        "the receiver's URL `{0}` is not https://…: CockroachDB's webhook sink only speaks HTTPS"
    )]
    NotHttps(String),
    /// The URL holds a character that would end the SQL string or the URL.
    #[error("the receiver's URL `{0}` holds a quote, a space or a control character")]
    BadUrl(String),
    /// The receiver's body cap cannot hold one request of the largest row the outbox accepts,
    /// escaped as CockroachDB escapes it.
    #[error(
        "a body cap of {cap} bytes cannot hold a request carrying one {payload}-byte payload, \
         which CockroachDB's JSON escaping can make six times larger: raise the cap to at \
         least {needed} bytes (or lower the payload limit)"
    )]
    CapTooSmall {
        /// The receiver's body cap.
        cap: usize,
        /// The largest payload the outbox accepts.
        payload: usize,
        /// The smallest cap that works.
        needed: usize,
    },
}

/// How much larger Go's `json.Marshal`, which builds CockroachDB's request bodies, can make a
/// row: it writes `<`, `>` and `&` as `\u003c`, six bytes for one, while the webhook sink's
/// `Flush.Bytes` counts the rows before that escaping.
pub const ESCAPING_GROWTH: usize = 6;

/// What one row may carry besides its payload (its other columns, its headers, the envelope's
/// `key`, `topic` and `updated`), before escaping.
pub const ROW_OVERHEAD: usize = 64 * 1024;

/// The envelope of one request around its rows, for the most rows a request carries
/// ([`FLUSH_MESSAGES`]).
const ENVELOPE: usize = FLUSH_MESSAGES * 256 + 1024;

/// The most rows in one request (`Flush.Messages`).
pub const FLUSH_MESSAGES: usize = 1000;

/// The `Flush.Bytes` that keeps every request under `cap`: a request holds less than
/// `Flush.Bytes` of rows, plus the one row that crossed it, each up to [`ESCAPING_GROWTH`]
/// times larger once escaped.
pub fn flush_bytes(cap: usize, max_payload_bytes: usize) -> Result<usize, StatementError> {
    let row = max_payload_bytes.saturating_add(ROW_OVERHEAD);
    let needed = (row + 64 * 1024)
        .saturating_mul(ESCAPING_GROWTH)
        .saturating_add(ENVELOPE);
    if cap < needed {
        return Err(StatementError::CapTooSmall {
            cap,
            payload: max_payload_bytes,
            needed,
        });
    }
    Ok((cap - ENVELOPE) / ESCAPING_GROWTH - row)
}

/// The statements that feed a CockroachDB outbox table to a [`Receiver`](super::Receiver):
///
/// 1. `SET CLUSTER SETTING kv.rangefeed.enabled = true` (changefeeds need rangefeeds; a
///    CockroachDB Cloud cluster has them on);
/// 2. `ALTER TABLE … SET (…)`: the row-level TTL of [`ttl_parameters`] (which `migrate` also
///    sets on a table it creates: here for a table made otherwise, or to change the TTL);
/// 3. `CREATE CHANGEFEED FOR TABLE … INTO 'webhook-https://…' WITH updated, resolved, …`: the
///    `wrapped` envelope and JSON (the defaults), each row's `updated` timestamp (the receiver
///    drops replays by it), resolved messages, the shared secret as `webhook_auth_header`, and
///    a `webhook_sink_config` that keeps a request under the receiver's body cap and retries
///    without end (a changefeed that gives up would stop).
///
/// ```
/// use outbox::TableName;
/// use outbox::changefeed::Setup;
///
/// let setup = Setup::new(TableName::DEFAULT, "https://relay.internal:8443/")?
///     .secret("Bearer s3cret");
/// let sql = setup.statements().join(";\n");
/// assert!(sql.contains("CREATE CHANGEFEED FOR TABLE \"outbox\""));
/// assert!(sql.contains("webhook_auth_header = 'Bearer s3cret'"));
/// # Ok::<(), outbox::changefeed::StatementError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Setup {
    table: TableName,
    url: String,
    secret: Option<String>,
    ca_cert: Option<String>,
    resolved: Duration,
    ttl: Duration,
    flush_bytes: usize,
    version: CockroachVersion,
}

impl Setup {
    /// The default TTL of published rows: one day.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

    /// A changefeed of `table` posting to the receiver at `url` (`https://host:port/path`, as
    /// CockroachDB's nodes reach it).
    pub fn new(table: TableName, url: impl Into<String>) -> Result<Setup, StatementError> {
        let url = url.into();
        if !url.starts_with("https://") {
            return Err(StatementError::NotHttps(url));
        }
        if url
            .chars()
            .any(|c| c == '\'' || c == '"' || c.is_whitespace() || c.is_control())
        {
            return Err(StatementError::BadUrl(url));
        }
        Ok(Setup {
            table,
            url,
            secret: None,
            ca_cert: None,
            resolved: Duration::from_secs(10),
            ttl: Self::DEFAULT_TTL,
            flush_bytes: flush_bytes(
                super::ReceiverConfig::DEFAULT_MAX_BODY_BYTES,
                crate::Outbox::DEFAULT_MAX_PAYLOAD_BYTES,
            )?,
            version: CockroachVersion::TTL_WITHOUT_CHANGEFEED,
        })
    }

    /// The `Authorization` header value the receiver expects ([`ReceiverConfig::secret`](super::ReceiverConfig::secret)).
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The PEM certificate (or its CA's) that CockroachDB trusts the receiver by, for a
    /// certificate no public authority signed: sent base64-encoded as the URL's `ca_cert`.
    pub fn ca_cert(mut self, pem: &[u8]) -> Self {
        self.ca_cert = Some(base64::engine::general_purpose::STANDARD.encode(pem));
        self
    }

    /// How often CockroachDB sends a resolved timestamp (default 10 s).
    pub fn resolved_every(mut self, every: Duration) -> Self {
        self.resolved = every.max(Duration::from_secs(1));
        self
    }

    /// How long a row stays before row-level TTL deletes it (default [`Self::DEFAULT_TTL`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The receiver's body cap ([`ReceiverConfig::max_body_bytes`](super::ReceiverConfig::max_body_bytes),
    /// default 64 MiB) and the largest payload the source outbox accepts
    /// ([`Outbox::max_payload_bytes`](crate::Outbox::max_payload_bytes), default 8 MiB): the
    /// changefeed's `Flush.Bytes` is chosen so that no request exceeds the cap, however many
    /// `<`, `>` and `&` its rows hold ([`flush_bytes`]). Fails for a cap too small for one row.
    pub fn max_body_bytes(
        mut self,
        cap: usize,
        max_payload_bytes: usize,
    ) -> Result<Self, StatementError> {
        self.flush_bytes = flush_bytes(cap, max_payload_bytes)?;
        Ok(self)
    }

    /// The server's version (default v24.1): before v24.1, the TTL's deletes cannot be kept out
    /// of the changefeed (the receiver skips them).
    pub fn version(mut self, version: CockroachVersion) -> Self {
        self.version = version;
        self
    }

    /// The statements, in the order to run them.
    pub fn statements(&self) -> Vec<String> {
        self.statements_with(self.secret.as_deref())
    }

    /// [`statements`](Self::statements) with the secret replaced by `'<redacted>'`, for logs.
    pub fn redacted_statements(&self) -> Vec<String> {
        self.statements_with(self.secret.as_ref().map(|_| "<redacted>"))
    }

    fn statements_with(&self, secret: Option<&str>) -> Vec<String> {
        let table = self.table.quoted('"');
        let mut url = format!("webhook-{}", self.url);
        if let Some(ca_cert) = &self.ca_cert {
            let separator = if url.contains('?') { '&' } else { '?' };
            // Standard base64 may hold `+` and `/`, which a query string must escape; `=`
            // padding too.
            let escaped = ca_cert
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D");
            url.push_str(&format!("{separator}ca_cert={escaped}"));
        }
        let sink_config = format!(
            r#"{{"Flush": {{"Messages": {FLUSH_MESSAGES}, "Bytes": {}, "Frequency": "100ms"}}, "Retry": {{"Max": "inf", "Backoff": "500ms"}}}}"#,
            self.flush_bytes
        );
        let mut options = vec![
            "updated".to_owned(),
            format!("resolved = '{}s'", self.resolved.as_secs()),
            format!("min_checkpoint_frequency = '{}s'", self.resolved.as_secs()),
            // A schema change (a column added by a later `migrate`) must not send every row of
            // the table again: the outbox's rows never change after they are written.
            "schema_change_policy = 'nobackfill'".to_owned(),
            // A changefeed created again (without a cursor) first sends every row still in the
            // table: that is what it missed meanwhile, and the receiver drops what it already
            // had by id. `no` would lose the events committed between the two changefeeds.
            "initial_scan = 'yes'".to_owned(),
        ];
        if let Some(secret) = secret {
            options.push(format!("webhook_auth_header = {}", sql_string(secret)));
        }
        options.push(format!(
            "webhook_sink_config = {}",
            sql_string(&sink_config)
        ));
        vec![
            "SET CLUSTER SETTING kv.rangefeed.enabled = true".to_owned(),
            format!(
                "ALTER TABLE {table} SET ({})",
                ttl_parameters(self.ttl, self.version)
            ),
            format!(
                "CREATE CHANGEFEED FOR TABLE {table}\n  INTO {}\n  WITH {}",
                sql_string(&url),
                options.join(",\n       ")
            ),
        ]
    }
}

/// `text` as a SQL string literal.
fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_version_answers() {
        let v = |text| CockroachVersion::detect(text);
        assert_eq!(
            v("CockroachDB CCL v23.2.4 (x86_64-pc-linux-gnu, built 2024/04/05 17:38:39, go1.21.5)"),
            Some(CockroachVersion {
                major: 23,
                minor: 2
            })
        );
        assert_eq!(
            v("CockroachDB OSS v24.3.0-alpha.1 (aarch64-apple-darwin21.2)"),
            Some(CockroachVersion {
                major: 24,
                minor: 3
            })
        );
        assert_eq!(
            v("CockroachDB CCL (a build of its own)"),
            Some(CockroachVersion::TTL_WITHOUT_CHANGEFEED)
        );
        assert_eq!(
            v("PostgreSQL 15.19 (Debian 15.19-0+deb12u1) on x86_64-pc-linux-gnu"),
            None
        );
    }

    /// Each line checked against CockroachDB's documentation (v24.1): `SET CLUSTER SETTING
    /// kv.rangefeed.enabled` ("Enable rangefeeds"); row-level TTL's storage parameters
    /// `ttl_expiration_expression` (a TIMESTAMPTZ expression over the table's own columns, with
    /// `AT TIME ZONE` as the page advises), `ttl_job_cron` (cron syntax, `@hourly`) and
    /// `ttl_disable_changefeed_replication` (new in v24.1); `CREATE CHANGEFEED FOR TABLE … INTO
    /// 'webhook-https://…'` with the options `updated`, `resolved` (an interval),
    /// `min_checkpoint_frequency`, `schema_change_policy` (`backfill`, `nobackfill` or `stop`),
    /// `webhook_auth_header` and `webhook_sink_config` (`Flush`'s
    /// `Messages`, `Bytes` and `Frequency`, `Retry`'s `Max` — an integer or `"inf"` — and
    /// `Backoff`), and the URL parameter `ca_cert` (base64).
    #[test]
    fn the_statements_follow_the_documented_syntax() {
        let setup = Setup::new(
            TableName::new("app.outbox").unwrap(),
            "https://relay.internal:8443/feed",
        )
        .unwrap()
        .secret("Bearer it's")
        .ca_cert(b"-----BEGIN CERTIFICATE-----\n??>\n")
        .ttl(Duration::from_secs(3 * 3600))
        .max_body_bytes(32 << 20, 1 << 20)
        .unwrap();
        let statements = setup.statements();
        assert_eq!(
            statements,
            [
                "SET CLUSTER SETTING kv.rangefeed.enabled = true",
                "ALTER TABLE \"app\".\"outbox\" SET (ttl_expiration_expression = '((created_at AT TIME ZONE ''UTC'') + INTERVAL ''10800 seconds'') AT TIME ZONE ''UTC''', ttl_job_cron = '@hourly', ttl_disable_changefeed_replication = true)",
                "CREATE CHANGEFEED FOR TABLE \"app\".\"outbox\"\n  \
                   INTO 'webhook-https://relay.internal:8443/feed?ca_cert=LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCj8%2FPgo%3D'\n  \
                   WITH updated,\n       \
                        resolved = '10s',\n       \
                        min_checkpoint_frequency = '10s',\n       \
                        schema_change_policy = 'nobackfill',\n       \
                        initial_scan = 'yes',\n       \
                        webhook_auth_header = 'Bearer it''s',\n       \
                        webhook_sink_config = '{\"Flush\": {\"Messages\": 1000, \"Bytes\": 4435456, \"Frequency\": \"100ms\"}, \"Retry\": {\"Max\": \"inf\", \"Backoff\": \"500ms\"}}'",
            ]
        );
        let redacted = setup.redacted_statements().join("\n");
        assert!(redacted.contains("webhook_auth_header = '<redacted>'"));
        assert!(!redacted.contains("it''s"));
    }

    /// The worst request the settings allow — rows just under `Flush.Bytes`, then one more of
    /// the largest payload, every byte escaped to six — stays under the cap; a cap that cannot
    /// hold one such row is refused with the size it needs.
    #[test]
    fn flush_bytes_keep_every_escaped_request_under_the_cap() {
        for (cap, payload) in [
            (64 << 20, 8 << 20),
            (32 << 20, 1 << 20),
            (200 << 20, 8 << 20),
        ] {
            let flush = flush_bytes(cap, payload).unwrap();
            let worst = (flush - 1 + payload + ROW_OVERHEAD) * ESCAPING_GROWTH + ENVELOPE;
            assert!(worst <= cap, "{worst} > {cap}");
            assert!(flush >= 64 * 1024, "{flush}");
        }
        assert_eq!(flush_bytes(64 << 20, 8 << 20).unwrap(), 2_687_829);
        let error = flush_bytes(16 << 20, 8 << 20).unwrap_err();
        assert!(
            matches!(error, StatementError::CapTooSmall { needed, .. } if needed > 16 << 20),
            "{error}"
        );
        assert!(
            error.to_string().contains("raise the cap to at least"),
            "{error}"
        );
    }

    #[test]
    fn before_v24_1_the_ttl_deletes_cannot_be_filtered() {
        let old = CockroachVersion {
            major: 23,
            minor: 2,
        };
        let parameters = ttl_parameters(Duration::from_secs(60), old);
        assert!(!parameters.contains("ttl_disable_changefeed_replication"));
        assert!(parameters.contains("INTERVAL ''60 seconds''"));
    }

    #[test]
    fn only_https_urls_without_quotes_are_taken() {
        let table = || TableName::DEFAULT;
        assert_eq!(
            Setup::new(table(), "http://x:8443").unwrap_err(),
            StatementError::NotHttps("http://x:8443".into())
        );
        assert!(matches!(
            Setup::new(table(), "https://x/'; DROP TABLE outbox; --"),
            Err(StatementError::BadUrl(_))
        ));
    }
}
