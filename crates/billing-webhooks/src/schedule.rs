//! When a delivery is attempted: the Standard Webhooks retry schedule (at
//! once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h after the attempt
//! before), a receiver's `Retry-After`, and when a delivery has failed for
//! good. Pure: time comes in as arguments.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The delays before each attempt, the first's counted from the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

/// The Standard Webhooks schedule.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

/// The longest a receiver's `Retry-After` defers an attempt.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Default for RetrySchedule {
    fn default() -> Self {
        DEFAULT_SCHEDULE
            .parse()
            .unwrap_or_else(|_| Self(vec![Duration::ZERO]))
    }
}

impl std::str::FromStr for RetrySchedule {
    type Err = String;

    /// A comma-separated list of delays, each a number with a unit (`ms`,
    /// `s`, `m`, `h`), one per attempt: `0s,5s,5m`.
    fn from_str(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(|part| parse_delay(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 100 {
            return Err("a retry schedule has 1 to 100 attempts".to_owned());
        }
        Ok(Self(delays))
    }
}

fn parse_delay(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number with a unit"))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("`{text}`: the unit is ms, s, m or h")),
    };
    match millis {
        Some(ms) if ms <= 7 * 24 * 3_600_000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!("`{text}` is longer than a week")),
    }
}

impl RetrySchedule {
    /// How many attempts a delivery gets.
    pub fn attempts(&self) -> usize {
        self.0.len()
    }

    /// When to try again after the `attempts`-th attempt failed at `now`,
    /// or `None` when that was the last. A receiver's `Retry-After` (capped
    /// at [`MAX_RETRY_AFTER`]) replaces the schedule's delay.
    pub fn next_attempt(
        &self,
        attempts: usize,
        now: DateTime<Utc>,
        retry_after: Option<Duration>,
    ) -> Option<DateTime<Utc>> {
        let delay = *self.0.get(attempts)?;
        let delay = retry_after.map_or(delay, |wait| wait.min(MAX_RETRY_AFTER));
        Some(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()))
    }
}

/// A `Retry-After` header's wait: delay-seconds, or an HTTP date (a date in
/// the past is no wait). `None` when it is neither.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn the_default_is_the_standard_webhooks_schedule() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.attempts(), 8);
        let now = at(0);
        let delays: Vec<i64> = (1..8)
            .map(|n| (schedule.next_attempt(n, now, None).unwrap() - now).num_seconds())
            .collect();
        assert_eq!(
            delays,
            [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000],
            "after the first attempt (at once) come 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h"
        );
        assert_eq!(
            schedule.next_attempt(8, now, None),
            None,
            "8 attempts in all"
        );
    }

    #[test]
    fn retry_after_replaces_the_delay_but_never_adds_an_attempt() {
        let schedule: RetrySchedule = "0s,1s,1s".parse().unwrap();
        let now = at(0);
        let next = schedule.next_attempt(1, now, Some(Duration::from_secs(30)));
        assert_eq!(next, Some(at(30)));
        assert_eq!(
            schedule.next_attempt(1, now, Some(Duration::from_secs(10 * 86_400))),
            Some(at(86_400)),
            "capped at a day"
        );
        assert_eq!(schedule.next_attempt(3, now, Some(Duration::ZERO)), None);
    }

    #[test]
    fn parses_retry_after_in_both_forms() {
        let now = Utc.with_ymd_and_hms(2026, 12, 8, 10, 0, 0).unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Tue, 08 Dec 2026 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after("Tue, 08 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn schedules_are_checked() {
        assert_eq!("100ms,2s".parse::<RetrySchedule>().unwrap().attempts(), 2);
        for bad in ["", "5", "5d", "-1s", "1s,,2s", "200h"] {
            assert!(bad.parse::<RetrySchedule>().is_err(), "{bad:?}");
        }
    }
}
