//! Wall-clock helpers: milliseconds since the epoch for records, and UTC stamps for files and logs.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on the cluster's clock (0 before it): the time catalog records
/// are stamped with and compared against, so that one node's wrong clock neither expires records early
/// nor keeps them late (`hfm_cluster::clock`; on a single node, the local clock).
pub fn now_ms() -> u64 {
    hfm_cluster::clock::now_ms()
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (or the compact `YYYYMMDDTHHMMSSZ`).
pub fn utc_time(seconds: u64, compact: bool) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (rest / 3600, rest / 60 % 60, rest % 60);
    if compact {
        format!("{year:04}{month:02}{day:02}T{hour:02}{minute:02}{second:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    }
}

/// The UTC day of an instant, `YYYY-MM-DD` (the epoch's for an instant before it).
pub fn utc_day(at: SystemTime) -> String {
    utc_time(at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(), false)[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::utc_time;

    #[test]
    fn utc_times_format_like_rfc3339() {
        assert_eq!(utc_time(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(1_700_000_000, false), "2023-11-14T22:13:20Z");
        assert_eq!(utc_time(951_782_400, false), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(4_102_444_799, true), "20991231T235959Z");
        assert_eq!(utc_time(4_107_542_399, true), "21000228T235959Z", "2100 is no leap year");
    }
}
