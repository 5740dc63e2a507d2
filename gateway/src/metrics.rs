//! Counters for every stage, keyed by stable error code where there is one. Rendered in the
//! Prometheus text format by [`Metrics::render_prometheus`].

use paygate_core::ErrorCode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Metrics {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    requests_approved: AtomicU64,
    requests_replayed: AtomicU64,
    ledger_invariant_alerts: AtomicU64,
    refusals: Mutex<BTreeMap<ErrorCode, u64>>,
    declines: Mutex<BTreeMap<ErrorCode, u64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub requests_approved: u64,
    pub requests_replayed: u64,
    pub ledger_invariant_alerts: u64,
    pub refusals: BTreeMap<ErrorCode, u64>,
    pub declines: BTreeMap<ErrorCode, u64>,
}

impl MetricsSnapshot {
    pub fn refusals_of(&self, code: ErrorCode) -> u64 {
        self.refusals.get(&code).copied().unwrap_or(0)
    }
}

fn bump(map: &Mutex<BTreeMap<ErrorCode, u64>>, code: ErrorCode) {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *map.entry(code).or_insert(0) += 1;
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn count_approved(&self) {
        self.requests_approved.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_replayed(&self) {
        self.requests_replayed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_invariant_alert(&self) {
        self.ledger_invariant_alerts.fetch_add(1, Ordering::Relaxed);
    }
    /// A message or connection refused before any decision (front or pipeline).
    pub fn count_refusal(&self, code: ErrorCode) {
        bump(&self.refusals, code);
    }
    /// A valid request the pipeline declined.
    pub fn count_declined(&self, code: ErrorCode) {
        bump(&self.declines, code);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let copy = |map: &Mutex<BTreeMap<ErrorCode, u64>>| {
            map.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        MetricsSnapshot {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            requests_approved: self.requests_approved.load(Ordering::Relaxed),
            requests_replayed: self.requests_replayed.load(Ordering::Relaxed),
            ledger_invariant_alerts: self.ledger_invariant_alerts.load(Ordering::Relaxed),
            refusals: copy(&self.refusals),
            declines: copy(&self.declines),
        }
    }

    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write;
        let s = self.snapshot();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "paygate_connections_accepted_total {}",
            s.connections_accepted
        );
        let _ = writeln!(out, "paygate_connections_open {}", s.connections_open);
        let _ = writeln!(
            out,
            "paygate_requests_approved_total {}",
            s.requests_approved
        );
        let _ = writeln!(
            out,
            "paygate_requests_replayed_total {}",
            s.requests_replayed
        );
        let _ = writeln!(
            out,
            "paygate_ledger_invariant_alerts_total {}",
            s.ledger_invariant_alerts
        );
        for (code, count) in &s.refusals {
            let _ = writeln!(out, "paygate_refusals_total{{code=\"{code}\"}} {count}");
        }
        for (code, count) in &s.declines {
            let _ = writeln!(out, "paygate_declines_total{{code=\"{code}\"}} {count}");
        }
        out
    }
}
