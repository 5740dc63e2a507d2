//! Merchant payments decided together: one read of everything a batch's payments need (their
//! accounts and balances, the wallets' day and month totals, the completeness figures), then
//! each payment decided in memory, in the batch's order, by the same limit, abuse-limit and
//! risk-rule code a payment decided alone passes ([`super::limits::debit_refusal`],
//! [`super::merchant_payment::gate`]), with the figures moved on by every payment approved
//! before it.
//!
//! A payment that earns reward points earns them here too, by the same rule
//! ([`crate::rewards::points_for`]), posted and opened as lots with the batch.
//!
//! Only the plain approval is decided here: a payment the limits or the rules would decline
//! or hold, one that spends reward points, one that earns points for a wallet that owes points
//! (its points repay the debt, alone) or has no points account yet, or one whose accounts are not a plain open
//! wallet and merchant, gets `None` and is decided alone by
//! [`super::merchant_payment::decide`] after the batch's approvals so far are written. So
//! every outcome but "approved" keeps one code path, and an approval here is one that path
//! would have made.

use super::limits::{debit_refusal, Spent, WALLET_DEBITS};
use super::merchant_payment::{gate, payment_final, Gate, HeldPayment};
use super::{Final, HeldKind, Prepared, RequestRef, Rules};
use crate::identity::{self, BatchFigures, PaymentRef};
use crate::ledger::{self, AccountKind, DebitTotals, Leg, Snapshot, POINTS, SHARD_BALANCE_LIMIT};
use crate::rewards;
use crate::store::{new_tx_id, Batch, StoreError};
use paygate_core::request::Operation;
use paygate_core::{AccountId, Money, TxId};
use std::collections::{HashMap, HashSet};

/// A merchant payment approved in memory, to be posted and recorded with its batch.
pub struct Planned {
    pub decided: Final,
    pub tx_id: TxId,
    pub legs: Vec<Leg>,
    /// The wallet and the reward points the payment earns: a `points_earn` transfer and a lot.
    pub earned: Option<(AccountId, Earned)>,
}

/// Points earned by a payment decided in the lane.
pub struct Earned {
    pub points: i64,
    pub earn_tx: TxId,
}

/// What the payments of a batch were decided against, moved on by each approval.
pub struct Lane {
    snapshot: Snapshot,
    spent: HashMap<AccountId, DebitTotals>,
    figures: BatchFigures,
    /// Debited from each wallet by the approvals so far.
    debited: HashMap<AccountId, i64>,
    /// Credited to each merchant, and each points account, by the approvals so far.
    credited: HashMap<AccountId, i64>,
    /// Wallets that owe points (read under their row locks).
    owing: HashSet<AccountId>,
}

/// The merchant and amount of a request this lane can decide: a merchant payment in money.
pub fn candidate(item: &Prepared) -> Option<(&AccountId, Money)> {
    match &item.request.operation {
        Operation::MerchantPayment {
            merchant_id,
            amount,
            ..
        } => Some((merchant_id, *amount)),
        _ => None,
    }
}

impl Lane {
    /// Reads what `items` (the candidates among the batch's requests still to decide) need.
    pub async fn load(
        tx: &mut Batch<'_>,
        rules: &Rules,
        items: &[&Prepared],
        now_ms: u64,
    ) -> Result<Lane, StoreError> {
        let mut accounts: Vec<&AccountId> = Vec::with_capacity(items.len() * 2);
        let mut payments = Vec::with_capacity(items.len());
        for item in items {
            if let Some((merchant, _)) = candidate(item) {
                accounts.push(&item.wallet);
                accounts.push(merchant);
                payments.push(PaymentRef {
                    device: &item.request.device_id,
                    wallet: &item.wallet,
                    merchant,
                });
            }
        }
        let mut snapshot = Snapshot::load(tx, &accounts).await?;
        let mut wallets: Vec<&AccountId> = payments.iter().map(|p| p.wallet).collect();
        wallets.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        wallets.dedup();
        let owing = if rules.rewards.enabled {
            // after the wallets' locks: a refund records a debt under its wallet's lock
            let mut points_accounts: Vec<AccountId> =
                wallets.iter().map(|w| rewards::points_account(w)).collect();
            points_accounts.push(rewards::liability());
            let ids: Vec<&AccountId> = points_accounts.iter().collect();
            snapshot.add_unlocked(tx, &ids).await?;
            rewards::owing(tx, &wallets).await?
        } else {
            HashSet::new()
        };
        let spent = ledger::debits_in_days_many(tx, &wallets, &WALLET_DEBITS, now_ms).await?;
        let window = identity::Window {
            now_ms,
            velocity_window_ms: rules.identity.velocity_window_ms,
            device_count_max: rules.identity.device_payments_per_window_max,
            wallet_count_max: rules.identity.wallet_payments_per_window_max,
        };
        let figures = BatchFigures::load(tx, &payments, &window).await?;
        Ok(Lane {
            snapshot,
            spent,
            figures,
            debited: HashMap::new(),
            credited: HashMap::new(),
            owing,
        })
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The payment approved, if that is what deciding it alone now would come to; `None`
    /// when it must be decided alone.
    pub fn decide(&mut self, rules: &Rules, item: &Prepared, now_ms: u64) -> Option<Planned> {
        let (merchant, amount) = candidate(item)?;
        let minor = amount.minor_signed();
        let unit = amount.currency.code();
        let wallet = self
            .snapshot
            .account(&item.wallet)
            .filter(|a| a.active && a.kind == AccountKind::Wallet && a.unit == unit)?;
        let totals = *self.spent.get(&item.wallet)?;
        let spent = Spent {
            spent: totals,
            withdrawn: DebitTotals::default(),
        };
        if debit_refusal(&rules.wallet, wallet, "merchant_payment", amount, &spent).is_some() {
            return None;
        }
        let payment_ref = PaymentRef {
            device: &item.request.device_id,
            wallet: &item.wallet,
            merchant,
        };
        let figures = self.figures.figures(&payment_ref, minor)?;
        let known = identity::Known::of(&figures, merchant, amount, now_ms);
        if !matches!(gate(rules, &known), Gate::Pass) {
            return None;
        }
        let payee = self
            .snapshot
            .account(merchant)
            .filter(|a| a.active && a.kind == AccountKind::Merchant && a.unit == unit)?;
        if minor <= 0 || minor > SHARD_BALANCE_LIMIT {
            return None;
        }
        let points = rewards::points_for(&rules.rewards, payee.category.as_deref(), amount);
        let earned_room = if points > 0 {
            Some(self.points_room(&item.wallet, points)?)
        } else {
            None
        };
        let debited = self.debited.get(&item.wallet).copied().unwrap_or(0);
        let balance = self.snapshot.balance(&item.wallet)?.checked_sub(debited)?;
        if balance < minor {
            return None;
        }
        let credited = self.credited.get(merchant).copied().unwrap_or(0);
        let highest = self
            .snapshot
            .largest_shard(merchant)?
            .checked_add(credited)?;
        if highest.checked_add(minor)? > SHARD_BALANCE_LIMIT {
            return None;
        }
        // approved: what the database would read for the next payment moves on
        self.debited.insert(item.wallet.clone(), debited + minor);
        self.credited.insert(merchant.clone(), credited + minor);
        if let Some((points_account, credited_points)) = earned_room {
            self.credited
                .insert(points_account, credited_points.saturating_add(points));
        }
        let entry = self.spent.entry(item.wallet.clone()).or_default();
        entry.today_minor = entry.today_minor.saturating_add(minor);
        entry.this_month_minor = entry.this_month_minor.saturating_add(minor);
        self.figures.count_debit(&payment_ref, minor);
        let payment = HeldPayment {
            request: RequestRef::of(item),
            wallet: item.wallet.clone(),
            merchant: merchant.clone(),
            amount,
            payer: item.payer.clone(),
            decline_reason: None,
            points: 0,
            kind: HeldKind::MerchantPayment,
        };
        let tx_id = new_tx_id();
        Some(Planned {
            decided: payment_final(&payment, None, Some(tx_id.clone()), None, points),
            legs: vec![
                Leg::debit(&item.wallet, AccountKind::Wallet, unit, minor),
                Leg::credit(merchant, AccountKind::Merchant, unit, minor),
            ],
            tx_id,
            earned: (points > 0).then(|| {
                let earned = Earned {
                    points,
                    earn_tx: new_tx_id(),
                };
                (item.wallet.clone(), earned)
            }),
        })
    }

    /// Whether `points` can be earned here by `wallet`: it owes none, its points account and
    /// the programme's liability are open, and the account's balance stays within a shard.
    /// Returns the points account and what the lane credited it so far.
    fn points_room(&self, wallet: &AccountId, points: i64) -> Option<(AccountId, i64)> {
        if self.owing.contains(wallet) {
            return None;
        }
        let account = rewards::points_account(wallet);
        self.snapshot
            .account(&account)
            .filter(|a| a.active && a.kind == AccountKind::Points && a.unit == POINTS)?;
        self.snapshot
            .account(&rewards::liability())
            .filter(|a| a.active && a.kind == AccountKind::PointsLiability && a.unit == POINTS)?;
        let credited = self.credited.get(&account).copied().unwrap_or(0);
        let highest = self
            .snapshot
            .largest_shard(&account)?
            .checked_add(credited)?
            .checked_add(points)?;
        (highest <= SHARD_BALANCE_LIMIT).then_some((account, credited))
    }
}
