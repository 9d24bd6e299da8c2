//! The timestamp of every log line: RFC 3339 in UTC with milliseconds.

/// `2026-11-28T05:44:25.123Z` from ms since the epoch (UTC): the timestamp
/// format of every log line.
pub fn rfc3339_millis(ms: u64) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339_millis(&mut out, ms);
    out
}

/// Appends [`rfc3339_millis`]`(ms)` to `out`. Log lines come many to a
/// second, so each thread keeps the date-and-seconds part of the last
/// second it formatted and only adds the milliseconds.
pub fn push_rfc3339_millis(out: &mut String, ms: u64) {
    thread_local! {
        static LAST_SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = ms / 1000;
    LAST_SECOND.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            last.1.clear();
            push_date_and_seconds(&mut last.1, secs);
            last.0 = secs;
        }
        out.push_str(&last.1);
    });
    let millis = (ms % 1000) as u32;
    for digit in [millis / 100, millis / 10 % 10, millis % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` of `secs` since the epoch (UTC).
fn push_date_and_seconds(out: &mut String, secs: u64) {
    use std::fmt::Write as _;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_764_308_665_123), "2025-11-28T05:44:25.123Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // The per-thread cache of the last second follows the clock both ways.
        assert_eq!(rfc3339_millis(1_764_308_665_999), "2025-11-28T05:44:25.999Z");
        assert_eq!(rfc3339_millis(1_764_308_666_000), "2025-11-28T05:44:26.000Z");
        assert_eq!(rfc3339_millis(1_764_308_665_007), "2025-11-28T05:44:25.007Z");
    }
}
