//! The pipeline's tick, between batches: challenged payments whose time ran out are declined,
//! and UPI payments the network has answered are settled. Each job decides through the
//! products and records through the record stage, in one transaction, and its receipts are
//! released only once their audit records are in the journal (as for a batch); on failure
//! nothing is published and the job runs again at the next tick.

use super::batch::Outbound;
use super::record;
use super::Context;
use crate::identity;
use crate::products::{self, challenge_answer, Effect};
use crate::store::{self, StoreError};
use crate::upi::repo;

/// Rows one tick job takes at most.
const TICK_ROWS_MAX: u32 = 256;

pub async fn run(ctx: &Context) -> Vec<Outbound> {
    let mut replies = release(ctx, "challenge expiry", expire_challenges(ctx).await).await;
    replies.extend(release(ctx, "UPI settlement", settle_upi(ctx).await).await);
    replies
}

async fn release(
    ctx: &Context,
    job: &str,
    result: Result<Vec<Outbound>, StoreError>,
) -> Vec<Outbound> {
    match result {
        Ok(replies) if replies.is_empty() => replies,
        Ok(replies) => match ctx.audit.drain().await {
            Ok(()) => replies,
            Err(error) => {
                tracing::error!(%error, job, "receipts held back: the audit journal cannot be written");
                Vec::new()
            }
        },
        Err(error) => {
            tracing::error!(%error, job, "failed; retried at the next tick");
            Vec::new()
        }
    }
}

/// Declines every challenged payment whose time ran out.
async fn expire_challenges(ctx: &Context) -> Result<Vec<Outbound>, StoreError> {
    let now = crate::clock::now_ms();
    let mut tx = ctx.store.begin_batch().await?;
    let mut events = Vec::new();
    let mut replies = Vec::new();
    for challenge in identity::expired_challenges(&mut tx, now).await? {
        let mut item = sqlx::Acquire::begin(&mut *tx).await?;
        let before = events.len();
        let decided = async {
            let how = "expired unanswered";
            let decision =
                challenge_answer::expire(&mut item, &ctx.rules, &challenge, None, how, now).await?;
            record_tick(&mut item, ctx, decision, &mut events, now).await
        }
        .await;
        keep_or_skip(ctx, item, decided, &mut replies, &mut events, before).await?;
    }
    finish(ctx, tx, events, replies).await
}

/// Settles UPI payments the network has answered, and pushes their final receipts.
async fn settle_upi(ctx: &Context) -> Result<Vec<Outbound>, StoreError> {
    // a read first: most ticks have nothing to settle and need no write lock
    if !repo::any_answered(ctx.store.pool()).await? {
        return Ok(Vec::new());
    }
    let now = crate::clock::now_ms();
    let mut tx = ctx.store.begin_batch().await?;
    let mut events = Vec::new();
    let mut replies = Vec::new();
    let mut reversals_due = false;
    for answered in repo::answered(&mut tx, TICK_ROWS_MAX).await? {
        let mut item = sqlx::Acquire::begin(&mut *tx).await?;
        let before = events.len();
        let decided = async {
            match products::upi::settle(&mut item, &answered, now).await? {
                products::upi::Settled::Final(decided) => {
                    let decision = products::Decision::final_(*decided);
                    record_tick(&mut item, ctx, decision, &mut events, now)
                        .await
                        .map(Some)
                }
                products::upi::Settled::ReversalDue(refused) => {
                    repo::require_reversal(&mut item, &answered.payment_id, refused, now).await?;
                    Ok(None)
                }
            }
        }
        .await;
        match decided {
            // the worker reverses the debit; the terminal hears when that is in
            Ok(None) => {
                item.commit().await?;
                reversals_due = true;
            }
            Ok(Some(reply)) => {
                keep_or_skip(ctx, item, Ok(reply), &mut replies, &mut events, before).await?
            }
            Err(error) => {
                keep_or_skip(ctx, item, Err(error), &mut replies, &mut events, before).await?
            }
        }
    }
    finish_changed(ctx, tx, events, replies, reversals_due).await
}

/// One tick item in its own savepoint: kept, or on a broken invariant rolled back alone (an
/// alert; the item is tried again at the next tick) while the others go on.
async fn keep_or_skip(
    ctx: &Context,
    item: sqlx::Transaction<'_, sqlx::Any>,
    decided: Result<Outbound, StoreError>,
    replies: &mut Vec<Outbound>,
    events: &mut Vec<paygate_core::audit::AuditEvent>,
    events_before: usize,
) -> Result<(), StoreError> {
    match decided {
        Ok(reply) => {
            item.commit().await?;
            replies.push(reply);
            Ok(())
        }
        Err(StoreError::Invariant(broken)) => {
            item.rollback().await?;
            events.truncate(events_before);
            ctx.metrics.count_invariant_alert();
            tracing::error!(%broken, "tick item refused; tried again at the next tick");
            Ok(())
        }
        Err(other) => Err(other),
    }
}

async fn record_tick(
    tx: &mut store::Batch<'_>,
    ctx: &Context,
    decision: products::Decision,
    events: &mut Vec<paygate_core::audit::AuditEvent>,
    now: u64,
) -> Result<Outbound, StoreError> {
    let Effect::Final(decided) = decision.effect else {
        return Err(StoreError::Invariant(
            "a tick job decided other than for good".into(),
        ));
    };
    for note in &decision.identity {
        events.push(record::identity_event(note, now));
    }
    let (receipt, _) = record::write_final(tx, ctx, &decided, events, now).await?;
    Ok(record::tick_reply(decided.request.device.clone(), receipt))
}

async fn finish(
    ctx: &Context,
    tx: store::Batch<'static>,
    events: Vec<paygate_core::audit::AuditEvent>,
    replies: Vec<Outbound>,
) -> Result<Vec<Outbound>, StoreError> {
    finish_changed(ctx, tx, events, replies, false).await
}

/// As `finish`, committing also when `changed` (rows written with no reply to send).
async fn finish_changed(
    ctx: &Context,
    mut tx: store::Batch<'static>,
    events: Vec<paygate_core::audit::AuditEvent>,
    replies: Vec<Outbound>,
    changed: bool,
) -> Result<Vec<Outbound>, StoreError> {
    if replies.is_empty() && !changed {
        tx.rollback().await?;
        return Ok(replies);
    }
    ctx.store.add_audit_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(replies)
}
