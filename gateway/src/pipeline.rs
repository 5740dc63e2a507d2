//! The request pipeline, end to end, in the order a request meets the stages:
//!
//! 1. `verify`: the envelope's structure, the sender's enrolment, the signature under the
//!    enrolled key and algorithm, the strict payload decode, the sender binding (topic, key id
//!    and payload device agree) and freshness. Pure CPU and one device lookup; nothing written.
//! 2. `deduplicate`: a known idempotency key with the same body answers the stored receipt; with
//!    another body `IDEMPOTENCY_CONFLICT`; a reused counter `COUNTER_REUSED`.
//! 3. `decide_and_post`: the product (a wallet paying a merchant) as balanced double-entry
//!    postings, or a decline.
//! 4. `record`: the signed receipt stored with the decision, and an audit event for every
//!    decision and every rejection, in the same transaction.
//! 5. commit (one durable commit for the whole batch).
//! 6. `audit`: the batch's audit events appended to the fsync'd audit journal. Only then are
//!    the receipts handed back for publishing: nothing is published before the commit and the
//!    journal write return. While the audit trail cannot take records (journal failing, or
//!    too much waiting for write-once storage) requests are refused with `AUDIT_UNAVAILABLE`.
//!
//! Every stage takes the whole batch, so group commit is the normal path, not a later rewrite.

use crate::audit::AuditLog;
use crate::config::{
    IdentitySettings, PipelineSettings, RewardsSettings, UpiSettings, WalletSettings,
};
use crate::identity;
use crate::keys::cipher::FieldCipher;
use crate::ledger::{self, AccountKind, Leg};
use crate::metrics::Metrics;
use crate::products;
use crate::profiles;
use crate::rewards;
use crate::store::{self, Batch, SealedPayer, Store, StoreError};
use crate::upi;
use bytes::Bytes;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::envelope::{SigningKey, UnverifiedEnvelope};
use paygate_core::identity::{required_mechanisms, totp_verify, Mechanism, RiskLevel};
use paygate_core::payer::Payer;
use paygate_core::receipt::{ChallengeWire, Outcome, Receipt, RECEIPT_CONTENT_TYPE};
use paygate_core::request::OneTimeCode;
use paygate_core::request::{
    check_freshness, decode_request, MoneyWire, Operation, Party, Request, REQUEST_CONTENT_TYPE,
    SCHEMA_VERSION,
};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, Money};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// A message taken off a device's request topic. `device` comes from the topic, which the
/// device front guarantees is the certificate's identity.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub device: DeviceId,
    pub message: Bytes,
    pub received_at: Instant,
}

/// A signed reply for a device's reply topic.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub device: DeviceId,
    pub receipt: Vec<u8>,
    pub received_at: Instant,
}

pub struct Pipeline {
    store: Store,
    receipt_key: Arc<SigningKey>,
    settings: PipelineSettings,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    cipher: Arc<FieldCipher>,
    identity: IdentitySettings,
    notifier: identity::DevNotifier,
    wallet: WalletSettings,
    rewards: RewardsSettings,
    upi: UpiSettings,
    /// UPI payments decided in the running batch, for the worker once the batch commits.
    upi_pending: std::sync::Mutex<Vec<upi::Handoff>>,
    upi_handoffs: tokio::sync::mpsc::UnboundedSender<upi::Handoff>,
}

struct Verified {
    inbound: Inbound,
    request: Request,
    body_sha256: Vec<u8>,
    /// The sending device's wallet, from its enrolment.
    wallet: AccountId,
    /// The payer instrument, already encrypted (before the batch's transaction began).
    payer: Option<SealedPayer>,
    /// For a challenge answer: what checking it needs from outside the database transaction.
    answer: AnswerMaterial,
    /// For P2P and cash-in: the wallet the request names, looked up by phone or VPA through
    /// the blind indexes before the transaction (`None`: no such wallet).
    party: Option<AccountId>,
}

/// Prepared before the batch's transaction: the holder's TOTP secret (decrypted through the
/// key provider) and the PIN check (Argon2, slow on purpose).
#[derive(Default)]
struct AnswerMaterial {
    totp_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    pin_matches: Option<bool>,
}

/// A payment being decided: now, or later from its challenge.
struct HeldPayment {
    device: DeviceId,
    wallet: AccountId,
    key: IdempotencyKey,
    counter: u64,
    body_sha256: Vec<u8>,
    merchant: AccountId,
    amount: Money,
    payer: Option<SealedPayer>,
    /// Why it is declined, where a code's own description does not say enough (which limit).
    decline_reason: Option<String>,
    /// Reward points redeemed as part of the tender (0: none).
    points: i64,
}

impl From<&identity::Challenge> for HeldPayment {
    fn from(c: &identity::Challenge) -> HeldPayment {
        HeldPayment {
            device: c.device.clone(),
            wallet: c.wallet.clone(),
            key: c.idempotency_key.clone(),
            counter: c.counter,
            body_sha256: c.body_sha256.clone(),
            merchant: c.merchant.clone(),
            amount: c.amount,
            payer: c.payer.clone(),
            decline_reason: None,
            points: c.redeem_points,
        }
    }
}

/// The challenge answer that completed a payment: recorded with the payment's final receipt,
/// so a retry of the answer gets the same bytes.
struct AnswerRecord {
    key: IdempotencyKey,
    counter: u64,
    body_sha256: Vec<u8>,
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl Pipeline {
    // the wiring of the gateway's parts, called once from `gateway::start`
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        receipt_key: Arc<SigningKey>,
        settings: PipelineSettings,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        cipher: Arc<FieldCipher>,
        identity: IdentitySettings,
        notifier: identity::DevNotifier,
        wallet: WalletSettings,
        rewards: RewardsSettings,
        upi: UpiSettings,
        upi_handoffs: tokio::sync::mpsc::UnboundedSender<upi::Handoff>,
    ) -> Pipeline {
        Pipeline {
            store,
            receipt_key,
            settings,
            metrics,
            audit,
            cipher,
            identity,
            notifier,
            wallet,
            rewards,
            upi,
            upi_pending: std::sync::Mutex::new(Vec::new()),
            upi_handoffs,
        }
    }

    /// Runs a batch through every stage; returns the replies to publish (after the commit and
    /// the audit journal write). Returns no replies at all when the journal cannot be written:
    /// the devices resend and get the stored receipts once it can.
    pub async fn process_batch(&self, batch: Vec<Inbound>) -> Vec<Outbound> {
        let now = now_ms();
        let mut replies = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut verified = Vec::with_capacity(batch.len());
        for inbound in batch {
            match self.verify(&inbound, now).await {
                Ok(mut ok) => match self.seal_payer(&ok.request).await {
                    Ok(payer) => {
                        ok.payer = payer;
                        match self.prepare_answer(&ok).await {
                            Ok(answer) => {
                                ok.answer = answer;
                                match self.resolve_party(&ok.request).await {
                                    Ok(party) => {
                                        ok.party = party;
                                        verified.push(ok)
                                    }
                                    Err((code, message)) => replies.push(self.refuse_verified(
                                        &ok,
                                        code,
                                        message,
                                        now,
                                        &mut events,
                                    )),
                                }
                            }
                            Err((code, message)) => replies.push(self.refuse_verified(
                                &ok,
                                code,
                                message,
                                now,
                                &mut events,
                            )),
                        }
                    }
                    Err((code, message)) => {
                        replies.push(self.refuse_verified(&ok, code, message, now, &mut events))
                    }
                },
                Err((code, message, body)) => {
                    events.push(rejected_event(&inbound.device, None, code, now));
                    replies.push(self.reject(&inbound, None, body, code, message, now))
                }
            }
        }
        if self.audit.blocked() {
            // never approve what cannot be audited (PCI DSS 10.7.2)
            for item in verified.drain(..) {
                replies.push(self.refuse_verified(
                    &item,
                    ErrorCode::AuditUnavailable,
                    "the audit trail cannot take records now; retry later with the same idempotency key".into(),
                    now,
                    &mut events,
                ));
            }
        }
        let decided = self.decide_batch(&verified, events, now).await;
        let handoffs: Vec<upi::Handoff> = self
            .upi_pending
            .lock()
            .map(|mut pending| pending.drain(..).collect())
            .unwrap_or_default();
        if decided.is_ok() {
            for handoff in handoffs {
                // the worker outlives the pipeline; if it is gone the gateway is stopping and
                // the next start declines the payment as never sent
                let _ = self.upi_handoffs.send(handoff);
            }
        }
        match decided {
            Ok(decided) => replies.extend(decided),
            Err(error) => {
                tracing::error!(%error, requests = verified.len(), "batch failed and was rolled back");
                self.metrics.count_refusal(ErrorCode::InternalError);
                for item in &verified {
                    replies.push(self.reject(
                        &item.inbound,
                        Some(&item.request),
                        Some(item.body_sha256.clone()),
                        ErrorCode::InternalError,
                        "the gateway could not record this request; retry with the same idempotency key".into(),
                        now,
                    ));
                }
            }
        }
        // stage 6: the audit records are in the fsync'd journal before any receipt leaves
        if let Err(error) = self.audit.drain().await {
            tracing::error!(%error, replies = replies.len(), "receipts held back: the audit journal cannot be written");
            return Vec::new();
        }
        replies
    }

    /// Stage 1. On refusal: the code, a message, and the body hash if the envelope was readable.
    async fn verify(
        &self,
        inbound: &Inbound,
        now: u64,
    ) -> Result<Verified, (ErrorCode, String, Option<Vec<u8>>)> {
        let envelope =
            UnverifiedEnvelope::parse(&inbound.message).map_err(|e| (e.code, e.message, None))?;
        let body = envelope.payload_unverified().map(sha256);
        let device = match self.store.device(&inbound.device).await {
            Ok(Some(device)) if device.active => device,
            Ok(_) => {
                return Err((
                    ErrorCode::DeviceNotEnrolled,
                    "device is not enrolled".into(),
                    body,
                ))
            }
            Err(error) => return Err((ErrorCode::InternalError, error.to_string(), body)),
        };
        let payload = envelope
            .verify(&device.key, inbound.device.as_str(), REQUEST_CONTENT_TYPE)
            .map_err(|e| (e.code, e.message, body.clone()))?;
        let request = decode_request(payload).map_err(|e| (e.code, e.message, body.clone()))?;
        if request.device_id != inbound.device {
            return Err((
                ErrorCode::DeviceMismatch,
                format!(
                    "request names device {} but came from {}",
                    request.device_id, inbound.device
                ),
                body,
            ));
        }
        check_freshness(
            request.created_at_ms,
            now,
            self.settings.request_age_max_ms,
            self.settings.request_future_skew_max_ms,
        )
        .map_err(|code| (code, code.description().to_owned(), body.clone()))?;
        Ok(Verified {
            inbound: inbound.clone(),
            request,
            body_sha256: sha256(payload),
            wallet: device.wallet,
            payer: None,
            answer: AnswerMaterial::default(),
            party: None,
        })
    }

    /// Encrypts the payer's PAN or VPA and computes its blind index, outside the database
    /// transaction (a key provider call must never hold the ledger's write lock). Fails closed:
    /// without a key the request is refused with `KEY_UNAVAILABLE` and nothing is written. The
    /// UPI credential block is for the UPI switch only; it is not kept.
    async fn seal_payer(
        &self,
        request: &Request,
    ) -> Result<Option<SealedPayer>, (ErrorCode, String)> {
        let (kind, value, masked) = match &request.operation {
            Operation::MerchantPayment {
                payer: Some(payer), ..
            }
            | Operation::UpiPayment { payer, .. } => match payer {
                Payer::Card { pan } => ("card", pan.expose(), payer.masked()),
                Payer::Upi { vpa, .. } => ("upi", vpa.expose(), payer.masked()),
            },
            Operation::UpiCollect { payer_vpa, .. } => (
                "upi",
                payer_vpa.expose(),
                format!("upi {}", payer_vpa.masked()),
            ),
            _ => return Ok(None),
        };
        let record = format!("{}/{}", request.device_id, request.idempotency_key);
        let sealed = async {
            let value_ct = self
                .cipher
                .encrypt("payment_instruments", kind, &record, value.as_bytes())
                .await?;
            let value_bidx = self
                .cipher
                .blind_index("payment_instruments", kind, value)
                .await?;
            Ok::<_, crate::keys::KeyError>(SealedPayer {
                kind,
                value_ct,
                value_bidx,
                masked,
            })
        }
        .await;
        sealed.map(Some).map_err(|error| {
            self.metrics.count_key_failure();
            tracing::error!(%error, device = %request.device_id, "payer not encrypted; request refused");
            (
                error.code(),
                "the key protecting the payer's data is unavailable; nothing was written; retry later with the same idempotency key".to_owned(),
            )
        })
    }

    /// The wallet a P2P transfer or cash-in names by phone or VPA, through the profiles'
    /// blind indexes (a key provider call, so outside the transaction; fails closed with
    /// `KEY_UNAVAILABLE`). A wallet named by id is taken as it is.
    async fn resolve_party(
        &self,
        request: &Request,
    ) -> Result<Option<AccountId>, (ErrorCode, String)> {
        let party = match &request.operation {
            Operation::P2pTransfer { to, .. } => to,
            Operation::CashIn { customer, .. } => customer,
            _ => return Ok(None),
        };
        let (phone, vpa) = match party {
            Party::Wallet(id) => return Ok(Some(id.clone())),
            Party::Phone(phone) => (Some(phone.as_str()), None),
            Party::Vpa(vpa) => (None, Some(vpa.expose())),
        };
        match profiles::find(&self.cipher, self.store.pool(), phone, vpa).await {
            Ok(found) => Ok(found.and_then(|id| AccountId::parse(&id).ok())),
            Err(profiles::ProfileError::Invalid { .. }) => Ok(None),
            Err(profiles::ProfileError::Key(error)) => {
                self.metrics.count_key_failure();
                tracing::error!(%error, device = %request.device_id, "wallet alias not resolved; request refused");
                Err((
                    error.code(),
                    "the key protecting wallet aliases is unavailable; nothing was written; retry later with the same idempotency key".into(),
                ))
            }
            Err(profiles::ProfileError::Database(error)) => {
                Err((ErrorCode::InternalError, error.to_string()))
            }
        }
    }

    /// Stages 2 to 5 for the verified part of a batch, in one database transaction.
    async fn decide_batch(
        &self,
        verified: &[Verified],
        mut events: Vec<AuditEvent>,
        now: u64,
    ) -> Result<Vec<Outbound>, StoreError> {
        if verified.is_empty() && events.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = self.store.begin_batch().await?;
        let mut replies = Vec::with_capacity(verified.len());
        for item in verified {
            replies.push(self.decide_one(&mut batch, item, &mut events, now).await?);
        }
        store::add_audit_events(&mut batch, &events).await?;
        batch.commit().await?;
        Ok(replies)
    }

    async fn decide_one(
        &self,
        batch: &mut Batch<'_>,
        item: &Verified,
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        let request = &item.request;
        let device = &request.device_id;
        // stage 2: deduplicate (a decided request, or a payment waiting on its challenge)
        let known = match store::find_decided(batch, device, &request.idempotency_key).await? {
            Some(decided) => Some((decided.body_sha256, decided.receipt)),
            None => match identity::challenge_by_request(batch, device, &request.idempotency_key)
                .await?
            {
                Some(c) => Some((c.body_sha256, c.receipt)),
                None => upi_by_request(batch, device, &request.idempotency_key).await?,
            },
        };
        if let Some((body_sha256, receipt)) = known {
            if body_sha256 == item.body_sha256 {
                self.metrics.count_replayed();
                return Ok(Outbound {
                    device: device.clone(),
                    receipt,
                    received_at: item.inbound.received_at,
                });
            }
            return Ok(self.refuse_verified(
                item,
                ErrorCode::IdempotencyConflict,
                "this idempotency key was used with a different request body".into(),
                now,
                events,
            ));
        }
        if store::counter_used(batch, device, request.counter).await?
            || identity::counter_in_challenges(batch, device, request.counter).await?
            || upi_counter_used(batch, device, request.counter).await?
        {
            return Ok(self.refuse_verified(
                item,
                ErrorCode::CounterReused,
                format!(
                    "counter {} was already used by another request",
                    request.counter
                ),
                now,
                events,
            ));
        }
        match &request.operation {
            Operation::MerchantPayment {
                merchant_id,
                amount,
                ..
            } => {
                self.decide_payment(batch, item, merchant_id, *amount, 0, events, now)
                    .await
            }
            Operation::PointsPayment {
                merchant_id,
                amount,
                points,
            } => {
                self.decide_payment(batch, item, merchant_id, *amount, *points, events, now)
                    .await
            }
            Operation::ChallengeAnswer {
                challenge_id,
                merchant_id,
                amount,
                responses,
            } => {
                self.decide_answer(
                    batch,
                    item,
                    challenge_id,
                    merchant_id,
                    *amount,
                    responses,
                    events,
                    now,
                )
                .await
            }
            Operation::UpiPayment {
                merchant_vpa,
                amount,
                payer,
            } => {
                let Payer::Upi {
                    vpa,
                    credential_block,
                } = payer
                else {
                    return Err(StoreError::Invariant(
                        "a UPI payment with a card payer".into(),
                    ));
                };
                self.decide_upi(
                    batch,
                    item,
                    Some(merchant_vpa),
                    *amount,
                    vpa,
                    Some(credential_block),
                    events,
                    now,
                )
                .await
            }
            Operation::UpiCollect { payer_vpa, amount } => {
                self.decide_upi(batch, item, None, *amount, payer_vpa, None, events, now)
                    .await
            }
            Operation::P2pTransfer { amount, .. }
            | Operation::CashIn { amount, .. }
            | Operation::CashOut { amount, .. }
            | Operation::Refund { amount, .. } => {
                let origin = products::Origin {
                    device,
                    key: &request.idempotency_key,
                    now_ms: now,
                };
                let account = &item.wallet;
                let wallet = &self.wallet;
                let (kind, decided) = match &request.operation {
                    Operation::P2pTransfer { .. } => (
                        "p2p",
                        products::p2p(
                            batch,
                            wallet,
                            &origin,
                            account,
                            item.party.as_ref(),
                            *amount,
                        )
                        .await?,
                    ),
                    Operation::CashIn { .. } => (
                        "cash_in",
                        products::cash_in(
                            batch,
                            wallet,
                            &origin,
                            account,
                            item.party.as_ref(),
                            *amount,
                        )
                        .await?,
                    ),
                    Operation::CashOut { agent_id, .. } => (
                        "cash_out",
                        products::cash_out(batch, wallet, &origin, account, agent_id, *amount)
                            .await?,
                    ),
                    Operation::Refund { tx_id, .. } => (
                        "refund",
                        products::refund(batch, &origin, account, tx_id, *amount).await?,
                    ),
                    _ => unreachable_operation()?,
                };
                self.record_product(batch, item, kind, *amount, decided, events, now)
                    .await
            }
        }
    }

    /// Stage 3 for a UPI payment: the checks that need no network (UPI enabled, currency, the
    /// per-transaction limit, the merchant's VPA registered), then the payment is recorded as
    /// initiated with a signed `pending` receipt, and handed to the UPI worker once the batch
    /// commits.
    #[allow(clippy::too_many_arguments)]
    async fn decide_upi(
        &self,
        batch: &mut Batch<'_>,
        item: &Verified,
        merchant_vpa: Option<&paygate_core::payer::Vpa>,
        amount: Money,
        payer_vpa: &paygate_core::payer::Vpa,
        credential_block: Option<&paygate_core::payer::CredentialBlock>,
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        let request = &item.request;
        let decline =
            |code: ErrorCode, reason: String| products::Decided::Declined { code, reason };
        let collect = merchant_vpa.is_none();
        // pay: the merchant behind the address; collect: the terminal's own merchant account
        // and its registered address (a collect comes only from a merchant's terminal)
        let (merchant, vpa_text): (Option<String>, String) = match merchant_vpa {
            Some(vpa) => (
                sqlx::query_scalar("SELECT merchant_account_id FROM merchant_vpas WHERE vpa = $1")
                    .bind(vpa.expose())
                    .fetch_optional(&mut **batch)
                    .await?,
                vpa.expose().to_owned(),
            ),
            None => {
                let is_merchant = ledger::account(batch, &item.wallet)
                    .await?
                    .is_some_and(|a| a.active && a.kind == AccountKind::Merchant);
                let vpa: Option<String> = if is_merchant {
                    sqlx::query_scalar(
                        "SELECT vpa FROM merchant_vpas WHERE merchant_account_id = $1 ORDER BY vpa LIMIT 1",
                    )
                    .bind(item.wallet.as_str())
                    .fetch_optional(&mut **batch)
                    .await?
                } else {
                    None
                };
                if !is_merchant {
                    let decided = decline(
                        ErrorCode::OperationNotAllowed,
                        "a UPI collect request comes only from a merchant's terminal".into(),
                    );
                    return self
                        .record_product(batch, item, "upi_collect", amount, decided, events, now)
                        .await;
                }
                (
                    vpa.as_ref().map(|_| item.wallet.to_string()),
                    vpa.unwrap_or_default(),
                )
            }
        };
        let refusal = if !self.upi.enabled {
            Some(decline(
                ErrorCode::OperationNotAllowed,
                "UPI is not enabled on this gateway".into(),
            ))
        } else if amount.currency.code() != self.upi.currency {
            Some(decline(
                ErrorCode::CurrencyMismatch,
                format!("UPI pays in {}", self.upi.currency),
            ))
        } else if amount.minor_signed() > self.upi.per_transaction_max_minor {
            Some(decline(
                ErrorCode::LimitExceeded,
                format!(
                    "the UPI limit per transaction is {} minor units",
                    self.upi.per_transaction_max_minor
                ),
            ))
        } else if merchant.is_none() {
            Some(decline(
                ErrorCode::UnknownMerchant,
                if collect {
                    "this merchant has no registered UPI address".to_owned()
                } else {
                    format!("no merchant has the UPI address {vpa_text}")
                },
            ))
        } else {
            None
        };
        let (Some(merchant), None, Some(sealed)) =
            (merchant, refusal.as_ref(), item.payer.as_ref())
        else {
            let decided = refusal.unwrap_or_else(|| {
                decline(
                    ErrorCode::PayerInvalid,
                    "a UPI payment needs a UPI payer".into(),
                )
            });
            let kind = if collect {
                "upi_collect"
            } else {
                "upi_payment"
            };
            return self
                .record_product(batch, item, kind, amount, decided, events, now)
                .await;
        };
        let payment_id = format!("upi-{}", uuid::Uuid::new_v4().simple());
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: Outcome::Pending,
            code: None,
            message: Some("sent to the UPI network; the final receipt follows".into()),
            device_id: request.device_id.to_string(),
            idempotency_key: Some(request.idempotency_key.to_string()),
            body_sha256: Some(hex::encode(&item.body_sha256)),
            tx_id: None,
            amount: Some(MoneyWire::from(amount)),
            merchant_id: Some(merchant.clone()),
            counterparty: Some(format!("upi {vpa_text}")),
            payer: Some(sealed.masked.clone()),
            challenge: None,
            decided_at_ms: now,
        };
        let sealed_receipt = self
            .receipt_key
            .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload());
        sqlx::query(
            "INSERT INTO upi_payments (payment_id, device_id, idempotency_key, counter, body_sha256,
                merchant_id, merchant_vpa, amount_minor, currency, payer_ct, payer_bidx, payer_masked,
                state, receipt, created_at_ms, direction)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'initiated', $13, $14, $15)",
        )
        .bind(payment_id.as_str())
        .bind(request.device_id.as_str())
        .bind(request.idempotency_key.as_str())
        .bind(i64::try_from(request.counter).unwrap_or(i64::MAX))
        .bind(&item.body_sha256)
        .bind(merchant.as_str())
        .bind(vpa_text.as_str())
        .bind(amount.minor_signed())
        .bind(amount.currency.code())
        .bind(&sealed.value_ct)
        .bind(sealed.value_bidx.to_vec())
        .bind(sealed.masked.as_str())
        .bind(&sealed_receipt)
        .bind(i64::try_from(now).unwrap_or(i64::MAX))
        .bind(if collect { "collect" } else { "pay" })
        .execute(&mut **batch)
        .await?;
        let mut event = decision_event(
            now,
            &request.device_id,
            format!("mqtt:{}", request.device_id),
            "pipeline",
            &merchant,
            None,
            None,
            amount,
        );
        event.merchant_id = Some(merchant.clone());
        event.detail = Some(format!(
            "upi_initiated idempotency_key {} payment {payment_id} payer {}",
            request.idempotency_key, sealed.masked
        ));
        events.push(event);
        if let Ok(mut pending) = self.upi_pending.lock() {
            pending.push(upi::Handoff {
                payment_id,
                payer_vpa: payer_vpa.expose().to_owned(),
                credential_block: credential_block.cloned(),
            });
        }
        Ok(Outbound {
            device: request.device_id.clone(),
            receipt: sealed_receipt,
            received_at: item.inbound.received_at,
        })
    }

    /// A tick job's receipts, released only once their audit records are in the journal (as
    /// for a batch); on failure nothing is published and the job runs again at the next tick.
    async fn release_tick_replies(
        &self,
        job: &str,
        result: Result<Vec<Outbound>, StoreError>,
    ) -> Vec<Outbound> {
        match result {
            Ok(replies) if replies.is_empty() => replies,
            Ok(replies) => match self.audit.drain().await {
                Ok(()) => replies,
                Err(error) => {
                    tracing::error!(%error, job, "receipts held back: the audit journal cannot be written");
                    Vec::new()
                }
            },
            Err(error) => {
                tracing::error!(%error, job, "failed; retried at the next tick");
                Vec::new()
            }
        }
    }

    /// The pipeline's tick: expired challenges declined, answered UPI payments settled.
    pub async fn tick(&self) -> Vec<Outbound> {
        let mut replies = self.expire_challenges().await;
        replies.extend(self.settle_upi().await);
        replies
    }

    /// Settles UPI payments the network has answered: a success (or deemed success) is posted
    /// from the UPI settlement account to the merchant; the others are declined with their
    /// code. The final receipt is recorded for the request and pushed to the terminal.
    pub async fn settle_upi(&self) -> Vec<Outbound> {
        let now = now_ms();
        let result = async {
            // a read first: most ticks have nothing to settle and need no write lock
            let answered: Option<String> = sqlx::query_scalar(
                "SELECT payment_id FROM upi_payments WHERE state = 'answered' LIMIT 1",
            )
            .fetch_optional(self.store.pool())
            .await?;
            if answered.is_none() {
                return Ok::<_, StoreError>(Vec::new());
            }
            let mut batch = self.store.begin_batch().await?;
            let rows = sqlx::query(
                "SELECT payment_id, device_id, idempotency_key, counter, body_sha256, merchant_id,
                        merchant_vpa, amount_minor, currency, payer_masked, result, npci_code
                 FROM upi_payments WHERE state = 'answered' ORDER BY created_at_ms LIMIT 256",
            )
            .fetch_all(&mut *batch)
            .await?;
            let mut events = Vec::new();
            let mut replies = Vec::new();
            for row in rows {
                replies.push(self.settle_one(&mut batch, &row, &mut events, now).await?);
            }
            if replies.is_empty() {
                batch.rollback().await?;
                return Ok::<_, StoreError>(Vec::new());
            }
            store::add_audit_events(&mut batch, &events).await?;
            batch.commit().await?;
            Ok(replies)
        }
        .await;
        self.release_tick_replies("UPI settlement", result).await
    }

    async fn settle_one(
        &self,
        batch: &mut Batch<'_>,
        row: &sqlx::any::AnyRow,
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        use sqlx::Row;
        let bad = |what: &str| StoreError::Invariant(format!("upi_payments row: bad {what}"));
        let payment_id: String = row.try_get("payment_id")?;
        let device =
            DeviceId::parse(&row.try_get::<String, _>("device_id")?).map_err(|_| bad("device"))?;
        let key = IdempotencyKey::parse(&row.try_get::<String, _>("idempotency_key")?)
            .map_err(|_| bad("key"))?;
        let counter =
            u64::try_from(row.try_get::<i64, _>("counter")?).map_err(|_| bad("counter"))?;
        let body_sha256: Vec<u8> = row.try_get("body_sha256")?;
        let merchant = AccountId::parse(&row.try_get::<String, _>("merchant_id")?)
            .map_err(|_| bad("merchant"))?;
        let merchant_vpa: String = row.try_get("merchant_vpa")?;
        let currency = paygate_core::Currency::parse(&row.try_get::<String, _>("currency")?)
            .ok_or_else(|| bad("currency"))?;
        let minor: i64 = row.try_get("amount_minor")?;
        let amount = Money::new(u64::try_from(minor).map_err(|_| bad("amount"))?, currency)
            .map_err(|_| bad("amount"))?;
        let payer_masked: String = row.try_get("payer_masked")?;
        let result: String = row.try_get("result")?;
        let npci: Option<String> = row.try_get("npci_code")?;
        let npci_text = |code: &Option<String>| {
            let code = code.clone().unwrap_or_else(|| "?".into());
            format!("NPCI {code} ({})", upi::code_class(&code))
        };
        let (code, message) = match result.as_str() {
            "success" => (None, None),
            "deemed" => (
                None,
                Some("deemed successful by the UPI network".to_owned()),
            ),
            "failure" => (
                Some(ErrorCode::UpiDeclined),
                Some(format!("declined: {}", npci_text(&npci))),
            ),
            "reversed" => (
                Some(ErrorCode::UpiDeclined),
                Some(format!(
                    "declined after the debit: {}; the debit was reversed",
                    npci_text(&npci)
                )),
            ),
            "timed_out" => (
                Some(ErrorCode::UpiTimedOut),
                Some(
                    "no final answer after the status checks; the debit, if any, was reversed"
                        .to_owned(),
                ),
            ),
            _ => (
                Some(ErrorCode::UpiNotSent),
                Some(ErrorCode::UpiNotSent.description().to_owned()),
            ),
        };
        let tx_id = store::new_tx_id();
        let mut code = code;
        if code.is_none() {
            let unit = currency.code();
            let settlement = AccountId::parse(&format!("upi-settlement-{}", unit.to_lowercase()))
                .map_err(|_| bad("settlement"))?;
            ledger::open_account(
                batch,
                &ledger::NewAccount {
                    account_id: settlement.clone(),
                    kind: AccountKind::Settlement,
                    unit: unit.to_owned(),
                    kyc_tier: None,
                    category: None,
                    owner: None,
                },
                now,
            )
            .await?;
            let posted = ledger::post(
                batch,
                &ledger::NewTransfer {
                    tx_id: &tx_id,
                    kind: "upi_payment",
                    origin: Some((&device, &key)),
                    related: None,
                    legs: vec![
                        Leg::debit(&settlement, AccountKind::Settlement, unit, minor),
                        Leg::credit(&merchant, AccountKind::Merchant, unit, minor),
                    ],
                    now_ms: now,
                },
            )
            .await;
            match posted {
                Ok(()) => {}
                Err(StoreError::Refused(refused)) => {
                    // the network took the money but the merchant cannot be credited: an alert
                    tracing::error!(%payment_id, code = %refused, "UPI success not postable; needs an operator");
                    self.metrics.count_invariant_alert();
                    code = Some(refused);
                }
                Err(other) => return Err(other),
            }
        }
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: if code.is_none() {
                Outcome::Approved
            } else {
                Outcome::Declined
            },
            code: code.map(|c| c.as_str().to_owned()),
            message: message
                .clone()
                .or_else(|| code.map(|c| c.description().to_owned())),
            device_id: device.to_string(),
            idempotency_key: Some(key.to_string()),
            body_sha256: Some(hex::encode(&body_sha256)),
            tx_id: code.is_none().then(|| tx_id.to_string()),
            amount: Some(MoneyWire::from(amount)),
            merchant_id: Some(merchant.to_string()),
            counterparty: Some(format!("upi {merchant_vpa}")),
            payer: Some(payer_masked.clone()),
            challenge: None,
            decided_at_ms: now,
        };
        let sealed = self
            .receipt_key
            .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload());
        store::record_decided(
            batch,
            &device,
            &key,
            counter,
            &body_sha256,
            code.is_none(),
            code,
            code.is_none().then_some(&tx_id),
            &sealed,
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE upi_payments SET state = 'settled', receipt = $1 WHERE payment_id = $2",
        )
        .bind(&sealed)
        .bind(payment_id.as_str())
        .execute(&mut **batch)
        .await?;
        let mut event = decision_event(
            now,
            &device,
            "upi-switch".to_owned(),
            "upi",
            merchant.as_str(),
            code,
            code.is_none().then_some(&tx_id),
            amount,
        );
        event.merchant_id = Some(merchant.to_string());
        event.detail = Some(format!(
            "upi_{result} idempotency_key {key} payment {payment_id} payer {payer_masked}{}",
            npci.map(|c| format!(" npci {c}")).unwrap_or_default()
        ));
        events.push(event);
        match code {
            None => self.metrics.count_approved(),
            Some(code) => self.metrics.count_declined(code),
        }
        Ok(Outbound {
            device,
            receipt: sealed,
            received_at: Instant::now(),
        })
    }

    /// Stage 4 for a wallet product: the decision recorded with its signed receipt and an
    /// audit event.
    #[allow(clippy::too_many_arguments)]
    async fn record_product(
        &self,
        batch: &mut Batch<'_>,
        item: &Verified,
        kind: &str,
        amount: Money,
        decided: products::Decided,
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        let request = &item.request;
        let device = &request.device_id;
        let (tx_id, counterparty, code, message) = match decided {
            products::Decided::Posted {
                tx_id,
                counterparty,
            } => (Some(tx_id), Some(counterparty), None, None),
            products::Decided::Declined { code, reason } => (None, None, Some(code), Some(reason)),
        };
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: if code.is_none() {
                Outcome::Approved
            } else {
                Outcome::Declined
            },
            code: code.map(|c| c.as_str().to_owned()),
            message: message.clone(),
            device_id: device.to_string(),
            idempotency_key: Some(request.idempotency_key.to_string()),
            body_sha256: Some(hex::encode(&item.body_sha256)),
            tx_id: tx_id.as_ref().map(|t| t.to_string()),
            amount: Some(MoneyWire::from(amount)),
            merchant_id: None,
            counterparty: counterparty.clone(),
            payer: None,
            challenge: None,
            decided_at_ms: now,
        };
        let sealed = self
            .receipt_key
            .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload());
        store::record_decided(
            batch,
            device,
            &request.idempotency_key,
            request.counter,
            &item.body_sha256,
            code.is_none(),
            code,
            tx_id.as_ref(),
            &sealed,
            now,
        )
        .await?;
        let mut event = decision_event(
            now,
            device,
            format!("mqtt:{device}"),
            "pipeline",
            item.wallet.as_str(),
            code,
            tx_id.as_ref(),
            amount,
        );
        event.wallet_id = Some(item.wallet.to_string());
        let mut detail = format!("{kind} idempotency_key {}", request.idempotency_key);
        if let Some(counterparty) = &counterparty {
            detail.push_str(&format!(" counterparty {counterparty}"));
        }
        if let Some(message) = &message {
            detail.push_str(&format!(" reason {message}"));
        }
        event.detail = Some(detail);
        events.push(event);
        match code {
            None => self.metrics.count_approved(),
            Some(code) => self.metrics.count_declined(code),
        }
        Ok(Outbound {
            device: device.clone(),
            receipt: sealed,
            received_at: item.inbound.received_at,
        })
    }

    /// Stage 3 for a payment: abuse limits, then the rule manager; a payment that needs a
    /// step-up is held as a durable challenge, the others are posted now.
    #[allow(clippy::too_many_arguments)]
    async fn decide_payment(
        &self,
        batch: &mut Batch<'_>,
        item: &Verified,
        merchant_id: &AccountId,
        amount: Money,
        points: i64,
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        let request = &item.request;
        let mut payment = HeldPayment {
            device: request.device_id.clone(),
            wallet: item.wallet.clone(),
            key: request.idempotency_key.clone(),
            counter: request.counter,
            body_sha256: item.body_sha256.clone(),
            merchant: merchant_id.clone(),
            amount,
            payer: item.payer.clone(),
            decline_reason: None,
            points,
        };
        // the wallet's KYC limits (per transaction, day, month) before any step-up
        if let Some(account) = ledger::account(batch, &payment.wallet).await? {
            if account.kind == AccountKind::Wallet {
                if let Some((code, reason)) = products::check_debit(
                    batch,
                    &self.wallet,
                    &account,
                    "merchant_payment",
                    amount,
                    now,
                )
                .await?
                {
                    payment.decline_reason = Some(reason);
                    return self
                        .post_and_record(
                            batch,
                            &payment,
                            None,
                            Some(code),
                            item.inbound.received_at,
                            events,
                            now,
                        )
                        .await;
                }
            }
        }
        let rules = &self.identity.rules;
        let completeness = identity::completeness(
            batch,
            &payment.device,
            &payment.wallet,
            merchant_id,
            amount,
            now,
            self.identity.velocity_window_ms,
        )
        .await?;
        // abuse limits: the device's count is the completeness data's own velocity counter
        let window_start = now.saturating_sub(self.identity.velocity_window_ms);
        let by_wallet = identity::wallet_velocity(batch, &payment.wallet, window_start).await?;
        if completeness.payments_in_window >= self.identity.device_payments_per_window_max
            || by_wallet >= self.identity.wallet_payments_per_window_max
        {
            return self
                .post_and_record(
                    batch,
                    &payment,
                    None,
                    Some(ErrorCode::LimitExceeded),
                    item.inbound.received_at,
                    events,
                    now,
                )
                .await;
        }
        let required = required_mechanisms(rules, &self.identity.pass_windows, &completeness);
        if required.is_empty() {
            return self
                .post_and_record(
                    batch,
                    &payment,
                    None,
                    None,
                    item.inbound.received_at,
                    events,
                    now,
                )
                .await;
        }
        let mechanisms: Vec<Mechanism> = required.iter().map(|r| r.mechanism).collect();
        let risk = required
            .iter()
            .map(|r| r.risk)
            .max()
            .unwrap_or(RiskLevel::High);
        let rule_names: Vec<String> = required.iter().flat_map(|r| r.rules.clone()).collect();
        let mut refusal = None;
        if let Some(mechanism) = identity::locked(batch, &payment.wallet, &mechanisms, now).await? {
            refusal = Some((ErrorCode::MechanismLocked, format!("{mechanism} is locked")));
        } else {
            for &mechanism in &mechanisms {
                if !identity::enrolled(batch, &payment.wallet, mechanism).await? {
                    refusal = Some((
                        ErrorCode::MechanismNotEnrolled,
                        format!("{mechanism} is not enrolled"),
                    ));
                    break;
                }
            }
        }
        if let Some((code, why)) = refusal {
            events.push(self.identity_event(
                &payment,
                AuditOutcome::Failure,
                Some(code),
                format!("step-up needed by {} but {why}", rule_names.join(",")),
                now,
            ));
            return self
                .post_and_record(
                    batch,
                    &payment,
                    None,
                    Some(code),
                    item.inbound.received_at,
                    events,
                    now,
                )
                .await;
        }
        let challenge_id = uuid::Uuid::new_v4().to_string();
        let oob_code_sha256 = if mechanisms.contains(&Mechanism::Oob) {
            let code = format!("{:06}", rand::random::<u32>() % 1_000_000);
            let text = format!(
                "paygate: {code} is your code to pay {amount} to {merchant_id}. Never share it."
            );
            if let Err(error) = self
                .notifier
                .send(&payment.wallet, &challenge_id, &code, &text)
            {
                tracing::error!(%error, "out-of-band code not sent");
            }
            Some(identity::oob_code_hash(
                &challenge_id,
                &code,
                amount,
                merchant_id,
            ))
        } else {
            None
        };
        let expires_at_ms = now.saturating_add(self.identity.challenge_ttl_ms);
        let receipt = self.challenge_receipt(
            &payment,
            &challenge_id,
            &mechanisms,
            expires_at_ms,
            self.identity.attempts_max,
            now,
        );
        let challenge = identity::Challenge {
            challenge_id: challenge_id.clone(),
            device: payment.device.clone(),
            wallet: payment.wallet.clone(),
            idempotency_key: payment.key.clone(),
            counter: payment.counter,
            body_sha256: payment.body_sha256.clone(),
            merchant: payment.merchant.clone(),
            amount,
            payer: payment.payer.clone(),
            mechanisms: mechanisms.clone(),
            risk,
            oob_code_sha256,
            redeem_points: payment.points,
            attempts: 0,
            state: "pending".into(),
            receipt: receipt.clone(),
            expires_at_ms,
        };
        identity::insert_challenge(batch, &challenge, now).await?;
        let names: Vec<&str> = mechanisms.iter().map(|m| m.as_str()).collect();
        events.push(self.identity_event(
            &payment,
            AuditOutcome::Success,
            None,
            format!(
                "challenge {challenge_id} issued: {} (rules {}, risk {risk:?})",
                names.join(","),
                rule_names.join(",")
            ),
            now,
        ));
        self.metrics.count_challenged();
        Ok(Outbound {
            device: payment.device,
            receipt,
            received_at: item.inbound.received_at,
        })
    }

    /// Stage 3 for a challenge answer: dynamic linking (the amount and payee restated), each
    /// mechanism checked; right, the held payment is posted; wrong, an attempt is counted and
    /// at `identity.attempts_max` the payment is declined and the mechanisms lock.
    #[allow(clippy::too_many_arguments)]
    async fn decide_answer(
        &self,
        batch: &mut Batch<'_>,
        item: &Verified,
        challenge_id: &str,
        merchant_id: &AccountId,
        amount: Money,
        responses: &[(Mechanism, OneTimeCode)],
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        let request = &item.request;
        let challenge = identity::challenge_by_id(batch, challenge_id)
            .await?
            .filter(|c| c.device == request.device_id);
        let Some(challenge) = challenge else {
            return Ok(self.refuse_verified(
                item,
                ErrorCode::ChallengeUnknown,
                "no such challenge is open for this device".into(),
                now,
                events,
            ));
        };
        let answer = Some(AnswerRecord {
            key: request.idempotency_key.clone(),
            counter: request.counter,
            body_sha256: item.body_sha256.clone(),
        });
        let payment = HeldPayment::from(&challenge);
        if challenge.state != "pending" {
            // already decided: answer with the payment's final receipt
            return match store::find_decided(batch, &challenge.device, &challenge.idempotency_key)
                .await?
            {
                Some(decided) => Ok(Outbound {
                    device: challenge.device.clone(),
                    receipt: decided.receipt,
                    received_at: item.inbound.received_at,
                }),
                None => Ok(self.refuse_verified(
                    item,
                    ErrorCode::ChallengeUnknown,
                    "the challenge is closed".into(),
                    now,
                    events,
                )),
            };
        }
        if now >= challenge.expires_at_ms {
            identity::update_challenge(
                batch,
                challenge_id,
                "expired",
                challenge.attempts,
                &challenge.receipt,
            )
            .await?;
            events.push(self.identity_event(
                &payment,
                AuditOutcome::Failure,
                Some(ErrorCode::ChallengeExpired),
                format!("challenge {challenge_id} expired"),
                now,
            ));
            return self
                .post_and_record(
                    batch,
                    &payment,
                    answer.as_ref(),
                    Some(ErrorCode::ChallengeExpired),
                    item.inbound.received_at,
                    events,
                    now,
                )
                .await;
        }
        let linked = *merchant_id == challenge.merchant && amount == challenge.amount;
        let mut passed = linked;
        let mut totp_step = None;
        for &mechanism in &challenge.mechanisms {
            let response = responses
                .iter()
                .find(|(m, _)| *m == mechanism)
                .map(|(_, c)| c);
            let ok = match (mechanism, response) {
                (Mechanism::DevicePossession, _) => true,
                (_, None) => false,
                (Mechanism::Totp, Some(code)) => {
                    let last = identity::totp_last_step(batch, &challenge.wallet).await?;
                    let step = item.answer.totp_secret.as_ref().and_then(|secret| {
                        totp_verify(secret, self.identity.totp, now / 1000, code.expose(), last)
                    });
                    totp_step = step;
                    step.is_some()
                }
                (Mechanism::Pin, Some(_)) => item.answer.pin_matches == Some(true),
                (Mechanism::Oob, Some(code)) => {
                    challenge.oob_code_sha256.as_deref()
                        == Some(
                            &identity::oob_code_hash(
                                challenge_id,
                                code.expose(),
                                challenge.amount,
                                &challenge.merchant,
                            )[..],
                        )
                }
            };
            passed &= ok;
        }
        if let Some(step) = totp_step {
            // a matched code is used up even if another mechanism failed: never accepted twice
            identity::set_totp_step(batch, &challenge.wallet, step).await?;
        }
        if passed {
            identity::update_challenge(
                batch,
                challenge_id,
                "passed",
                challenge.attempts,
                &challenge.receipt,
            )
            .await?;
            identity::record_passes(batch, &challenge.wallet, &challenge.mechanisms, now).await?;
            events.push(self.identity_event(
                &payment,
                AuditOutcome::Success,
                None,
                format!("challenge {challenge_id} answered"),
                now,
            ));
            return self
                .post_and_record(
                    batch,
                    &payment,
                    answer.as_ref(),
                    None,
                    item.inbound.received_at,
                    events,
                    now,
                )
                .await;
        }
        let attempts = challenge.attempts.saturating_add(1);
        let why = if linked {
            "wrong answer"
        } else {
            "the answer names another amount or payee"
        };
        events.push(self.identity_event(
            &payment,
            AuditOutcome::Failure,
            Some(ErrorCode::ChallengeFailed),
            format!(
                "challenge {challenge_id}: {why}, attempt {attempts} of {}",
                self.identity.attempts_max
            ),
            now,
        ));
        if attempts >= self.identity.attempts_max {
            identity::update_challenge(batch, challenge_id, "failed", attempts, &challenge.receipt)
                .await?;
            identity::lock(
                batch,
                &challenge.wallet,
                &challenge.mechanisms,
                now.saturating_add(self.identity.lockout_ms),
            )
            .await?;
            return self
                .post_and_record(
                    batch,
                    &payment,
                    answer.as_ref(),
                    Some(ErrorCode::ChallengeFailed),
                    item.inbound.received_at,
                    events,
                    now,
                )
                .await;
        }
        let receipt = self.challenge_receipt(
            &payment,
            challenge_id,
            &challenge.mechanisms,
            challenge.expires_at_ms,
            self.identity.attempts_max - attempts,
            now,
        );
        identity::update_challenge(batch, challenge_id, "pending", attempts, &receipt).await?;
        store::record_decided(
            batch,
            &request.device_id,
            &request.idempotency_key,
            request.counter,
            &item.body_sha256,
            false,
            Some(ErrorCode::ChallengeFailed),
            None,
            &receipt,
            now,
        )
        .await?;
        Ok(Outbound {
            device: request.device_id.clone(),
            receipt,
            received_at: item.inbound.received_at,
        })
    }

    /// Declines every challenged payment whose time ran out, and returns their final receipts.
    pub async fn expire_challenges(&self) -> Vec<Outbound> {
        let now = now_ms();
        let result = async {
            let mut batch = self.store.begin_batch().await?;
            let mut events = Vec::new();
            let mut replies = Vec::new();
            for challenge in identity::expired_challenges(&mut batch, now).await? {
                identity::update_challenge(
                    &mut batch,
                    &challenge.challenge_id,
                    "expired",
                    challenge.attempts,
                    &challenge.receipt,
                )
                .await?;
                let payment = HeldPayment::from(&challenge);
                events.push(self.identity_event(
                    &payment,
                    AuditOutcome::Failure,
                    Some(ErrorCode::ChallengeExpired),
                    format!("challenge {} expired unanswered", challenge.challenge_id),
                    now,
                ));
                replies.push(
                    self.post_and_record(
                        &mut batch,
                        &payment,
                        None,
                        Some(ErrorCode::ChallengeExpired),
                        Instant::now(),
                        &mut events,
                        now,
                    )
                    .await?,
                );
            }
            if replies.is_empty() {
                batch.rollback().await?;
                return Ok::<_, StoreError>(Vec::new());
            }
            store::add_audit_events(&mut batch, &events).await?;
            batch.commit().await?;
            Ok(replies)
        }
        .await;
        self.release_tick_replies("challenge expiry", result).await
    }

    fn challenge_receipt(
        &self,
        payment: &HeldPayment,
        challenge_id: &str,
        mechanisms: &[Mechanism],
        expires_at_ms: u64,
        attempts_left: u32,
        now: u64,
    ) -> Vec<u8> {
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: Outcome::Challenged,
            code: None,
            message: Some(format!(
                "confirm {} to {} with: {}",
                payment.amount,
                payment.merchant,
                mechanisms
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            device_id: payment.device.to_string(),
            idempotency_key: Some(payment.key.to_string()),
            body_sha256: Some(hex::encode(&payment.body_sha256)),
            tx_id: None,
            amount: Some(MoneyWire::from(payment.amount)),
            merchant_id: Some(payment.merchant.to_string()),
            counterparty: None,
            payer: payment.payer.as_ref().map(|p| p.masked.clone()),
            challenge: Some(ChallengeWire {
                challenge_id: challenge_id.to_owned(),
                mechanisms: mechanisms.iter().map(|m| m.as_str().to_owned()).collect(),
                expires_at_ms,
                attempts_left,
            }),
            decided_at_ms: now,
        };
        self.receipt_key
            .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload())
    }

    fn identity_event(
        &self,
        payment: &HeldPayment,
        outcome: AuditOutcome,
        code: Option<ErrorCode>,
        detail: String,
        now: u64,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(
            now,
            EventType::IdentityDecision,
            format!("device:{}", payment.device),
            format!("mqtt:{}", payment.device),
            outcome,
            "identity",
            format!("account:{}", payment.wallet),
        );
        event.code = code.map(|c| c.as_str().to_owned());
        event.device_id = Some(payment.device.to_string());
        event.wallet_id = Some(payment.wallet.to_string());
        event.merchant_id = Some(payment.merchant.to_string());
        event.amount = Some(format!(
            "{} {}",
            payment.amount.minor_signed(),
            payment.amount.currency
        ));
        event.detail = Some(format!("idempotency_key {} {detail}", payment.key));
        event
    }

    /// Stages 3 and 4 for a payment decided now: post it (unless `decline` says why not),
    /// record the decision with its signed receipt for its own key (and for the challenge
    /// answer that completed it), the payer, and the audit event.
    #[allow(clippy::too_many_arguments)]
    async fn post_and_record(
        &self,
        batch: &mut Batch<'_>,
        payment: &HeldPayment,
        answer: Option<&AnswerRecord>,
        decline: Option<ErrorCode>,
        received_at: Instant,
        events: &mut Vec<AuditEvent>,
        now: u64,
    ) -> Result<Outbound, StoreError> {
        let device = &payment.device;
        let wallet = &payment.wallet;
        let merchant_id = &payment.merchant;
        let amount = payment.amount;
        let tx_id = store::new_tx_id();
        let unit = amount.currency.code();
        let mut decline_reason = payment.decline_reason.clone();
        let mut decline = decline;
        let mut money_paid = amount.minor_signed();
        let legs = if decline.is_some() {
            Vec::new()
        } else if payment.points > 0 {
            match rewards::tender_legs(
                batch,
                &self.rewards,
                wallet,
                merchant_id,
                amount,
                payment.points,
                now,
            )
            .await?
            {
                Ok((legs, money)) => {
                    money_paid = money;
                    legs
                }
                Err((code, reason)) => {
                    decline = Some(code);
                    decline_reason = Some(reason);
                    Vec::new()
                }
            }
        } else {
            vec![
                Leg::debit(wallet, AccountKind::Wallet, unit, amount.minor_signed()),
                Leg::credit(
                    merchant_id,
                    AccountKind::Merchant,
                    unit,
                    amount.minor_signed(),
                ),
            ]
        };
        let code = match decline {
            Some(code) => Some(code),
            None => match ledger::post(
                batch,
                &ledger::NewTransfer {
                    tx_id: &tx_id,
                    kind: "merchant_payment",
                    origin: Some((device, &payment.key)),
                    related: None,
                    legs,
                    now_ms: now,
                },
            )
            .await
            {
                Ok(()) => None,
                Err(StoreError::Refused(code)) => Some(code),
                Err(StoreError::Invariant(broken)) => {
                    // a broken invariant refuses this one request and raises an alert
                    tracing::error!(%broken, device = %device, "ledger invariant broken; request refused");
                    self.metrics.count_invariant_alert();
                    Some(ErrorCode::InternalError)
                }
                Err(other) => return Err(other),
            },
        };
        let mut points_earned = 0;
        if code.is_none() {
            if payment.points > 0 {
                rewards::consume(batch, wallet, payment.points, now).await?;
            }
            if money_paid > 0 {
                let category = ledger::account(batch, merchant_id)
                    .await?
                    .and_then(|m| m.category);
                let paid = Money::new(u64::try_from(money_paid).unwrap_or(0), amount.currency)
                    .map_err(|e| StoreError::Invariant(e.to_string()))?;
                points_earned = rewards::earn(
                    batch,
                    &self.rewards,
                    wallet,
                    category.as_deref(),
                    &tx_id,
                    paid,
                    now,
                )
                .await?;
            }
        }

        // stage 4: record the decision with its signed receipt
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: if code.is_none() {
                Outcome::Approved
            } else {
                Outcome::Declined
            },
            code: code.map(|c| c.as_str().to_owned()),
            message: code.map(|c| {
                decline_reason
                    .clone()
                    .unwrap_or_else(|| c.description().to_owned())
            }),
            device_id: device.to_string(),
            idempotency_key: Some(payment.key.to_string()),
            body_sha256: Some(hex::encode(&payment.body_sha256)),
            tx_id: code.is_none().then(|| tx_id.to_string()),
            amount: Some(MoneyWire::from(amount)),
            merchant_id: Some(merchant_id.to_string()),
            counterparty: None,
            payer: payment.payer.as_ref().map(|p| p.masked.clone()),
            challenge: None,
            decided_at_ms: now,
        };
        let sealed = self
            .receipt_key
            .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload());
        store::record_decided(
            batch,
            device,
            &payment.key,
            payment.counter,
            &payment.body_sha256,
            code.is_none(),
            code,
            code.is_none().then_some(&tx_id),
            &sealed,
            now,
        )
        .await?;
        if let Some(answer) = answer {
            store::record_decided(
                batch,
                device,
                &answer.key,
                answer.counter,
                &answer.body_sha256,
                code.is_none(),
                code,
                code.is_none().then_some(&tx_id),
                &sealed,
                now,
            )
            .await?;
        }
        if let Some(payer) = &payment.payer {
            store::record_payer(batch, device, &payment.key, payer).await?;
        }
        let mut event = decision_event(
            now,
            device,
            format!("mqtt:{device}"),
            "pipeline",
            wallet.as_str(),
            code,
            code.is_none().then_some(&tx_id),
            amount,
        );
        event.wallet_id = Some(wallet.to_string());
        event.merchant_id = Some(merchant_id.to_string());
        let mut detail = match &payment.payer {
            Some(payer) => format!("idempotency_key {} payer {}", payment.key, payer.masked),
            None => format!("idempotency_key {}", payment.key),
        };
        if payment.points > 0 {
            detail.push_str(&format!(" points_redeemed {}", payment.points));
        }
        if points_earned > 0 {
            detail.push_str(&format!(" points_earned {points_earned}"));
        }
        event.detail = Some(detail);
        events.push(event);
        match code {
            None => self.metrics.count_approved(),
            Some(code) => self.metrics.count_declined(code),
        }
        Ok(Outbound {
            device: device.clone(),
            receipt: sealed,
            received_at,
        })
    }

    /// For a challenge answer, fetches what checking it needs outside the transaction: the
    /// TOTP secret (decrypted; `KEY_UNAVAILABLE` if the key provider cannot help) and the
    /// PIN check.
    async fn prepare_answer(&self, item: &Verified) -> Result<AnswerMaterial, (ErrorCode, String)> {
        let Operation::ChallengeAnswer { responses, .. } = &item.request.operation else {
            return Ok(AnswerMaterial::default());
        };
        let mut material = AnswerMaterial::default();
        for (mechanism, code) in responses {
            match mechanism {
                Mechanism::Totp => {
                    material.totp_secret =
                        profiles::totp_secret(&self.cipher, self.store.pool(), &item.wallet)
                            .await
                            .map_err(|error| {
                                self.metrics.count_key_failure();
                                tracing::error!(%error, "totp secret unavailable");
                                (ErrorCode::KeyUnavailable, "the key protecting the holder's TOTP secret is unavailable; retry later".to_owned())
                            })?;
                }
                Mechanism::Pin => {
                    material.pin_matches = Some(
                        identity::pin_matches(self.store.pool(), &item.wallet, code.expose())
                            .await
                            .map_err(|error| (ErrorCode::InternalError, error.to_string()))?,
                    );
                }
                Mechanism::Oob | Mechanism::DevicePossession => {}
            }
        }
        Ok(material)
    }

    /// Refuses a verified request before its decision, with its audit event.
    fn refuse_verified(
        &self,
        item: &Verified,
        code: ErrorCode,
        message: String,
        now: u64,
        events: &mut Vec<AuditEvent>,
    ) -> Outbound {
        events.push(rejected_event(
            &item.inbound.device,
            Some(&item.request),
            code,
            now,
        ));
        self.reject(
            &item.inbound,
            Some(&item.request),
            Some(item.body_sha256.clone()),
            code,
            message,
            now,
        )
    }

    /// A signed rejection: nothing was recorded.
    fn reject(
        &self,
        inbound: &Inbound,
        request: Option<&Request>,
        body_sha256: Option<Vec<u8>>,
        code: ErrorCode,
        message: String,
        now: u64,
    ) -> Outbound {
        // a decoder's message can quote the input (serde does for numbers): mask card numbers
        let message = paygate_core::audit::scrub(&message);
        self.metrics.count_refusal(code);
        tracing::info!(device = %inbound.device, code = %code, %message, "request rejected");
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: Outcome::Rejected,
            code: Some(code.as_str().to_owned()),
            message: Some(message),
            device_id: inbound.device.to_string(),
            idempotency_key: request.map(|r| r.idempotency_key.to_string()),
            body_sha256: body_sha256.map(hex::encode),
            tx_id: None,
            amount: None,
            merchant_id: None,
            counterparty: None,
            payer: None,
            challenge: None,
            decided_at_ms: now,
        };
        Outbound {
            device: inbound.device.clone(),
            receipt: self
                .receipt_key
                .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload()),
            received_at: inbound.received_at,
        }
    }
}

/// The audit event of a request refused before any decision (PCI DSS 10.2.1.4 when it is a
/// bad signature or a foreign identity).
/// A `payment_decided` audit event with what every decision records: who (device, over
/// which channel), the account it is about, the outcome and code, the transfer and the amount.
#[allow(clippy::too_many_arguments)]
fn decision_event(
    now: u64,
    device: &DeviceId,
    source: String,
    component: &str,
    account: &str,
    code: Option<ErrorCode>,
    tx_id: Option<&paygate_core::TxId>,
    amount: Money,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        now,
        EventType::PaymentDecided,
        format!("device:{device}"),
        source,
        if code.is_none() {
            AuditOutcome::Success
        } else {
            AuditOutcome::Failure
        },
        component,
        format!("account:{account}"),
    );
    event.code = code.map(|c| c.as_str().to_owned());
    event.tx_id = tx_id.map(|t| t.to_string());
    event.device_id = Some(device.to_string());
    event.amount = Some(format!("{} {}", amount.minor_signed(), amount.currency));
    event
}

fn rejected_event(
    device: &DeviceId,
    request: Option<&Request>,
    code: ErrorCode,
    now: u64,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        now,
        EventType::RequestRejected,
        format!("device:{device}"),
        format!("mqtt:{device}"),
        AuditOutcome::Failure,
        "pipeline",
        format!("device:{device}"),
    );
    event.code = Some(code.as_str().to_owned());
    event.device_id = Some(device.to_string());
    event.detail = request.map(|r| format!("idempotency_key {}", r.idempotency_key));
    event
}

/// A UPI payment's latest receipt (pending, or final once settled), for deduplication.
async fn upi_by_request(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    key: &IdempotencyKey,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT body_sha256, receipt FROM upi_payments WHERE device_id = $1 AND idempotency_key = $2",
    )
    .bind(device.as_str())
    .bind(key.as_str())
    .fetch_optional(&mut **batch)
    .await?;
    row.map(|r| Ok((r.try_get("body_sha256")?, r.try_get("receipt")?)))
        .transpose()
}

async fn upi_counter_used(
    batch: &mut Batch<'_>,
    device: &DeviceId,
    counter: u64,
) -> Result<bool, StoreError> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT payment_id FROM upi_payments WHERE device_id = $1 AND counter = $2",
    )
    .bind(device.as_str())
    .bind(i64::try_from(counter).unwrap_or(i64::MAX))
    .fetch_optional(&mut **batch)
    .await?;
    Ok(found.is_some())
}

#[allow(clippy::panic)]
fn unreachable_operation() -> Result<(&'static str, products::Decided), StoreError> {
    Err(StoreError::Invariant(
        "a wallet product arm got another operation".into(),
    ))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}
