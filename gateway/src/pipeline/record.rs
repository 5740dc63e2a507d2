//! Stage 5, record: the only place a decision becomes a stored row, a signed receipt, an
//! audit record and metrics. Every `Decision` a product returns, every refusal of the earlier
//! stages and every tick job's outcome passes through here.
//!
//! Invariant: whatever is stored for a request is the exact receipt its device is sent, so a
//! retry always gets the first answer.

use super::batch::{Inbound, Outbound};
use super::receipts;
use super::verify::Refusal;
use super::Context;
use crate::identity::{self, Challenge};
use crate::products::{Decision, Effect, Final, IdentityNote, Prepared, RequestRef, UpiInitiation};
use crate::store::{self, Batch as Tx, StoreError};
use crate::upi::{repo, Handoff};
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::envelope::SigningKey;
use paygate_core::receipt::{Receipt, RECEIPT_CONTENT_TYPE};
use paygate_core::request::Request;
use paygate_core::{DeviceId, ErrorCode};
use std::time::Instant;

/// What recording one decision produced.
pub struct Recorded {
    pub reply: Outbound,
    /// Requests now decided (for deduplication within the batch), with their receipt.
    pub decided: Vec<RequestRef>,
}

/// Where a recording's side products go.
pub struct Sinks<'a> {
    pub events: &'a mut Vec<AuditEvent>,
    pub handoffs: &'a mut Vec<Handoff>,
}

fn seal(ctx: &Context, receipt: &Receipt) -> Vec<u8> {
    seal_with(&ctx.receipt_key, receipt)
}

fn seal_with(key: &SigningKey, receipt: &Receipt) -> Vec<u8> {
    key.seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload())
}

/// Records a product's decision for `item`.
pub async fn write(
    tx: &mut Tx<'_>,
    ctx: &Context,
    inbound: &Inbound,
    item: &Prepared,
    decision: Decision,
    sinks: Sinks<'_>,
    now_ms: u64,
) -> Result<Recorded, StoreError> {
    for note in &decision.identity {
        sinks.events.push(identity_event(note, now_ms));
    }
    let reply = |receipt: Vec<u8>| Outbound {
        device: inbound.device.clone(),
        receipt,
        received_at: inbound.received_at,
    };
    let recorded = match decision.effect {
        Effect::Refused { code, message } => Recorded {
            reply: reject_verified(
                ctx,
                inbound,
                &item.request,
                &item.body_sha256,
                code,
                message,
                now_ms,
                sinks.events,
            ),
            decided: Vec::new(),
        },
        Effect::Stored(receipt) => Recorded {
            reply: reply(receipt),
            decided: Vec::new(),
        },
        Effect::Unknown { key } => {
            let message = crate::products::status::unknown_message(&key);
            let receipt = receipts::rejected_receipt(
                &inbound.device,
                Some(&key),
                None,
                ErrorCode::RequestUnknown,
                message,
                now_ms,
            );
            Recorded {
                reply: reply(seal(ctx, &receipt)),
                decided: Vec::new(),
            }
        }
        Effect::Final(decided) => {
            let (receipt, decided) = write_final(tx, ctx, &decided, sinks.events, now_ms).await?;
            Recorded {
                reply: reply(receipt),
                decided,
            }
        }
        Effect::Challenge(challenge) => {
            let receipt = write_challenge(tx, ctx, *challenge, now_ms).await?;
            Recorded {
                reply: reply(receipt),
                decided: vec![RequestRef::of(item)],
            }
        }
        Effect::ChallengeRetry {
            challenge,
            attempts,
            answer,
        } => {
            let receipt = write_retry(tx, ctx, &challenge, attempts, &answer, now_ms).await?;
            // the held payment's own key now answers with the renewed challenge receipt too
            let payment = RequestRef {
                device: challenge.device.clone(),
                key: challenge.idempotency_key.clone(),
                counter: challenge.counter,
                body_sha256: challenge.body_sha256.clone(),
            };
            Recorded {
                reply: reply(receipt),
                decided: vec![answer, payment],
            }
        }
        Effect::UpiInitiated(upi) => {
            let receipt = write_upi(tx, ctx, item, *upi, sinks, now_ms).await?;
            Recorded {
                reply: reply(receipt),
                decided: vec![RequestRef::of(item)],
            }
        }
    };
    Ok(recorded)
}

/// Stores a final decision for its request (and the challenge answer that completed it),
/// with the payer and its audit record; returns the signed receipt and the requests decided.
pub async fn write_final(
    tx: &mut Tx<'_>,
    ctx: &Context,
    decided: &Final,
    events: &mut Vec<AuditEvent>,
    now_ms: u64,
) -> Result<(Vec<u8>, Vec<RequestRef>), StoreError> {
    let mut written = write_finals(tx, ctx, std::slice::from_ref(decided), events, now_ms).await?;
    written
        .pop()
        .ok_or_else(|| StoreError::Invariant("a final decision recorded nothing".into()))
}

/// Stores final decisions as [`write_final`] does one, each table in multi-row statements:
/// the same rows, receipts and audit records whether a decision was made alone or with its
/// batch.
pub async fn write_finals(
    tx: &mut Tx<'_>,
    ctx: &Context,
    finals: &[Final],
    events: &mut Vec<AuditEvent>,
    now_ms: u64,
) -> Result<Vec<(Vec<u8>, Vec<RequestRef>)>, StoreError> {
    let sealed = seal_finals(&ctx.receipt_key, finals, now_ms);
    write_sealed(tx, ctx, finals, sealed, events, now_ms).await
}

/// What a final decision becomes before it is stored: its signed receipt, the requests it
/// decides and its audit record. Reads nothing and writes nothing, so it may run on another
/// thread while the decision's transfers are posted.
pub struct Sealed {
    receipt: Vec<u8>,
    requests: Vec<RequestRef>,
    event: AuditEvent,
}

/// Signs the receipt and builds the audit record of each final decision, in order.
pub fn seal_finals(key: &SigningKey, finals: &[Final], now_ms: u64) -> Vec<Sealed> {
    finals
        .iter()
        .map(|decided| {
            let receipt = seal_with(key, &receipts::final_receipt(decided, now_ms));
            let mut requests = vec![decided.request.clone()];
            requests.extend(decided.answer.clone());
            Sealed {
                receipt,
                requests,
                event: decision_event(decided, now_ms),
            }
        })
        .collect()
}

/// Stores sealed final decisions (`sealed[i]` made by [`seal_finals`] from `finals[i]`) and
/// counts them; returns each receipt with the requests it decides.
pub async fn write_sealed(
    tx: &mut Tx<'_>,
    ctx: &Context,
    finals: &[Final],
    sealed: Vec<Sealed>,
    events: &mut Vec<AuditEvent>,
    now_ms: u64,
) -> Result<Vec<(Vec<u8>, Vec<RequestRef>)>, StoreError> {
    if sealed.len() != finals.len() {
        return Err(StoreError::Invariant(format!(
            "{} decisions sealed for {} final decisions",
            sealed.len(),
            finals.len()
        )));
    }
    let mut rows = Vec::with_capacity(finals.len());
    let mut payers = Vec::new();
    for (decided, sealed) in finals.iter().zip(&sealed) {
        for request in &sealed.requests {
            rows.push(store::DecidedRow {
                device: &request.device,
                key: &request.key,
                counter: request.counter,
                body_sha256: &request.body_sha256,
                code: decided.code,
                tx_id: decided.tx_id.as_ref(),
                receipt: &sealed.receipt,
                now_ms,
            });
        }
        if let Some(payer) = &decided.stored_payer {
            payers.push((&decided.request.device, &decided.request.key, payer));
        }
    }
    store::record_decided_many(tx, &rows).await?;
    store::record_payers(tx, &payers).await?;
    drop(rows);
    let mut written = Vec::with_capacity(finals.len());
    for (decided, sealed) in finals.iter().zip(sealed) {
        if let Some(payment_id) = &decided.settles_upi_payment {
            repo::mark_settled(tx, payment_id, &sealed.receipt).await?;
        }
        events.push(sealed.event);
        if decided.alert {
            ctx.metrics.count_invariant_alert();
        }
        match decided.code {
            None => ctx.metrics.count_approved(),
            Some(code) => ctx.metrics.count_declined(code),
        }
        written.push((sealed.receipt, sealed.requests));
    }
    Ok(written)
}

async fn write_challenge(
    tx: &mut Tx<'_>,
    ctx: &Context,
    mut challenge: Challenge,
    now_ms: u64,
) -> Result<Vec<u8>, StoreError> {
    let attempts_left = ctx.rules.identity.attempts_max;
    challenge.receipt = seal(
        ctx,
        &receipts::challenge_receipt(&challenge, attempts_left, now_ms),
    );
    identity::insert_challenge(tx, &challenge, now_ms).await?;
    ctx.metrics.count_challenged();
    Ok(challenge.receipt)
}

async fn write_retry(
    tx: &mut Tx<'_>,
    ctx: &Context,
    challenge: &Challenge,
    attempts: u32,
    answer: &RequestRef,
    now_ms: u64,
) -> Result<Vec<u8>, StoreError> {
    let attempts_left = ctx.rules.identity.attempts_max.saturating_sub(attempts);
    let receipt = seal(
        ctx,
        &receipts::challenge_receipt(challenge, attempts_left, now_ms),
    );
    identity::update_challenge(tx, &challenge.challenge_id, "pending", attempts, &receipt).await?;
    store::record_decided(
        tx,
        &store::DecidedRow {
            device: &answer.device,
            key: &answer.key,
            counter: answer.counter,
            body_sha256: &answer.body_sha256,
            code: Some(ErrorCode::ChallengeFailed),
            tx_id: None,
            receipt: &receipt,
            now_ms,
        },
    )
    .await?;
    Ok(receipt)
}

async fn write_upi(
    tx: &mut Tx<'_>,
    ctx: &Context,
    item: &Prepared,
    upi: UpiInitiation,
    sinks: Sinks<'_>,
    now_ms: u64,
) -> Result<Vec<u8>, StoreError> {
    let request = &item.request;
    let receipt = seal(
        ctx,
        &receipts::pending_receipt(
            &upi,
            &request.device_id,
            &request.idempotency_key,
            &item.body_sha256,
            now_ms,
        ),
    );
    repo::insert_initiated(
        tx,
        &repo::Initiated {
            payment_id: &upi.payment_id,
            device: &request.device_id,
            key: &request.idempotency_key,
            counter: request.counter,
            body_sha256: &item.body_sha256,
            merchant: &upi.merchant,
            merchant_vpa: &upi.merchant_vpa,
            amount: upi.amount,
            payer: &upi.payer,
            receipt: &receipt,
            collect: upi.collect,
            now_ms,
        },
    )
    .await?;
    let mut event = event_of(
        EventType::PaymentDecided,
        &request.device_id,
        format!("mqtt:{}", request.device_id),
        "pipeline",
        upi.merchant.as_str(),
        None,
        now_ms,
    );
    event.merchant_id = Some(upi.merchant.to_string());
    event.amount = Some(format!(
        "{} {}",
        upi.amount.minor_signed(),
        upi.amount.currency
    ));
    event.detail = Some(format!(
        "upi_initiated idempotency_key {} payment {} payer {}",
        request.idempotency_key, upi.payment_id, upi.payer.masked
    ));
    sinks.events.push(event);
    sinks.handoffs.push(upi.handoff);
    Ok(receipt)
}

/// A request refused before it could be read or verified: a signed rejection and its audit
/// record (PCI DSS 10.2.1.4 when it is a bad signature or a foreign identity); nothing stored.
pub fn reject_unverified(
    ctx: &Context,
    inbound: &Inbound,
    refusal: Refusal,
    now_ms: u64,
    events: &mut Vec<AuditEvent>,
) -> Outbound {
    events.push(rejected_event(&inbound.device, None, refusal.code, now_ms));
    rejection(
        ctx,
        inbound,
        None,
        refusal.body_sha256.as_deref(),
        refusal.code,
        refusal.message,
        now_ms,
    )
}

/// A verified request refused before its decision, with its audit record; nothing stored.
#[allow(clippy::too_many_arguments)]
pub fn reject_verified(
    ctx: &Context,
    inbound: &Inbound,
    request: &Request,
    body_sha256: &[u8],
    code: ErrorCode,
    message: String,
    now_ms: u64,
    events: &mut Vec<AuditEvent>,
) -> Outbound {
    events.push(rejected_event(&inbound.device, Some(request), code, now_ms));
    rejection(
        ctx,
        inbound,
        Some(request),
        Some(body_sha256),
        code,
        message,
        now_ms,
    )
}

fn rejection(
    ctx: &Context,
    inbound: &Inbound,
    request: Option<&Request>,
    body_sha256: Option<&[u8]>,
    code: ErrorCode,
    message: String,
    now_ms: u64,
) -> Outbound {
    // a decoder's message can quote the input (serde does for numbers): mask card numbers
    let message = paygate_core::audit::scrub(&message);
    ctx.metrics.count_refusal(code);
    tracing::info!(device = %inbound.device, code = %code, %message, "request rejected");
    let key = request.map(|r| &r.idempotency_key);
    let receipt =
        receipts::rejected_receipt(&inbound.device, key, body_sha256, code, message, now_ms);
    Outbound {
        device: inbound.device.clone(),
        receipt: seal(ctx, &receipt),
        received_at: inbound.received_at,
    }
}

/// A reply for a tick job's decision (no request waiting: received now).
pub fn tick_reply(device: DeviceId, receipt: Vec<u8>) -> Outbound {
    Outbound {
        device,
        receipt,
        received_at: Instant::now(),
    }
}

fn event_of(
    kind: EventType,
    device: &DeviceId,
    source: String,
    component: &str,
    account: &str,
    code: Option<ErrorCode>,
    now_ms: u64,
) -> AuditEvent {
    let outcome = if code.is_none() {
        AuditOutcome::Success
    } else {
        AuditOutcome::Failure
    };
    let mut event = AuditEvent::new(
        now_ms,
        kind,
        format!("device:{device}"),
        source,
        outcome,
        component,
        format!("account:{account}"),
    );
    event.code = code.map(|c| c.as_str().to_owned());
    event.device_id = Some(device.to_string());
    event
}

/// The `payment_decided` record of a final decision: who (device, over which channel), the
/// account it is about, the outcome and code, the transfer and the amount.
fn decision_event(decided: &Final, now_ms: u64) -> AuditEvent {
    let device = &decided.request.device;
    let (source, component) = if decided.audit.by_upi_switch {
        ("upi-switch".to_owned(), "upi")
    } else {
        (format!("mqtt:{device}"), "pipeline")
    };
    let mut event = event_of(
        EventType::PaymentDecided,
        device,
        source,
        component,
        &decided.audit.account,
        decided.code,
        now_ms,
    );
    event.tx_id = decided.tx_id.as_ref().map(|t| t.to_string());
    event.amount = Some(format!(
        "{} {}",
        decided.amount.minor_signed(),
        decided.amount.currency
    ));
    event.wallet_id = decided.audit.wallet.as_ref().map(|w| w.to_string());
    event.merchant_id = decided.audit.merchant.as_ref().map(|m| m.to_string());
    event.detail = Some(decided.audit.detail.clone());
    event
}

pub(super) fn identity_event(note: &IdentityNote, now_ms: u64) -> AuditEvent {
    let mut event = AuditEvent::new(
        now_ms,
        EventType::IdentityDecision,
        format!("device:{}", note.device),
        format!("mqtt:{}", note.device),
        note.outcome,
        "identity",
        format!("account:{}", note.wallet),
    );
    event.code = note.code.map(|c| c.as_str().to_owned());
    event.device_id = Some(note.device.to_string());
    event.wallet_id = Some(note.wallet.to_string());
    event.merchant_id = Some(note.merchant.to_string());
    event.amount = Some(format!(
        "{} {}",
        note.amount.minor_signed(),
        note.amount.currency
    ));
    event.detail = Some(format!("idempotency_key {} {}", note.key, note.detail));
    event
}

fn rejected_event(
    device: &DeviceId,
    request: Option<&Request>,
    code: ErrorCode,
    now_ms: u64,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        now_ms,
        EventType::RequestRejected,
        format!("device:{device}"),
        format!("mqtt:{device}"),
        AuditOutcome::Failure,
        "pipeline",
        format!("device:{device}"),
    );
    event.code = Some(code.as_str().to_owned());
    event.device_id = Some(device.to_string());
    event.detail = request.map(|r| format!("idempotency_key {}", r.idempotency_key));
    event
}
