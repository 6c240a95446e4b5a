//! The online bank shared by the examples: accounts, and the monetary transactions that change
//! them. Every change is an outbox event, recorded in the transaction that makes it.
#![deny(missing_docs)]

use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

/// A customer account. Opening one emits `AccountOpenedEvent`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    sqlx::FromRow,
    OutboxEvent,
    schemars::JsonSchema,
)]
#[outbox(aggregate_type = "account", event_type = "AccountOpenedEvent")]
pub struct Account {
    /// Assigned by the database.
    #[outbox(aggregate_id)]
    pub id: i64,
    /// Who owns it.
    pub owner: String,
    /// Current balance, in cents.
    pub balance_cents: i64,
    /// Largest single debit allowed, in cents.
    pub spending_limit_cents: i64,
}

/// A money movement on one account. Creating one emits `TransactionCreatedEvent`; its aggregate
/// is the transaction, and the payload carries the account it moved money on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent, schemars::JsonSchema)]
#[outbox(
    aggregate_type = "transaction",
    event_type = "TransactionCreatedEvent",
    version = 2
)]
pub struct TransactionEntity {
    /// Assigned by the database.
    #[outbox(aggregate_id)]
    pub id: i64,
    /// The account, as it is after the movement.
    pub account: Account,
    /// Amount in cents, positive.
    pub amount_cents: i64,
    /// `DEPOSIT`, `DEBIT` or `CREDIT`.
    pub transaction_type: String,
    /// Always `COMPLETED` here: refused movements are not recorded at all.
    pub transaction_status: String,
}

/// What the bank's services can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The database refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A consumed event's payload is not what its type says.
    #[error("malformed event payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// Recording the event failed; the caller's transaction must roll back.
    #[error(transparent)]
    Outbox(#[from] outbox::Error),
    /// Not enough money.
    #[error("account {account} has {balance_cents} cents, cannot debit {amount_cents}")]
    InsufficientFunds {
        /// The account.
        account: i64,
        /// Its balance.
        balance_cents: i64,
        /// The refused amount.
        amount_cents: i64,
    },
    /// Over the account's spending limit.
    #[error("debit of {amount_cents} cents is over account {account}'s limit of {limit_cents}")]
    OverLimit {
        /// The account.
        account: i64,
        /// Its limit.
        limit_cents: i64,
        /// The refused amount.
        amount_cents: i64,
    },
    /// No such account.
    #[error("no account {0}")]
    NoAccount(i64),
}

/// Checks a debit against the account's balance and limit.
pub fn check_debit(account: &Account, amount_cents: i64) -> Result<(), BankError> {
    if amount_cents > account.spending_limit_cents {
        return Err(BankError::OverLimit {
            account: account.id,
            limit_cents: account.spending_limit_cents,
            amount_cents,
        });
    }
    if amount_cents > account.balance_cents {
        return Err(BankError::InsufficientFunds {
            account: account.id,
            balance_cents: account.balance_cents,
            amount_cents,
        });
    }
    Ok(())
}

pub mod sink_demo;
