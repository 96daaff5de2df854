//! The input rules at the edge, one per kind of field: text, numbers,
//! timestamps, currencies, pages. A value that breaks its rule is refused
//! before anything is read or written, with INVALID_ARGUMENT naming the field
//! (`AMOUNT_OUT_OF_RANGE` for a number past its bound), and is never echoed
//! back.
//!
//! Text is valid UTF-8 by the time it gets here: a protobuf `string` that is
//! not is refused when the request is decoded (see `edge`).

use billing_domain::Currency;
use chrono::{DateTime, Utc};
use tonic::Status;

use crate::status::{invalid, too_large};

/// The longest idempotency key, reference id or token subject, in bytes.
pub const MAX_KEY_BYTES: usize = 255;
/// The longest reservation id (the caller's call id), in characters.
pub const MAX_CALL_ID_CHARS: usize = billing_domain::MAX_RESERVATION_ID_LEN;
/// The longest name, payment type or payment method, in bytes.
pub const MAX_LINE_BYTES: usize = 255;
/// The longest free text (detail, note), in bytes.
pub const MAX_PROSE_BYTES: usize = 2_048;

/// A kind of text field, and its one rule. No kind admits NUL (PostgreSQL
/// cannot store it) or, but for line breaks and tabs in prose, any other
/// control character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    /// Identifiers a caller chooses: idempotency keys, reference ids, a
    /// token's subject. At most 255 bytes.
    Key,
    /// A reservation id, the caller's call id: 1 to 128 characters.
    CallId,
    /// One line of descriptive text: names, payment type and method. At most
    /// 255 bytes.
    Line,
    /// Free text: detail, note. At most 2,048 bytes; tabs and line breaks
    /// are fine.
    Prose,
}

impl Text {
    /// Why `value` breaks this kind's rule, if it does.
    pub fn check(self, value: &str) -> Result<(), &'static str> {
        let length_ok = match self {
            Self::Key => value.len() <= MAX_KEY_BYTES,
            Self::CallId => !value.is_empty() && value.chars().count() <= MAX_CALL_ID_CHARS,
            Self::Line => value.len() <= MAX_LINE_BYTES,
            Self::Prose => value.len() <= MAX_PROSE_BYTES,
        };
        if !length_ok {
            return Err(match self {
                Self::Key => "must be at most 255 bytes",
                Self::CallId => "must be 1 to 128 characters",
                Self::Line => "must be at most 255 bytes",
                Self::Prose => "must be at most 2048 bytes",
            });
        }
        let allowed =
            |c: char| !c.is_control() || (self == Self::Prose && matches!(c, '\t' | '\n' | '\r'));
        if !value.chars().all(allowed) {
            return Err(match self {
                Self::Prose => {
                    "must not contain NUL or control characters other than tabs and line breaks"
                }
                _ => "must not contain NUL or other control characters",
            });
        }
        Ok(())
    }
}

/// `value` of text field `field`, if it keeps its kind's rule.
pub fn text(field: &'static str, kind: Text, value: &str) -> Result<String, Status> {
    kind.check(value).map_err(|reason| invalid(field, reason))?;
    Ok(value.to_owned())
}

/// An optional text field (`None`: leave it as it is).
pub fn optional_text(
    field: &'static str,
    kind: Text,
    value: Option<&str>,
) -> Result<Option<String>, Status> {
    value.map(|v| text(field, kind, v)).transpose()
}

/// A required idempotency key.
pub fn required_key(key: &str) -> Result<&str, Status> {
    if key.is_empty() {
        return Err(invalid(
            "idempotency_key",
            "is required: a retry with the same key is applied once",
        ));
    }
    Text::Key
        .check(key)
        .map_err(|reason| invalid("idempotency_key", reason))?;
    Ok(key)
}

/// Money and token amounts (micros, tokens): 0 to 10^15, a billion units of
/// currency.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;
/// Counts of units or items: 0 to 10^9.
pub const MAX_COUNT: i64 = 1_000_000_000;
/// Durations in milliseconds: 0 to 10^12 (about 31 years).
pub const MAX_DURATION_MS: i64 = 1_000_000_000_000;

/// A kind of number field, and its one rule: not negative, and at most the
/// kind's bound. (Rules about zero are the domain's.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Number {
    /// Credit in micros or tokens: amounts, credit limit, threshold.
    Amount,
    /// Units and quantities.
    Count,
    /// Durations in milliseconds.
    DurationMs,
}

impl Number {
    pub const fn max(self) -> i64 {
        match self {
            Self::Amount => MAX_AMOUNT,
            Self::Count => MAX_COUNT,
            Self::DurationMs => MAX_DURATION_MS,
        }
    }
}

/// `value` of number field `field`, if it keeps its kind's rule.
pub fn number(field: &'static str, kind: Number, value: i64) -> Result<i64, Status> {
    if value < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    if value > kind.max() {
        return Err(too_large(field, kind.max()));
    }
    Ok(value)
}

/// The earliest and latest instants accepted, in seconds since the epoch:
/// google.protobuf.Timestamp's own range, 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z, which PostgreSQL's contains.
pub const MIN_TIME_SECONDS: i64 = -62_135_596_800;
pub const MAX_TIME_SECONDS: i64 = 253_402_300_799;

/// A timestamp field, if set.
pub fn time(
    field: &'static str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Status> {
    let Some(t) = t else {
        return Ok(None);
    };
    if !(MIN_TIME_SECONDS..=MAX_TIME_SECONDS).contains(&t.seconds) {
        return Err(invalid(
            field,
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ));
    }
    u32::try_from(t.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .map(Some)
        .ok_or_else(|| invalid(field, "nanos must be between 0 and 999,999,999"))
}

/// A currency field: a current ISO 4217 code.
pub fn currency(field: &'static str, code: &str) -> Result<Currency, Status> {
    if !crate::currency::is_iso_4217(code) {
        return Err(invalid(
            field,
            "must be a current ISO 4217 code such as USD or EUR",
        ));
    }
    code.parse()
        .map_err(|_| invalid(field, "must be a current ISO 4217 code"))
}

/// Page size when none is asked for, and the most a page holds.
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 100;

/// A page size: 0 means the default; larger than the maximum is coerced.
pub fn page_size(field: &'static str, requested: i32) -> Result<i64, Status> {
    match i64::from(requested) {
        n if n < 0 => Err(invalid(field, "must not be negative")),
        0 => Ok(DEFAULT_PAGE),
        n => Ok(n.min(MAX_PAGE)),
    }
}

/// Page tokens are opaque to callers: a prefix naming the list, then the
/// keyset position.
pub fn page_token<T: std::str::FromStr>(token: &str, prefix: &str) -> Result<Option<T>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix(prefix)
        .filter(|rest| rest.len() <= 64)
        .and_then(|rest| rest.parse().ok())
        .map(Some)
        .ok_or_else(|| invalid("page_token", "is not a token this list issued"))
}

/// The longest URL (a webhook's `uri`), in bytes.
pub const MAX_URL_BYTES: usize = 2_048;

/// A required URL field: absolute, `http` or `https`, with a host and a
/// port other than 0, at most 2,048 bytes, without spaces or control
/// characters (which a parser would quietly strip or encode). Kept as given.
pub fn http_url(field: &'static str, value: &str) -> Result<String, Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > MAX_URL_BYTES {
        return Err(invalid(field, "must be at most 2048 bytes"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            "must not contain spaces or control characters",
        ));
    }
    let url = url::Url::parse(value)
        .map_err(|_| invalid(field, "must be an absolute http:// or https:// URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(field, "must be an http:// or https:// URL"));
    }
    // The parser forgives `https:host` and `https:///host`; a URL stored
    // as given must read as the host it goes to.
    let authority = value
        .split_once(':')
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.strip_prefix("//"))
        .unwrap_or("");
    if authority.is_empty() || authority.starts_with(['/', '\\']) {
        return Err(invalid(
            field,
            "must be an absolute http:// or https:// URL",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(field, "must name a host"));
    }
    // Nothing listens on port 0: every delivery would fail until the
    // webhook is disabled.
    if url.port() == Some(0) {
        return Err(invalid(field, "must not name port 0"));
    }
    Ok(value.to_owned())
}

/// A required UUID field.
pub fn uuid(field: &'static str, value: &str) -> Result<uuid::Uuid, Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(value).map_err(|_| invalid(field, "must be a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_kind_refuses_nul_and_its_overlong_values() {
        for kind in [Text::Key, Text::CallId, Text::Line, Text::Prose] {
            assert!(kind.check("call-7f3a").is_ok(), "{kind:?}");
            assert!(kind.check("a\0b").is_err(), "{kind:?}: NUL");
            assert!(kind.check("a\u{1b}[2J").is_err(), "{kind:?}: escape");
            assert!(kind.check("a\u{85}").is_err(), "{kind:?}: C1 control");
            assert!(kind.check(&"x".repeat(2_049)).is_err(), "{kind:?}: long");
            assert!(kind.check("Zürich ☎").is_ok(), "{kind:?}: non-ASCII");
        }
        assert!(Text::Prose.check("line one\n\tline two\r\n").is_ok());
        assert!(Text::Line.check("line one\nline two").is_err());
        assert!(Text::Key.check("").is_ok(), "emptiness is the field's rule");
        assert!(Text::CallId.check("").is_err());
        assert!(Text::Key.check(&"k".repeat(255)).is_ok());
        assert!(Text::Key.check(&"k".repeat(256)).is_err());
        assert!(Text::Prose.check(&"p".repeat(2_048)).is_ok());
        // 128 characters of two bytes each are a valid call id.
        assert!(Text::CallId.check(&"é".repeat(128)).is_ok());
        assert!(Text::CallId.check(&"é".repeat(129)).is_err());
    }

    #[test]
    fn numbers_are_bounded_on_both_sides() {
        assert_eq!(number("quantity", Number::Count, 5).ok(), Some(5));
        assert!(number("quantity", Number::Count, -1).is_err());
        assert!(number("quantity", Number::Count, MAX_COUNT).is_ok());
        let too_big = number("amount_credit", Number::Amount, MAX_AMOUNT + 1).unwrap_err();
        assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
        assert!(number("duration_ms", Number::DurationMs, i64::MAX).is_err());
    }

    #[test]
    fn times_stay_within_the_protobuf_range() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert!(time("as_of", None).unwrap().is_none());
        assert!(time("as_of", Some(&at(0, 0))).unwrap().is_some());
        assert!(time("as_of", Some(&at(MIN_TIME_SECONDS, 0))).is_ok());
        assert!(time("as_of", Some(&at(MAX_TIME_SECONDS, 999_999_999))).is_ok());
        for bad in [
            at(MIN_TIME_SECONDS - 1, 0),
            at(MAX_TIME_SECONDS + 1, 0),
            at(i64::MAX, 0),
            at(i64::MIN, 0),
            at(0, -1),
            at(0, 1_000_000_000),
            at(0, i32::MAX),
        ] {
            assert!(time("as_of", Some(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_absolute_http_or_https_with_a_host() {
        for good in [
            "https://example.com/hooks",
            "http://127.0.0.1:8080/x?y=1",
            "https://[::1]/",
            "HTTPS://Example.COM",
            "https://example.com:1/",
            "https://example.com:65535/",
        ] {
            assert_eq!(http_url("uri", good).ok().as_deref(), Some(good), "{good}");
        }
        for bad in [
            "",
            "/hooks",
            "example.com/hooks",
            "localhost:8080/hooks",
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "https:example.com",
            "https:/\\example.com",
            " https://example.com",
            "https://exa mple.com",
            "https://example.com/\n",
            "not a url",
            "https://example.com:0/",
            "http://[::1]:0",
            "https://example.com:65536/",
            "https://example.com:99999/",
        ] {
            let err = http_url("uri", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert!(http_url("uri", &format!("https://e.com/{}", "a".repeat(3_000))).is_err());
    }

    #[test]
    fn currencies_are_iso_4217() {
        assert_eq!(currency("currency", "EUR").unwrap().as_str(), "EUR");
        let err = currency("currency", &"Q".repeat(10_000)).unwrap_err();
        assert!(err.message().len() < 200, "the input is not echoed");
        assert!(currency("currency", "ABC").is_err());
    }
}
