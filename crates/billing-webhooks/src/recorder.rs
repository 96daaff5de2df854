//! From the event feed to durable deliveries: for each change, one delivery
//! per matching webhook of the account's customer (`account_updated`, and
//! the alerts the change raises: `balance_low`, `balance_recovered`,
//! `credit_limit_exceeded`, by the publisher's own rule), for the feed's
//! handler (`feed.rs`). The checkpoint moves after the deliveries are
//! stored, and a batch read again after a crash makes no delivery twice
//! (each is unique per webhook, change and type).

use std::collections::{HashMap, HashSet};

use billing_publisher::message::alerts;
use billing_store::{NewDelivery, Store, StoreError, StoredEvent, WebhookTarget};
use uuid::Uuid;

/// The deliveries a batch of changes makes, in feed order (so per webhook
/// and account in version order). Each event comes with the available
/// credit before it (`None` for an account's first), for alerts.
pub fn deliveries(
    events: &[(&StoredEvent, Option<i64>)],
    webhooks: &[WebhookTarget],
    mut new_id: impl FnMut() -> Uuid,
) -> Vec<NewDelivery> {
    let mut by_customer: HashMap<Uuid, Vec<&WebhookTarget>> = HashMap::new();
    for webhook in webhooks {
        by_customer
            .entry(webhook.customer_id)
            .or_default()
            .push(webhook);
    }
    let mut out = Vec::new();
    for (event, available_before) in events {
        let Some(view) = &event.account_after else {
            continue;
        };
        let Some(targets) = by_customer.get(&view.customer_id) else {
            continue;
        };
        let mut types = vec!["account_updated"];
        types.extend(
            alerts(event, *available_before)
                .into_iter()
                .map(|a| a.as_str()),
        );
        for webhook in targets {
            if !webhook.account_ids.is_empty() && !webhook.account_ids.contains(&event.account_id) {
                continue;
            }
            for event_type in &types {
                if webhook.event_types.iter().any(|t| t == event_type) {
                    let id = new_id();
                    out.push(NewDelivery {
                        id,
                        webhook_id: webhook.id,
                        message_id: format!("msg_{}", id.simple()),
                        event_type: (*event_type).to_owned(),
                        account_id: event.account_id,
                        account_version: event.version,
                    });
                }
            }
        }
    }
    out
}

/// Makes the deliveries of a batch of changes. Returns how many were new.
pub async fn record(
    store: &Store,
    events: &[(&StoredEvent, Option<i64>)],
) -> Result<u64, StoreError> {
    let customers: Vec<Uuid> = events
        .iter()
        .filter_map(|(e, _)| e.account_after.as_ref().map(|v| v.customer_id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let webhooks = store.deliveries().webhooks_of_customers(&customers).await?;
    if webhooks.is_empty() {
        return Ok(0);
    }
    let new = deliveries(events, &webhooks, Uuid::now_v7);
    store.deliveries().insert_deliveries(&new).await
}
