//! The gRPC `billing.v1.BillingService`: validates requests, turns them into
//! domain commands, runs them through the store, and maps outcomes and
//! rejections back to protobuf. It is the only crate that knows both
//! protobuf and domain types.
//!
//! - [`BillingApi`]: the service.
//! - [`auth`]: bearer JWTs, roles and the per-RPC policy (a tower layer).
//! - `convert`: protobuf <-> domain.
//! - [`status`]: rejections and store failures -> gRPC statuses, in one place.

#![forbid(unsafe_code)]

pub mod auth;
mod convert;
pub mod status;

use auth::{Principal, Role};
use billing_domain::{
    AccountPatch, BalanceChange, Command, Commit, CreateAccount, Currency, Debit, Extend, Micros,
    Outcome, PlanType, ReferenceType, Reserve, Tokens, Usage,
};
use billing_proto::v1 as pb;
use billing_proto::v1::billing_service_server::BillingService;
use billing_store::{Answer, Idempotency, RequestMeta, Store, StoreError};
use convert::{or_default, required};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use billing_proto::v1::billing_service_server::BillingServiceServer;
use status::{invalid, rejected, store_failed};

/// Page size when none is asked for, and the most a page holds.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 100;
/// How long `ListTransactions` waits for `min_version`.
const MIN_VERSION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest idempotency key, reference id and name accepted.
const MAX_KEY_LEN: usize = 255;
/// The longest free-text field (detail, note) accepted.
const MAX_TEXT_LEN: usize = 2_048;

/// The billing service over a store.
#[derive(Clone, Debug)]
pub struct BillingApi {
    /// Where commands run and state is read.
    store: Store,
}

impl BillingApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The gRPC server for this service.
    pub fn into_server(self) -> BillingServiceServer<Self> {
        BillingServiceServer::new(self)
    }
}

/// Who is calling: the principal the authentication layer verified. A call
/// that did not pass through it is refused (deny by default).
fn principal<M>(request: &Request<M>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

/// Refuses a caller that may not act on an account owned by `owner`
/// (`None`: no such account; a customer admin learns nothing from that).
fn ensure_access(
    principal: &Principal,
    rpc: &str,
    account_id: Uuid,
    owner: Option<Uuid>,
) -> Result<(), Status> {
    match owner {
        Some(owner) if principal.may_access(owner) => Ok(()),
        None if principal.role != Role::CustomerAdmin => {
            Err(rejected(&billing_domain::Rejection::AccountNotFound))
        }
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
/// key; `without_key` clears it, so the hash covers everything else.
fn meta<M: Message + Clone>(
    request: &Request<M>,
    operation: &'static str,
    key: Option<&str>,
    without_key: fn(&mut M),
) -> Result<RequestMeta, Status> {
    let idempotency = match key {
        None | Some("") => None,
        Some(key) if key.len() > MAX_KEY_LEN => {
            return Err(invalid(
                "idempotency_key",
                format!("must be at most {MAX_KEY_LEN} bytes"),
            ));
        }
        Some(key) => {
            let mut unkeyed = request.get_ref().clone();
            without_key(&mut unkeyed);
            Some(Idempotency {
                key: key.to_owned(),
                operation,
                request_hash: Sha256::digest(unkeyed.encode_to_vec()).to_vec(),
            })
        }
    };
    Ok(RequestMeta {
        actor: principal(request)?.actor(),
        idempotency,
        trace_id: Some(trace_id(request)),
    })
}

fn required_key(key: &str) -> Result<&str, Status> {
    if key.is_empty() {
        return Err(invalid(
            "idempotency_key",
            "is required: a retry with the same key is applied once",
        ));
    }
    Ok(key)
}

fn bounded(field: &'static str, value: &str, max: usize) -> Result<String, Status> {
    if value.len() > max {
        return Err(invalid(field, format!("must be at most {max} bytes")));
    }
    Ok(value.to_owned())
}

fn usage(
    service: billing_domain::ServiceType,
    duration_ms: i64,
    quantity: i64,
) -> Result<Usage, Status> {
    Usage::for_service(service, duration_ms, quantity, "duration_ms", "quantity")
        .map_err(|e| invalid("usage", e.to_string()))
}

/// A store result as a gRPC result.
fn settle(result: Result<Answer, StoreError>) -> Result<Outcome, Status> {
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

fn unexpected(outcome: &Outcome) -> Status {
    tracing::error!(?outcome, "the command produced an outcome of another kind");
    Status::internal("internal error")
}

fn account_reply(outcome: Outcome) -> Result<pb::BillingAccount, Status> {
    match outcome {
        Outcome::Account(view) => Ok(convert::account(&view)),
        other => Err(unexpected(&other)),
    }
}

fn reservation_reply(outcome: Outcome) -> Result<Response<pb::Reservation>, Status> {
    match outcome {
        Outcome::Reservation(view) => Ok(Response::new(convert::reservation(&view))),
        other => Err(unexpected(&other)),
    }
}

/// The fields `AddBalance` and `SubtractBalance` share.
struct BalanceRequest<'a> {
    account_id: &'a str,
    amount_credit: i64,
    amount_token: i64,
    reference_type: ReferenceType,
    reference_id: &'a str,
    note: &'a str,
}

impl BillingApi {
    /// Waits until the read models have reached `min_version` of the
    /// account (bounded), and checks that the account exists.
    async fn await_projection(&self, id: Uuid, min_version: i64) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + MIN_VERSION_WAIT;
        loop {
            let projected = self
                .store
                .projected_version(id)
                .await
                .map_err(|e| store_failed(&e))?;
            if projected == 0 {
                let exists = self
                    .store
                    .account(id)
                    .await
                    .map_err(|e| store_failed(&e))?
                    .is_some();
                if !exists {
                    return Err(rejected(&billing_domain::Rejection::AccountNotFound));
                }
            }
            if projected >= min_version {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(status::lagging(projected, min_version));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Adds or subtracts balance (`command` says which) and returns the
    /// account after it.
    async fn move_balance(
        &self,
        meta: &RequestMeta,
        r: BalanceRequest<'_>,
        command: fn(BalanceChange) -> Command,
    ) -> Result<pb::BillingAccount, Status> {
        let id = convert::uuid("account_id", r.account_id)?;
        record_account(id);
        let change = BalanceChange {
            amount_credit: Micros(r.amount_credit),
            amount_token: Tokens(r.amount_token),
            reference_type: r.reference_type,
            reference_id: bounded("reference_id", r.reference_id, MAX_KEY_LEN)?,
            note: bounded("note", r.note, MAX_TEXT_LEN)?,
        };
        account_reply(settle(
            self.store.execute(id, meta, &command(change)).await,
        )?)
    }
}

/// A page size: 0 means the default; larger than the maximum is coerced.
fn page_size(field: &'static str, requested: i32) -> Result<i64, Status> {
    match i64::from(requested) {
        n if n < 0 => Err(invalid(field, "must not be negative")),
        0 => Ok(DEFAULT_PAGE),
        n => Ok(n.min(MAX_PAGE)),
    }
}

/// Page tokens are opaque to callers: a prefix naming the list, then the
/// keyset position.
fn parse_token<T: std::str::FromStr>(token: &str, prefix: &str) -> Result<Option<T>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix(prefix)
        .and_then(|rest| rest.parse().ok())
        .map(Some)
        .ok_or_else(|| invalid("page_token", "is not a token this list issued"))
}

fn record_account(account_id: Uuid) {
    tracing::Span::current().record("account_id", tracing::field::display(account_id));
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    #[tracing::instrument(skip_all, fields(rpc = "CreateBillingAccount", account_id))]
    async fn create_billing_account(
        &self,
        request: Request<pb::CreateBillingAccountRequest>,
    ) -> Result<Response<pb::BillingAccount>, Status> {
        let meta = meta(
            &request,
            "CreateBillingAccount",
            Some(&request.get_ref().idempotency_key),
            |r| r.idempotency_key.clear(),
        )?;
        let r = request.get_ref();
        let currency = match r.currency.as_str() {
            "" => Currency::usd(),
            code => code
                .parse()
                .map_err(|_| invalid("currency", "must be an ISO 4217 code such as USD"))?,
        };
        let cmd = CreateAccount {
            customer_id: convert::uuid("customer_id", &r.customer_id)?,
            name: bounded("name", &r.name, MAX_KEY_LEN)?,
            detail: bounded("detail", &r.detail, MAX_TEXT_LEN)?,
            plan_type: or_default::<pb::PlanType, _>(r.plan_type, PlanType::Free)?,
            currency,
            credit_limit: Micros(r.credit_limit),
            credit_limit_type: or_default::<pb::CreditLimitType, _>(
                r.credit_limit_type,
                billing_domain::CreditLimitType::Hard,
            )?,
            is_postpaid: r.is_postpaid,
            low_balance_threshold: Micros(r.low_balance_threshold),
            payment_type: bounded("payment_type", &r.payment_type, MAX_KEY_LEN)?,
            payment_method: bounded("payment_method", &r.payment_method, MAX_KEY_LEN)?,
        };
        let id = Uuid::new_v4();
        let outcome = settle(self.store.create_account(id, &meta, &cmd).await)?;
        let reply = account_reply(outcome)?;
        tracing::Span::current().record("account_id", reply.id.as_str());
        Ok(Response::new(reply))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetBillingAccount", account_id))]
    async fn get_billing_account(
        &self,
        request: Request<pb::GetBillingAccountRequest>,
    ) -> Result<Response<pb::BillingAccount>, Status> {
        let principal = principal(&request)?;
        let id = match (request.get_ref().id.as_str(), principal.customer_id) {
            // A customer admin's own account, resolved from the token.
            ("", Some(customer)) => *self
                .store
                .accounts_of_customer(customer)
                .await
                .map_err(|e| store_failed(&e))?
                .first()
                .ok_or_else(|| rejected(&billing_domain::Rejection::AccountNotFound))?,
            (raw, _) => convert::uuid("id", raw)?,
        };
        record_account(id);
        let account = self.store.account(id).await.map_err(|e| store_failed(&e))?;
        ensure_access(
            &principal,
            "GetBillingAccount",
            id,
            account.as_ref().map(|a| a.customer_id),
        )?;
        let account =
            account.ok_or_else(|| rejected(&billing_domain::Rejection::AccountNotFound))?;
        let view = account
            .view(self.store.now().max(account.tm_update))
            .map_err(|_| rejected(&billing_domain::Rejection::Overflow))?;
        Ok(Response::new(convert::account(&view)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "UpdateBillingAccount", account_id))]
    async fn update_billing_account(
        &self,
        request: Request<pb::UpdateBillingAccountRequest>,
    ) -> Result<Response<pb::BillingAccount>, Status> {
        let meta = meta(
            &request,
            "UpdateBillingAccount",
            Some(&request.get_ref().idempotency_key),
            |r| r.idempotency_key.clear(),
        )?;
        let r = request.get_ref();
        let id = convert::uuid("id", &r.id)?;
        record_account(id);
        let text = |field, value: &Option<String>, max| {
            value.as_deref().map(|v| bounded(field, v, max)).transpose()
        };
        let patch = AccountPatch {
            name: text("name", &r.name, MAX_KEY_LEN)?,
            detail: text("detail", &r.detail, MAX_TEXT_LEN)?,
            plan_type: r.plan_type.map(required::<pb::PlanType, _>).transpose()?,
            plan_status: r
                .plan_status
                .map(required::<pb::PlanStatus, _>)
                .transpose()?,
            status: r.status.map(required::<pb::AccountStatus, _>).transpose()?,
            credit_limit: r.credit_limit.map(Micros),
            credit_limit_type: r
                .credit_limit_type
                .map(required::<pb::CreditLimitType, _>)
                .transpose()?,
            is_postpaid: r.is_postpaid,
            low_balance_threshold: r.low_balance_threshold.map(Micros),
            payment_type: text("payment_type", &r.payment_type, MAX_KEY_LEN)?,
            payment_method: text("payment_method", &r.payment_method, MAX_KEY_LEN)?,
        };
        let outcome = settle(self.store.execute(id, &meta, &Command::Update(patch)).await)?;
        Ok(Response::new(account_reply(outcome)?))
    }

    #[tracing::instrument(skip_all, fields(rpc = "AddBalance", account_id))]
    async fn add_balance(
        &self,
        request: Request<pb::AddBalanceRequest>,
    ) -> Result<Response<pb::AddBalanceResponse>, Status> {
        let key = required_key(&request.get_ref().idempotency_key)?.to_owned();
        let meta = meta(&request, "AddBalance", Some(&key), |r| {
            r.idempotency_key.clear()
        })?;
        let r = request.get_ref();
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
        };
        let account = self
            .move_balance(&meta, change, Command::AddBalance)
            .await?;
        Ok(Response::new(pb::AddBalanceResponse {
            account: Some(account),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "SubtractBalance", account_id))]
    async fn subtract_balance(
        &self,
        request: Request<pb::SubtractBalanceRequest>,
    ) -> Result<Response<pb::SubtractBalanceResponse>, Status> {
        let key = required_key(&request.get_ref().idempotency_key)?.to_owned();
        let meta = meta(&request, "SubtractBalance", Some(&key), |r| {
            r.idempotency_key.clear()
        })?;
        let r = request.get_ref();
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
        };
        let account = self
            .move_balance(&meta, change, Command::SubtractBalance)
            .await?;
        Ok(Response::new(pb::SubtractBalanceResponse {
            account: Some(account),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "Rate", account_id))]
    async fn rate(
        &self,
        request: Request<pb::RateRequest>,
    ) -> Result<Response<pb::RateResponse>, Status> {
        let r = request.get_ref();
        let service = required::<pb::ServiceType, _>(r.service_type)?;
        let usage = usage(service, r.duration_ms, r.quantity)?;
        let account = match r.account_id.as_str() {
            "" => None,
            raw => {
                let id = convert::uuid("account_id", raw)?;
                record_account(id);
                let account = self.store.account(id).await.map_err(|e| store_failed(&e))?;
                ensure_access(
                    &principal(&request)?,
                    "Rate",
                    id,
                    account.as_ref().map(|a| a.customer_id),
                )?;
                Some(account.ok_or_else(|| rejected(&billing_domain::Rejection::AccountNotFound))?)
            }
        };
        let now = self.store.now();
        let now = account.as_ref().map_or(now, |a| now.max(a.tm_update));
        let quote =
            billing_domain::quote(self.store.rates(), service, usage, account.as_ref(), now)
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

    #[tracing::instrument(skip_all, fields(rpc = "Reserve", account_id, reservation_id))]
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        // The reservation id is the idempotency key of a reserve.
        let meta = meta(&request, "Reserve", None, |_| {})?;
        let r = request.get_ref();
        tracing::Span::current().record("reservation_id", r.reservation_id.as_str());
        let id = convert::uuid("account_id", &r.account_id)?;
        record_account(id);
        let cmd = Command::Reserve(Reserve {
            reservation_id: r.reservation_id.clone(),
            service_type: required::<pb::ServiceType, _>(r.service_type)?,
            requested_units: r.requested_units,
            allow_partial: r.allow_partial,
            ttl_seconds: r.ttl_seconds,
        });
        reservation_reply(settle(self.store.execute(id, &meta, &cmd).await)?)
    }

    #[tracing::instrument(skip_all, fields(rpc = "Extend", reservation_id))]
    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let meta = meta(&request, "Extend", None, |_| {})?;
        let r = request.get_ref();
        tracing::Span::current().record("reservation_id", r.reservation_id.as_str());
        billing_domain::decide::validate_reservation_id(&r.reservation_id)
            .map_err(|e| rejected(&e))?;
        let cmd = Command::Extend(Extend {
            reservation_id: r.reservation_id.clone(),
            additional_units: r.additional_units,
            allow_partial: r.allow_partial,
        });
        reservation_reply(settle(
            self.store.execute_on_reservation(&meta, &cmd).await,
        )?)
    }

    #[tracing::instrument(skip_all, fields(rpc = "Commit", reservation_id))]
    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let meta = meta(&request, "Commit", None, |_| {})?;
        let r = request.get_ref();
        tracing::Span::current().record("reservation_id", r.reservation_id.as_str());
        billing_domain::decide::validate_reservation_id(&r.reservation_id)
            .map_err(|e| rejected(&e))?;
        if r.used_duration_ms < 0 || r.used_quantity < 0 {
            return Err(invalid(
                "usage",
                "used_duration_ms and used_quantity must not be negative",
            ));
        }
        let cmd = Command::Commit(Commit {
            reservation_id: r.reservation_id.clone(),
            used_duration_ms: r.used_duration_ms,
            used_quantity: r.used_quantity,
        });
        match settle(self.store.execute_on_reservation(&meta, &cmd).await)? {
            Outcome::Commit(c) => Ok(Response::new(convert::commit(&c))),
            other => Err(unexpected(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(rpc = "Release", reservation_id))]
    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let meta = meta(&request, "Release", None, |_| {})?;
        let r = request.get_ref();
        tracing::Span::current().record("reservation_id", r.reservation_id.as_str());
        billing_domain::decide::validate_reservation_id(&r.reservation_id)
            .map_err(|e| rejected(&e))?;
        let cmd = Command::Release {
            reservation_id: r.reservation_id.clone(),
        };
        reservation_reply(settle(
            self.store.execute_on_reservation(&meta, &cmd).await,
        )?)
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetBalance", account_id))]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let r = request.get_ref();
        let id = convert::uuid("account_id", &r.account_id)?;
        record_account(id);
        let as_of = convert::time("as_of", r.as_of.as_ref())?;
        let account = self.store.account(id).await.map_err(|e| store_failed(&e))?;
        ensure_access(
            &principal(&request)?,
            "GetBalance",
            id,
            account.as_ref().map(|a| a.customer_id),
        )?;
        let account =
            account.ok_or_else(|| rejected(&billing_domain::Rejection::AccountNotFound))?;
        if !r.currency.is_empty() && r.currency != account.currency.as_str() {
            return Err(rejected(&billing_domain::Rejection::CurrencyMismatch {
                held: account.currency.clone(),
                requested: r.currency.clone(),
            }));
        }
        let now = self.store.now().max(account.tm_update);
        let (at, version, b) = match as_of {
            None => (
                now,
                account.version,
                account
                    .balances(now)
                    .map_err(|_| rejected(&billing_domain::Rejection::Overflow))?,
            ),
            Some(at) => {
                let (version, balances) = self
                    .store
                    .balances_as_of(id, at)
                    .await
                    .map_err(|e| store_failed(&e))?
                    .ok_or_else(|| invalid("as_of", "is before the account existed"))?;
                (at, version, balances)
            }
        };
        Ok(Response::new(pb::Balance {
            account_id: id.to_string(),
            currency: account.currency.to_string(),
            balance: b.balance_credit.get(),
            reserved_funds: b.reserved_credit.get(),
            promotional_balance: 0,
            available_balance: b.available_credit.get(),
            credit_limit: account.credit_limit.get(),
            is_postpaid: account.is_postpaid,
            credit_limit_type: convert::ToProto::to_proto(account.credit_limit_type).into(),
            low_balance_threshold: account.low_balance_threshold.get(),
            status: convert::ToProto::to_proto(account.status).into(),
            balance_token: b.balance_token.get(),
            reserved_token: b.reserved_token.get(),
            available_token: b.available_token.get(),
            as_of: Some(convert::timestamp(at)),
            version,
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListBillingAccounts"))]
    async fn list_billing_accounts(
        &self,
        request: Request<pb::ListBillingAccountsRequest>,
    ) -> Result<Response<pb::ListBillingAccountsResponse>, Status> {
        const TOKEN: &str = "a1.";
        let r = request.get_ref();
        let size = page_size("page_size", r.page_size)?;
        let after = parse_token::<Uuid>(&r.page_token, TOKEN)?;
        let customer = match r.customer_id.as_str() {
            "" => None,
            raw => Some(convert::uuid("customer_id", raw)?),
        };
        let mut accounts = self
            .store
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

    #[tracing::instrument(skip_all, fields(rpc = "ListTransactions", account_id))]
    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        const TOKEN: &str = "v1.";
        let r = request.get_ref();
        let id = convert::uuid("account_id", &r.account_id)?;
        record_account(id);
        let principal = principal(&request)?;
        if principal.role == Role::CustomerAdmin {
            let account = self.store.account(id).await.map_err(|e| store_failed(&e))?;
            ensure_access(
                &principal,
                "ListTransactions",
                id,
                account.map(|a| a.customer_id),
            )?;
        }
        let limit = page_size("limit", r.limit)?;
        if r.offset < 0 {
            return Err(invalid("offset", "must not be negative"));
        }
        if r.min_version < 0 {
            return Err(invalid("min_version", "must not be negative"));
        }
        let query = billing_store::LedgerQuery {
            account_id: id,
            limit: limit + 1,
            offset: i64::from(r.offset),
            before_version: parse_token::<i64>(&r.page_token, TOKEN)?,
            reference_type: match r.reference_type {
                0 => None,
                raw => Some(required::<pb::ReferenceType, _>(raw)?),
            },
            start_time: convert::time("start_time", r.start_time.as_ref())?,
            end_time: convert::time("end_time", r.end_time.as_ref())?,
        };
        self.await_projection(id, r.min_version).await?;
        let mut entries = self
            .store
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

    #[tracing::instrument(skip_all, fields(rpc = "Debit", account_id))]
    async fn debit(
        &self,
        request: Request<pb::DebitRequest>,
    ) -> Result<Response<pb::DebitResponse>, Status> {
        let key = required_key(&request.get_ref().idempotency_key)?.to_owned();
        let meta = meta(&request, "Debit", Some(&key), |r| r.idempotency_key.clear())?;
        let r = request.get_ref();
        let id = convert::uuid("account_id", &r.account_id)?;
        record_account(id);
        let service = required::<pb::ServiceType, _>(r.service_type)?;
        let cmd = Command::Debit(Debit {
            service_type: service,
            usage: usage(service, r.duration_ms, r.quantity)?,
            reference_type: or_default::<pb::ReferenceType, _>(
                r.reference_type,
                service.reference_type(),
            )?,
            reference_id: bounded("reference_id", &r.reference_id, MAX_KEY_LEN)?,
        });
        match settle(self.store.execute(id, &meta, &cmd).await)? {
            Outcome::Charge(c) => Ok(Response::new(pb::DebitResponse {
                billable_units: c.billable_units,
                charged_token: c.charged_token.get(),
                charged_credit: c.charged_credit.get(),
                account: Some(convert::account(&c.account)),
            })),
            other => Err(unexpected(&other)),
        }
    }
}
