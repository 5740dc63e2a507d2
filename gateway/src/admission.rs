//! Admission at the front: what a device may put into the pipeline, decided before anything
//! reaches the broker.
//!
//! A [`Registry`] keeps, per device (not per connection: reconnecting changes nothing), a rate
//! limit (`mqtt.device_requests_per_s`, bursts of `mqtt.device_requests_burst`) and the times
//! of its requests still waiting for an answer, at most `mqtt.device_inflight_max`; and for
//! the whole gateway, at most `pipeline.queue_depth_max` requests in flight, so admitted
//! requests never outgrow the pipeline's queue (nor the broker's request log, which is sized
//! from it and so never drops one unread). A request over any of the three is answered at
//! once with `OVERLOADED` and a retry-after, and does no durable work.
//!
//! The pipeline says when it is done with a request (its reply published, or held back with
//! the batch's when the audit journal fails). A request whose end never came (lost on the way
//! in) stops counting after `mqtt.inflight_timeout_ms`; a sweep every second applies that to
//! every device, so a device that stops sending cannot hold the gateway's budget.

use paygate_core::DeviceId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
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

/// Every device's admission state, shared by all sessions (a device that reconnects keeps
/// its rate and its requests in flight) and by the pipeline, which says when a device's
/// request has been answered.
#[derive(Debug)]
pub struct Registry {
    limits: Limits,
    gateway_max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Requests admitted and not answered, all devices together.
    held: usize,
    devices: HashMap<DeviceId, DeviceState>,
}

#[derive(Debug)]
struct DeviceState {
    /// The rate limit as a generic cell rate algorithm (the token bucket's exact form): the
    /// theoretical time the next request is due. Only an admission moves it, so a refused
    /// request takes nothing and the state does not depend on how often the device asks.
    due: Instant,
    /// When each unanswered request was admitted, oldest first.
    waiting: VecDeque<Instant>,
}

impl Registry {
    pub fn new(limits: Limits, gateway_max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            limits,
            gateway_max,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // a few counters, consistent after every call: a panic elsewhere leaves them usable
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits one request of `device` at `now`, or says which limit refused it. A refused
    /// request takes nothing: no token, no slot.
    pub fn admit(&self, device: &DeviceId, now: Instant) -> Result<(), Refused> {
        let limits = self.limits;
        let mut state = self.state();
        let State { held, devices } = &mut *state;
        let entry = devices
            .entry(device.clone())
            .or_insert_with(|| DeviceState {
                due: now,
                waiting: VecDeque::new(),
            });
        *held = held.saturating_sub(expire(&mut entry.waiting, now, limits.inflight_timeout));
        let interval = limits.interval();
        let tolerance = interval * limits.burst.saturating_sub(1);
        if let Some(allowed_from) = entry.due.checked_sub(tolerance) {
            if now < allowed_from {
                return Err(Refused {
                    reason: Limit::Rate,
                    retry_after: whole_ms(allowed_from - now),
                });
            }
        }
        if entry.waiting.len() >= limits.inflight_max {
            return Err(Refused {
                reason: Limit::DeviceInFlight,
                retry_after: until_a_slot_frees(&entry.waiting, now, limits.inflight_timeout),
            });
        }
        if *held >= self.gateway_max {
            return Err(Refused {
                reason: Limit::GatewayInFlight,
                retry_after: GATEWAY_BUSY_HINT,
            });
        }
        *held += 1;
        entry.due = entry.due.max(now) + interval;
        entry.waiting.push_back(now);
        Ok(())
    }

    /// The pipeline is done with one request of `device` (answered, or decided with its reply
    /// held back): its oldest waiting request no longer counts.
    pub fn answered(&self, device: &DeviceId) {
        let mut state = self.state();
        let State { held, devices } = &mut *state;
        if let Some(entry) = devices.get_mut(device) {
            if entry.waiting.pop_front().is_some() {
                *held = held.saturating_sub(1);
            }
        }
    }

    /// Stops counting requests whose answer never came within `mqtt.inflight_timeout_ms`, and
    /// forgets devices with nothing in flight and a full allowance (a fresh entry is the
    /// same), so the map holds only devices active lately. Run every second or so.
    pub fn sweep(&self, now: Instant) {
        let timeout = self.limits.inflight_timeout;
        let mut state = self.state();
        let State { held, devices } = &mut *state;
        devices.retain(|_, entry| {
            *held = held.saturating_sub(expire(&mut entry.waiting, now, timeout));
            !(entry.waiting.is_empty() && entry.due <= now)
        });
    }

    /// Requests admitted and not answered, all devices together.
    pub fn held(&self) -> usize {
        self.state().held
    }

    pub fn in_flight(&self, device: &DeviceId) -> usize {
        self.state()
            .devices
            .get(device)
            .map_or(0, |entry| entry.waiting.len())
    }

    /// Devices the registry holds state for.
    pub fn devices(&self) -> usize {
        self.state().devices.len()
    }
}

/// Runs [`Registry::sweep`] every second until shutdown.
pub async fn run_sweeper(
    registry: Arc<Registry>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => registry.sweep(Instant::now()),
            _ = shutdown.changed() => return,
        }
    }
}

impl Limits {
    pub fn from_settings(mqtt: &crate::config::MqttSettings) -> Limits {
        Limits {
            requests_per_s: mqtt.device_requests_per_s,
            burst: mqtt.device_requests_burst,
            inflight_max: mqtt.device_inflight_max,
            inflight_timeout: Duration::from_millis(mqtt.inflight_timeout_ms),
        }
    }

    /// The time one request earns: a second over the rate.
    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.requests_per_s.max(1)
    }
}

/// The wait suggested when the whole gateway is at its in-flight budget: about one batch.
const GATEWAY_BUSY_HINT: Duration = Duration::from_millis(50);

/// Drops the waiting requests older than `timeout`; returns how many.
fn expire(waiting: &mut VecDeque<Instant>, now: Instant, timeout: Duration) -> usize {
    let mut expired = 0;
    while let Some(admitted) = waiting.front() {
        if now.saturating_duration_since(*admitted) < timeout {
            break;
        }
        waiting.pop_front();
        expired += 1;
    }
    expired
}

/// A hint for a device at its in-flight limit: a typical answer takes well under the oldest
/// request's remaining timeout, so suggest a short wait, at most that.
fn until_a_slot_frees(waiting: &VecDeque<Instant>, now: Instant, timeout: Duration) -> Duration {
    const HINT: Duration = Duration::from_millis(100);
    waiting
        .front()
        .map(|oldest| (*oldest + timeout).saturating_duration_since(now).min(HINT))
        .map_or(HINT, whole_ms)
}

/// A wait as devices are told it: whole milliseconds, rounded up, at least one.
fn whole_ms(wait: Duration) -> Duration {
    let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
    Duration::from_millis(micros.div_ceil(1000).max(1))
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

    fn device(n: usize) -> DeviceId {
        DeviceId::parse(&format!("pos-{n}")).expect("valid")
    }

    #[test]
    fn a_full_allowance_admits_its_burst_then_refuses_with_the_time_to_the_next_request() {
        let start = Instant::now();
        let registry = Registry::new(limits(10, 5, 100), 1000);
        for _ in 0..5 {
            registry.admit(&device(1), start).expect("within the burst");
        }
        let refused = registry
            .admit(&device(1), start)
            .expect_err("the burst is spent");
        assert_eq!(refused.reason, Limit::Rate);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        registry
            .admit(&device(1), start + Duration::from_millis(100))
            .expect("one more after 100 ms at 10/s");
        registry
            .admit(&device(2), start)
            .expect("another device has its own allowance");
    }

    #[test]
    fn unanswered_requests_expire_in_the_sweep_and_idle_devices_are_forgotten() {
        let start = Instant::now();
        let registry = Registry::new(limits(100, 100, 10), 3);
        for _ in 0..3 {
            registry.admit(&device(1), start).expect("room");
        }
        // a device that stops sending holds the budget only until the timeout
        assert_eq!(
            registry.admit(&device(2), start).map_err(|r| r.reason),
            Err(Limit::GatewayInFlight)
        );
        registry.sweep(start + Duration::from_secs(29));
        assert_eq!(registry.held(), 3);
        let later = start + Duration::from_secs(30);
        registry.sweep(later);
        assert_eq!(registry.held(), 0);
        assert_eq!(
            registry.devices(),
            0,
            "nothing in flight, allowance full: forgotten"
        );
        registry
            .admit(&device(2), later)
            .expect("the budget is back");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Request(usize),
        Answer(usize),
        Sweep,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => (0u64..400).prop_map(Step::Wait),
            1 => Just(Step::Wait(31_000)),
            6 => (0usize..3).prop_map(Step::Request),
            3 => (0usize..3).prop_map(Step::Answer),
            1 => Just(Step::Sweep),
        ]
    }

    proptest! {
        /// Against a model that keeps every admission time and every open request: a request
        /// is refused exactly when one of the limits is reached (the rate judged by a fresh
        /// registry fed only the device's admissions); a refusal's wait is enough; no device
        /// ever has more than its in-flight limit open, nor the gateway more than its budget;
        /// the gateway's count is the devices' sum; and in any window of `w` ms a device is
        /// admitted at most `burst + w / interval` requests.
        #[test]
        fn admission_matches_its_model(
            rate in 1u32..200,
            burst in 1u32..20,
            inflight in 1usize..12,
            gateway_max in 1usize..30,
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let start = Instant::now();
            let registry = Registry::new(limits(rate, burst, inflight), gateway_max);
            let mut admitted: Vec<Vec<u64>> = vec![Vec::new(); 3];
            // the model's open requests: admission times per device, oldest first
            let mut open: Vec<VecDeque<u64>> = vec![VecDeque::new(); 3];
            let mut now_ms = 0u64;
            for step in steps {
                let now = start + Duration::from_millis(now_ms);
                let expire_model = |open: &mut Vec<VecDeque<u64>>, who: Option<usize>| {
                    for (n, times) in open.iter_mut().enumerate() {
                        if who.is_none_or(|w| w == n) {
                            while times.front().is_some_and(|t| now_ms - t >= 30_000) {
                                times.pop_front();
                            }
                        }
                    }
                };
                match step {
                    Step::Wait(ms) => now_ms += ms,
                    Step::Sweep => {
                        registry.sweep(now);
                        expire_model(&mut open, None);
                    }
                    Step::Answer(who) => {
                        registry.answered(&device(who));
                        open[who].pop_front();
                    }
                    Step::Request(who) => {
                        expire_model(&mut open, Some(who));
                        let held: usize = open.iter().map(VecDeque::len).sum();
                        let mut probe = Registry::new(limits(rate, burst, usize::MAX), usize::MAX);
                        let mut replay_ok = true;
                        for at in &admitted[who] {
                            replay_ok &= probe.admit(&device(who), start + Duration::from_millis(*at)).is_ok();
                        }
                        prop_assert!(replay_ok, "replaying the admissions is admitted");
                        let rate_ok = probe.admit(&device(who), now).is_ok();
                        probe = Registry::new(limits(rate, burst, usize::MAX), usize::MAX);
                        for at in &admitted[who] {
                            let _ = probe.admit(&device(who), start + Duration::from_millis(*at));
                        }
                        let expected = if !rate_ok {
                            Some(Limit::Rate)
                        } else if open[who].len() >= inflight {
                            Some(Limit::DeviceInFlight)
                        } else if held >= gateway_max {
                            Some(Limit::GatewayInFlight)
                        } else {
                            None
                        };
                        match registry.admit(&device(who), now) {
                            Ok(()) => {
                                prop_assert_eq!(expected, None);
                                admitted[who].push(now_ms);
                                open[who].push_back(now_ms);
                            }
                            Err(refused) => {
                                prop_assert_eq!(expected, Some(refused.reason));
                                prop_assert!(refused.retry_after >= Duration::from_millis(1));
                                prop_assert_eq!(refused.retry_after.subsec_nanos() % 1_000_000, 0);
                                if refused.reason == Limit::Rate {
                                    let later = now + refused.retry_after;
                                    prop_assert!(probe.admit(&device(who), later).is_ok(), "admitted after the wait");
                                }
                            }
                        }
                    }
                }
                for (who, times) in open.iter().enumerate() {
                    prop_assert!(registry.in_flight(&device(who)) <= inflight);
                    prop_assert!(times.len() <= inflight);
                }
                let sum: usize = (0..3).map(|n| registry.in_flight(&device(n))).sum();
                prop_assert_eq!(registry.held(), sum);
                prop_assert!(registry.held() <= gateway_max);
            }
            for times in &admitted {
                for (i, first) in times.iter().enumerate() {
                    let in_window = |w: u64| times[i..].iter().filter(|t| **t < first + w).count();
                    for w in [1u64, 50, 250, 1000, 5000] {
                        // GCRA: the k-th admission from a full allowance is at least
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
