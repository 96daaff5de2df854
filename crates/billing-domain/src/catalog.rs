//! The closed sets of names the billing rules speak of: service types and their
//! units, reference types, plans, statuses, and currencies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::Tokens;

/// Generates `as_str`, `ALL`, `Display` and `FromStr` from one list of
/// variant/name pairs, so that a name is written exactly once.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The lowercase name used in storage, JSON and configuration.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownName(s.to_owned())),
                }
            }
        }
    };
}

/// A name outside a closed set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown name `{0}`")]
pub struct UnknownName(pub String);

named_enum!(
    /// What is being charged for.
    ServiceType {
        CallVn => "call_vn",
        CallPstnOutgoing => "call_pstn_outgoing",
        CallPstnIncoming => "call_pstn_incoming",
        CallExtension => "call_extension",
        Sms => "sms",
        Email => "email",
        Number => "number",
        NumberRenew => "number_renew",
        Tts => "tts",
        Recording => "recording",
    }
);

named_enum!(
    /// The unit a service is billed in.
    Unit {
        Minute => "minute",
        Target => "target",
        Destination => "destination",
        Number => "number",
    }
);

named_enum!(
    /// What a money movement refers to, for the ledger.
    ReferenceType {
        Call => "call",
        Sms => "sms",
        Email => "email",
        Number => "number",
        NumberRenew => "number_renew",
        Tts => "tts",
        Recording => "recording",
        Payment => "payment",
        Refund => "refund",
        ManualAdjustment => "manual_adjustment",
        MonthlyAllowance => "monthly_allowance",
        Promotion => "promotion",
    }
);

named_enum!(
    /// Which credit an amount is in: paid credit (cash, withdrawable) or
    /// promotional credit (granted, spent first, never paid out).
    Bucket {
        Paid => "paid",
        Promotional => "promotional",
    }
);

// `named_enum!` takes no attributes on variants, so no `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for Bucket {
    fn default() -> Self {
        Self::Paid
    }
}

impl Bucket {
    pub fn is_paid(&self) -> bool {
        *self == Self::Paid
    }
}

named_enum!(
    /// The subscription plan, which sets the monthly token allowance.
    PlanType {
        Free => "free",
        Basic => "basic",
        Professional => "professional",
        Unlimited => "unlimited",
    }
);

named_enum!(
    /// Whether the subscription renews.
    PlanStatus {
        Active => "active",
        Canceling => "canceling",
    }
);

named_enum!(
    /// A frozen account accepts no new reservations or debits.
    AccountStatus {
        Active => "active",
        Frozen => "frozen",
    }
);

named_enum!(
    /// Hard limits block spending past the available credit; soft limits let
    /// it through and mark the account over limit.
    CreditLimitType {
        Hard => "hard",
        Soft => "soft",
    }
);

named_enum!(
    /// The lifecycle of a reservation. Every state but `Active` is final.
    ReservationStatus {
        Active => "active",
        Committed => "committed",
        Released => "released",
        Expired => "expired",
    }
);

impl ServiceType {
    /// The unit this service is billed in.
    pub const fn unit(self) -> Unit {
        match self {
            Self::CallVn
            | Self::CallPstnOutgoing
            | Self::CallPstnIncoming
            | Self::CallExtension
            | Self::Tts
            | Self::Recording => Unit::Minute,
            Self::Sms => Unit::Target,
            Self::Email => Unit::Destination,
            Self::Number | Self::NumberRenew => Unit::Number,
        }
    }

    /// The ledger reference type a charge for this service gets by default.
    pub const fn reference_type(self) -> ReferenceType {
        match self {
            Self::CallVn
            | Self::CallPstnOutgoing
            | Self::CallPstnIncoming
            | Self::CallExtension => ReferenceType::Call,
            Self::Sms => ReferenceType::Sms,
            Self::Email => ReferenceType::Email,
            Self::Number => ReferenceType::Number,
            Self::NumberRenew => ReferenceType::NumberRenew,
            Self::Tts => ReferenceType::Tts,
            Self::Recording => ReferenceType::Recording,
        }
    }
}

impl PlanType {
    /// The monthly token allowance, or `None` for a plan without token
    /// metering (token-first services are then covered by the plan).
    pub const fn monthly_tokens(self) -> Option<Tokens> {
        match self {
            Self::Free => Some(Tokens(100)),
            Self::Basic => Some(Tokens(1_000)),
            Self::Professional => Some(Tokens(10_000)),
            Self::Unlimited => None,
        }
    }
}

/// An ISO 4217 currency code: three uppercase ASCII letters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn usd() -> Self {
        Self("USD".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(UnknownName(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = UnknownName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ServiceType::ALL {
            assert_eq!(s.as_str().parse::<ServiceType>(), Ok(*s));
        }
        for r in ReferenceType::ALL {
            assert_eq!(r.as_str().parse::<ReferenceType>(), Ok(*r));
        }
        assert!("CALL_VN".parse::<ServiceType>().is_err());
    }

    #[test]
    fn currency_must_be_three_uppercase_letters() {
        assert!("USD".parse::<Currency>().is_ok());
        assert!("usd".parse::<Currency>().is_err());
        assert!("US".parse::<Currency>().is_err());
        assert!("USDT".parse::<Currency>().is_err());
    }

    #[test]
    fn plans_grant_their_allowance() {
        assert_eq!(PlanType::Free.monthly_tokens(), Some(Tokens(100)));
        assert_eq!(PlanType::Basic.monthly_tokens(), Some(Tokens(1_000)));
        assert_eq!(
            PlanType::Professional.monthly_tokens(),
            Some(Tokens(10_000))
        );
        assert_eq!(PlanType::Unlimited.monthly_tokens(), None);
    }
}
