//! Time as the API shows it: stored as UTC Unix seconds, read and written as RFC 3339.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ApiError;

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 (UTC, `Z`) text of Unix seconds; empty for a time out of range.
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Unix seconds of an RFC 3339 time, which must carry an offset (`Z` or `±hh:mm`).
///
/// # Errors
/// A 422 naming `field` when `value` is not such a time.
pub fn parse_rfc3339(field: &str, value: &str) -> Result<i64, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| {
            ApiError::unprocessable(format!(
                "{field} must be an RFC 3339 time with an offset, such as 2026-11-25T09:00:00+02:00"
            ))
        })
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
}
