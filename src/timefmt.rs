//! Timestamps as lnd's native SQLite store writes them.
//!
//! lnd's SQLite driver stores a Go `time.Time` as TEXT in the layout
//! `2006-01-02 15:04:05.999999999-07:00`; lnd converts every invoice time to
//! UTC before writing it. [`sql_time`] renders an instant (Unix nanoseconds)
//! the same way: UTC, nanoseconds with trailing zeros trimmed (and the dot
//! dropped when they are all zero), offset `+00:00`. Go's zero time renders
//! `0001-01-01 00:00:00+00:00`.

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a
    // 400-year era; then peel off eras, years, months.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats an instant, given as nanoseconds since the Unix epoch, in lnd's
/// SQLite TIMESTAMP text layout (UTC).
pub fn sql_time(unix_nanos: i128) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400) as i64;
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, mo, d) = civil_from_days(days);
    // Hand-rolled digits: this runs several times per invoice.
    let mut s = String::with_capacity(36);
    if (0..=9999).contains(&y) {
        push_digits(&mut s, y as u32, 4);
    } else {
        s.push_str(&format!("{y:04}"));
    }
    s.push('-');
    push_digits(&mut s, mo, 2);
    s.push('-');
    push_digits(&mut s, d, 2);
    s.push(' ');
    push_digits(&mut s, sod / 3600, 2);
    s.push(':');
    push_digits(&mut s, (sod / 60) % 60, 2);
    s.push(':');
    push_digits(&mut s, sod % 60, 2);
    if nanos != 0 {
        let mut frac = nanos;
        let mut width = 9;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        s.push('.');
        push_digits(&mut s, frac, width);
    }
    s.push_str("+00:00");
    s
}

/// Appends `v` as exactly `width` decimal digits (zero-padded; `v` must fit).
fn push_digits(s: &mut String, v: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        s.push(char::from(b'0' + ((v / div) % 10) as u8));
        div /= 10;
    }
}

/// Nanoseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_nanos() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i128::from(d.as_secs()) * 1_000_000_000 + i128::from(d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GoTime;

    #[test]
    fn formats_known_instants() {
        assert_eq!(sql_time(0), "1970-01-01 00:00:00+00:00");
        assert_eq!(
            sql_time(1_609_459_200_000_000_000 + 5_000),
            "2021-01-01 00:00:00.000005+00:00"
        );
        assert_eq!(
            sql_time(951_782_400_123_456_789),
            "2000-02-29 00:00:00.123456789+00:00"
        );
        assert_eq!(sql_time(-1), "1969-12-31 23:59:59.999999999+00:00");
        assert_eq!(
            sql_time(GoTime::ZERO.unix_nanos()),
            "0001-01-01 00:00:00+00:00"
        );
    }

    #[test]
    fn every_day_of_four_centuries_round_trips_through_the_calendar() {
        // Walk day by day and check the calendar advances one day at a time.
        let (mut y, mut m, mut d) = civil_from_days(-719_162); // 0001-01-01
        assert_eq!((y, m, d), (1, 1, 1));
        for days in -719_161..(-719_162 + 146_097 * 4) {
            let next = civil_from_days(days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][(m - 1) as usize];
            let expect = if d < month_len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, expect, "day {days}");
            (y, m, d) = next;
        }
    }
}
