//! Many transfers at once, for a batch decided in memory: one read of every account and
//! balance shard the batch touches ([`Snapshot`], row-locked, plus accounts only changed by
//! conditional updates, read unlocked), and [`post_many`], which writes the transfers,
//! postings, balances and counters as multi-row statements (a few per table and chunk of
//! `store::rows_per_statement` rows) and reads the postings back.
//!
//! Invariants: the caller decides every transfer against the snapshot first (accounts open and
//! of the right kind and unit, balances that cover the debits), with the same checks
//! [`super::post`] makes; `post_many` checks them again in the database and fails as a whole
//! (`StoreError::Invariant`) when any row disagrees, so its caller can roll the lot back and
//! decide each transfer alone. Balance changes stay conditional updates (`balance + delta`
//! within the shard's bounds), applied by the database to the row's current value.

use super::{checked_legs, counters, headline, ms, parse_account, Account, AccountKind, Leg};
use super::{NewTransfer, SHARD_BALANCE_LIMIT};
use crate::store::{placeholders, rows_per_statement, Batch, StoreError};
use paygate_core::AccountId;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// The accounts a batch touches and their shards' balances, read (and on PostgreSQL
/// row-locked, in account then shard order) in one statement per chunk of accounts.
#[derive(Debug, Default)]
pub struct Snapshot {
    accounts: HashMap<AccountId, Account>,
    shards: HashMap<AccountId, Vec<(i64, i64)>>,
}

impl Snapshot {
    pub async fn load(batch: &mut Batch<'_>, ids: &[&AccountId]) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        snapshot.read(batch, ids, true).await?;
        Ok(snapshot)
    }

    /// Adds accounts read without a row lock: ones only ever credited or debited by
    /// conditional updates the database applies to the current balance (a hot account such as
    /// the points liability, whose lock every payment would otherwise queue on). What is read
    /// of them decides only whether the batch can post to them at all.
    pub async fn add_unlocked(
        &mut self,
        batch: &mut Batch<'_>,
        ids: &[&AccountId],
    ) -> Result<(), StoreError> {
        let ids: Vec<&AccountId> = ids
            .iter()
            .copied()
            .filter(|id| !self.accounts.contains_key(*id))
            .collect();
        self.read(batch, &ids, false).await
    }

    async fn read(
        &mut self,
        batch: &mut Batch<'_>,
        ids: &[&AccountId],
        locked: bool,
    ) -> Result<(), StoreError> {
        let mut ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let lock = if locked && batch.backend_name() == "PostgreSQL" {
            " FOR UPDATE"
        } else {
            ""
        };
        let snapshot = self;
        let mut unreadable = Vec::new();
        for chunk in ids.chunks(rows_per_statement(batch, 1)) {
            let sql = format!(
                "SELECT a.account_id, a.kind, a.currency, a.negative_allowed, a.shards, a.kyc_tier,
                        a.category, a.owner_account_id, a.status, s.shard, s.balance_minor
                 FROM accounts a JOIN balance_shards s ON s.account_id = a.account_id
                 WHERE a.account_id IN ({}) ORDER BY a.account_id, s.shard{lock}",
                placeholders(chunk.len(), 1, 1)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut **batch).await? {
                let id: String = row.try_get("account_id")?;
                if let Err(error) = snapshot.add_row(&id, &row) {
                    // left out: its payments are decided alone, where the broken row
                    // refuses only them, with an alert
                    tracing::warn!(%error, account = %id, "account row unreadable; left out of the batch's snapshot");
                    unreadable.push(id);
                }
            }
        }
        for id in unreadable {
            if let Ok(id) = AccountId::parse(&id) {
                snapshot.accounts.remove(&id);
                snapshot.shards.remove(&id);
            }
        }
        Ok(())
    }

    fn add_row(&mut self, id: &str, row: &sqlx::any::AnyRow) -> Result<(), StoreError> {
        let id = parse_account(id)?;
        if !self.accounts.contains_key(&id) {
            let kind: String = row.try_get("kind")?;
            let tier: Option<String> = row.try_get("kyc_tier")?;
            let owner: Option<String> = row.try_get("owner_account_id")?;
            let status: String = row.try_get("status")?;
            let negative_allowed: i64 = row.try_get("negative_allowed")?;
            let account = Account {
                account_id: id.clone(),
                kind: AccountKind::parse(&kind)
                    .ok_or_else(|| StoreError::Invariant(format!("account kind {kind}")))?,
                unit: row.try_get("currency")?,
                kyc_tier: tier.as_deref().and_then(super::KycTier::parse),
                category: row.try_get("category")?,
                owner: owner.map(|o| parse_account(&o)).transpose()?,
                active: status == "active",
                shards: row.try_get("shards")?,
                negative_allowed: negative_allowed == 1,
            };
            self.accounts.insert(id.clone(), account);
        }
        let shard = (row.try_get("shard")?, row.try_get("balance_minor")?);
        self.shards.entry(id).or_default().push(shard);
        Ok(())
    }

    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// The account's balance (the sum of its shards) as read.
    pub fn balance(&self, id: &AccountId) -> Option<i64> {
        let shards = self.shards.get(id)?;
        shards
            .iter()
            .try_fold(0_i64, |sum, (_, balance)| sum.checked_add(*balance))
    }

    /// The largest balance any one of the account's shards holds.
    pub fn largest_shard(&self, id: &AccountId) -> Option<i64> {
        self.shards.get(id)?.iter().map(|(_, b)| *b).max()
    }
}

/// One shard's change: the sum of the batch's legs on it, and the bounds its balance must
/// stay within afterwards.
struct ShardChange {
    delta: i64,
    low: i64,
    high: i64,
}

/// Posts every transfer in `transfers`, decided against `snapshot`, in multi-row statements.
/// Supports what a batch decides together: legs on single-shard accounts, credits to any
/// account, debits of accounts that may go negative. Anything else, or any row the database
/// does not take as planned, is `StoreError::Invariant` and nothing is left to keep: the
/// caller rolls its savepoint back.
pub async fn post_many(
    batch: &mut Batch<'_>,
    snapshot: &Snapshot,
    transfers: &[NewTransfer<'_>],
) -> Result<(), StoreError> {
    let mut changes: BTreeMap<(AccountId, i64), ShardChange> = BTreeMap::new();
    let mut credit_shards: HashMap<AccountId, i64> = HashMap::new();
    let mut planned: Vec<(&NewTransfer<'_>, Vec<Leg>)> = Vec::with_capacity(transfers.len());
    for transfer in transfers {
        let legs = checked_legs(&transfer.legs)?;
        for leg in &legs {
            let account = snapshot
                .account(&leg.account)
                .filter(|a| a.active && a.kind == leg.expect && a.unit == leg.unit)
                .ok_or_else(|| unplanned(&leg.account, "is not open as the leg expects"))?;
            let shard = shard_for(account, leg, &mut credit_shards)?;
            let change = changes
                .entry((leg.account.clone(), shard))
                .or_insert_with(|| ShardChange {
                    delta: 0,
                    low: if account.negative_allowed {
                        -SHARD_BALANCE_LIMIT
                    } else {
                        0
                    },
                    high: SHARD_BALANCE_LIMIT,
                });
            change.delta = change
                .delta
                .checked_add(leg.amount)
                .ok_or_else(|| unplanned(&leg.account, "sums past an i64"))?;
            if let Some(cap) = leg.credit_cap {
                change.high = change.high.min(cap);
            }
        }
        planned.push((transfer, legs));
    }
    insert_transfers(batch, &planned).await?;
    insert_postings(batch, &planned).await?;
    apply_changes(batch, &changes).await?;
    count_all(batch, snapshot, &planned).await?;
    read_back_all(batch, &planned).await
}

fn unplanned(account: &AccountId, what: &str) -> StoreError {
    StoreError::Invariant(format!("bulk posting: {account} {what}"))
}

/// The shard a leg lands on: a single-shard account's only one; a credit to a sharded
/// account on one random shard per batch; a debit of a sharded account only where it may go
/// negative (one that may not is drawn largest shard first, by [`super::post`] alone).
fn shard_for(
    account: &Account,
    leg: &Leg,
    credit_shards: &mut HashMap<AccountId, i64>,
) -> Result<i64, StoreError> {
    if account.shards == 1 {
        return Ok(0);
    }
    if leg.amount < 0 && !account.negative_allowed {
        return Err(unplanned(&leg.account, "is a sharded debit"));
    }
    if leg.credit_cap.is_some() {
        return Err(unplanned(
            &leg.account,
            "has a balance cap on a sharded account",
        ));
    }
    let shards = account.shards;
    Ok(*credit_shards
        .entry(leg.account.clone())
        .or_insert_with(|| rand::Rng::gen_range(&mut rand::thread_rng(), 0..shards)))
}

async fn insert_transfers(
    batch: &mut Batch<'_>,
    planned: &[(&NewTransfer<'_>, Vec<Leg>)],
) -> Result<(), StoreError> {
    for chunk in planned.chunks(rows_per_statement(batch, 8)) {
        let sql = format!(
            "INSERT INTO transfers (tx_id, kind, device_id, idempotency_key, currency,
                                    amount_minor, created_at_ms, related_tx_id) VALUES {}",
            placeholders(chunk.len(), 8, 1)
        );
        let mut query = sqlx::query(&sql);
        for (transfer, _) in chunk {
            let (unit, minor) = headline(&transfer.legs)?;
            let (device, key) = match transfer.origin {
                Some((device, key)) => (Some(device.as_str()), Some(key.as_str())),
                None => (None, None),
            };
            query = query
                .bind(transfer.tx_id.as_str())
                .bind(transfer.kind)
                .bind(device)
                .bind(key)
                .bind(unit)
                .bind(minor)
                .bind(ms(transfer.now_ms))
                .bind(transfer.related.map(|t| t.as_str()));
        }
        query.execute(&mut **batch).await?;
    }
    Ok(())
}

async fn insert_postings(
    batch: &mut Batch<'_>,
    planned: &[(&NewTransfer<'_>, Vec<Leg>)],
) -> Result<(), StoreError> {
    let rows: Vec<(&str, &Leg)> = planned
        .iter()
        .flat_map(|(transfer, legs)| legs.iter().map(|leg| (transfer.tx_id.as_str(), leg)))
        .collect();
    for chunk in rows.chunks(rows_per_statement(batch, 4)) {
        let sql = format!(
            "INSERT INTO postings (tx_id, account_id, currency, amount_minor) VALUES {}",
            placeholders(chunk.len(), 4, 1)
        );
        let mut query = sqlx::query(&sql);
        for (tx_id, leg) in chunk {
            query = query
                .bind(*tx_id)
                .bind(leg.account.as_str())
                .bind(leg.unit.as_str())
                .bind(leg.amount);
        }
        query.execute(&mut **batch).await?;
    }
    Ok(())
}

/// One conditional update per chunk of shards: each row changes only if its new balance is
/// within its bounds, and every row must change.
async fn apply_changes(
    batch: &mut Batch<'_>,
    changes: &BTreeMap<(AccountId, i64), ShardChange>,
) -> Result<(), StoreError> {
    let rows: Vec<(&(AccountId, i64), &ShardChange)> =
        changes.iter().filter(|(_, c)| c.delta != 0).collect();
    for chunk in rows.chunks(rows_per_statement(batch, 5)) {
        let sql = format!(
            "WITH v(account_id, shard, delta, lowest_before, highest_before) AS (VALUES {})
             UPDATE balance_shards SET balance_minor = balance_shards.balance_minor + v.delta
             FROM v WHERE balance_shards.account_id = v.account_id
               AND balance_shards.shard = v.shard
               AND balance_shards.balance_minor >= v.lowest_before
               AND balance_shards.balance_minor <= v.highest_before",
            placeholders(chunk.len(), 5, 1)
        );
        let mut query = sqlx::query(&sql);
        for ((account, shard), change) in chunk {
            // the balance before that keeps the one after within the bounds
            let lowest_before = change.low.checked_sub(change.delta);
            let highest_before = change.high.checked_sub(change.delta);
            let (Some(lowest_before), Some(highest_before)) = (lowest_before, highest_before)
            else {
                return Err(unplanned(account, "changes past an i64"));
            };
            query = query
                .bind(account.as_str())
                .bind(*shard)
                .bind(change.delta)
                .bind(lowest_before)
                .bind(highest_before);
        }
        let applied = query.execute(&mut **batch).await?.rows_affected();
        if applied != u64::try_from(chunk.len()).unwrap_or(u64::MAX) {
            return Err(StoreError::Invariant(format!(
                "bulk posting: {applied} of {} balance shards took their change",
                chunk.len()
            )));
        }
    }
    Ok(())
}

/// The counters of every wallet debit and load in the batch, aggregated per row they update.
async fn count_all(
    batch: &mut Batch<'_>,
    snapshot: &Snapshot,
    planned: &[(&NewTransfer<'_>, Vec<Leg>)],
) -> Result<(), StoreError> {
    let mut counts = counters::BatchCounts::default();
    for (transfer, legs) in planned {
        for leg in legs {
            let is_wallet = snapshot
                .account(&leg.account)
                .is_some_and(|a| a.kind == AccountKind::Wallet);
            if !is_wallet {
                continue;
            }
            if leg.amount < 0 {
                let credited: Vec<&AccountId> = legs
                    .iter()
                    .filter(|other| other.amount > 0)
                    .map(|other| &other.account)
                    .collect();
                counts.debit(
                    transfer,
                    &leg.account,
                    leg.amount.saturating_neg(),
                    &credited,
                );
            } else if counters::is_load(transfer.kind) {
                counts.load(transfer, &leg.account, leg.amount);
            }
        }
    }
    counts.write(batch).await
}

/// The assertion after the write, for the whole batch: the postings read back are exactly
/// the legs checked before it.
async fn read_back_all(
    batch: &mut Batch<'_>,
    planned: &[(&NewTransfer<'_>, Vec<Leg>)],
) -> Result<(), StoreError> {
    let mut expected: Vec<(String, String, String, i64)> = planned
        .iter()
        .flat_map(|(transfer, legs)| {
            legs.iter().map(|leg| {
                (
                    transfer.tx_id.to_string(),
                    leg.account.to_string(),
                    leg.unit.clone(),
                    leg.amount,
                )
            })
        })
        .collect();
    let mut read = Vec::with_capacity(expected.len());
    for chunk in planned.chunks(rows_per_statement(batch, 1)) {
        let sql = format!(
            "SELECT tx_id, account_id, currency, amount_minor FROM postings WHERE tx_id IN ({})",
            placeholders(chunk.len(), 1, 1)
        );
        let mut query = sqlx::query(&sql);
        for (transfer, _) in chunk {
            query = query.bind(transfer.tx_id.as_str());
        }
        for row in query.fetch_all(&mut **batch).await? {
            read.push((
                row.try_get::<String, _>("tx_id")?,
                row.try_get::<String, _>("account_id")?,
                row.try_get::<String, _>("currency")?,
                row.try_get::<i64, _>("amount_minor")?,
            ));
        }
    }
    // compared in one order chosen here, not the database's collation
    read.sort();
    expected.sort();
    if read != expected {
        return Err(StoreError::Invariant(format!(
            "bulk posting: postings read back ({}) are not the legs posted ({})",
            read.len(),
            expected.len()
        )));
    }
    Ok(())
}
