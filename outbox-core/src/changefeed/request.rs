//! What CockroachDB's webhook sink posts, read: the `wrapped` envelope's rows and resolved
//! timestamps, checked whole before anything is stored.

use super::*;

/// A request of CockroachDB's webhook sink: rows, or a resolved timestamp.
#[derive(Deserialize)]
pub(super) struct Batch<'a> {
    #[serde(borrow, default)]
    payload: Option<Vec<Row<'a>>>,
    #[serde(default)]
    length: Option<usize>,
    #[serde(default)]
    resolved: Option<String>,
}

/// One row in the `wrapped` envelope (other fields, such as `key` and `before`, are ignored).
#[derive(Deserialize)]
pub(super) struct Row<'a> {
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    updated: Option<String>,
    #[serde(default)]
    resolved: Option<String>,
}

/// The outbox columns an event needs; others (`created_at`, …) are ignored.
#[derive(Deserialize)]
pub(super) struct After {
    id: uuid::Uuid,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Box<RawValue>,
    #[serde(default)]
    headers: Option<Box<RawValue>>,
    #[serde(default)]
    seq: Option<i64>,
}

/// Parses a request: the rows to stage (each id once), and what else it said.
pub(super) fn parse(body: &[u8]) -> Result<(Vec<Staged>, Received), ChangefeedError> {
    let batch: Batch<'_> =
        serde_json::from_slice(body).map_err(|e| ChangefeedError::Malformed(format!("{e}")))?;
    let mut received = Received::default();
    let newest = |text: &str, received: &mut Received| -> Result<(), ChangefeedError> {
        let resolved = Hlc::parse(text)?;
        received.resolved = Some(received.resolved.map_or(resolved, |old| old.max(resolved)));
        Ok(())
    };
    if let Some(resolved) = &batch.resolved {
        newest(resolved, &mut received)?;
    }
    let rows = match (batch.payload, batch.resolved.is_some()) {
        (Some(rows), _) => rows,
        (None, true) => return Ok((Vec::new(), received)),
        (None, false) => {
            return Err(ChangefeedError::Malformed(
                "neither `payload` nor `resolved`".to_owned(),
            ));
        }
    };
    if let Some(length) = batch.length
        && length != rows.len()
    {
        return Err(ChangefeedError::Malformed(format!(
            "`length` is {length} but `payload` holds {} rows",
            rows.len()
        )));
    }
    // Every row is checked before any is stored: a malformed request stores nothing.
    let mut staged = Vec::with_capacity(rows.len());
    let mut seen = HashSet::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        if let Some(resolved) = &row.resolved {
            newest(resolved, &mut received)?;
            continue;
        }
        let at = |problem: String| ChangefeedError::Malformed(format!("row {index}: {problem}"));
        let updated = row
            .updated
            .as_deref()
            .ok_or_else(|| at("no `updated` timestamp (create the changefeed WITH updated)".into()))
            .and_then(|text| Hlc::parse(text).map_err(|e| at(e.to_string())))?;
        let after = match row.after {
            Some(after) if after.get() != "null" => after,
            _ => {
                received.deletes += 1;
                continue;
            }
        };
        let after: After = serde_json::from_str(after.get())
            .map_err(|e| at(format!("`after` is not an outbox row: {e}")))?;
        if !seen.insert(after.id) {
            received.replays += 1;
            continue;
        }
        staged.push(Staged {
            id: after.id,
            updated: updated.stored(),
            seq: after.seq.unwrap_or(0),
            aggregate_type: after.aggregate_type,
            aggregate_id: after.aggregate_id,
            event_type: after.event_type,
            payload: unescape_html(after.payload.get()),
            headers: after
                .headers
                .filter(|headers| headers.get() != "null")
                .map(|headers| unescape_html(headers.get())),
        });
    }
    Ok((staged, received))
}

/// `json` with the escapes Go's `json.Marshal` writes for `<`, `>` and `&` (`\u003c`, `\u003e`,
/// `\u0026`) turned back into those characters: the same JSON, as the service wrote it and up
/// to six times smaller. Other escapes are kept; an escaped backslash is never taken for the
/// start of one.
pub(super) fn unescape_html(json: &str) -> String {
    if !json.contains("\\u00") {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = &rest[at..];
        let plain = match escape.get(..6) {
            Some(e) if e.eq_ignore_ascii_case("\\u003c") => Some('<'),
            Some(e) if e.eq_ignore_ascii_case("\\u003e") => Some('>'),
            Some(e) if e.eq_ignore_ascii_case("\\u0026") => Some('&'),
            _ => None,
        };
        match plain {
            Some(c) => {
                out.push(c);
                rest = &escape[6..];
            }
            None => {
                // Any other escape: kept whole (a backslash and the character it escapes).
                let len = escape[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&escape[..1 + len]);
                rest = &escape[1 + len..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_html_escapes_are_undone_and_nothing_else() {
        assert_eq!(
            unescape_html(r#"{"s":"\u003cb\u003eTom \u0026 Jerry\u003C/b\u003E"}"#),
            r#"{"s":"<b>Tom & Jerry</b>"}"#
        );
        // An escaped backslash followed by `u003c` is text, not an escape.
        assert_eq!(
            unescape_html(r#"{"s":"\\u003c \" \n \u00e9"}"#),
            r#"{"s":"\\u003c \" \n \u00e9"}"#
        );
        assert_eq!(unescape_html(r#"{"n":1}"#), r#"{"n":1}"#);
        assert_eq!(unescape_html("\\"), "\\");
    }
}
