//! How admin replies are printed: tables and labelled lines for a person at
//! a terminal, the API's own JSON with `--json` for a script.

use std::io::Write as _;

use billing_proto::v1 as pb;
use prost_types::Timestamp;

use super::Key;
use super::amount::{format_money, format_units};
use super::table::{Align, Table, enum_label, pairs};
use crate::call::{message_json, print_json};

type Printed = anyhow::Result<()>;

/// Where replies go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn accounts(&self, page: &pb::ListBillingAccountsResponse) -> Printed {
        if self.json {
            return print_json(&message_json("ListBillingAccountsResponse", page)?);
        }
        let mut table = Table::new(&[
            ("ID", Align::Left),
            ("CUSTOMER", Align::Left),
            ("NAME", Align::Left),
            ("STATUS", Align::Left),
            ("PLAN", Align::Left),
            ("BALANCE", Align::Right),
            ("AVAILABLE", Align::Right),
            ("TOKENS", Align::Right),
            ("CURRENCY", Align::Left),
        ]);
        for account in &page.billing_accounts {
            table.row(vec![
                account.id.clone(),
                account.customer_id.clone(),
                account.name.clone(),
                status(account),
                plan(account),
                format_units(account.balance_credit),
                format_units(account.available_credit),
                account.available_token.to_string(),
                account.currency.clone(),
            ]);
        }
        let mut text = if table.is_empty() {
            "no accounts\n".to_owned()
        } else {
            table.render()
        };
        next_page(&mut text, &page.next_page_token);
        say(&text)
    }

    pub fn show(&self, account: &pb::BillingAccount, balance: &pb::Balance) -> Printed {
        if self.json {
            return print_json(&serde_json::json!({
                "account": message_json("BillingAccount", account)?,
                "balance": message_json("Balance", balance)?,
            }));
        }
        say(&account_lines(account, Some(balance)))
    }

    pub fn ledger(
        &self,
        account: &pb::BillingAccount,
        page: &pb::ListTransactionsResponse,
    ) -> Printed {
        if self.json {
            return print_json(&message_json("ListTransactionsResponse", page)?);
        }
        let mut table = Table::new(&[
            ("VERSION", Align::Right),
            ("TIME (UTC)", Align::Left),
            ("TYPE", Align::Left),
            ("REFERENCE", Align::Left),
            ("UNITS", Align::Right),
            ("CREDIT", Align::Right),
            ("PROMOTIONAL", Align::Right),
            ("TOKENS", Align::Right),
            ("BALANCE AFTER", Align::Right),
            ("PROMO AFTER", Align::Right),
            ("TOKENS AFTER", Align::Right),
            ("BY", Align::Left),
        ]);
        for entry in &page.transactions {
            let reference = enum_label(entry.reference_type().as_str_name(), "REFERENCE_TYPE_");
            let reference = if entry.reference_id.is_empty() {
                reference
            } else {
                format!("{reference} {}", entry.reference_id)
            };
            table.row(vec![
                entry.version.to_string(),
                when(entry.tm_create.as_ref()),
                enum_label(entry.transaction_type().as_str_name(), "TRANSACTION_TYPE_"),
                reference,
                entry.billable_units.to_string(),
                format_units(entry.amount_credit),
                format_units(entry.amount_promotional),
                entry.amount_token.to_string(),
                format_units(entry.balance_credit_after),
                format_units(entry.balance_promotional_after),
                entry.balance_token_after.to_string(),
                entry.actor.clone(),
            ]);
        }
        let mut text = format!(
            "ledger of {} ({}), newest first, credit in {}\n",
            account.id, account.name, account.currency
        );
        if table.is_empty() {
            text.push_str("no entries\n");
        } else {
            text.push_str(&table.render());
        }
        next_page(&mut text, &page.next_page_token);
        say(&text)
    }

    /// A change's reply: the account as it now stands, and the idempotency
    /// key when one was made for the operator.
    pub fn changed(
        &self,
        key: &Key,
        reply: &impl prost::Message,
        reply_name: &str,
        account: Option<&pb::BillingAccount>,
    ) -> Printed {
        if self.json {
            let mut json = message_json(reply_name, reply)?;
            if let Some(object) = json.as_object_mut() {
                object.insert("idempotency_key".into(), key.value.clone().into());
            }
            return print_json(&json);
        }
        let mut text = String::new();
        if key.made {
            text.push_str(&format!(
                "idempotency key {} (to retry safely, run the same command with --key {})\n",
                key.value, key.value
            ));
        }
        if let Some(account) = account {
            text.push_str(&account_lines(account, None));
        }
        say(&text)
    }
}

/// An account's details; with its balance view when there is one.
fn account_lines(account: &pb::BillingAccount, balance: Option<&pb::Balance>) -> String {
    let currency = account.currency.as_str();
    let money = |micros: i64| format_money(micros, currency);
    let mut rows = vec![
        ("account", format!("{} ({})", account.id, account.name)),
        ("customer", account.customer_id.clone()),
        ("status", status(account)),
        (
            "plan",
            format!(
                "{} ({})",
                plan(account),
                enum_label(account.plan_status().as_str_name(), "PLAN_STATUS_")
            ),
        ),
        ("balance", money(account.balance_credit)),
        ("reserved", money(account.reserved_credit)),
    ];
    if let Some(balance) = balance {
        rows.push(("promotional", money(balance.promotional_balance)));
    } else {
        rows.push(("promotional", money(account.balance_promotional)));
    }
    // Each grant on a line of its own, in the order they are spent.
    for grant in &account.promotional_grants {
        let until = match &grant.expires_at {
            Some(at) => format!("until {}", when(Some(at))),
            None => "never expires".to_owned(),
        };
        rows.push((
            "  grant",
            format!(
                "{} {until} (granted at version {})",
                money(grant.remaining),
                grant.grant_version
            ),
        ));
    }
    if let Some(balance) = balance {
        rows.push(("available", money(balance.available_balance)));
    } else {
        rows.push(("available", money(account.available_credit)));
    }
    rows.extend([
        (
            "tokens",
            format!(
                "{} (reserved {}, available {})",
                account.balance_token, account.reserved_token, account.available_token
            ),
        ),
        (
            "credit limit",
            format!(
                "{}, {}{}",
                money(account.credit_limit),
                enum_label(
                    account.credit_limit_type().as_str_name(),
                    "CREDIT_LIMIT_TYPE_"
                ),
                if account.is_postpaid {
                    ", postpaid"
                } else {
                    ", prepaid"
                }
            ),
        ),
        ("low balance at", money(account.low_balance_threshold)),
        ("last top-up", when(account.tm_last_topup.as_ref())),
        ("next tokens", when(account.tm_next_topup.as_ref())),
        ("created", when(account.tm_create.as_ref())),
        ("updated", when(account.tm_update.as_ref())),
        ("version", account.version.to_string()),
    ]);
    if account.over_limit {
        rows.push((
            "over limit",
            "yes: spent past its limit (soft limit)".into(),
        ));
    }
    pairs(&rows)
}

fn status(account: &pb::BillingAccount) -> String {
    enum_label(account.status().as_str_name(), "ACCOUNT_STATUS_")
}

fn plan(account: &pb::BillingAccount) -> String {
    enum_label(account.plan_type().as_str_name(), "PLAN_TYPE_")
}

/// `2026-11-22 03:44:07` (UTC, to the second), or `-`.
pub(super) fn when(at: Option<&Timestamp>) -> String {
    match at {
        None => "-".into(),
        Some(at) => {
            let text = at.to_string().replacen('T', " ", 1);
            let seconds = text
                .find('.')
                .or_else(|| text.find('Z'))
                .unwrap_or(text.len());
            text[..seconds].to_owned()
        }
    }
}

pub(super) fn next_page(text: &mut String, token: &str) {
    if !token.is_empty() {
        text.push_str(&format!("more: --page-token {token}\n"));
    }
}

/// Prints `text`; a closed pipe (`| head`) is no error of ours.
pub(super) fn say(text: &str) -> Printed {
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(())
}
