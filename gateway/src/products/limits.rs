//! The limits every wallet debit passes, wherever it can be approved (a direct payment, a
//! payment completed by a step-up answer, P2P, cash-out): the KYC tier's rules, per
//! transaction, per day and per month, read from the ledger's per-day counters (a bounded
//! read whatever the wallet's history).

use crate::config::{TierLimits, WalletSettings};
use crate::ledger::{self, Account, AccountKind, KycTier};
use crate::store::{Batch, StoreError};
use paygate_core::{AccountId, ErrorCode, Money};

/// Transfer kinds that debit a wallet and count against its limits.
pub const WALLET_DEBITS: [&str; 3] = ["merchant_payment", "p2p", "cash_out"];

/// An active wallet's account (`None` for a missing, closed or non-wallet account).
pub async fn wallet(batch: &mut Batch<'_>, id: &AccountId) -> Result<Option<Account>, StoreError> {
    Ok(ledger::account(batch, id)
        .await?
        .filter(|a| a.active && a.kind == AccountKind::Wallet))
}

pub fn tier_of(account: &Account) -> KycTier {
    account.kyc_tier.unwrap_or(KycTier::Min)
}

/// An amount as a person reads it: `10000.00 INR`.
pub fn show(minor: i64, currency: &str) -> String {
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
                width = usize::try_from(digits).unwrap_or(2)
            )
        }
        None => format!("{minor} {currency}"),
    }
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
    let spent = ledger::debits_in_days(batch, &account.account_id, &WALLET_DEBITS, now_ms).await?;
    let withdrawn = if kind == "cash_out" {
        ledger::debits_in_days(batch, &account.account_id, &["cash_out"], now_ms).await?
    } else {
        ledger::DebitTotals::default()
    };
    Ok(debit_refusal(
        settings,
        account,
        kind,
        amount,
        &Spent { spent, withdrawn },
    ))
}

/// What a wallet has debited, as the limits read it: all wallet debits ([`WALLET_DEBITS`])
/// and, for a cash-out, its cash-outs, today and this month.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub spent: ledger::DebitTotals,
    pub withdrawn: ledger::DebitTotals,
}

/// The KYC limits of [`check_debit`] over figures already read: the one place they are
/// decided, whether a request is decided alone or with its batch.
pub fn debit_refusal(
    settings: &WalletSettings,
    account: &Account,
    kind: &str,
    amount: Money,
    figures: &Spent,
) -> Option<(ErrorCode, String)> {
    let tier = tier_of(account);
    let limits: &TierLimits = settings.tier(tier);
    let minor = amount.minor_signed();
    let unit = amount.currency.code();
    let limit = |what: String| Some((ErrorCode::LimitExceeded, what));
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
    let spent = figures.spent;
    if spent.today_minor.saturating_add(minor) > limits.daily_debit_max_minor {
        return limit(format!(
            "daily limit of a {tier_name} wallet is {}; {} already spent today",
            show(limits.daily_debit_max_minor, unit),
            show(spent.today_minor, unit)
        ));
    }
    if spent.this_month_minor.saturating_add(minor) > limits.monthly_debit_max_minor {
        return limit(format!(
            "monthly limit of a {tier_name} wallet is {}; {} already spent this month",
            show(limits.monthly_debit_max_minor, unit),
            show(spent.this_month_minor, unit)
        ));
    }
    let withdrawn = figures.withdrawn;
    if kind == "cash_out"
        && withdrawn.this_month_minor.saturating_add(minor) > limits.cash_out_monthly_max_minor
    {
        return limit(format!(
            "monthly cash-out limit of a {tier_name} wallet is {}; {} already withdrawn",
            show(limits.cash_out_monthly_max_minor, unit),
            show(withdrawn.this_month_minor, unit)
        ));
    }
    None
}

/// The KYC load limit on crediting `minor` to a wallet by a load ([`ledger::LOADS`]): the
/// month's loads may not pass the tier's `monthly_load_max_minor`. `None` when it passes. The
/// balance cap is the ledger's own check on the credit leg.
pub async fn check_load(
    batch: &mut Batch<'_>,
    settings: &WalletSettings,
    account: &Account,
    minor: i64,
    unit: &str,
    now_ms: u64,
) -> Result<Option<(ErrorCode, String)>, StoreError> {
    ledger::lock_account(batch, &account.account_id).await?;
    let tier = tier_of(account);
    let limit = settings.tier(tier).monthly_load_max_minor;
    let loaded = ledger::loads_in_days(batch, &account.account_id, now_ms).await?;
    if loaded.this_month_minor.saturating_add(minor) > limit {
        let tier_name = match tier {
            KycTier::Min => "minimum-KYC",
            KycTier::Full => "full-KYC",
        };
        return Ok(Some((
            ErrorCode::LimitExceeded,
            format!(
                "monthly load limit of a {tier_name} wallet is {}; {} already loaded this month",
                show(limit, unit),
                show(loaded.this_month_minor, unit)
            ),
        )));
    }
    Ok(None)
}

/// The balance cap of a wallet's tier.
pub fn balance_cap(settings: &WalletSettings, account: &Account) -> i64 {
    settings.tier(tier_of(account)).balance_max_minor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_money() {
        assert_eq!(show(1_000_000, "INR"), "10000.00 INR");
        assert_eq!(show(5, "INR"), "0.05 INR");
        assert_eq!(show(7, "JPY"), "7 JPY");
    }
}
