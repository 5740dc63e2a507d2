//! The audit log's clocks (PCI DSS 10.6): the gateway's time against the database server's
//! and against the host's system clock. Off by more than `audit.clock_skew_max_ms`, approvals
//! stop and a `clock_checked` record says so, once per change.

use super::{AuditError, AuditLog, WithDetail};
use paygate_core::audit::{AuditOutcome, EventType};
use std::sync::atomic::Ordering;

/// How long the system clock must stay ahead before the gateway's time follows it.
const FOLLOW_AHEAD_AFTER_MS: u64 = 10_000;

impl AuditLog {
    /// Measures the gateway's clock against the database server's: how far ahead the
    /// gateway is, in milliseconds (negative: behind), taken at the middle of the query's
    /// round trip, so the network's delay does not count as skew. Always 0 on SQLite, whose
    /// clock is this process's.
    pub async fn measure_clock_skew(&self) -> Result<i64, AuditError> {
        // SQLite runs in this process: its clock is the gateway's own
        if self.store.backend() == crate::store::Backend::Sqlite {
            return Ok(0);
        }
        // best of three: only the query's own round trip is timed (the connection is taken
        // first), and the sample with the shortest round trip bounds the error best
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..3 {
            let (before, database, after) = self.store.database_clock_sample().await?;
            let round_trip = after.saturating_sub(before);
            let middle = before / 2 + after / 2 + (before % 2 + after % 2) / 2;
            let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let skew = signed(middle) - signed(database);
            if best.is_none_or(|(shortest, _)| round_trip < shortest) {
                best = Some((round_trip, skew));
            }
        }
        let (round_trip, skew) = best.unwrap_or((0, 0));
        if round_trip > self.settings.clock_skew_max_ms {
            // a round trip longer than the limit cannot tell skew from delay: no verdict
            return Err(AuditError::ClockInconclusive(format!(
                "the database answered in {round_trip} ms at best, more than the limit"
            )));
        }
        Ok(skew)
    }

    /// Compares the clocks and acts on the difference: past `audit.clock_skew_max_ms`
    /// approvals stop and a `clock_checked` failure is recorded, once; back within it they
    /// resume and a success is recorded. Returns the skew measured.
    pub async fn check_clock(&self) -> Result<i64, AuditError> {
        let skew = self.measure_clock_skew().await?;
        self.apply_clock_skew(skew).await?;
        Ok(skew)
    }

    /// What [`AuditLog::check_clock`] does with a measured skew.
    pub async fn apply_clock_skew(&self, skew_ms: i64) -> Result<(), AuditError> {
        let limit = self.settings.clock_skew_max_ms;
        let off = skew_ms.unsigned_abs() > limit;
        let was_off = self.clock_skewed.swap(off, Ordering::AcqRel);
        if off == was_off {
            return Ok(());
        }
        let direction = if skew_ms >= 0 { "ahead of" } else { "behind" };
        let detail = format!(
            "the gateway's clock is {} ms {direction} the database server's (audit.clock_skew_max_ms = {limit})",
            skew_ms.unsigned_abs()
        );
        if off {
            tracing::error!(
                skew_ms,
                limit,
                "clocks disagree; approvals stop until they agree (PCI DSS 10.6)"
            );
        } else {
            tracing::info!(skew_ms, "clocks agree again; approvals resume");
        }
        let recorded = self.record_clock_change(off, detail).await;
        if recorded.is_err() {
            // not recorded: the change is seen again, and recorded, at the next check
            self.clock_skewed.store(!off, Ordering::Release);
        }
        recorded
    }

    /// Compares the system clock with the gateway's own time ([`crate::clock`]): stepped by
    /// more than `audit.clock_skew_max_ms`, approvals stop and a `clock_checked` failure is
    /// recorded, once; back within it (stepped back again), they resume with a success. The
    /// gateway's time itself never jumps: audit times stay in order and no timer fires early.
    pub async fn check_system_clock(&self) -> Result<i64, AuditError> {
        let step_ms = crate::clock::system_step_ms();
        let limit = self.settings.clock_skew_max_ms;
        let ahead_ms = u64::try_from(step_ms).unwrap_or(0);
        let now = crate::clock::now_ms();
        if ahead_ms <= limit {
            self.ahead_since_ms.store(0, Ordering::Release);
            return self.apply_system_step(step_ms).await;
        }
        let since = self.ahead_since_ms.load(Ordering::Acquire);
        if since == 0 {
            self.ahead_since_ms.store(now, Ordering::Release);
        } else if now.saturating_sub(since) >= FOLLOW_AHEAD_AFTER_MS {
            // ahead for long enough: not a blip; follow it forward (never back)
            crate::clock::move_forward(ahead_ms);
            self.ahead_since_ms.store(0, Ordering::Release);
            self.clock_stepped.store(false, Ordering::Release);
            tracing::warn!(
                ahead_ms,
                "the gateway's time moved forward to the system clock"
            );
            self.record_clock_change(
                false,
                format!(
                    "the system clock stayed {ahead_ms} ms ahead of the gateway's own time for {} s: the gateway's time moved forward to it (a VM resumed, or a clock behind corrected); timers due in that span fire now",
                    FOLLOW_AHEAD_AFTER_MS / 1000
                ),
            )
            .await?;
            return Ok(step_ms);
        }
        self.apply_system_step(step_ms).await
    }

    /// What [`AuditLog::check_system_clock`] does with a measured step.
    pub async fn apply_system_step(&self, step_ms: i64) -> Result<i64, AuditError> {
        let limit = self.settings.clock_skew_max_ms;
        let off = step_ms.unsigned_abs() > limit;
        if off == self.clock_stepped.swap(off, Ordering::AcqRel) {
            return Ok(step_ms);
        }
        let direction = if step_ms >= 0 { "ahead of" } else { "behind" };
        let detail = format!(
            "the system clock is {} ms {direction} the gateway's own time (audit.clock_skew_max_ms = {limit}){}",
            step_ms.unsigned_abs(),
            if off {
                ": it was stepped; the gateway keeps its own time and approves nothing until they agree, or until it is restarted"
            } else {
                ""
            }
        );
        if off {
            tracing::error!(step_ms, limit, "the system clock was stepped; approvals stop until it agrees with the gateway's time");
        } else {
            tracing::info!(
                step_ms,
                "the system clock agrees with the gateway's time again; approvals resume"
            );
        }
        if let Err(error) = self.record_clock_change(off, detail).await {
            // not recorded: the change is seen again, and recorded, at the next check
            self.clock_stepped.store(!off, Ordering::Release);
            return Err(error);
        }
        Ok(step_ms)
    }

    /// The `clock_checked` record of a change: a failure when the clocks part, a success
    /// when they agree again.
    async fn record_clock_change(&self, off: bool, detail: String) -> Result<(), AuditError> {
        let outcome = if off {
            AuditOutcome::Failure
        } else {
            AuditOutcome::Success
        };
        self.record(
            self.system_event(EventType::ClockChecked, outcome)
                .with_detail(detail),
        )
        .await
    }
}
