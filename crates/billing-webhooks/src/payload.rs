//! What a webhook receives: the seed's shape,
//! `{"event_type": ..., "timestamp": ..., "data": {...}}`, where `data` is the
//! account as it stood after the change, with the seed's fields and
//! spellings (`id`, `customer_id`, `name`, `plan_type` like `free`,
//! `plan_status`, `balance_credit`, `balance_token`) and the rest of the
//! account view (`balance_promotional`, `reserved_credit`,
//! `available_credit`, `version`, ...), amounts as JSON integers
//! (`schemas/webhook.v1.json`).
//!
//! A pure function of the stored change, so every attempt and every replay
//! sends the very same bytes (and so the same signature for the same
//! timestamp).

use billing_store::ClaimedDelivery;
use chrono::SecondsFormat;
use serde::Serialize;
use uuid::Uuid;

/// The balances of a change from before account views were stored.
#[derive(Serialize)]
struct Balances {
    id: Uuid,
    balance_credit: i64,
    balance_token: i64,
    reserved_credit: i64,
    reserved_token: i64,
    available_credit: i64,
    available_token: i64,
    version: i64,
}

/// The body of a delivery.
pub fn body(delivery: &ClaimedDelivery) -> String {
    let timestamp = delivery
        .occurred_at
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    let data = match &delivery.account_after {
        // The view as stored is the account's JSON document already: it
        // goes in as it is, not parsed and written again.
        Some(view) => view.clone(),
        None => {
            let [bc, bt, rc, rt, ac, at] = delivery.balances;
            serde_json::to_string(&Balances {
                id: delivery.account_id,
                balance_credit: bc,
                balance_token: bt,
                reserved_credit: rc,
                reserved_token: rt,
                available_credit: ac,
                available_token: at,
                version: delivery.account_version,
            })
            .unwrap_or_default()
        }
    };
    // The event type is one of four fixed names and the timestamp RFC 3339:
    // neither needs escaping.
    format!(
        r#"{{"event_type":"{}","timestamp":"{timestamp}","data":{data}}}"#,
        delivery.event_type
    )
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone as _, Utc};

    use super::*;

    fn delivery(view: Option<&str>) -> ClaimedDelivery {
        ClaimedDelivery {
            id: Uuid::from_u128(1),
            webhook_id: Uuid::from_u128(2),
            message_id: "msg_1".into(),
            event_type: "account_updated".into(),
            account_id: Uuid::from_u128(3),
            account_version: 7,
            attempts: 0,
            uri: "https://example.com/hook".into(),
            method: "POST".into(),
            secrets: vec![],
            occurred_at: Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap(),
            account_after: view.map(str::to_owned),
            balances: [15_500_000, 20, 0, 0, 15_500_000, 20],
            trace_id: None,
            span_id: None,
        }
    }

    #[test]
    fn has_the_seeds_shape_with_the_view_as_data() {
        let view = r#"{"id":"00000000-0000-0000-0000-000000000003","plan_type":"free","balance_credit":15500000,"balance_token":20,"version":7}"#;
        let body: serde_json::Value = serde_json::from_str(&body(&delivery(Some(view)))).unwrap();
        assert_eq!(body["event_type"], "account_updated");
        assert_eq!(body["timestamp"], "2024-01-15T10:30:00.000000Z");
        assert_eq!(body["data"]["plan_type"], "free");
        assert_eq!(body["data"]["balance_credit"], 15_500_000);
        assert_eq!(body.as_object().unwrap().len(), 3);
    }

    #[test]
    fn old_changes_carry_their_balances() {
        let body: serde_json::Value = serde_json::from_str(&body(&delivery(None))).unwrap();
        assert_eq!(body["data"]["balance_credit"], 15_500_000);
        assert_eq!(body["data"]["version"], 7);
    }
}
