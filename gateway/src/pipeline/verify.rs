//! Stage 1, verify: the envelope's structure, the sender's enrolment (from the device cache),
//! the signature under the enrolled key and algorithm, the strict payload decode and the
//! sender binding (topic, key id and payload device agree). The signature work runs on the
//! blocking pool, split across the cores; nothing is written. Freshness is checked after
//! deduplication (a resend of a decided request always gets its first answer).

use super::batch::{Batch, Stage, Verified};
use super::Context;
use crate::store::Device;
use paygate_core::envelope::UnverifiedEnvelope;
use paygate_core::request::{check_freshness, decode_request, REQUEST_CONTENT_TYPE};
use paygate_core::ErrorCode;
use sha2::{Digest, Sha256};

/// Why a request was refused here: the code, a message, and the body hash if the envelope
/// could be read.
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub body_sha256: Option<Vec<u8>>,
}

pub async fn run(ctx: &Context, batch: &mut Batch) {
    // enrolment lookups first (cached; the database only on a miss)
    let mut work = Vec::with_capacity(batch.slots.len());
    for (index, slot) in batch.slots.iter().enumerate() {
        if !matches!(slot.stage, Stage::Received) {
            continue;
        }
        let device = ctx.devices.get(&ctx.store, &slot.inbound.device).await;
        work.push((
            index,
            slot.inbound.message.clone(),
            slot.inbound.device.clone(),
            device,
        ));
    }
    // the clock now, not the batch's: a batch gathers requests while the decider is busy
    let freshness = Freshness {
        now_ms: crate::clock::now_ms().max(batch.now_ms),
        age_max_ms: ctx.settings.request_age_max_ms,
        future_skew_max_ms: ctx.settings.request_future_skew_max_ms,
    };
    let chunk_count = ctx.settings.verify_threads_max.max(1);
    let chunk_size = work.len().div_ceil(chunk_count).max(1);
    let mut tasks = Vec::new();
    while !work.is_empty() {
        let rest = work.split_off(work.len().min(chunk_size));
        let chunk = std::mem::replace(&mut work, rest);
        tasks.push(tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(index, message, device_id, device)| {
                    // a panic in a decoder refuses that one request, never its batch
                    let checked = std::panic::catch_unwind(|| {
                        check(&message, device_id.as_str(), device, freshness)
                    })
                    .unwrap_or_else(|_| {
                        Err(Refusal {
                            code: ErrorCode::InternalError,
                            message: "the request could not be verified".into(),
                            body_sha256: None,
                        })
                    });
                    (index, checked)
                })
                .collect::<Vec<_>>()
        }));
    }
    for task in tasks {
        let Ok(results) = task.await else {
            tracing::error!("a verification task failed; its requests get no reply");
            continue;
        };
        for (index, result) in results {
            let slot = &mut batch.slots[index];
            slot.stage = match result {
                Ok(verified) => {
                    slot.stale = verified.stale;
                    Stage::Verified(Box::new(verified))
                }
                Err(refusal) => Stage::Done(super::record::reject_unverified(
                    ctx,
                    &slot.inbound,
                    refusal,
                    batch.now_ms,
                    &mut batch.events,
                )),
            };
        }
    }
}

type Lookup = Result<Option<Device>, String>;

#[derive(Clone, Copy)]
struct Freshness {
    now_ms: u64,
    age_max_ms: u64,
    future_skew_max_ms: u64,
}

fn check(
    message: &[u8],
    topic_device: &str,
    device: Lookup,
    freshness: Freshness,
) -> Result<Verified, Refusal> {
    let refuse = |code, message, body_sha256| Refusal {
        code,
        message,
        body_sha256,
    };
    let envelope =
        UnverifiedEnvelope::parse(message).map_err(|e| refuse(e.code, e.message, None))?;
    let body = envelope.payload_unverified().map(sha256);
    let device = match device {
        Ok(Some(device)) if device.active => device,
        Ok(_) => {
            return Err(refuse(
                ErrorCode::DeviceNotEnrolled,
                "device is not enrolled".into(),
                body,
            ))
        }
        Err(error) => return Err(refuse(ErrorCode::InternalError, error, body)),
    };
    let payload = envelope
        .verify(&device.key, topic_device, REQUEST_CONTENT_TYPE)
        .map_err(|e| refuse(e.code, e.message, body.clone()))?;
    let request = decode_request(payload).map_err(|e| refuse(e.code, e.message, body.clone()))?;
    if request.device_id.as_str() != topic_device {
        return Err(refuse(
            ErrorCode::DeviceMismatch,
            format!(
                "request names device {} but came from {topic_device}",
                request.device_id
            ),
            body,
        ));
    }
    let stale = check_freshness(
        request.created_at_ms,
        freshness.now_ms,
        freshness.age_max_ms,
        freshness.future_skew_max_ms,
    )
    .err();
    Ok(Verified {
        request,
        body_sha256: sha256(payload),
        wallet: device.wallet,
        stale,
    })
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}
