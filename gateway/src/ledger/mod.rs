//! The double-entry ledger: accounts, transfers made of balanced legs, and balances that can
//! never go negative where the account forbids it.
//!
//! Every operation runs inside a caller's [`Batch`] (the pipeline's group-commit transaction,
//! or one of its own), on SQLite or PostgreSQL alike. Correctness under concurrency does not
//! rest on reading a balance and writing it back: every balance change is one conditional
//! `UPDATE ... WHERE balance_minor >= bound` that the database applies atomically against the
//! row's current value, so two payments from one wallet cannot both spend the same money and
//! no update is lost, whatever the isolation level. Rows are locked in one global order
//! (account id, then shard) so two transfers never wait on each other in a cycle.
//!
//! Hot accounts (merchants, settlement, fees, liabilities) keep their balance in several
//! shards: a credit lands on a random shard, so concurrent payments to one merchant do not
//! queue on one row. A debit of a sharded account that may not go negative locks all its
//! shards and draws from them largest first, so no shard goes below zero either.

use crate::store::{Batch, StoreError};

mod bulk;
mod counters;
mod report;
pub use bulk::{post_many, Snapshot};
pub use counters::{
    align_calendar, debits_in_days, debits_in_days_many, loads_in_days, reset_since_strong_auth,
    DebitTotals, LOADS,
};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, TxId};
pub use report::{
    accounts_off_their_postings, forbidden_negative_shards, trial_balance, TrialBalance,
};
use sqlx::{Acquire, Row};

/// The largest balance one shard may hold, in either direction: the sum of up to 256 shards,
/// and of any two such sums, still fits an `i64`. Past it a posting is refused with
/// `AMOUNT_OVERFLOW`.
pub const SHARD_BALANCE_LIMIT: i64 = i64::MAX >> 8;

/// Shards of a hot account.
pub const HOT_ACCOUNT_SHARDS: i64 = 8;

/// The unit reward points are counted in (a whole point is one unit).
pub const POINTS: &str = "PTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// A customer's stored-value wallet (has a KYC tier).
    Wallet,
    Merchant,
    /// A cash-in/cash-out agent's float: e-money the agent sells and buys for cash.
    Agent,
    /// The issuer's e-money liability: the counterpart of funding, may go negative.
    Issuance,
    /// The clearing account with the UPI network, may go negative.
    Settlement,
    /// Fees earned.
    Fee,
    /// A customer's reward points (unit `PTS`), owned by a wallet.
    Points,
    /// The programme's outstanding points (negative: points owed to customers).
    PointsLiability,
    /// Money the rewards programme pays merchants for points redeemed as tender.
    RewardsFunding,
    /// Refund money a wallet could not take (its KYC balance cap), owed back to the customer's
    /// source of funds: paid out by operations, never spent by a terminal.
    RefundsPayable,
}

impl AccountKind {
    pub const ALL: [AccountKind; 10] = [
        AccountKind::Wallet,
        AccountKind::Merchant,
        AccountKind::Agent,
        AccountKind::Issuance,
        AccountKind::Settlement,
        AccountKind::Fee,
        AccountKind::Points,
        AccountKind::PointsLiability,
        AccountKind::RewardsFunding,
        AccountKind::RefundsPayable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Wallet => "wallet",
            AccountKind::Merchant => "merchant",
            AccountKind::Agent => "agent",
            AccountKind::Issuance => "issuance",
            AccountKind::Settlement => "settlement",
            AccountKind::Fee => "fee",
            AccountKind::Points => "points",
            AccountKind::PointsLiability => "points_liability",
            AccountKind::RewardsFunding => "rewards_funding",
            AccountKind::RefundsPayable => "refunds_payable",
        }
    }

    pub fn parse(name: &str) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Accounts on the issuer's side of the books may go below zero; customers' and
    /// merchants' may not.
    pub fn negative_allowed(self) -> bool {
        matches!(
            self,
            AccountKind::Issuance
                | AccountKind::Settlement
                | AccountKind::PointsLiability
                | AccountKind::RewardsFunding
        )
    }

    fn shards(self) -> i64 {
        match self {
            AccountKind::Wallet | AccountKind::Agent | AccountKind::Points => 1,
            _ => HOT_ACCOUNT_SHARDS,
        }
    }

    /// The code a request naming a missing account of this kind is refused with.
    pub fn unknown_code(self) -> ErrorCode {
        match self {
            AccountKind::Merchant | AccountKind::Agent => ErrorCode::UnknownMerchant,
            _ => ErrorCode::UnknownWallet,
        }
    }
}

/// A wallet's know-your-customer tier (RBI prepaid instruments): it sets the balance cap and
/// the limits per transaction, day and month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KycTier {
    /// Minimum-KYC ("small") wallet.
    Min,
    /// Full-KYC wallet.
    Full,
}

impl KycTier {
    pub fn as_str(self) -> &'static str {
        match self {
            KycTier::Min => "min",
            KycTier::Full => "full",
        }
    }

    pub fn parse(name: &str) -> Option<KycTier> {
        match name {
            "min" => Some(KycTier::Min),
            "full" => Some(KycTier::Full),
            _ => None,
        }
    }
}

/// What opening an account needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub account_id: AccountId,
    pub kind: AccountKind,
    /// An ISO 4217 code, or [`POINTS`].
    pub unit: String,
    /// Wallets only (a wallet without one is opened full-KYC).
    pub kyc_tier: Option<KycTier>,
    /// Merchants only: the category reward rules and risk rules match on.
    pub category: Option<String>,
    /// Points accounts: the wallet they belong to.
    pub owner: Option<AccountId>,
}

/// An account as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: AccountId,
    pub kind: AccountKind,
    pub unit: String,
    pub kyc_tier: Option<KycTier>,
    pub category: Option<String>,
    pub owner: Option<AccountId>,
    pub active: bool,
    shards: i64,
    negative_allowed: bool,
}

/// Opens an account and its balance shards; opening an existing id again changes nothing.
pub async fn open_account(
    batch: &mut Batch<'_>,
    account: &NewAccount,
    now_ms: u64,
) -> Result<(), StoreError> {
    let kind = account.kind;
    let tier = match kind {
        AccountKind::Wallet => Some(account.kyc_tier.unwrap_or(KycTier::Full)),
        _ => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO accounts (account_id, kind, currency, negative_allowed, shards, kyc_tier,
                               category, owner_account_id, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account.account_id.as_str())
    .bind(kind.as_str())
    .bind(account.unit.as_str())
    .bind(i64::from(kind.negative_allowed()))
    .bind(kind.shards())
    .bind(tier.map(KycTier::as_str))
    .bind(account.category.as_deref())
    .bind(account.owner.as_ref().map(AccountId::as_str))
    .bind(ms(now_ms))
    .execute(&mut **batch)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    for shard in 0..kind.shards() {
        sqlx::query(
            "INSERT INTO balance_shards (account_id, shard, balance_minor, negative_allowed)
             VALUES ($1, $2, 0, $3)",
        )
        .bind(account.account_id.as_str())
        .bind(shard)
        .bind(i64::from(kind.negative_allowed()))
        .execute(&mut **batch)
        .await?;
    }
    Ok(())
}

/// Changes a wallet's KYC tier (after the holder completes full KYC, say).
pub async fn set_kyc_tier(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    tier: KycTier,
) -> Result<(), StoreError> {
    let changed =
        sqlx::query("UPDATE accounts SET kyc_tier = $1 WHERE account_id = $2 AND kind = 'wallet'")
            .bind(tier.as_str())
            .bind(wallet.as_str())
            .execute(&mut **batch)
            .await?
            .rows_affected();
    if changed == 0 {
        return Err(StoreError::Refused(ErrorCode::UnknownWallet));
    }
    Ok(())
}

pub async fn account(
    batch: &mut Batch<'_>,
    account_id: &AccountId,
) -> Result<Option<Account>, StoreError> {
    let row = sqlx::query(
        "SELECT kind, currency, negative_allowed, shards, kyc_tier, category, owner_account_id, status
         FROM accounts WHERE account_id = $1",
    )
    .bind(account_id.as_str())
    .fetch_optional(&mut **batch)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let kind: String = row.try_get("kind")?;
    let tier: Option<String> = row.try_get("kyc_tier")?;
    let owner: Option<String> = row.try_get("owner_account_id")?;
    let status: String = row.try_get("status")?;
    let negative_allowed: i64 = row.try_get("negative_allowed")?;
    Ok(Some(Account {
        account_id: account_id.clone(),
        kind: AccountKind::parse(&kind)
            .ok_or_else(|| StoreError::Invariant(format!("account kind {kind}")))?,
        unit: row.try_get("currency")?,
        kyc_tier: tier.as_deref().and_then(KycTier::parse),
        category: row.try_get("category")?,
        owner: owner.map(|o| parse_account(&o)).transpose()?,
        active: status == "active",
        shards: row.try_get("shards")?,
        negative_allowed: negative_allowed == 1,
    }))
}

/// An account's balance (the sum of its shards), `None` if there is no such account.
pub async fn balance(
    batch: &mut Batch<'_>,
    account_id: &AccountId,
) -> Result<Option<i64>, StoreError> {
    let rows = sqlx::query("SELECT balance_minor FROM balance_shards WHERE account_id = $1")
        .bind(account_id.as_str())
        .fetch_all(&mut **batch)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut sum: i64 = 0;
    for row in rows {
        let shard: i64 = row.try_get("balance_minor")?;
        sum = sum
            .checked_add(shard)
            .ok_or_else(|| StoreError::Invariant(format!("{account_id} balance overflows")))?;
    }
    Ok(Some(sum))
}

/// One leg of a transfer: a signed amount (credit positive, debit negative) on an account
/// that must be of the expected kind and unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub account: AccountId,
    pub expect: AccountKind,
    pub unit: String,
    pub amount: i64,
    /// For credits: the balance the account may not exceed (a wallet's KYC balance cap).
    /// Refused with `LIMIT_EXCEEDED`.
    pub credit_cap: Option<i64>,
}

impl Leg {
    pub fn debit(account: &AccountId, expect: AccountKind, unit: &str, amount: i64) -> Leg {
        Leg {
            account: account.clone(),
            expect,
            unit: unit.to_owned(),
            amount: amount.saturating_neg(),
            credit_cap: None,
        }
    }

    pub fn credit(account: &AccountId, expect: AccountKind, unit: &str, amount: i64) -> Leg {
        Leg {
            account: account.clone(),
            expect,
            unit: unit.to_owned(),
            amount,
            credit_cap: None,
        }
    }

    pub fn capped(mut self, cap: Option<i64>) -> Leg {
        self.credit_cap = cap;
        self
    }
}

/// A transfer to post: its kind (`merchant_payment`, `p2p`, `cash_in`, ...), the request that
/// caused it, the transfer it corrects (refund, reversal, clawback), and its legs.
#[derive(Debug, Clone)]
pub struct NewTransfer<'a> {
    pub tx_id: &'a TxId,
    pub kind: &'a str,
    pub origin: Option<(&'a DeviceId, &'a IdempotencyKey)>,
    pub related: Option<&'a TxId>,
    pub legs: Vec<Leg>,
    pub now_ms: u64,
}

/// Posts a transfer inside the batch, in a savepoint: a refusal leaves nothing written.
///
/// Refusals (`StoreError::Refused`): an account missing, closed or of the wrong kind
/// (`UNKNOWN_WALLET`, `UNKNOWN_MERCHANT`), a unit that is not the account's
/// (`CURRENCY_MISMATCH`), one account on two legs (`TRANSFER_TO_SELF`), a debit past zero
/// where forbidden (`INSUFFICIENT_FUNDS`), a credit past a cap (`LIMIT_EXCEEDED`), a balance
/// or amount past [`SHARD_BALANCE_LIMIT`] (`AMOUNT_OVERFLOW`). A second transfer for the same
/// device and idempotency key is `StoreError::AlreadyPosted`. Legs that do not balance per
/// unit are a caller's bug (`StoreError::Invariant`).
pub async fn post(batch: &mut Batch<'_>, transfer: &NewTransfer<'_>) -> Result<(), StoreError> {
    let legs = checked_legs(&transfer.legs)?;
    let (headline_unit, headline_minor) = headline(&transfer.legs)?;
    let mut savepoint = batch.begin().await?;
    let postgres = savepoint.backend_name() == "PostgreSQL";

    let (device, key) = match transfer.origin {
        Some((device, key)) => (Some(device.as_str()), Some(key.as_str())),
        None => (None, None),
    };
    let inserted = sqlx::query(
        "INSERT INTO transfers (tx_id, kind, device_id, idempotency_key, currency, amount_minor,
                                created_at_ms, related_tx_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(transfer.tx_id.as_str())
    .bind(transfer.kind)
    .bind(device)
    .bind(key)
    .bind(headline_unit)
    .bind(headline_minor)
    .bind(ms(transfer.now_ms))
    .bind(transfer.related.map(TxId::as_str))
    .execute(&mut *savepoint)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(StoreError::AlreadyPosted)
        }
        Err(other) => return Err(other.into()),
    }

    for leg in &legs {
        let account = account(&mut savepoint, &leg.account)
            .await?
            .filter(|a| a.active && a.kind == leg.expect)
            .ok_or(StoreError::Refused(leg.expect.unknown_code()))?;
        if account.unit != leg.unit {
            return Err(StoreError::Refused(ErrorCode::CurrencyMismatch));
        }
        if leg.amount > 0 {
            credit(&mut savepoint, &account, leg).await?;
        } else {
            debit(
                &mut savepoint,
                &account,
                leg.amount.saturating_neg(),
                postgres,
            )
            .await?;
        }
        sqlx::query(
            "INSERT INTO postings (tx_id, account_id, currency, amount_minor) VALUES ($1, $2, $3, $4)",
        )
        .bind(transfer.tx_id.as_str())
        .bind(leg.account.as_str())
        .bind(leg.unit.as_str())
        .bind(leg.amount)
        .execute(&mut *savepoint)
        .await?;
        if account.kind == AccountKind::Wallet && leg.amount > 0 && counters::is_load(transfer.kind)
        {
            counters::count_wallet_load(
                &mut savepoint,
                &account.account_id,
                transfer.kind,
                leg.amount,
                transfer.now_ms,
            )
            .await?;
        }
        if account.kind == AccountKind::Wallet && leg.amount < 0 {
            let credited: Vec<&AccountId> = legs
                .iter()
                .filter(|other| other.amount > 0)
                .map(|other| &other.account)
                .collect();
            counters::count_wallet_debit(
                &mut savepoint,
                &account.account_id,
                transfer.kind,
                leg.amount.saturating_neg(),
                transfer.tx_id,
                &credited,
                transfer.now_ms,
            )
            .await?;
        }
    }
    read_back(&mut savepoint, transfer.tx_id, &legs).await?;
    savepoint.commit().await?;
    Ok(())
}

/// A transfer's headline, as its row names it: the unit and the sum of its debits in money.
/// The money unit is the first unit other than [`POINTS`] in the caller's leg order (points
/// only, for a transfer that moves nothing else), so a payment tendered partly or wholly in
/// points is headed by what it cost in money and points, never by the points.
fn headline(legs: &[Leg]) -> Result<(&str, i64), StoreError> {
    let unit = legs
        .iter()
        .map(|leg| leg.unit.as_str())
        .find(|unit| *unit != POINTS)
        .or_else(|| legs.first().map(|leg| leg.unit.as_str()))
        .ok_or_else(|| StoreError::Invariant("a transfer without legs".into()))?;
    let debited: i128 = legs
        .iter()
        .filter(|leg| leg.unit == unit && leg.amount < 0)
        .map(|leg| -i128::from(leg.amount))
        .sum();
    if debited == 0 {
        return Err(StoreError::Invariant("a transfer without a debit".into()));
    }
    let debited =
        i64::try_from(debited).map_err(|_| StoreError::Refused(ErrorCode::AmountOverflow))?;
    Ok((unit, debited))
}

/// The assertion after the write: the postings read back are the legs checked before it,
/// each unit summing to zero. A mismatch is a broken invariant: the savepoint is dropped
/// (nothing of this transfer stays) and the caller refuses the one request with an alert.
async fn read_back(batch: &mut Batch<'_>, tx_id: &TxId, legs: &[Leg]) -> Result<(), StoreError> {
    let rows =
        sqlx::query("SELECT account_id, currency, amount_minor FROM postings WHERE tx_id = $1")
            .bind(tx_id.as_str())
            .fetch_all(&mut **batch)
            .await?;
    let mut read = Vec::with_capacity(rows.len());
    for row in rows {
        read.push((
            row.try_get::<String, _>("account_id")?,
            row.try_get::<String, _>("currency")?,
            row.try_get::<i64, _>("amount_minor")?,
        ));
    }
    // compared in one order chosen here, not the database's collation
    read.sort();
    let mut expected: Vec<(String, String, i64)> = legs
        .iter()
        .map(|leg| (leg.account.to_string(), leg.unit.clone(), leg.amount))
        .collect();
    expected.sort();
    if read != expected {
        return Err(StoreError::Invariant(format!(
            "{tx_id}: postings read back ({}) are not the legs posted ({})",
            read.len(),
            expected.len()
        )));
    }
    Ok(())
}

/// The legs in lock order, after the checks that need no database: amounts within limits,
/// each account once, each unit's legs summing to zero.
fn checked_legs(legs: &[Leg]) -> Result<Vec<Leg>, StoreError> {
    if legs.len() < 2 {
        return Err(StoreError::Invariant("a transfer needs two legs".into()));
    }
    let mut sorted = legs.to_vec();
    sorted.sort_by(|a, b| a.account.as_str().cmp(b.account.as_str()));
    if sorted.windows(2).any(|w| w[0].account == w[1].account) {
        return Err(StoreError::Refused(ErrorCode::TransferToSelf));
    }
    let mut sums: Vec<(&str, i128)> = Vec::new();
    for leg in &sorted {
        if leg.amount == 0 {
            return Err(StoreError::Invariant("a leg of zero".into()));
        }
        if leg.amount.unsigned_abs() > SHARD_BALANCE_LIMIT.unsigned_abs() {
            return Err(StoreError::Refused(ErrorCode::AmountOverflow));
        }
        match sums.iter_mut().find(|(unit, _)| *unit == leg.unit) {
            Some((_, sum)) => *sum += i128::from(leg.amount),
            None => sums.push((&leg.unit, i128::from(leg.amount))),
        }
    }
    if let Some((unit, sum)) = sums.iter().find(|(_, sum)| *sum != 0) {
        return Err(StoreError::Invariant(format!(
            "legs in {unit} sum to {sum}, not zero"
        )));
    }
    Ok(sorted)
}

async fn credit(batch: &mut Batch<'_>, account: &Account, leg: &Leg) -> Result<(), StoreError> {
    if leg.credit_cap.is_some() && account.shards != 1 {
        return Err(StoreError::Invariant(format!(
            "a balance cap on sharded account {}",
            account.account_id
        )));
    }
    let shard = if account.shards == 1 {
        0
    } else {
        rand::Rng::gen_range(&mut rand::thread_rng(), 0..account.shards)
    };
    let ceiling = leg
        .credit_cap
        .map_or(SHARD_BALANCE_LIMIT, |cap| cap.min(SHARD_BALANCE_LIMIT));
    let applied = sqlx::query(
        "UPDATE balance_shards SET balance_minor = balance_minor + $1
         WHERE account_id = $2 AND shard = $3 AND balance_minor <= $4",
    )
    .bind(leg.amount)
    .bind(account.account_id.as_str())
    .bind(shard)
    .bind(ceiling.saturating_sub(leg.amount))
    .execute(&mut **batch)
    .await?
    .rows_affected();
    if applied == 1 {
        return Ok(());
    }
    let current: i64 = sqlx::query_scalar(
        "SELECT balance_minor FROM balance_shards WHERE account_id = $1 AND shard = $2",
    )
    .bind(account.account_id.as_str())
    .bind(shard)
    .fetch_one(&mut **batch)
    .await?;
    let past_cap = leg
        .credit_cap
        .is_some_and(|cap| i128::from(current) + i128::from(leg.amount) > i128::from(cap));
    Err(StoreError::Refused(if past_cap {
        ErrorCode::LimitExceeded
    } else {
        ErrorCode::AmountOverflow
    }))
}

async fn debit(
    batch: &mut Batch<'_>,
    account: &Account,
    amount: i64,
    postgres: bool,
) -> Result<(), StoreError> {
    let id = account.account_id.as_str();
    if account.negative_allowed || account.shards == 1 {
        let shard = if account.shards == 1 {
            0
        } else {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..account.shards)
        };
        let floor = if account.negative_allowed {
            -SHARD_BALANCE_LIMIT
        } else {
            0
        };
        let applied = sqlx::query(
            "UPDATE balance_shards SET balance_minor = balance_minor - $1
             WHERE account_id = $2 AND shard = $3 AND balance_minor >= $4",
        )
        .bind(amount)
        .bind(id)
        .bind(shard)
        .bind(floor.saturating_add(amount))
        .execute(&mut **batch)
        .await?
        .rows_affected();
        return match applied {
            1 => Ok(()),
            _ if account.negative_allowed => Err(StoreError::Refused(ErrorCode::AmountOverflow)),
            _ => Err(StoreError::Refused(ErrorCode::InsufficientFunds)),
        };
    }
    // a sharded account that may not go negative: lock its shards, draw largest first
    let lock = if postgres {
        "SELECT shard, balance_minor FROM balance_shards WHERE account_id = $1 ORDER BY shard FOR UPDATE"
    } else {
        "SELECT shard, balance_minor FROM balance_shards WHERE account_id = $1 ORDER BY shard"
    };
    let rows = sqlx::query(lock).bind(id).fetch_all(&mut **batch).await?;
    let mut shards = Vec::with_capacity(rows.len());
    for row in rows {
        let shard: i64 = row.try_get("shard")?;
        let balance: i64 = row.try_get("balance_minor")?;
        shards.push((shard, balance));
    }
    let total: i128 = shards.iter().map(|(_, b)| i128::from(*b)).sum();
    if total < i128::from(amount) {
        return Err(StoreError::Refused(ErrorCode::InsufficientFunds));
    }
    shards.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut left = amount;
    for (shard, balance) in shards {
        if left == 0 {
            break;
        }
        let take = left.min(balance);
        if take <= 0 {
            continue;
        }
        sqlx::query(
            "UPDATE balance_shards SET balance_minor = balance_minor - $1 WHERE account_id = $2 AND shard = $3",
        )
        .bind(take)
        .bind(id)
        .bind(shard)
        .execute(&mut **batch)
        .await?;
        left -= take;
    }
    if left != 0 {
        return Err(StoreError::Invariant(format!(
            "{id}: shards covered the total but {left} was left to draw"
        )));
    }
    Ok(())
}

/// Takes the row lock of a single-shard account (a wallet) for the rest of the transaction,
/// so limit checks that read its history (daily, monthly totals) cannot race another
/// transaction for the same wallet on PostgreSQL. SQLite's write transactions are serial.
pub async fn lock_account(batch: &mut Batch<'_>, account_id: &AccountId) -> Result<(), StoreError> {
    if batch.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT balance_minor FROM balance_shards WHERE account_id = $1 ORDER BY shard FOR UPDATE")
            .bind(account_id.as_str())
            .fetch_all(&mut **batch)
            .await?;
    }
    Ok(())
}

pub(crate) fn parse_account(id: &str) -> Result<AccountId, StoreError> {
    AccountId::parse(id).map_err(|e| StoreError::Invariant(format!("account id {id}: {e}")))
}

pub(crate) fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
