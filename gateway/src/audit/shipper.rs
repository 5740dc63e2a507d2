//! Moves sealed segments and their checkpoints from the local journal to write-once storage.
//!
//! For each sealed segment still in the journal, in order: put the segment, put its
//! checkpoint, put the checkpoint in the witness store too (when one is configured), then
//! delete the local segment file (checkpoints stay: the journal resumes from
//! them). A crash between any two steps repeats the puts on restart, which the store answers
//! with [`PutOutcome::AlreadyStored`]: nothing is lost and nothing stored twice. While storage
//! is down the segments wait on disk, the backlog metric grows, an `audit_shipping` failure
//! event is recorded once, and past `audit.backlog_bytes_max` payments are refused.

use super::worm::{PutOutcome, WormError, WormStore};
use super::{sealed_unshipped, AuditLog};
use crate::durable::sync_dir;
use paygate_core::audit::{checkpoint_name, segment_name, AuditOutcome, EventType};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The object that names the log a write-once store (a bucket prefix, a directory) holds.
pub const LOG_ID_KEY: &str = "log-id";

/// Claims `store` for this log before anything is shipped: the first log to start on it
/// writes its id there, and a gateway of another log is refused, so two replicas configured
/// with one store (one `audit.s3.prefix`) stop at start instead of colliding on segment
/// names. Each replica needs its own prefix; the auditor verifies each prefix as one log.
pub async fn claim_store<S: WormStore>(store: &S, log_id: &str) -> anyhow::Result<()> {
    match store.put_once(LOG_ID_KEY, log_id.as_bytes()).await {
        Ok(_) => Ok(()),
        Err(WormError::Conflict { .. }) => {
            let held = store
                .get(LOG_ID_KEY)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            anyhow::bail!(
                "the audit store already holds log {:?}, and this gateway keeps log {log_id:?}: give each replica its own audit store prefix (audit.s3.prefix, audit.local.dir; docs/operations.md)",
                String::from_utf8_lossy(&held)
            )
        }
        Err(error) => Err(error.into()),
    }
}

/// Ships everything sealed so far; returns how many segments were moved.
pub async fn ship_pending<S: WormStore, W: WormStore>(
    log: &AuditLog,
    store: &S,
    witness: Option<&W>,
) -> Result<u64, WormError> {
    let dir = log.dir().await;
    let mut shipped = 0;
    for (segment, _) in sealed_unshipped(&dir)? {
        let segment_key = segment_name(segment);
        let checkpoint_key = checkpoint_name(segment);
        let segment_bytes = tokio::fs::read(dir.join(&segment_key)).await?;
        let checkpoint_bytes = tokio::fs::read(dir.join(&checkpoint_key)).await?;
        let first = store.put_once(&segment_key, &segment_bytes).await?;
        crate::crash::point("ship.segment_stored");
        let second = store.put_once(&checkpoint_key, &checkpoint_bytes).await?;
        crate::crash::point("ship.checkpoint_stored");
        if let Some(witness) = witness {
            witness.put_once(&checkpoint_key, &checkpoint_bytes).await?;
        }
        if first == PutOutcome::AlreadyStored || second == PutOutcome::AlreadyStored {
            tracing::info!(
                segment,
                "audit segment was already stored (resumed after a stop)"
            );
        }
        tokio::fs::remove_file(dir.join(&segment_key)).await?;
        sync_dir(&dir.join("segments"))?;
        log.metrics.count_audit_segment_shipped();
        shipped += 1;
    }
    Ok(shipped)
}

/// The shipper task: ships when a segment is sealed or every `ship_interval_ms`; after a
/// failure retries with exponential backoff and jitter up to `ship_retry_delay_max_ms`.
pub async fn run<S: WormStore, W: WormStore>(
    log: Arc<AuditLog>,
    store: S,
    witness: Option<W>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(log.settings.ship_interval_ms);
    let delay_max = Duration::from_millis(log.settings.ship_retry_delay_max_ms);
    let mut failures: u32 = 0;
    loop {
        let result = ship_pending(&log, &store, witness.as_ref()).await;
        log.refresh_backlog().await;
        let delay = match result {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(failures, "audit shipping recovered");
                    let event = log.system_event(EventType::AuditShipping, AuditOutcome::Success);
                    if let Err(error) = log.record(event).await {
                        tracing::error!(%error, "audit event not recorded");
                    }
                }
                failures = 0;
                interval
            }
            Err(error) => {
                log.metrics.count_audit_shipping_failure();
                if failures == 0 {
                    // PCI DSS 10.7.2: the failure of a logging component is itself recorded
                    tracing::error!(%error, backlog_bytes = log.backlog_bytes(), "audit shipping failed; segments wait in the journal");
                    let mut event =
                        log.system_event(EventType::AuditShipping, AuditOutcome::Failure);
                    event.detail = Some(error.to_string());
                    if let Err(error) = log.record(event).await {
                        tracing::error!(%error, "audit event not recorded");
                    }
                } else {
                    tracing::warn!(%error, failures, "audit shipping still failing");
                }
                failures = failures.saturating_add(1);
                let exponent = failures.min(16);
                let backoff = interval
                    .saturating_mul(2u32.saturating_pow(exponent))
                    .min(delay_max);
                backoff.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = log.sealed.notified(), if failures == 0 => {}
            _ = shutdown.changed() => {
                // one last try, so a clean stop leaves nothing behind when storage is up
                let _ = ship_pending(&log, &store, witness.as_ref()).await;
                log.refresh_backlog().await;
                return;
            }
        }
    }
}
