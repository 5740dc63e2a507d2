//! Crash points for the fault tests: with `PAYGATE_CRASH_AT=<point>` in its environment, the
//! process aborts the first time it reaches that point (no unwinding, no destructors, no
//! flushing: what a SIGKILL does at that exact moment). The tests (`audit_kill`) crash the real
//! `paygate serve` at each point in [`POINTS`] and check that nothing is lost or doubled.
//! Without the variable a point costs one comparison; it is read once.

use std::sync::OnceLock;

/// Every crash point, in the order a payment's life reaches them.
pub const POINTS: &[&str] = &[
    // a batch's decisions committed, their audit records not yet in the journal, no receipt sent
    "batch.committed",
    // a segment about to be sealed: its checkpoint not yet written
    "seal.before_checkpoint",
    // the checkpoint written, the outbox not yet pruned, the next segment not begun
    "seal.checkpoint_written",
    // a segment in write-once storage, its checkpoint not yet
    "ship.segment_stored",
    // segment and checkpoint stored, the witness copy and the local delete not yet done
    "ship.checkpoint_stored",
];

/// Aborts the process here if `PAYGATE_CRASH_AT` names `point`.
pub fn point(point: &'static str) {
    static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();
    let at = CRASH_AT.get_or_init(|| std::env::var("PAYGATE_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        eprintln!("PAYGATE_CRASH_AT={point}: aborting here");
        std::process::abort();
    }
}
