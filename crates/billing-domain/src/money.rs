//! Integer amounts: credit in micros and tokens, with checked arithmetic only.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An arithmetic result that does not fit in an `i64`. It rejects the request;
/// it is never wrapped or saturated into a wrong amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("amount out of range")]
pub struct Overflow;

macro_rules! amount {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            pub const ZERO: Self = Self(0);

            pub const fn get(self) -> i64 {
                self.0
            }

            pub fn checked_add(self, other: Self) -> Result<Self, Overflow> {
                self.0.checked_add(other.0).map(Self).ok_or(Overflow)
            }

            pub fn checked_sub(self, other: Self) -> Result<Self, Overflow> {
                self.0.checked_sub(other.0).map(Self).ok_or(Overflow)
            }

            /// The amount for `units` units at `self` per unit.
            pub fn times(self, units: i64) -> Result<Self, Overflow> {
                self.0.checked_mul(units).map(Self).ok_or(Overflow)
            }

            pub const fn is_zero(self) -> bool {
                self.0 == 0
            }

            pub const fn is_negative(self) -> bool {
                self.0 < 0
            }

            pub const fn is_positive(self) -> bool {
                self.0 > 0
            }

            /// The amount, or zero when it is negative.
            pub fn at_least_zero(self) -> Self {
                Self(self.0.max(0))
            }

            /// Sums amounts, failing on overflow.
            pub fn checked_sum<I: IntoIterator<Item = Self>>(items: I) -> Result<Self, Overflow> {
                items.into_iter().try_fold(Self::ZERO, Self::checked_add)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

amount!(
    /// Credit in micros of the account's currency (1 USD = 1,000,000 micros).
    Micros
);
amount!(
    /// A count of plan tokens.
    Tokens
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Micros(i64::MAX).checked_add(Micros(1)), Err(Overflow));
        assert_eq!(Micros(i64::MIN).checked_sub(Micros(1)), Err(Overflow));
        assert_eq!(Micros(10_000).times(i64::MAX), Err(Overflow));
        assert_eq!(Micros(10_000).times(3), Ok(Micros(30_000)));
        assert_eq!(Tokens::checked_sum([Tokens(1), Tokens(2)]), Ok(Tokens(3)));
        assert_eq!(Micros(-5).at_least_zero(), Micros::ZERO);
    }

    #[test]
    fn serializes_as_a_json_integer() {
        assert_eq!(
            serde_json::to_string(&Micros(69_772_630)).ok(),
            Some("69772630".into())
        );
    }
}
