//! Reports on the ledger's health: the trial balance, balances against postings, and
//! shards below zero; and the [`Store`] operations that open, fund and read accounts.

use super::{parse_account, AccountKind, NewAccount};
use crate::store::{Batch, Store, StoreError};
use paygate_core::{AccountId, Currency};
use sqlx::Row;

/// The ledger's health per unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialBalance {
    pub currency: String,
    /// Sum of all balances (zero when the books balance).
    pub balance_sum_minor: i128,
    /// Sum of all postings (equal to the balances when no update was lost).
    pub posting_sum_minor: i128,
    /// Transfers whose legs in this unit do not sum to zero.
    pub unbalanced_transfers: i64,
}

/// Per unit: the sum of balances, the sum of postings, and transfers that do not balance.
/// Sums are taken in `i128`, so the check itself cannot overflow.
pub async fn trial_balance(batch: &mut Batch<'_>) -> Result<Vec<TrialBalance>, StoreError> {
    let mut out: Vec<TrialBalance> = Vec::new();
    let entry = |out: &mut Vec<TrialBalance>, currency: String| -> usize {
        match out.iter().position(|t| t.currency == currency) {
            Some(i) => i,
            None => {
                out.push(TrialBalance {
                    currency,
                    balance_sum_minor: 0,
                    posting_sum_minor: 0,
                    unbalanced_transfers: 0,
                });
                out.len() - 1
            }
        }
    };
    let shards = sqlx::query(
        "SELECT a.currency AS currency, s.balance_minor AS amount FROM balance_shards s
         JOIN accounts a ON a.account_id = s.account_id",
    )
    .fetch_all(&mut **batch)
    .await?;
    for row in shards {
        let i = entry(&mut out, row.try_get("currency")?);
        out[i].balance_sum_minor += i128::from(row.try_get::<i64, _>("amount")?);
    }
    let postings = sqlx::query("SELECT tx_id, currency, amount_minor FROM postings ORDER BY tx_id")
        .fetch_all(&mut **batch)
        .await?;
    let mut per_tx: Vec<(String, String, i128)> = Vec::new();
    for row in postings {
        let tx: String = row.try_get("tx_id")?;
        let currency: String = row.try_get("currency")?;
        let amount = i128::from(row.try_get::<i64, _>("amount_minor")?);
        let i = entry(&mut out, currency.clone());
        out[i].posting_sum_minor += amount;
        match per_tx
            .iter_mut()
            .rev()
            .find(|(t, c, _)| *t == tx && *c == currency)
        {
            Some((_, _, sum)) => *sum += amount,
            None => per_tx.push((tx, currency, amount)),
        }
    }
    for (_, currency, sum) in per_tx {
        if sum != 0 {
            let i = entry(&mut out, currency);
            out[i].unbalanced_transfers += 1;
        }
    }
    out.sort_by(|a, b| a.currency.cmp(&b.currency));
    Ok(out)
}

/// Accounts whose balance is not the sum of their postings (a lost or doubled update).
pub async fn accounts_off_their_postings(batch: &mut Batch<'_>) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query("SELECT account_id FROM accounts ORDER BY account_id")
        .fetch_all(&mut **batch)
        .await?;
    let mut off = Vec::new();
    for row in rows {
        let id: String = row.try_get("account_id")?;
        let account_id = parse_account(&id)?;
        let balance = super::balance(batch, &account_id).await?.unwrap_or(0);
        let postings = sqlx::query("SELECT amount_minor FROM postings WHERE account_id = $1")
            .bind(id.as_str())
            .fetch_all(&mut **batch)
            .await?;
        let mut sum: i128 = 0;
        for p in postings {
            sum += i128::from(p.try_get::<i64, _>("amount_minor")?);
        }
        if sum != i128::from(balance) {
            off.push(id);
        }
    }
    Ok(off)
}

/// Shards below zero in accounts that forbid it (the schema's CHECK makes this empty; the
/// test suites ask anyway).
pub async fn forbidden_negative_shards(batch: &mut Batch<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM balance_shards WHERE negative_allowed = 0 AND balance_minor < 0",
    )
    .fetch_one(&mut **batch)
    .await?)
}

impl Store {
    /// Opens an account with the defaults of its kind (a wallet is full-KYC); see
    /// [`super::open_account`] for the rest.
    pub async fn open_account(
        &self,
        account: &AccountId,
        kind: AccountKind,
        currency: Currency,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.open_with(
            &NewAccount {
                account_id: account.clone(),
                kind,
                unit: currency.code().to_owned(),
                kyc_tier: None,
                category: None,
                owner: None,
            },
            now_ms,
        )
        .await
    }

    pub async fn open_with(&self, account: &NewAccount, now_ms: u64) -> Result<(), StoreError> {
        let mut batch = self.begin_batch().await?;
        super::open_account(&mut batch, account, now_ms).await?;
        batch.commit().await?;
        Ok(())
    }

    pub async fn balance(&self, account: &AccountId) -> Result<Option<i64>, StoreError> {
        let mut conn = self.begin_snapshot().await?;
        let balance = super::balance(&mut conn, account).await?;
        conn.rollback().await?;
        Ok(balance)
    }

    /// Per unit: sum of balances, sum of postings, and transfers whose legs do not sum to
    /// zero. Books balance when the first two are zero and equal and the third is zero.
    pub async fn trial_balance(&self) -> Result<Vec<TrialBalance>, StoreError> {
        let mut conn = self.begin_snapshot().await?;
        let trial = trial_balance(&mut conn).await?;
        conn.rollback().await?;
        Ok(trial)
    }

    /// Every balance equals the sum of its account's postings (no lost update).
    pub async fn balances_match_postings(&self) -> Result<bool, StoreError> {
        let mut conn = self.begin_snapshot().await?;
        let off = accounts_off_their_postings(&mut conn).await?;
        conn.rollback().await?;
        Ok(off.is_empty())
    }
}
