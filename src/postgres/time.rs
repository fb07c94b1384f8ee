//! lnd's invoice timestamps as its Postgres tables hold them.
//!
//! lnd's columns are `TIMESTAMP WITHOUT TIME ZONE` (its replacement of
//! ` TIMESTAMP`), and lnd writes every invoice time converted to UTC, so the
//! column holds the UTC wall clock. Postgres keeps microseconds: pgx encodes
//! a Go `time.Time` as whole microseconds since 2000-01-01 00:00 (Unix
//! seconds × 10⁶ plus nanoseconds / 1000), dropping the sub-microsecond
//! part, which is always non-negative in Go: the instant is rounded *down*.
//! [`PgTimestamp::from_sql_text`] does the same to the text layout in which
//! `NativeInvoice` carries times (lnd's SQLite layout,
//! `timefmt::sql_time`), and [`PgTimestamp::sql_text`] renders a
//! stored value back in that layout, so a row read back compares equal to
//! the row written once both went through the microsecond floor.

use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::timefmt::sql_time;

/// Microseconds from 1970-01-01 to 2000-01-01, Postgres's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `TIMESTAMP WITHOUT TIME ZONE` value: microseconds since
/// 2000-01-01 00:00:00 (UTC wall clock), Postgres's binary form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// From nanoseconds since the Unix epoch, rounded down to the
    /// microsecond as pgx does.
    pub fn from_unix_nanos(nanos: i128) -> PgTimestamp {
        PgTimestamp(nanos.div_euclid(1000) as i64 - PG_EPOCH_MICROS)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> i128 {
        (i128::from(self.0) + i128::from(PG_EPOCH_MICROS)) * 1000
    }

    /// Parses lnd's SQLite text layout (`2006-01-02 15:04:05.999999999+00:00`,
    /// UTC, as [`sql_time`] renders it). `None` for any other text.
    pub fn from_sql_text(text: &str) -> Option<PgTimestamp> {
        parse_unix_nanos(text).map(PgTimestamp::from_unix_nanos)
    }

    /// The value in lnd's SQLite text layout.
    pub fn sql_text(self) -> String {
        sql_time(self.unix_nanos())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn parse_unix_nanos(text: &str) -> Option<i128> {
    let body = text.strip_suffix("+00:00")?;
    let (date, clock) = body.split_once(' ')?;
    let mut dp = date.splitn(3, '-');
    let (y, mo, d) = (
        digits(dp.next()?)?,
        digits(dp.next()?)?,
        digits(dp.next()?)?,
    );
    let (hms, frac) = match clock.split_once('.') {
        Some((hms, frac)) if (1..=9).contains(&frac.len()) => (hms, Some(frac)),
        Some(_) => return None,
        None => (clock, None),
    };
    let mut cp = hms.splitn(3, ':');
    let (h, mi, s) = (
        digits(cp.next()?)?,
        digits(cp.next()?)?,
        digits(cp.next()?)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let nanos = match frac {
        Some(f) => digits(f)? * 10u32.pow(9 - f.len() as u32),
        None => 0,
    };
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(s);
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

impl ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMP
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for PgTimestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<PgTimestamp, Box<dyn StdError + Sync + Send>> {
        let b: [u8; 8] = raw.try_into().map_err(|_| "a TIMESTAMP is 8 bytes")?;
        Ok(PgTimestamp(i64::from_be_bytes(b)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMP
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GoTime;

    #[test]
    fn round_trips_through_the_microsecond_floor() {
        for nanos in [
            0i128,
            1,
            999,
            1_000,
            1_609_459_200_123_456_789,
            951_782_400_000_000_001,
            -1,
            -1_001,
            GoTime::ZERO.unix_nanos(),
            GoTime::ZERO.unix_nanos() + 1_500,
            253_402_300_799_999_999_999, // 9999-12-31 23:59:59.999999999
        ] {
            let text = sql_time(nanos);
            let ts = PgTimestamp::from_sql_text(&text).expect(&text);
            assert_eq!(ts, PgTimestamp::from_unix_nanos(nanos), "{text}");
            let floored = nanos.div_euclid(1000) * 1000;
            assert_eq!(ts.unix_nanos(), floored, "{text}");
            assert_eq!(ts.sql_text(), sql_time(floored));
        }
    }

    #[test]
    fn knows_postgres_epoch() {
        assert_eq!(
            PgTimestamp::from_sql_text("2000-01-01 00:00:00+00:00"),
            Some(PgTimestamp(0))
        );
        assert_eq!(
            PgTimestamp::from_sql_text("2000-01-01 00:00:01.5+00:00"),
            Some(PgTimestamp(1_500_000))
        );
    }

    #[test]
    fn refuses_other_layouts() {
        for t in [
            "2000-01-01T00:00:00Z",
            "2000-01-01 00:00:00",
            "2000-13-01 00:00:00+00:00",
            "2000-01-01 00:00:00.+00:00",
            "2000-01-01 00:00:00.1234567890+00:00",
            "2000-01-01 24:00:00+00:00",
        ] {
            assert_eq!(PgTimestamp::from_sql_text(t), None, "{t}");
        }
    }
}
