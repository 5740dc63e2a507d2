//! Identity validation, the stateful part: the completeness data the rule manager reads, the
//! durable challenges of step-up, validate-pass records, lockouts, the TOTP replay guard,
//! customer PINs (Argon2id) and the out-of-band code notifier. The rules themselves are pure
//! (`paygate_core::identity`); the order of the stages is in `pipeline`.

mod figures;

pub use figures::{BatchFigures, PaymentRef, Window};

use crate::ledger;
use crate::store::{Batch, SealedPayer, StoreError};
use paygate_core::identity::{Completeness, Mechanism, RiskLevel};
use paygate_core::{AccountId, DeviceId, IdempotencyKey, Money};
use sqlx::Row;
use std::path::PathBuf;

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// What a step-up challenge holds: a debit of the wallet the risk rules asked more for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldKind {
    MerchantPayment,
    P2p,
    CashOut,
}

impl HeldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HeldKind::MerchantPayment => "merchant_payment",
            HeldKind::P2p => "p2p",
            HeldKind::CashOut => "cash_out",
        }
    }

    pub fn parse(text: &str) -> Option<HeldKind> {
        match text {
            "merchant_payment" => Some(HeldKind::MerchantPayment),
            "p2p" => Some(HeldKind::P2p),
            "cash_out" => Some(HeldKind::CashOut),
            _ => None,
        }
    }
}

/// What completeness data is asked for.
pub struct CompletenessQuery<'a> {
    pub device: &'a DeviceId,
    pub wallet: &'a AccountId,
    pub merchant: &'a AccountId,
    pub amount: Money,
    pub now_ms: u64,
    pub velocity_window_ms: u64,
    /// The device's payments in the window are counted up to this (its abuse limit).
    pub device_count_max: u32,
    /// The wallet's debits in the window are counted up to this (its abuse limit).
    pub wallet_count_max: u32,
}

/// The completeness data, and the wallet's debits in the velocity window (its abuse limit).
pub struct Known {
    pub completeness: Completeness,
    pub wallet_debits_in_window: u32,
}

/// What the gateway knows about a payment when it decides: every figure from a counter or an
/// index read bounded by its window (or by the limit it is compared with), never from the
/// wallet's whole history; one statement for the figures, one for the validate passes.
pub async fn completeness(
    batch: &mut Batch<'_>,
    query: &CompletenessQuery<'_>,
) -> Result<Known, StoreError> {
    let since = ms(query.now_ms.saturating_sub(query.velocity_window_ms));
    let row = sqlx::query(
        "SELECT
           (SELECT COUNT(*) FROM wallet_payees
             WHERE wallet_account_id = $1 AND payee_account_id = $2) AS paid_before,
           (SELECT COUNT(*) FROM (SELECT 1 FROM requests WHERE device_id = $3 LIMIT 1) AS d)
             AS used_before,
           (SELECT COUNT(*) FROM (SELECT 1 FROM requests
             WHERE device_id = $4 AND decided_at_ms >= $5 LIMIT $6) AS r) AS device_in_window,
           (SELECT COUNT(*) FROM (SELECT 1 FROM wallet_debit_log
             WHERE account_id = $7 AND created_at_ms >= $8 LIMIT $9) AS w) AS wallet_in_window,
           (SELECT COALESCE(MAX(debited_since_strong_auth_minor), 0) FROM wallet_counters
             WHERE account_id = $10) AS since_strong",
    )
    .bind(query.wallet.as_str())
    .bind(query.merchant.as_str())
    .bind(query.device.as_str())
    .bind(query.device.as_str())
    .bind(since)
    .bind(i64::from(query.device_count_max))
    .bind(query.wallet.as_str())
    .bind(since)
    .bind(i64::from(query.wallet_count_max))
    .bind(query.wallet.as_str())
    .fetch_one(&mut **batch)
    .await?;
    let count = |name: &str| -> Result<u32, StoreError> {
        Ok(u32::try_from(row.try_get::<i64, _>(name)?).unwrap_or(u32::MAX))
    };
    // a pass spares only a payment to the payee it was passed for, up to its amount
    let passes = sqlx::query(
        "SELECT mechanism, passed_at_ms FROM identity_passes
         WHERE wallet_account_id = $1 AND payee_account_id = $2 AND amount_minor >= $3",
    )
    .bind(query.wallet.as_str())
    .bind(query.merchant.as_str())
    .bind(query.amount.minor_signed())
    .fetch_all(&mut **batch)
    .await?;
    let mut passed = Vec::new();
    for row in passes {
        let name: String = row.try_get("mechanism")?;
        if let Some(mechanism) = Mechanism::parse(&name) {
            passed.push((mechanism, unsigned(row.try_get("passed_at_ms")?)));
        }
    }
    let figures = Figures {
        paid_before: count("paid_before")? > 0,
        used_before: count("used_before")? > 0,
        device_in_window: count("device_in_window")?,
        wallet_in_window: count("wallet_in_window")?,
        since_strong_minor: row.try_get("since_strong")?,
        passes: passed,
    };
    Ok(Known::of(
        &figures,
        query.merchant,
        query.amount,
        query.now_ms,
    ))
}

/// The figures of one payment's completeness data, as read from the counters.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// The wallet has paid this payee before.
    pub paid_before: bool,
    /// The device has made a request before.
    pub used_before: bool,
    /// The device's decided requests in the velocity window (counted up to its limit).
    pub device_in_window: u32,
    /// The wallet's debits in the velocity window (counted up to its limit).
    pub wallet_in_window: u32,
    pub since_strong_minor: i64,
    /// Validate passes for this payee, up to at least this amount: the mechanism and when.
    pub passes: Vec<(Mechanism, u64)>,
}

impl Known {
    /// The completeness data of a payment of `amount` to `merchant` now, from its figures.
    pub fn of(figures: &Figures, merchant: &AccountId, amount: Money, now_ms: u64) -> Known {
        Known {
            completeness: Completeness {
                amount_minor: amount.minor_signed(),
                currency: amount.currency.code().to_owned(),
                payee: merchant.to_string(),
                first_payee: !figures.paid_before,
                first_device_use: !figures.used_before,
                payments_in_window: figures.device_in_window,
                cumulative_minor_since_strong_auth: figures.since_strong_minor,
                hour_local: crate::clock::business_calendar().hour_of_day(now_ms),
                passed_ms_ago: figures
                    .passes
                    .iter()
                    .map(|(mechanism, at)| (*mechanism, now_ms.saturating_sub(*at)))
                    .collect(),
            },
            wallet_debits_in_window: figures.wallet_in_window,
        }
    }
}

/// The first of `mechanisms` locked for the wallet now, if any.
pub async fn locked(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    mechanisms: &[Mechanism],
    now_ms: u64,
) -> Result<Option<Mechanism>, StoreError> {
    for &mechanism in mechanisms {
        let until: Option<i64> = sqlx::query_scalar(
            "SELECT locked_until_ms FROM identity_lockouts WHERE wallet_account_id = $1 AND mechanism = $2",
        )
        .bind(wallet.as_str())
        .bind(mechanism.as_str())
        .fetch_optional(&mut **batch)
        .await?;
        if until.is_some_and(|until| unsigned(until) > now_ms) {
            return Ok(Some(mechanism));
        }
    }
    Ok(None)
}

/// Whether the holder has what a mechanism needs (a TOTP secret, a PIN, a phone).
pub async fn enrolled(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    mechanism: Mechanism,
) -> Result<bool, StoreError> {
    let query = match mechanism {
        Mechanism::DevicePossession => return Ok(true),
        Mechanism::Totp => {
            "SELECT 1 FROM wallet_profiles WHERE wallet_account_id = $1 AND totp_secret_ct IS NOT NULL"
        }
        Mechanism::Pin => "SELECT 1 FROM customer_pins WHERE wallet_account_id = $1",
        Mechanism::Oob => {
            "SELECT 1 FROM wallet_profiles WHERE wallet_account_id = $1 AND phone_ct IS NOT NULL"
        }
    };
    let found: Option<i64> = sqlx::query_scalar(query)
        .bind(wallet.as_str())
        .fetch_optional(&mut **batch)
        .await?;
    Ok(found.is_some())
}

/// A challenged payment, held until answered, failed or expired.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub challenge_id: String,
    pub device: DeviceId,
    pub wallet: AccountId,
    pub idempotency_key: IdempotencyKey,
    pub counter: u64,
    pub body_sha256: Vec<u8>,
    /// The payee: the merchant, the receiving wallet of a P2P transfer, a cash-out's agent.
    pub merchant: AccountId,
    pub amount: Money,
    pub payer: Option<SealedPayer>,
    /// What is held: `merchant_payment`, `p2p` or `cash_out`.
    pub kind: HeldKind,
    pub mechanisms: Vec<Mechanism>,
    pub risk: RiskLevel,
    pub oob_code_sha256: Option<Vec<u8>>,
    /// Reward points the held payment redeems as tender (0: none).
    pub redeem_points: i64,
    pub attempts: u32,
    pub state: String,
    pub receipt: Vec<u8>,
    pub expires_at_ms: u64,
}

fn risk_name(risk: RiskLevel) -> &'static str {
    match risk {
        RiskLevel::Low => "low",
        RiskLevel::Medium => "medium",
        RiskLevel::High => "high",
    }
}

pub async fn insert_challenge(
    batch: &mut Batch<'_>,
    challenge: &Challenge,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mechanisms: Vec<&str> = challenge.mechanisms.iter().map(|m| m.as_str()).collect();
    sqlx::query(
        "INSERT INTO identity_challenges (challenge_id, device_id, wallet_account_id, idempotency_key,
           counter, body_sha256, merchant_id, amount_minor, currency, payer_kind, payer_ct, payer_bidx,
           payer_masked, mechanisms, risk, oob_code_sha256, attempts, state, receipt, created_at_ms,
           expires_at_ms, redeem_points, held_kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0, 'pending', $17, $18, $19, $20, $21)",
    )
    .bind(&challenge.challenge_id)
    .bind(challenge.device.as_str())
    .bind(challenge.wallet.as_str())
    .bind(challenge.idempotency_key.as_str())
    .bind(ms(challenge.counter))
    .bind(&challenge.body_sha256)
    .bind(challenge.merchant.as_str())
    .bind(challenge.amount.minor_signed())
    .bind(challenge.amount.currency.code())
    .bind(challenge.payer.as_ref().map(|p| p.kind))
    .bind(challenge.payer.as_ref().map(|p| p.value_ct.clone()))
    .bind(challenge.payer.as_ref().map(|p| p.value_bidx.to_vec()))
    .bind(challenge.payer.as_ref().map(|p| p.masked.clone()))
    .bind(mechanisms.join(","))
    .bind(risk_name(challenge.risk))
    .bind(&challenge.oob_code_sha256)
    .bind(&challenge.receipt)
    .bind(ms(now_ms))
    .bind(ms(challenge.expires_at_ms))
    .bind(challenge.redeem_points)
    .bind(challenge.kind.as_str())
    .execute(&mut **batch)
    .await?;
    Ok(())
}

const CHALLENGE_COLUMNS: &str = "challenge_id, device_id, wallet_account_id, idempotency_key, counter,
    body_sha256, merchant_id, amount_minor, currency, payer_kind, payer_ct, payer_bidx, payer_masked,
    mechanisms, risk, oob_code_sha256, attempts, state, receipt, expires_at_ms, redeem_points, held_kind";

fn challenge_from_row(row: &sqlx::any::AnyRow) -> Result<Challenge, StoreError> {
    let bad = |what: &str| StoreError::Invariant(format!("identity_challenges row: bad {what}"));
    let amount_minor: i64 = row.try_get("amount_minor")?;
    let currency: String = row.try_get("currency")?;
    let amount = Money::new(
        u64::try_from(amount_minor).map_err(|_| bad("amount"))?,
        paygate_core::Currency::parse(&currency).ok_or_else(|| bad("currency"))?,
    )
    .map_err(|_| bad("amount"))?;
    let payer = match row.try_get::<Option<String>, _>("payer_kind")? {
        Some(kind) => Some(SealedPayer {
            kind: if kind == "card" { "card" } else { "upi" },
            value_ct: row.try_get("payer_ct")?,
            value_bidx: row
                .try_get::<Vec<u8>, _>("payer_bidx")?
                .try_into()
                .map_err(|_| bad("payer index"))?,
            masked: row.try_get("payer_masked")?,
        }),
        None => None,
    };
    let mechanisms: String = row.try_get("mechanisms")?;
    let risk: String = row.try_get("risk")?;
    Ok(Challenge {
        challenge_id: row.try_get("challenge_id")?,
        device: DeviceId::parse(&row.try_get::<String, _>("device_id")?)
            .map_err(|_| bad("device"))?,
        wallet: AccountId::parse(&row.try_get::<String, _>("wallet_account_id")?)
            .map_err(|_| bad("wallet"))?,
        idempotency_key: IdempotencyKey::parse(&row.try_get::<String, _>("idempotency_key")?)
            .map_err(|_| bad("idempotency key"))?,
        counter: unsigned(row.try_get("counter")?),
        body_sha256: row.try_get("body_sha256")?,
        merchant: AccountId::parse(&row.try_get::<String, _>("merchant_id")?)
            .map_err(|_| bad("merchant"))?,
        amount,
        payer,
        kind: HeldKind::parse(&row.try_get::<String, _>("held_kind")?)
            .ok_or_else(|| bad("held kind"))?,
        mechanisms: mechanisms.split(',').filter_map(Mechanism::parse).collect(),
        risk: match risk.as_str() {
            "low" => RiskLevel::Low,
            "medium" => RiskLevel::Medium,
            _ => RiskLevel::High,
        },
        oob_code_sha256: row.try_get("oob_code_sha256")?,
        redeem_points: row.try_get("redeem_points")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        state: row.try_get("state")?,
        receipt: row.try_get("receipt")?,
        expires_at_ms: unsigned(row.try_get("expires_at_ms")?),
    })
}

pub async fn challenge_by_id(
    batch: &mut Batch<'_>,
    challenge_id: &str,
) -> Result<Option<Challenge>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {CHALLENGE_COLUMNS} FROM identity_challenges WHERE challenge_id = $1"
    ))
    .bind(challenge_id)
    .fetch_optional(&mut **batch)
    .await?;
    row.as_ref().map(challenge_from_row).transpose()
}

pub async fn challenge_by_request(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    key: &IdempotencyKey,
) -> Result<Option<Challenge>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {CHALLENGE_COLUMNS} FROM identity_challenges WHERE device_id = $1 AND idempotency_key = $2"
    ))
    .bind(device.as_str())
    .bind(key.as_str())
    .fetch_optional(&mut **batch)
    .await?;
    row.as_ref().map(challenge_from_row).transpose()
}

/// Whether a challenged request already took this counter.
pub async fn counter_in_challenges(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    counter: u64,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM identity_challenges WHERE device_id = $1 AND counter = $2",
    )
    .bind(device.as_str())
    .bind(ms(counter))
    .fetch_optional(&mut **batch)
    .await?;
    Ok(found.is_some())
}

pub async fn expired_challenges(
    batch: &mut Batch<'_>,
    now_ms: u64,
) -> Result<Vec<Challenge>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {CHALLENGE_COLUMNS} FROM identity_challenges
         WHERE state = 'pending' AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT 256"
    ))
    .bind(ms(now_ms))
    .fetch_all(&mut **batch)
    .await?;
    rows.iter().map(challenge_from_row).collect()
}

/// Moves a challenge on: a new state, attempts and (for a retry of the original request) the
/// receipt it answers with.
pub async fn update_challenge(
    batch: &mut Batch<'_>,
    challenge_id: &str,
    state: &str,
    attempts: u32,
    receipt: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE identity_challenges SET state = $1, attempts = $2, receipt = $3 WHERE challenge_id = $4",
    )
    .bind(state)
    .bind(i64::from(attempts))
    .bind(receipt)
    .bind(challenge_id)
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// Records a strong authentication of the holder for one payment: each mechanism passed now
/// (validate-pass windows, which spare later payments to the same payee up to the same amount
/// only), the spend since the last strong authentication back to zero, and the wrong answers
/// counted against those mechanisms cleared.
pub async fn record_passes(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    mechanisms: &[Mechanism],
    payee: &AccountId,
    amount: Money,
    now_ms: u64,
) -> Result<(), StoreError> {
    ledger::reset_since_strong_auth(batch, wallet).await?;
    for mechanism in mechanisms {
        sqlx::query(
            "INSERT INTO identity_passes (wallet_account_id, mechanism, passed_at_ms, payee_account_id, amount_minor)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (wallet_account_id, mechanism) DO UPDATE SET passed_at_ms = excluded.passed_at_ms,
                 payee_account_id = excluded.payee_account_id, amount_minor = excluded.amount_minor",
        )
        .bind(wallet.as_str())
        .bind(mechanism.as_str())
        .bind(ms(now_ms))
        .bind(payee.as_str())
        .bind(amount.minor_signed())
        .execute(&mut **batch)
        .await?;
        sqlx::query(
            "DELETE FROM identity_failures WHERE wallet_account_id = $1 AND mechanism = $2",
        )
        .bind(wallet.as_str())
        .bind(mechanism.as_str())
        .execute(&mut **batch)
        .await?;
    }
    Ok(())
}

/// Counts a wrong answer against each of `mechanisms` for the wallet, across challenges:
/// the count restarts once `window_ms` has passed since its first failure. Returns the
/// highest count now.
pub async fn count_failures(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    mechanisms: &[Mechanism],
    window_ms: u64,
    now_ms: u64,
) -> Result<u32, StoreError> {
    let mut highest = 0u32;
    // one statement per mechanism: the row lock of the upsert orders two replicas' wrong
    // answers, so neither count is lost
    let window_start = ms(now_ms.saturating_sub(window_ms));
    for mechanism in mechanisms {
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO identity_failures (wallet_account_id, mechanism, failures, first_failed_at_ms)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (wallet_account_id, mechanism) DO UPDATE SET
               failures = CASE WHEN identity_failures.first_failed_at_ms > $4
                               THEN identity_failures.failures + 1 ELSE 1 END,
               first_failed_at_ms = CASE WHEN identity_failures.first_failed_at_ms > $4
                               THEN identity_failures.first_failed_at_ms
                               ELSE excluded.first_failed_at_ms END
             RETURNING failures",
        )
        .bind(wallet.as_str())
        .bind(mechanism.as_str())
        .bind(ms(now_ms))
        .bind(window_start)
        .fetch_one(&mut **batch)
        .await?;
        highest = highest.max(u32::try_from(failures).unwrap_or(u32::MAX));
    }
    Ok(highest)
}

pub async fn lock(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    mechanisms: &[Mechanism],
    until_ms: u64,
) -> Result<(), StoreError> {
    for mechanism in mechanisms {
        sqlx::query(
            "INSERT INTO identity_lockouts (wallet_account_id, mechanism, locked_until_ms) VALUES ($1, $2, $3)
             ON CONFLICT (wallet_account_id, mechanism) DO UPDATE SET locked_until_ms = excluded.locked_until_ms",
        )
        .bind(wallet.as_str())
        .bind(mechanism.as_str())
        .bind(ms(until_ms))
        .execute(&mut **batch)
        .await?;
    }
    Ok(())
}

pub async fn totp_last_step(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
) -> Result<Option<u64>, StoreError> {
    let step: Option<i64> =
        sqlx::query_scalar("SELECT last_step FROM totp_used_steps WHERE wallet_account_id = $1")
            .bind(wallet.as_str())
            .fetch_optional(&mut **batch)
            .await?;
    Ok(step.map(unsigned))
}

pub async fn set_totp_step(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    step: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO totp_used_steps (wallet_account_id, last_step) VALUES ($1, $2)
         ON CONFLICT (wallet_account_id) DO UPDATE SET last_step = excluded.last_step",
    )
    .bind(wallet.as_str())
    .bind(ms(step))
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// The hash an out-of-band code is kept as: bound to its challenge, amount and payee, so the
/// code proves the holder saw this payment (dynamic linking).
pub fn oob_code_hash(
    challenge_id: &str,
    code: &str,
    amount: Money,
    merchant: &AccountId,
) -> Vec<u8> {
    paygate_core::audit::sha256(
        format!(
            "paygate-oob-v1|{challenge_id}|{code}|{}|{}|{merchant}",
            amount.minor_signed(),
            amount.currency.code()
        )
        .as_bytes(),
    )
    .to_vec()
}

/// Sets a holder's PIN (Argon2id with a random salt); the PIN itself is not kept.
pub async fn set_pin(
    pool: &sqlx::AnyPool,
    wallet: &AccountId,
    pin: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if !(4..=12).contains(&pin.len()) || !pin.chars().all(|c| c.is_ascii_digit()) {
        return Err(StoreError::Invariant("a PIN is 4 to 12 digits".into()));
    }
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let phc = argon2::Argon2::default()
        .hash_password(pin.as_bytes(), &salt)
        .map_err(|e| StoreError::Invariant(format!("pin hashing: {e}")))?
        .to_string();
    sqlx::query(
        "INSERT INTO customer_pins (wallet_account_id, pin_phc, set_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (wallet_account_id) DO UPDATE SET pin_phc = excluded.pin_phc, set_at_ms = excluded.set_at_ms",
    )
    .bind(wallet.as_str())
    .bind(phc)
    .bind(ms(now_ms))
    .execute(pool)
    .await?;
    Ok(())
}

/// Checks a PIN against the stored hash, off the async threads (Argon2 is slow on purpose).
pub async fn pin_matches(
    pool: &sqlx::AnyPool,
    wallet: &AccountId,
    pin: &str,
) -> Result<bool, StoreError> {
    let phc: Option<String> =
        sqlx::query_scalar("SELECT pin_phc FROM customer_pins WHERE wallet_account_id = $1")
            .bind(wallet.as_str())
            .fetch_optional(pool)
            .await?;
    let Some(phc) = phc else { return Ok(false) };
    let pin = zeroize::Zeroizing::new(pin.to_owned());
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        PasswordHash::new(&phc)
            .map(|hash| {
                argon2::Argon2::default()
                    .verify_password(pin.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| StoreError::Invariant(format!("pin check: {e}")))
}

/// Delivers out-of-band codes. The development notifier appends a JSON line to a file (one
/// place to read codes while developing); an SMS or push provider replaces it. It is not the
/// audit log: codes never go into the audit trail.
pub struct DevNotifier {
    pub path: PathBuf,
}

impl DevNotifier {
    pub fn send(
        &self,
        wallet: &AccountId,
        challenge_id: &str,
        code: &str,
        text: &str,
    ) -> std::io::Result<()> {
        use std::io::Write;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let line = serde_json::json!({
            "wallet": wallet.as_str(), "challenge_id": challenge_id, "code": code, "text": text,
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(file, "{line}")
    }
}
