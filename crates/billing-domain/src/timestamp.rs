//! RFC 3339 timestamps for serde, written without `fmt`: every event and
//! state the command path stores carries several, and chrono's `Display`
//! path (a formatter call per character) was a tenth of the service's CPU.
//! The text is what chrono writes for a time with microseconds
//! (`2026-01-20T00:00:00.123456Z`, fraction always six digits), so chrono
//! reads it back; times it cannot write this way fall back to chrono.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// `#[serde(serialize_with = "crate::timestamp::serialize")]`
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 27];
    match format(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => serde::Serialize::serialize(t, s),
    }
}

/// `#[serde(serialize_with = "crate::timestamp::serialize_opt")]`
pub fn serialize_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, or `None` for a year outside 0..=9999 or
/// a time finer than a microsecond.
fn format<'a>(t: &DateTime<Utc>, buf: &'a mut [u8; 27]) -> Option<&'a str> {
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = t.nanosecond();
    // A leap second (nanos >= 1e9) or sub-microsecond part: chrono's way.
    if nanos >= 1_000_000_000 || !nanos.is_multiple_of(1_000) {
        return None;
    }
    let mut put = |at: usize, value: u32, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    put(20, nanos / 1_000, 6);
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    buf[19] = b'.';
    buf[26] = b'Z';
    std::str::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[derive(serde::Serialize)]
    struct T(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    fn text(t: DateTime<Utc>) -> String {
        serde_json::to_string(&T(t)).unwrap()
    }

    #[test]
    fn writes_microseconds_and_reads_back_as_the_same_instant() {
        let times = [
            Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap(),
            DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            DateTime::from_timestamp_micros(-62_000_000_000_000_001).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        ];
        for t in times {
            let json = text(t);
            let back: DateTime<Utc> = serde_json::from_str(&json).unwrap();
            assert_eq!(back, t, "{json}");
        }
        assert_eq!(
            text(DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap()),
            "\"2026-09-21T14:13:20.123456Z\""
        );
    }

    #[test]
    fn times_it_cannot_write_fall_back_to_chrono() {
        let nanos = DateTime::from_timestamp(1_790_000_000, 123_456_789).unwrap();
        let far = Utc.with_ymd_and_hms(12_000, 1, 1, 0, 0, 0).unwrap();
        for t in [nanos, far] {
            assert_eq!(text(t), serde_json::to_string(&t).unwrap());
        }
    }
}
