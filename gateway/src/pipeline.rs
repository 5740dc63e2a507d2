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
use crate::config::PipelineSettings;
use crate::keys::cipher::FieldCipher;
use crate::metrics::Metrics;
use crate::store::{self, AccountKind, Batch, SealedPayer, Store, StoreError};
use bytes::Bytes;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::envelope::{SigningKey, UnverifiedEnvelope};
use paygate_core::payer::Payer;
use paygate_core::receipt::{Outcome, Receipt, RECEIPT_CONTENT_TYPE};
use paygate_core::request::{
    check_freshness, decode_request, MoneyWire, Operation, Request, REQUEST_CONTENT_TYPE,
    SCHEMA_VERSION,
};
use paygate_core::{AccountId, DeviceId, ErrorCode};
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
}

struct Verified {
    inbound: Inbound,
    request: Request,
    body_sha256: Vec<u8>,
    /// The sending device's wallet, from its enrolment.
    wallet: AccountId,
    /// The payer instrument, already encrypted (before the batch's transaction began).
    payer: Option<SealedPayer>,
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl Pipeline {
    pub fn new(
        store: Store,
        receipt_key: Arc<SigningKey>,
        settings: PipelineSettings,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        cipher: Arc<FieldCipher>,
    ) -> Pipeline {
        Pipeline {
            store,
            receipt_key,
            settings,
            metrics,
            audit,
            cipher,
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
                        verified.push(ok)
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
        match self.decide_batch(&verified, events, now).await {
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
        let Operation::MerchantPayment { payer, .. } = &request.operation;
        let Some(payer) = payer else {
            return Ok(None);
        };
        let (kind, value) = match payer {
            Payer::Card { pan } => ("card", pan.expose()),
            Payer::Upi { vpa, .. } => ("upi", vpa.expose()),
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
                masked: payer.masked(),
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
        // stage 2: deduplicate
        if let Some(decided) = store::find_decided(batch, device, &request.idempotency_key).await? {
            if decided.body_sha256 == item.body_sha256 {
                self.metrics.count_replayed();
                return Ok(Outbound {
                    device: device.clone(),
                    receipt: decided.receipt,
                    received_at: item.inbound.received_at,
                });
            }
            events.push(rejected_event(
                device,
                Some(request),
                ErrorCode::IdempotencyConflict,
                now,
            ));
            return Ok(self.reject(
                &item.inbound,
                Some(request),
                Some(item.body_sha256.clone()),
                ErrorCode::IdempotencyConflict,
                "this idempotency key was used with a different request body".into(),
                now,
            ));
        }
        if store::counter_used(batch, device, request.counter).await? {
            events.push(rejected_event(
                device,
                Some(request),
                ErrorCode::CounterReused,
                now,
            ));
            return Ok(self.reject(
                &item.inbound,
                Some(request),
                Some(item.body_sha256.clone()),
                ErrorCode::CounterReused,
                format!(
                    "counter {} was already used by another request",
                    request.counter
                ),
                now,
            ));
        }

        // stage 3: decide and post
        let tx_id = store::new_tx_id();
        let Operation::MerchantPayment {
            merchant_id,
            amount,
            ..
        } = &request.operation;
        let wallet = &item.wallet;
        let decision = store::post_transfer(
            batch,
            &tx_id,
            "merchant_payment",
            Some((device, &request.idempotency_key)),
            wallet,
            merchant_id,
            AccountKind::Merchant,
            *amount,
            now,
        )
        .await;
        let code = match decision {
            Ok(()) => None,
            Err(StoreError::Refused(code)) => Some(code),
            Err(StoreError::Invariant(broken)) => {
                // a broken invariant refuses this one request and raises an alert
                tracing::error!(%broken, device = %device, "ledger invariant broken; request refused");
                self.metrics.count_invariant_alert();
                Some(ErrorCode::InternalError)
            }
            Err(other) => return Err(other),
        };

        // stage 4: record the decision with its signed receipt
        let receipt = Receipt {
            v: SCHEMA_VERSION,
            outcome: if code.is_none() {
                Outcome::Approved
            } else {
                Outcome::Declined
            },
            code: code.map(|c| c.as_str().to_owned()),
            message: code.map(|c| c.description().to_owned()),
            device_id: device.to_string(),
            idempotency_key: Some(request.idempotency_key.to_string()),
            body_sha256: Some(hex::encode(&item.body_sha256)),
            tx_id: code.is_none().then(|| tx_id.to_string()),
            amount: Some(MoneyWire::from(*amount)),
            merchant_id: Some(merchant_id.to_string()),
            payer: item.payer.as_ref().map(|p| p.masked.clone()),
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
            code.is_none().then_some(&tx_id),
            &sealed,
            now,
        )
        .await?;
        if let Some(payer) = &item.payer {
            store::record_payer(batch, device, &request.idempotency_key, payer).await?;
        }
        let mut event = AuditEvent::new(
            now,
            EventType::PaymentDecided,
            format!("device:{device}"),
            format!("mqtt:{device}"),
            if code.is_none() {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failure
            },
            "pipeline",
            format!("account:{wallet}"),
        );
        event.code = code.map(|c| c.as_str().to_owned());
        event.tx_id = code.is_none().then(|| tx_id.to_string());
        event.device_id = Some(device.to_string());
        event.wallet_id = Some(wallet.to_string());
        event.merchant_id = Some(merchant_id.to_string());
        event.amount = Some(format!("{} {}", amount.minor_signed(), amount.currency));
        event.detail = Some(match &item.payer {
            Some(payer) => format!(
                "idempotency_key {} payer {}",
                request.idempotency_key, payer.masked
            ),
            None => format!("idempotency_key {}", request.idempotency_key),
        });
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
            payer: None,
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

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}
