//! Counters kept as postings are made, so that limits, velocity and the step-up completeness
//! data never scan an account's history: per wallet and local day, what each transfer kind
//! debited; a log of wallet debit times (velocity, read by an index bounded by its window);
//! the accounts a wallet has paid; and what a wallet has spent since its last strong
//! authentication. The step-up completeness data reads the last three in one statement
//! (`identity::completeness`); the KYC limits read the first ([`debits_in_days`]).
//!
//! Loads (cash-in, funding) are counted per wallet and local day too, for the monthly load
//! limit of a minimum-KYC wallet.
//!
//! Invariant: every wallet debit posted by [`super::post`] updates all four debit counters,
//! and every load the load counter, in the same savepoint, so a counter never disagrees with
//! the postings it summarises.

use super::{ms, NewTransfer};
use crate::clock::business_calendar;
use crate::store::{placeholders, rows_per_statement, Batch, StoreError};
use paygate_core::{AccountId, TxId};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Counts one wallet debit in every counter.
pub(super) async fn count_wallet_debit(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    kind: &str,
    amount_minor: i64,
    tx_id: &TxId,
    credited: &[&AccountId],
    now_ms: u64,
) -> Result<(), StoreError> {
    let day = business_calendar().day_number(now_ms);
    sqlx::query(
        "INSERT INTO debit_days (account_id, local_day, kind, total_minor, debit_count)
         VALUES ($1, $2, $3, $4, 1)
         ON CONFLICT (account_id, local_day, kind) DO UPDATE
         SET total_minor = debit_days.total_minor + excluded.total_minor,
             debit_count = debit_days.debit_count + 1",
    )
    .bind(wallet.as_str())
    .bind(day)
    .bind(kind)
    .bind(amount_minor)
    .execute(&mut **batch)
    .await?;
    sqlx::query(
        "INSERT INTO wallet_debit_log (account_id, created_at_ms, tx_id) VALUES ($1, $2, $3)",
    )
    .bind(wallet.as_str())
    .bind(ms(now_ms))
    .bind(tx_id.as_str())
    .execute(&mut **batch)
    .await?;
    sqlx::query(
        "INSERT INTO wallet_counters (account_id, debited_since_strong_auth_minor) VALUES ($1, $2)
         ON CONFLICT (account_id) DO UPDATE
         SET debited_since_strong_auth_minor =
             wallet_counters.debited_since_strong_auth_minor + excluded.debited_since_strong_auth_minor",
    )
    .bind(wallet.as_str())
    .bind(amount_minor)
    .execute(&mut **batch)
    .await?;
    for payee in credited {
        sqlx::query(
            "INSERT INTO wallet_payees (wallet_account_id, payee_account_id) VALUES ($1, $2)
             ON CONFLICT (wallet_account_id, payee_account_id) DO NOTHING",
        )
        .bind(wallet.as_str())
        .bind(payee.as_str())
        .execute(&mut **batch)
        .await?;
    }
    Ok(())
}

/// The counter updates of a whole batch of postings, aggregated per row they change, written
/// as one multi-row statement per table (per chunk): the same rows [`count_wallet_debit`] and
/// [`count_wallet_load`] would write one posting at a time.
#[derive(Default)]
pub(super) struct BatchCounts {
    /// (wallet, local day, kind): total and count.
    debit_days: BTreeMap<(String, i64, String), (i64, i64)>,
    /// (wallet, time, transfer).
    debit_log: Vec<(String, i64, String)>,
    since_strong: BTreeMap<String, i64>,
    payees: BTreeSet<(String, String)>,
    load_days: BTreeMap<(String, i64, String), (i64, i64)>,
}

impl BatchCounts {
    pub(super) fn debit(
        &mut self,
        transfer: &NewTransfer<'_>,
        wallet: &AccountId,
        amount_minor: i64,
        credited: &[&AccountId],
    ) {
        let day = business_calendar().day_number(transfer.now_ms);
        let key = (wallet.to_string(), day, transfer.kind.to_owned());
        let entry = self.debit_days.entry(key).or_default();
        entry.0 = entry.0.saturating_add(amount_minor);
        entry.1 += 1;
        self.debit_log.push((
            wallet.to_string(),
            ms(transfer.now_ms),
            transfer.tx_id.to_string(),
        ));
        let since = self.since_strong.entry(wallet.to_string()).or_default();
        *since = since.saturating_add(amount_minor);
        for payee in credited {
            self.payees.insert((wallet.to_string(), payee.to_string()));
        }
    }

    pub(super) fn load(
        &mut self,
        transfer: &NewTransfer<'_>,
        wallet: &AccountId,
        amount_minor: i64,
    ) {
        let day = business_calendar().day_number(transfer.now_ms);
        let key = (wallet.to_string(), day, transfer.kind.to_owned());
        let entry = self.load_days.entry(key).or_default();
        entry.0 = entry.0.saturating_add(amount_minor);
        entry.1 += 1;
    }

    pub(super) async fn write(&self, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        let days: Vec<_> = self.debit_days.iter().collect();
        for chunk in days.chunks(rows_per_statement(batch, 5)) {
            let sql = format!(
                "INSERT INTO debit_days (account_id, local_day, kind, total_minor, debit_count)
                 VALUES {} ON CONFLICT (account_id, local_day, kind) DO UPDATE
                 SET total_minor = debit_days.total_minor + excluded.total_minor,
                     debit_count = debit_days.debit_count + excluded.debit_count",
                placeholders(chunk.len(), 5, 1)
            );
            let mut query = sqlx::query(&sql);
            for ((wallet, day, kind), (total, count)) in chunk {
                query = query
                    .bind(wallet)
                    .bind(*day)
                    .bind(kind)
                    .bind(*total)
                    .bind(*count);
            }
            query.execute(&mut **batch).await?;
        }
        for chunk in self.debit_log.chunks(rows_per_statement(batch, 3)) {
            let sql = format!(
                "INSERT INTO wallet_debit_log (account_id, created_at_ms, tx_id) VALUES {}",
                placeholders(chunk.len(), 3, 1)
            );
            let mut query = sqlx::query(&sql);
            for (wallet, at, tx_id) in chunk {
                query = query.bind(wallet).bind(*at).bind(tx_id);
            }
            query.execute(&mut **batch).await?;
        }
        let since: Vec<_> = self.since_strong.iter().collect();
        for chunk in since.chunks(rows_per_statement(batch, 2)) {
            let sql = format!(
                "INSERT INTO wallet_counters (account_id, debited_since_strong_auth_minor)
                 VALUES {} ON CONFLICT (account_id) DO UPDATE
                 SET debited_since_strong_auth_minor = wallet_counters.debited_since_strong_auth_minor
                     + excluded.debited_since_strong_auth_minor",
                placeholders(chunk.len(), 2, 1)
            );
            let mut query = sqlx::query(&sql);
            for (wallet, minor) in chunk {
                query = query.bind(*wallet).bind(**minor);
            }
            query.execute(&mut **batch).await?;
        }
        let payees: Vec<_> = self.payees.iter().collect();
        for chunk in payees.chunks(rows_per_statement(batch, 2)) {
            let sql = format!(
                "INSERT INTO wallet_payees (wallet_account_id, payee_account_id) VALUES {}
                 ON CONFLICT (wallet_account_id, payee_account_id) DO NOTHING",
                placeholders(chunk.len(), 2, 1)
            );
            let mut query = sqlx::query(&sql);
            for (wallet, payee) in chunk {
                query = query.bind(wallet).bind(payee);
            }
            query.execute(&mut **batch).await?;
        }
        let loads: Vec<_> = self.load_days.iter().collect();
        for chunk in loads.chunks(rows_per_statement(batch, 5)) {
            let sql = format!(
                "INSERT INTO load_days (account_id, local_day, kind, total_minor, load_count)
                 VALUES {} ON CONFLICT (account_id, local_day, kind) DO UPDATE
                 SET total_minor = load_days.total_minor + excluded.total_minor,
                     load_count = load_days.load_count + excluded.load_count",
                placeholders(chunk.len(), 5, 1)
            );
            let mut query = sqlx::query(&sql);
            for ((wallet, day, kind), (total, count)) in chunk {
                query = query
                    .bind(wallet)
                    .bind(*day)
                    .bind(kind)
                    .bind(*total)
                    .bind(*count);
            }
            query.execute(&mut **batch).await?;
        }
        Ok(())
    }
}

/// What the limits read for many wallets at once: their debits of `WALLET_DEBITS`
/// (`crate::products::limits`) today and this month, as [`debits_in_days`] reads them for
/// one, in one statement per chunk of wallets.
pub async fn debits_in_days_many(
    batch: &mut Batch<'_>,
    wallets: &[&AccountId],
    kinds: &[&str],
    now_ms: u64,
) -> Result<HashMap<AccountId, DebitTotals>, StoreError> {
    let calendar = business_calendar();
    let today = calendar.day_number(now_ms);
    let month_first = calendar.month_first_day_number(now_ms);
    let mut totals: HashMap<AccountId, DebitTotals> = HashMap::new();
    for chunk in wallets.chunks(rows_per_statement(batch, 1)) {
        let kinds_in: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 3)).collect();
        let first = 3 + kinds.len();
        let wallets_in: Vec<String> = (0..chunk.len())
            .map(|i| format!("${}", first + i))
            .collect();
        let sql = format!(
            "SELECT account_id, local_day, total_minor FROM debit_days
             WHERE local_day >= $1 AND local_day <= $2 AND kind IN ({}) AND account_id IN ({})",
            kinds_in.join(", "),
            wallets_in.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(month_first).bind(today);
        for kind in kinds {
            query = query.bind(*kind);
        }
        for wallet in chunk {
            totals.insert((*wallet).clone(), DebitTotals::default());
            query = query.bind(wallet.as_str());
        }
        for row in query.fetch_all(&mut **batch).await? {
            let wallet = super::parse_account(&row.try_get::<String, _>("account_id")?)?;
            let day: i64 = row.try_get("local_day")?;
            let total: i64 = row.try_get("total_minor")?;
            let entry = totals.entry(wallet).or_default();
            entry.this_month_minor = entry.this_month_minor.saturating_add(total);
            if day == today {
                entry.today_minor = entry.today_minor.saturating_add(total);
            }
        }
    }
    Ok(totals)
}

/// Transfer kinds that load a wallet (money in from outside the wallet system), counted per
/// local day in `load_days` for the KYC tier's monthly load limit. Refunds and P2P credits
/// are not loads.
pub const LOADS: [&str; 2] = ["cash_in", "funding"];

pub(super) fn is_load(kind: &str) -> bool {
    LOADS.contains(&kind)
}

/// Counts one wallet load.
pub(super) async fn count_wallet_load(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    kind: &str,
    amount_minor: i64,
    now_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO load_days (account_id, local_day, kind, total_minor, load_count)
         VALUES ($1, $2, $3, $4, 1)
         ON CONFLICT (account_id, local_day, kind) DO UPDATE
         SET total_minor = load_days.total_minor + excluded.total_minor,
             load_count = load_days.load_count + 1",
    )
    .bind(wallet.as_str())
    .bind(business_calendar().day_number(now_ms))
    .bind(kind)
    .bind(amount_minor)
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// What the wallet was loaded with ([`LOADS`]) today and this month (business calendar).
pub async fn loads_in_days(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    now_ms: u64,
) -> Result<DebitTotals, StoreError> {
    let calendar = business_calendar();
    let today = calendar.day_number(now_ms);
    let rows = sqlx::query(
        "SELECT local_day, total_minor FROM load_days
         WHERE account_id = $1 AND local_day >= $2 AND local_day <= $3",
    )
    .bind(wallet.as_str())
    .bind(calendar.month_first_day_number(now_ms))
    .bind(today)
    .fetch_all(&mut **batch)
    .await?;
    let mut totals = DebitTotals::default();
    for row in rows {
        let day: i64 = row.try_get("local_day")?;
        let total: i64 = row.try_get("total_minor")?;
        totals.this_month_minor = totals.this_month_minor.saturating_add(total);
        if day == today {
            totals.today_minor = totals.today_minor.saturating_add(total);
        }
    }
    Ok(totals)
}

/// A wallet's debits of some kinds, from the per-day counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebitTotals {
    pub today_minor: i64,
    pub this_month_minor: i64,
}

/// What `kinds` debited from the wallet today and this month (business calendar): at most
/// 31 counter rows per kind, whatever the wallet's history.
pub async fn debits_in_days(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    kinds: &[&str],
    now_ms: u64,
) -> Result<DebitTotals, StoreError> {
    let calendar = business_calendar();
    let today = calendar.day_number(now_ms);
    let month_first = calendar.month_first_day_number(now_ms);
    let mut totals = DebitTotals::default();
    let kinds_in: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 4)).collect();
    let sql = format!(
        "SELECT local_day, total_minor FROM debit_days
         WHERE account_id = $1 AND local_day >= $2 AND local_day <= $3 AND kind IN ({})",
        kinds_in.join(", ")
    );
    let mut query = sqlx::query(&sql)
        .bind(wallet.as_str())
        .bind(month_first)
        .bind(today);
    for kind in kinds {
        query = query.bind(*kind);
    }
    for row in query.fetch_all(&mut **batch).await? {
        let day: i64 = row.try_get("local_day")?;
        let total: i64 = row.try_get("total_minor")?;
        totals.this_month_minor = totals.this_month_minor.saturating_add(total);
        if day == today {
            totals.today_minor = totals.today_minor.saturating_add(total);
        }
    }
    Ok(totals)
}

/// A strong authentication passed: the spend since it starts again from zero.
pub async fn reset_since_strong_auth(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE wallet_counters SET debited_since_strong_auth_minor = 0 WHERE account_id = $1",
    )
    .bind(wallet.as_str())
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// Makes the per-day counters agree with the business time zone in force: when the ledger's
/// days were counted in another zone (or by the migration, in IST), they are counted again
/// from the postings, in one transaction, before the gateway takes a request. Returns whether
/// a recount was made.
pub async fn align_calendar(
    store: &crate::store::Store,
    utc_offset_minutes: i32,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_batch().await?;
    let kept: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(utc_offset_minutes AS BIGINT) FROM ledger_calendar WHERE id = 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let wanted = i64::from(utc_offset_minutes);
    if kept == Some(wanted) {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query("DELETE FROM debit_days")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO debit_days (account_id, local_day, kind, total_minor, debit_count)
         SELECT p.account_id, (t.created_at_ms + $1) / 86400000, t.kind, SUM(-p.amount_minor), COUNT(*)
         FROM postings p JOIN transfers t ON t.tx_id = p.tx_id
         JOIN accounts a ON a.account_id = p.account_id
         WHERE a.kind = 'wallet' AND p.amount_minor < 0
         GROUP BY 1, 2, 3",
    )
    .bind(wanted * 60_000)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM load_days")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO load_days (account_id, local_day, kind, total_minor, load_count)
         SELECT p.account_id, (t.created_at_ms + $1) / 86400000, t.kind, SUM(p.amount_minor), COUNT(*)
         FROM postings p JOIN transfers t ON t.tx_id = p.tx_id
         JOIN accounts a ON a.account_id = p.account_id
         WHERE a.kind = 'wallet' AND p.amount_minor > 0 AND t.kind IN ('cash_in', 'funding')
         GROUP BY 1, 2, 3",
    )
    .bind(wanted * 60_000)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger_calendar (id, utc_offset_minutes) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET utc_offset_minutes = excluded.utc_offset_minutes",
    )
    .bind(utc_offset_minutes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
