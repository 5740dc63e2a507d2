//! The request pipeline. A batch of requests meets the stages in this order:
//!
//! 1. `verify`: envelope, enrolment, signature, strict decode, sender binding (across cores).
//! 2. `prepare`: key-provider and PIN work, outside the transaction (concurrently).
//! 3. audit gate: while the audit trail cannot take records, requests are refused with
//!    `AUDIT_UNAVAILABLE` (never approve what cannot be audited, PCI DSS 10.7.2).
//! 4. in one database transaction: `dedupe` (two queries per chunk over three tables: keys and
//!    counters), freshness, then each new request in the batch's order: a plain merchant
//!    payment the fast lane (`bulk`) approves from one read of the batch's figures is written
//!    with the others in multi-row statements; every other request is decided alone, after
//!    the lane's approvals so far are written, by `products::decide` and `record::write` in
//!    its own savepoint (a request whose decision breaks an invariant is refused alone, with
//!    an alert); the batch's audit records go into the outbox; one commit.
//! 5. the audit records are appended to the fsync'd journal; only then are the receipts
//!    published and the UPI payments handed to the worker.
//!
//! The driver (`driver.rs`) overlaps these stages across consecutive batches: one task checks
//! (1, 2), one decides (3, 4) and runs the tick between batches, one releases (5).

mod batch;
mod bulk;
mod dedupe;
pub mod devices;
mod driver;
mod prepare;
pub mod receipts;
mod record;
mod tick;
mod verify;

pub use batch::{Ack, Inbound, Outbound};
pub use driver::{consume_link, run, Outlet};
pub use verify::sha256;

use crate::audit::AuditLog;
use crate::config::PipelineSettings;
use crate::keys::cipher::FieldCipher;
use crate::metrics::Metrics;
use crate::products::{self, Prepared, Rules};
use crate::store::{self, Store, StoreError};
use crate::upi::Handoff;
use batch::{Batch, Slot, Stage};
use dedupe::{Known, Probe, Seen};
use devices::DeviceCache;
use paygate_core::audit::AuditEvent;
use paygate_core::envelope::SigningKey;
use paygate_core::ErrorCode;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Times a batch is decided again after another replica wrote one of its requests first.
const RACED_BATCH_ROUNDS_MAX: usize = 8;

/// Everything the stages need, wired once by `gateway::start`.
pub struct Context {
    pub store: Store,
    pub receipt_key: Arc<SigningKey>,
    pub settings: PipelineSettings,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub cipher: Arc<FieldCipher>,
    pub rules: Rules,
    pub devices: Arc<DeviceCache>,
    /// UPI payments for the worker (bounded: `upi.handoff_queue_max`).
    pub upi_handoffs: mpsc::Sender<Handoff>,
    /// The front's admission: told when each request is done with, so its device's and the
    /// gateway's requests in flight go down.
    pub admission: Arc<crate::admission::Registry>,
}

pub struct Pipeline {
    ctx: Context,
}

/// A decided batch on its way out: its replies and UPI handoffs, released once the batch's
/// audit records are in the journal.
pub struct Decided {
    pub replies: Vec<Outbound>,
    pub handoffs: Vec<Handoff>,
    /// The device of each request of the batch (none for the tick's replies).
    pub answered: Vec<paygate_core::DeviceId>,
    /// The external broker's packet ids of the batch's requests, acknowledged after release.
    pub acks: Vec<batch::Ack>,
}

impl Pipeline {
    pub fn new(ctx: Context) -> Pipeline {
        Pipeline { ctx }
    }

    /// Stages 1 and 2 for the requests of `batch` not looked at yet: verify, then prepare.
    /// The batch may grow between calls (the driver gathers requests while the decider is
    /// busy); slots already checked are left as they are.
    pub async fn check(&self, batch: &mut Batch) {
        use crate::metrics::Stage;
        let started = std::time::Instant::now();
        verify::run(&self.ctx, batch).await;
        self.ctx
            .metrics
            .time_stage(Stage::Verify, started.elapsed());
        let started = std::time::Instant::now();
        prepare::run(&self.ctx, batch).await;
        self.ctx
            .metrics
            .time_stage(Stage::Prepare, started.elapsed());
    }

    /// Stages 3 and 4: the audit gate, then deduplicate, decide and record the batch in one
    /// transaction. What it returns is held until [`Pipeline::release`].
    pub async fn decide(&self, mut batch: Batch) -> Decided {
        let ctx = &self.ctx;
        ctx.metrics.count_batch(batch.slots.len());
        let answered = batch
            .slots
            .iter()
            .map(|s| s.inbound.device.clone())
            .collect();
        let acks = batch.slots.iter().filter_map(|s| s.inbound.ack).collect();
        if ctx.audit.blocked() {
            let message = "the audit trail cannot take records now; retry later with the same idempotency key";
            refuse_prepared(ctx, &mut batch, ErrorCode::AuditUnavailable, message);
        }
        let started = std::time::Instant::now();
        let mut recorded = decide_and_record(ctx, &mut batch).await;
        // another replica on the shared database decided one of these requests at the same
        // moment (its transaction committed before the unique key refused ours): decided
        // again, deduplication finds its answer (the first), and the rest of the batch is not
        // refused for it. Each round settles at least one such request, so it ends.
        let mut rounds = 0;
        while rounds < RACED_BATCH_ROUNDS_MAX
            && recorded
                .as_ref()
                .is_err_and(StoreError::is_unique_violation)
        {
            rounds += 1;
            ctx.metrics.count_batch_retried();
            recorded = decide_and_record(ctx, &mut batch).await;
        }
        ctx.metrics
            .time_stage(crate::metrics::Stage::Decide, started.elapsed());
        if let Err(error) = recorded {
            tracing::error!(%error, requests = batch.prepared_count(), "batch failed and was rolled back");
            if !refuse_undecided(ctx, &mut batch).await {
                // not even the refusals could be audited: nothing leaves (audit before
                // receipt); the devices resend and are answered once the database is back
                return Decided {
                    replies: Vec::new(),
                    handoffs: Vec::new(),
                    answered,
                    acks,
                };
            }
        }
        let handoffs = std::mem::take(&mut batch.handoffs);
        Decided {
            replies: batch.replies(),
            handoffs,
            answered,
            acks,
        }
    }

    /// Stage 5: the audit records committed so far are appended to the fsync'd journal; only
    /// then are the UPI payments handed to the worker and the replies returned for publishing.
    /// Returns no replies at all when the journal cannot be written: the devices resend and
    /// get the stored receipts once it can.
    /// Either way the batch's requests no longer count as in flight at the front.
    pub async fn release(&self, decided: Decided) -> Vec<Outbound> {
        let ctx = &self.ctx;
        for device in &decided.answered {
            ctx.admission.answered(device);
        }
        let started = std::time::Instant::now();
        let drained = ctx.audit.drain().await;
        ctx.metrics
            .time_stage(crate::metrics::Stage::Journal, started.elapsed());
        tracing::debug!(
            target: "paygate_gateway::pipeline::timing",
            replies = decided.replies.len(),
            journal_us = micros_since(started),
            "batch released"
        );
        if let Err(error) = drained {
            // nothing leaves, not even to the UPI network, before its audit record is durable;
            // a payment left unsent is declined not_sent by the worker after its send window
            tracing::error!(%error, "receipts and UPI handoffs held back: the audit journal cannot be written");
            return Vec::new();
        }
        for handoff in decided.handoffs {
            // the worker outlives the pipeline; if it is gone the gateway is stopping
            let _ = ctx.upi_handoffs.send(handoff).await;
        }
        decided.replies
    }

    /// Every stage for one batch, one after another (the driver overlaps them across batches).
    pub async fn process_batch(&self, inbound: Vec<Inbound>) -> Vec<Outbound> {
        let mut batch = Batch::new(inbound, crate::clock::now_ms());
        self.check(&mut batch).await;
        let decided = self.decide(batch).await;
        self.release(decided).await
    }

    /// The tick: expired challenges declined, answered UPI payments settled.
    pub async fn tick(&self) -> Vec<Outbound> {
        tick::run(&self.ctx).await
    }
}

/// Refuses every request still waiting for its decision.
fn refuse_prepared(ctx: &Context, batch: &mut Batch, code: ErrorCode, message: &str) {
    for slot in batch.slots.iter_mut() {
        if let Stage::Prepared(item) = &slot.stage {
            let reply = record::reject_verified(
                ctx,
                &slot.inbound,
                &item.request,
                &item.body_sha256,
                code,
                message.to_owned(),
                batch.now_ms,
                &mut batch.events,
            );
            slot.stage = Stage::Done(reply);
        }
    }
}

/// After a rolled-back batch: every request it was deciding is refused (nothing of it was
/// stored), and the batch's audit records are written again in a transaction of their own.
/// Returns whether they were: if not, none of the batch's replies may leave.
async fn refuse_undecided(ctx: &Context, batch: &mut Batch) -> bool {
    batch.handoffs.clear();
    ctx.metrics.count_refusal(ErrorCode::InternalError);
    let message = "the gateway could not record this request; retry with the same idempotency key";
    refuse_prepared(ctx, batch, ErrorCode::InternalError, message);
    let written = async {
        let mut tx = ctx.store.begin_batch().await?;
        ctx.store.add_audit_events(&mut tx, &batch.events).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(())
    };
    match written.await {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "audit records of a failed batch not written; its replies are held back");
            false
        }
    }
}

/// Stage 4: deduplicate, then decide and record each new request, in one transaction. The
/// replies take effect only once it commits; on failure the requests stay undecided.
async fn decide_and_record(ctx: &Context, batch: &mut Batch) -> Result<(), StoreError> {
    if batch.prepared_count() == 0 && batch.events.is_empty() {
        return Ok(());
    }
    let events_before = batch.events.len();
    let handoffs_before = batch.handoffs.len();
    let started = std::time::Instant::now();
    let mut timing = StageTiming::default();
    let result = async {
        let mut tx = ctx.store.begin_batch().await?;
        let probes: Vec<Probe<'_>> = batch.slots.iter().filter_map(probe_of).collect();
        let mut known = Known::load(&mut tx, &probes).await?;
        timing.dedupe_us = micros_since(started);
        let mut replies = Vec::new();
        let mut sinks = record::Sinks {
            events: &mut batch.events,
            handoffs: &mut batch.handoffs,
        };
        let scope = bulk::Scope {
            ctx,
            slots: &batch.slots,
            now_ms: batch.now_ms,
        };
        let mut lane = bulk::Bulk::default();
        for (index, slot) in batch.slots.iter().enumerate() {
            let Stage::Prepared(item) = &slot.stage else {
                continue;
            };
            if lane.collides(item) {
                lane.flush(&scope, &mut tx, &mut known, &mut sinks, &mut replies)
                    .await?;
            }
            let step = Step {
                ctx,
                slot,
                item,
                now_ms: batch.now_ms,
            };
            if let Some(answer) = screen(&step, &known, sinks.events) {
                replies.push((index, answer));
                continue;
            }
            if lane.take(&scope, &mut tx, index, item).await? {
                continue;
            }
            lane.flush(&scope, &mut tx, &mut known, &mut sinks, &mut replies)
                .await?;
            replies.push((
                index,
                decide_new(&step, &mut tx, &mut known, &mut sinks).await?,
            ));
        }
        lane.flush(&scope, &mut tx, &mut known, &mut sinks, &mut replies)
            .await?;
        timing.decided_us = micros_since(started);
        ctx.store.add_audit_events(&mut tx, sinks.events).await?;
        timing.outbox_us = micros_since(started);
        tx.commit().await?;
        crate::crash::point("batch.committed");
        timing.committed_us = micros_since(started);
        Ok::<_, StoreError>(replies)
    }
    .await;
    tracing::debug!(
        target: "paygate_gateway::pipeline::timing",
        requests = batch.slots.len(),
        dedupe_us = timing.dedupe_us,
        decided_us = timing.decided_us,
        outbox_us = timing.outbox_us,
        committed_us = timing.committed_us,
        "batch decided"
    );
    match result {
        Ok(replies) => {
            for (index, reply) in replies {
                batch.slots[index].stage = Stage::Done(reply);
            }
            Ok(())
        }
        Err(error) => {
            batch.events.truncate(events_before);
            batch.handoffs.truncate(handoffs_before);
            Err(error)
        }
    }
}

/// When each part of a batch's transaction ended, in microseconds from its start (a debug
/// event, `paygate_gateway::pipeline::timing`, for profiling).
#[derive(Default)]
struct StageTiming {
    dedupe_us: u64,
    decided_us: u64,
    outbox_us: u64,
    committed_us: u64,
}

fn micros_since(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn probe_of(slot: &Slot) -> Option<Probe<'_>> {
    match &slot.stage {
        Stage::Prepared(item) => Some(Probe {
            device: &item.request.device_id,
            key: &item.request.idempotency_key,
            counter: item.request.counter,
        }),
        _ => None,
    }
}

/// One request being decided.
struct Step<'a> {
    ctx: &'a Context,
    slot: &'a Slot,
    item: &'a Prepared,
    now_ms: u64,
}

/// A request answered from what is known: a replay of its first receipt, or a refusal (a
/// reused key or counter, a stale request). `None`: it is new, to be decided.
fn screen(step: &Step<'_>, known: &Known, events: &mut Vec<AuditEvent>) -> Option<Outbound> {
    let Step {
        ctx,
        slot,
        item,
        now_ms,
    } = *step;
    let inbound = &slot.inbound;
    let probe = Probe {
        device: &item.request.device_id,
        key: &item.request.idempotency_key,
        counter: item.request.counter,
    };
    let (code, message) = match known.check(&probe, &item.body_sha256) {
        Seen::Replay(receipt) => {
            ctx.metrics.count_replayed();
            return Some(Outbound {
                device: inbound.device.clone(),
                receipt,
                received_at: inbound.received_at,
            });
        }
        Seen::Refused(code, message) => (code, message),
        Seen::New => {
            let code = slot.stale?;
            (code, code.description().to_owned())
        }
    };
    Some(record::reject_verified(
        ctx,
        inbound,
        &item.request,
        &item.body_sha256,
        code,
        message,
        now_ms,
        events,
    ))
}

/// A new request: the product's decision recorded in a savepoint of its own.
async fn decide_new(
    step: &Step<'_>,
    tx: &mut store::Batch<'static>,
    known: &mut Known,
    sinks: &mut record::Sinks<'_>,
) -> Result<Outbound, StoreError> {
    let Step {
        ctx,
        slot,
        item,
        now_ms,
    } = *step;
    let inbound = &slot.inbound;
    let reject = |code, message, events: &mut Vec<_>| {
        record::reject_verified(
            ctx,
            inbound,
            &item.request,
            &item.body_sha256,
            code,
            message,
            now_ms,
            events,
        )
    };
    let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
    let (events_before, handoffs_before) = (sinks.events.len(), sinks.handoffs.len());
    let written = match products::decide(&mut savepoint, &ctx.rules, item, now_ms).await {
        Ok(decision) => {
            let item_sinks = record::Sinks {
                events: &mut *sinks.events,
                handoffs: &mut *sinks.handoffs,
            };
            record::write(
                &mut savepoint,
                ctx,
                inbound,
                item,
                decision,
                item_sinks,
                now_ms,
            )
            .await
        }
        Err(error) => Err(error),
    };
    match written {
        Ok(recorded) => {
            savepoint.commit().await?;
            for decided in &recorded.decided {
                let probe = Probe {
                    device: &decided.device,
                    key: &decided.key,
                    counter: decided.counter,
                };
                known.remember(&probe, &decided.body_sha256, &recorded.reply.receipt);
            }
            Ok(recorded.reply)
        }
        Err(StoreError::Invariant(broken)) => {
            // a broken invariant refuses this one request and raises an alert
            savepoint.rollback().await?;
            sinks.events.truncate(events_before);
            sinks.handoffs.truncate(handoffs_before);
            tracing::error!(%broken, device = %inbound.device, "invariant broken; request refused");
            ctx.metrics.count_invariant_alert();
            let message =
                "the gateway could not decide this request; retry with the same idempotency key";
            Ok(reject(
                ErrorCode::InternalError,
                message.into(),
                sinks.events,
            ))
        }
        Err(other) => Err(other),
    }
}
