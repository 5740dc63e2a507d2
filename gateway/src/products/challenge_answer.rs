//! A step-up challenge answered: dynamic linking (the amount and payee restated), each
//! mechanism checked; right, the held payment is posted (through the same limits as a direct
//! payment); wrong, an attempt is counted and at `identity.attempts_max` the payment is
//! declined and the mechanisms lock. Also the tick's expiry of unanswered challenges.

use super::merchant_payment::{post_held, wallet_limits, HeldPayment};
use super::{Decision, Effect, Prepared, RequestRef, Rules};
use crate::identity::{self, Challenge};
use crate::store::{self, Batch, StoreError};
use paygate_core::audit::AuditOutcome;
use paygate_core::identity::{totp_verify, Mechanism};
use paygate_core::request::{OneTimeCode, Operation};
use paygate_core::ErrorCode;

/// Decides a challenge answer.
pub async fn decide(
    tx: &mut Batch<'_>,
    rules: &Rules,
    item: &Prepared,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let Operation::ChallengeAnswer {
        challenge_id,
        merchant_id,
        amount,
        responses,
    } = &item.request.operation
    else {
        return Err(StoreError::Invariant(
            "the challenge answer handler got another operation".into(),
        ));
    };
    let challenge = identity::challenge_by_id(tx, challenge_id)
        .await?
        .filter(|c| c.device == item.request.device_id);
    let Some(challenge) = challenge else {
        return Ok(Decision::refused(
            ErrorCode::ChallengeUnknown,
            "no such challenge is open for this device",
        ));
    };
    if challenge.state != "pending" {
        // already decided: answer with the payment's final receipt
        return match store::find_decided(tx, &challenge.device, &challenge.idempotency_key).await? {
            Some(decided) => Ok(Decision::of(Effect::Stored(decided.receipt))),
            None => Ok(Decision::refused(
                ErrorCode::ChallengeUnknown,
                "the challenge is closed",
            )),
        };
    }
    let answer = RequestRef::of(item);
    if now_ms >= challenge.expires_at_ms {
        return expire(tx, rules, &challenge, Some(&answer), "expired", now_ms).await;
    }
    // a mechanism locked since the challenge was opened (wrong answers on another of the
    // wallet's challenges) takes no more answers: the held payment is declined
    if let Some(locked) =
        identity::locked(tx, &challenge.wallet, &challenge.mechanisms, now_ms).await?
    {
        return decline_locked(tx, rules, &challenge, &answer, locked, now_ms).await;
    }
    let linked = *merchant_id == challenge.merchant && *amount == challenge.amount;
    // every response is checked even when the answer names another payment, so a matched
    // TOTP code is used up whatever else is wrong with the answer
    let failed = check_responses(tx, rules, item, &challenge, responses, now_ms).await?;
    if linked && failed.is_empty() {
        return pass(tx, rules, &challenge, &answer, now_ms).await;
    }
    fail(tx, rules, challenge, answer, linked, &failed, now_ms).await
}

/// Checks every mechanism's response; returns those that failed. A matched TOTP code is used
/// up even if another mechanism failed: never accepted twice.
async fn check_responses(
    tx: &mut Batch<'_>,
    rules: &Rules,
    item: &Prepared,
    challenge: &Challenge,
    responses: &[(Mechanism, OneTimeCode)],
    now_ms: u64,
) -> Result<Vec<Mechanism>, StoreError> {
    let mut failed = Vec::new();
    let mut totp_step = None;
    for &mechanism in &challenge.mechanisms {
        let response = responses
            .iter()
            .find(|(m, _)| *m == mechanism)
            .map(|(_, c)| c);
        let ok = match (mechanism, response) {
            (Mechanism::DevicePossession, _) => true,
            (_, None) => false,
            (Mechanism::Totp, Some(code)) => {
                let last = identity::totp_last_step(tx, &challenge.wallet).await?;
                totp_step = item.answer.totp_secret.as_ref().and_then(|secret| {
                    totp_verify(
                        secret,
                        rules.identity.totp,
                        now_ms / 1000,
                        code.expose(),
                        last,
                    )
                });
                totp_step.is_some()
            }
            (Mechanism::Pin, Some(_)) => item.answer.pin_matches == Some(true),
            (Mechanism::Oob, Some(code)) => {
                let hash = identity::oob_code_hash(
                    &challenge.challenge_id,
                    code.expose(),
                    challenge.amount,
                    &challenge.merchant,
                );
                challenge.oob_code_sha256.as_deref() == Some(&hash[..])
            }
        };
        if !ok {
            failed.push(mechanism);
        }
    }
    if let Some(step) = totp_step {
        identity::set_totp_step(tx, &challenge.wallet, step).await?;
    }
    Ok(failed)
}

/// The answer is right: the held payment is decided now, after the wallet's limits are
/// checked again (other payments may have been approved while it waited).
async fn pass(
    tx: &mut Batch<'_>,
    rules: &Rules,
    challenge: &Challenge,
    answer: &RequestRef,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let id = &challenge.challenge_id;
    identity::update_challenge(tx, id, "passed", challenge.attempts, &challenge.receipt).await?;
    let mut payment = HeldPayment::from(challenge);
    let note = payment.note(
        AuditOutcome::Success,
        None,
        format!("challenge {id} answered"),
    );
    let limit = wallet_limits(tx, rules, &payment.wallet, payment.amount, now_ms).await?;
    let decline = limit.map(|(code, reason)| {
        payment.decline_reason = Some(reason);
        code
    });
    let decided = post_held(tx, rules, &payment, Some(answer), decline, now_ms).await?;
    // the spend since this strong authentication starts from here
    identity::record_passes(
        tx,
        &challenge.wallet,
        &challenge.mechanisms,
        &challenge.merchant,
        challenge.amount,
        now_ms,
    )
    .await?;
    let mut decision = Decision::final_(decided);
    decision.identity.push(note);
    Ok(decision)
}

/// An answer to a challenge whose mechanism is locked: the held payment is declined
/// `MECHANISM_LOCKED`, whatever the answer.
async fn decline_locked(
    tx: &mut Batch<'_>,
    rules: &Rules,
    challenge: &Challenge,
    answer: &RequestRef,
    locked: Mechanism,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let id = &challenge.challenge_id;
    identity::update_challenge(tx, id, "failed", challenge.attempts, &challenge.receipt).await?;
    let mut payment = HeldPayment::from(challenge);
    payment.decline_reason = Some(format!(
        "{locked} is locked after too many wrong answers on this wallet"
    ));
    let note = payment.note(
        AuditOutcome::Failure,
        Some(ErrorCode::MechanismLocked),
        format!("challenge {id} answered while {locked} is locked"),
    );
    let code = Some(ErrorCode::MechanismLocked);
    let mut decision =
        Decision::final_(post_held(tx, rules, &payment, Some(answer), code, now_ms).await?);
    decision.identity.push(note);
    Ok(decision)
}

/// A wrong answer: an attempt counted on the challenge, and each failed mechanism's wrong
/// answer on the wallet (across challenges, within `identity.lockout_ms`). At the limit of
/// either the payment is declined and the mechanisms lock.
async fn fail(
    tx: &mut Batch<'_>,
    rules: &Rules,
    mut challenge: Challenge,
    answer: RequestRef,
    linked: bool,
    failed: &[Mechanism],
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let attempts = challenge.attempts.saturating_add(1);
    let window = rules.identity.lockout_ms;
    let wallet_failures =
        identity::count_failures(tx, &challenge.wallet, failed, window, now_ms).await?;
    let why = if linked {
        "wrong answer"
    } else {
        "the answer names another amount or payee"
    };
    let payment = HeldPayment::from(&challenge);
    let note = payment.note(
        AuditOutcome::Failure,
        Some(ErrorCode::ChallengeFailed),
        format!(
            "challenge {}: {why}, attempt {attempts} of {}",
            challenge.challenge_id, rules.identity.attempts_max
        ),
    );
    if attempts >= rules.identity.attempts_max || wallet_failures >= rules.identity.attempts_max {
        let id = &challenge.challenge_id;
        identity::update_challenge(tx, id, "failed", attempts, &challenge.receipt).await?;
        let until = now_ms.saturating_add(rules.identity.lockout_ms);
        identity::lock(tx, &challenge.wallet, &challenge.mechanisms, until).await?;
        let code = Some(ErrorCode::ChallengeFailed);
        let mut decision =
            Decision::final_(post_held(tx, rules, &payment, Some(&answer), code, now_ms).await?);
        decision.identity.push(note);
        return Ok(decision);
    }
    challenge.attempts = attempts;
    Ok(Decision {
        effect: Effect::ChallengeRetry {
            challenge: Box::new(challenge),
            attempts,
            answer,
        },
        identity: vec![note],
    })
}

/// Declines a challenged payment whose time ran out (answered late, or found by the tick).
pub async fn expire(
    tx: &mut Batch<'_>,
    rules: &Rules,
    challenge: &Challenge,
    answer: Option<&RequestRef>,
    how: &str,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let id = &challenge.challenge_id;
    identity::update_challenge(tx, id, "expired", challenge.attempts, &challenge.receipt).await?;
    let payment = HeldPayment::from(challenge);
    let note = payment.note(
        AuditOutcome::Failure,
        Some(ErrorCode::ChallengeExpired),
        format!("challenge {id} {how}"),
    );
    let code = Some(ErrorCode::ChallengeExpired);
    let mut decision =
        Decision::final_(post_held(tx, rules, &payment, answer, code, now_ms).await?);
    decision.identity.push(note);
    Ok(decision)
}
