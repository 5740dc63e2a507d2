//! Refunds: the merchant's terminal gives back all or part of one of its payments, to where
//! the payment came from: the money to the customer's wallet (up to its KYC balance cap; the
//! rest is owed back to the customer's source of funds), the points tendered to the
//! customer's points, and the points the payment earned clawed back.

use super::limits::{balance_cap, show, wallet};
use super::wallet::post;
use super::{declined, Decided, Origin, Rules};
use crate::config::ClawbackShortfall;
use crate::ledger::{self, AccountKind, Leg, POINTS};
use crate::rewards::{self, ClawbackPlan};
use crate::store::{Batch, StoreError};
use paygate_core::{AccountId, ErrorCode, Money, TxId};
use sqlx::Row;

/// Refund: the merchant's terminal gives back all or part of one of its payments; refunds of
/// one payment never add up to more than it.
pub async fn refund(
    batch: &mut Batch<'_>,
    rules: &Rules,
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
    if let Some(upi) = upi_original(batch, merchant, original).await? {
        return upi_refund(batch, origin, merchant, original, upi, amount).await;
    }
    let Some(payment) = original_payment(batch, merchant, original).await? else {
        return declined(
            ErrorCode::OriginalUnknown,
            format!("{original} is not a payment to {merchant}"),
        );
    };
    if let Some((code, reason)) = payment.refusal(amount) {
        return declined(code, reason);
    }
    let currency = payment.currency.clone();
    let minor = amount.minor_signed();
    let Some(customer) = wallet(batch, &payment.customer).await? else {
        return declined(
            ErrorCode::UnknownWallet,
            format!("the paying wallet {} is closed", payment.customer),
        );
    };
    // the wallet's lock first: the clawback plan reads its lots, which a payment of the same
    // wallet in another transaction may be spending
    ledger::lock_account(batch, &customer.account_id).await?;
    let split = payment.split(minor);
    let refunded_total = payment.refunded.saturating_add(minor);
    let plan = rewards::clawback_plan(
        batch,
        original,
        refunded_total,
        payment.total,
        split.points,
        origin.now_ms,
    )
    .await?;
    let (kept_back, owed) = shortfall_terms(rules, plan.as_ref(), split.money);

    // the money the wallet may take under its cap; the rest is owed to the customer's source
    let balance = ledger::balance(batch, &customer.account_id)
        .await?
        .unwrap_or(0);
    let room = balance_cap(&rules.wallet, &customer)
        .saturating_sub(balance)
        .max(0);
    let shares = Shares::of(split, kept_back.1, room);
    if shares.to_source > 0 {
        ensure_payable(batch, &currency, origin.now_ms).await?;
    }
    let (legs, counterparty) =
        refund_legs(merchant, &customer.account_id, &currency, minor, &shares)?;
    let decided = post(
        batch,
        origin,
        "refund",
        Some(original),
        legs,
        counterparty,
        String::new,
    )
    .await?;
    if let Decided::Posted { tx_id, .. } = &decided {
        let points = PointsSettlement {
            customer: &customer.account_id,
            original,
            refund: tx_id,
            returned: split.points,
            plan: plan.as_ref(),
            owed,
            kept_back: kept_back.0,
        };
        settle_points(batch, rules, &points, origin.now_ms).await?;
    }
    Ok(decided)
}

/// Where a refund's money goes: `money` minus what is kept back for a clawback shortfall, to
/// the wallet up to its cap and the rest owed to the customer's source; the value of the
/// points tendered (and of any kept back) to rewards funding.
struct Shares {
    points: i64,
    to_wallet: i64,
    to_source: i64,
    to_funding: i64,
}

impl Shares {
    fn of(split: Split, kept_back_minor: i64, room: i64) -> Shares {
        let to_customer = split.money - kept_back_minor;
        let to_wallet = to_customer.min(room);
        Shares {
            points: split.points,
            to_wallet,
            to_source: to_customer - to_wallet,
            to_funding: split.value.saturating_add(kept_back_minor),
        }
    }
}

/// The refund's legs (summing to zero per unit) and the receipt's counterparty text.
fn refund_legs(
    merchant: &AccountId,
    customer: &AccountId,
    currency: &str,
    minor: i64,
    shares: &Shares,
) -> Result<(Vec<Leg>, String), StoreError> {
    let mut legs = vec![Leg::debit(merchant, AccountKind::Merchant, currency, minor)];
    if shares.to_wallet > 0 {
        legs.push(Leg::credit(
            customer,
            AccountKind::Wallet,
            currency,
            shares.to_wallet,
        ));
    }
    if shares.to_source > 0 {
        legs.push(Leg::credit(
            &refunds_payable(currency)?,
            AccountKind::RefundsPayable,
            currency,
            shares.to_source,
        ));
    }
    if shares.to_funding > 0 {
        legs.push(Leg::credit(
            &rewards::funding_account(currency),
            AccountKind::RewardsFunding,
            currency,
            shares.to_funding,
        ));
    }
    if shares.points > 0 {
        legs.push(Leg::debit(
            &rewards::liability(),
            AccountKind::PointsLiability,
            POINTS,
            shares.points,
        ));
        legs.push(Leg::credit(
            &rewards::points_account(customer),
            AccountKind::Points,
            POINTS,
            shares.points,
        ));
    }
    let mut counterparty = format!("wallet {customer}");
    if shares.to_source > 0 {
        counterparty.push_str(&format!(
            "; {} over the wallet's balance cap is owed back to the customer's source",
            show(shares.to_source, currency)
        ));
    }
    if shares.points > 0 {
        counterparty.push_str(&format!("; {} points returned", shares.points));
    }
    Ok((legs, counterparty))
}

/// The points side of a posted refund.
struct PointsSettlement<'a> {
    customer: &'a AccountId,
    original: &'a TxId,
    refund: &'a TxId,
    /// Points tendered in the payment, returned as a new active lot.
    returned: i64,
    plan: Option<&'a ClawbackPlan>,
    owed: i64,
    kept_back: i64,
}

/// Returns the points tendered and claws back the points the payment earned.
async fn settle_points(
    batch: &mut Batch<'_>,
    rules: &Rules,
    points: &PointsSettlement<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
    if points.returned > 0 {
        rewards::return_points(
            batch,
            &rules.rewards,
            points.customer,
            points.refund,
            points.returned,
            now_ms,
        )
        .await?;
    }
    if let Some(plan) = points.plan {
        let original = points.original;
        let clawed =
            rewards::apply_clawback(batch, plan, original, points.refund, points.owed, now_ms)
                .await?;
        tracing::info!(%original, clawed, kept_back_points = points.kept_back, owed = points.owed, "points clawed back for a refund");
    }
    Ok(())
}

/// How a clawback shortfall is settled under the configured policy: `((points, minor) kept
/// back from the refund's money, points owed)`.
fn shortfall_terms(rules: &Rules, plan: Option<&ClawbackPlan>, money: i64) -> ((i64, i64), i64) {
    let shortfall = plan.map_or(0, ClawbackPlan::shortfall);
    if shortfall <= 0 {
        return ((0, 0), 0);
    }
    match rules.rewards.clawback_shortfall {
        ClawbackShortfall::PointsDebt => ((0, 0), shortfall),
        ClawbackShortfall::DeductFromRefund => {
            let value = rules.rewards.point_value_minor.max(1);
            let points = shortfall.min(money / value);
            ((points, points * value), shortfall - points)
        }
    }
}

/// The account refund money a wallet could not take is held in until it is paid back to the
/// customer's source of funds.
fn refunds_payable(currency: &str) -> Result<AccountId, StoreError> {
    AccountId::parse(&format!("refunds-payable-{}", currency.to_lowercase()))
        .map_err(|e| StoreError::Invariant(format!("refunds payable account: {e}")))
}

async fn ensure_payable(
    batch: &mut Batch<'_>,
    currency: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    ledger::open_account(
        batch,
        &ledger::NewAccount {
            account_id: refunds_payable(currency)?,
            kind: AccountKind::RefundsPayable,
            unit: currency.to_owned(),
            kyc_tier: None,
            category: None,
            owner: None,
        },
        now_ms,
    )
    .await
}

/// A merchant payment as a refund sees it.
struct OriginalPayment {
    currency: String,
    /// What the payment came to (money and points together), in `currency`.
    total: i64,
    /// The wallet that paid (in money, in points, or both).
    customer: AccountId,
    /// Tender points redeemed, and the money they were worth.
    points: i64,
    points_value: i64,
    /// What earlier refunds of it gave back, and the tender points among that.
    refunded: i64,
    points_returned: i64,
}

/// One refund's share of each tender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    /// Tender points given back, and their money value (paid back to the rewards funding).
    points: i64,
    value: i64,
    /// Money for the customer.
    money: i64,
}

impl OriginalPayment {
    /// Why a refund of `amount` cannot be made of this payment, if it cannot: another
    /// currency, or more than is left of it.
    fn refusal(&self, amount: Money) -> Option<(ErrorCode, String)> {
        let currency = &self.currency;
        if currency != amount.currency.code() {
            return Some((
                ErrorCode::CurrencyMismatch,
                format!("the payment was in {currency}"),
            ));
        }
        if self.refunded.saturating_add(amount.minor_signed()) > self.total {
            return Some((
                ErrorCode::RefundExceedsOriginal,
                format!(
                    "the payment was {}, of which {} is refunded already",
                    show(self.total, currency),
                    show(self.refunded, currency)
                ),
            ));
        }
        None
    }

    /// Splits a refund of `minor` between the tenders in proportion to the payment: the
    /// points given back by all refunds so far are the payment's points times the share
    /// refunded, rounded down to whole points (never more than this refund's amount buys);
    /// the rest is money. Refunds adding up to the whole payment give back exactly the points
    /// and the money it took.
    fn split(&self, minor: i64) -> Split {
        if self.points <= 0 {
            return Split {
                points: 0,
                value: 0,
                money: minor,
            };
        }
        let per_point = (self.points_value / self.points).max(1);
        let refunded = i128::from(self.refunded.saturating_add(minor));
        let due_total = i128::from(self.points) * refunded / i128::from(self.total.max(1));
        let due = i64::try_from(due_total).unwrap_or(self.points) - self.points_returned;
        let points = due.clamp(0, minor / per_point);
        let value = points * per_point;
        Split {
            points,
            value,
            money: minor - value,
        }
    }
}

/// The merchant payment `original` to `merchant`, if it is one (locked on PostgreSQL, so two
/// refunds of it are decided one after the other).
async fn original_payment(
    batch: &mut Batch<'_>,
    merchant: &AccountId,
    original: &TxId,
) -> Result<Option<OriginalPayment>, StoreError> {
    let lock = if batch.backend_name() == "PostgreSQL" {
        "SELECT kind, currency FROM transfers WHERE tx_id = $1 FOR UPDATE"
    } else {
        "SELECT kind, currency FROM transfers WHERE tx_id = $1"
    };
    let row = sqlx::query(lock)
        .bind(original.as_str())
        .fetch_optional(&mut **batch)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let kind: String = row.try_get("kind")?;
    let currency: String = row.try_get("currency")?;
    if kind != "merchant_payment" {
        return Ok(None);
    }
    let legs = sqlx::query(
        "SELECT p.account_id, p.amount_minor, a.kind, a.owner_account_id
         FROM postings p JOIN accounts a ON a.account_id = p.account_id WHERE p.tx_id = $1",
    )
    .bind(original.as_str())
    .fetch_all(&mut **batch)
    .await?;
    let mut total = 0;
    let (mut points, mut points_value) = (0, 0);
    let mut customer: Option<String> = None;
    for leg in legs {
        let account: String = leg.try_get("account_id")?;
        let minor: i64 = leg.try_get("amount_minor")?;
        let kind: String = leg.try_get("kind")?;
        match (AccountKind::parse(&kind), minor > 0) {
            (Some(AccountKind::Merchant), true) if account == merchant.as_str() => total = minor,
            (Some(AccountKind::Wallet), false) => customer = Some(account),
            (Some(AccountKind::RewardsFunding), false) => points_value = -minor,
            (Some(AccountKind::Points), false) => {
                points = -minor;
                if customer.is_none() {
                    customer = leg.try_get("owner_account_id")?;
                }
            }
            _ => {}
        }
    }
    let Some(customer) = customer else {
        return Ok(None);
    };
    if total == 0 {
        return Ok(None);
    }
    let customer = ledger::parse_account(&customer)?;
    let earlier = sqlx::query(
        "SELECT t.amount_minor, COALESCE(
             (SELECT p.amount_minor FROM postings p JOIN accounts a ON a.account_id = p.account_id
              WHERE p.tx_id = t.tx_id AND a.kind = 'points' AND p.amount_minor > 0), 0) AS points
         FROM transfers t WHERE t.related_tx_id = $1 AND t.kind = 'refund'",
    )
    .bind(original.as_str())
    .fetch_all(&mut **batch)
    .await?;
    let (mut refunded, mut points_returned) = (0_i64, 0_i64);
    for row in earlier {
        refunded = refunded.saturating_add(row.try_get::<i64, _>("amount_minor")?);
        points_returned = points_returned.saturating_add(row.try_get::<i64, _>("points")?);
    }
    Ok(Some(OriginalPayment {
        currency,
        total,
        customer,
        points,
        points_value,
        refunded,
        points_returned,
    }))
}

/// A UPI payment to refund: its network transaction, who paid, and what was refunded of it.
struct UpiOriginal {
    payment_id: String,
    payer_masked: String,
    currency: String,
    total: i64,
    refunded: i64,
}

/// The UPI payment `original` is, if it is one of `merchant`'s (its transfer row locked on
/// PostgreSQL, so two refunds of it are decided one after the other).
async fn upi_original(
    batch: &mut Batch<'_>,
    merchant: &AccountId,
    original: &TxId,
) -> Result<Option<UpiOriginal>, StoreError> {
    let lock = if batch.backend_name() == "PostgreSQL" {
        " FOR UPDATE OF t"
    } else {
        ""
    };
    let row = sqlx::query(&format!(
        "SELECT t.currency, u.payment_id, u.payer_masked, u.merchant_id, u.amount_minor
         FROM transfers t JOIN upi_payments u
           ON u.device_id = t.device_id AND u.idempotency_key = t.idempotency_key
         WHERE t.tx_id = $1 AND t.kind = 'upi_payment'{lock}"
    ))
    .bind(original.as_str())
    .fetch_optional(&mut **batch)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.try_get::<String, _>("merchant_id")? != merchant.as_str() {
        return Ok(None);
    }
    let payment_id: String = row.try_get("payment_id")?;
    let refunded: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM upi_refunds WHERE payment_id = $1",
    )
    .bind(&payment_id)
    .fetch_one(&mut **batch)
    .await?;
    Ok(Some(UpiOriginal {
        payment_id,
        payer_masked: row.try_get("payer_masked")?,
        currency: row.try_get("currency")?,
        total: row.try_get("amount_minor")?,
        refunded,
    }))
}

/// A refund of a UPI payment: the merchant pays the UPI settlement account back now, and the
/// UPI worker sends the refund to the network under its own transaction id until the network
/// confirms it (the customer's bank credits their account).
async fn upi_refund(
    batch: &mut Batch<'_>,
    origin: &Origin<'_>,
    merchant: &AccountId,
    original: &TxId,
    upi: UpiOriginal,
    amount: Money,
) -> Result<Decided, StoreError> {
    if upi.currency != amount.currency.code() {
        return declined(
            ErrorCode::CurrencyMismatch,
            format!("the payment was in {}", upi.currency),
        );
    }
    let minor = amount.minor_signed();
    if upi.refunded.saturating_add(minor) > upi.total {
        return declined(
            ErrorCode::RefundExceedsOriginal,
            format!(
                "the payment was {}, {} already refunded",
                show(upi.total, &upi.currency),
                show(upi.refunded, &upi.currency)
            ),
        );
    }
    let unit = amount.currency.code();
    let settlement = AccountId::parse(&format!("upi-settlement-{}", unit.to_lowercase()))
        .map_err(|e| StoreError::Invariant(format!("settlement account: {e}")))?;
    let refund_txn = crate::upi::new_txn_id();
    let decided = post(
        batch,
        origin,
        "upi_refund",
        Some(original),
        vec![
            Leg::debit(merchant, AccountKind::Merchant, unit, minor),
            Leg::credit(&settlement, AccountKind::Settlement, unit, minor),
        ],
        format!("upi refund {refund_txn} to {}", upi.payer_masked),
        String::new,
    )
    .await?;
    if let Decided::Posted { tx_id, .. } = &decided {
        crate::upi::repo::insert_refund(
            batch,
            &crate::upi::repo::NewRefund {
                refund_txn_id: &refund_txn,
                payment_id: &upi.payment_id,
                tx_id,
                amount,
                now_ms: origin.now_ms,
            },
        )
        .await?;
    }
    Ok(decided)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payment(total: i64, points: i64, per_point: i64) -> OriginalPayment {
        OriginalPayment {
            currency: "INR".into(),
            total,
            customer: AccountId::parse("w-1").unwrap_or_else(|_| unreachable!()),
            points,
            points_value: points * per_point,
            refunded: 0,
            points_returned: 0,
        }
    }

    proptest! {
        /// Any sequence of partial refunds up to the whole payment: each refund's money and
        /// points are never negative and are worth exactly the refund; points given back never
        /// pass the payment's; the wallet never gets less money back than it paid (a refund too
        /// small to buy a whole point gives money, so a remainder can turn a point into money,
        /// never lose value).
        #[test]
        fn refunds_give_back_each_tender(
            points in 0_i64..400,
            per_point in 1_i64..50,
            money in 0_i64..20_000,
            cuts in proptest::collection::vec(1_i64..5_000, 0..8),
        ) {
            let total = points * per_point + money;
            prop_assume!(total > 0);
            let mut p = payment(total, points, per_point);
            let mut money_back = 0;
            let mut left = total;
            let mut refunds: Vec<i64> = Vec::new();
            for cut in cuts {
                if cut < left {
                    left -= cut;
                    refunds.push(cut);
                }
            }
            refunds.push(left);
            for r in refunds {
                let s = p.split(r);
                prop_assert!(s.points >= 0 && s.money >= 0, "{s:?}");
                prop_assert_eq!(s.value + s.money, r);
                prop_assert_eq!(s.value, s.points * per_point);
                p.refunded += r;
                p.points_returned += s.points;
                money_back += s.money;
                prop_assert!(p.points_returned <= points);
            }
            prop_assert_eq!(p.refunded, total);
            prop_assert_eq!(money_back + p.points_returned * per_point, total);
            prop_assert!(money_back >= money);
        }
    }

    #[test]
    fn one_whole_refund_gives_back_exactly_the_points_and_the_money() {
        for (points, per_point, money) in [(40, 25, 0), (20, 25, 1_500), (1, 1, 1), (39, 25, 25)] {
            let p = payment(points * per_point + money, points, per_point);
            let s = p.split(p.total);
            assert_eq!((s.points, s.money), (points, money));
        }
    }
}
