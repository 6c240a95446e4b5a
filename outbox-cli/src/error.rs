//! The command's errors: one line each, and the exit status they call for.

/// What went wrong, said in one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The configuration must change.
    #[error("{0}")]
    Config(String),
    /// The database is unreachable or refused an operation.
    #[error("{0}")]
    Database(String),
    /// The sink could not be set up: refused credentials, a missing capability.
    #[error("{0}")]
    Sink(String),
    /// The sink's broker or receiver did not answer: `outbox relay` waits for it.
    #[error("{0}")]
    SinkUnreachable(String),
    /// `outbox audit` found events lost, phantoms or disorder.
    #[error("{0}")]
    AuditFailed(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The exit status: 2 when the configuration must change, 3 for a failed audit, 1
    /// otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            CliError::AuditFailed(_) => 3,
            _ => 1,
        }
    }
}
