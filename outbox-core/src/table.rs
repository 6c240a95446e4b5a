//! Validated outbox table names.

use std::borrow::Cow;
use std::fmt;

use crate::Error;

/// Longest identifier accepted: PostgreSQL truncates names at 63 bytes.
const MAX_IDENT_LEN: usize = 63;

/// The name of an outbox table, optionally schema-qualified (`schema.table`).
///
/// Each part must be a plain identifier: an ASCII letter or `_`, then letters, digits or `_`,
/// at most 63 bytes. Anything else is refused, so a name read from configuration can never
/// smuggle SQL into the statements built from it. Names are quoted for their dialect, so reserved
/// words (`order`) work and case is kept.
///
/// ```
/// use outbox::TableName;
///
/// // Checked at compile time when built in a `const`:
/// const BILLING: TableName = TableName::from_static("billing_outbox");
/// assert_eq!(BILLING.as_str(), "billing_outbox");
///
/// // Checked at run time otherwise:
/// assert!(TableName::new("events; DROP TABLE accounts").is_err());
/// assert!(TableName::new("app.outbox").is_ok());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName(Cow<'static, str>);

impl TableName {
    /// The default table, `outbox`.
    pub const DEFAULT: TableName = TableName(Cow::Borrowed("outbox"));

    /// Validates a name known at compile time. In a `const` item an invalid name is a compile
    /// error; elsewhere it panics, so prefer [`TableName::new`] for names read at run time.
    pub const fn from_static(name: &'static str) -> Self {
        if let Err(reason) = check(name) {
            // Evaluated in a `const`, this is reported by the compiler with the reason.
            panic!("{}", reason);
        }
        TableName(Cow::Borrowed(name))
    }

    /// Validates a name read at run time (configuration, environment).
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        match check(&name) {
            Ok(()) => Ok(TableName(Cow::Owned(name))),
            Err(reason) => Err(Error::InvalidTableName { name, reason }),
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The schema part and the table part (`None` for an unqualified name).
    pub fn parts(&self) -> (Option<&str>, &str) {
        match self.0.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, &self.0),
        }
    }

    /// The table beside this one named `<table><suffix>` (in the same schema), quoted with
    /// `quote`: where the library keeps what belongs to this outbox (a lease, the log's
    /// position, the relays' journal).
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pub(crate) fn companion(&self, suffix: &str, quote: char) -> String {
        match self.parts() {
            (Some(schema), name) => format!("{quote}{schema}{quote}.{quote}{name}{suffix}{quote}"),
            (None, name) => format!("{quote}{name}{suffix}{quote}"),
        }
    }

    /// The name quoted with `quote` (`"` for PostgreSQL and SQLite, `` ` `` for MySQL), part by
    /// part, for SQL that names the table (tools, migrations of your own). Safe because
    /// validation admits no quote characters.
    ///
    /// ```
    /// # use outbox::TableName;
    /// let table = TableName::new("billing.outbox")?;
    /// assert_eq!(table.quoted('"'), "\"billing\".\"outbox\"");
    /// # Ok::<(), outbox::Error>(())
    /// ```
    pub fn quoted(&self, quote: char) -> String {
        match self.parts() {
            (Some(schema), table) => format!("{quote}{schema}{quote}.{quote}{table}{quote}"),
            (None, table) => format!("{quote}{table}{quote}"),
        }
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName::DEFAULT
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The validation rules, `const` so that `from_static` can run them at compile time.
const fn check(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err("an outbox table name cannot be empty");
    }
    let mut i = 0;
    let mut part_len = 0;
    let mut dots = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'.' {
            if part_len == 0 {
                return Err("each part of an outbox table name `schema.table` needs a name");
            }
            dots += 1;
            if dots > 1 {
                return Err("an outbox table name has at most one `.` (`schema.table`)");
            }
            part_len = 0;
        } else {
            let letter = b.is_ascii_alphabetic() || b == b'_';
            if part_len == 0 && !letter {
                return Err(
                    "an outbox table name (and its schema) must start with an ASCII letter or `_`",
                );
            }
            if !letter && !b.is_ascii_digit() {
                return Err(
                    "an outbox table name may contain only ASCII letters, digits and `_` (plus one `.` after a schema)",
                );
            }
            part_len += 1;
            if part_len > MAX_IDENT_LEN {
                return Err("an outbox table name (and its schema) may be at most 63 bytes long");
            }
        }
        i += 1;
    }
    if part_len == 0 {
        return Err("each part of an outbox table name `schema.table` needs a name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_qualified_names_are_accepted() {
        for ok in [
            "outbox",
            "_o",
            "Outbox2",
            "app.outbox",
            "a_b.c_d",
            &"x".repeat(63),
        ] {
            assert!(TableName::new(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn hostile_names_are_rejected_with_a_reason() {
        for bad in [
            "",
            "outbox; DROP TABLE accounts",
            "out\"box",
            "out`box",
            "out box",
            "1outbox",
            "a.b.c",
            ".outbox",
            "outbox.",
            "out-box",
            "outbox--",
            "ou\u{0}tbox",
            "outböx",
            &"x".repeat(64),
        ] {
            match TableName::new(bad) {
                Err(Error::InvalidTableName { name, reason }) => {
                    assert_eq!(name, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn quoting_follows_the_parts() {
        let t = TableName::new("app.outbox").unwrap();
        assert_eq!(t.quoted('"'), "\"app\".\"outbox\"");
        assert_eq!(TableName::DEFAULT.quoted('`'), "`outbox`");
    }

    /// The rule, said plainly: one or two `.`-separated parts, each an ASCII identifier of at
    /// most 63 bytes.
    fn is_identifier(part: &str) -> bool {
        part.len() <= 63
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    proptest::proptest! {
        #[test]
        fn a_name_is_accepted_exactly_when_its_parts_are_identifiers(
            name in "\\PC{0,80}|[A-Za-z_][A-Za-z0-9_]{0,70}(\\.[A-Za-z_0-9][A-Za-z0-9_]{0,70})?[.;\"` ]?"
        ) {
            let parts: Vec<&str> = name.split('.').collect();
            let valid = parts.len() <= 2 && parts.iter().all(|part| is_identifier(part));
            match TableName::new(name.clone()) {
                Ok(table) => {
                    proptest::prop_assert!(valid, "{name:?} was accepted");
                    proptest::prop_assert_eq!(table.as_str(), name.as_str());
                    let quoted: Vec<String> = parts.iter().map(|part| format!("`{part}`")).collect();
                    proptest::prop_assert_eq!(table.quoted('`'), quoted.join("."));
                }
                Err(Error::InvalidTableName { name: refused, reason }) => {
                    proptest::prop_assert!(!valid, "{name:?} was refused: {reason}");
                    proptest::prop_assert_eq!(refused, name);
                }
                Err(other) => proptest::prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}
