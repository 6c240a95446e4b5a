//! Did the broker get exactly what the database committed? An audit compares the events an
//! outbox table holds with the messages a broker holds, by event id, and reports:
//!
//! * **missing**: published according to the table (kept by a relay in retention mode), not on
//!   the broker: lost;
//! * **phantoms**: on the broker with an event id the table never committed;
//! * **duplicates**: an event on the broker more than once (at least once allows them; the
//!   consumer's inbox drops them);
//! * **order violations**: an aggregate's events first seen on the broker out of their order
//!   in the table;
//! * and, not faults, the events still **pending** or **dead** in the table, and broker messages
//!   that carry no outbox event id (`unidentified`).
//!
//! The committed side is the table: run the relay with
//! [`retention`](crate::relay::RelayBuilder::retention) (the CLI's `relay.retention`) so that it
//! keeps what it published, for at least as long as you may want to audit. An [`IdRange`]
//! narrows both sides to a window of event ids (UUIDv7: a time window, see
//! [`IdRange::between`]), so that an audit can leave out what retention already purged and
//! what a broker's own retention dropped.
//!
//! The broker side is read with the broker's own client, without consuming anything for good:
//! [`read::nats`] (a JetStream stream), [`read::kafka`] (a topic, every partition),
//! [`read::redis`] (a stream key), [`read::rabbitmq`] (a queue, whose messages go back to it
//! unacknowledged), each behind its sink's feature. `outbox audit` runs the whole audit from
//! the command line.
//!
//! ```no_run
//! # #[cfg(all(feature = "postgres", feature = "nats"))]
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox::Outbox;
//! use outbox::audit::{self, IdRange};
//!
//! let range = IdRange::all();
//! let committed = Outbox::DEFAULT.committed(&pool, &range).await?;
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let observed = audit::read::nats(&client, "BANK", None).await?;
//! let report = audit::compare(&committed, &observed, &range);
//! println!("{report}");
//! assert!(report.is_clean(), "lost, phantom or reordered events");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use crate::TableName;

pub mod read;

/// How many events of each list a report names by id (the counts are always complete).
pub const LISTED: usize = 20;

/// Where an event stands in the outbox table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CommittedState {
    /// Waiting to be published (or published, and not yet marked).
    Pending,
    /// Published and kept (retention mode).
    Published,
    /// A dead letter.
    Dead,
}

/// An event the outbox table holds: a line of [`Outbox::committed`](crate::Outbox::committed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Committed {
    /// The event id.
    pub id: uuid::Uuid,
    /// Its insertion number: the order of its aggregate's events.
    pub seq: i64,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// Pending, published or dead.
    pub state: CommittedState,
    /// Where its transaction committed, when the relay delivered it in commit order from the
    /// database's log (PostgreSQL's log relay, table mode with retention: the commit's end
    /// LSN). The audit then judges its aggregate's order by it, and by `seq` within one
    /// transaction; events without one come first, in `seq` order.
    pub commit_position: Option<u64>,
}

impl Committed {
    /// An event as a table row gives it; for a committed side of your own (events recorded
    /// elsewhere, a list kept by the writers).
    pub fn new(
        id: uuid::Uuid,
        seq: i64,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        state: CommittedState,
    ) -> Self {
        Committed {
            id,
            seq,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            state,
            commit_position: None,
        }
    }

    /// With the position of its commit in the database's log (see
    /// [`Committed::commit_position`]).
    pub fn with_commit_position(mut self, position: u64) -> Self {
        self.commit_position = Some(position);
        self
    }

    /// The order the relay delivers an aggregate's events in: commit order where it is known,
    /// then insertion order.
    fn order(&self) -> Place {
        (self.commit_position.unwrap_or(0), self.seq)
    }
}

/// An event's place in its aggregate's committed order: the commit's position in the log (0
/// where unknown), then `seq`.
type Place = (u64, i64);

/// A message read from the broker, in the order the broker holds it (for Kafka, in offset
/// order within each partition; an aggregate's events share a partition).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observed {
    /// The outbox event id it carries; `None` for a message that carries none (published by
    /// something else than the outbox, or an id that is not a UUID).
    pub id: Option<uuid::Uuid>,
    /// Where the broker holds it: stream sequence, `partition/offset`, entry id, position in
    /// the queue.
    pub position: String,
}

impl Observed {
    /// A message carrying `id` (parsed; anything but a UUID counts as unidentified), at
    /// `position`.
    pub fn new(id: Option<&str>, position: impl Into<String>) -> Self {
        Observed {
            id: id.and_then(|id| id.trim().parse().ok()),
            position: position.into(),
        }
    }
}

/// The event ids an audit covers, both ends included; [`IdRange::all`] covers everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdRange {
    from: Option<uuid::Uuid>,
    to: Option<uuid::Uuid>,
}

impl IdRange {
    /// Every event.
    pub const fn all() -> Self {
        IdRange {
            from: None,
            to: None,
        }
    }

    /// The events from `from` on (included).
    pub const fn from(mut self, from: uuid::Uuid) -> Self {
        self.from = Some(from);
        self
    }

    /// The events up to `to` (included).
    pub const fn to(mut self, to: uuid::Uuid) -> Self {
        self.to = Some(to);
        self
    }

    /// The events recorded between two instants: event ids are UUIDv7, whose first 48 bits
    /// are the recording time in milliseconds, so a time window is a range of ids.
    pub fn between(start: SystemTime, end: SystemTime) -> Self {
        IdRange::all()
            .from(uuid_at(start, 0))
            .to(uuid_at(end, u128::from(u64::MAX) << 16 | 0xffff))
    }

    /// True when `id` lies in the range.
    pub fn contains(&self, id: &uuid::Uuid) -> bool {
        self.from.is_none_or(|from| *id >= from) && self.to.is_none_or(|to| *id <= to)
    }

    /// The first id included, if bounded.
    pub fn start(&self) -> Option<uuid::Uuid> {
        self.from
    }

    /// The last id included, if bounded.
    pub fn end(&self) -> Option<uuid::Uuid> {
        self.to
    }
}

/// The UUIDv7 bound at `at` (milliseconds since the epoch, saturated) with `rest` as the
/// bits after the timestamp.
fn uuid_at(at: SystemTime, rest: u128) -> uuid::Uuid {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
        .min((1 << 48) - 1);
    uuid::Uuid::from_u128(millis << 80 | (rest & ((1 << 80) - 1)))
}

/// An aggregate's event seen on the broker before an earlier event of the same aggregate was
/// first seen there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OrderViolation {
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event that came late: committed earlier, first seen later.
    pub late: uuid::Uuid,
    /// Where the broker holds it.
    pub late_position: String,
    /// The event committed after it that the broker holds before it.
    pub overtaken_by: uuid::Uuid,
}

/// An event on the broker more than once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Duplicate {
    /// The event id.
    pub id: uuid::Uuid,
    /// How many times the broker holds it (2 or more).
    pub copies: u64,
}

/// What an audit found: [`compare`]'s result. `Display` prints it as a table; it serializes
/// to JSON with these field names. The lists hold at most [`LISTED`] entries each; the counts
/// are complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditReport {
    /// Events of the range in the table.
    pub committed: u64,
    /// Of those, published and kept.
    pub published: u64,
    /// Of those, still pending.
    pub pending: u64,
    /// Of those, dead letters.
    pub dead: u64,
    /// Broker messages of the range read (duplicates included).
    pub observed: u64,
    /// Committed events found on the broker at least once.
    pub delivered: u64,
    /// Published events not on the broker: lost.
    pub missing: u64,
    /// Broker messages whose event id the table does not hold.
    pub phantoms: u64,
    /// Extra copies on the broker (a message held 3 times counts 2).
    pub duplicates: u64,
    /// Aggregates' events first seen out of their committed order.
    pub order_violations: u64,
    /// Pending events not on the broker yet: the relay's backlog, not a loss.
    pub pending_undelivered: u64,
    /// Broker messages that carry no outbox event id: not counted anywhere else.
    pub unidentified: u64,
    /// Missing event ids (at most [`LISTED`]).
    pub missing_ids: Vec<uuid::Uuid>,
    /// Phantom event ids (at most [`LISTED`]).
    pub phantom_ids: Vec<uuid::Uuid>,
    /// The most copied events (at most [`LISTED`]).
    pub duplicated: Vec<Duplicate>,
    /// The first order violations (at most [`LISTED`]).
    pub violations: Vec<OrderViolation>,
}

impl AuditReport {
    /// No event lost, no phantom, every aggregate in order. Duplicates and pending events do
    /// not make an audit fail: at least once allows the first, the relay's backlog is the
    /// second.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.phantoms == 0 && self.order_violations == 0
    }
}

/// Compares what the table committed with what the broker holds, within `range` (both sides
/// are narrowed to it: a broker message outside it is neither delivered nor a phantom).
///
/// Order is checked on first sightings: under at least once a redelivered copy may come after
/// later events of its aggregate, but an aggregate's events must first reach the broker in
/// their committed order: commit order where the table knows it
/// ([`Committed::commit_position`], the log relay), else insertion order (`seq`), the order
/// the polling relay delivers in.
pub fn compare(committed: &[Committed], observed: &[Observed], range: &IdRange) -> AuditReport {
    let committed: Vec<&Committed> = committed
        .iter()
        .filter(|event| range.contains(&event.id))
        .collect();
    let by_id: HashMap<uuid::Uuid, &Committed> =
        committed.iter().map(|event| (event.id, *event)).collect();
    let count_state = |state| {
        committed
            .iter()
            .filter(|event| event.state == state)
            .count() as u64
    };
    let mut report = AuditReport {
        committed: by_id.len() as u64,
        published: count_state(CommittedState::Published),
        pending: count_state(CommittedState::Pending),
        dead: count_state(CommittedState::Dead),
        observed: 0,
        delivered: 0,
        missing: 0,
        phantoms: 0,
        duplicates: 0,
        order_violations: 0,
        pending_undelivered: 0,
        unidentified: 0,
        missing_ids: Vec::new(),
        phantom_ids: Vec::new(),
        duplicated: Vec::new(),
        violations: Vec::new(),
    };

    let mut copies: HashMap<uuid::Uuid, u64> = HashMap::new();
    // Per aggregate, the latest committed place first seen so far and its event.
    let mut latest: HashMap<(&str, &str), (Place, uuid::Uuid)> = HashMap::new();
    let mut phantoms = HashSet::new();
    for message in observed {
        let Some(id) = message.id else {
            report.unidentified += 1;
            continue;
        };
        if !range.contains(&id) {
            continue;
        }
        report.observed += 1;
        let seen = copies.entry(id).or_default();
        *seen += 1;
        if *seen > 1 {
            report.duplicates += 1;
            continue;
        }
        let Some(event) = by_id.get(&id) else {
            report.phantoms += 1;
            if phantoms.insert(id) && report.phantom_ids.len() < LISTED {
                report.phantom_ids.push(id);
            }
            continue;
        };
        report.delivered += 1;
        let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
        match latest.get(&key) {
            Some(&(place, later)) if place > event.order() => {
                report.order_violations += 1;
                if report.violations.len() < LISTED {
                    report.violations.push(OrderViolation {
                        aggregate_type: event.aggregate_type.clone(),
                        aggregate_id: event.aggregate_id.clone(),
                        late: id,
                        late_position: message.position.clone(),
                        overtaken_by: later,
                    });
                }
            }
            _ => {
                latest.insert(key, (event.order(), id));
            }
        }
    }

    for event in &committed {
        if copies.contains_key(&event.id) {
            continue;
        }
        match event.state {
            CommittedState::Published => {
                report.missing += 1;
                if report.missing_ids.len() < LISTED {
                    report.missing_ids.push(event.id);
                }
            }
            CommittedState::Pending => report.pending_undelivered += 1,
            CommittedState::Dead => {}
        }
    }
    let mut duplicated: Vec<Duplicate> = copies
        .into_iter()
        .filter(|&(_, copies)| copies > 1)
        .map(|(id, copies)| Duplicate { id, copies })
        .collect();
    duplicated.sort_by(|a, b| b.copies.cmp(&a.copies).then(a.id.cmp(&b.id)));
    duplicated.truncate(LISTED);
    report.duplicated = duplicated;
    report
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = |fault: u64| if fault == 0 { "ok" } else { "FAIL" };
        writeln!(f, "{:<22} {:>10}", "committed", self.committed)?;
        writeln!(f, "{:<22} {:>10}", "  published", self.published)?;
        writeln!(f, "{:<22} {:>10}", "  pending", self.pending)?;
        writeln!(f, "{:<22} {:>10}", "  dead letters", self.dead)?;
        writeln!(f, "{:<22} {:>10}", "observed on broker", self.observed)?;
        writeln!(f, "{:<22} {:>10}", "delivered", self.delivered)?;
        writeln!(
            f,
            "{:<22} {:>10}  {}",
            "missing (lost)",
            self.missing,
            verdict(self.missing)
        )?;
        writeln!(
            f,
            "{:<22} {:>10}  {}",
            "phantoms",
            self.phantoms,
            verdict(self.phantoms)
        )?;
        writeln!(
            f,
            "{:<22} {:>10}  {}",
            "order violations",
            self.order_violations,
            verdict(self.order_violations)
        )?;
        writeln!(
            f,
            "{:<22} {:>10}  (at least once)",
            "duplicates", self.duplicates
        )?;
        writeln!(
            f,
            "{:<22} {:>10}  (not yet published)",
            "pending, not on broker", self.pending_undelivered
        )?;
        write!(
            f,
            "{:<22} {:>10}  (no outbox event id)",
            "unidentified", self.unidentified
        )?;
        for id in &self.missing_ids {
            write!(f, "\nmissing    {id}")?;
        }
        for id in &self.phantom_ids {
            write!(f, "\nphantom    {id}")?;
        }
        for violation in &self.violations {
            write!(
                f,
                "\nout of order  {}/{}: {} (at {}) after {}",
                violation.aggregate_type,
                violation.aggregate_id,
                violation.late,
                violation.late_position,
                violation.overtaken_by
            )?;
        }
        for duplicate in &self.duplicated {
            write!(f, "\nduplicate  {} x{}", duplicate.id, duplicate.copies)?;
        }
        Ok(())
    }
}

/// A database's statements for the audit: the committed side. Implemented by the library in each
/// `store/<database>/admin.rs`; part of [`Dialect`](crate::Dialect).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database the outbox supports",
    note = "enable the `postgres`, `mysql` or `sqlite` feature of outbox; in generic code bound the database with `DB: outbox::Dialect`"
)]
pub trait AuditSql: sqlx::Database + crate::sealed::Sealed {
    /// What an audit needs of the events recorded after `after` (a `seq`): id, order,
    /// aggregate and state, in order, at most `limit`.
    #[doc(hidden)]
    fn __committed<'a>(
        pool: &'a sqlx::Pool<Self>,
        table: &'a TableName,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<crate::audit::Committed>, sqlx::Error>> + Send + 'a;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    fn event(n: u128, aggregate: &str, state: CommittedState) -> Committed {
        Committed::new(id(n), n as i64, "account", aggregate, state)
    }

    fn seen(ns: &[u128]) -> Vec<Observed> {
        ns.iter()
            .enumerate()
            .map(|(position, n)| Observed {
                id: Some(id(*n)),
                position: position.to_string(),
            })
            .collect()
    }

    #[test]
    fn a_clean_run_reports_nothing_but_its_counts() {
        use CommittedState::*;
        let committed = [
            event(1, "a", Published),
            event(2, "b", Published),
            event(3, "a", Published),
            event(4, "a", Pending),
            event(5, "c", Dead),
        ];
        let report = compare(&committed, &seen(&[2, 1, 3]), &IdRange::all());
        assert!(report.is_clean(), "{report}");
        assert_eq!(
            (
                report.committed,
                report.published,
                report.pending,
                report.dead
            ),
            (5, 3, 1, 1)
        );
        assert_eq!((report.observed, report.delivered), (3, 3));
        assert_eq!(report.pending_undelivered, 1);
        assert_eq!(report.missing + report.phantoms + report.duplicates, 0);
    }

    #[test]
    fn loss_phantoms_duplicates_and_disorder_are_each_counted() {
        use CommittedState::*;
        let committed = [
            event(1, "a", Published),
            event(2, "a", Published),
            event(3, "a", Published),
            event(4, "b", Published),
            event(5, "b", Published),
        ];
        // 5 lost; 9 a phantom (twice: one phantom message is a duplicate); 2 before 1;
        // 1 redelivered after 3 (a duplicate, not a violation); a message without an id.
        let mut observed = seen(&[2, 1, 3, 1, 4, 9, 9]);
        observed.push(Observed::new(Some("not a uuid"), "x"));
        let report = compare(&committed, &observed, &IdRange::all());
        assert!(!report.is_clean());
        assert_eq!(report.missing, 1);
        assert_eq!(report.missing_ids, [id(5)]);
        assert_eq!(report.phantoms, 1);
        assert_eq!(report.phantom_ids, [id(9)]);
        assert_eq!(report.duplicates, 2);
        assert_eq!(report.order_violations, 1);
        assert_eq!(report.violations[0].late, id(1));
        assert_eq!(report.violations[0].overtaken_by, id(2));
        assert_eq!(report.unidentified, 1);
        let table = report.to_string();
        assert!(
            table.contains("missing (lost)                  1  FAIL"),
            "{table}"
        );
        assert!(table.contains(&format!("out of order  account/a: {}", id(1))));
    }

    #[test]
    fn a_range_narrows_both_sides() {
        use CommittedState::*;
        let committed = [event(1, "a", Published), event(5, "a", Published)];
        let range = IdRange::all().from(id(3)).to(id(7));
        // 1 is outside: neither missing nor delivered; 2 is outside too: not a phantom.
        let report = compare(&committed, &seen(&[2, 5]), &range);
        assert!(report.is_clean(), "{report}");
        assert_eq!(
            (report.committed, report.delivered, report.observed),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_time_window_is_a_range_of_uuidv7() {
        let before = SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let inside = uuid::Uuid::now_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = SystemTime::now();
        let range = IdRange::between(before, after);
        assert!(range.contains(&inside));
        assert!(
            !IdRange::between(after, after + std::time::Duration::from_secs(1)).contains(&inside)
        );
        assert!(!IdRange::between(SystemTime::UNIX_EPOCH, before).contains(&inside));
    }

    #[test]
    fn the_report_serializes_with_its_field_names() {
        let report = compare(&[], &seen(&[1]), &IdRange::all());
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["phantoms"], 1);
        assert_eq!(json["phantom_ids"][0], id(1).to_string());
    }
}
