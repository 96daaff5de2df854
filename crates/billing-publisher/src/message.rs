//! What goes on the topics: a pure function of one stored event (and the
//! available credit before it), so republishing after a crash produces the
//! very same messages, and consumers deduplicate by (account_id, version).

use billing_domain::{AccountView, Event};
use billing_store::StoredEvent;
use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// The version of the message schemas in `schemas/` (and in topic names).
pub const SCHEMA_VERSION: u32 = 1;

/// One message to produce.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The account id: one partition per account keeps its order.
    pub key: String,
    /// The JSON document, serialized once from borrowed, typed parts (a
    /// `serde_json::Value` tree per message was a fifth of the read side's
    /// CPU).
    pub payload: String,
    /// Header name and value.
    pub headers: Vec<(&'static str, String)>,
}

impl Message {
    /// The payload as a JSON value (tests, tools).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }
}

/// The kinds of alert on the alerts topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alert {
    /// Available credit crossed below the account's low-balance threshold.
    BalanceLow,
    /// It crossed back to or above it.
    BalanceRecovered,
    /// Usage took the available credit below zero (soft limit or commit).
    CreditLimitExceeded,
}

impl Alert {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BalanceLow => "balance_low",
            Self::BalanceRecovered => "balance_recovered",
            Self::CreditLimitExceeded => "credit_limit_exceeded",
        }
    }
}

/// The account fields of a message: the view after the event, with
/// integer amounts only.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    View(&'a AccountView),
    /// Events from before the view was stored: ids and balances.
    Balances {
        id: Uuid,
        balance_credit: i64,
        balance_token: i64,
        reserved_credit: i64,
        reserved_token: i64,
        available_credit: i64,
        available_token: i64,
        version: i64,
    },
}

fn account_data(e: &StoredEvent) -> Data<'_> {
    match &e.account_after {
        Some(view) => Data::View(view),
        None => Data::Balances {
            id: e.account_id,
            balance_credit: e.balances.balance_credit.get(),
            balance_token: e.balances.balance_token.get(),
            reserved_credit: e.balances.reserved_credit.get(),
            reserved_token: e.balances.reserved_token.get(),
            available_credit: e.balances.available_credit.get(),
            available_token: e.balances.available_token.get(),
            version: e.version,
        },
    }
}

#[derive(Serialize)]
struct AccountUpdated<'a> {
    event_type: &'static str,
    schema_version: u32,
    event_id: Uuid,
    timestamp: String,
    cause: Cause<'a>,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Cause<'a> {
    event: &'a str,
    reference_type: Option<&'static str>,
    reference_id: Option<&'a str>,
    actor: ActorRef<'a>,
}

#[derive(Serialize)]
struct ActorRef<'a> {
    principal: &'a str,
    role: &'a str,
}

#[derive(Serialize)]
struct AlertRaised<'a> {
    event_type: &'static str,
    schema_version: u32,
    event_id: Uuid,
    timestamp: String,
    account_id: Uuid,
    version: i64,
    data: Data<'a>,
}

fn to_json(payload: &impl Serialize) -> String {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_string(payload).unwrap_or_default()
}

/// The reference a change was made under, when it has one.
fn reference(event: &Event) -> (Option<&'static str>, Option<&str>) {
    match event {
        Event::BalanceAdded(e) | Event::BalanceSubtracted(e) => {
            (Some(e.reference_type.as_str()), Some(&e.reference_id))
        }
        Event::Debited(e) => (Some(e.reference_type.as_str()), Some(&e.reference_id)),
        Event::Committed(e) => (Some(e.reference_type.as_str()), Some(&e.reservation_id)),
        Event::Reserved(e) => (
            Some(e.service_type.reference_type().as_str()),
            Some(&e.reservation_id),
        ),
        Event::ReservationExtended(e) => (None, Some(&e.reservation_id)),
        Event::Released(e) | Event::ReservationExpired(e) => (None, Some(&e.reservation_id)),
        Event::TokensGranted(e) => (Some(e.reference_type.as_str()), None),
        Event::TokensExpired(_) => (Some("monthly_allowance"), None),
        _ => (None, None),
    }
}

fn headers(e: &StoredEvent, event_type: &str) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("event_id", e.event_id.to_string()),
        ("event_type", event_type.to_owned()),
    ];
    if let Some(trace_id) = &e.trace_id {
        // The request's trace and span, so a consumer's span is a child of
        // the call that made the change. An untraced request has no span:
        // then one is derived from the event id.
        let span = match &e.span_id {
            Some(span) => span.clone(),
            None => e.event_id.simple().to_string().chars().skip(16).collect(),
        };
        headers.push(("traceparent", format!("00-{trace_id}-{span}-01")));
    }
    headers
}

/// The `account_updated` message for a stored event.
pub fn account_updated(e: &StoredEvent) -> Message {
    let (reference_type, reference_id) = reference(&e.event);
    let payload = to_json(&AccountUpdated {
        event_type: "account_updated",
        schema_version: SCHEMA_VERSION,
        event_id: e.event_id,
        timestamp: e.occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        cause: Cause {
            event: &e.event_type,
            reference_type,
            reference_id,
            actor: ActorRef {
                principal: &e.actor.principal,
                role: &e.actor.role,
            },
        },
        data: account_data(e),
    });
    Message {
        key: e.account_id.to_string(),
        payload,
        headers: headers(e, "account_updated"),
    }
}

/// The alerts an event raises, given the available credit before it (from
/// its predecessor event; `None` for an account's first event). A crossing
/// is measured against the threshold after the event; a threshold of zero
/// turns low-balance alerts off.
pub fn alerts(e: &StoredEvent, available_before: Option<i64>) -> Vec<Alert> {
    let mut alerts = Vec::new();
    if matches!(e.event, Event::CreditLimitExceeded(_)) {
        alerts.push(Alert::CreditLimitExceeded);
    }
    let threshold = e
        .account_after
        .as_ref()
        .map_or(0, |a: &AccountView| a.low_balance_threshold.get());
    if threshold > 0 {
        let now = e.balances.available_credit.get();
        let was_low = available_before.is_some_and(|before| before < threshold);
        let is_low = now < threshold;
        match (available_before, was_low, is_low) {
            (Some(_), false, true) => alerts.push(Alert::BalanceLow),
            (Some(_), true, false) => alerts.push(Alert::BalanceRecovered),
            _ => {}
        }
    }
    alerts
}

/// An alert's message.
pub fn alert(e: &StoredEvent, alert: Alert) -> Message {
    let payload = to_json(&AlertRaised {
        event_type: alert.as_str(),
        schema_version: SCHEMA_VERSION,
        event_id: e.event_id,
        timestamp: e.occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        account_id: e.account_id,
        version: e.version,
        data: account_data(e),
    });
    Message {
        key: e.account_id.to_string(),
        payload,
        headers: headers(e, alert.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use billing_domain::*;
    use billing_store::{Actor, Cursor};
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;

    /// An account with `threshold`, after an event leaving `available`.
    fn stored(event: Event, available: i64, threshold: i64) -> StoredEvent {
        let now = Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap();
        let create = CreateAccount {
            customer_id: Uuid::nil(),
            name: "Primary Account".into(),
            detail: String::new(),
            plan_type: PlanType::Free,
            currency: Currency::usd(),
            credit_limit: Micros::ZERO,
            credit_limit_type: CreditLimitType::Hard,
            is_postpaid: false,
            low_balance_threshold: Micros(threshold),
            payment_type: String::new(),
            payment_method: String::new(),
        };
        let mut view = create_account_view(&create, now);
        view.available_credit = Micros(available);
        view.balance_credit = Micros(available);
        StoredEvent {
            cursor: Cursor::START,
            event_id: Uuid::from_u128(42),
            account_id: view.id,
            version: 7,
            event_type: event.event_type().to_owned(),
            schema_version: 1,
            occurred_at: now,
            actor: Actor {
                principal: "call-control".into(),
                role: "service".into(),
            },
            idempotency_key: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: None,
            event,
            balances: Balances {
                balance_credit: Micros(available),
                available_credit: Micros(available),
                ..Balances::default()
            },
            account_after: Some(view),
        }
    }

    fn create_account_view(cmd: &CreateAccount, now: chrono::DateTime<Utc>) -> AccountView {
        billing_domain::create(Uuid::from_u128(9), cmd, now)
            .unwrap()
            .account
            .view(now)
            .unwrap()
    }

    fn debited() -> Event {
        Event::Debited(event::Debited {
            service_type: ServiceType::Sms,
            reference_type: ReferenceType::Sms,
            reference_id: "msg-1".into(),
            billable_units: 1,
            rate: Rate::credit_only(10_000),
            charged_token: Tokens(0),
            charged_credit: Micros(10_000),
            promotional: Vec::new(),
        })
    }

    #[test]
    fn account_updated_carries_the_account_after_the_event_with_integer_amounts() {
        let m = account_updated(&stored(debited(), 15_500_000, 0));
        assert_eq!(m.key, Uuid::from_u128(9).to_string());
        assert_eq!(m.json()["event_type"], "account_updated");
        assert_eq!(m.json()["cause"]["event"], "debited");
        assert_eq!(m.json()["cause"]["reference_type"], "sms");
        assert_eq!(m.json()["cause"]["reference_id"], "msg-1");
        assert_eq!(m.json()["cause"]["actor"]["principal"], "call-control");
        assert_eq!(m.json()["data"]["balance_credit"], 15_500_000);
        assert!(
            m.json()["data"]["balance_credit"].is_i64(),
            "an integer, never a float"
        );
        assert_eq!(m.json()["data"]["plan_type"], "free");
        assert_eq!(m.json()["timestamp"], "2026-05-01T12:00:00.000000Z");
        let traceparent = m.headers.iter().find(|(k, _)| *k == "traceparent").unwrap();
        assert!(
            traceparent
                .1
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert_eq!(traceparent.1.len(), 55);
    }

    #[test]
    fn the_traceparent_names_the_span_of_the_request_when_it_was_traced() {
        let mut e = stored(debited(), 15_500_000, 0);
        e.span_id = Some("00f067aa0ba902b7".into());
        let m = account_updated(&e);
        let traceparent = m.headers.iter().find(|(k, _)| *k == "traceparent").unwrap();
        assert_eq!(
            traceparent.1,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            e.cause().map(|c| c.span_id().to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
    }

    #[test]
    fn low_balance_alerts_fire_once_per_crossing() {
        let threshold = 20_000_000;
        let e = |available| stored(debited(), available, threshold);
        assert_eq!(
            alerts(&e(19_000_000), Some(21_000_000)),
            [Alert::BalanceLow]
        );
        assert_eq!(
            alerts(&e(18_000_000), Some(19_000_000)),
            [],
            "still low: no new alert"
        );
        assert_eq!(
            alerts(&e(20_000_000), Some(18_000_000)),
            [Alert::BalanceRecovered]
        );
        assert_eq!(alerts(&e(25_000_000), Some(20_000_000)), []);
        assert_eq!(
            alerts(&e(1), None),
            [],
            "an account's first event crosses nothing"
        );
        let off = stored(debited(), 1, 0);
        assert_eq!(
            alerts(&off, Some(5)),
            [],
            "a zero threshold turns alerts off"
        );
    }

    #[test]
    fn a_credit_limit_crossing_is_an_alert() {
        let exceeded = Event::CreditLimitExceeded(event::CreditLimitExceeded {
            available_credit: Micros(-10),
            credit_limit: Micros(0),
            credit_limit_type: CreditLimitType::Soft,
        });
        let e = stored(exceeded, -10, 0);
        assert_eq!(alerts(&e, Some(-10)), [Alert::CreditLimitExceeded]);
        let m = alert(&e, Alert::CreditLimitExceeded);
        assert_eq!(m.json()["event_type"], "credit_limit_exceeded");
        assert_eq!(m.json()["version"], 7);
    }
}
