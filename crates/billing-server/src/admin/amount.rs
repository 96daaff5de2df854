//! Amounts as operators type and read them: decimal currency units, parsed
//! exactly into integer micros (never through floating point) and shown back
//! with the micros beside them.

/// Micros in one unit of any currency (1 USD = 1,000,000 micros).
pub const MICROS_PER_UNIT: i64 = 1_000_000;
const FRACTION_DIGITS: usize = 6;

/// Why an amount typed by an operator was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("an amount is digits with an optional sign and decimal point, like 20.00 or -0.50")]
    Malformed,
    #[error("more precise than a micro (at most 6 decimal places)")]
    TooPrecise,
    #[error("too large to hold in micros")]
    OutOfRange,
}

/// Parses `20.00`, `-5`, `0.000001` or `+1.5` into micros, exactly.
///
/// Digits beyond the sixth decimal place are refused unless they are zeros,
/// so nothing is ever rounded away. No thousands separators, no exponent.
pub fn parse_units(text: &str) -> Result<i64, AmountError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return Err(AmountError::Malformed);
    }
    let (kept, beyond) = fraction.split_at(fraction.len().min(FRACTION_DIGITS));
    if beyond.bytes().any(|b| b != b'0') {
        return Err(AmountError::TooPrecise);
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| AmountError::OutOfRange)?
    };
    let mut fraction: i64 = 0;
    for (i, b) in kept.bytes().enumerate() {
        let digit = i64::from(b - b'0');
        fraction += digit * 10_i64.pow((FRACTION_DIGITS - 1 - i) as u32);
    }
    let micros = whole
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|m| m.checked_add(fraction))
        .ok_or(AmountError::OutOfRange)?;
    Ok(if negative { -micros } else { micros })
}

/// Micros as currency units: at least two decimal places, more only when
/// they are not zero (`20.00`, `0.0045`, `-1,234.567891`).
pub fn format_units(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let whole = magnitude / MICROS_PER_UNIT.unsigned_abs();
    let fraction = format!("{:06}", magnitude % MICROS_PER_UNIT.unsigned_abs());
    let fraction = fraction.trim_end_matches('0');
    let fraction = format!("{fraction:0<2}");
    format!("{sign}{}.{fraction}", group_thousands(whole))
}

/// `20.00 USD (20000000 micros)`: both forms, for an operator reading a
/// support ticket and one pasting a number into an API call.
pub fn format_money(micros: i64, currency: &str) -> String {
    format!("{} {currency} ({micros} micros)", format_units(micros))
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_parse_exactly_into_micros() {
        assert_eq!(parse_units("20.00"), Ok(20_000_000));
        assert_eq!(parse_units("20"), Ok(20_000_000));
        assert_eq!(parse_units("0.000001"), Ok(1));
        assert_eq!(parse_units(".5"), Ok(500_000));
        assert_eq!(parse_units("3."), Ok(3_000_000));
        assert_eq!(parse_units("-0.50"), Ok(-500_000));
        assert_eq!(parse_units("+1.25"), Ok(1_250_000));
        // 0.1 + 0.2 is not 0.30000000000000004 here.
        assert_eq!(parse_units("0.3"), Ok(300_000));
        assert_eq!(parse_units("19.99"), Ok(19_990_000));
        assert_eq!(parse_units("1.1000000"), Ok(1_100_000));
    }

    #[test]
    fn anything_else_is_refused_not_rounded() {
        assert_eq!(parse_units("0.0000001"), Err(AmountError::TooPrecise));
        assert_eq!(parse_units("1.2345678"), Err(AmountError::TooPrecise));
        for bad in [
            "", "-", ".", "1,000.00", "1e3", "$5", "5 ", " 5", "--5", "1.2.3", "NaN",
        ] {
            assert_eq!(parse_units(bad), Err(AmountError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_units("9223372036854.775808"),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(
            parse_units("99999999999999999999"),
            Err(AmountError::OutOfRange)
        );
        assert_eq!(parse_units("9223372036854.775807"), Ok(i64::MAX));
    }

    #[test]
    fn micros_read_back_as_units() {
        assert_eq!(format_units(20_000_000), "20.00");
        assert_eq!(format_units(4_500), "0.0045");
        assert_eq!(format_units(-1_234_567_891), "-1,234.567891");
        assert_eq!(format_units(0), "0.00");
        assert_eq!(format_units(i64::MIN), "-9,223,372,036,854.775808");
        assert_eq!(format_money(1_500_000, "USD"), "1.50 USD (1500000 micros)");
    }

    #[test]
    fn what_is_shown_parses_back_to_the_same_micros() {
        for micros in [0, 1, 10, 999_999, 1_000_000, 20_000_000, 123_456_789, -42] {
            let shown = format_units(micros).replace(',', "");
            assert_eq!(parse_units(&shown), Ok(micros), "{shown}");
        }
    }
}
