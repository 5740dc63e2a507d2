//! The ledger and request store on SQLite (sqlx, WAL, synchronous=FULL).
//!
//! Writes happen in [`Store::begin_batch`] transactions owned by the pipeline: one database
//! transaction per batch of requests (group commit), one savepoint per request so a failure
//! rolls back that request alone. PostgreSQL joins behind the same operations in the ledger
//! issue; until there are two backends there is no trait.

use paygate_core::audit::AuditEvent;
use paygate_core::envelope::{SigningAlgorithm, VerifyingKey};
use paygate_core::{AccountId, Currency, DeviceId, ErrorCode, IdempotencyKey, Money, TxId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Acquire, Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Refused(ErrorCode),
    #[error("ledger invariant broken: {0}")]
    Invariant(String),
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: DeviceId,
    pub key: VerifyingKey,
    pub wallet: AccountId,
    pub active: bool,
}

/// What the store holds for a decided request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedRequest {
    pub body_sha256: Vec<u8>,
    pub receipt: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Wallet,
    Merchant,
    /// The issuer's e-money liability: the counterpart of funding, may go negative.
    Issuance,
}

impl AccountKind {
    fn as_str(self) -> &'static str {
        match self {
            AccountKind::Wallet => "wallet",
            AccountKind::Merchant => "merchant",
            AccountKind::Issuance => "issuance",
        }
    }
}

/// A balance per currency and the total of all balances in it (zero when the books balance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialBalance {
    pub currency: String,
    pub balance_sum_minor: i64,
    pub posting_sum_minor: i64,
    pub unbalanced_transfers: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

pub type Batch<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

impl Store {
    /// Opens (creating if missing) and migrates the database.
    pub async fn open(url: &str, connections_max: u32) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(connections_max)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Store { pool })
    }

    pub async fn open_account(
        &self,
        account: &AccountId,
        kind: AccountKind,
        currency: Currency,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (account_id, kind, currency, negative_allowed, created_at_ms)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(account.as_str())
        .bind(kind.as_str())
        .bind(currency.code())
        .bind(i64::from(kind == AccountKind::Issuance))
        .bind(ms(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enrols (or re-keys) a device; its wallet account must exist.
    pub async fn enrol_device(&self, device: &Device, now_ms: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (device_id, algorithm, public_key, wallet_account_id, status, enrolled_at_ms)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (device_id) DO UPDATE SET algorithm = excluded.algorithm,
               public_key = excluded.public_key, wallet_account_id = excluded.wallet_account_id,
               status = excluded.status",
        )
        .bind(device.device_id.as_str())
        .bind(device.key.algorithm.name())
        .bind(&device.key.public_key)
        .bind(device.wallet.as_str())
        .bind(if device.active { "active" } else { "suspended" })
        .bind(ms(now_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn device(&self, device: &DeviceId) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query("SELECT algorithm, public_key, wallet_account_id, status FROM devices WHERE device_id = ?")
            .bind(device.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let algorithm: String = row.try_get("algorithm")?;
        let wallet: String = row.try_get("wallet_account_id")?;
        let status: String = row.try_get("status")?;
        Ok(Some(Device {
            device_id: device.clone(),
            key: VerifyingKey {
                algorithm: SigningAlgorithm::parse(&algorithm).ok_or_else(|| {
                    StoreError::Invariant(format!("device {device} has algorithm {algorithm}"))
                })?,
                public_key: row.try_get("public_key")?,
            },
            wallet: AccountId::parse(&wallet).map_err(|e| StoreError::Invariant(e.to_string()))?,
            active: status == "active",
        }))
    }

    pub async fn balance(&self, account: &AccountId) -> Result<Option<i64>, StoreError> {
        let balance = sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE account_id = ?")
            .bind(account.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(balance)
    }

    /// Funds a wallet from the issuance account (operator action for development and the demo;
    /// cash-in at an agent terminal comes with the ledger issue).
    pub async fn fund_wallet(
        &self,
        wallet: &AccountId,
        amount: Money,
        now_ms: u64,
    ) -> Result<TxId, StoreError> {
        let issuance = AccountId::parse(&format!(
            "issuance-{}",
            amount.currency.code().to_lowercase()
        ))
        .map_err(|e| StoreError::Invariant(e.to_string()))?;
        self.open_account(&issuance, AccountKind::Issuance, amount.currency, now_ms)
            .await?;
        let mut batch = self.begin_batch().await?;
        let tx_id = new_tx_id();
        post_transfer(
            &mut batch,
            &tx_id,
            "funding",
            None,
            &issuance,
            wallet,
            AccountKind::Wallet,
            amount,
            now_ms,
        )
        .await?;
        batch.commit().await?;
        Ok(tx_id)
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock up front, so two
    /// writers queue on the busy timeout instead of one failing with "database is locked" when
    /// its read transaction tries to become a write.
    pub async fn begin_batch(&self) -> Result<Batch<'static>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Per currency: sum of balances, sum of postings, and transfers whose legs do not sum to
    /// zero. Books balance when the first two are zero and equal and the third is zero.
    pub async fn trial_balance(&self) -> Result<Vec<TrialBalance>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.currency AS currency,
                    (SELECT COALESCE(SUM(balance_minor), 0) FROM accounts b WHERE b.currency = a.currency) AS balances,
                    (SELECT COALESCE(SUM(amount_minor), 0) FROM postings p WHERE p.currency = a.currency) AS postings,
                    (SELECT COUNT(*) FROM (SELECT tx_id FROM postings p WHERE p.currency = a.currency
                        GROUP BY tx_id HAVING SUM(amount_minor) <> 0)) AS unbalanced
             FROM accounts a GROUP BY a.currency ORDER BY a.currency",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TrialBalance {
                    currency: row.try_get("currency")?,
                    balance_sum_minor: row.try_get("balances")?,
                    posting_sum_minor: row.try_get("postings")?,
                    unbalanced_transfers: row.try_get("unbalanced")?,
                })
            })
            .collect()
    }

    /// Every balance equals the sum of its account's postings (no lost update).
    pub async fn balances_match_postings(&self) -> Result<bool, StoreError> {
        let mismatched: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts a
             WHERE a.balance_minor <> (SELECT COALESCE(SUM(amount_minor), 0) FROM postings p WHERE p.account_id = a.account_id)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(mismatched == 0)
    }

    pub async fn count_transfers(&self, kind: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM transfers WHERE kind = ?")
                .bind(kind)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A fresh transfer id.
pub fn new_tx_id() -> TxId {
    let bytes: [u8; 12] = rand::random();
    // hex of random bytes is always a valid id
    TxId::parse(&format!("tx-{}", hex::encode(bytes))).unwrap_or_else(|_| unreachable_id())
}

#[allow(clippy::panic)]
fn unreachable_id() -> TxId {
    panic!("hex transfer ids are always valid")
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Looks up a decided request inside a batch.
pub async fn find_decided(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    key: &IdempotencyKey,
) -> Result<Option<DecidedRequest>, StoreError> {
    let row = sqlx::query(
        "SELECT body_sha256, receipt FROM requests WHERE device_id = ? AND idempotency_key = ?",
    )
    .bind(device.as_str())
    .bind(key.as_str())
    .fetch_optional(&mut **batch)
    .await?;
    row.map(|row| {
        Ok(DecidedRequest {
            body_sha256: row.try_get("body_sha256")?,
            receipt: row.try_get("receipt")?,
        })
    })
    .transpose()
}

pub async fn counter_used(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    counter: u64,
) -> Result<bool, StoreError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM requests WHERE device_id = ? AND counter = ?")
            .bind(device.as_str())
            .bind(ms(counter))
            .fetch_optional(&mut **batch)
            .await?;
    Ok(found.is_some())
}

/// Posts a two-leg transfer `from` -> `to` inside a batch, with checked arithmetic and the
/// ledger invariants asserted before and after the write. `to` must be an active account of
/// kind `to_kind` (else `UNKNOWN_MERCHANT` or `UNKNOWN_WALLET`). Refusals leave nothing written
/// (the caller rolls back its savepoint).
#[allow(clippy::too_many_arguments)]
pub async fn post_transfer(
    batch: &mut Batch<'_>,
    tx_id: &TxId,
    kind: &str,
    origin: Option<(&DeviceId, &IdempotencyKey)>,
    from: &AccountId,
    to: &AccountId,
    to_kind: AccountKind,
    amount: Money,
    now_ms: u64,
) -> Result<(), StoreError> {
    let currency = amount.currency.code();
    let minor = amount.minor_signed();
    let mut savepoint = batch.begin().await?;
    let from_row = sqlx::query("SELECT currency, balance_minor, negative_allowed FROM accounts WHERE account_id = ? AND status = 'active'")
        .bind(from.as_str())
        .fetch_optional(&mut *savepoint)
        .await?
        .ok_or(StoreError::Refused(ErrorCode::UnknownWallet))?;
    let unknown_payee = StoreError::Refused(match to_kind {
        AccountKind::Merchant => ErrorCode::UnknownMerchant,
        _ => ErrorCode::UnknownWallet,
    });
    let to_row = sqlx::query(
        "SELECT currency, balance_minor FROM accounts WHERE account_id = ? AND kind = ? AND status = 'active'",
    )
    .bind(to.as_str())
    .bind(to_kind.as_str())
    .fetch_optional(&mut *savepoint)
    .await?
    .ok_or(unknown_payee)?;
    let from_currency: String = from_row.try_get("currency")?;
    let to_currency: String = to_row.try_get("currency")?;
    if from_currency != currency || to_currency != currency {
        return Err(StoreError::Refused(ErrorCode::CurrencyMismatch));
    }
    let from_balance: i64 = from_row.try_get("balance_minor")?;
    let negative_allowed: i64 = from_row.try_get("negative_allowed")?;
    let to_balance: i64 = to_row.try_get("balance_minor")?;
    let from_after = from_balance
        .checked_sub(minor)
        .ok_or(StoreError::Refused(ErrorCode::AmountOverflow))?;
    let to_after = to_balance
        .checked_add(minor)
        .ok_or(StoreError::Refused(ErrorCode::AmountOverflow))?;
    if from_after < 0 && negative_allowed == 0 {
        return Err(StoreError::Refused(ErrorCode::InsufficientFunds));
    }
    if from == to {
        return Err(StoreError::Invariant("transfer to the same account".into()));
    }

    let (device, key) = match origin {
        Some((device, key)) => (Some(device.as_str()), Some(key.as_str())),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO transfers (tx_id, kind, device_id, idempotency_key, currency, amount_minor, created_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(tx_id.as_str())
    .bind(kind)
    .bind(device)
    .bind(key)
    .bind(currency)
    .bind(minor)
    .bind(ms(now_ms))
    .execute(&mut *savepoint)
    .await?;
    for (account, leg) in [(from, -minor), (to, minor)] {
        sqlx::query(
            "INSERT INTO postings (tx_id, account_id, currency, amount_minor) VALUES (?, ?, ?, ?)",
        )
        .bind(tx_id.as_str())
        .bind(account.as_str())
        .bind(currency)
        .bind(leg)
        .execute(&mut *savepoint)
        .await?;
        sqlx::query("UPDATE accounts SET balance_minor = balance_minor + ? WHERE account_id = ?")
            .bind(leg)
            .bind(account.as_str())
            .execute(&mut *savepoint)
            .await?;
    }

    // read back: the legs sum to zero and the balances are what we computed
    let leg_sum: i64 =
        sqlx::query_scalar("SELECT COALESCE(SUM(amount_minor), 0) FROM postings WHERE tx_id = ?")
            .bind(tx_id.as_str())
            .fetch_one(&mut *savepoint)
            .await?;
    let from_read: i64 =
        sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE account_id = ?")
            .bind(from.as_str())
            .fetch_one(&mut *savepoint)
            .await?;
    let to_read: i64 =
        sqlx::query_scalar("SELECT balance_minor FROM accounts WHERE account_id = ?")
            .bind(to.as_str())
            .fetch_one(&mut *savepoint)
            .await?;
    if leg_sum != 0 || from_read != from_after || to_read != to_after {
        return Err(StoreError::Invariant(format!(
            "transfer {tx_id}: legs sum to {leg_sum}, balances {from_read}/{to_read} expected {from_after}/{to_after}"
        )));
    }
    savepoint.commit().await?;
    Ok(())
}

/// Records a decided request and its signed receipt.
#[allow(clippy::too_many_arguments)]
pub async fn record_decided(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    key: &IdempotencyKey,
    counter: u64,
    body_sha256: &[u8],
    approved: bool,
    code: Option<ErrorCode>,
    tx_id: Option<&TxId>,
    receipt: &[u8],
    now_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO requests (device_id, idempotency_key, counter, body_sha256, outcome, code, tx_id, receipt, decided_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(device.as_str())
    .bind(key.as_str())
    .bind(ms(counter))
    .bind(body_sha256)
    .bind(if approved { "approved" } else { "declined" })
    .bind(code.map(ErrorCode::as_str))
    .bind(tx_id.map(TxId::as_str))
    .bind(receipt)
    .bind(ms(now_ms))
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// Adds audit events to the outbox inside a batch, so they commit (or roll back) with what
/// they describe.
pub async fn add_audit_events(
    batch: &mut Batch<'_>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    for event in events {
        sqlx::query("INSERT INTO audit_outbox (event_json) VALUES (?)")
            .bind(audit_event_json(event))
            .execute(&mut **batch)
            .await?;
    }
    Ok(())
}

fn audit_event_json(event: &AuditEvent) -> String {
    // serialising a struct of strings and integers cannot fail
    serde_json::to_string(event).unwrap_or_default()
}

impl Store {
    /// Adds one audit event to the outbox in its own transaction (front refusals, operator
    /// commands). The journal writer picks it up within `audit.seal_check_interval_ms`.
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_outbox (event_json) VALUES (?)")
            .bind(audit_event_json(event))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Outbox rows after `outbox_id`, in id order, at most `limit`.
    pub async fn audit_outbox_after(
        &self,
        outbox_id: u64,
        limit: u32,
    ) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT outbox_id, event_json FROM audit_outbox WHERE outbox_id > ? ORDER BY outbox_id LIMIT ?",
        )
        .bind(ms(outbox_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("outbox_id")?;
                let json: String = row.try_get("event_json")?;
                let event = serde_json::from_str(&json).map_err(|e| {
                    StoreError::Invariant(format!("audit outbox row {id} is not an event: {e}"))
                })?;
                let id = u64::try_from(id).map_err(|_| {
                    StoreError::Invariant(format!("audit outbox row id {id} is negative"))
                })?;
                Ok((id, event))
            })
            .collect()
    }

    /// Forgets outbox rows the journal holds in sealed segments.
    pub async fn prune_audit_outbox(&self, up_to_outbox_id: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM audit_outbox WHERE outbox_id <= ?")
            .bind(ms(up_to_outbox_id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The payer instrument of a decided request, sealed by the pipeline before the batch began.
#[derive(Debug, Clone)]
pub struct SealedPayer {
    pub kind: &'static str,
    pub value_ct: Vec<u8>,
    pub value_bidx: [u8; 32],
    pub masked: String,
}

pub async fn record_payer(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    key: &IdempotencyKey,
    payer: &SealedPayer,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO payment_instruments (device_id, idempotency_key, kind, value_ct, value_bidx, masked)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(device.as_str())
    .bind(key.as_str())
    .bind(payer.kind)
    .bind(&payer.value_ct)
    .bind(payer.value_bidx.to_vec())
    .bind(&payer.masked)
    .execute(&mut **batch)
    .await?;
    Ok(())
}
