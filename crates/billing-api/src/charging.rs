//! Charging handlers: rating, holds (reserve, extend, commit, release) and
//! one-shot debits.
//!
//! Every one that changes state is safe to retry: `Reserve` is keyed by its
//! reservation id, `Commit` and `Release` resolve a reservation at most once
//! and answer a repeat as the first time, and `Extend` and `Debit` require
//! an idempotency key.

use billing_domain::{Command, Commit, Debit, Extend, Outcome, Reserve, ServiceType, Usage};
use billing_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::BillingApi;
use crate::convert::{self, or_default, required};
use crate::request::{
    meta, named_account, record_account, record_reservation, reservation_reply, settle, unexpected,
    unkeyed_meta,
};
use crate::status::{invalid, rejected};
use crate::validate::{self, Number, Text, number, required_key, text};

/// The usage a request measures, in the field its service is measured by.
fn usage(
    service: ServiceType,
    duration_ms: (&'static str, i64),
    quantity: (&'static str, i64),
) -> Result<Usage, Status> {
    let duration = number(duration_ms.0, Number::DurationMs, duration_ms.1)?;
    let quantity_value = number(quantity.0, Number::Count, quantity.1)?;
    Usage::for_service(service, duration, quantity_value, duration_ms.0, quantity.0)
        .map_err(|e| invalid("usage", e.to_string()))
}

/// A reservation id, checked before it is logged or looked up.
fn reservation_id(raw: &str) -> Result<String, Status> {
    let id = text("reservation_id", Text::CallId, raw)?;
    record_reservation(&id);
    Ok(id)
}

pub async fn rate(
    api: &BillingApi,
    request: Request<pb::RateRequest>,
) -> Result<Response<pb::RateResponse>, Status> {
    let r = request.get_ref();
    let service = required::<pb::ServiceType, _>(r.service_type)?;
    let usage = usage(
        service,
        ("duration_ms", r.duration_ms),
        ("quantity", r.quantity),
    )?;
    let account = named_account(api, &request, "Rate", &r.account_id).await?;
    let now = api.store.now();
    let now = account.as_ref().map_or(now, |a| now.max(a.tm_update));
    let quote = billing_domain::quote(api.store.rates(), service, usage, account.as_ref(), now)
        .map_err(|e| rejected(&e))?;
    Ok(Response::new(pb::RateResponse {
        billable_units: quote.price.units,
        token_amount: quote.price.tokens.get(),
        credit_amount: quote.price.credit.get(),
        affordable: quote.affordable,
        max_affordable_units: quote.max_affordable_units,
        rate_token_per_unit: quote.rate.tokens_per_unit.get(),
        rate_credit_per_unit: quote.rate.credit_per_unit.get(),
    }))
}

pub async fn reserve(
    api: &BillingApi,
    request: Request<pb::ReserveRequest>,
) -> Result<Response<pb::Reservation>, Status> {
    // The reservation id is the idempotency key of a reserve.
    let meta = unkeyed_meta(&request, "Reserve")?;
    let r = request.get_ref();
    let reservation_id = reservation_id(&r.reservation_id)?;
    let id = validate::uuid("account_id", &r.account_id)?;
    record_account(id);
    let cmd = Command::Reserve(Reserve {
        reservation_id,
        service_type: required::<pb::ServiceType, _>(r.service_type)?,
        requested_units: number("requested_units", Number::Count, r.requested_units)?,
        allow_partial: r.allow_partial,
        ttl_seconds: r.ttl_seconds,
    });
    reservation_reply(settle(api.store.commands().execute(id, &meta, &cmd).await)?)
}

pub async fn extend(
    api: &BillingApi,
    request: Request<pb::ExtendRequest>,
) -> Result<Response<pb::Reservation>, Status> {
    let r = request.get_ref();
    let key = required_key(&r.idempotency_key)?;
    let meta = meta(&request, "Extend", key, |r| r.idempotency_key.clear())?;
    let cmd = Command::Extend(Extend {
        reservation_id: reservation_id(&r.reservation_id)?,
        additional_units: number("additional_units", Number::Count, r.additional_units)?,
        allow_partial: r.allow_partial,
    });
    reservation_reply(settle(
        api.store
            .commands()
            .execute_on_reservation(&meta, &cmd)
            .await,
    )?)
}

pub async fn commit(
    api: &BillingApi,
    request: Request<pb::CommitRequest>,
) -> Result<Response<pb::CommitResponse>, Status> {
    let meta = unkeyed_meta(&request, "Commit")?;
    let r = request.get_ref();
    let reservation_id = reservation_id(&r.reservation_id)?;
    if r.used_duration_ms < 0 || r.used_quantity < 0 {
        return Err(invalid(
            "usage",
            "used_duration_ms and used_quantity must not be negative",
        ));
    }
    let cmd = Command::Commit(Commit {
        reservation_id,
        used_duration_ms: number("used_duration_ms", Number::DurationMs, r.used_duration_ms)?,
        used_quantity: number("used_quantity", Number::Count, r.used_quantity)?,
    });
    match settle(
        api.store
            .commands()
            .execute_on_reservation(&meta, &cmd)
            .await,
    )? {
        Outcome::Commit(c) => Ok(Response::new(convert::commit(&c))),
        other => Err(unexpected(&other)),
    }
}

pub async fn release(
    api: &BillingApi,
    request: Request<pb::ReleaseRequest>,
) -> Result<Response<pb::Reservation>, Status> {
    let meta = unkeyed_meta(&request, "Release")?;
    let cmd = Command::Release {
        reservation_id: reservation_id(&request.get_ref().reservation_id)?,
    };
    reservation_reply(settle(
        api.store
            .commands()
            .execute_on_reservation(&meta, &cmd)
            .await,
    )?)
}

pub async fn debit(
    api: &BillingApi,
    request: Request<pb::DebitRequest>,
) -> Result<Response<pb::DebitResponse>, Status> {
    let r = request.get_ref();
    let key = required_key(&r.idempotency_key)?;
    let meta = meta(&request, "Debit", key, |r| r.idempotency_key.clear())?;
    let id = validate::uuid("account_id", &r.account_id)?;
    record_account(id);
    let service = required::<pb::ServiceType, _>(r.service_type)?;
    let cmd = Command::Debit(Debit {
        service_type: service,
        usage: usage(
            service,
            ("duration_ms", r.duration_ms),
            ("quantity", r.quantity),
        )?,
        reference_type: or_default::<pb::ReferenceType, _>(
            r.reference_type,
            service.reference_type(),
        )?,
        reference_id: text("reference_id", Text::Key, &r.reference_id)?,
    });
    match settle(api.store.commands().execute(id, &meta, &cmd).await)? {
        Outcome::Charge(c) => Ok(Response::new(pb::DebitResponse {
            billable_units: c.billable_units,
            charged_token: c.charged_token.get(),
            charged_credit: c.charged_credit.get(),
            account: Some(convert::account(&c.account)),
        })),
        other => Err(unexpected(&other)),
    }
}
