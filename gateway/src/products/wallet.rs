//! The wallet products: P2P transfers, and cash-in and cash-out at an agent. Each posts one
//! transfer or declines with a stable code and a reason a person can read; a decline writes
//! nothing to the ledger.

use super::limits::{check_debit, show, tier_of, wallet};
use super::merchant_payment::{risk_gate, HeldPayment};
use super::{
    declined, AuditFacts, Decided, Decision, Final, HeldKind, Origin, Prepared, RequestRef, Rules,
};
use crate::config::WalletSettings;
use crate::ledger::{self, Account, AccountKind, Leg, NewTransfer};
use crate::store::{Batch, StoreError};
use paygate_core::request::Operation;
use paygate_core::{AccountId, ErrorCode, Money, TxId};

/// P2P, cash-in, cash-out and refund requests: decided, then described for the record.
pub async fn decide(
    tx: &mut Batch<'_>,
    rules: &Rules,
    item: &Prepared,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    let request = &item.request;
    let origin = Origin {
        device: &request.device_id,
        key: &request.idempotency_key,
        now_ms,
    };
    let account = &item.wallet;
    let settings = &rules.wallet;
    let party = item.party.as_ref();
    let (kind, amount, decided) = match &request.operation {
        Operation::P2pTransfer { amount, .. } => {
            let decided = match p2p_checks(tx, settings, &origin, account, party, *amount).await? {
                Err(declined) => declined,
                Ok((from, to)) => {
                    let held = held(item, HeldKind::P2p, &to.account_id, *amount);
                    if let Some(decision) = risk_gate(tx, rules, &held, now_ms).await? {
                        return Ok(decision);
                    }
                    p2p_post(tx, settings, &origin, &from, &to, *amount).await?
                }
            };
            ("p2p", *amount, decided)
        }
        Operation::CashIn { amount, .. } => (
            "cash_in",
            *amount,
            cash_in(tx, settings, &origin, account, party, *amount).await?,
        ),
        Operation::CashOut { agent_id, amount } => {
            let checked =
                cash_out_checks(tx, settings, &origin, account, agent_id, *amount).await?;
            let decided = match checked {
                Err(declined) => declined,
                Ok(from) => {
                    let held = held(item, HeldKind::CashOut, agent_id, *amount);
                    if let Some(decision) = risk_gate(tx, rules, &held, now_ms).await? {
                        return Ok(decision);
                    }
                    cash_out_post(tx, &origin, &from, agent_id, *amount).await?
                }
            };
            ("cash_out", *amount, decided)
        }
        Operation::Refund { tx_id, amount } => (
            "refund",
            *amount,
            super::refund::refund(tx, rules, &origin, account, tx_id, *amount).await?,
        ),
        _ => {
            return Err(StoreError::Invariant(
                "a wallet product handler got another operation".into(),
            ))
        }
    };
    Ok(Decision::final_(described(item, kind, amount, decided)))
}

/// A P2P transfer or cash-out as the risk rules and a challenge hold it.
fn held(item: &Prepared, kind: HeldKind, payee: &AccountId, amount: Money) -> HeldPayment {
    HeldPayment {
        request: RequestRef::of(item),
        wallet: item.wallet.clone(),
        merchant: payee.clone(),
        amount,
        payer: None,
        decline_reason: None,
        points: 0,
        kind,
    }
}

/// A held P2P transfer or cash-out decided on its challenge: declined with `decline`, or
/// checked again (limits may have moved while it waited) and posted.
pub async fn post_held_transfer(
    tx: &mut Batch<'_>,
    rules: &Rules,
    payment: &HeldPayment,
    answer: Option<&RequestRef>,
    decline: Option<ErrorCode>,
    now_ms: u64,
) -> Result<Final, StoreError> {
    let settings = &rules.wallet;
    let origin = Origin {
        device: &payment.request.device,
        key: &payment.request.key,
        now_ms,
    };
    let (from, payee, amount) = (&payment.wallet, &payment.merchant, payment.amount);
    let decided = match (decline, payment.kind) {
        (Some(code), _) => Decided::Declined {
            code,
            reason: payment
                .decline_reason
                .clone()
                .unwrap_or_else(|| code.description().to_owned()),
        },
        (None, HeldKind::P2p) => {
            match p2p_checks(tx, settings, &origin, from, Some(payee), amount).await? {
                Err(declined) => declined,
                Ok((from, to)) => p2p_post(tx, settings, &origin, &from, &to, amount).await?,
            }
        }
        (None, _) => match cash_out_checks(tx, settings, &origin, from, payee, amount).await? {
            Err(declined) => declined,
            Ok(from) => cash_out_post(tx, &origin, &from, payee, amount).await?,
        },
    };
    let mut decided = described_for(
        payment.request.clone(),
        from,
        payment.kind.as_str(),
        amount,
        decided,
    );
    decided.answer = answer.cloned();
    Ok(decided)
}

/// A wallet product's outcome as the record stage needs it.
fn described(item: &Prepared, kind: &str, amount: Money, decided: Decided) -> Final {
    described_for(RequestRef::of(item), &item.wallet, kind, amount, decided)
}

fn described_for(
    request: RequestRef,
    wallet: &AccountId,
    kind: &str,
    amount: Money,
    decided: Decided,
) -> Final {
    let (tx_id, counterparty, code, message) = match decided {
        Decided::Posted {
            tx_id,
            counterparty,
        } => (Some(tx_id), Some(counterparty), None, None),
        Decided::Declined { code, reason } => (None, None, Some(code), Some(reason)),
    };
    let mut detail = format!("{kind} idempotency_key {}", request.key);
    if let Some(counterparty) = &counterparty {
        detail.push_str(&format!(" counterparty {counterparty}"));
    }
    if let Some(message) = &message {
        detail.push_str(&format!(" reason {message}"));
    }
    Final {
        request,
        answer: None,
        tx_id,
        code,
        message,
        amount,
        merchant: None,
        counterparty,
        payer: None,
        stored_payer: None,
        audit: AuditFacts {
            account: wallet.to_string(),
            wallet: Some(wallet.clone()),
            merchant: None,
            detail,
            by_upi_switch: false,
        },
        upi: None,
        settles_upi_payment: None,
        alert: false,
    }
}

/// Posts `legs`, turning the ledger's refusals into declines with reasons.
pub(super) async fn post(
    batch: &mut Batch<'_>,
    origin: &Origin<'_>,
    kind: &str,
    related: Option<&TxId>,
    legs: Vec<Leg>,
    counterparty: String,
    cap_reason: impl FnOnce() -> String,
) -> Result<Decided, StoreError> {
    let tx_id = crate::store::new_tx_id();
    let posted = ledger::post(
        batch,
        &NewTransfer {
            tx_id: &tx_id,
            kind,
            origin: Some((origin.device, origin.key)),
            related,
            legs,
            now_ms: origin.now_ms,
        },
    )
    .await;
    match posted {
        Ok(()) => Ok(Decided::Posted {
            tx_id,
            counterparty,
        }),
        Err(StoreError::Refused(ErrorCode::LimitExceeded)) => {
            declined(ErrorCode::LimitExceeded, cap_reason())
        }
        Err(StoreError::Refused(code)) => declined(code, code.description()),
        Err(other) => Err(other),
    }
}

fn cap_text(settings: &WalletSettings, account: &Account, unit: &str) -> String {
    format!(
        "the receiving wallet's balance would exceed its KYC cap of {}",
        show(settings.tier(tier_of(account)).balance_max_minor, unit)
    )
}

/// What a product's checks found: what to post, or the decline.
type Checked<T> = Result<T, Decided>;

fn refuse<T>(decided: Result<Decided, StoreError>) -> Result<Checked<T>, StoreError> {
    decided.map(Err)
}

/// P2P: the device's wallet pays another wallet. First the checks (who may send, to whom,
/// the KYC debit limits), then the risk rules (the caller's), then [`p2p_post`].
async fn p2p_checks(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    origin: &Origin<'_>,
    payer: &AccountId,
    payee: Option<&AccountId>,
    amount: Money,
) -> Result<Checked<(Account, Account)>, StoreError> {
    let Some(from) = wallet(batch, payer).await? else {
        return refuse(declined(
            ErrorCode::OperationNotAllowed,
            "only a wallet's device can send a P2P transfer",
        ));
    };
    let Some(payee) = payee else {
        return refuse(declined(
            ErrorCode::UnknownWallet,
            "no wallet has this phone or VPA",
        ));
    };
    let Some(to) = wallet(batch, payee).await? else {
        return refuse(declined(
            ErrorCode::UnknownWallet,
            format!("no active wallet {payee}"),
        ));
    };
    if from.account_id == to.account_id {
        return refuse(declined(
            ErrorCode::TransferToSelf,
            "a wallet cannot pay itself",
        ));
    }
    if let Some((code, reason)) =
        check_debit(batch, settings, &from, "p2p", amount, origin.now_ms).await?
    {
        return refuse(declined(code, reason));
    }
    Ok(Ok((from, to)))
}

async fn p2p_post(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    origin: &Origin<'_>,
    from: &Account,
    to: &Account,
    amount: Money,
) -> Result<Decided, StoreError> {
    let unit = amount.currency.code();
    let minor = amount.minor_signed();
    let cap = settings.tier(tier_of(to)).balance_max_minor;
    post(
        batch,
        origin,
        "p2p",
        None,
        vec![
            Leg::debit(&from.account_id, AccountKind::Wallet, unit, minor),
            Leg::credit(&to.account_id, AccountKind::Wallet, unit, minor).capped(Some(cap)),
        ],
        format!("wallet {}", to.account_id),
        || cap_text(settings, to, unit),
    )
    .await
}

/// Cash-in: the agent's terminal sells e-money; its float pays the customer's wallet.
async fn cash_in(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    origin: &Origin<'_>,
    agent: &AccountId,
    customer: Option<&AccountId>,
    amount: Money,
) -> Result<Decided, StoreError> {
    let is_agent = ledger::account(batch, agent)
        .await?
        .is_some_and(|a| a.active && a.kind == AccountKind::Agent);
    if !is_agent {
        return declined(
            ErrorCode::OperationNotAllowed,
            "only an agent's terminal can take cash in",
        );
    }
    let Some(customer) = customer else {
        return declined(ErrorCode::UnknownWallet, "no wallet has this phone or VPA");
    };
    let Some(to) = wallet(batch, customer).await? else {
        return declined(
            ErrorCode::UnknownWallet,
            format!("no active wallet {customer}"),
        );
    };
    let unit = amount.currency.code();
    let minor = amount.minor_signed();
    if let Some((code, reason)) =
        super::limits::check_load(batch, settings, &to, minor, unit, origin.now_ms).await?
    {
        return declined(code, reason);
    }
    let cap = settings.tier(tier_of(&to)).balance_max_minor;
    let decided = post(
        batch,
        origin,
        "cash_in",
        None,
        vec![
            Leg::debit(agent, AccountKind::Agent, unit, minor),
            Leg::credit(&to.account_id, AccountKind::Wallet, unit, minor).capped(Some(cap)),
        ],
        format!("wallet {}", to.account_id),
        || cap_text(settings, &to, unit),
    )
    .await?;
    Ok(match decided {
        Decided::Declined {
            code: ErrorCode::InsufficientFunds,
            ..
        } => Decided::Declined {
            code: ErrorCode::InsufficientFunds,
            reason: "the agent's float does not cover the amount".into(),
        },
        other => other,
    })
}

/// Cash-out: the customer's device pays an agent's float; the agent hands over the cash.
/// The checks, then the risk rules (the caller's), then [`cash_out_post`].
async fn cash_out_checks(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    origin: &Origin<'_>,
    payer: &AccountId,
    agent: &AccountId,
    amount: Money,
) -> Result<Checked<Account>, StoreError> {
    let Some(from) = wallet(batch, payer).await? else {
        return refuse(declined(
            ErrorCode::OperationNotAllowed,
            "only a wallet's device can withdraw cash",
        ));
    };
    let is_agent = ledger::account(batch, agent)
        .await?
        .is_some_and(|a| a.active && a.kind == AccountKind::Agent);
    if !is_agent {
        return refuse(declined(
            ErrorCode::UnknownMerchant,
            format!("no active agent {agent}"),
        ));
    }
    if let Some((code, reason)) =
        check_debit(batch, settings, &from, "cash_out", amount, origin.now_ms).await?
    {
        return refuse(declined(code, reason));
    }
    Ok(Ok(from))
}

async fn cash_out_post(
    batch: &mut Batch<'_>,
    origin: &Origin<'_>,
    from: &Account,
    agent: &AccountId,
    amount: Money,
) -> Result<Decided, StoreError> {
    let unit = amount.currency.code();
    let minor = amount.minor_signed();
    post(
        batch,
        origin,
        "cash_out",
        None,
        vec![
            Leg::debit(&from.account_id, AccountKind::Wallet, unit, minor),
            Leg::credit(agent, AccountKind::Agent, unit, minor),
        ],
        format!("agent {agent}"),
        String::new,
    )
    .await
}

/// Funds a wallet from the issuance account: the operator's load (development and the demo;
/// terminals load wallets by cash-in). A load like cash-in: the wallet's KYC balance cap and
/// monthly load limit apply, refused `LIMIT_EXCEEDED` with nothing posted.
pub async fn fund(
    store: &crate::store::Store,
    limits: &WalletSettings,
    wallet_id: &AccountId,
    amount: Money,
    now_ms: u64,
) -> Result<TxId, StoreError> {
    let mut batch = store.begin_batch().await?;
    let tx_id = fund_in(&mut batch, limits, wallet_id, amount, now_ms).await?;
    batch.commit().await?;
    Ok(tx_id)
}

/// [`fund`] inside a transaction the caller commits (with its audit events).
pub async fn fund_in(
    batch: &mut Batch<'_>,
    limits: &WalletSettings,
    wallet_id: &AccountId,
    amount: Money,
    now_ms: u64,
) -> Result<TxId, StoreError> {
    let issuance = AccountId::parse(&format!(
        "issuance-{}",
        amount.currency.code().to_lowercase()
    ))
    .map_err(|e| StoreError::Invariant(e.to_string()))?;
    let unit = amount.currency.code();
    ledger::open_account(
        batch,
        &ledger::NewAccount {
            account_id: issuance.clone(),
            kind: AccountKind::Issuance,
            unit: unit.to_owned(),
            kyc_tier: None,
            category: None,
            owner: None,
        },
        now_ms,
    )
    .await?;
    let minor = amount.minor_signed();
    let account = wallet(batch, wallet_id)
        .await?
        .ok_or(StoreError::Refused(ErrorCode::UnknownWallet))?;
    if let Some((code, _)) =
        super::limits::check_load(batch, limits, &account, minor, unit, now_ms).await?
    {
        return Err(StoreError::Refused(code));
    }
    let tx_id = crate::store::new_tx_id();
    ledger::post(
        batch,
        &NewTransfer {
            tx_id: &tx_id,
            kind: "funding",
            origin: None,
            related: None,
            legs: vec![
                Leg::debit(&issuance, AccountKind::Issuance, unit, minor),
                Leg::credit(wallet_id, AccountKind::Wallet, unit, minor)
                    .capped(Some(super::limits::balance_cap(limits, &account))),
            ],
            now_ms,
        },
    )
    .await?;
    Ok(tx_id)
}
