//! Stage 2, prepare: the work that calls the key provider or is slow on purpose, done before
//! the batch's transaction so that it never holds the ledger's write lock: the payer's PAN or
//! VPA encrypted with its blind index, the wallet a P2P transfer or cash-in names by phone or
//! VPA, and a challenge answer's TOTP secret and PIN check. The items are prepared
//! concurrently. Fails closed: without a key the request is refused with `KEY_UNAVAILABLE`
//! and nothing is written.

use super::batch::{Batch, Stage, Verified};
use super::Context;
use crate::identity;
use crate::products::{AnswerMaterial, Prepared};
use crate::profiles;
use crate::store::SealedPayer;
use paygate_core::identity::Mechanism;
use paygate_core::payer::Payer;
use paygate_core::request::{Operation, Party, Request};
use paygate_core::{AccountId, ErrorCode};

pub async fn run(ctx: &Context, batch: &mut Batch) {
    let mut work = Vec::new();
    for (index, slot) in batch.slots.iter_mut().enumerate() {
        if let Stage::Verified(_) = slot.stage {
            if let Stage::Verified(verified) = std::mem::replace(&mut slot.stage, Stage::Received) {
                work.push((index, verified));
            }
        }
    }
    let prepared = futures::future::join_all(
        work.into_iter()
            .map(|(index, verified)| async move { (index, prepare(ctx, *verified).await) }),
    )
    .await;
    for (index, result) in prepared {
        let slot = &mut batch.slots[index];
        slot.stage = match result {
            Ok(item) => Stage::Prepared(Box::new(item)),
            Err((verified, code, message)) => Stage::Done(super::record::reject_verified(
                ctx,
                &slot.inbound,
                &verified.request,
                &verified.body_sha256,
                code,
                message,
                batch.now_ms,
                &mut batch.events,
            )),
        };
    }
}

type Failed = (Verified, ErrorCode, String);

async fn prepare(ctx: &Context, verified: Verified) -> Result<Prepared, Failed> {
    if verified.stale.is_some() {
        // refused after deduplication unless it is a resend; nothing to prepare
        return Ok(into_prepared(
            verified,
            None,
            AnswerMaterial::default(),
            None,
        ));
    }
    let payer = match seal_payer(ctx, &verified.request).await {
        Ok(payer) => payer,
        Err((code, message)) => return Err((verified, code, message)),
    };
    let answer = match prepare_answer(ctx, &verified).await {
        Ok(answer) => answer,
        Err((code, message)) => return Err((verified, code, message)),
    };
    let party = match resolve_party(ctx, &verified.request).await {
        Ok(party) => party,
        Err((code, message)) => return Err((verified, code, message)),
    };
    Ok(into_prepared(verified, payer, answer, party))
}

fn into_prepared(
    verified: Verified,
    payer: Option<SealedPayer>,
    answer: AnswerMaterial,
    party: Option<AccountId>,
) -> Prepared {
    Prepared {
        request: verified.request,
        body_sha256: verified.body_sha256,
        wallet: verified.wallet,
        payer,
        answer,
        party,
    }
}

/// Encrypts the payer's PAN or VPA and computes its blind index, outside the database
/// transaction (a key provider call must never hold the ledger's write lock). Fails closed:
/// without a key the request is refused with `KEY_UNAVAILABLE` and nothing is written. The
/// UPI credential block is for the UPI switch only; it is not kept.
async fn seal_payer(
    ctx: &Context,
    request: &Request,
) -> Result<Option<SealedPayer>, (ErrorCode, String)> {
    let (kind, value, masked) = match &request.operation {
        Operation::MerchantPayment {
            payer: Some(payer), ..
        }
        | Operation::UpiPayment { payer, .. } => match payer {
            Payer::Card { pan } => ("card", pan.expose(), payer.masked()),
            Payer::Upi { vpa, .. } => ("upi", vpa.expose(), payer.masked()),
        },
        Operation::UpiCollect { payer_vpa, .. } => (
            "upi",
            payer_vpa.expose(),
            format!("upi {}", payer_vpa.masked()),
        ),
        _ => return Ok(None),
    };
    let record = format!("{}/{}", request.device_id, request.idempotency_key);
    let sealed = async {
        let value_ct = ctx
            .cipher
            .encrypt("payment_instruments", kind, &record, value.as_bytes())
            .await?;
        let value_bidx = ctx
            .cipher
            .blind_index("payment_instruments", kind, value)
            .await?;
        Ok::<_, crate::keys::KeyError>(SealedPayer {
            kind,
            value_ct,
            value_bidx,
            masked,
        })
    }
    .await;
    sealed.map(Some).map_err(|error| {
        ctx.metrics.count_key_failure();
        tracing::error!(%error, device = %request.device_id, "payer not encrypted; request refused");
        (
            error.code(),
            "the key protecting the payer's data is unavailable; nothing was written; retry later with the same idempotency key".to_owned(),
        )
    })
}

/// The wallet a P2P transfer or cash-in names by phone or VPA, through the profiles'
/// blind indexes (a key provider call, so outside the transaction; fails closed with
/// `KEY_UNAVAILABLE`). A wallet named by id is taken as it is.
async fn resolve_party(
    ctx: &Context,
    request: &Request,
) -> Result<Option<AccountId>, (ErrorCode, String)> {
    let party = match &request.operation {
        Operation::P2pTransfer { to, .. } => to,
        Operation::CashIn { customer, .. } => customer,
        _ => return Ok(None),
    };
    let (phone, vpa) = match party {
        Party::Wallet(id) => return Ok(Some(id.clone())),
        Party::Phone(phone) => (Some(phone.as_str()), None),
        Party::Vpa(vpa) => (None, Some(vpa.expose())),
    };
    match profiles::find(&ctx.cipher, ctx.store.pool(), phone, vpa).await {
        Ok(found) => Ok(found.and_then(|id| AccountId::parse(&id).ok())),
        Err(profiles::ProfileError::Invalid { .. } | profiles::ProfileError::Taken { .. }) => {
            Ok(None)
        }
        Err(profiles::ProfileError::Key(error)) => {
            ctx.metrics.count_key_failure();
            tracing::error!(%error, device = %request.device_id, "wallet alias not resolved; request refused");
            Err((
                error.code(),
                "the key protecting wallet aliases is unavailable; nothing was written; retry later with the same idempotency key".into(),
            ))
        }
        Err(profiles::ProfileError::Database(error)) => {
            Err((ErrorCode::InternalError, error.to_string()))
        }
    }
}

/// For a challenge answer, fetches what checking it needs outside the transaction: the
/// TOTP secret (decrypted; `KEY_UNAVAILABLE` if the key provider cannot help) and the
/// PIN check.
async fn prepare_answer(
    ctx: &Context,
    item: &Verified,
) -> Result<AnswerMaterial, (ErrorCode, String)> {
    let Operation::ChallengeAnswer { responses, .. } = &item.request.operation else {
        return Ok(AnswerMaterial::default());
    };
    let mut material = AnswerMaterial::default();
    for (mechanism, code) in responses {
        match mechanism {
            Mechanism::Totp => {
                material.totp_secret =
                    profiles::totp_secret(&ctx.cipher, ctx.store.pool(), &item.wallet)
                        .await
                        .map_err(|error| {
                            ctx.metrics.count_key_failure();
                            tracing::error!(%error, "totp secret unavailable");
                            (
                        ErrorCode::KeyUnavailable,
                        "the key protecting the holder's TOTP secret is unavailable; retry later"
                            .to_owned(),
                    )
                        })?;
            }
            Mechanism::Pin => {
                material.pin_matches = Some(
                    identity::pin_matches(ctx.store.pool(), &item.wallet, code.expose())
                        .await
                        .map_err(|error| (ErrorCode::InternalError, error.to_string()))?,
                );
            }
            Mechanism::Oob | Mechanism::DevicePossession => {}
        }
    }
    Ok(material)
}
