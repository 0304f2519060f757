//! Time series for dashboards: ledger sums per 15 minutes (every time zone's offset is a
//! multiple of it) folded into local hours or days.

use std::collections::BTreeMap;

use tollgate_core::time::Micros;
use tollgate_core::windows::Calendar;
use tollgate_store::metering::{BucketRow, Totals};

/// Width of the sums the ledger is asked for.
pub const STEP: Micros = 15 * 60 * 1_000_000;

/// Bucket width of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub start: Micros,
    /// Empty unless split by model.
    pub model: String,
    pub totals: Totals,
}

/// The start of the bucket holding `at`.
pub fn bucket_start(calendar: &Calendar, granularity: Granularity, at: Micros) -> Micros {
    match granularity {
        Granularity::Hour => calendar.hour_start(at),
        Granularity::Day => calendar.windows(at).day_start,
    }
}

/// Every bucket start from the one holding `start` to the one holding `end - 1`.
fn bucket_starts(calendar: &Calendar, granularity: Granularity, start: Micros, end: Micros) -> Vec<Micros> {
    let mut starts = Vec::new();
    let mut at = bucket_start(calendar, granularity, start);
    while at < end {
        starts.push(at);
        let next = match granularity {
            Granularity::Hour => calendar.hour_start(at + 3_600 * 1_000_000 + STEP),
            Granularity::Day => calendar.windows(at).day_end,
        };
        if next <= at {
            break;
        }
        at = next;
    }
    starts
}

/// Folds 15-minute sums into buckets, with the totals over all. Without a split every
/// bucket of the span is there, empty ones as zeros, so a chart has no gaps; with a split
/// only (bucket, model) pairs that saw use.
pub fn fold(
    calendar: &Calendar,
    granularity: Granularity,
    start: Micros,
    end: Micros,
    rows: &[BucketRow],
    split_by_model: bool,
) -> (Totals, Vec<Bucket>) {
    let mut total = Totals::default();
    let mut buckets: BTreeMap<(Micros, String), Totals> = BTreeMap::new();
    if !split_by_model {
        for at in bucket_starts(calendar, granularity, start, end) {
            buckets.insert((at, String::new()), Totals::default());
        }
    }
    for row in rows {
        total.add(&row.totals);
        let model = if split_by_model { row.model.clone() } else { String::new() };
        buckets.entry((bucket_start(calendar, granularity, row.start), model)).or_default().add(&row.totals);
    }
    let buckets = buckets.into_iter().map(|((start, model), totals)| Bucket { start, model, totals }).collect();
    (total, buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Micros = 3_600 * 1_000_000;

    fn row(start: Micros, model: &str, credits: i64) -> BucketRow {
        BucketRow { start, model: model.into(), totals: Totals { requests: 1, credits, ..Default::default() } }
    }

    #[test]
    fn hours_are_filled_and_summed() {
        let utc = Calendar::utc();
        let start = 1_800_000_000_000_000 / HOUR * HOUR;
        let rows = [row(start, "a", 5), row(start + STEP, "b", 7), row(start + 2 * HOUR, "a", 1)];
        let (total, buckets) = fold(&utc, Granularity::Hour, start, start + 3 * HOUR, &rows, false);
        assert_eq!(total.credits, 13);
        let credits: Vec<i64> = buckets.iter().map(|b| b.totals.credits).collect();
        assert_eq!(credits, [12, 0, 1]);
        let (_, split) = fold(&utc, Granularity::Hour, start, start + 3 * HOUR, &rows, true);
        let pairs: Vec<(&str, i64)> = split.iter().map(|b| (b.model.as_str(), b.totals.credits)).collect();
        assert_eq!(pairs, [("a", 5), ("b", 7), ("a", 1)]);
    }

    #[test]
    fn days_follow_the_local_calendar() {
        let tokyo = Calendar::new("Asia/Tokyo").unwrap();
        // 2026-01-31T14:45Z is Jan 31 23:45 in Tokyo; 15:00Z is Feb 1.
        let jan31_late = 1_769_870_700_000_000;
        let rows = [row(jan31_late, "a", 2), row(jan31_late + STEP, "a", 3)];
        let start = tokyo.windows(jan31_late).day_start;
        let (_, buckets) = fold(&tokyo, Granularity::Day, start, start + 48 * HOUR, &rows, false);
        let credits: Vec<i64> = buckets.iter().map(|b| b.totals.credits).collect();
        assert_eq!(credits, [2, 3]);
        assert_eq!(buckets[1].start, tokyo.windows(jan31_late + STEP).day_start);
    }
}
