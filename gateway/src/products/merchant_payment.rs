//! Merchant payments (in money, or partly in reward points): the wallet's KYC limits, abuse
//! limits, then the rule manager; a payment that needs a step-up is held as a challenge, the
//! others are posted now. [`post_held`] is the one place a merchant payment is posted, whether
//! decided now or on a challenge answer.

use super::{
    AuditFacts, Decision, Effect, Final, HeldKind, IdentityNote, Prepared, RequestRef, Rules,
};
use crate::identity::{self, Challenge};
use crate::ledger::{self, AccountKind, Leg};
use crate::rewards;
use crate::store::{Batch, SealedPayer, StoreError};
use paygate_core::audit::AuditOutcome;
use paygate_core::identity::{required_mechanisms, Mechanism, Requirement, RiskLevel};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, Money};

/// A payment being decided: now, or later from its challenge.
#[derive(Debug, Clone)]
pub struct HeldPayment {
    pub request: RequestRef,
    pub wallet: AccountId,
    pub merchant: AccountId,
    pub amount: Money,
    pub payer: Option<SealedPayer>,
    /// Why it is declined, where a code's own description does not say enough (which limit).
    pub decline_reason: Option<String>,
    /// Reward points redeemed as part of the tender (0: none).
    pub points: i64,
    /// A merchant payment, or a P2P transfer or cash-out held behind the same rules.
    pub kind: HeldKind,
}

impl From<&Challenge> for HeldPayment {
    fn from(c: &Challenge) -> HeldPayment {
        HeldPayment {
            request: RequestRef {
                device: c.device.clone(),
                key: c.idempotency_key.clone(),
                counter: c.counter,
                body_sha256: c.body_sha256.clone(),
            },
            wallet: c.wallet.clone(),
            merchant: c.merchant.clone(),
            amount: c.amount,
            payer: c.payer.clone(),
            decline_reason: None,
            points: c.redeem_points,
            kind: c.kind,
        }
    }
}

impl HeldPayment {
    pub fn device(&self) -> &DeviceId {
        &self.request.device
    }

    pub fn key(&self) -> &IdempotencyKey {
        &self.request.key
    }

    /// An identity-validation fact about this payment.
    pub fn note(
        &self,
        outcome: AuditOutcome,
        code: Option<ErrorCode>,
        detail: String,
    ) -> IdentityNote {
        IdentityNote {
            device: self.request.device.clone(),
            wallet: self.wallet.clone(),
            merchant: self.merchant.clone(),
            amount: self.amount,
            key: self.request.key.clone(),
            outcome,
            code,
            detail,
        }
    }
}

/// Decides a merchant payment (`points` > 0: part of the tender in reward points).
pub async fn decide(
    tx: &mut Batch<'_>,
    rules: &Rules,
    item: &Prepared,
    merchant: &AccountId,
    amount: Money,
    points: i64,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let mut payment = HeldPayment {
        request: RequestRef::of(item),
        wallet: item.wallet.clone(),
        merchant: merchant.clone(),
        amount,
        payer: item.payer.clone(),
        decline_reason: None,
        points,
        kind: HeldKind::MerchantPayment,
    };
    if let Some((code, reason)) = wallet_limits(tx, rules, &payment.wallet, amount, now_ms).await? {
        payment.decline_reason = Some(reason);
        return Ok(Decision::final_(
            post_held(tx, rules, &payment, None, Some(code), now_ms).await?,
        ));
    }
    match risk_gate(tx, rules, &payment, now_ms).await? {
        Some(held_or_declined) => Ok(held_or_declined),
        None => Ok(Decision::final_(
            post_held(tx, rules, &payment, None, None, now_ms).await?,
        )),
    }
}

/// The abuse limits and the rule manager for a wallet debit (merchant payment, P2P or
/// cash-out) whose KYC limits passed: `None` to post it now, or the decision that holds it
/// behind a challenge or declines it.
pub async fn risk_gate(
    tx: &mut Batch<'_>,
    rules: &Rules,
    payment: &HeldPayment,
    now_ms: u64,
) -> Result<Option<Decision>, StoreError> {
    let (merchant, amount) = (&payment.merchant, payment.amount);
    let known = identity::completeness(
        tx,
        &identity::CompletenessQuery {
            device: payment.device(),
            wallet: &payment.wallet,
            merchant,
            amount,
            now_ms,
            velocity_window_ms: rules.identity.velocity_window_ms,
            device_count_max: rules.identity.device_payments_per_window_max,
            wallet_count_max: rules.identity.wallet_payments_per_window_max,
        },
    )
    .await?;
    match gate(rules, &known) {
        Gate::Pass => Ok(None),
        Gate::AbuseLimit => {
            let code = Some(ErrorCode::LimitExceeded);
            Ok(Some(Decision::final_(
                post_held(tx, rules, payment, None, code, now_ms).await?,
            )))
        }
        Gate::StepUp(required) => challenge(tx, rules, payment, &required, now_ms)
            .await
            .map(Some),
    }
}

/// What the abuse limits and the rule manager make of a wallet debit.
pub enum Gate {
    /// Post it now.
    Pass,
    /// Past the device's or the wallet's payments in the velocity window: declined
    /// `LIMIT_EXCEEDED`.
    AbuseLimit,
    /// Held behind a challenge for these mechanisms.
    StepUp(Vec<Requirement>),
}

/// The abuse limits and the risk rules over the completeness data: the one place they are
/// decided, whether a request is decided alone or with its batch.
pub fn gate(rules: &Rules, known: &identity::Known) -> Gate {
    let completeness = &known.completeness;
    // abuse limits, from the same counters the rules read
    if completeness.payments_in_window >= rules.identity.device_payments_per_window_max
        || known.wallet_debits_in_window >= rules.identity.wallet_payments_per_window_max
    {
        return Gate::AbuseLimit;
    }
    let required = required_mechanisms(
        &rules.identity.rules,
        &rules.identity.pass_windows,
        completeness,
    );
    if required.is_empty() {
        Gate::Pass
    } else {
        Gate::StepUp(required)
    }
}

/// The KYC limits of the paying account, if it is a wallet (a merchant's or agent's terminal
/// paying is limited by its own account's rules in the ledger).
pub async fn wallet_limits(
    tx: &mut Batch<'_>,
    rules: &Rules,
    wallet: &AccountId,
    amount: Money,
    now_ms: u64,
) -> Result<Option<(ErrorCode, String)>, StoreError> {
    match ledger::account(tx, wallet).await? {
        Some(account) if account.kind == AccountKind::Wallet => {
            super::limits::check_debit(
                tx,
                &rules.wallet,
                &account,
                "merchant_payment",
                amount,
                now_ms,
            )
            .await
        }
        _ => Ok(None),
    }
}

/// Holds the payment behind a step-up challenge, or declines it when a mechanism it needs is
/// locked or not enrolled.
async fn challenge(
    tx: &mut Batch<'_>,
    rules: &Rules,
    payment: &HeldPayment,
    required: &[Requirement],
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let mechanisms: Vec<Mechanism> = required.iter().map(|r| r.mechanism).collect();
    let risk = required
        .iter()
        .map(|r| r.risk)
        .max()
        .unwrap_or(RiskLevel::High);
    let rule_names: Vec<String> = required.iter().flat_map(|r| r.rules.clone()).collect();
    let mut refusal = None;
    if let Some(mechanism) = identity::locked(tx, &payment.wallet, &mechanisms, now_ms).await? {
        refusal = Some((ErrorCode::MechanismLocked, format!("{mechanism} is locked")));
    } else {
        for &mechanism in &mechanisms {
            if !identity::enrolled(tx, &payment.wallet, mechanism).await? {
                refusal = Some((
                    ErrorCode::MechanismNotEnrolled,
                    format!("{mechanism} is not enrolled"),
                ));
                break;
            }
        }
    }
    if let Some((code, why)) = refusal {
        let note = payment.note(
            AuditOutcome::Failure,
            Some(code),
            format!("step-up needed by {} but {why}", rule_names.join(",")),
        );
        let mut decision =
            Decision::final_(post_held(tx, rules, payment, None, Some(code), now_ms).await?);
        decision.identity.insert(0, note);
        return Ok(decision);
    }
    let challenge_id = uuid::Uuid::new_v4().to_string();
    let oob_code_sha256 = if mechanisms.contains(&Mechanism::Oob) {
        Some(send_oob_code(rules, payment, &challenge_id))
    } else {
        None
    };
    let challenge = Challenge {
        challenge_id: challenge_id.clone(),
        device: payment.device().clone(),
        wallet: payment.wallet.clone(),
        idempotency_key: payment.key().clone(),
        counter: payment.request.counter,
        body_sha256: payment.request.body_sha256.clone(),
        merchant: payment.merchant.clone(),
        amount: payment.amount,
        payer: payment.payer.clone(),
        kind: payment.kind,
        mechanisms: mechanisms.clone(),
        risk,
        oob_code_sha256,
        redeem_points: payment.points,
        attempts: 0,
        state: "pending".into(),
        receipt: Vec::new(),
        expires_at_ms: now_ms.saturating_add(rules.identity.challenge_ttl_ms),
    };
    let names: Vec<&str> = mechanisms.iter().map(|m| m.as_str()).collect();
    let note = payment.note(
        AuditOutcome::Success,
        None,
        format!(
            "challenge {challenge_id} issued: {} (rules {}, risk {risk:?})",
            names.join(","),
            rule_names.join(",")
        ),
    );
    Ok(Decision {
        effect: Effect::Challenge(Box::new(challenge)),
        identity: vec![note],
    })
}

/// Sends a fresh out-of-band code and returns the hash it is kept as.
fn send_oob_code(rules: &Rules, payment: &HeldPayment, challenge_id: &str) -> Vec<u8> {
    let code = format!("{:06}", rand::random::<u32>() % 1_000_000);
    let text = format!(
        "paygate: {code} is your code to pay {} to {}. Never share it.",
        payment.amount, payment.merchant
    );
    if let Err(error) = rules
        .notifier
        .send(&payment.wallet, challenge_id, &code, &text)
    {
        tracing::error!(%error, "out-of-band code not sent");
    }
    identity::oob_code_hash(challenge_id, &code, payment.amount, &payment.merchant)
}

/// Posts a payment decided now (unless `decline` says why not), with its reward points, and
/// describes it for the record: its own request and the challenge answer that completed it.
pub async fn post_held(
    tx: &mut Batch<'_>,
    rules: &Rules,
    payment: &HeldPayment,
    answer: Option<&RequestRef>,
    decline: Option<ErrorCode>,
    now_ms: u64,
) -> Result<Final, StoreError> {
    if payment.kind != HeldKind::MerchantPayment {
        return super::wallet::post_held_transfer(tx, rules, payment, answer, decline, now_ms)
            .await;
    }
    let tx_id = crate::store::new_tx_id();
    let mut reason = payment.decline_reason.clone();
    let mut code = decline;
    let mut money_paid = payment.amount.minor_signed();
    let mut legs = Vec::new();
    if code.is_none() {
        match payment_legs(tx, rules, payment, now_ms).await? {
            Ok((payment_legs, money)) => {
                legs = payment_legs;
                money_paid = money;
            }
            Err((refused, why)) => {
                code = Some(refused);
                reason = Some(why);
            }
        }
    }
    if code.is_none() {
        code = post_payment(tx, payment, &tx_id, legs, now_ms).await?;
    }
    let mut points_earned = 0;
    if code.is_none() {
        points_earned = settle_points(tx, rules, payment, &tx_id, money_paid, now_ms).await?;
    }
    Ok(payment_final(
        payment,
        answer,
        code.is_none().then_some(tx_id),
        code.map(|c| (c, reason)),
        points_earned,
    ))
}

/// The [`Final`] of a merchant payment: posted as `tx_id`, or declined with its code (and the
/// reason, where the code's own description does not say enough).
pub fn payment_final(
    payment: &HeldPayment,
    answer: Option<&RequestRef>,
    tx_id: Option<paygate_core::TxId>,
    declined: Option<(ErrorCode, Option<String>)>,
    points_earned: i64,
) -> Final {
    let mut detail = match &payment.payer {
        Some(payer) => format!("idempotency_key {} payer {}", payment.key(), payer.masked),
        None => format!("idempotency_key {}", payment.key()),
    };
    if payment.points > 0 {
        detail.push_str(&format!(" points_redeemed {}", payment.points));
    }
    if points_earned > 0 {
        detail.push_str(&format!(" points_earned {points_earned}"));
    }
    let code = declined.as_ref().map(|(code, _)| *code);
    Final {
        request: payment.request.clone(),
        answer: answer.cloned(),
        tx_id,
        code,
        message: declined.map(|(c, reason)| reason.unwrap_or_else(|| c.description().to_owned())),
        amount: payment.amount,
        merchant: Some(payment.merchant.clone()),
        counterparty: None,
        payer: payment.payer.as_ref().map(|p| p.masked.clone()),
        stored_payer: payment.payer.clone(),
        audit: AuditFacts {
            account: payment.wallet.to_string(),
            wallet: Some(payment.wallet.clone()),
            merchant: Some(payment.merchant.clone()),
            detail,
            by_upi_switch: false,
        },
        upi: None,
        settles_upi_payment: None,
        alert: false,
    }
}

/// The legs of a payment and the part paid in money; a points tender the wallet cannot
/// cover is a decline.
async fn payment_legs(
    tx: &mut Batch<'_>,
    rules: &Rules,
    payment: &HeldPayment,
    now_ms: u64,
) -> Result<Result<(Vec<Leg>, i64), (ErrorCode, String)>, StoreError> {
    let amount = payment.amount;
    if payment.points > 0 {
        return rewards::tender_legs(
            tx,
            &rules.rewards,
            &payment.wallet,
            &payment.merchant,
            amount,
            payment.points,
            now_ms,
        )
        .await;
    }
    let unit = amount.currency.code();
    let minor = amount.minor_signed();
    Ok(Ok((
        vec![
            Leg::debit(&payment.wallet, AccountKind::Wallet, unit, minor),
            Leg::credit(&payment.merchant, AccountKind::Merchant, unit, minor),
        ],
        minor,
    )))
}

/// Posts the payment's transfer; the ledger's refusal is the decline code.
async fn post_payment(
    tx: &mut Batch<'_>,
    payment: &HeldPayment,
    tx_id: &paygate_core::TxId,
    legs: Vec<Leg>,
    now_ms: u64,
) -> Result<Option<ErrorCode>, StoreError> {
    let posted = ledger::post(
        tx,
        &ledger::NewTransfer {
            tx_id,
            kind: "merchant_payment",
            origin: Some((payment.device(), payment.key())),
            related: None,
            legs,
            now_ms,
        },
    )
    .await;
    match posted {
        Ok(()) => Ok(None),
        Err(StoreError::Refused(code)) => Ok(Some(code)),
        Err(other) => Err(other),
    }
}

/// After the payment is posted: redeemed points leave their lots, and points are earned on
/// the money part. Returns the points earned.
async fn settle_points(
    tx: &mut Batch<'_>,
    rules: &Rules,
    payment: &HeldPayment,
    tx_id: &paygate_core::TxId,
    money_paid: i64,
    now_ms: u64,
) -> Result<i64, StoreError> {
    if payment.points > 0 {
        rewards::consume(tx, &payment.wallet, payment.points, now_ms).await?;
    }
    if money_paid <= 0 || !rules.rewards.enabled {
        return Ok(0);
    }
    let category = ledger::account(tx, &payment.merchant)
        .await?
        .and_then(|m| m.category);
    let paid = Money::new(
        u64::try_from(money_paid).unwrap_or(0),
        payment.amount.currency,
    )
    .map_err(|e| StoreError::Invariant(e.to_string()))?;
    rewards::earn(
        tx,
        &rules.rewards,
        &payment.wallet,
        category.as_deref(),
        tx_id,
        paid,
        now_ms,
    )
    .await
}
