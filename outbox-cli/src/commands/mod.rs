//! One module per command.

pub(crate) mod audit;
pub(crate) mod cancel;
pub(crate) mod changefeed;
pub(crate) mod changefeed_sql;
pub(crate) mod dead_letters;
pub(crate) mod migrate;
pub(crate) mod relay;
pub(crate) mod status;
pub(crate) mod tail;
