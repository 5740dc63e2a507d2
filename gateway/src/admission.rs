//! Admission at the front: what a device may put into the pipeline, decided before anything
//! reaches the broker.
//!
//! Each session holds a [`DeviceAdmission`]: a token bucket (`mqtt.device_requests_per_s`,
//! burst `mqtt.device_requests_burst`) and the times of its requests still waiting for an
//! answer, at most `mqtt.device_inflight_max`. All sessions share one [`InFlight`] budget of
//! `pipeline.queue_depth_max` requests, so the requests admitted and not yet answered never
//! outgrow the pipeline's queue (and the broker's request log, which is sized from it, never
//! has to drop one unread). A request over any of the three is answered at once with
//! `OVERLOADED` and a retry-after, and does no durable work.
//!
//! A request leaves the in-flight set when a reply for the device passes the front (every
//! request the pipeline reads gets one reply), when the session ends, or, if its reply never
//! came (a batch whose refusals could not be audited sends none), after
//! `mqtt.inflight_timeout_ms`. A UPI payment's final receipt, which follows its pending one,
//! frees a slot early: the device can then have one more request in flight for a while, still
//! under its rate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The limits one device's requests are held to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub requests_per_s: u32,
    pub burst: u32,
    pub inflight_max: usize,
    pub inflight_timeout: Duration,
}

/// Why a request was not admitted, and when the device should try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub reason: Limit,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `mqtt.device_requests_per_s` and `mqtt.device_requests_burst`.
    Rate,
    /// `mqtt.device_inflight_max`.
    DeviceInFlight,
    /// `pipeline.queue_depth_max`, shared by every device.
    GatewayInFlight,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rate => "device_rate",
            Limit::DeviceInFlight => "device_inflight",
            Limit::GatewayInFlight => "gateway_inflight",
        }
    }
}

/// The gateway-wide count of admitted requests not yet answered.
#[derive(Debug)]
pub struct InFlight {
    held: AtomicUsize,
    max: usize,
}

impl InFlight {
    pub fn new(max: usize) -> Arc<InFlight> {
        Arc::new(InFlight {
            held: AtomicUsize::new(0),
            max,
        })
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then_some(held + 1)
            })
            .is_ok()
    }

    fn give_back(&self, count: usize) {
        if count > 0 {
            // never below zero, whatever order sessions end in
            let _ = self
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    Some(held.saturating_sub(count))
                });
        }
    }
}

/// One session's admission state. Dropping it gives its in-flight requests back to the
/// gateway's budget.
#[derive(Debug)]
pub struct DeviceAdmission {
    limits: Limits,
    gateway: Arc<InFlight>,
    /// The rate limit as a generic cell rate algorithm (the token bucket's exact form): the
    /// theoretical time the next request is due. Only an admission moves it, so a refused
    /// request takes nothing and the state does not depend on how often the device asks.
    due: Instant,
    /// When each unanswered request was admitted, oldest first.
    waiting: VecDeque<Instant>,
}

impl DeviceAdmission {
    pub fn new(limits: Limits, gateway: Arc<InFlight>, now: Instant) -> DeviceAdmission {
        DeviceAdmission {
            due: now,
            waiting: VecDeque::with_capacity(limits.inflight_max.min(64)),
            limits,
            gateway,
        }
    }

    /// Admits one request at `now`, or says which limit refused it. A refused request takes
    /// nothing: no token, no slot.
    pub fn admit(&mut self, now: Instant) -> Result<(), Refused> {
        self.expire(now);
        let interval = self.interval();
        let tolerance = interval * self.limits.burst.saturating_sub(1);
        if let Some(allowed_from) = self.due.checked_sub(tolerance) {
            if now < allowed_from {
                return Err(Refused {
                    reason: Limit::Rate,
                    retry_after: whole_ms(allowed_from - now),
                });
            }
        }
        if self.waiting.len() >= self.limits.inflight_max {
            return Err(Refused {
                reason: Limit::DeviceInFlight,
                retry_after: self.until_a_slot_frees(now),
            });
        }
        if !self.gateway.try_take() {
            return Err(Refused {
                reason: Limit::GatewayInFlight,
                retry_after: self.until_a_slot_frees(now),
            });
        }
        self.due = self.due.max(now) + interval;
        self.waiting.push_back(now);
        Ok(())
    }

    /// A reply for this device passed the front: its oldest waiting request is answered.
    pub fn answered(&mut self) {
        if self.waiting.pop_front().is_some() {
            self.gateway.give_back(1);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// The time one request earns: a second over the rate.
    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.limits.requests_per_s.max(1)
    }

    /// Requests waiting longer than the timeout lost their reply somewhere: stop counting them.
    fn expire(&mut self, now: Instant) {
        let mut expired = 0;
        while let Some(admitted) = self.waiting.front() {
            if now.saturating_duration_since(*admitted) < self.limits.inflight_timeout {
                break;
            }
            self.waiting.pop_front();
            expired += 1;
        }
        self.gateway.give_back(expired);
    }

    /// A hint for a device at an in-flight limit: a typical answer takes well under the
    /// oldest request's remaining timeout, so suggest a short wait, at most that.
    fn until_a_slot_frees(&self, now: Instant) -> Duration {
        const HINT: Duration = Duration::from_millis(100);
        self.waiting
            .front()
            .map(|oldest| {
                let frees_by = *oldest + self.limits.inflight_timeout;
                frees_by.saturating_duration_since(now).min(HINT)
            })
            .map_or(HINT, whole_ms)
    }
}

/// A wait as devices are told it: whole milliseconds, rounded up, at least one.
fn whole_ms(wait: Duration) -> Duration {
    let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
    Duration::from_millis(micros.div_ceil(1000).max(1))
}

impl Drop for DeviceAdmission {
    fn drop(&mut self) {
        self.gateway.give_back(self.waiting.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(rate: u32, burst: u32, inflight: usize) -> Limits {
        Limits {
            requests_per_s: rate,
            burst,
            inflight_max: inflight,
            inflight_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_refuses_with_the_time_to_the_next_token() {
        let start = Instant::now();
        let gateway = InFlight::new(1000);
        let mut device = DeviceAdmission::new(limits(10, 5, 100), gateway, start);
        for _ in 0..5 {
            device.admit(start).expect("within the burst");
        }
        let refused = device.admit(start).expect_err("the bucket is empty");
        assert_eq!(refused.reason, Limit::Rate);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        device
            .admit(start + Duration::from_millis(100))
            .expect("one token after 100 ms at 10/s");
    }

    #[test]
    fn a_session_that_ends_gives_its_slots_back() {
        let start = Instant::now();
        let gateway = InFlight::new(3);
        let mut first = DeviceAdmission::new(limits(100, 100, 10), gateway.clone(), start);
        for _ in 0..3 {
            first.admit(start).expect("room");
        }
        let mut second = DeviceAdmission::new(limits(100, 100, 10), gateway.clone(), start);
        assert_eq!(
            second.admit(start).map_err(|r| r.reason),
            Err(Limit::GatewayInFlight)
        );
        drop(first);
        assert_eq!(gateway.held(), 0);
        second
            .admit(start)
            .expect("the first session's slots are free");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Request,
        Reply,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => (0u64..400).prop_map(Step::Wait),
            4 => Just(Step::Request),
            2 => Just(Step::Reply),
        ]
    }

    proptest! {
        /// Against a model that keeps every admission time: in any window of `w` ms a device
        /// is admitted at most `burst + rate * w / 1000` requests; it never has more than
        /// `inflight_max` unanswered; the gateway's count equals the sessions' sum; a request
        /// is refused only when one of the limits is really reached; and a refusal's wait is
        /// enough (for the rate limit, the request is admitted once it has passed).
        #[test]
        fn admission_matches_its_model(
            rate in 1u32..200,
            burst in 1u32..20,
            inflight in 1usize..12,
            gateway_max in 1usize..30,
            steps in proptest::collection::vec((0usize..3, step()), 1..300),
        ) {
            let start = Instant::now();
            let gateway = InFlight::new(gateway_max);
            let mut sessions: Vec<DeviceAdmission> = (0..3)
                .map(|_| DeviceAdmission::new(limits(rate, burst, inflight), gateway.clone(), start))
                .collect();
            let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); 3];
            let mut now_ms = 0u64;
            for (who, step) in steps {
                let now = start + Duration::from_millis(now_ms);
                match step {
                    Step::Wait(ms) => now_ms += ms,
                    Step::Reply => sessions[who].answered(),
                    Step::Request => {
                        let before = sessions[who].in_flight();
                        let held_before = gateway.held();
                        match sessions[who].admit(now) {
                            Ok(()) => admitted[who].push(now_ms),
                            Err(refused) => {
                                prop_assert!(refused.retry_after >= Duration::from_millis(1));
                                prop_assert_eq!(refused.retry_after.subsec_nanos() % 1_000_000, 0);
                                match refused.reason {
                                    Limit::DeviceInFlight => prop_assert_eq!(before, inflight),
                                    Limit::GatewayInFlight => prop_assert_eq!(held_before, gateway_max),
                                    Limit::Rate => {
                                        // the model: a bucket that saw only the admissions
                                        let mut probe = DeviceAdmission::new(
                                            limits(rate, burst, usize::MAX),
                                            InFlight::new(usize::MAX),
                                            start,
                                        );
                                        let mut ok = true;
                                        for at in &admitted[who] {
                                            ok &= probe.admit(start + Duration::from_millis(*at)).is_ok();
                                        }
                                        prop_assert!(ok, "replaying the admissions is admitted");
                                        prop_assert!(probe.admit(now).is_err(), "the model refuses too");
                                        let later = now + refused.retry_after;
                                        prop_assert!(probe.admit(later).is_ok(), "admitted after the wait");
                                    }
                                }
                            }
                        }
                    }
                }
                for session in &sessions {
                    prop_assert!(session.in_flight() <= inflight);
                }
                let sum: usize = sessions.iter().map(DeviceAdmission::in_flight).sum();
                prop_assert_eq!(gateway.held(), sum);
                prop_assert!(gateway.held() <= gateway_max);
            }
            for times in &admitted {
                for (i, first) in times.iter().enumerate() {
                    let in_window = |w: u64| times[i..].iter().filter(|t| **t < first + w).count();
                    for w in [1u64, 50, 250, 1000, 5000] {
                        // GCRA: the k-th admission from a full bucket is at least
                        // (k - burst) intervals after the first
                        let interval_ns = 1_000_000_000 / u64::from(rate);
                        let bound = u64::from(burst) + (w * 1_000_000 - 1) / interval_ns;
                        prop_assert!(in_window(w) as u64 <= bound, "{} in {} ms", in_window(w), w);
                    }
                }
            }
        }
    }
}
