use outbox::{Outbox, TableName};

const HOSTILE: Outbox = Outbox::for_table(TableName::from_static("outbox; DROP TABLE accounts"));

fn main() {
    let _ = HOSTILE;
}
