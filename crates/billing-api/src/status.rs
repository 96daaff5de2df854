//! The one place where rejections and store failures become gRPC statuses.

use std::collections::HashMap;

use billing_domain::Rejection;
use billing_store::{StoreError, WebhookError, WebhookRefusal};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every status this service returns.
pub const ERROR_DOMAIN: &str = "billing.v1";

/// The longest status message sent, in bytes: a message may quote the
/// caller's input, and an unbounded one could fail the client on the size
/// of the error.
pub const MAX_MESSAGE_BYTES: usize = 256;
/// The longest ErrorInfo metadata value sent, in bytes.
pub const MAX_METADATA_BYTES: usize = 64;

/// `text`, cut to at most `max` bytes (on a character boundary) and marked
/// with an ellipsis when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A status with an ErrorInfo of this service; the message and metadata
/// values are clipped.
fn with_info(code: Code, message: &str, reason: &str, metadata: HashMap<String, String>) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k, clip(&v, MAX_METADATA_BYTES)))
        .collect();
    Status::with_error_details(
        code,
        clip(message, MAX_MESSAGE_BYTES),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// A refused command, with an ErrorInfo reason the caller can branch on.
pub fn rejected(rejection: &Rejection) -> Status {
    let code = match rejection {
        Rejection::InvalidArgument { .. }
        | Rejection::Overflow
        | Rejection::CurrencyMismatch { .. } => Code::InvalidArgument,
        Rejection::AccountNotFound | Rejection::ReservationNotFound => Code::NotFound,
        Rejection::InsufficientBalance { .. }
        | Rejection::InsufficientTokens { .. }
        | Rejection::InsufficientPromotional { .. }
        | Rejection::TooManyPromotions { .. }
        | Rejection::AccountFrozen
        | Rejection::ReservationResolved { .. } => Code::FailedPrecondition,
        Rejection::ReservationIdReused | Rejection::IdempotencyKeyReused => Code::AlreadyExists,
    };
    let mut metadata = HashMap::new();
    match rejection {
        Rejection::InvalidArgument { field, .. } => {
            metadata.insert("field".to_owned(), (*field).to_owned());
        }
        Rejection::InsufficientBalance {
            required,
            available,
        } => {
            metadata.insert("required_credit".to_owned(), required.to_string());
            metadata.insert("available_credit".to_owned(), available.to_string());
        }
        Rejection::InsufficientTokens {
            required,
            available,
        } => {
            metadata.insert("required_token".to_owned(), required.to_string());
            metadata.insert("available_token".to_owned(), available.to_string());
        }
        Rejection::InsufficientPromotional {
            required,
            available,
        } => {
            metadata.insert("required_promotional".to_owned(), required.to_string());
            metadata.insert("available_promotional".to_owned(), available.to_string());
        }
        Rejection::ReservationResolved { status } => {
            metadata.insert("status".to_owned(), status.to_string());
        }
        _ => {}
    }
    with_info(code, &rejection.to_string(), rejection.reason(), metadata)
}

/// A store failure: `UNAVAILABLE` when the database cannot be reached (safe
/// to retry with the same idempotency key), `ABORTED` under contention,
/// `INTERNAL` otherwise. The database's own message is logged, not returned.
pub fn store_failed(error: &StoreError) -> Status {
    match error {
        StoreError::Unavailable(_) => {
            tracing::warn!(%error, "database unavailable");
            Status::unavailable(
                "the billing database is unavailable; retry with the same idempotency key",
            )
        }
        StoreError::Contention(_) | StoreError::Conflict => {
            tracing::warn!(%error, "gave up under contention");
            Status::aborted("too much contention on the account; retry")
        }
        _ => {
            tracing::error!(%error, "store failure");
            internal()
        }
    }
}

/// A webhook request the store refused: FAILED_PRECONDITION
/// (`TOO_MANY_WEBHOOKS`, `WEBHOOK_DISABLED`, `DELIVERY_NOT_FAILED`),
/// ALREADY_EXISTS (`IDEMPOTENCY_KEY_REUSED`) or NOT_FOUND.
pub fn webhook_refused(refusal: &WebhookRefusal) -> Status {
    let code = match refusal {
        WebhookRefusal::TooManyWebhooks { .. }
        | WebhookRefusal::WebhookDisabled
        | WebhookRefusal::DeliveryNotFailed { .. } => Code::FailedPrecondition,
        WebhookRefusal::IdempotencyKeyReused => Code::AlreadyExists,
        WebhookRefusal::WebhookNotFound | WebhookRefusal::DeliveryNotFound => Code::NotFound,
    };
    let mut metadata = HashMap::new();
    match refusal {
        WebhookRefusal::TooManyWebhooks { limit } => {
            metadata.insert("max".to_owned(), limit.to_string());
        }
        WebhookRefusal::DeliveryNotFailed { status } => {
            metadata.insert("status".to_owned(), status.to_string());
        }
        _ => {}
    }
    with_info(code, &refusal.to_string(), refusal.reason(), metadata)
}

/// A webhook request that failed: refused, or the store failed.
pub fn webhook_failed(error: &WebhookError) -> Status {
    match error {
        WebhookError::Refused(refusal) => {
            tracing::info!(reason = refusal.reason(), %refusal, "refused");
            webhook_refused(refusal)
        }
        WebhookError::Store(error) => store_failed(error),
    }
}

/// A failure of this service, not of the request. It carries an ErrorInfo
/// like every status the service raises; an INTERNAL without one can only
/// come from the framework reading the request (see `edge`).
pub fn internal() -> Status {
    with_info(Code::Internal, "internal error", "INTERNAL", HashMap::new())
}

/// A number past its kind's bound.
pub fn too_large(field: &'static str, max: i64) -> Status {
    let metadata = HashMap::from([
        ("field".to_owned(), field.to_owned()),
        ("max".to_owned(), max.to_string()),
    ]);
    with_info(
        Code::InvalidArgument,
        &format!("invalid {field}: must be at most {max}"),
        Rejection::Overflow.reason(),
        metadata,
    )
}

/// `ListTransactions` asked for a version the account has not reached: no
/// wait would bring it.
pub fn version_ahead(account_version: i64, wanted: i64) -> Status {
    let metadata = HashMap::from([
        ("account_version".to_owned(), account_version.to_string()),
        ("min_version".to_owned(), wanted.to_string()),
    ]);
    with_info(
        Code::OutOfRange,
        &format!("the account is at version {account_version}; min_version {wanted} is beyond it"),
        "VERSION_AHEAD_OF_ACCOUNT",
        metadata,
    )
}

/// `WatchAccount` asked to start after a version the account has not
/// reached.
pub fn version_ahead_of_watch(account_version: i64, after: i64) -> Status {
    let metadata = HashMap::from([
        ("account_version".to_owned(), account_version.to_string()),
        ("after_version".to_owned(), after.to_string()),
    ]);
    with_info(
        Code::OutOfRange,
        &format!("the account is at version {account_version}; after_version {after} is beyond it"),
        "VERSION_AHEAD_OF_ACCOUNT",
        metadata,
    )
}

/// A `WatchAccount` stream ends early (the server stops, the database is
/// gone): reconnect with `after_version` set to the last version received,
/// which the metadata repeats, and nothing is lost.
pub fn watch_interrupted(why: &str, last_version: i64) -> Status {
    let metadata = HashMap::from([("last_version".to_owned(), last_version.to_string())]);
    with_info(
        Code::Unavailable,
        &format!("{why}; watch again with after_version {last_version}"),
        "WATCH_INTERRUPTED",
        metadata,
    )
}

/// A `WatchAccount` stream outlived its bearer token: watch again with a
/// fresh token and `after_version` set to the last version received.
pub fn watch_token_expired(last_version: i64) -> Status {
    let metadata = HashMap::from([("last_version".to_owned(), last_version.to_string())]);
    with_info(
        Code::Unauthenticated,
        &format!(
            "the token has expired; watch again with a fresh token and after_version {last_version}"
        ),
        "TOKEN_EXPIRED",
        metadata,
    )
}

/// A request body that does not decode as the RPC's message; `detail` is
/// the decoder's description (it names the field, never quotes the input).
pub fn malformed(detail: &str, field: Option<&str>) -> Status {
    let mut metadata = HashMap::new();
    if let Some(field) = field {
        metadata.insert("field".to_owned(), field.to_owned());
    }
    with_info(
        Code::InvalidArgument,
        &format!("the request message is malformed: {detail}"),
        "MALFORMED_REQUEST",
        metadata,
    )
}

/// Request metadata (headers) larger than the service accepts.
pub fn metadata_too_large(limit: usize) -> Status {
    let metadata = HashMap::from([("max_bytes".to_owned(), limit.to_string())]);
    with_info(
        Code::ResourceExhausted,
        &format!("the request metadata is larger than {limit} bytes"),
        "METADATA_TOO_LARGE",
        metadata,
    )
}

/// A request message larger than the service accepts.
pub fn request_too_large(limit: usize) -> Status {
    let metadata = HashMap::from([("max_bytes".to_owned(), limit.to_string())]);
    with_info(
        Code::ResourceExhausted,
        &format!("the request message is larger than {limit} bytes"),
        "REQUEST_TOO_LARGE",
        metadata,
    )
}

/// A malformed field.
pub fn invalid(field: &'static str, reason: impl Into<String>) -> Status {
    rejected(&Rejection::invalid(field, reason))
}

/// The read models have not reached the version the caller asked to see.
pub fn lagging(projected: i64, wanted: i64) -> Status {
    let metadata = HashMap::from([
        ("projected_version".to_owned(), projected.to_string()),
        ("min_version".to_owned(), wanted.to_string()),
    ]);
    with_info(
        Code::Unavailable,
        &format!("the ledger has reached version {projected}, not yet {wanted}; retry"),
        "READ_MODEL_LAGGING",
        metadata,
    )
}

/// The caller's role may not call this RPC, or not on this account.
pub fn denied(what: &str, role: crate::auth::Role) -> Status {
    let metadata = HashMap::from([
        ("rpc_or_account".to_owned(), what.to_owned()),
        ("role".to_owned(), role.as_str().to_owned()),
    ]);
    with_info(
        Code::PermissionDenied,
        &format!("a {} may not do this", role.as_str()),
        "PERMISSION_DENIED",
        metadata,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_status_echoes_more_than_a_short_prefix() {
        let long = "Ü".repeat(10_000);
        let status = rejected(&Rejection::CurrencyMismatch {
            held: billing_domain::Currency::usd(),
            requested: long.clone(),
        });
        assert!(
            status.message().len() <= MAX_MESSAGE_BYTES,
            "{}",
            status.message()
        );
        assert!(status.message().ends_with('…'));
        let denied = denied(&long, crate::auth::Role::Service);
        let details = denied.get_error_details();
        let info = details.error_info().unwrap();
        assert!(
            info.metadata
                .values()
                .all(|v| v.len() <= MAX_METADATA_BYTES)
        );
        assert!(
            denied.details().len() < 512,
            "{} bytes",
            denied.details().len()
        );
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdefghij", 6), "abc…");
    }
}
