//! The request pipeline. A batch of requests meets the stages in this order:
//!
//! 1. `verify`: envelope, enrolment, signature, strict decode, sender binding (across cores).
//! 2. `prepare`: key-provider and PIN work, outside the transaction (concurrently).
//! 3. audit gate: while the audit trail cannot take records, requests are refused with
//!    `AUDIT_UNAVAILABLE` (never approve what cannot be audited, PCI DSS 10.7.2).
//! 4. in one database transaction: `dedupe` (two queries per table for the batch: keys and
//!    counters), freshness, then each new request in the batch's order: a plain merchant
//!    payment the fast lane (`bulk`) approves from one read of the batch's figures is written
//!    with the others in multi-row statements; every other request is decided alone, after
//!    the lane's approvals so far are written, by `products::decide` and `record::write` in
//!    its own savepoint (a request whose decision breaks an invariant is refused alone, with
//!    an alert); the batch's audit records go into the outbox; one commit.
//! 5. the audit records are appended to the fsync'd journal; only then are the receipts
//!    published and the UPI payments handed to the worker.
//!
//! The driver loop below takes batches off the bounded queue and runs the tick between them.

mod batch;
mod bulk;
mod dedupe;
pub mod devices;
mod prepare;
mod receipts;
mod record;
mod tick;
mod verify;

pub use batch::{Inbound, Outbound};

use crate::audit::AuditLog;
use crate::config::PipelineSettings;
use crate::keys::cipher::FieldCipher;
use crate::metrics::Metrics;
use crate::products::{self, Prepared, Rules};
use crate::store::{self, Store, StoreError};
use crate::upi::Handoff;
use batch::{Batch, Slot, Stage};
use bytes::Bytes;
use dedupe::{Known, Probe, Seen};
use devices::DeviceCache;
use paygate_core::audit::AuditEvent;
use paygate_core::envelope::SigningKey;
use paygate_core::topics::{device_of_requests_topic, replies_topic};
use paygate_core::ErrorCode;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

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
}

pub struct Pipeline {
    ctx: Context,
}

impl Pipeline {
    pub fn new(ctx: Context) -> Pipeline {
        Pipeline { ctx }
    }

    /// Runs a batch through every stage; returns the replies to publish (after the commit and
    /// the audit journal write). Returns no replies at all when the journal cannot be written:
    /// the devices resend and get the stored receipts once it can.
    pub async fn process_batch(&self, inbound: Vec<Inbound>) -> Vec<Outbound> {
        let ctx = &self.ctx;
        ctx.metrics.count_batch(inbound.len());
        let mut batch = Batch::new(inbound, crate::clock::now_ms());
        verify::run(ctx, &mut batch).await;
        prepare::run(ctx, &mut batch).await;
        if ctx.audit.blocked() {
            let message = "the audit trail cannot take records now; retry later with the same idempotency key";
            refuse_prepared(ctx, &mut batch, ErrorCode::AuditUnavailable, message);
        }
        if let Err(error) = decide_and_record(ctx, &mut batch).await {
            tracing::error!(%error, requests = batch.prepared_count(), "batch failed and was rolled back");
            refuse_undecided(ctx, &mut batch).await;
        }
        if let Err(error) = ctx.audit.drain().await {
            // nothing leaves, not even to the UPI network, before its audit record is durable;
            // a payment left initiated is declined as never sent at the next start
            tracing::error!(%error, "receipts and UPI handoffs held back: the audit journal cannot be written");
            return Vec::new();
        }
        for handoff in batch.handoffs.drain(..) {
            // the worker outlives the pipeline; if it is gone the gateway is stopping
            let _ = ctx.upi_handoffs.send(handoff).await;
        }
        batch.replies()
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
async fn refuse_undecided(ctx: &Context, batch: &mut Batch) {
    batch.handoffs.clear();
    ctx.metrics.count_refusal(ErrorCode::InternalError);
    let message = "the gateway could not record this request; retry with the same idempotency key";
    refuse_prepared(ctx, batch, ErrorCode::InternalError, message);
    let written = async {
        let mut tx = ctx.store.begin_batch().await?;
        store::add_audit_events(&mut tx, &batch.events).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(())
    };
    if let Err(error) = written.await {
        tracing::error!(%error, "audit records of a failed batch not written");
    }
}

/// Stage 4: deduplicate, then decide and record each new request, in one transaction. The
/// replies take effect only once it commits; on failure the requests stay undecided.
async fn decide_and_record(ctx: &Context, batch: &mut Batch) -> Result<(), StoreError> {
    if batch.prepared_count() == 0 && batch.events.is_empty() {
        return Ok(());
    }
    let events_before = batch.events.len();
    let result = async {
        let mut tx = ctx.store.begin_batch().await?;
        let probes: Vec<Probe<'_>> = batch.slots.iter().filter_map(probe_of).collect();
        let mut known = Known::load(&mut tx, &probes).await?;
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
        store::add_audit_events(&mut tx, sinks.events).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(replies)
    }
    .await;
    match result {
        Ok(replies) => {
            for (index, reply) in replies {
                batch.slots[index].stage = Stage::Done(reply);
            }
            Ok(())
        }
        Err(error) => {
            batch.events.truncate(events_before);
            Err(error)
        }
    }
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

/// Takes device requests off the broker's local link into the bounded pipeline queue. A full
/// queue holds the link (rumqttd then keeps or drops per its own limits; devices resend).
pub async fn consume_link(
    mut link_rx: LinkRx,
    queue: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let notification = tokio::select! {
            notification = link_rx.next() => notification,
            _ = shutdown.changed() => return,
        };
        match notification {
            Ok(Some(Notification::Forward(forward))) => {
                let topic = String::from_utf8_lossy(&forward.publish.topic);
                let Some(device) = device_of_requests_topic(&topic) else {
                    tracing::warn!(%topic, "message on an unexpected topic ignored");
                    continue;
                };
                let inbound = Inbound {
                    device,
                    message: forward.publish.payload,
                    received_at: Instant::now(),
                };
                if queue.send(inbound).await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if link_rx.wake().await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "pipeline link closed");
                return;
            }
        }
    }
}

/// The driver: batches off the queue (up to `pipeline.batch_size_max`), the tick between
/// them every `pipeline.tick_interval_ms`, and the replies published.
pub async fn run(pipeline: Pipeline, mut queue: mpsc::Receiver<Inbound>, mut link_tx: LinkTx) {
    let batch_size_max = pipeline.ctx.settings.batch_size_max;
    let mut inbound = Vec::with_capacity(batch_size_max);
    let mut tick = tokio::time::interval(Duration::from_millis(
        pipeline.ctx.settings.tick_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let replies = tokio::select! {
            received = queue.recv_many(&mut inbound, batch_size_max) => {
                if received == 0 {
                    return;
                }
                pipeline.process_batch(std::mem::take(&mut inbound)).await
            }
            _ = tick.tick() => pipeline.tick().await,
        };
        for reply in replies {
            publish_reply(&mut link_tx, replies_topic(&reply.device), reply.receipt).await;
        }
    }
}

async fn publish_reply(link_tx: &mut LinkTx, topic: String, payload: Vec<u8>) {
    let payload = Bytes::from(payload);
    for _ in 0..100 {
        match link_tx.try_publish(topic.clone(), payload.clone()) {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    // the decision is durable; the device's resend gets the stored receipt
    tracing::warn!(%topic, "reply dropped: broker link full");
}
