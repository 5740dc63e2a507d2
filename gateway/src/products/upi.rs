//! UPI payments and collects: the checks that need no network (UPI enabled, currency, the
//! per-transaction limit, the merchant's address registered), then the payment is recorded
//! as initiated and handed to the worker once the batch commits. And the settlement of the
//! network's answers: a success is posted from the UPI settlement account to the merchant.

use super::{AuditFacts, Decision, Effect, Final, Prepared, RequestRef, Rules, UpiInitiation};
use crate::ledger::{self, AccountKind, Leg};
use crate::store::{Batch, StoreError};
use crate::upi::{self, repo, Handoff};
use paygate_core::payer::Payer;
use paygate_core::request::Operation;
use paygate_core::{AccountId, ErrorCode, Money};

/// Decides a UPI payment (the customer's PIN in the credential block) or collect.
pub async fn decide(
    tx: &mut Batch<'_>,
    rules: &Rules,
    item: &Prepared,
    // the network decides the moment; kept for the one signature every handler has
    _now_ms: u64,
) -> Result<Decision, StoreError> {
    let (merchant_vpa, amount, payer_vpa, credential_block) = match &item.request.operation {
        Operation::UpiPayment {
            merchant_vpa,
            amount,
            payer: Payer::Upi {
                vpa,
                credential_block,
            },
        } => (Some(merchant_vpa), *amount, vpa, Some(credential_block)),
        Operation::UpiCollect { payer_vpa, amount } => (None, *amount, payer_vpa, None),
        _ => {
            return Err(StoreError::Invariant(
                "the UPI handler got another operation (or a card payer)".into(),
            ))
        }
    };
    let collect = merchant_vpa.is_none();
    let kind = if collect {
        "upi_collect"
    } else {
        "upi_payment"
    };
    // pay: the merchant behind the address; collect: the terminal's own merchant account
    // and its registered address (a collect comes only from a merchant's terminal)
    let (merchant, vpa_text) = match merchant_vpa {
        Some(vpa) => (
            repo::merchant_of_vpa(tx, vpa.expose()).await?,
            vpa.expose().to_owned(),
        ),
        None => {
            let is_merchant = ledger::account(tx, &item.wallet)
                .await?
                .is_some_and(|a| a.active && a.kind == AccountKind::Merchant);
            if !is_merchant {
                return Ok(declined(
                    item,
                    kind,
                    amount,
                    ErrorCode::OperationNotAllowed,
                    "a UPI collect request comes only from a merchant's terminal".into(),
                ));
            }
            let vpa = repo::vpa_of_merchant(tx, &item.wallet).await?;
            (
                vpa.as_ref().map(|_| item.wallet.to_string()),
                vpa.unwrap_or_default(),
            )
        }
    };
    if let Some((code, reason)) = refusal(rules, amount, merchant.is_none(), collect, &vpa_text) {
        return Ok(declined(item, kind, amount, code, reason));
    }
    let (Some(merchant), Some(sealed)) = (merchant, item.payer.as_ref()) else {
        let reason = "a UPI payment needs a UPI payer".to_owned();
        return Ok(declined(
            item,
            kind,
            amount,
            ErrorCode::PayerInvalid,
            reason,
        ));
    };
    let merchant = AccountId::parse(&merchant)
        .map_err(|e| StoreError::Invariant(format!("merchant_vpas row: {e}")))?;
    // the account the success will credit must be able to take it before the network takes
    // the customer's money (a success that cannot be posted has to be reversed)
    if let Some((code, reason)) = merchant_refusal(tx, rules, &merchant, amount).await? {
        return Ok(declined(item, kind, amount, code, reason));
    }
    let payment_id = upi::new_txn_id();
    Ok(Decision::of(Effect::UpiInitiated(Box::new(
        UpiInitiation {
            payment_id: payment_id.clone(),
            merchant,
            merchant_vpa: vpa_text,
            amount,
            payer: sealed.clone(),
            collect,
            handoff: Handoff {
                payment_id,
                payer_vpa: payer_vpa.expose().to_owned(),
                credential_block: credential_block.cloned(),
            },
        },
    ))))
}

/// Why a UPI request is declined before it reaches the network, if it is.
fn refusal(
    rules: &Rules,
    amount: Money,
    no_merchant: bool,
    collect: bool,
    vpa_text: &str,
) -> Option<(ErrorCode, String)> {
    if !rules.upi.enabled {
        return Some((
            ErrorCode::OperationNotAllowed,
            "UPI is not enabled on this gateway".into(),
        ));
    }
    if amount.currency.code() != rules.upi.currency {
        return Some((
            ErrorCode::CurrencyMismatch,
            format!("UPI pays in {}", rules.upi.currency),
        ));
    }
    if no_merchant {
        let why = if collect {
            "this merchant has no registered UPI address".to_owned()
        } else {
            format!("no merchant has the UPI address {vpa_text}")
        };
        return Some((ErrorCode::UnknownMerchant, why));
    }
    None
}

/// Why the merchant account cannot be credited with `amount`, if it cannot: its state, its
/// currency, and the UPI limit per transaction for its category.
async fn merchant_refusal(
    tx: &mut Batch<'_>,
    rules: &Rules,
    merchant: &AccountId,
    amount: Money,
) -> Result<Option<(ErrorCode, String)>, StoreError> {
    let account = ledger::account(tx, merchant).await?;
    if let Some(a) = &account {
        let category_limit = a
            .category
            .as_ref()
            .and_then(|c| rules.upi.category_per_transaction_max_minor.get(c));
        let limit = category_limit
            .copied()
            .unwrap_or(rules.upi.per_transaction_max_minor);
        if a.active && amount.minor_signed() > limit {
            let which = match (&a.category, category_limit) {
                (Some(category), Some(_)) => format!("for {category} merchants "),
                _ => String::new(),
            };
            return Ok(Some((
                ErrorCode::LimitExceeded,
                format!(
                    "the UPI limit per transaction {which}is {}",
                    super::limits::show(limit, amount.currency.code())
                ),
            )));
        }
    }
    Ok(match account {
        Some(a) if !a.active || a.kind != AccountKind::Merchant => Some((
            ErrorCode::UnknownMerchant,
            format!("merchant {merchant} cannot take payments"),
        )),
        None => Some((
            ErrorCode::UnknownMerchant,
            format!("merchant {merchant} has no account"),
        )),
        Some(a) if a.unit != amount.currency.code() => Some((
            ErrorCode::CurrencyMismatch,
            format!("merchant {merchant} is paid in {}", a.unit),
        )),
        Some(_) => None,
    })
}

/// A UPI request declined before the network: described like a wallet product's decline.
fn declined(
    item: &Prepared,
    kind: &str,
    amount: Money,
    code: ErrorCode,
    reason: String,
) -> Decision {
    Decision::final_(Final {
        request: RequestRef::of(item),
        answer: None,
        tx_id: None,
        code: Some(code),
        message: Some(reason.clone()),
        amount,
        merchant: None,
        counterparty: None,
        payer: None,
        stored_payer: None,
        audit: AuditFacts {
            account: item.wallet.to_string(),
            wallet: Some(item.wallet.clone()),
            merchant: None,
            detail: format!(
                "{kind} idempotency_key {} reason {reason}",
                item.request.idempotency_key
            ),
            by_upi_switch: false,
        },
        upi: None,
        settles_upi_payment: None,
        alert: false,
    })
}

/// What settling an answered payment came to.
pub enum Settled {
    Final(Box<Final>),
    /// A success the ledger refused (the merchant account changed while the network had the
    /// payment): the customer's debit is to be reversed through the switch; the payment is
    /// decided when the reversal is in.
    ReversalDue(ErrorCode),
}

/// Settles a payment the network has answered: a success (or deemed success) is posted from
/// the UPI settlement account to the merchant; the others are declined with their code.
pub async fn settle(
    tx: &mut Batch<'_>,
    answered: &repo::Answered,
    now_ms: u64,
) -> Result<Settled, StoreError> {
    let npci_text = |code: &Option<String>| {
        let code = code.clone().unwrap_or_else(|| "?".into());
        format!("NPCI {code} ({})", upi::code_class(&code))
    };
    let npci = &answered.npci_code;
    let (code, message) = match answered.result.as_str() {
        "success" => (None, None),
        "deemed" => (
            None,
            Some("deemed successful by the UPI network".to_owned()),
        ),
        "failure" => (
            Some(ErrorCode::UpiDeclined),
            Some(format!("declined: {}", npci_text(npci))),
        ),
        "reversed" if answered.unpostable.is_some() => (
            answered.unpostable,
            Some(format!(
                "the merchant account could not take the payment ({}); the customer's debit \
                 was reversed through the UPI network",
                answered
                    .unpostable
                    .map(ErrorCode::as_str)
                    .unwrap_or_default()
            )),
        ),
        "reversed" => (
            Some(ErrorCode::UpiDeclined),
            Some(format!(
                "declined after the debit: {}; the debit was reversed",
                npci_text(npci)
            )),
        ),
        "timed_out" => (
            Some(ErrorCode::UpiTimedOut),
            Some(
                "no final answer after the status checks; the debit, if any, was reversed"
                    .to_owned(),
            ),
        ),
        _ => (
            Some(ErrorCode::UpiNotSent),
            Some(ErrorCode::UpiNotSent.description().to_owned()),
        ),
    };
    let tx_id = crate::store::new_tx_id();
    if code.is_none() {
        if let Some(refused) = post_success(tx, answered, &tx_id, now_ms).await? {
            return Ok(Settled::ReversalDue(refused));
        }
    }
    let alert = answered.unpostable.is_some();
    let payment_id = &answered.payment_id;
    Ok(Settled::Final(Box::new(Final {
        request: RequestRef {
            device: answered.device.clone(),
            key: answered.key.clone(),
            counter: answered.counter,
            body_sha256: answered.body_sha256.clone(),
        },
        answer: None,
        tx_id: code.is_none().then_some(tx_id),
        code,
        message: message.or_else(|| code.map(|c| c.description().to_owned())),
        amount: answered.amount,
        merchant: Some(answered.merchant.clone()),
        counterparty: Some(format!("upi {}", answered.merchant_vpa)),
        payer: Some(answered.payer_masked.clone()),
        stored_payer: None,
        audit: AuditFacts {
            account: answered.merchant.to_string(),
            wallet: None,
            merchant: Some(answered.merchant.clone()),
            detail: format!(
                "upi_{} idempotency_key {} payment {payment_id} payer {}{}",
                answered.result,
                answered.key,
                answered.payer_masked,
                npci.as_ref()
                    .map(|c| format!(" npci {c}"))
                    .unwrap_or_default()
            ),
            by_upi_switch: true,
        },
        upi: Some(paygate_core::receipt::UpiReference {
            txn_id: payment_id.clone(),
            rrn: answered.rrn.clone(),
        }),
        settles_upi_payment: Some(payment_id.clone()),
        alert,
    })))
}

/// Posts a UPI success to the merchant; returns the ledger's refusal if the merchant cannot
/// be credited after the network took the money (its debit is then reversed).
async fn post_success(
    tx: &mut Batch<'_>,
    answered: &repo::Answered,
    tx_id: &paygate_core::TxId,
    now_ms: u64,
) -> Result<Option<ErrorCode>, StoreError> {
    let unit = answered.amount.currency.code();
    let minor = answered.amount.minor_signed();
    let settlement = AccountId::parse(&format!("upi-settlement-{}", unit.to_lowercase()))
        .map_err(|e| StoreError::Invariant(format!("settlement account: {e}")))?;
    let account = ledger::NewAccount {
        account_id: settlement.clone(),
        kind: AccountKind::Settlement,
        unit: unit.to_owned(),
        kyc_tier: None,
        category: None,
        owner: None,
    };
    // in a savepoint: a refusal leaves nothing behind (not even the settlement account)
    let mut attempt = sqlx::Acquire::begin(&mut **tx).await?;
    ledger::open_account(&mut attempt, &account, now_ms).await?;
    let posted = ledger::post(
        &mut attempt,
        &ledger::NewTransfer {
            tx_id,
            kind: "upi_payment",
            origin: Some((&answered.device, &answered.key)),
            related: None,
            legs: vec![
                Leg::debit(&settlement, AccountKind::Settlement, unit, minor),
                Leg::credit(&answered.merchant, AccountKind::Merchant, unit, minor),
            ],
            now_ms,
        },
    )
    .await;
    match posted {
        Ok(()) => {
            attempt.commit().await?;
            Ok(None)
        }
        Err(StoreError::Refused(refused)) => {
            attempt.rollback().await?;
            tracing::error!(payment_id = %answered.payment_id, code = %refused, "UPI success not postable; reversing the debit");
            Ok(Some(refused))
        }
        Err(other) => Err(other),
    }
}
