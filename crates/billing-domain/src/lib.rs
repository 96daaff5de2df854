//! The billing domain: money, rates and billable units, and the account
//! aggregate's `decide`/`evolve`. It does no I/O and has no async: time and
//! new ids come in with each call, so every function here is deterministic.
//!
//! - [`money`]: `Micros` and `Tokens`, with checked arithmetic only.
//! - [`catalog`]: service types, units, plans, statuses, currencies.
//! - [`rates`]: the rate table, billable units and the token-first rule.
//! - [`account`]: the aggregate state and the views replies are built from.
//! - [`event`]: the events and `Account::apply` (evolve).
//! - [`command`]: commands, outcomes and rejections.
//! - [`decide`]: `create` and `execute` (decide), and `quote`.
//! - [`estimate`]: a basket's price and a month's plan comparison.
//! - [`ledger`]: which events move money, for the transaction ledger.
//! - [`timestamp`]: fast RFC 3339 serialization of stored times.
//! - [`view`]: a view folded from an earlier one (`AccountView::after`).

#![forbid(unsafe_code)]

pub mod account;
pub mod catalog;
pub mod command;
pub mod decide;
pub mod estimate;
pub mod event;
pub mod ledger;
pub mod money;
pub mod rates;
pub mod timestamp;
pub mod view;

pub use account::{
    Account, AccountView, Balances, Hold, MAX_PROMOTIONS, Promotion, PromotionSpend,
    ReservationView,
};
pub use catalog::*;
pub use command::*;
pub use decide::{Executed, Quote, as_of, create, execute, quote};
pub use event::{EVENT_SCHEMA_VERSION, Event, Recorded};
pub use ledger::{LedgerLine, TransactionType, ledger_line};
pub use money::{Micros, Overflow, Tokens};
pub use rates::{ChargeMode, Price, Rate, RateTable, TokenMetering, Usage};
