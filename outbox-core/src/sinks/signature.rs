//! The signature of webhook requests (feature `signature`, also part of `webhook`), as the
//! [Standard Webhooks](https://www.standardwebhooks.com) specification defines it, with its
//! official Rust library: what the [`WebhookSink`](super::webhook::WebhookSink) sends, and what
//! a receiver checks — with [`verify`] here, or with the official library of any language
//! (Python, JavaScript, Go, Java, Ruby, PHP, C#…).
//!
//! Every request carries three headers:
//!
//! * [`ID_HEADER`] (`webhook-id`) — the request's id, the same when the same batch is sent
//!   again;
//! * [`TIMESTAMP_HEADER`] (`webhook-timestamp`) — when it was signed, in Unix seconds;
//! * [`SIGNATURE_HEADER`] (`webhook-signature`) — `v1,` and the base64 HMAC-SHA256, under the
//!   secret, of `{id}.{timestamp}.{body}`; several, separated by spaces, while a secret is
//!   being rotated.
//!
//! Secrets are written `whsec_` followed by the key in base64, as every Standard Webhooks
//! library reads them.
//!
//! ```
//! use std::time::SystemTime;
//! use outbox::sinks::signature::{ID_HEADER, SIGNATURE_HEADER, Secret, TIMESTAMP_HEADER, verify};
//!
//! let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
//! let body = br#"[{"id":"0190f2c4-7d2a-7c1e-9b0a-3f1c2d4e5f60"}]"#;
//! let now = SystemTime::now();
//! let signature = Secret::new(secret)?.sign("msg_1", now, body);
//! let mut headers = outbox::sinks::signature::http::HeaderMap::new();
//! headers.insert(ID_HEADER, "msg_1".parse()?);
//! headers.insert(TIMESTAMP_HEADER, outbox::sinks::signature::unix_seconds(now).to_string().parse()?);
//! headers.insert(SIGNATURE_HEADER, signature.parse()?);
//! // The receiver, with the headers and the raw body:
//! verify(secret, &headers, body)?;
//! assert!(verify(secret, &headers, b"[]").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

pub use http;

pub use standardwebhooks::{
    HEADER_WEBHOOK_ID as ID_HEADER, HEADER_WEBHOOK_SIGNATURE as SIGNATURE_HEADER,
    HEADER_WEBHOOK_TIMESTAMP as TIMESTAMP_HEADER,
};

/// Why a secret or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The secret is not `whsec_` followed by base64.
    #[error(
        "the webhook secret is not `whsec_` followed by base64 (as Standard Webhooks write them)"
    )]
    InvalidSecret,
    /// The secret decodes to fewer bytes than the specification's minimum for signing.
    #[error(
        "the webhook secret is {bytes} bytes long once decoded; Standard Webhooks require at least {MIN_SECRET_BYTES} (and at most 64): generate one with `openssl rand -base64 32` and write it `whsec_<that>`"
    )]
    SecretTooShort {
        /// The decoded length of the secret given.
        bytes: usize,
    },
    /// The request's headers or signature do not check out (the official library's reason).
    #[error("the request's signature does not verify: {0}")]
    Refused(String),
}

/// The fewest bytes a signing secret may hold once decoded: the Standard Webhooks
/// specification asks for secrets of 24 to 64 random bytes, and a shorter one is easier to
/// guess than the signature is to forge.
pub const MIN_SECRET_BYTES: usize = 24;

/// A signing secret: `whsec_<base64>`.
#[derive(Clone)]
pub struct Secret(std::sync::Arc<standardwebhooks::Webhook>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Reads `whsec_<base64>` (the prefix may be left out).
    pub fn new(secret: &str) -> Result<Self, SignatureError> {
        if secret.trim_start_matches("whsec_").is_empty() {
            return Err(SignatureError::InvalidSecret);
        }
        standardwebhooks::Webhook::new(secret)
            .map(|webhook| Secret(std::sync::Arc::new(webhook)))
            .map_err(|_| SignatureError::InvalidSecret)
    }

    /// Like [`Secret::new`], for a secret that signs: also refuses one that decodes to fewer
    /// than [`MIN_SECRET_BYTES`] bytes. ([`Secret::new`] and [`verify`] accept a shorter one, so
    /// that a receiver can still check what an older sender signed.)
    pub fn for_signing(secret: &str) -> Result<Self, SignatureError> {
        use base64::Engine as _;
        let key = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| SignatureError::InvalidSecret)?
            .len();
        let checked = Secret::new(secret)?;
        if bytes < MIN_SECRET_BYTES {
            return Err(SignatureError::SecretTooShort { bytes });
        }
        Ok(checked)
    }

    /// The signature of `body` as the request `id` signed at `at`: `v1,<base64>`.
    pub fn sign(&self, id: &str, at: SystemTime, body: &[u8]) -> String {
        let timestamp = i64::try_from(unix_seconds(at)).unwrap_or(i64::MAX);
        // Bodies are JSON, always UTF-8: the library refuses nothing else.
        self.0
            .sign(id, timestamp, body)
            .unwrap_or_else(|_| String::from("v1,"))
    }
}

/// Seconds since the Unix epoch, as the timestamp header holds them.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Checks a request with the official library: its headers, its raw body, the receiver's
/// secret. Refuses a timestamp more than 5 minutes from the receiver's clock (replays).
pub fn verify(secret: &str, headers: &http::HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let secret = Secret::new(secret)?;
    secret
        .0
        .verify(body, headers)
        .map_err(|error| SignatureError::Refused(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(id: &str, at: SystemTime, signature: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let value = |text: &str| http::HeaderValue::from_str(text).expect("header value");
        headers.insert(ID_HEADER, value(id));
        headers.insert(TIMESTAMP_HEADER, value(&unix_seconds(at).to_string()));
        headers.insert(SIGNATURE_HEADER, value(signature));
        headers
    }

    #[test]
    fn a_signed_body_verifies_and_any_change_is_refused() {
        let now = SystemTime::now();
        let secret = Secret::new(SECRET).expect("valid");
        let signature = secret.sign("msg_1", now, b"[1,2]");
        assert!(signature.starts_with("v1,"));
        assert_eq!(
            verify(SECRET, &headers("msg_1", now, &signature), b"[1,2]"),
            Ok(())
        );
        assert!(verify(SECRET, &headers("msg_1", now, &signature), b"[1,3]").is_err());
        assert!(verify(SECRET, &headers("msg_2", now, &signature), b"[1,2]").is_err());
        let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(verify(other, &headers("msg_1", now, &signature), b"[1,2]").is_err());
        let old = now - std::time::Duration::from_secs(3600);
        let stale = secret.sign("msg_1", old, b"[1,2]");
        assert!(verify(SECRET, &headers("msg_1", old, &stale), b"[1,2]").is_err());
    }

    #[test]
    fn one_matching_signature_among_several_is_enough_and_bad_secrets_are_refused() {
        let now = SystemTime::now();
        let old = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let both = format!(
            "{} {}",
            Secret::new(old).expect("valid").sign("m", now, b"x"),
            Secret::new(SECRET).expect("valid").sign("m", now, b"x")
        );
        assert_eq!(verify(SECRET, &headers("m", now, &both), b"x"), Ok(()));
        assert_eq!(verify(old, &headers("m", now, &both), b"x"), Ok(()));
        for bad in ["", "whsec_", "whsec_not base64!"] {
            assert_eq!(
                Secret::new(bad).map(drop),
                Err(SignatureError::InvalidSecret),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_signing_secret_shorter_than_24_bytes_is_refused() {
        // 23 and 24 bytes of key.
        let short = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        assert_eq!(
            Secret::for_signing(short).map(drop),
            Err(SignatureError::SecretTooShort { bytes: 23 })
        );
        assert!(
            Secret::new(short).is_ok(),
            "a receiver may still verify with it"
        );
        assert!(Secret::for_signing(SECRET).is_ok());
        assert_eq!(
            Secret::for_signing("whsec_not base64!").map(drop),
            Err(SignatureError::InvalidSecret)
        );
    }
}
