//! Webhook handlers: registration, settings, secrets, deliveries, a retry
//! and a replay. A customer admin acts on its own customer's webhooks only:
//! the customer is checked against the **stored** webhook's (or
//! delivery's webhook's), and an id that does not exist is refused like
//! another customer's, so the answer says nothing about other customers.

use std::collections::BTreeSet;

use billing_proto::v1 as pb;
use billing_store::{
    MAX_REPLAY, NewWebhook, WEBHOOK_EVENT_TYPES, Webhook, WebhookPatch, WebhookRefusal,
};
use chrono::Duration;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::BillingApi;
use crate::auth::{Principal, Role};
use crate::convert;
use crate::request::principal;
use crate::status::{self, invalid, store_failed, webhook_failed, webhook_refused};
use crate::validate::{self, Text, optional_text, text};

/// The most entries `event_types` and `account_ids` may hold.
pub const MAX_LIST_ENTRIES: usize = 100;
/// A rotation's overlap when none is asked for: 24 hours.
pub const DEFAULT_OVERLAP_SECONDS: i64 = 86_400;
/// The longest overlap: 7 days.
pub const MAX_OVERLAP_SECONDS: i64 = 7 * 86_400;
/// Why a webhook disabled by `UpdateWebhook` is.
const DISABLED_BY_REQUEST: &str = "disabled through the API";

const WEBHOOKS_TOKEN: &str = "w1.";
const DELIVERIES_TOKEN: &str = "d1.";

/// `POST` (the default) or `PUT`, in any case.
fn method(value: &str) -> Result<String, Status> {
    match value.to_ascii_uppercase().as_str() {
        "" | "POST" => Ok("POST".to_owned()),
        "PUT" => Ok("PUT".to_owned()),
        _ => Err(invalid("method", "must be POST or PUT")),
    }
}

/// At least one known event type; sorted, duplicates collapsed.
fn event_types(values: &[String]) -> Result<Vec<String>, Status> {
    if values.is_empty() {
        return Err(invalid(
            "event_types",
            "needs at least one of account_updated, balance_low, balance_recovered, credit_limit_exceeded",
        ));
    }
    if values.len() > MAX_LIST_ENTRIES {
        return Err(invalid("event_types", "must hold at most 100 entries"));
    }
    let mut set = BTreeSet::new();
    for value in values {
        if !WEBHOOK_EVENT_TYPES.contains(&value.as_str()) {
            return Err(invalid(
                "event_types",
                format!(
                    "unknown event type `{}`: one of account_updated, balance_low, balance_recovered, credit_limit_exceeded",
                    status::clip(value, 40)
                ),
            ));
        }
        set.insert(value.clone());
    }
    Ok(set.into_iter().collect())
}

/// Account UUIDs; sorted, duplicates collapsed.
fn account_ids(values: &[String]) -> Result<Vec<Uuid>, Status> {
    if values.len() > MAX_LIST_ENTRIES {
        return Err(invalid("account_ids", "must hold at most 100 entries"));
    }
    let mut set = BTreeSet::new();
    for value in values {
        set.insert(
            Uuid::parse_str(value).map_err(|_| invalid("account_ids", "must be account UUIDs"))?,
        );
    }
    Ok(set.into_iter().collect())
}

/// A rotation's overlap: unset is the default, 0 none, at most 7 days.
fn overlap(seconds: Option<i64>) -> Result<Duration, Status> {
    match seconds {
        None => Ok(Duration::seconds(DEFAULT_OVERLAP_SECONDS)),
        Some(s) if s < 0 => Err(invalid("overlap_seconds", "must not be negative")),
        Some(s) if s > MAX_OVERLAP_SECONDS => Err(invalid(
            "overlap_seconds",
            "must be at most 604800 (7 days)",
        )),
        Some(s) => Ok(Duration::seconds(s)),
    }
}

/// Refuses a caller that may not act on customer `customer`'s webhooks.
fn ensure_customer(principal: &Principal, rpc: &str, customer: Uuid) -> Result<(), Status> {
    if principal.may_access(customer) {
        return Ok(());
    }
    tracing::warn!(rpc, principal = %principal.subject, role = principal.role.as_str(),
        target = %customer, "call denied: not the caller's customer");
    Err(status::denied(&customer.to_string(), principal.role))
}

/// Refuses a caller that may not act on webhook (or delivery) `id`, owned
/// by `owner` (`None`: no such one; NOT_FOUND for an admin, refused like
/// another customer's for a customer admin).
fn ensure_owner(
    principal: &Principal,
    rpc: &str,
    id: Uuid,
    owner: Option<Uuid>,
    missing: WebhookRefusal,
) -> Result<(), Status> {
    match owner {
        Some(owner) if principal.may_access(owner) => Ok(()),
        None if principal.role != Role::CustomerAdmin => Err(webhook_refused(&missing)),
        _ => {
            tracing::warn!(rpc, principal = %principal.subject, role = principal.role.as_str(),
                target = %id, "call denied: not the caller's webhook");
            Err(status::denied(&id.to_string(), principal.role))
        }
    }
}

/// Webhook `raw` (field `field`), if the caller may act on it.
async fn owned_webhook(
    api: &BillingApi,
    principal: &Principal,
    rpc: &str,
    field: &'static str,
    raw: &str,
) -> Result<Webhook, Status> {
    let id = validate::uuid(field, raw)?;
    let webhook = api
        .store
        .webhooks()
        .webhook(id)
        .await
        .map_err(|e| store_failed(&e))?;
    ensure_owner(
        principal,
        rpc,
        id,
        webhook.as_ref().map(|w| w.customer_id),
        WebhookRefusal::WebhookNotFound,
    )?;
    webhook.ok_or_else(|| webhook_refused(&WebhookRefusal::WebhookNotFound))
}

/// Refuses accounts that are not `customer`'s: INVALID_ARGUMENT naming
/// `account_ids` for an admin, PERMISSION_DENIED for a customer admin (who
/// learns nothing about accounts that are not its own).
async fn ensure_accounts_of(
    api: &BillingApi,
    principal: &Principal,
    rpc: &str,
    customer: Uuid,
    accounts: &[Uuid],
) -> Result<(), Status> {
    if accounts.is_empty() {
        return Ok(());
    }
    let found = api
        .store
        .webhooks()
        .account_customers(accounts)
        .await
        .map_err(|e| store_failed(&e))?;
    for account in accounts {
        let owner = found.iter().find(|(id, _)| id == account).map(|(_, c)| *c);
        if owner == Some(customer) {
            continue;
        }
        if principal.role == Role::CustomerAdmin {
            tracing::warn!(rpc, principal = %principal.subject, role = principal.role.as_str(),
                target = %account, "call denied: not the caller's account");
            return Err(status::denied(&account.to_string(), principal.role));
        }
        return Err(invalid(
            "account_ids",
            "must be existing accounts of the webhook's customer",
        ));
    }
    Ok(())
}

pub async fn create(
    api: &BillingApi,
    request: Request<pb::CreateWebhookRequest>,
) -> Result<Response<pb::Webhook>, Status> {
    let principal = principal(&request)?;
    let r = request.get_ref();
    let customer_id = match (r.customer_id.as_str(), principal.customer_id) {
        ("", Some(own)) if principal.role == Role::CustomerAdmin => own,
        (raw, _) => validate::uuid("customer_id", raw)?,
    };
    let new = NewWebhook {
        customer_id,
        name: text("name", Text::Line, &r.name)?,
        uri: validate::http_url("uri", &r.uri)?,
        method: method(&r.method)?,
        event_types: event_types(&r.event_types)?,
        account_ids: account_ids(&r.account_ids)?,
        idempotency_key: match r.idempotency_key.as_str() {
            "" => None,
            key => Some(text("idempotency_key", Text::Key, key)?),
        },
    };
    ensure_customer(&principal, "CreateWebhook", customer_id)?;
    ensure_accounts_of(
        api,
        &principal,
        "CreateWebhook",
        customer_id,
        &new.account_ids,
    )
    .await?;
    let webhook = api
        .store
        .webhooks()
        .create_webhook(&new)
        .await
        .map_err(|e| webhook_failed(&e))?;
    tracing::info!(webhook_id = %webhook.id, customer_id = %customer_id, "webhook created");
    Ok(Response::new(convert::webhook(
        &webhook,
        api.store.now(),
        true,
    )))
}

pub async fn get(
    api: &BillingApi,
    request: Request<pb::GetWebhookRequest>,
) -> Result<Response<pb::Webhook>, Status> {
    let principal = principal(&request)?;
    let webhook = owned_webhook(api, &principal, "GetWebhook", "id", &request.get_ref().id).await?;
    Ok(Response::new(convert::webhook(
        &webhook,
        api.store.now(),
        false,
    )))
}

pub async fn list(
    api: &BillingApi,
    request: Request<pb::ListWebhooksRequest>,
) -> Result<Response<pb::ListWebhooksResponse>, Status> {
    let principal = principal(&request)?;
    let r = request.get_ref();
    let size = validate::page_size("page_size", r.page_size)?;
    let after = validate::page_token::<Uuid>(&r.page_token, WEBHOOKS_TOKEN)?;
    let customer = match (r.customer_id.as_str(), principal.customer_id) {
        ("", Some(own)) if principal.role == Role::CustomerAdmin => Some(own),
        ("", _) if principal.role == Role::CustomerAdmin => {
            return Err(status::denied("ListWebhooks", principal.role));
        }
        ("", _) => None,
        (raw, _) => Some(validate::uuid("customer_id", raw)?),
    };
    if let Some(customer) = customer {
        ensure_customer(&principal, "ListWebhooks", customer)?;
    }
    let mut webhooks = api
        .store
        .webhooks()
        .list_webhooks(customer, after, size + 1)
        .await
        .map_err(|e| store_failed(&e))?;
    let more = webhooks.len() as i64 > size;
    webhooks.truncate(usize::try_from(size).unwrap_or(0));
    let next_page_token = match webhooks.last() {
        Some(last) if more => format!("{WEBHOOKS_TOKEN}{}", last.id),
        _ => String::new(),
    };
    let now = api.store.now();
    Ok(Response::new(pb::ListWebhooksResponse {
        webhooks: webhooks
            .iter()
            .map(|w| convert::webhook(w, now, false))
            .collect(),
        next_page_token,
    }))
}

pub async fn update(
    api: &BillingApi,
    request: Request<pb::UpdateWebhookRequest>,
) -> Result<Response<pb::Webhook>, Status> {
    let principal = principal(&request)?;
    let r = request.get_ref();
    let id = validate::uuid("id", &r.id)?;
    let patch = WebhookPatch {
        name: optional_text("name", Text::Line, r.name.as_deref())?,
        uri: r
            .uri
            .as_deref()
            .map(|uri| validate::http_url("uri", uri))
            .transpose()?,
        method: r.method.as_deref().map(method).transpose()?,
        event_types: r
            .event_types
            .as_ref()
            .map(|list| event_types(&list.values))
            .transpose()?,
        account_ids: r
            .account_ids
            .as_ref()
            .map(|list| account_ids(&list.values))
            .transpose()?,
        enabled: r.enabled,
        disabled_reason: DISABLED_BY_REQUEST.to_owned(),
    };
    let webhook = owned_webhook(api, &principal, "UpdateWebhook", "id", &r.id).await?;
    if let Some(accounts) = &patch.account_ids {
        ensure_accounts_of(
            api,
            &principal,
            "UpdateWebhook",
            webhook.customer_id,
            accounts,
        )
        .await?;
    }
    let updated = api
        .store
        .webhooks()
        .update_webhook(id, &patch)
        .await
        .map_err(|e| store_failed(&e))?
        .ok_or_else(|| webhook_refused(&WebhookRefusal::WebhookNotFound))?;
    Ok(Response::new(convert::webhook(
        &updated,
        api.store.now(),
        false,
    )))
}

pub async fn delete(
    api: &BillingApi,
    request: Request<pb::DeleteWebhookRequest>,
) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
    let principal = principal(&request)?;
    let webhook = owned_webhook(
        api,
        &principal,
        "DeleteWebhook",
        "id",
        &request.get_ref().id,
    )
    .await?;
    let deleted = api
        .store
        .webhooks()
        .delete_webhook(webhook.id)
        .await
        .map_err(|e| store_failed(&e))?;
    if !deleted {
        return Err(webhook_refused(&WebhookRefusal::WebhookNotFound));
    }
    tracing::info!(webhook_id = %webhook.id, "webhook deleted");
    Ok(Response::new(pb::DeleteWebhookResponse {}))
}

pub async fn rotate_secret(
    api: &BillingApi,
    request: Request<pb::RotateWebhookSecretRequest>,
) -> Result<Response<pb::Webhook>, Status> {
    let principal = principal(&request)?;
    let r = request.get_ref();
    validate::uuid("id", &r.id)?;
    let overlap = overlap(r.overlap_seconds)?;
    let webhook = owned_webhook(api, &principal, "RotateWebhookSecret", "id", &r.id).await?;
    let rotated = api
        .store
        .webhooks()
        .rotate_webhook_secret(webhook.id, overlap)
        .await
        .map_err(|e| store_failed(&e))?
        .ok_or_else(|| webhook_refused(&WebhookRefusal::WebhookNotFound))?;
    tracing::info!(webhook_id = %webhook.id, overlap_seconds = overlap.num_seconds(),
        "webhook secret rotated");
    Ok(Response::new(convert::webhook(
        &rotated,
        api.store.now(),
        true,
    )))
}

pub async fn deliveries(
    api: &BillingApi,
    request: Request<pb::ListWebhookDeliveriesRequest>,
) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
    let principal = principal(&request)?;
    let r = request.get_ref();
    validate::uuid("webhook_id", &r.webhook_id)?;
    let status = convert::delivery_status_filter(r.status)?;
    let size = validate::page_size("page_size", r.page_size)?;
    let before = validate::page_token::<Uuid>(&r.page_token, DELIVERIES_TOKEN)?;
    let webhook = owned_webhook(
        api,
        &principal,
        "ListWebhookDeliveries",
        "webhook_id",
        &r.webhook_id,
    )
    .await?;
    let mut deliveries = api
        .store
        .webhooks()
        .webhook_deliveries(webhook.id, status, before, size + 1)
        .await
        .map_err(|e| store_failed(&e))?;
    let more = deliveries.len() as i64 > size;
    deliveries.truncate(usize::try_from(size).unwrap_or(0));
    let next_page_token = match deliveries.last() {
        Some(last) if more => format!("{DELIVERIES_TOKEN}{}", last.id),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListWebhookDeliveriesResponse {
        deliveries: deliveries.iter().map(convert::delivery).collect(),
        next_page_token,
    }))
}

pub async fn retry_delivery(
    api: &BillingApi,
    request: Request<pb::RetryWebhookDeliveryRequest>,
) -> Result<Response<pb::WebhookDelivery>, Status> {
    let principal = principal(&request)?;
    let id = validate::uuid("delivery_id", &request.get_ref().delivery_id)?;
    let found = api
        .store
        .webhooks()
        .webhook_delivery(id)
        .await
        .map_err(|e| store_failed(&e))?;
    ensure_owner(
        &principal,
        "RetryWebhookDelivery",
        id,
        found.as_ref().map(|(_, customer)| *customer),
        WebhookRefusal::DeliveryNotFound,
    )?;
    let delivery = api
        .store
        .webhooks()
        .retry_webhook_delivery(id)
        .await
        .map_err(|e| webhook_failed(&e))?;
    tracing::info!(delivery_id = %id, webhook_id = %delivery.webhook_id, "delivery sent again");
    Ok(Response::new(convert::delivery(&delivery)))
}

pub async fn replay(
    api: &BillingApi,
    request: Request<pb::ReplayWebhookRequest>,
) -> Result<Response<pb::ReplayWebhookResponse>, Status> {
    let principal = principal(&request)?;
    let r = request.get_ref();
    validate::uuid("webhook_id", &r.webhook_id)?;
    let since = validate::time("since", r.since.as_ref())?
        .ok_or_else(|| invalid("since", "is required"))?;
    let webhook = owned_webhook(
        api,
        &principal,
        "ReplayWebhook",
        "webhook_id",
        &r.webhook_id,
    )
    .await?;
    let replay = api
        .store
        .webhooks()
        .replay_webhook(webhook.id, since, MAX_REPLAY)
        .await
        .map_err(|e| webhook_failed(&e))?;
    tracing::info!(webhook_id = %webhook.id, replayed = replay.replayed,
        truncated = replay.next_since.is_some(), "webhook replayed");
    Ok(Response::new(pb::ReplayWebhookResponse {
        replayed: replay.replayed,
        truncated: replay.next_since.is_some(),
        next_since: replay.next_since.map(convert::timestamp),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_event_types_and_overlaps_have_their_rules() {
        assert_eq!(method("").unwrap(), "POST");
        assert_eq!(method("put").unwrap(), "PUT");
        assert!(method("GET").is_err());
        let types = event_types(&[
            "balance_low".into(),
            "account_updated".into(),
            "balance_low".into(),
        ])
        .unwrap();
        assert_eq!(types, ["account_updated", "balance_low"]);
        assert!(event_types(&[]).is_err());
        assert!(event_types(&["balance_updated".into()]).is_err());
        assert_eq!(overlap(None).unwrap().num_seconds(), 86_400);
        assert_eq!(overlap(Some(0)).unwrap().num_seconds(), 0);
        assert!(overlap(Some(-1)).is_err());
        assert!(overlap(Some(MAX_OVERLAP_SECONDS + 1)).is_err());
        assert!(account_ids(&["not-a-uuid".into()]).is_err());
    }
}
