//! The rate limit per caller (`http.caller_requests_per_s`, bursts of
//! `http.caller_requests_burst`): a keyed generic cell rate limiter (governor), keyed by the
//! token's subject, or by the peer address for requests without a valid token. At most
//! `http.callers_max` callers are remembered: when that many are, those whose allowance is
//! full again are forgotten (they are the same as callers never seen), and if that many are
//! still over their allowance every request is refused `OVERLOADED` until some recover.

use super::error::ApiError;
use crate::config::HttpSettings;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use paygate_core::ErrorCode;
use std::num::NonZeroU32;

pub struct CallerLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    callers_max: usize,
}

impl CallerLimiter {
    pub fn new(settings: &HttpSettings) -> CallerLimiter {
        let rate = NonZeroU32::new(settings.caller_requests_per_s).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.caller_requests_burst).unwrap_or(NonZeroU32::MIN);
        CallerLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            callers_max: settings.callers_max,
        }
    }

    /// Takes one request of `caller`'s allowance, or says when to come back.
    pub fn check(&self, caller: &str) -> Result<(), ApiError> {
        if self.limiter.len() >= self.callers_max {
            self.sweep();
            if self.limiter.len() >= self.callers_max {
                let mut refused = ApiError::new(
                    ErrorCode::Overloaded,
                    "the gateway is tracking http.callers_max callers; retry after the time in Retry-After",
                );
                refused.retry_after_s = Some(1);
                return Err(refused);
            }
        }
        let key = caller.to_owned();
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let mut refused = ApiError::new(
                    ErrorCode::Overloaded,
                    "this caller is over http.caller_requests_per_s; retry after the time in Retry-After",
                );
                refused.retry_after_s = Some(wait.as_secs().max(1));
                Err(refused)
            }
        }
    }

    /// Forgets callers whose allowance is full (they are the same as a caller never seen).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn callers(&self) -> usize {
        self.limiter.len()
    }
}
