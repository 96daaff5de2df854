//! The rate table, billable units, and pricing (the token-first rule).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{ServiceType, Unit};
use crate::money::{Micros, Overflow, Tokens};

/// How a service is paid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChargeMode {
    /// Whole units from tokens while they cover a unit, the rest from credit.
    TokenFirst,
    /// Every unit from credit.
    CreditOnly,
    /// Nothing to pay.
    Free,
}

/// The price of one unit of a service. Every charge records the rate it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub mode: ChargeMode,
    /// Tokens per unit; meaningful for token-first services only.
    #[serde(default)]
    pub tokens_per_unit: Tokens,
    /// Micros per unit when a unit is paid from credit.
    #[serde(default)]
    pub credit_per_unit: Micros,
}

/// Whether the account's plan meters tokens at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMetering {
    Metered,
    /// The plan covers token-first units outright (the unlimited plan).
    Unmetered,
}

/// What `units` units cost, split between tokens and credit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub units: i64,
    pub tokens: Tokens,
    pub credit: Micros,
}

impl Rate {
    pub const fn credit_only(credit_per_unit: i64) -> Self {
        Self {
            mode: ChargeMode::CreditOnly,
            tokens_per_unit: Tokens(0),
            credit_per_unit: Micros(credit_per_unit),
        }
    }

    pub const fn token_first(tokens_per_unit: i64, credit_per_unit: i64) -> Self {
        Self {
            mode: ChargeMode::TokenFirst,
            tokens_per_unit: Tokens(tokens_per_unit),
            credit_per_unit: Micros(credit_per_unit),
        }
    }

    pub const FREE: Self = Self {
        mode: ChargeMode::Free,
        tokens_per_unit: Tokens(0),
        credit_per_unit: Micros(0),
    };

    /// How many of `units` tokens pay for, given `available_tokens`.
    fn token_units(&self, units: i64, available_tokens: Tokens) -> i64 {
        match self.mode {
            ChargeMode::TokenFirst if self.tokens_per_unit.is_positive() => {
                (available_tokens.at_least_zero().get() / self.tokens_per_unit.get()).min(units)
            }
            _ => 0,
        }
    }

    /// The price of `units` units: for token-first services, whole units from
    /// `available_tokens` while they cover a unit, the rest on credit.
    pub fn price(
        &self,
        units: i64,
        available_tokens: Tokens,
        metering: TokenMetering,
    ) -> Result<Price, Overflow> {
        let free = Price {
            units,
            tokens: Tokens::ZERO,
            credit: Micros::ZERO,
        };
        match (self.mode, metering) {
            (ChargeMode::Free, _) | (ChargeMode::TokenFirst, TokenMetering::Unmetered) => Ok(free),
            (ChargeMode::CreditOnly, _) => Ok(Price {
                credit: self.credit_per_unit.times(units)?,
                ..free
            }),
            (ChargeMode::TokenFirst, TokenMetering::Metered) => {
                let token_units = self.token_units(units, available_tokens);
                Ok(Price {
                    units,
                    tokens: self.tokens_per_unit.times(token_units)?,
                    credit: self.credit_per_unit.times(units - token_units)?,
                })
            }
        }
    }

    /// The most units, up to `cap`, that can be paid from `available_tokens`
    /// and `available_credit` (credit may not go below zero).
    pub fn max_affordable_units(
        &self,
        cap: i64,
        available_tokens: Tokens,
        available_credit: Micros,
        metering: TokenMetering,
    ) -> i64 {
        let uncharged = matches!(
            (self.mode, metering),
            (ChargeMode::Free, _) | (ChargeMode::TokenFirst, TokenMetering::Unmetered)
        );
        if uncharged {
            return cap;
        }
        let from_tokens = match metering {
            TokenMetering::Metered => self.token_units(cap, available_tokens),
            TokenMetering::Unmetered => 0,
        };
        let from_credit = if self.credit_per_unit.is_positive() {
            available_credit.at_least_zero().get() / self.credit_per_unit.get()
        } else {
            i64::MAX
        };
        from_tokens.saturating_add(from_credit).min(cap)
    }
}

/// Usage as measured by call control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Usage {
    /// A duration in milliseconds, for per-minute services.
    DurationMs(i64),
    /// A count of targets, destinations or numbers.
    Quantity(i64),
}

/// Why a usage does not fit its service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("{field} must not be negative")]
    Negative { field: &'static str },
    #[error("{service} is billed per {unit}: set {expected}, not {unexpected}")]
    WrongMeasure {
        service: ServiceType,
        unit: Unit,
        expected: &'static str,
        unexpected: &'static str,
    },
}

impl Usage {
    /// Picks the measure that fits `service` from a request's two fields;
    /// the other one must be zero.
    pub fn for_service(
        service: ServiceType,
        duration_ms: i64,
        quantity: i64,
        duration_field: &'static str,
        quantity_field: &'static str,
    ) -> Result<Self, UsageError> {
        let per_minute = service.unit() == Unit::Minute;
        let (value, field, other, other_field) = if per_minute {
            (duration_ms, duration_field, quantity, quantity_field)
        } else {
            (quantity, quantity_field, duration_ms, duration_field)
        };
        if value < 0 {
            return Err(UsageError::Negative { field });
        }
        if other != 0 {
            return Err(UsageError::WrongMeasure {
                service,
                unit: service.unit(),
                expected: field,
                unexpected: other_field,
            });
        }
        Ok(if per_minute {
            Self::DurationMs(value)
        } else {
            Self::Quantity(value)
        })
    }

    /// Billable units: a duration is truncated to whole seconds, then
    /// ceiling-rounded to whole minutes (60.9 s is 1 minute, 2 min 15 s is 3,
    /// under 1 s is 0); a quantity is one unit per item.
    pub const fn billable_units(self) -> i64 {
        match self {
            Self::DurationMs(ms) => {
                let seconds = ms / 1_000;
                seconds / 60 + if seconds % 60 == 0 { 0 } else { 1 }
            }
            Self::Quantity(n) => n,
        }
    }
}

/// Rates per service type. Configurable; defaults to VoIPBIN's current table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<ServiceType, Rate>",
    into = "BTreeMap<ServiceType, Rate>"
)]
pub struct RateTable {
    /// Holds a rate for every service type (checked on construction).
    rates: BTreeMap<ServiceType, Rate>,
}

/// A rate table that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateTableError {
    #[error("the rate table has no rate for {0}")]
    Missing(ServiceType),
    #[error("the rate for {0} is negative")]
    Negative(ServiceType),
    #[error("{0} is token-first but has no positive tokens_per_unit")]
    NoTokensPerUnit(ServiceType),
    #[error("the rate table does not parse: {0}")]
    Syntax(String),
}

impl Default for RateTable {
    fn default() -> Self {
        use ServiceType::*;
        let rates = BTreeMap::from([
            (CallVn, Rate::token_first(1, 1_000)),
            (CallPstnOutgoing, Rate::credit_only(10_000)),
            (CallPstnIncoming, Rate::credit_only(10_000)),
            (CallExtension, Rate::FREE),
            (Sms, Rate::credit_only(10_000)),
            (Email, Rate::credit_only(10_000)),
            (Number, Rate::credit_only(5_000_000)),
            (NumberRenew, Rate::credit_only(5_000_000)),
            (Tts, Rate::token_first(3, 30_000)),
            (Recording, Rate::token_first(3, 30_000)),
        ]);
        Self { rates }
    }
}

impl TryFrom<BTreeMap<ServiceType, Rate>> for RateTable {
    type Error = RateTableError;

    fn try_from(rates: BTreeMap<ServiceType, Rate>) -> Result<Self, Self::Error> {
        for service in ServiceType::ALL {
            let rate = rates
                .get(service)
                .ok_or(RateTableError::Missing(*service))?;
            if rate.tokens_per_unit.is_negative() || rate.credit_per_unit.is_negative() {
                return Err(RateTableError::Negative(*service));
            }
            if rate.mode == ChargeMode::TokenFirst && !rate.tokens_per_unit.is_positive() {
                return Err(RateTableError::NoTokensPerUnit(*service));
            }
        }
        Ok(Self { rates })
    }
}

impl From<RateTable> for BTreeMap<ServiceType, Rate> {
    fn from(table: RateTable) -> Self {
        table.rates
    }
}

impl RateTable {
    /// Parses a TOML table of `[service_type]` sections, each with `mode`,
    /// `tokens_per_unit` and `credit_per_unit`; every service must be present.
    pub fn from_toml(text: &str) -> Result<Self, RateTableError> {
        toml::from_str(text).map_err(|e| RateTableError::Syntax(e.to_string()))
    }

    /// The table in the TOML form `from_toml` reads.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub fn get(&self, service: ServiceType) -> Rate {
        // Construction guarantees every service type has a rate.
        self.rates.get(&service).copied().unwrap_or(Rate::FREE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenMetering::Metered;

    fn units(ms: i64) -> i64 {
        Usage::DurationMs(ms).billable_units()
    }

    #[test]
    fn durations_truncate_to_seconds_then_ceil_to_minutes() {
        assert_eq!(units(0), 0);
        assert_eq!(units(999), 0);
        assert_eq!(units(1_000), 1);
        assert_eq!(units(60_000), 1);
        assert_eq!(units(60_900), 1);
        assert_eq!(units(61_000), 2);
        assert_eq!(units(135_000), 3);
        assert_eq!(units(150_000), 3);
        assert_eq!(units(i64::MAX), i64::MAX / 1_000 / 60 + 1);
    }

    #[test]
    fn usage_must_match_the_service_unit() {
        let usage = |s, d, q| Usage::for_service(s, d, q, "duration_ms", "quantity");
        assert_eq!(usage(ServiceType::Sms, 0, 10), Ok(Usage::Quantity(10)));
        assert_eq!(
            usage(ServiceType::CallVn, 5_000, 0),
            Ok(Usage::DurationMs(5_000))
        );
        assert!(matches!(
            usage(ServiceType::Sms, 1, 10),
            Err(UsageError::WrongMeasure { .. })
        ));
        assert!(matches!(
            usage(ServiceType::CallVn, -1, 0),
            Err(UsageError::Negative { .. })
        ));
    }

    #[test]
    fn seed_examples_price_as_documented() {
        let table = RateTable::default();
        let vn = table.get(ServiceType::CallVn);
        let with_tokens = vn.price(5, Tokens(70), Metered).unwrap();
        assert_eq!(
            (with_tokens.tokens, with_tokens.credit),
            (Tokens(5), Micros(0))
        );
        let no_tokens = vn.price(5, Tokens(0), Metered).unwrap();
        assert_eq!(
            (no_tokens.tokens, no_tokens.credit),
            (Tokens(0), Micros(5_000))
        );
        let overflow = vn.price(5, Tokens(3), Metered).unwrap();
        assert_eq!(
            (overflow.tokens, overflow.credit),
            (Tokens(3), Micros(2_000))
        );

        let pstn = table.get(ServiceType::CallPstnOutgoing);
        let pstn_units = units(150_000);
        assert_eq!(
            pstn.price(pstn_units, Tokens(100), Metered).unwrap().credit,
            Micros(30_000)
        );
        let sms = table.get(ServiceType::Sms);
        assert_eq!(
            sms.price(10, Tokens(100), Metered).unwrap().credit,
            Micros(100_000)
        );
    }

    #[test]
    fn token_first_uses_whole_units_only() {
        let tts = RateTable::default().get(ServiceType::Tts);
        let price = tts.price(4, Tokens(2), Metered).unwrap();
        assert_eq!((price.tokens, price.credit), (Tokens(0), Micros(120_000)));
        let price = tts.price(4, Tokens(7), Metered).unwrap();
        assert_eq!((price.tokens, price.credit), (Tokens(6), Micros(60_000)));
    }

    #[test]
    fn unmetered_plans_cover_token_first_services_but_not_credit_only() {
        let table = RateTable::default();
        let vn = table
            .get(ServiceType::CallVn)
            .price(5, Tokens(0), TokenMetering::Unmetered);
        assert_eq!(vn.unwrap().credit, Micros(0));
        let sms = table
            .get(ServiceType::Sms)
            .price(1, Tokens(0), TokenMetering::Unmetered);
        assert_eq!(sms.unwrap().credit, Micros(10_000));
    }

    #[test]
    fn max_affordable_counts_tokens_then_credit() {
        let vn = RateTable::default().get(ServiceType::CallVn);
        assert_eq!(
            vn.max_affordable_units(10, Tokens(3), Micros(2_500), Metered),
            5
        );
        assert_eq!(
            vn.max_affordable_units(4, Tokens(3), Micros(2_500), Metered),
            4
        );
        assert_eq!(
            vn.max_affordable_units(10, Tokens(0), Micros(-1), Metered),
            0
        );
        let free = Rate::FREE;
        assert_eq!(
            free.max_affordable_units(7, Tokens(0), Micros(-1), Metered),
            7
        );
    }

    #[test]
    fn the_rate_table_round_trips_through_toml_and_rejects_gaps() {
        let table = RateTable::default();
        assert_eq!(RateTable::from_toml(&table.to_toml()), Ok(table));
        let partial = "[sms]\nmode = \"credit-only\"\ncredit_per_unit = 1\n";
        assert!(matches!(
            RateTable::from_toml(partial),
            Err(RateTableError::Syntax(_))
        ));
    }
}
