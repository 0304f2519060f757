//! Calendar windows for daily and monthly budgets, in a configured time zone (default UTC).
//!
//! A day is `YYYYMMDD` and a month `YYYYMM` of the local calendar; each window knows when it
//! ends, which is when its budget is whole again. Authz and metering name their counters by
//! these ids, so both must run with the same zone.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

use crate::time::Micros;

/// The day and month containing an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// `YYYYMMDD`.
    pub day: String,
    /// When the day starts, in microseconds.
    pub day_start: Micros,
    /// When the day ends (exclusive), in microseconds.
    pub day_end: Micros,
    /// `YYYYMM`.
    pub month: String,
    /// When the month ends (exclusive), in microseconds.
    pub month_end: Micros,
}

/// Computes windows in one time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    zone: TimeZone,
}

/// The zone name is not in the time-zone database.
#[derive(Debug, thiserror::Error)]
#[error("unknown time zone {0:?}; use an IANA name such as \"UTC\" or \"Europe/Berlin\"")]
pub struct UnknownTimeZone(String);

impl Calendar {
    /// A calendar in the IANA zone `name`.
    pub fn new(name: &str) -> Result<Self, UnknownTimeZone> {
        let zone = TimeZone::get(name).map_err(|_| UnknownTimeZone(name.to_owned()))?;
        Ok(Self { zone })
    }

    /// UTC.
    pub fn utc() -> Self {
        Self { zone: TimeZone::UTC }
    }

    /// Whether `windows` still contain `at` (so a cached value can be reused).
    pub fn contains(windows: &Windows, at: Micros) -> bool {
        (windows.day_start..windows.day_end).contains(&at)
    }

    /// Start of the local hour containing `at`.
    pub fn hour_start(&self, at: Micros) -> Micros {
        let instant = Timestamp::from_microsecond(at).unwrap_or(Timestamp::UNIX_EPOCH);
        let offset = i64::from(self.zone.to_offset(instant).seconds()) * 1_000_000;
        let hour: Micros = 3_600 * 1_000_000;
        (at + offset).div_euclid(hour) * hour - offset
    }

    /// The windows containing `at`.
    pub fn windows(&self, at: Micros) -> Windows {
        let instant = Timestamp::from_microsecond(at).unwrap_or(Timestamp::UNIX_EPOCH);
        let local = instant.to_zoned(self.zone.clone());
        let date = local.date();
        let start_of = |date: Date| -> Micros {
            date.to_zoned(self.zone.clone()).map(|z: Zoned| z.timestamp().as_microsecond()).unwrap_or(at)
        };
        let next_day = date.checked_add(1.day()).unwrap_or(date);
        let first_of_month = date.first_of_month();
        let next_month = first_of_month.checked_add(1.month()).unwrap_or(first_of_month);
        Windows {
            day: format!("{:04}{:02}{:02}", date.year(), date.month(), date.day()),
            day_start: start_of(date),
            day_end: start_of(next_day),
            month: format!("{:04}{:02}", date.year(), date.month()),
            month_end: start_of(next_month),
        }
    }
}

/// Windows of many instants that mostly fall in one day (a batch of usage reports): each day
/// is worked out once.
#[derive(Debug)]
pub struct WindowsCache<'a> {
    calendar: &'a Calendar,
    last: Option<Windows>,
}

impl<'a> WindowsCache<'a> {
    pub fn new(calendar: &'a Calendar) -> Self {
        Self { calendar, last: None }
    }

    /// The windows `at` falls in.
    pub fn windows(&mut self, at: Micros) -> &Windows {
        let hit = self.last.as_ref().is_some_and(|w| w.day_start <= at && at < w.day_end);
        if !hit {
            self.last = Some(self.calendar.windows(at));
        }
        self.last.as_ref().expect("just set")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(text: &str) -> Micros {
        text.parse::<Timestamp>().unwrap().as_microsecond()
    }

    #[test]
    fn the_cache_answers_as_the_calendar_does_across_days() {
        let calendar = Calendar::new("Asia/Tokyo").unwrap();
        let mut cache = WindowsCache::new(&calendar);
        let start = micros("2026-12-31T14:00:00Z");
        for at in [start - 1, start, start + 3_600_000_000, start - 1, start + 86_400_000_000] {
            assert_eq!(cache.windows(at), &calendar.windows(at));
        }
    }

    #[test]
    fn utc_days_and_months() {
        let w = Calendar::utc().windows(micros("2026-11-30T23:59:59.999999Z"));
        assert_eq!((w.day.as_str(), w.month.as_str()), ("20261130", "202611"));
        assert_eq!(w.day_end, micros("2026-12-01T00:00:00Z"));
        assert_eq!(w.day_start, micros("2026-11-30T00:00:00Z"));
        assert_eq!(w.month_end, micros("2026-12-01T00:00:00Z"));
        let next = Calendar::utc().windows(w.day_end);
        assert_eq!((next.day.as_str(), next.month.as_str()), ("20261201", "202612"));
        assert_eq!(Calendar::utc().windows(micros("2026-12-31T12:00:00Z")).month_end, micros("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn local_midnight_and_month_end_in_another_zone() {
        let tokyo = Calendar::new("Asia/Tokyo").unwrap();
        // 15:00 UTC on Jan 31 is already Feb 1 in Tokyo (UTC+9).
        let w = tokyo.windows(micros("2026-01-31T15:00:00Z"));
        assert_eq!((w.day.as_str(), w.month.as_str()), ("20260201", "202602"));
        assert_eq!(w.day_end, micros("2026-02-01T15:00:00Z"));
        assert_eq!(w.month_end, micros("2026-02-28T15:00:00Z"));
        let before = tokyo.windows(micros("2026-01-31T14:59:59Z"));
        assert_eq!((before.day.as_str(), before.month.as_str()), ("20260131", "202601"));
    }

    #[test]
    fn daylight_saving_days_are_23_or_25_hours() {
        let berlin = Calendar::new("Europe/Berlin").unwrap();
        let spring = berlin.windows(micros("2026-03-29T12:00:00Z"));
        let start = berlin.windows(micros("2026-03-28T23:00:00Z"));
        assert_eq!(spring.day, "20260329");
        assert_eq!(start.day, "20260329");
        assert_eq!(spring.day_end - micros("2026-03-28T23:00:00Z"), 23 * 3600 * 1_000_000);
    }

    #[test]
    fn hours_start_on_the_local_hour() {
        let kolkata = Calendar::new("Asia/Kolkata").unwrap(); // UTC+5:30
        assert_eq!(kolkata.hour_start(micros("2026-11-30T10:45:00Z")), micros("2026-11-30T10:30:00Z"));
        assert_eq!(kolkata.hour_start(micros("2026-11-30T10:15:00Z")), micros("2026-11-30T09:30:00Z"));
        assert_eq!(Calendar::utc().hour_start(micros("2026-11-30T10:59:59Z")), micros("2026-11-30T10:00:00Z"));
    }

    #[test]
    fn unknown_zones_are_refused() {
        assert!(Calendar::new("Mars/Olympus").is_err());
    }
}
