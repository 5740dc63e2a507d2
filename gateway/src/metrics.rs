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
    audit_records: AtomicU64,
    audit_segments_sealed: AtomicU64,
    audit_segments_shipped: AtomicU64,
    audit_journal_failures: AtomicU64,
    audit_shipping_failures: AtomicU64,
    audit_outbox_tampered: AtomicU64,
    audit_backlog_bytes: AtomicU64,
    key_failures: AtomicU64,
    challenges_issued: AtomicU64,
    pipeline_batches: AtomicU64,
    pipeline_batches_retried: AtomicU64,
    pipeline_batch_size_max: AtomicU64,
    pipeline_bulk_decided: AtomicU64,
    /// Per pipeline stage ([`Stage`]): runs, and nanoseconds spent in them.
    stage_runs: [AtomicU64; 4],
    stage_nanos: [AtomicU64; 4],
    /// Requests waiting in the pipeline's queue when the checker last took a batch.
    pipeline_queue_depth: AtomicU64,
}

/// The pipeline's stages as `/metrics` names them.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Verify = 0,
    Prepare = 1,
    Decide = 2,
    Journal = 3,
}

const STAGES: [&str; 4] = ["verify", "prepare", "decide", "journal"];

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
    pub audit_records: u64,
    pub audit_segments_sealed: u64,
    pub audit_segments_shipped: u64,
    pub audit_journal_failures: u64,
    pub audit_shipping_failures: u64,
    /// Outbox rows that failed their MAC or place check, and gaps found.
    pub audit_outbox_tampered: u64,
    pub audit_backlog_bytes: u64,
    pub key_failures: u64,
    pub challenges_issued: u64,
    /// Batches the pipeline has run, and the largest (requests taken off the queue together).
    pub pipeline_batches: u64,
    /// Batches decided again because another replica wrote one of their requests first.
    pub pipeline_batches_retried: u64,
    pub pipeline_batch_size_max: u64,
    /// Requests decided together in a batch's fast lane (the rest were decided alone).
    pub pipeline_bulk_decided: u64,
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

    pub fn count_audit_records(&self, count: usize) {
        self.audit_records
            .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    pub fn count_audit_segment_sealed(&self) {
        self.audit_segments_sealed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_audit_segment_shipped(&self) {
        self.audit_segments_shipped.fetch_add(1, Ordering::Relaxed);
    }
    /// PCI DSS 10.7.2: a failure of the audit logging itself (alert on any increase).
    pub fn count_audit_failure(&self) {
        self.audit_journal_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// PCI DSS 10.7.2: shipping to write-once storage failed (alert on any increase).
    pub fn count_audit_shipping_failure(&self) {
        self.audit_shipping_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// PCI DSS 10.3.2: outbox rows that failed their check (alert on any increase).
    pub fn count_audit_outbox_tampered(&self, count: usize) {
        self.audit_outbox_tampered
            .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    pub fn count_challenged(&self) {
        self.challenges_issued.fetch_add(1, Ordering::Relaxed);
    }
    /// A request needed a key the provider could not give (alert on any increase).
    pub fn count_key_failure(&self) {
        self.key_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// A batch of `size` requests entered the pipeline.
    pub fn count_bulk_decided(&self, count: usize) {
        self.pipeline_bulk_decided
            .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    pub fn count_batch_retried(&self) {
        self.pipeline_batches_retried
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_batch(&self, size: usize) {
        self.pipeline_batches.fetch_add(1, Ordering::Relaxed);
        self.pipeline_batch_size_max
            .fetch_max(u64::try_from(size).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    /// One run of a pipeline stage that took `elapsed`.
    pub fn time_stage(&self, stage: Stage, elapsed: std::time::Duration) {
        let at = stage as usize;
        self.stage_runs[at].fetch_add(1, Ordering::Relaxed);
        self.stage_nanos[at].fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn set_pipeline_queue_depth(&self, depth: usize) {
        self.pipeline_queue_depth
            .store(u64::try_from(depth).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn set_audit_backlog_bytes(&self, bytes: u64) {
        self.audit_backlog_bytes.store(bytes, Ordering::Relaxed);
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
            audit_records: self.audit_records.load(Ordering::Relaxed),
            audit_segments_sealed: self.audit_segments_sealed.load(Ordering::Relaxed),
            audit_segments_shipped: self.audit_segments_shipped.load(Ordering::Relaxed),
            audit_journal_failures: self.audit_journal_failures.load(Ordering::Relaxed),
            audit_shipping_failures: self.audit_shipping_failures.load(Ordering::Relaxed),
            audit_outbox_tampered: self.audit_outbox_tampered.load(Ordering::Relaxed),
            audit_backlog_bytes: self.audit_backlog_bytes.load(Ordering::Relaxed),
            key_failures: self.key_failures.load(Ordering::Relaxed),
            challenges_issued: self.challenges_issued.load(Ordering::Relaxed),
            pipeline_batches: self.pipeline_batches.load(Ordering::Relaxed),
            pipeline_batches_retried: self.pipeline_batches_retried.load(Ordering::Relaxed),
            pipeline_batch_size_max: self.pipeline_batch_size_max.load(Ordering::Relaxed),
            pipeline_bulk_decided: self.pipeline_bulk_decided.load(Ordering::Relaxed),
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
        for (name, value) in [
            ("paygate_audit_records_total", s.audit_records),
            (
                "paygate_audit_segments_sealed_total",
                s.audit_segments_sealed,
            ),
            (
                "paygate_audit_segments_shipped_total",
                s.audit_segments_shipped,
            ),
            (
                "paygate_audit_journal_failures_total",
                s.audit_journal_failures,
            ),
            (
                "paygate_audit_shipping_failures_total",
                s.audit_shipping_failures,
            ),
            (
                "paygate_audit_outbox_tampered_total",
                s.audit_outbox_tampered,
            ),
            ("paygate_audit_backlog_bytes", s.audit_backlog_bytes),
            ("paygate_key_failures_total", s.key_failures),
            ("paygate_challenges_issued_total", s.challenges_issued),
            ("paygate_pipeline_batches_total", s.pipeline_batches),
            (
                "paygate_pipeline_batches_retried_total",
                s.pipeline_batches_retried,
            ),
            ("paygate_pipeline_batch_size_max", s.pipeline_batch_size_max),
            (
                "paygate_pipeline_bulk_decided_total",
                s.pipeline_bulk_decided,
            ),
        ] {
            let _ = writeln!(out, "{name} {value}");
        }
        for (code, count) in &s.refusals {
            let _ = writeln!(out, "paygate_refusals_total{{code=\"{code}\"}} {count}");
        }
        for (code, count) in &s.declines {
            let _ = writeln!(out, "paygate_declines_total{{code=\"{code}\"}} {count}");
        }
        for (at, stage) in STAGES.iter().enumerate() {
            let runs = self.stage_runs[at].load(Ordering::Relaxed);
            let nanos = self.stage_nanos[at].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "paygate_pipeline_stage_runs_total{{stage=\"{stage}\"}} {runs}"
            );
            let _ = writeln!(
                out,
                "paygate_pipeline_stage_seconds_total{{stage=\"{stage}\"}} {:.6}",
                nanos as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "paygate_pipeline_queue_depth {}",
            self.pipeline_queue_depth.load(Ordering::Relaxed)
        );
        typed(&out)
    }
}

/// The exposition with a `# TYPE` line before each metric's first sample: `counter` for the
/// `_total` names (so a scraper computes rates from them), `gauge` for the others.
pub(crate) fn typed(samples: &str) -> String {
    let mut out = String::with_capacity(samples.len() * 2);
    let mut typed = std::collections::BTreeSet::new();
    for line in samples.lines() {
        let name = line.split(['{', ' ']).next().unwrap_or_default().to_owned();
        if typed.insert(name.clone()) {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod exposition_tests {
    use super::*;

    #[test]
    fn every_metric_is_typed_once_before_its_first_sample() {
        let metrics = Metrics::default();
        metrics.count_refusal(paygate_core::ErrorCode::Overloaded);
        metrics.count_refusal(paygate_core::ErrorCode::TokenInvalid);
        let text = metrics.render_prometheus();
        let mut typed = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{name} twice"
                );
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let kind = typed.get(name).unwrap_or_else(|| panic!("{name} untyped"));
            let expected = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(kind, expected, "{name}");
        }
        assert_eq!(typed["paygate_refusals_total"], "counter");
        assert_eq!(typed["paygate_connections_open"], "gauge");
        assert_eq!(typed["paygate_pipeline_stage_seconds_total"], "counter");
        assert_eq!(typed["paygate_pipeline_queue_depth"], "gauge");
    }
}
