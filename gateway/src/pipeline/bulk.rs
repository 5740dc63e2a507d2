//! Stage 4's fast lane: the batch's plain merchant payments decided together
//! (`products::bulk`) and written with their batch, a few multi-row statements per table.
//!
//! The lane holds approvals until [`Bulk::flush`] writes them: before any request is decided
//! alone (so it reads the approvals before it), before a request that shares a pending one's
//! idempotency key or counter (so deduplication sees it), and at the end of the batch. The
//! figures the lane decided by are then read again for the requests after it. A flush is one
//! savepoint: if any of its rows is not what was planned (a broken invariant), it is rolled
//! back and its payments are decided alone, one savepoint each, as if the lane did not exist.

use super::batch::{Outbound, Slot, Stage};
use super::dedupe::{Known, Probe};
use super::{decide_new, record, Context, Step};
use crate::ledger::{self, NewTransfer};
use crate::products::bulk::{candidate, Lane, Planned};
use crate::products::{Final, Prepared};
use crate::rewards::{self, BatchEarn};
use crate::store::{Batch as Tx, StoreError};
use std::collections::HashSet;

/// The part of a batch a flush needs to see.
pub struct Scope<'a> {
    pub ctx: &'a Context,
    pub slots: &'a [Slot],
    pub now_ms: u64,
}

#[derive(Default)]
pub struct Bulk {
    lane: Option<Lane>,
    pending: Vec<(usize, Planned)>,
    /// (device, idempotency key) and (device, counter) of the pending approvals.
    keys: HashSet<(String, String)>,
    counters: HashSet<(String, u64)>,
}

impl Bulk {
    /// Whether `item` shares a pending approval's key or counter.
    pub fn collides(&self, item: &Prepared) -> bool {
        let device = item.request.device_id.to_string();
        self.keys
            .contains(&(device.clone(), item.request.idempotency_key.to_string()))
            || self.counters.contains(&(device, item.request.counter))
    }

    /// Takes the request at `index` into the lane if it is approved there; `false`: decide
    /// it alone (after a flush).
    pub async fn take(
        &mut self,
        scope: &Scope<'_>,
        tx: &mut Tx<'static>,
        index: usize,
        item: &Prepared,
    ) -> Result<bool, StoreError> {
        let ctx = scope.ctx;
        if !ctx.settings.decide_in_bulk || candidate(item).is_none() {
            return Ok(false);
        }
        if self.lane.is_none() {
            let items: Vec<&Prepared> = scope.slots[index..]
                .iter()
                .filter_map(|slot| match &slot.stage {
                    Stage::Prepared(item) if candidate(item).is_some() => Some(&**item),
                    _ => None,
                })
                .collect();
            let started = std::time::Instant::now();
            self.lane = Some(Lane::load(tx, &ctx.rules, &items, scope.now_ms).await?);
            tracing::debug!(target: "paygate_gateway::pipeline::timing", items = items.len(), load_us = super::micros_since(started), "lane loaded");
        }
        let Some(lane) = self.lane.as_mut() else {
            return Ok(false);
        };
        let Some(planned) = lane.decide(&ctx.rules, item, scope.now_ms) else {
            return Ok(false);
        };
        let device = item.request.device_id.to_string();
        self.keys
            .insert((device.clone(), item.request.idempotency_key.to_string()));
        self.counters.insert((device, item.request.counter));
        self.pending.push((index, planned));
        Ok(true)
    }

    /// Writes the pending approvals (or, if their write breaks an invariant, decides each
    /// alone) and drops the lane's figures.
    pub async fn flush(
        &mut self,
        scope: &Scope<'_>,
        tx: &mut Tx<'static>,
        known: &mut Known,
        sinks: &mut record::Sinks<'_>,
        replies: &mut Vec<(usize, Outbound)>,
    ) -> Result<(), StoreError> {
        let lane = self.lane.take();
        let pending = std::mem::take(&mut self.pending);
        self.keys.clear();
        self.counters.clear();
        let Some(lane) = lane else {
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
        let mut events = Vec::new();
        match write(scope, &mut savepoint, &lane, &pending, &mut events).await {
            Ok(receipts) => {
                savepoint.commit().await?;
                sinks.events.append(&mut events);
                for ((index, planned), receipt) in pending.iter().zip(receipts) {
                    let request = &planned.decided.request;
                    let probe = Probe {
                        device: &request.device,
                        key: &request.key,
                        counter: request.counter,
                    };
                    known.remember(&probe, &request.body_sha256, &receipt);
                    let inbound = &scope.slots[*index].inbound;
                    replies.push((
                        *index,
                        Outbound {
                            device: inbound.device.clone(),
                            receipt,
                            received_at: inbound.received_at,
                        },
                    ));
                }
                scope.ctx.metrics.count_bulk_decided(pending.len());
                Ok(())
            }
            Err(StoreError::Invariant(broken)) => {
                savepoint.rollback().await?;
                tracing::error!(%broken, payments = pending.len(), "bulk write refused; its payments are decided alone");
                scope.ctx.metrics.count_invariant_alert();
                for (index, _) in &pending {
                    decide_alone(scope, tx, known, sinks, replies, *index).await?;
                }
                Ok(())
            }
            Err(other) => Err(other),
        }
    }
}

/// The pending approvals' transfers, then their stored requests and audit records; returns
/// their signed receipts in order.
async fn write(
    scope: &Scope<'_>,
    tx: &mut Tx<'_>,
    lane: &Lane,
    pending: &[(usize, Planned)],
    events: &mut Vec<paygate_core::audit::AuditEvent>,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let earned: Vec<BatchEarn<'_>> = pending
        .iter()
        .filter_map(|(_, planned)| {
            let (wallet, earned) = planned.earned.as_ref()?;
            Some(BatchEarn {
                wallet,
                earn_tx: &earned.earn_tx,
                payment_tx: &planned.tx_id,
                points: earned.points,
            })
        })
        .collect();
    // the payments first: an earn transfer names its payment
    let mut transfers: Vec<NewTransfer<'_>> = pending
        .iter()
        .map(|(_, planned)| NewTransfer {
            tx_id: &planned.tx_id,
            kind: "merchant_payment",
            origin: Some((
                &planned.decided.request.device,
                &planned.decided.request.key,
            )),
            related: None,
            legs: planned.legs.clone(),
            now_ms: scope.now_ms,
        })
        .collect();
    transfers.extend(earned.iter().map(|earn| NewTransfer {
        tx_id: earn.earn_tx,
        kind: "points_earn",
        origin: None,
        related: Some(earn.payment_tx),
        legs: earn.legs(),
        now_ms: scope.now_ms,
    }));
    // the receipts are signed and the audit records built on the blocking pool while the
    // transfers are posted: the decisions are final, only their storing is left
    let finals: Vec<Final> = pending.iter().map(|(_, p)| p.decided.clone()).collect();
    let sealing = {
        let key = scope.ctx.receipt_key.clone();
        let now_ms = scope.now_ms;
        tokio::task::spawn_blocking(move || {
            let sealed = record::seal_finals(&key, &finals, now_ms);
            (finals, sealed)
        })
    };
    let started = std::time::Instant::now();
    let posted = ledger::post_many(tx, lane.snapshot(), &transfers).await;
    // joined before any error returns, so no sealing outlives its batch
    let (finals, sealed) = sealing
        .await
        .map_err(|e| StoreError::Invariant(format!("sealing the batch's receipts failed: {e}")))?;
    posted?;
    let posted_us = super::micros_since(started);
    rewards::open_earned_lots(tx, &scope.ctx.rules.rewards, &earned, scope.now_ms).await?;
    let written =
        record::write_sealed(tx, scope.ctx, &finals, sealed, events, scope.now_ms).await?;
    tracing::debug!(target: "paygate_gateway::pipeline::timing", payments = pending.len(), posted_us, written_us = super::micros_since(started), "lane written");
    Ok(written.into_iter().map(|(receipt, _)| receipt).collect())
}

async fn decide_alone(
    scope: &Scope<'_>,
    tx: &mut Tx<'static>,
    known: &mut Known,
    sinks: &mut record::Sinks<'_>,
    replies: &mut Vec<(usize, Outbound)>,
    index: usize,
) -> Result<(), StoreError> {
    let slot = &scope.slots[index];
    let Stage::Prepared(item) = &slot.stage else {
        return Ok(());
    };
    let step = Step {
        ctx: scope.ctx,
        slot,
        item,
        now_ms: scope.now_ms,
    };
    replies.push((index, decide_new(&step, tx, known, sinks).await?));
    Ok(())
}
