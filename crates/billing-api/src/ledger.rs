//! Balance and history handlers: `GetBalance` (now or as of an instant) and
//! `ListTransactions` (the ledger read model, with `min_version`).

use billing_domain::Rejection;
use billing_proto::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::BillingApi;
use crate::auth::Role;
use crate::convert::{self, required};
use crate::request::{ensure_access, principal, record_account};
use crate::status::{self, invalid, rejected, store_failed};
use crate::validate;

/// How long `ListTransactions` waits for `min_version`.
const MIN_VERSION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn balance(
    api: &BillingApi,
    request: Request<pb::GetBalanceRequest>,
) -> Result<Response<pb::Balance>, Status> {
    let r = request.get_ref();
    let id = validate::uuid("account_id", &r.account_id)?;
    record_account(id);
    let currency = match r.currency.as_str() {
        "" => None,
        code => Some(validate::currency("currency", code)?),
    };
    let as_of = validate::time("as_of", r.as_of.as_ref())?;
    let account = api
        .store
        .accounts()
        .account(id)
        .await
        .map_err(|e| store_failed(&e))?;
    ensure_access(
        &principal(&request)?,
        "GetBalance",
        id,
        account.as_ref().map(|a| a.customer_id),
    )?;
    let account = account.ok_or_else(|| rejected(&Rejection::AccountNotFound))?;
    if let Some(currency) = currency
        && currency != account.currency
    {
        return Err(rejected(&Rejection::CurrencyMismatch {
            held: account.currency.clone(),
            requested: currency.to_string(),
        }));
    }
    // Every field from one view: the account now (strongly consistent), or
    // as it stood at `as_of` (its settings then, not today's).
    let now = api.store.now().max(account.tm_update);
    let (at, view) = match as_of {
        None => (
            now,
            account
                .view(now)
                .map_err(|_| rejected(&Rejection::Overflow))?,
        ),
        Some(at) => {
            let view = api
                .store
                .accounts()
                .account_as_of(&account, at)
                .await
                .map_err(|e| store_failed(&e))?
                .ok_or_else(|| invalid("as_of", "is before the account existed"))?;
            (at, view)
        }
    };
    Ok(Response::new(pb::Balance {
        account_id: id.to_string(),
        currency: view.currency.to_string(),
        balance: view.balance_credit.get(),
        reserved_funds: view.reserved_credit.get(),
        promotional_balance: view.balance_promotional.get(),
        available_balance: view.available_credit.get(),
        credit_limit: view.credit_limit.get(),
        is_postpaid: view.is_postpaid,
        credit_limit_type: convert::ToProto::to_proto(view.credit_limit_type).into(),
        low_balance_threshold: view.low_balance_threshold.get(),
        status: convert::ToProto::to_proto(view.status).into(),
        balance_token: view.balance_token.get(),
        reserved_token: view.reserved_token.get(),
        available_token: view.available_token.get(),
        as_of: Some(convert::timestamp(at)),
        version: view.version,
    }))
}

/// The most entries `ListTransactions` skips by offset. Skipping reads every
/// skipped entry, so an offset costs in proportion to its depth; a page
/// token costs the same at any depth. Bounded, an offset page costs at most
/// what reading 10,000 entries does.
pub const MAX_OFFSET: i32 = 10_000;

pub async fn transactions(
    api: &BillingApi,
    request: Request<pb::ListTransactionsRequest>,
) -> Result<Response<pb::ListTransactionsResponse>, Status> {
    const TOKEN: &str = "v1.";
    let r = request.get_ref();
    let id = validate::uuid("account_id", &r.account_id)?;
    record_account(id);
    let principal = principal(&request)?;
    let limit = validate::page_size("limit", r.limit)?;
    if r.offset < 0 {
        return Err(invalid("offset", "must not be negative"));
    }
    if r.offset > MAX_OFFSET {
        return Err(invalid(
            "offset",
            "must be at most 10000: page deeper with page_token (a keyset cursor, the same cost at any depth)",
        ));
    }
    if r.min_version < 0 {
        return Err(invalid("min_version", "must not be negative"));
    }
    let query = billing_store::LedgerQuery {
        account_id: id,
        limit: limit + 1,
        offset: i64::from(r.offset),
        before_version: validate::page_token::<i64>(&r.page_token, TOKEN)?,
        reference_type: match r.reference_type {
            0 => None,
            raw => Some(required::<pb::ReferenceType, _>(raw)?),
        },
        start_time: validate::time("start_time", r.start_time.as_ref())?,
        end_time: validate::time("end_time", r.end_time.as_ref())?,
    };
    let projected = api
        .store
        .read_models()
        .projected_version(id)
        .await
        .map_err(|e| store_failed(&e))?;
    // The command side decides whether the account exists, whether the
    // caller may read it, and whether `min_version` can ever be reached.
    if principal.role == Role::CustomerAdmin || projected == 0 || projected < r.min_version {
        let account = api
            .store
            .accounts()
            .account(id)
            .await
            .map_err(|e| store_failed(&e))?;
        ensure_access(
            &principal,
            "ListTransactions",
            id,
            account.as_ref().map(|a| a.customer_id),
        )?;
        let account = account.ok_or_else(|| rejected(&Rejection::AccountNotFound))?;
        if r.min_version > account.version {
            return Err(status::version_ahead(account.version, r.min_version));
        }
    }
    if projected < r.min_version {
        await_projection(api, id, r.min_version).await?;
    }
    let mut entries = api
        .store
        .read_models()
        .ledger(&query)
        .await
        .map_err(|e| store_failed(&e))?;
    let more = entries.len() as i64 > limit;
    entries.truncate(usize::try_from(limit).unwrap_or(0));
    let next_page_token = match entries.last() {
        Some(last) if more => format!("{TOKEN}{}", last.version),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListTransactionsResponse {
        transactions: entries.iter().map(convert::transaction).collect(),
        next_page_token,
    }))
}

/// Waits (bounded) until the read models have reached `min_version` of the
/// account, which the command side has already reached.
async fn await_projection(api: &BillingApi, id: Uuid, min_version: i64) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + MIN_VERSION_WAIT;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let projected = api
            .store
            .read_models()
            .projected_version(id)
            .await
            .map_err(|e| store_failed(&e))?;
        if projected >= min_version {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(status::lagging(projected, min_version));
        }
    }
}
