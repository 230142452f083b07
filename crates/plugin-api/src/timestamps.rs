//! Time as the API shows it: stored as UTC Unix seconds, read and written as RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ApiError;

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 (UTC, `Z`) text of Unix seconds; empty for a time out of range.
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// RFC 3339 (UTC, `Z`, milliseconds) text of Unix milliseconds; empty for a time out of range.
pub fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Unix seconds of an RFC 3339 time, which must carry an offset (`Z` or `±hh:mm`) and fall within
/// the years 0000–9999 in UTC (what RFC 3339 can write back: `9999-12-31T23:00:00-02:00` is in
/// the year 10000 in UTC and is refused).
///
/// # Errors
/// A 422 naming `field` when `value` is not such a time.
pub fn parse_rfc3339(field: &str, value: &str) -> Result<i64, ApiError> {
    let parsed = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        ApiError::unprocessable(format!(
            "{field} must be an RFC 3339 time with an offset, such as 2026-11-25T09:00:00+02:00"
        ))
    })?;
    let secs = parsed.unix_timestamp();
    let in_utc = OffsetDateTime::from_unix_timestamp(secs).map(OffsetDateTime::year);
    if !in_utc.is_ok_and(|year| (0..=9999).contains(&year)) {
        return Err(ApiError::unprocessable(format!(
            "{field} must fall within the years 0000 to 9999 in UTC"
        )));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_utc() {
        let secs = parse_rfc3339("t", "2026-12-01T09:00:00+02:00").unwrap();
        assert_eq!(rfc3339(secs), "2026-12-01T07:00:00Z");
        for bad in ["2026-12-01T09:00:00", "2026-12-01 09:00", "tomorrow", ""] {
            assert_eq!(parse_rfc3339("t", bad).unwrap_err().status().as_u16(), 422, "{bad}");
        }
        assert!(now() > 1_700_000_000);
    }

    #[test]
    fn times_rfc3339_cannot_write_back_are_refused() {
        for beyond in ["9999-12-31T23:00:00-02:00", "0000-01-01T00:30:00+01:00"] {
            let error = parse_rfc3339("starts_at", beyond).unwrap_err();
            assert_eq!(error.status().as_u16(), 422, "{beyond}");
            assert!(error.message().contains("0000 to 9999"), "{}", error.message());
        }
        for edge in [
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:00:00+02:00",
            "0000-01-01T00:00:00Z",
        ] {
            let secs = parse_rfc3339("t", edge).unwrap();
            assert!(!rfc3339(secs).is_empty(), "{edge} is written back");
        }
    }
}
