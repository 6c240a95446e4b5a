//! Decoding the `pgoutput` messages the relay reads: a relation, and an insert into the outbox
//! table.

use super::*;

/// Reads a pgoutput Relation message (after its tag): the outbox table's, or `None` for
/// another table of the publication.
pub(super) fn parse_relation(
    data: &[u8],
    table: &(String, String),
) -> Result<Option<Relation>, String> {
    let mut reader = Reader(data);
    let id = reader.u32()?;
    let schema = reader.cstr()?;
    let name = reader.cstr()?;
    if (schema, name) != (table.0.as_str(), table.1.as_str()) {
        return Ok(None);
    }
    reader.u8()?; // replica identity
    let count = reader.u16()?;
    let mut names = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        reader.u8()?; // flags
        names.push(reader.cstr()?.to_owned());
        reader.u32()?; // type
        reader.u32()?; // modifier
    }
    let mut columns = [0; 8];
    for (slot, wanted) in columns.iter_mut().zip(COLUMNS) {
        *slot = names
            .iter()
            .position(|n| n == wanted)
            .ok_or_else(|| format!("the outbox table has no column `{wanted}`: run `migrate`"))?;
    }
    Ok(Some(Relation { id, columns }))
}

/// Reads a pgoutput Insert message (after its tag) of the outbox table; `None` for another
/// table's.
pub(super) fn parse_insert(
    data: &[u8],
    relation: Option<Relation>,
) -> Result<Option<Message>, String> {
    let mut reader = Reader(data);
    let id = reader.u32()?;
    let Some(relation) = relation.filter(|r| r.id == id) else {
        return Ok(None);
    };
    if reader.u8()? != b'N' {
        return Err("pgoutput: an Insert without a new tuple".into());
    }
    let count = reader.u16()?;
    let mut values: Vec<Option<&str>> = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        match reader.u8()? {
            b'n' | b'u' => values.push(None),
            b't' => {
                let len = reader.u32()? as usize;
                let bytes = reader.take(len)?;
                values.push(Some(
                    std::str::from_utf8(bytes).map_err(|_| "pgoutput: a value is not UTF-8")?,
                ));
            }
            kind => return Err(format!("pgoutput: unexpected column kind {kind:#x}")),
        }
    }
    let value = |i: usize| -> Result<Option<&str>, String> {
        values
            .get(relation.columns[i])
            .copied()
            .ok_or_else(|| "pgoutput: a row has fewer columns than its relation".into())
    };
    let required = |i: usize| -> Result<&str, String> {
        value(i)?.ok_or_else(|| format!("the outbox row has no `{}`", COLUMNS[i]))
    };
    let seq = required(0)?
        .parse()
        .map_err(|_| "the outbox row's seq is not a number")?;
    let event_id = required(1)?
        .parse()
        .map_err(|_| "the outbox row's id is not a UUID")?;
    let attempts = value(7)?.and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut message = Message::new(
        event_id,
        seq,
        required(2)?,
        required(3)?,
        required(4)?,
        required(5)?,
    )
    .with_attempts(attempts);
    if let Some(headers) = value(6)? {
        message = message.with_headers(headers);
    }
    Ok(Some(message))
}

/// Big-endian reads of a pgoutput message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("pgoutput: a message ends early".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn cstr(&mut self) -> Result<&'a str, String> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or("pgoutput: a name without its terminator")?;
        let text =
            std::str::from_utf8(&self.0[..end]).map_err(|_| "pgoutput: a name is not UTF-8")?;
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message(columns: &[&str]) -> Vec<u8> {
        let mut data = 16384_u32.to_be_bytes().to_vec();
        data.extend(b"public\0outbox\0d");
        data.extend((columns.len() as u16).to_be_bytes());
        for column in columns {
            data.push(0);
            data.extend(column.as_bytes());
            data.push(0);
            data.extend(25_u32.to_be_bytes());
            data.extend((-1_i32).to_be_bytes());
        }
        data
    }

    #[test]
    fn rows_decode_from_pgoutput_whatever_the_column_order() {
        let mut columns = COLUMNS.to_vec();
        columns.reverse();
        columns.insert(3, "created_at");
        let table = ("public".to_owned(), "outbox".to_owned());
        let relation = parse_relation(&relation_message(&columns), &table)
            .expect("parses")
            .expect("the outbox table");
        let id = uuid::Uuid::now_v7();
        let mut row = 16384_u32.to_be_bytes().to_vec();
        row.push(b'N');
        row.extend((columns.len() as u16).to_be_bytes());
        for column in &columns {
            let value = match *column {
                "seq" => Some("42".to_owned()),
                "id" => Some(id.to_string()),
                "aggregate_type" => Some("Account".into()),
                "aggregate_id" => Some("7".into()),
                "event_type" => Some("Opened".into()),
                "payload" => Some(r#"{"a": 1}"#.into()),
                "attempts" => Some("0".into()),
                _ => None,
            };
            match value {
                Some(text) => {
                    row.push(b't');
                    row.extend((text.len() as u32).to_be_bytes());
                    row.extend(text.as_bytes());
                }
                None => row.push(b'n'),
            }
        }
        let message = parse_insert(&row, Some(relation))
            .expect("parses")
            .expect("our row");
        assert_eq!(
            message,
            Message::new(id, 42, "Account", "7", "Opened", r#"{"a": 1}"#)
        );
        let other = ("public".to_owned(), "orders".to_owned());
        assert!(
            parse_relation(&relation_message(&columns), &other)
                .expect("parses")
                .is_none()
        );
        assert!(
            parse_relation(&relation_message(&["seq"]), &table).is_err(),
            "a column missing"
        );
        assert!(
            parse_insert(&row[..row.len() - 3], Some(relation)).is_err(),
            "cut short"
        );
    }

    #[test]
    fn replication_urls_are_read_and_refused_with_a_reason() {
        let config =
            replication_config("postgres://rep%40x:p%2Fw@db.example:6543/app?sslmode=require")
                .expect("valid");
        assert_eq!(config.host, "db.example");
        assert_eq!(config.port, 6543);
        assert_eq!(config.user, "rep@x");
        assert_eq!(config.password, "p/w");
        assert_eq!(config.database, "app");
        assert!(config.tls.mode.requires_tls());
        for (url, reason) in [
            ("mysql://x@h/db", "scheme"),
            ("postgres://u:secret@h/db?sslmode=maybe", "sslmode"),
            ("postgres://u:secret@h/db?foo=1", "unknown parameter"),
            ("no url", "not a URL"),
        ] {
            let error = replication_config(url).expect_err(url).to_string();
            assert!(error.contains(reason), "{url}: {error}");
            assert!(
                !error.contains("secret"),
                "{url}: the password is never shown"
            );
        }
    }
}
