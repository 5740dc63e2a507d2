//! Time, for everything in the gateway: the wall clock in milliseconds since the Unix epoch
//! (UTC), and the business calendar (the one configured time zone in which days and months
//! start, for limits). Imports nothing from the rest of the crate.
//!
//! The gateway's time is the system clock read once, at the first call, and advanced from then
//! on by the monotonic clock. Both are slewed alike by NTP, so they agree unless the system
//! clock is stepped (set by hand, a big NTP correction, a VM resumed): then the gateway's time
//! does not jump with it. Audit times stay in order, durations never go negative, and a step
//! forward does not expire every pending challenge at once. [`system_step_ms`] measures the
//! difference; the audit log stops approvals while it is over `audit.clock_skew_max_ms`
//! (`AuditLog::check_system_clock`). A system clock that stays ahead for 10 s (a VM resumed,
//! a suspended host woken, a clock behind corrected) is followed: the gateway's time moves
//! forward to it, and timers due in that span fire then. One that stays behind is not: times
//! never go back, so approvals stay stopped until the clocks agree or the gateway restarts.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The system clock now, milliseconds since the Unix epoch.
pub fn system_now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

struct Anchor {
    system_ms: u64,
    at: Instant,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| Anchor {
        system_ms: system_now_ms(),
        at: Instant::now(),
    })
}

/// How far the gateway's time was moved forward to meet the system clock ([`move_forward`]).
static MOVED_FORWARD_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The gateway's time: milliseconds since the Unix epoch, UTC, never going back.
pub fn now_ms() -> u64 {
    let anchor = anchor();
    let elapsed = u64::try_from(anchor.at.elapsed().as_millis()).unwrap_or(u64::MAX);
    anchor
        .system_ms
        .saturating_add(elapsed)
        .saturating_add(MOVED_FORWARD_MS.load(std::sync::atomic::Ordering::Acquire))
}

/// Moves the gateway's time forward by `ms` (never back): for a system clock that has stayed
/// ahead, as after a VM was resumed or a clock behind was corrected.
pub fn move_forward(ms: u64) {
    MOVED_FORWARD_MS.fetch_add(ms, std::sync::atomic::Ordering::AcqRel);
}

/// How far the system clock is ahead of the gateway's time (negative: behind), in ms.
pub fn system_step_ms() -> i64 {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    // the gateway's time first: a step between the two reads only adds to the difference
    let ours = signed(now_ms());
    signed(system_now_ms()) - ours
}

const DAY_MS: i64 = 86_400_000;

/// The business time zone of this process, minutes east of UTC: set once at start from
/// `wallet.limits_utc_offset_minutes` (IST, 330, until then). The ledger's per-day counters
/// and the limits that read them use this one calendar.
static BUSINESS_UTC_OFFSET_MINUTES: std::sync::atomic::AtomicI32 =
    std::sync::atomic::AtomicI32::new(330);

/// Sets the business time zone (see [`business_calendar`]).
pub fn set_business_utc_offset_minutes(minutes: i32) {
    BUSINESS_UTC_OFFSET_MINUTES.store(minutes, std::sync::atomic::Ordering::Relaxed);
}

/// The calendar days and months are counted in, for limits.
pub fn business_calendar() -> Calendar {
    Calendar {
        utc_offset_minutes: BUSINESS_UTC_OFFSET_MINUTES.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// The calendar of one time zone, `utc_offset_minutes` east of UTC (IST is 330).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    pub utc_offset_minutes: i32,
}

impl Calendar {
    fn offset_ms(self) -> i64 {
        i64::from(self.utc_offset_minutes) * 60_000
    }

    /// The local hour of the day (0-23) at `now_ms`.
    pub fn hour_of_day(self, now_ms: u64) -> u8 {
        let local = i64::try_from(now_ms).unwrap_or(i64::MAX) + self.offset_ms();
        u8::try_from(local.rem_euclid(DAY_MS) / 3_600_000).unwrap_or(0)
    }

    /// The local day containing `now_ms`, counted in days since 1970-01-01 (local).
    pub fn day_number(self, now_ms: u64) -> i64 {
        let local = i64::try_from(now_ms).unwrap_or(i64::MAX) + self.offset_ms();
        local.div_euclid(DAY_MS)
    }

    /// The local day number on which the local month containing `now_ms` began.
    pub fn month_first_day_number(self, now_ms: u64) -> i64 {
        let days = self.day_number(now_ms);
        let (_, _, day) = civil_from_days(days);
        days - i64::from(day) + 1
    }

    /// The start of the local day and of the local calendar month containing `now_ms`, in ms
    /// since the epoch.
    pub fn day_and_month_start(self, now_ms: u64) -> (u64, u64) {
        let clamp = |v: i64| u64::try_from(v).unwrap_or(0);
        let day_start = self.day_number(now_ms) * DAY_MS - self.offset_ms();
        let month_start = self.month_first_day_number(now_ms) * DAY_MS - self.offset_ms();
        (clamp(day_start), clamp(month_start))
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// civil_from_days algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_days_and_months_start_at_local_midnight() {
        // 2026-11-23 20:00 UTC is 2026-11-24 01:30 in India (+05:30)
        let now = 1_795_464_000_000;
        let ist = Calendar {
            utc_offset_minutes: 330,
        };
        let (day, month) = ist.day_and_month_start(now);
        // 2026-11-24 00:00 IST = 2026-11-23 18:30 UTC
        assert_eq!(day, 1_795_458_600_000);
        // 2026-11-01 00:00 IST = 2026-10-31 18:30 UTC
        assert_eq!(month, 1_793_471_400_000);
        assert_eq!(ist.day_number(now) - ist.month_first_day_number(now), 23);
        // in UTC the same moment is still the 23rd
        let utc = Calendar {
            utc_offset_minutes: 0,
        };
        let (day, month) = utc.day_and_month_start(now);
        assert_eq!(day, 1_795_392_000_000);
        assert_eq!(month, 1_793_491_200_000);
        assert_eq!(utc.day_number(now) - utc.month_first_day_number(now), 22);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
