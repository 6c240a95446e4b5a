//! The signature of webhook requests (feature `signature`, also part of `webhook`): what the
//! [`WebhookSink`](super::webhook::WebhookSink) sends, and what a receiver checks.
//!
//! Every request carries two headers:
//!
//! * [`TIMESTAMP_HEADER`] — when the request was signed, in Unix seconds;
//! * [`SIGNATURE_HEADER`] — `v1=` and the hex HMAC-SHA256, under the shared secret, of the
//!   timestamp, a `.`, and the exact body bytes. Several signatures separated by spaces are
//!   accepted (one per secret, while a secret is being rotated).
//!
//! Signing the timestamp with the body lets a receiver refuse replays of old requests: [`verify`]
//! accepts a timestamp at most `tolerance` away from its own clock.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use outbox::sinks::signature::{sign, verify};
//!
//! let body = br#"[{"id":"0190f2c4-7d2a-7c1e-9b0a-3f1c2d4e5f60"}]"#;
//! let now = SystemTime::now();
//! let (timestamp, signature) = sign(b"s3cret", now, body);
//! // The receiver, with the header values and the raw body:
//! verify(b"s3cret", &timestamp, &signature, body, Duration::from_secs(300), now)?;
//! assert!(verify(b"s3cret", &timestamp, &signature, b"[]", Duration::from_secs(300), now).is_err());
//! # Ok::<(), outbox::sinks::signature::SignatureError>(())
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header with the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "outbox-webhook-timestamp";
/// The header with the signature(s): `v1=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub const SIGNATURE_HEADER: &str = "outbox-webhook-signature";

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The timestamp header is not a number of seconds.
    #[error("the timestamp {0:?} is not a number of Unix seconds")]
    BadTimestamp(String),
    /// The timestamp is further from the receiver's clock than the tolerance: an old request
    /// replayed, or clocks apart.
    #[error(
        "the request was signed {age_secs}s away from now, more than the {tolerance_secs}s tolerated"
    )]
    Expired {
        /// How far the timestamp is from now, in seconds.
        age_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// The signature header holds no `v1=` signature.
    #[error("the signature header holds no v1= signature")]
    NoSignature,
    /// No signature matches the body under this secret: the body was altered, or the secret
    /// differs.
    #[error("the signature does not match the body")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Signs `body` at time `at`: the values of [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`].
pub fn sign(secret: &[u8], at: SystemTime, body: &[u8]) -> (String, String) {
    let timestamp = unix_seconds(at).to_string();
    let tag = mac(secret, &timestamp, body).finalize().into_bytes();
    let signature = format!("v1={}", hex::encode(tag));
    (timestamp, signature)
}

/// Checks a request: `timestamp` and `signature` are its header values, `body` its raw bytes,
/// `now` the receiver's clock. Comparison is in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let signed_at: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp(timestamp.to_owned()))?;
    let age = unix_seconds(now).abs_diff(signed_at);
    if age > tolerance.as_secs() {
        return Err(SignatureError::Expired {
            age_secs: age,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let candidates: Vec<Vec<u8>> = signature
        .split([' ', ','])
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|hex_tag| hex::decode(hex_tag).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let expected = mac(secret, timestamp.trim(), body);
    if candidates
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    #[test]
    fn a_signed_body_verifies_and_any_change_is_refused() {
        let now = SystemTime::now();
        let (timestamp, signature) = sign(b"key", now, b"[1,2]");
        assert_eq!(
            verify(b"key", &timestamp, &signature, b"[1,2]", TOLERANCE, now),
            Ok(())
        );
        assert_eq!(
            verify(b"key", &timestamp, &signature, b"[1,3]", TOLERANCE, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &timestamp, &signature, b"[1,2]", TOLERANCE, now),
            Err(SignatureError::Mismatch)
        );
        let later: u64 = timestamp.parse::<u64>().unwrap_or(0) + 1;
        assert_eq!(
            verify(
                b"key",
                &later.to_string(),
                &signature,
                b"[1,2]",
                TOLERANCE,
                now
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn old_requests_and_malformed_headers_are_refused() {
        let then = SystemTime::now() - Duration::from_secs(3600);
        let (timestamp, signature) = sign(b"key", then, b"x");
        assert!(matches!(
            verify(
                b"key",
                &timestamp,
                &signature,
                b"x",
                TOLERANCE,
                SystemTime::now()
            ),
            Err(SignatureError::Expired { .. })
        ));
        let now = SystemTime::now();
        assert!(matches!(
            verify(b"key", "yesterday", &signature, b"x", TOLERANCE, now),
            Err(SignatureError::BadTimestamp(_))
        ));
        let (timestamp, _) = sign(b"key", now, b"x");
        assert_eq!(
            verify(b"key", &timestamp, "sha1=abc", b"x", TOLERANCE, now),
            Err(SignatureError::NoSignature)
        );
    }

    #[test]
    fn one_matching_signature_among_several_is_enough() {
        let now = SystemTime::now();
        let (timestamp, old) = sign(b"old", now, b"x");
        let (_, new) = sign(b"new", now, b"x");
        let both = format!("{old} {new}");
        assert_eq!(
            verify(b"new", &timestamp, &both, b"x", TOLERANCE, now),
            Ok(())
        );
        assert_eq!(
            verify(b"old", &timestamp, &both, b"x", TOLERANCE, now),
            Ok(())
        );
    }
}
