//! The wallet products on the ledger: P2P transfers, cash-in and cash-out at an agent, refunds
//! of merchant payments, and the KYC limits every wallet debit and credit passes.
//!
//! Each function runs inside the pipeline's batch and either posts one transfer or declines
//! with a stable code and a reason a person can read; a decline writes nothing to the ledger.

use crate::config::{TierLimits, WalletSettings};
use crate::ledger::{self, Account, AccountKind, KycTier, Leg, NewTransfer};
use crate::store::{Batch, StoreError};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, Money, TxId};
use sqlx::Row;

/// Transfer kinds that debit a wallet and count against its limits.
pub const WALLET_DEBITS: [&str; 3] = ["merchant_payment", "p2p", "cash_out"];

/// What a product request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Posted {
        tx_id: TxId,
        /// Who the money went to or came from, for the receipt (`wallet w-2`, `agent a-1`).
        counterparty: String,
    },
    Declined {
        code: ErrorCode,
        reason: String,
    },
}

fn declined(code: ErrorCode, reason: impl Into<String>) -> Result<Decided, StoreError> {
    Ok(Decided::Declined {
        code,
        reason: reason.into(),
    })
}

/// The request that causes a transfer.
pub struct Origin<'a> {
    pub device: &'a DeviceId,
    pub key: &'a IdempotencyKey,
    pub now_ms: u64,
}

/// A wallet's account, or the decline for a missing one.
async fn wallet(batch: &mut Batch<'_>, id: &AccountId) -> Result<Option<Account>, StoreError> {
    Ok(ledger::account(batch, id)
        .await?
        .filter(|a| a.active && a.kind == AccountKind::Wallet))
}

fn tier_of(account: &Account) -> KycTier {
    account.kyc_tier.unwrap_or(KycTier::Min)
}

fn show(minor: i64, currency: &str) -> String {
    match paygate_core::Currency::parse(currency) {
        Some(c) => {
            let digits = c.minor_unit_digits();
            if digits == 0 {
                return format!("{minor} {currency}");
            }
            let scale = 10_i64.pow(digits);
            format!(
                "{}.{:0width$} {currency}",
                minor / scale,
                minor % scale,
                width = digits as usize
            )
        }
        None => format!("{minor} {currency}"),
    }
}

/// The start of the local day and of the local calendar month containing `now_ms`, in ms
/// since the epoch, for a zone `offset_minutes` east of UTC.
pub fn day_and_month_start(now_ms: u64, offset_minutes: i32) -> (u64, u64) {
    const DAY: i64 = 86_400_000;
    let offset = i64::from(offset_minutes) * 60_000;
    let local = i64::try_from(now_ms).unwrap_or(i64::MAX) + offset;
    let days = local.div_euclid(DAY);
    let day_start = days * DAY - offset;
    let (_, _, day) = civil_from_days(days);
    let month_start = (days - i64::from(day) + 1) * DAY - offset;
    let clamp = |v: i64| u64::try_from(v).unwrap_or(0);
    (clamp(day_start), clamp(month_start))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// civil_from_days algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The KYC limits on a wallet debit of `kind` (`merchant_payment`, `p2p`, `cash_out`):
/// whether the tier allows it, per transaction, per day and per month. `None` when it passes.
/// Takes the wallet's row lock first so the day and month totals cannot race another
/// transaction for the same wallet.
pub async fn check_debit(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    account: &Account,
    kind: &str,
    amount: Money,
    now_ms: u64,
) -> Result<Option<(ErrorCode, String)>, StoreError> {
    ledger::lock_account(batch, &account.account_id).await?;
    let tier = tier_of(account);
    let limits: &TierLimits = settings.tier(tier);
    let minor = amount.minor_signed();
    let unit = amount.currency.code();
    let limit = |what: String| Ok(Some((ErrorCode::LimitExceeded, what)));
    let tier_name = match tier {
        KycTier::Min => "minimum-KYC",
        KycTier::Full => "full-KYC",
    };
    if kind == "p2p" && !limits.p2p_allowed {
        return limit(format!("a {tier_name} wallet cannot send P2P transfers"));
    }
    if kind == "cash_out" && !limits.cash_out_allowed {
        return limit(format!("a {tier_name} wallet cannot withdraw cash"));
    }
    if minor > limits.per_transaction_max_minor {
        return limit(format!(
            "per-transaction limit of a {tier_name} wallet is {}",
            show(limits.per_transaction_max_minor, unit)
        ));
    }
    if kind == "cash_out" && minor > limits.cash_out_per_transaction_max_minor {
        return limit(format!(
            "cash-out limit per transaction of a {tier_name} wallet is {}",
            show(limits.cash_out_per_transaction_max_minor, unit)
        ));
    }
    let (day_start, month_start) = day_and_month_start(now_ms, settings.limits_utc_offset_minutes);
    let today =
        ledger::debited_since(batch, &account.account_id, &WALLET_DEBITS, day_start).await?;
    if today.saturating_add(minor) > limits.daily_debit_max_minor {
        return limit(format!(
            "daily limit of a {tier_name} wallet is {}; {} already spent today",
            show(limits.daily_debit_max_minor, unit),
            show(today, unit)
        ));
    }
    let month =
        ledger::debited_since(batch, &account.account_id, &WALLET_DEBITS, month_start).await?;
    if month.saturating_add(minor) > limits.monthly_debit_max_minor {
        return limit(format!(
            "monthly limit of a {tier_name} wallet is {}; {} already spent this month",
            show(limits.monthly_debit_max_minor, unit),
            show(month, unit)
        ));
    }
    if kind == "cash_out" {
        let withdrawn =
            ledger::debited_since(batch, &account.account_id, &["cash_out"], month_start).await?;
        if withdrawn.saturating_add(minor) > limits.cash_out_monthly_max_minor {
            return limit(format!(
                "monthly cash-out limit of a {tier_name} wallet is {}; {} already withdrawn",
                show(limits.cash_out_monthly_max_minor, unit),
                show(withdrawn, unit)
            ));
        }
    }
    Ok(None)
}

/// Posts `legs`, turning the ledger's refusals into declines with reasons.
async fn post(
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

/// P2P: the device's wallet pays another wallet.
pub async fn p2p(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    origin: &Origin<'_>,
    payer: &AccountId,
    payee: Option<&AccountId>,
    amount: Money,
) -> Result<Decided, StoreError> {
    let Some(from) = wallet(batch, payer).await? else {
        return declined(
            ErrorCode::OperationNotAllowed,
            "only a wallet's device can send a P2P transfer",
        );
    };
    let Some(payee) = payee else {
        return declined(ErrorCode::UnknownWallet, "no wallet has this phone or VPA");
    };
    let Some(to) = wallet(batch, payee).await? else {
        return declined(
            ErrorCode::UnknownWallet,
            format!("no active wallet {payee}"),
        );
    };
    if from.account_id == to.account_id {
        return declined(ErrorCode::TransferToSelf, "a wallet cannot pay itself");
    }
    if let Some((code, reason)) =
        check_debit(batch, settings, &from, "p2p", amount, origin.now_ms).await?
    {
        return declined(code, reason);
    }
    let unit = amount.currency.code();
    let minor = amount.minor_signed();
    let cap = settings.tier(tier_of(&to)).balance_max_minor;
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
        || cap_text(settings, &to, unit),
    )
    .await
}

/// Cash-in: the agent's terminal sells e-money; its float pays the customer's wallet.
pub async fn cash_in(
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
pub async fn cash_out(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    origin: &Origin<'_>,
    payer: &AccountId,
    agent: &AccountId,
    amount: Money,
) -> Result<Decided, StoreError> {
    let Some(from) = wallet(batch, payer).await? else {
        return declined(
            ErrorCode::OperationNotAllowed,
            "only a wallet's device can withdraw cash",
        );
    };
    let is_agent = ledger::account(batch, agent)
        .await?
        .is_some_and(|a| a.active && a.kind == AccountKind::Agent);
    if !is_agent {
        return declined(
            ErrorCode::UnknownMerchant,
            format!("no active agent {agent}"),
        );
    }
    if let Some((code, reason)) =
        check_debit(batch, settings, &from, "cash_out", amount, origin.now_ms).await?
    {
        return declined(code, reason);
    }
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

/// Refund: the merchant's terminal gives back all or part of one of its payments to the
/// wallet that paid; refunds of one payment never add up to more than it.
pub async fn refund(
    batch: &mut Batch<'_>,
    origin: &Origin<'_>,
    merchant: &AccountId,
    original: &TxId,
    amount: Money,
) -> Result<Decided, StoreError> {
    let is_merchant = ledger::account(batch, merchant)
        .await?
        .is_some_and(|a| a.active && a.kind == AccountKind::Merchant);
    if !is_merchant {
        return declined(
            ErrorCode::OperationNotAllowed,
            "only a merchant's terminal can refund",
        );
    }
    // lock the original on PostgreSQL, so two refunds of it are decided one after the other
    let lock = if batch.backend_name() == "PostgreSQL" {
        "SELECT kind, currency FROM transfers WHERE tx_id = $1 FOR UPDATE"
    } else {
        "SELECT kind, currency FROM transfers WHERE tx_id = $1"
    };
    let row = sqlx::query(lock)
        .bind(original.as_str())
        .fetch_optional(&mut **batch)
        .await?;
    let unknown = || {
        declined(
            ErrorCode::OriginalUnknown,
            format!("{original} is not a payment to {merchant}"),
        )
    };
    let Some(row) = row else { return unknown() };
    let kind: String = row.try_get("kind")?;
    let currency: String = row.try_get("currency")?;
    if kind != "merchant_payment" {
        return unknown();
    }
    let legs = sqlx::query("SELECT account_id, amount_minor FROM postings WHERE tx_id = $1")
        .bind(original.as_str())
        .fetch_all(&mut **batch)
        .await?;
    // the refundable amount is what the wallet paid in money (points tendered stay spent)
    let mut to_merchant = false;
    let mut paid: Option<i64> = None;
    let mut customer: Option<String> = None;
    for leg in legs {
        let account: String = leg.try_get("account_id")?;
        let minor: i64 = leg.try_get("amount_minor")?;
        if account == merchant.as_str() && minor > 0 {
            to_merchant = true;
        } else if minor < 0 {
            let id = AccountId::parse(&account)
                .map_err(|e| StoreError::Invariant(format!("posting account {account}: {e}")))?;
            let is_wallet = ledger::account(batch, &id)
                .await?
                .is_some_and(|a| a.kind == AccountKind::Wallet);
            if is_wallet {
                paid = Some(minor.saturating_neg());
                customer = Some(account);
            }
        }
    }
    if !to_merchant {
        return unknown();
    }
    let (Some(paid), Some(customer)) = (paid, customer) else {
        return unknown();
    };
    if currency != amount.currency.code() {
        return declined(
            ErrorCode::CurrencyMismatch,
            format!("the payment was in {currency}"),
        );
    }
    let earlier = sqlx::query(
        "SELECT amount_minor FROM transfers WHERE related_tx_id = $1 AND kind = 'refund'",
    )
    .bind(original.as_str())
    .fetch_all(&mut **batch)
    .await?;
    let mut refunded: i64 = 0;
    for row in earlier {
        refunded = refunded.saturating_add(row.try_get::<i64, _>("amount_minor")?);
    }
    let minor = amount.minor_signed();
    if refunded.saturating_add(minor) > paid {
        return declined(
            ErrorCode::RefundExceedsOriginal,
            format!(
                "the payment was {}, of which {} is refunded already",
                show(paid, &currency),
                show(refunded, &currency)
            ),
        );
    }
    let customer = AccountId::parse(&customer)
        .map_err(|e| StoreError::Invariant(format!("posting account {customer}: {e}")))?;
    let decided = post(
        batch,
        origin,
        "refund",
        Some(original),
        vec![
            Leg::debit(merchant, AccountKind::Merchant, &currency, minor),
            Leg::credit(&customer, AccountKind::Wallet, &currency, minor),
        ],
        format!("wallet {customer}"),
        String::new,
    )
    .await?;
    if let Decided::Posted { tx_id, .. } = &decided {
        let (clawed, shortfall) = crate::rewards::clawback(
            batch,
            original,
            tx_id,
            refunded.saturating_add(minor),
            paid,
            origin.now_ms,
        )
        .await?;
        if clawed > 0 || shortfall > 0 {
            tracing::info!(%original, clawed, shortfall, "points clawed back for a refund");
        }
    }
    Ok(decided)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_days_and_months_start_at_local_midnight() {
        // 2026-11-23 20:00 UTC is 2026-11-24 01:30 in India (+05:30)
        let now = 1_795_464_000_000;
        let (day, month) = day_and_month_start(now, 330);
        // 2026-11-24 00:00 IST = 2026-11-23 18:30 UTC
        assert_eq!(day, 1_795_458_600_000);
        // 2026-11-01 00:00 IST = 2026-10-31 18:30 UTC
        assert_eq!(month, 1_793_471_400_000);
        // in UTC the same moment is still the 23rd
        let (day, month) = day_and_month_start(now, 0);
        assert_eq!(day, 1_795_392_000_000);
        assert_eq!(month, 1_793_491_200_000);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn amounts_read_as_money() {
        assert_eq!(show(1_000_000, "INR"), "10000.00 INR");
        assert_eq!(show(5, "INR"), "0.05 INR");
        assert_eq!(show(7, "JPY"), "7 JPY");
    }
}
