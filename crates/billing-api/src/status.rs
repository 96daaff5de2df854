//! The one place where rejections and store failures become gRPC statuses.

use std::collections::HashMap;

use billing_domain::Rejection;
use billing_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every status this service returns.
pub const ERROR_DOMAIN: &str = "billing.v1";

/// A refused command, with an ErrorInfo reason the caller can branch on.
pub fn rejected(rejection: &Rejection) -> Status {
    let code = match rejection {
        Rejection::InvalidArgument { .. }
        | Rejection::Overflow
        | Rejection::CurrencyMismatch { .. } => Code::InvalidArgument,
        Rejection::AccountNotFound | Rejection::ReservationNotFound => Code::NotFound,
        Rejection::InsufficientBalance { .. }
        | Rejection::InsufficientTokens { .. }
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
        Rejection::ReservationResolved { status } => {
            metadata.insert("status".to_owned(), status.to_string());
        }
        _ => {}
    }
    Status::with_error_details(
        code,
        rejection.to_string(),
        ErrorDetails::with_error_info(rejection.reason(), ERROR_DOMAIN, metadata),
    )
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
            Status::internal("internal error")
        }
    }
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
    Status::with_error_details(
        Code::Unavailable,
        format!("the ledger has reached version {projected}, not yet {wanted}; retry"),
        ErrorDetails::with_error_info("READ_MODEL_LAGGING", ERROR_DOMAIN, metadata),
    )
}

/// The caller's role may not call this RPC, or not on this account.
pub fn denied(what: &str, role: crate::auth::Role) -> Status {
    let metadata = HashMap::from([
        ("rpc_or_account".to_owned(), what.to_owned()),
        ("role".to_owned(), role.as_str().to_owned()),
    ]);
    Status::with_error_details(
        Code::PermissionDenied,
        format!("a {} may not do this", role.as_str()),
        ErrorDetails::with_error_info("PERMISSION_DENIED", ERROR_DOMAIN, metadata),
    )
}
