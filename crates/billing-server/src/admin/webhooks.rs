//! `billing admin webhooks …`: a customer's webhooks and their deliveries,
//! for a support ticket: list, create, show, enable or disable, rotate the
//! secret, delete; a webhook's deliveries, a failed one sent again, a
//! replay since an instant.

use billing_proto::v1 as pb;
use clap::{Subcommand, ValueEnum};
use tonic::Status;
use uuid::Uuid;

use super::table::{Align, Table, enum_label, pairs};
use super::view::{Output, next_page, say, when};
use super::{Client, Printed};
use crate::call::{message_json, print_json};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// List webhooks: one customer's, or (an admin) everyone's.
    List {
        /// Only this customer's (a customer_admin: its own by default).
        #[arg(long)]
        customer: Option<Uuid>,
        /// Webhooks per page (at most 100).
        #[arg(long, default_value_t = 50)]
        limit: i32,
        /// The page after a previous listing (it prints the token).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Register a webhook; prints its signing secret, once.
    Create {
        /// The customer whose accounts it receives (a customer_admin: its
        /// own by default).
        #[arg(long)]
        customer: Option<Uuid>,
        /// For people.
        #[arg(long, default_value = "")]
        name: String,
        /// The absolute http(s) URL deliveries go to.
        #[arg(long)]
        uri: String,
        /// POST (the default) or PUT.
        #[arg(long, default_value = "POST")]
        method: String,
        /// account_updated, balance_low, balance_recovered or
        /// credit_limit_exceeded; repeat for more.
        #[arg(long = "event-type", required = true)]
        event_types: Vec<String>,
        /// Only this account of the customer; repeat for more (none: all).
        #[arg(long = "account")]
        accounts: Vec<Uuid>,
        /// The idempotency key: a retry with it returns the first webhook.
        #[arg(long)]
        key: Option<String>,
    },
    /// A webhook's settings.
    Show { webhook_id: Uuid },
    /// Send to a webhook again (clears its disabled reason).
    Enable { webhook_id: Uuid },
    /// Stop sending to a webhook (its pending deliveries wait).
    Disable { webhook_id: Uuid },
    /// A new signing secret, printed once; the old one keeps signing beside
    /// it for the overlap.
    Rotate {
        webhook_id: Uuid,
        /// Seconds the old secret keeps signing: 0 to 604800 (default
        /// 86400; 0 retires it at once).
        #[arg(long)]
        overlap_seconds: Option<i64>,
    },
    /// Remove a webhook and its deliveries.
    Delete { webhook_id: Uuid },
    /// A webhook's deliveries, newest first.
    Deliveries {
        webhook_id: Uuid,
        /// Only deliveries in this status.
        #[arg(long, value_enum)]
        status: Option<DeliveryStatus>,
        /// Deliveries per page (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: i32,
        /// The page after a previous listing (it prints the token).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Send a failed delivery again (the retry schedule starts over).
    Retry { delivery_id: Uuid },
    /// Send again every change the webhook was sent since an instant.
    Replay {
        webhook_id: Uuid,
        /// RFC 3339, e.g. 2026-11-22T00:00:00Z.
        #[arg(long)]
        since: prost_types::Timestamp,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl From<DeliveryStatus> for pb::WebhookDeliveryStatus {
    fn from(status: DeliveryStatus) -> Self {
        match status {
            DeliveryStatus::Pending => Self::Pending,
            DeliveryStatus::Delivered => Self::Delivered,
            DeliveryStatus::Failed => Self::Failed,
        }
    }
}

pub async fn run(
    client: &mut Client,
    out: &Output,
    command: WebhookCommand,
) -> Result<Printed, Status> {
    let id = |id: Uuid| id.to_string();
    match command {
        WebhookCommand::List {
            customer,
            limit,
            page_token,
        } => {
            let page = client
                .list_webhooks(pb::ListWebhooksRequest {
                    customer_id: customer.map(id).unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            Ok(list(out, &page))
        }
        WebhookCommand::Create {
            customer,
            name,
            uri,
            method,
            event_types,
            accounts,
            key,
        } => {
            let webhook = client
                .create_webhook(pb::CreateWebhookRequest {
                    customer_id: customer.map(id).unwrap_or_default(),
                    name,
                    uri,
                    method,
                    event_types,
                    account_ids: accounts.into_iter().map(id).collect(),
                    idempotency_key: key.unwrap_or_default(),
                })
                .await?
                .into_inner();
            Ok(show(out, &webhook))
        }
        WebhookCommand::Show { webhook_id } => {
            let webhook = client
                .get_webhook(pb::GetWebhookRequest { id: id(webhook_id) })
                .await?
                .into_inner();
            Ok(show(out, &webhook))
        }
        WebhookCommand::Enable { webhook_id } | WebhookCommand::Disable { webhook_id } => {
            let enabled = matches!(command, WebhookCommand::Enable { .. });
            let webhook = client
                .update_webhook(pb::UpdateWebhookRequest {
                    id: id(webhook_id),
                    enabled: Some(enabled),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(show(out, &webhook))
        }
        WebhookCommand::Rotate {
            webhook_id,
            overlap_seconds,
        } => {
            let webhook = client
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                    id: id(webhook_id),
                    overlap_seconds,
                })
                .await?
                .into_inner();
            Ok(show(out, &webhook))
        }
        WebhookCommand::Delete { webhook_id } => {
            let reply = client
                .delete_webhook(pb::DeleteWebhookRequest { id: id(webhook_id) })
                .await?
                .into_inner();
            Ok(if out.json {
                message_json("DeleteWebhookResponse", &reply).and_then(|j| print_json(&j))
            } else {
                say(&format!(
                    "deleted webhook {webhook_id} and its deliveries\n"
                ))
            })
        }
        WebhookCommand::Deliveries {
            webhook_id,
            status,
            limit,
            page_token,
        } => {
            let page = client
                .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                    webhook_id: id(webhook_id),
                    status: status
                        .map_or(pb::WebhookDeliveryStatus::Unspecified, Into::into)
                        .into(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            Ok(deliveries(out, &page))
        }
        WebhookCommand::Retry { delivery_id } => {
            let delivery = client
                .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest {
                    delivery_id: id(delivery_id),
                })
                .await?
                .into_inner();
            Ok(if out.json {
                message_json("WebhookDelivery", &delivery).and_then(|j| print_json(&j))
            } else {
                say(&delivery_lines(&delivery))
            })
        }
        WebhookCommand::Replay { webhook_id, since } => {
            let reply = client
                .replay_webhook(pb::ReplayWebhookRequest {
                    webhook_id: id(webhook_id),
                    since: Some(since),
                })
                .await?
                .into_inner();
            Ok(if out.json {
                message_json("ReplayWebhookResponse", &reply).and_then(|j| print_json(&j))
            } else {
                let mut text = format!("queued {} deliveries again\n", reply.replayed);
                if reply.truncated {
                    text.push_str(&format!(
                        "more: --since {}\n",
                        reply.next_since.map(|t| t.to_string()).unwrap_or_default()
                    ));
                }
                say(&text)
            })
        }
    }
}

fn status(webhook: &pb::Webhook) -> String {
    enum_label(webhook.status().as_str_name(), "WEBHOOK_STATUS_")
}

fn list(out: &Output, page: &pb::ListWebhooksResponse) -> Printed {
    if out.json {
        return print_json(&message_json("ListWebhooksResponse", page)?);
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("CUSTOMER", Align::Left),
        ("NAME", Align::Left),
        ("STATUS", Align::Left),
        ("METHOD", Align::Left),
        ("URI", Align::Left),
        ("EVENTS", Align::Left),
        ("ACCOUNTS", Align::Right),
    ]);
    for webhook in &page.webhooks {
        table.row(vec![
            webhook.id.clone(),
            webhook.customer_id.clone(),
            webhook.name.clone(),
            status(webhook),
            webhook.method.clone(),
            webhook.uri.clone(),
            webhook.event_types.join(","),
            if webhook.account_ids.is_empty() {
                "all".to_owned()
            } else {
                webhook.account_ids.len().to_string()
            },
        ]);
    }
    let mut text = if table.is_empty() {
        "no webhooks\n".to_owned()
    } else {
        table.render()
    };
    next_page(&mut text, &page.next_page_token);
    say(&text)
}

fn show(out: &Output, webhook: &pb::Webhook) -> Printed {
    if out.json {
        return print_json(&message_json("Webhook", webhook)?);
    }
    let accounts = if webhook.account_ids.is_empty() {
        "all of the customer's".to_owned()
    } else {
        webhook.account_ids.join(", ")
    };
    let mut rows = vec![
        ("webhook", format!("{} ({})", webhook.id, webhook.name)),
        ("customer", webhook.customer_id.clone()),
        ("status", status(webhook)),
    ];
    if !webhook.disabled_reason.is_empty() {
        rows.push(("disabled", webhook.disabled_reason.clone()));
    }
    rows.extend([
        ("sends", format!("{} {}", webhook.method, webhook.uri)),
        ("events", webhook.event_types.join(", ")),
        ("accounts", accounts),
        ("created", when(webhook.created_at.as_ref())),
        ("updated", when(webhook.updated_at.as_ref())),
    ]);
    if let Some(at) = &webhook.failing_since {
        rows.push(("failing since", when(Some(at))));
    }
    if let Some(until) = &webhook.previous_secret_expires_at {
        rows.push(("old secret until", when(Some(until))));
    }
    if !webhook.secret.is_empty() {
        rows.push(("secret", webhook.secret.clone()));
    }
    let mut text = pairs(&rows);
    if !webhook.secret.is_empty() {
        text.push_str("(the secret is shown only now: keep it where the receiver reads it)\n");
    }
    say(&text)
}

fn delivery_status(delivery: &pb::WebhookDelivery) -> String {
    enum_label(delivery.status().as_str_name(), "WEBHOOK_DELIVERY_STATUS_")
}

fn deliveries(out: &Output, page: &pb::ListWebhookDeliveriesResponse) -> Printed {
    if out.json {
        return print_json(&message_json("ListWebhookDeliveriesResponse", page)?);
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("CREATED (UTC)", Align::Left),
        ("EVENT", Align::Left),
        ("ACCOUNT", Align::Left),
        ("VERSION", Align::Right),
        ("STATUS", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("LAST", Align::Right),
        ("NEXT (UTC)", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for d in &page.deliveries {
        table.row(vec![
            d.id.clone(),
            when(d.created_at.as_ref()),
            if d.replay > 0 {
                format!("{} (replay {})", d.event_type, d.replay)
            } else {
                d.event_type.clone()
            },
            d.account_id.clone(),
            d.account_version.to_string(),
            delivery_status(d),
            d.attempts.to_string(),
            d.last_status_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            when(d.next_attempt_at.as_ref()),
            d.last_error.clone(),
        ]);
    }
    let mut text = if table.is_empty() {
        "no deliveries\n".to_owned()
    } else {
        table.render()
    };
    next_page(&mut text, &page.next_page_token);
    say(&text)
}

fn delivery_lines(d: &pb::WebhookDelivery) -> String {
    pairs(&[
        ("delivery", d.id.clone()),
        ("webhook", d.webhook_id.clone()),
        ("message", d.message_id.clone()),
        (
            "change",
            format!(
                "{} of {} version {}",
                d.event_type, d.account_id, d.account_version
            ),
        ),
        ("status", delivery_status(d)),
        ("attempts", d.attempts.to_string()),
        ("next attempt", when(d.next_attempt_at.as_ref())),
    ])
}
