//! The database layer, below the ledger: SQLite (embedded default: WAL, synchronous=FULL) or
//! PostgreSQL (production), through sqlx's `Any` driver: one set of queries (`$N` parameters,
//! portable SQL) and one migration set per backend. Where the dialects differ (row locks,
//! how a write transaction begins) the code asks [`Store::backend`]. It holds devices, decided
//! requests and the audit outbox; the ledger (accounts, transfers, balances) is built on it and
//! this module imports nothing of the crate but the clock.
//!
//! Writes happen in [`Store::begin_batch`] transactions owned by the pipeline: one database
//! transaction per batch of requests (group commit), one savepoint per request so a failure
//! rolls back that request alone.

use crate::audit_outbox::{OutboxKey, OutboxRow};
use paygate_core::audit::AuditEvent;
use paygate_core::envelope::{SigningAlgorithm, VerifyingKey};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, TxId};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::sync::Arc;

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
    /// A transfer for this device and idempotency key is already posted.
    #[error("already posted")]
    AlreadyPosted,
}

impl StoreError {
    /// A unique key refused a row: on a shared database, another gateway replica wrote the
    /// same request (or transfer) first.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::AlreadyPosted => true,
            StoreError::Database(sqlx::Error::Database(error)) => {
                // PostgreSQL's SQLSTATE, SQLite's extended codes (UNIQUE, PRIMARY KEY): the
                // Any driver does not always carry the kind
                error.kind() == sqlx::error::ErrorKind::UniqueViolation
                    || matches!(error.code().as_deref(), Some("23505" | "2067" | "1555"))
            }
            _ => false,
        }
    }
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

/// Which SQL database holds the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if it is one paygate supports.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Authenticates the audit outbox rows this store writes; without it, writing an audit
    /// event fails (every writer must hold the key: [`Store::with_audit_key`]).
    audit_key: Option<Arc<OutboxKey>>,
    /// The last outbox place the journal holds, as its writer in this process last saw it
    /// ([`Store::raise_audit_floor`]); shared by the clones of this store.
    audit_floor: Arc<std::sync::atomic::AtomicU64>,
}

pub type Batch<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// SQLite settings every connection gets: a write-ahead log fsync'd on every commit and
/// foreign keys enforced.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
     PRAGMA foreign_keys = ON;";

/// How the pool and its connections are tuned (`database.*`); the SQLite settings are ignored
/// on PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct SqliteTuning {
    /// Writers queue this long for the lock before their transaction fails.
    pub busy_timeout_ms: u64,
    /// Work waits this long for a connection (any backend) before it fails.
    pub acquire_timeout_ms: u64,
    /// Page cache per connection.
    pub cache_mib: u32,
}

impl Default for SqliteTuning {
    fn default() -> Self {
        SqliteTuning {
            busy_timeout_ms: 10_000,
            acquire_timeout_ms: 5_000,
            cache_mib: 64,
        }
    }
}

impl SqliteTuning {
    fn pragmas(self) -> String {
        format!(
            "{SQLITE_PRAGMAS} PRAGMA busy_timeout = {}; PRAGMA cache_size = -{};",
            self.busy_timeout_ms,
            u64::from(self.cache_mib) * 1024
        )
    }
}

impl Store {
    /// Opens (creating a SQLite file if missing) and migrates the database.
    pub async fn open(url: &str, connections_max: u32) -> Result<Store, StoreError> {
        Store::open_tuned(url, connections_max, SqliteTuning::default()).await
    }

    /// [`Store::open`] with SQLite tuned as `tuning` says.
    pub async fn open_tuned(
        url: &str,
        connections_max: u32,
        tuning: SqliteTuning,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| {
            StoreError::Invariant("database URL must start with sqlite: or postgres://".into())
        })?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pragmas: std::sync::Arc<str> = tuning.pragmas().into();
        let pool = AnyPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(std::time::Duration::from_millis(tuning.acquire_timeout_ms))
            .after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(&*pragmas).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
            audit_key: None,
            audit_floor: Arc::default(),
        })
    }

    /// This store, writing audit events under `key` ([`crate::audit::outbox_key`]).
    pub fn with_audit_key(mut self, key: OutboxKey) -> Store {
        self.audit_key = Some(Arc::new(key));
        self
    }

    /// Tells this store's writers the last place the journal holds: they place new rows after
    /// it even if the rows up to it were removed from the database.
    pub fn raise_audit_floor(&self, place: u64) {
        self.audit_floor
            .fetch_max(place, std::sync::atomic::Ordering::AcqRel);
    }

    /// The key outbox rows are checked with, if this store has one.
    pub fn audit_key(&self) -> Option<&OutboxKey> {
        self.audit_key.as_deref()
    }

    /// One round trip to the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Enrols (or re-keys) a device; its wallet account must exist. Re-keying keeps the
    /// device's status (a suspended device stays suspended: only the operator API resumes it);
    /// a revoked device is refused (`DEVICE_REVOKED`).
    pub async fn enrol_device(&self, device: &Device, now_ms: u64) -> Result<(), StoreError> {
        let enrolled = sqlx::query(
            "INSERT INTO devices (device_id, algorithm, public_key, wallet_account_id, status, enrolled_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (device_id) DO UPDATE SET algorithm = excluded.algorithm,
               public_key = excluded.public_key, wallet_account_id = excluded.wallet_account_id
             WHERE devices.revoked_at_ms IS NULL",
        )
        .bind(device.device_id.as_str())
        .bind(device.key.algorithm.name())
        .bind(&device.key.public_key)
        .bind(device.wallet.as_str())
        .bind(if device.active { "active" } else { "suspended" })
        .bind(ms(now_ms))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if enrolled == 0 {
            // a revoked device is never enrolled again under its id
            return Err(StoreError::Refused(ErrorCode::DeviceRevoked));
        }
        Ok(())
    }

    pub async fn device(&self, device: &DeviceId) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query("SELECT algorithm, public_key, wallet_account_id, status FROM devices WHERE device_id = $1")
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

    /// A write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock up front, so two
    /// writers queue on the busy timeout instead of one failing with "database is locked" when
    /// its read transaction tries to become a write.
    pub async fn begin_batch(&self) -> Result<Batch<'static>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A read-only transaction that sees one snapshot for all its statements, for reports
    /// and checks that read several tables (PostgreSQL's default, READ COMMITTED, gives each
    /// statement its own: a payment committed between two of them reads as a mismatch).
    /// SQLite's transactions are snapshots already.
    pub async fn begin_snapshot(&self) -> Result<Batch<'static>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        })
    }

    /// Registers a merchant's public UPI address (payments to it credit the merchant).
    pub async fn register_merchant_vpa(
        &self,
        vpa: &paygate_core::payer::Vpa,
        merchant: &AccountId,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO merchant_vpas (vpa, merchant_account_id) VALUES ($1, $2)
             ON CONFLICT (vpa) DO UPDATE SET merchant_account_id = excluded.merchant_account_id",
        )
        .bind(vpa.expose())
        .bind(merchant.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn count_transfers(&self, kind: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM transfers WHERE kind = $1")
                .bind(kind)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// One reading of the database server's clock, in milliseconds since the Unix epoch
    /// (UTC), with this process's clock just before and just after the query: `(before,
    /// database, after)`. The connection is taken from the pool first, so waiting for one
    /// does not count. PostgreSQL's `clock_timestamp()` is the time now, not the
    /// transaction's start; SQLite runs in this process, so its clock is the gateway's own.
    pub async fn database_clock_sample(&self) -> Result<(u64, u64, u64), StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS BIGINT)"
            }
            Backend::Postgres => {
                "SELECT CAST(ROUND(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT)"
            }
        };
        let mut connection = self.pool.acquire().await?;
        let before = crate::clock::now_ms();
        let ms: i64 = sqlx::query_scalar(sql).fetch_one(&mut *connection).await?;
        let after = crate::clock::now_ms();
        Ok((before, u64::try_from(ms).unwrap_or(0), after))
    }
}

/// A fresh transfer id.
pub fn new_tx_id() -> TxId {
    // the clock's milliseconds first, then random bytes: ids made together sort together, so
    // a batch's inserts into the indexes keyed by them land on a few B-tree pages at the
    // right edge instead of one random page each (every page a commit touches is written
    // to the WAL and fsync'd whole); 48 random bits keep ids made in one millisecond apart
    let mut bytes = [0_u8; 12];
    bytes[..6].copy_from_slice(&crate::clock::now_ms().to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&rand::random::<[u8; 6]>());
    // hex of bytes is always a valid id
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
        "SELECT body_sha256, receipt FROM requests WHERE device_id = $1 AND idempotency_key = $2",
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
        sqlx::query_scalar("SELECT 1 FROM requests WHERE device_id = $1 AND counter = $2")
            .bind(device.as_str())
            .bind(ms(counter))
            .fetch_optional(&mut **batch)
            .await?;
    Ok(found.is_some())
}

/// A decided request as stored: what it was, how it was decided, and the exact signed
/// receipt it answered.
pub struct DecidedRow<'a> {
    pub device: &'a DeviceId,
    pub key: &'a IdempotencyKey,
    pub counter: u64,
    pub body_sha256: &'a [u8],
    /// `None`: approved.
    pub code: Option<ErrorCode>,
    pub tx_id: Option<&'a TxId>,
    pub receipt: &'a [u8],
    pub now_ms: u64,
}

/// Records a decided request and its signed receipt.
pub async fn record_decided(batch: &mut Batch<'_>, row: &DecidedRow<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO requests (device_id, idempotency_key, counter, body_sha256, outcome, code, tx_id, receipt, decided_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(row.device.as_str())
    .bind(row.key.as_str())
    .bind(ms(row.counter))
    .bind(row.body_sha256)
    .bind(if row.code.is_none() { "approved" } else { "declined" })
    .bind(row.code.map(ErrorCode::as_str))
    .bind(row.tx_id.map(TxId::as_str))
    .bind(row.receipt)
    .bind(ms(row.now_ms))
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// Parameters one multi-row statement binds at most on SQLite. sqlx's SQLite driver looks
/// each parameter's name up in a list SQLite walks from its start, so a statement's binding
/// cost grows with the square of its parameters (a profile put that walk at 17% of the
/// gateway's CPU with 2,304-parameter statements); a few hundred keeps it below the cost of
/// one more statement.
const SQLITE_PARAMETERS_PER_STATEMENT: usize = 240;

/// Parameters one multi-row statement binds at most on PostgreSQL (its limit is 65,535), where
/// every statement is a round trip to the server.
const POSTGRES_PARAMETERS_PER_STATEMENT: usize = 8_192;

/// How many rows of `per_row` parameters one multi-row statement takes on this database.
pub fn rows_per_statement(batch: &Batch<'_>, per_row: usize) -> usize {
    let budget = if batch.backend_name() == "PostgreSQL" {
        POSTGRES_PARAMETERS_PER_STATEMENT
    } else {
        SQLITE_PARAMETERS_PER_STATEMENT
    };
    (budget / per_row.max(1)).max(1)
}

/// `($first, $first+1, ...), (...)`: `rows` rows of `per_row` numbered parameters.
pub fn placeholders(rows: usize, per_row: usize, first: usize) -> String {
    let mut text = String::with_capacity(rows * per_row * 6);
    for row in 0..rows {
        text.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..per_row {
            if column > 0 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(first + row * per_row + column).to_string());
        }
        text.push(')');
    }
    text
}

/// Records many decided requests, as [`record_decided`] does one, in multi-row inserts.
pub async fn record_decided_many(
    batch: &mut Batch<'_>,
    rows: &[DecidedRow<'_>],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(rows_per_statement(batch, 9)) {
        let sql = format!(
            "INSERT INTO requests (device_id, idempotency_key, counter, body_sha256, outcome, code, tx_id, receipt, decided_at_ms)
             VALUES {}",
            placeholders(chunk.len(), 9, 1)
        );
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(row.device.as_str())
                .bind(row.key.as_str())
                .bind(ms(row.counter))
                .bind(row.body_sha256)
                .bind(if row.code.is_none() {
                    "approved"
                } else {
                    "declined"
                })
                .bind(row.code.map(ErrorCode::as_str))
                .bind(row.tx_id.map(TxId::as_str))
                .bind(row.receipt)
                .bind(ms(row.now_ms));
        }
        query.execute(&mut **batch).await?;
    }
    Ok(())
}

/// Stores many requests' payer instruments, as [`record_payer`] does one.
pub async fn record_payers(
    batch: &mut Batch<'_>,
    payers: &[(&DeviceId, &IdempotencyKey, &SealedPayer)],
) -> Result<(), StoreError> {
    for chunk in payers.chunks(rows_per_statement(batch, 6)) {
        let sql = format!(
            "INSERT INTO payment_instruments (device_id, idempotency_key, kind, value_ct, value_bidx, masked)
             VALUES {}",
            placeholders(chunk.len(), 6, 1)
        );
        let mut query = sqlx::query(&sql);
        for (device, key, payer) in chunk {
            query = query
                .bind(device.as_str())
                .bind(key.as_str())
                .bind(payer.kind)
                .bind(&payer.value_ct)
                .bind(payer.value_bidx.to_vec())
                .bind(&payer.masked);
        }
        query.execute(&mut **batch).await?;
    }
    Ok(())
}

impl Store {
    /// Adds audit events to the outbox inside a batch, so they commit (or roll back) with
    /// what they describe. Each row gets the next place in the outbox sequence and its MAC
    /// (`audit_outbox`), taken under the outbox's writer lock.
    pub async fn add_audit_events(
        &self,
        batch: &mut Batch<'_>,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let key = self.audit_key.as_deref().ok_or_else(|| {
            StoreError::Invariant(
                "this store was opened without the audit outbox key: it cannot record audit events"
                    .into(),
            )
        })?;
        lock_audit_outbox(batch, key.log_id()).await?;
        // the place after this log's highest: SQLite's write lock (BEGIN IMMEDIATE) or the
        // advisory lock above keeps it the highest until this transaction ends. The journal's
        // last place is a floor, so rows never land where the journal writer would not look.
        // Rows from before logs had ids count too: they are this data directory's until the
        // journal takes them in, and a new row must come after them.
        let highest: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(outbox_id) FROM audit_outbox WHERE log_id = $1 OR log_id = ''",
        )
        .bind(key.log_id())
        .fetch_one(&mut **batch)
        .await?;
        let highest = highest.and_then(|p| u64::try_from(p).ok()).unwrap_or(0);
        let mut place = highest.max(self.audit_floor.load(std::sync::atomic::Ordering::Acquire));
        // multi-row inserts, in order: the outbox ids follow the events' order
        for chunk in events.chunks(rows_per_statement(batch, 4)) {
            let sql = format!(
                "INSERT INTO audit_outbox (log_id, outbox_id, event_json, mac) VALUES {}",
                placeholders(chunk.len(), 4, 1)
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                place = place
                    .checked_add(1)
                    .filter(|p| i64::try_from(*p).is_ok())
                    .ok_or_else(|| {
                        StoreError::Invariant(
                            "the audit outbox's highest id is at the limit: a row was forged"
                                .into(),
                        )
                    })?;
                let json = audit_event_json(event);
                let mac = key.tag(place, &json);
                query = query
                    .bind(key.log_id())
                    .bind(ms(place))
                    .bind(json)
                    .bind(mac);
            }
            query.execute(&mut **batch).await?;
        }
        Ok(())
    }
}

/// The advisory lock key that orders audit outbox inserts on PostgreSQL, one per log.
fn audit_outbox_lock(log_id: &str) -> i64 {
    const BASE: i64 = 0x7061_7967_6174_6501; // "paygate\x01"
    let digest = paygate_core::audit::sha256(log_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    BASE ^ i64::from_be_bytes(head)
}

/// On PostgreSQL, a place is taken at insert and becomes visible at commit, so a later place
/// could be visible before an earlier one and a reader of "places after N" would skip the
/// earlier one for good. A transaction-scoped advisory lock per log, taken before the
/// insert, makes one log's writers commit in place order (replicas, each with its own log,
/// do not wait for each other). SQLite's write transactions are serial already.
async fn lock_audit_outbox(batch: &mut Batch<'_>, log_id: &str) -> Result<(), StoreError> {
    if batch.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT CAST(pg_advisory_xact_lock($1) AS TEXT)")
            .bind(audit_outbox_lock(log_id))
            .execute(&mut **batch)
            .await?;
    }
    Ok(())
}

fn audit_event_json(event: &AuditEvent) -> String {
    // scrubbed here, where every event is recorded: no path can put a card number in the
    // trail. Serialising a struct of strings and integers cannot fail.
    serde_json::to_string(&event.scrubbed()).unwrap_or_default()
}

impl Store {
    /// Adds one audit event to the outbox in its own transaction (front refusals, operator
    /// commands). The journal writer picks it up within `audit.seal_check_interval_ms`.
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut batch = self.begin_batch().await?;
        self.add_audit_events(&mut batch, std::slice::from_ref(event))
            .await?;
        batch.commit().await?;
        Ok(())
    }

    /// The log this store's outbox rows belong to (its audit key's).
    fn audit_log_id(&self) -> Result<&str, StoreError> {
        self.audit_key
            .as_deref()
            .map(OutboxKey::log_id)
            .ok_or_else(|| {
                StoreError::Invariant("this store was opened without the audit outbox key".into())
            })
    }

    /// This log's outbox rows after `outbox_id`, in id order, at most `limit`, as stored
    /// (the journal writer checks them).
    pub async fn audit_outbox_after(
        &self,
        outbox_id: u64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT outbox_id, mac, event_json FROM audit_outbox
             WHERE log_id = $1 AND outbox_id > $2 ORDER BY outbox_id LIMIT $3",
        )
        .bind(self.audit_log_id()?)
        .bind(ms(outbox_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("outbox_id")?;
                Ok(OutboxRow {
                    outbox_id: u64::try_from(id).map_err(|_| {
                        StoreError::Invariant(format!("audit outbox row id {id} is negative"))
                    })?,
                    mac: row.try_get("mac")?,
                    event_json: row.try_get("event_json")?,
                })
            })
            .collect()
    }

    /// Outbox row `outbox_id`'s MAC as stored (`Some(None)`: the row has none; `None`: no
    /// such row).
    pub async fn audit_outbox_mac(
        &self,
        outbox_id: u64,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let row = sqlx::query("SELECT mac FROM audit_outbox WHERE log_id = $1 AND outbox_id = $2")
            .bind(self.audit_log_id()?)
            .bind(ms(outbox_id))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.try_get("mac").map_err(StoreError::from))
            .transpose()
    }

    /// Forgets outbox rows the journal holds in sealed segments, all but the newest of them:
    /// that one stays as the anchor the next row's place is checked against.
    pub async fn prune_audit_outbox(&self, up_to_outbox_id: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM audit_outbox WHERE log_id = $1 AND outbox_id < $2")
            .bind(self.audit_log_id()?)
            .bind(ms(up_to_outbox_id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes into this store's log the rows written before outbox rows named their log
    /// (`log_id` empty; the one gateway there was then wrote them): each whose MAC holds is
    /// tagged again for this log, one whose MAC fails keeps it and is journaled as
    /// tampered. Only the journal they belong to takes them: the one whose last place
    /// (`journaled_up_to`) is among them (pruning keeps that row), or a journal that never
    /// journaled a row when they start at place 1. Another replica's fresh journal leaves
    /// them alone. Run when the journal opens.
    pub async fn adopt_unlogged_audit_rows(
        &self,
        journaled_up_to: u64,
    ) -> Result<usize, StoreError> {
        let key = self.audit_key.as_deref().ok_or_else(|| {
            StoreError::Invariant("this store was opened without the audit outbox key".into())
        })?;
        let mut batch = self.begin_batch().await?;
        lock_audit_outbox(&mut batch, key.log_id()).await?;
        let rows = sqlx::query(
            "SELECT outbox_id, mac, event_json FROM audit_outbox WHERE log_id = '' ORDER BY outbox_id",
        )
        .fetch_all(&mut *batch)
        .await?;
        let places: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get("outbox_id"))
            .collect::<Result<_, _>>()?;
        let ours = match journaled_up_to {
            0 => places.first() == Some(&1),
            last => places.contains(&ms(last)),
        };
        if !ours {
            return Ok(0);
        }
        for row in &rows {
            let id: i64 = row.try_get("outbox_id")?;
            let json: String = row.try_get("event_json")?;
            let mac: Option<Vec<u8>> = row.try_get("mac")?;
            let place = u64::try_from(id).unwrap_or(0);
            let mac = match mac {
                Some(mac) if key.verify_unlogged(place, &json, &mac) => Some(key.tag(place, &json)),
                other => other,
            };
            sqlx::query("UPDATE audit_outbox SET log_id = $1, mac = $2 WHERE log_id = '' AND outbox_id = $3")
                .bind(key.log_id())
                .bind(mac)
                .bind(id)
                .execute(&mut *batch)
                .await?;
        }
        batch.commit().await?;
        Ok(rows.len())
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
         VALUES ($1, $2, $3, $4, $5, $6)",
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
