//! Account handlers: create, read, update, list, and balance adjustments.

use billing_domain::{
    AccountPatch, BalanceChange, Bucket, Command, CreateAccount, CreditLimitType, Currency, Micros,
    PlanType, ReferenceType, Rejection, Tokens,
};
use billing_proto::v1 as pb;
use billing_store::RequestMeta;
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::BillingApi;
use crate::convert::{self, or_default, required};
use crate::request::{account_reply, ensure_access, meta, principal, record_account, settle};
use crate::status::{rejected, store_failed};
use crate::validate::{self, Number, Text, number, optional_text, required_key, text};

pub async fn create(
    api: &BillingApi,
    request: Request<pb::CreateBillingAccountRequest>,
) -> Result<Response<pb::BillingAccount>, Status> {
    let r = request.get_ref();
    let meta = meta(&request, "CreateBillingAccount", &r.idempotency_key, |r| {
        r.idempotency_key.clear()
    })?;
    let currency = match r.currency.as_str() {
        "" => Currency::usd(),
        code => validate::currency("currency", code)?,
    };
    let cmd = CreateAccount {
        customer_id: validate::uuid("customer_id", &r.customer_id)?,
        name: text("name", Text::Line, &r.name)?,
        detail: text("detail", Text::Prose, &r.detail)?,
        plan_type: or_default::<pb::PlanType, _>(r.plan_type, PlanType::Free)?,
        currency,
        credit_limit: Micros(number("credit_limit", Number::Amount, r.credit_limit)?),
        credit_limit_type: or_default::<pb::CreditLimitType, _>(
            r.credit_limit_type,
            CreditLimitType::Hard,
        )?,
        is_postpaid: r.is_postpaid,
        low_balance_threshold: Micros(number(
            "low_balance_threshold",
            Number::Amount,
            r.low_balance_threshold,
        )?),
        payment_type: text("payment_type", Text::Line, &r.payment_type)?,
        payment_method: text("payment_method", Text::Line, &r.payment_method)?,
    };
    let id = Uuid::new_v4();
    let outcome = settle(api.store.commands().create_account(id, &meta, &cmd).await)?;
    let reply = account_reply(outcome)?;
    tracing::Span::current().record("account_id", reply.id.as_str());
    Ok(Response::new(reply))
}

pub async fn get(
    api: &BillingApi,
    request: Request<pb::GetBillingAccountRequest>,
) -> Result<Response<pb::BillingAccount>, Status> {
    let principal = principal(&request)?;
    let id = match (request.get_ref().id.as_str(), principal.customer_id) {
        // A customer admin's own account, resolved from the token.
        ("", Some(customer)) => *api
            .store
            .accounts()
            .accounts_of_customer(customer)
            .await
            .map_err(|e| store_failed(&e))?
            .first()
            .ok_or_else(|| rejected(&Rejection::AccountNotFound))?,
        (raw, _) => validate::uuid("id", raw)?,
    };
    record_account(id);
    let account = api
        .store
        .accounts()
        .account(id)
        .await
        .map_err(|e| store_failed(&e))?;
    ensure_access(
        &principal,
        "GetBillingAccount",
        id,
        account.as_ref().map(|a| a.customer_id),
    )?;
    let account = account.ok_or_else(|| rejected(&Rejection::AccountNotFound))?;
    let view = account
        .view(api.store.now().max(account.tm_update))
        .map_err(|_| rejected(&Rejection::Overflow))?;
    Ok(Response::new(convert::account(&view)))
}

pub async fn update(
    api: &BillingApi,
    request: Request<pb::UpdateBillingAccountRequest>,
) -> Result<Response<pb::BillingAccount>, Status> {
    let r = request.get_ref();
    let meta = meta(&request, "UpdateBillingAccount", &r.idempotency_key, |r| {
        r.idempotency_key.clear()
    })?;
    let id = validate::uuid("id", &r.id)?;
    record_account(id);
    let amount = |field, value: Option<i64>| {
        value
            .map(|v| number(field, Number::Amount, v).map(Micros))
            .transpose()
    };
    let patch = AccountPatch {
        name: optional_text("name", Text::Line, r.name.as_deref())?,
        detail: optional_text("detail", Text::Prose, r.detail.as_deref())?,
        plan_type: r.plan_type.map(required::<pb::PlanType, _>).transpose()?,
        plan_status: r
            .plan_status
            .map(required::<pb::PlanStatus, _>)
            .transpose()?,
        status: r.status.map(required::<pb::AccountStatus, _>).transpose()?,
        credit_limit: amount("credit_limit", r.credit_limit)?,
        credit_limit_type: r
            .credit_limit_type
            .map(required::<pb::CreditLimitType, _>)
            .transpose()?,
        is_postpaid: r.is_postpaid,
        low_balance_threshold: amount("low_balance_threshold", r.low_balance_threshold)?,
        payment_type: optional_text("payment_type", Text::Line, r.payment_type.as_deref())?,
        payment_method: optional_text("payment_method", Text::Line, r.payment_method.as_deref())?,
    };
    let outcome = settle(
        api.store
            .commands()
            .execute(id, &meta, &Command::Update(patch))
            .await,
    )?;
    Ok(Response::new(account_reply(outcome)?))
}

pub async fn add_balance(
    api: &BillingApi,
    request: Request<pb::AddBalanceRequest>,
) -> Result<Response<pb::AddBalanceResponse>, Status> {
    let r = request.get_ref();
    let key = required_key(&r.idempotency_key)?;
    let meta = meta(&request, "AddBalance", key, |r| r.idempotency_key.clear())?;
    let change = BalanceRequest {
        account_id: &r.account_id,
        amount_credit: r.amount_credit,
        amount_token: r.amount_token,
        reference_type: or_default::<pb::ReferenceType, _>(
            r.reference_type,
            ReferenceType::Payment,
        )?,
        reference_id: &r.reference_id,
        note: &r.note,
        bucket: convert::bucket(r.bucket)?,
        expires_at: validate::time("expires_at", r.expires_at.as_ref())?,
    };
    let account = move_balance(api, &meta, change, Command::AddBalance).await?;
    Ok(Response::new(pb::AddBalanceResponse {
        account: Some(account),
    }))
}

pub async fn subtract_balance(
    api: &BillingApi,
    request: Request<pb::SubtractBalanceRequest>,
) -> Result<Response<pb::SubtractBalanceResponse>, Status> {
    let r = request.get_ref();
    let key = required_key(&r.idempotency_key)?;
    let meta = meta(&request, "SubtractBalance", key, |r| {
        r.idempotency_key.clear()
    })?;
    let change = BalanceRequest {
        account_id: &r.account_id,
        amount_credit: r.amount_credit,
        amount_token: r.amount_token,
        reference_type: or_default::<pb::ReferenceType, _>(
            r.reference_type,
            ReferenceType::ManualAdjustment,
        )?,
        reference_id: &r.reference_id,
        note: &r.note,
        bucket: convert::bucket(r.bucket)?,
        expires_at: None,
    };
    let account = move_balance(api, &meta, change, Command::SubtractBalance).await?;
    Ok(Response::new(pb::SubtractBalanceResponse {
        account: Some(account),
    }))
}

/// The fields `AddBalance` and `SubtractBalance` share.
struct BalanceRequest<'a> {
    account_id: &'a str,
    amount_credit: i64,
    amount_token: i64,
    reference_type: ReferenceType,
    reference_id: &'a str,
    note: &'a str,
    bucket: Bucket,
    expires_at: Option<DateTime<Utc>>,
}

/// Adds or subtracts balance (`command` says which) and returns the account
/// after it.
async fn move_balance(
    api: &BillingApi,
    meta: &RequestMeta,
    r: BalanceRequest<'_>,
    command: fn(BalanceChange) -> Command,
) -> Result<pb::BillingAccount, Status> {
    let id = validate::uuid("account_id", r.account_id)?;
    record_account(id);
    let change = BalanceChange {
        amount_credit: Micros(number("amount_credit", Number::Amount, r.amount_credit)?),
        amount_token: Tokens(number("amount_token", Number::Amount, r.amount_token)?),
        reference_type: r.reference_type,
        reference_id: text("reference_id", Text::Key, r.reference_id)?,
        note: text("note", Text::Prose, r.note)?,
        bucket: r.bucket,
        // Kept to the microsecond, as PostgreSQL keeps the sweeper's due time.
        expires_at: r
            .expires_at
            .and_then(|t| DateTime::from_timestamp_micros(t.timestamp_micros())),
    };
    account_reply(settle(
        api.store
            .commands()
            .execute(id, meta, &command(change))
            .await,
    )?)
}

pub async fn list(
    api: &BillingApi,
    request: Request<pb::ListBillingAccountsRequest>,
) -> Result<Response<pb::ListBillingAccountsResponse>, Status> {
    const TOKEN: &str = "a1.";
    let r = request.get_ref();
    let size = validate::page_size("page_size", r.page_size)?;
    let after = validate::page_token::<Uuid>(&r.page_token, TOKEN)?;
    let customer = match r.customer_id.as_str() {
        "" => None,
        raw => Some(validate::uuid("customer_id", raw)?),
    };
    let mut accounts = api
        .store
        .read_models()
        .list_accounts(customer, after, size + 1)
        .await
        .map_err(|e| store_failed(&e))?;
    let more = accounts.len() as i64 > size;
    accounts.truncate(usize::try_from(size).unwrap_or(0));
    let next_page_token = match accounts.last() {
        Some(last) if more => format!("{TOKEN}{}", last.id),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListBillingAccountsResponse {
        billing_accounts: accounts.iter().map(convert::account).collect(),
        next_page_token,
    }))
}
