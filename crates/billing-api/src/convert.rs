//! Conversions between protobuf messages and domain types.

use billing_domain as domain;
use billing_domain::{AccountView, CommitOutcome, ReservationView};
use billing_proto::v1 as pb;
use chrono::{DateTime, Utc};
use tonic::Status;

use crate::status::invalid;

/// Maps a domain enum to its protobuf twin and back; both name their
/// variants alike, and the protobuf one adds `Unspecified`.
macro_rules! map_enum {
    ($domain:ident, $field:literal, [$($variant:ident),+ $(,)?]) => {
        impl ToProto for domain::$domain {
            type Proto = pb::$domain;
            fn to_proto(self) -> pb::$domain {
                match self {
                    $(domain::$domain::$variant => pb::$domain::$variant),+
                }
            }
        }

        impl FromProto<pb::$domain> for domain::$domain {
            const FIELD: &'static str = $field;
            fn from_proto(value: pb::$domain) -> Option<Self> {
                match value {
                    $(pb::$domain::$variant => Some(domain::$domain::$variant),)+
                    pb::$domain::Unspecified => None,
                }
            }
        }
    };
}

pub trait ToProto {
    type Proto;
    fn to_proto(self) -> Self::Proto;
}

pub trait FromProto<P>: Sized {
    const FIELD: &'static str;
    fn from_proto(value: P) -> Option<Self>;
}

map_enum!(
    ServiceType,
    "service_type",
    [
        CallVn,
        CallPstnOutgoing,
        CallPstnIncoming,
        CallExtension,
        Sms,
        Email,
        Number,
        NumberRenew,
        Tts,
        Recording,
    ]
);
map_enum!(
    PlanType,
    "plan_type",
    [Free, Basic, Professional, Unlimited]
);
map_enum!(PlanStatus, "plan_status", [Active, Canceling]);
map_enum!(AccountStatus, "status", [Active, Frozen]);
map_enum!(CreditLimitType, "credit_limit_type", [Hard, Soft]);
map_enum!(
    ReservationStatus,
    "status",
    [Active, Committed, Released, Expired]
);
map_enum!(
    ReferenceType,
    "reference_type",
    [
        Call,
        Sms,
        Email,
        Number,
        NumberRenew,
        Tts,
        Recording,
        Payment,
        Refund,
        ManualAdjustment,
        MonthlyAllowance,
        Promotion,
    ]
);

/// A balance bucket: its zero value is paid credit, not "unspecified".
pub fn bucket(raw: i32) -> Result<domain::Bucket, Status> {
    match pb::BalanceBucket::try_from(raw) {
        Ok(pb::BalanceBucket::Paid) => Ok(domain::Bucket::Paid),
        Ok(pb::BalanceBucket::Promotional) => Ok(domain::Bucket::Promotional),
        Err(_) => Err(invalid("bucket", format!("unknown value {raw}"))),
    }
}

/// A required enum field: its raw value must name a known, specified variant.
pub fn required<P, D>(raw: i32) -> Result<D, Status>
where
    P: TryFrom<i32>,
    D: FromProto<P>,
{
    P::try_from(raw)
        .ok()
        .and_then(D::from_proto)
        .ok_or_else(|| invalid(D::FIELD, format!("unknown or unspecified value {raw}")))
}

/// An enum field with a default for `UNSPECIFIED`; unknown values are refused.
pub fn or_default<P, D>(raw: i32, default: D) -> Result<D, Status>
where
    P: TryFrom<i32>,
    D: FromProto<P>,
{
    if raw == 0 {
        return Ok(default);
    }
    required::<P, D>(raw)
}

pub fn transaction(e: &billing_store::LedgerEntry) -> pb::Transaction {
    let transaction_type = match e.transaction_type.as_str() {
        "usage" => pb::TransactionType::Usage,
        "top_up" => pb::TransactionType::TopUp,
        "adjustment" => pb::TransactionType::Adjustment,
        "refund" => pb::TransactionType::Refund,
        "token_grant" => pb::TransactionType::TokenGrant,
        "token_expiry" => pb::TransactionType::TokenExpiry,
        "promotional_grant" => pb::TransactionType::PromotionalGrant,
        "promotional_expiry" => pb::TransactionType::PromotionalExpiry,
        _ => pb::TransactionType::Unspecified,
    };
    let reference_type = e
        .reference_type
        .parse::<domain::ReferenceType>()
        .map_or(pb::ReferenceType::Unspecified, ToProto::to_proto);
    let service_type = e
        .service_type
        .as_deref()
        .and_then(|s| s.parse::<domain::ServiceType>().ok())
        .map_or(pb::ServiceType::Unspecified, ToProto::to_proto);
    pb::Transaction {
        id: e.id.to_string(),
        account_id: e.account_id.to_string(),
        transaction_type: transaction_type.into(),
        reference_type: reference_type.into(),
        reference_id: e.reference_id.clone(),
        service_type: service_type.into(),
        billable_units: e.billable_units.unwrap_or(0),
        rate_token_per_unit: e.rate_token_per_unit.unwrap_or(0),
        rate_credit_per_unit: e.rate_credit_per_unit.unwrap_or(0),
        amount_token: e.amount_token,
        amount_credit: e.amount_credit,
        balance_token_after: e.balance_token_after,
        balance_credit_after: e.balance_credit_after,
        actor: e.actor_principal.clone(),
        actor_role: e.actor_role.clone(),
        tm_create: Some(timestamp(e.tm_create)),
        version: e.version,
        amount_promotional: e.amount_promotional,
        balance_promotional_after: e.balance_promotional_after,
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn account(v: &AccountView) -> pb::BillingAccount {
    pb::BillingAccount {
        id: v.id.to_string(),
        customer_id: v.customer_id.to_string(),
        name: v.name.clone(),
        detail: v.detail.clone(),
        plan_type: v.plan_type.to_proto().into(),
        plan_status: v.plan_status.to_proto().into(),
        status: v.status.to_proto().into(),
        currency: v.currency.to_string(),
        balance_credit: v.balance_credit.get(),
        balance_token: v.balance_token.get(),
        reserved_credit: v.reserved_credit.get(),
        reserved_token: v.reserved_token.get(),
        available_credit: v.available_credit.get(),
        available_token: v.available_token.get(),
        credit_limit: v.credit_limit.get(),
        credit_limit_type: v.credit_limit_type.to_proto().into(),
        is_postpaid: v.is_postpaid,
        low_balance_threshold: v.low_balance_threshold.get(),
        payment_type: v.payment_type.clone(),
        payment_method: v.payment_method.clone(),
        tm_last_topup: v.tm_last_topup.map(timestamp),
        tm_next_topup: v.tm_next_topup.map(timestamp),
        tm_create: Some(timestamp(v.tm_create)),
        tm_update: Some(timestamp(v.tm_update)),
        tm_delete: v.tm_delete.map(timestamp),
        version: v.version,
        over_limit: v.over_limit,
        balance_promotional: v.balance_promotional.get(),
        promotional_grants: v
            .promotional_grants
            .iter()
            .map(|g| pb::PromotionalGrant {
                grant_version: g.grant,
                remaining: g.remaining.get(),
                expires_at: g.expires_at.map(timestamp),
            })
            .collect(),
    }
}

pub fn reservation(v: &ReservationView) -> pb::Reservation {
    pb::Reservation {
        reservation_id: v.reservation_id.clone(),
        account_id: v.account_id.to_string(),
        service_type: v.service_type.to_proto().into(),
        status: v.status.to_proto().into(),
        granted_units: v.granted_units,
        reserved_token: v.reserved_token.get(),
        reserved_credit: v.reserved_credit.get(),
        expires_at: Some(timestamp(v.expires_at)),
        requested_units: v.requested_units,
        partial: v.granted_units < v.requested_units,
        account_version: v.account_version,
    }
}

pub fn commit(c: &CommitOutcome) -> pb::CommitResponse {
    pb::CommitResponse {
        billable_units: c.billable_units,
        charged_token: c.charged_token.get(),
        charged_credit: c.charged_credit.get(),
        released_token: c.released_token.get(),
        released_credit: c.released_credit.get(),
        account: Some(account(&c.account)),
        reservation_id: c.reservation_id.clone(),
    }
}

/// A webhook; its secret only when `with_secret` (the replies of
/// `CreateWebhook` and `RotateWebhookSecret`).
pub fn webhook(w: &billing_store::Webhook, now: DateTime<Utc>, with_secret: bool) -> pb::Webhook {
    let status = if w.enabled {
        pb::WebhookStatus::Enabled
    } else {
        pb::WebhookStatus::Disabled
    };
    pb::Webhook {
        id: w.id.to_string(),
        customer_id: w.customer_id.to_string(),
        name: w.name.clone(),
        uri: w.uri.clone(),
        method: w.method.clone(),
        event_types: w.event_types.clone(),
        account_ids: w.account_ids.iter().map(ToString::to_string).collect(),
        status: status.into(),
        disabled_reason: w.disabled_reason.clone(),
        created_at: Some(timestamp(w.created_at)),
        updated_at: Some(timestamp(w.updated_at)),
        secret: if with_secret {
            w.secret.clone()
        } else {
            String::new()
        },
        previous_secret_expires_at: w.previous_secret_expires_at(now).map(timestamp),
        failing_since: w.failing_since.map(timestamp),
    }
}

pub fn delivery_status(status: billing_store::DeliveryStatus) -> pb::WebhookDeliveryStatus {
    match status {
        billing_store::DeliveryStatus::Pending => pb::WebhookDeliveryStatus::Pending,
        billing_store::DeliveryStatus::Delivered => pb::WebhookDeliveryStatus::Delivered,
        billing_store::DeliveryStatus::Failed => pb::WebhookDeliveryStatus::Failed,
    }
}

/// A delivery-status filter: unspecified is none (every status).
pub fn delivery_status_filter(raw: i32) -> Result<Option<billing_store::DeliveryStatus>, Status> {
    match pb::WebhookDeliveryStatus::try_from(raw) {
        Ok(pb::WebhookDeliveryStatus::Unspecified) => Ok(None),
        Ok(pb::WebhookDeliveryStatus::Pending) => Ok(Some(billing_store::DeliveryStatus::Pending)),
        Ok(pb::WebhookDeliveryStatus::Delivered) => {
            Ok(Some(billing_store::DeliveryStatus::Delivered))
        }
        Ok(pb::WebhookDeliveryStatus::Failed) => Ok(Some(billing_store::DeliveryStatus::Failed)),
        Err(_) => Err(invalid("status", format!("unknown value {raw}"))),
    }
}

pub fn delivery(d: &billing_store::WebhookDelivery) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: d.id.to_string(),
        webhook_id: d.webhook_id.to_string(),
        event_type: d.event_type.clone(),
        account_id: d.account_id.to_string(),
        account_version: d.account_version,
        status: delivery_status(d.status).into(),
        attempts: d.attempts,
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
        next_attempt_at: d.next_attempt_at.map(timestamp),
        delivered_at: d.delivered_at.map(timestamp),
        message_id: d.message_id.clone(),
        created_at: Some(timestamp(d.created_at)),
        replay: d.replay,
    }
}
