//! What every handler does with a request: who is calling, the metadata a
//! command carries (actor, idempotency key and request hash, trace id), and
//! turning the store's answer into a reply.

use billing_domain::{Outcome, Rejection};
use billing_proto::v1 as pb;
use billing_store::{Answer, Idempotency, RequestMeta, StoreError};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::convert;
use crate::status::{self, rejected, store_failed};
use crate::validate::{Text, text};

/// Who is calling: the principal the authentication layer verified. A call
/// that did not pass through it is refused (deny by default).
pub fn principal<M>(request: &Request<M>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

/// The account a read-only request names in `account_id`, if it names one:
/// validated, recorded on the call's span, and refused to a caller who may
/// not see it (`rpc` names the call in the refusal's log line).
pub async fn named_account<M>(
    api: &crate::BillingApi,
    request: &Request<M>,
    rpc: &str,
    account_id: &str,
) -> Result<Option<billing_domain::Account>, Status> {
    if account_id.is_empty() {
        return Ok(None);
    }
    let id = crate::validate::uuid("account_id", account_id)?;
    record_account(id);
    let account = api
        .store
        .accounts()
        .account(id)
        .await
        .map_err(|e| store_failed(&e))?;
    ensure_access(
        &principal(request)?,
        rpc,
        id,
        account.as_ref().map(|a| a.customer_id),
    )?;
    account
        .map(Some)
        .ok_or_else(|| rejected(&Rejection::AccountNotFound))
}

/// Refuses a caller that may not act on an account owned by `owner`
/// (`None`: no such account; a customer admin learns nothing from that).
pub fn ensure_access(
    principal: &Principal,
    rpc: &str,
    account_id: Uuid,
    owner: Option<Uuid>,
) -> Result<(), Status> {
    match owner {
        Some(owner) if principal.may_access(owner) => Ok(()),
        None if principal.role != Role::CustomerAdmin => Err(rejected(&Rejection::AccountNotFound)),
        _ => {
            tracing::warn!(rpc, principal = %principal.subject, role = principal.role.as_str(),
                target = %account_id, "call denied: not the caller's account");
            Err(status::denied(&account_id.to_string(), principal.role))
        }
    }
}

/// The W3C trace id of the caller's `traceparent`, or a new one.
fn trace_id<M>(request: &Request<M>) -> String {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string())
}

/// The request's metadata for the store. `key` is the request's idempotency
/// key (empty: none); `without_key` clears it, so the hash covers everything
/// else. A keyed retry gets the first answer; the same key with another
/// request is refused.
pub fn meta<M: Message + Clone>(
    request: &Request<M>,
    operation: &'static str,
    key: &str,
    without_key: fn(&mut M),
) -> Result<RequestMeta, Status> {
    let idempotency = match key {
        "" => None,
        key => {
            let key = text("idempotency_key", Text::Key, key)?;
            let mut unkeyed = request.get_ref().clone();
            without_key(&mut unkeyed);
            Some(Idempotency {
                key,
                operation,
                request_hash: Sha256::digest(unkeyed.encode_to_vec()).to_vec(),
            })
        }
    };
    // The call's own trace when it is traced; otherwise the caller's trace
    // id, or a new one.
    let (trace_id, span_id) =
        crate::telemetry::trace_ids().unwrap_or_else(|| (trace_id(request), None));
    Ok(RequestMeta {
        actor: principal(request)?.actor(),
        idempotency,
        trace_id: Some(trace_id),
        span_id,
    })
}

/// The metadata of a command without an idempotency key of its own.
pub fn unkeyed_meta<M: Message + Clone>(
    request: &Request<M>,
    operation: &'static str,
) -> Result<RequestMeta, Status> {
    meta(request, operation, "", |_| {})
}

/// A store result as a gRPC result.
pub fn settle(result: Result<Answer, StoreError>) -> Result<Outcome, Status> {
    match result {
        Ok(Ok(outcome)) => {
            tracing::debug!("applied");
            Ok(outcome)
        }
        Ok(Err(rejection)) => {
            tracing::info!(reason = rejection.reason(), %rejection, "rejected");
            Err(rejected(&rejection))
        }
        Err(error) => Err(store_failed(&error)),
    }
}

pub fn unexpected(outcome: &Outcome) -> Status {
    tracing::error!(?outcome, "the command produced an outcome of another kind");
    status::internal()
}

pub fn account_reply(outcome: Outcome) -> Result<pb::BillingAccount, Status> {
    match outcome {
        Outcome::Account(view) => Ok(convert::account(&view)),
        other => Err(unexpected(&other)),
    }
}

pub fn reservation_reply(outcome: Outcome) -> Result<Response<pb::Reservation>, Status> {
    match outcome {
        Outcome::Reservation(view) => Ok(Response::new(convert::reservation(&view))),
        other => Err(unexpected(&other)),
    }
}

/// Notes the account on the RPC's span (once its id has been validated).
pub fn record_account(account_id: Uuid) {
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
    crate::telemetry::record_account(account_id);
}

/// Notes the reservation on the RPC's span (once its id has been validated).
pub fn record_reservation(reservation_id: &str) {
    tracing::Span::current().record("reservation_id", reservation_id);
    crate::telemetry::record_reservation(reservation_id);
}
