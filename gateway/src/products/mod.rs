//! Product handlers: each takes the item's database transaction (a savepoint of the batch),
//! the rules in force and the prepared request, and returns a [`Decision`]. A handler posts
//! the money through the ledger (a posting's refusal, such as insufficient funds or a balance
//! cap, is part of the decision) and moves the state of its own product (a challenge, a
//! reward lot), but never writes a receipt, a stored request row or an audit event: the
//! pipeline's record stage turns every `Decision` into those, in one place.
//!
//! Invariants: every path that can approve a wallet debit runs [`limits::check_debit`]; a
//! handler that returns `Err` leaves the item's savepoint to be rolled back by its caller.

pub mod bulk;
pub mod challenge_answer;
pub mod limits;
pub mod merchant_payment;
pub mod refund;
pub mod status;
pub mod upi;
pub mod wallet;

use crate::config::{IdentitySettings, RewardsSettings, UpiSettings, WalletSettings};
pub use crate::identity::HeldKind;
use crate::identity::{Challenge, DevNotifier};
use crate::store::{Batch, SealedPayer, StoreError};
use crate::upi::Handoff;
use paygate_core::audit::AuditOutcome;
use paygate_core::request::{Operation, Request};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, Money, TxId};

/// The rules products decide by, from configuration.
pub struct Rules {
    pub wallet: WalletSettings,
    pub identity: IdentitySettings,
    pub rewards: RewardsSettings,
    pub upi: UpiSettings,
    pub notifier: DevNotifier,
}

/// A verified request and what was prepared for it outside the transaction.
pub struct Prepared {
    pub request: Request,
    pub body_sha256: Vec<u8>,
    /// The sending device's wallet (or merchant, or agent) account, from its enrolment.
    pub wallet: AccountId,
    /// The payer instrument, already encrypted.
    pub payer: Option<SealedPayer>,
    /// For a challenge answer: the holder's TOTP secret and the PIN check.
    pub answer: AnswerMaterial,
    /// For P2P and cash-in: the wallet the request names (`None`: no such wallet).
    pub party: Option<AccountId>,
}

/// Prepared before the batch's transaction: the holder's TOTP secret (decrypted through the
/// key provider) and the PIN check (Argon2, slow on purpose).
#[derive(Default)]
pub struct AnswerMaterial {
    pub totp_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    pub pin_matches: Option<bool>,
}

/// The request a stored decision answers: its device, key, counter and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRef {
    pub device: DeviceId,
    pub key: IdempotencyKey,
    pub counter: u64,
    pub body_sha256: Vec<u8>,
}

impl RequestRef {
    pub fn of(item: &Prepared) -> RequestRef {
        RequestRef {
            device: item.request.device_id.clone(),
            key: item.request.idempotency_key.clone(),
            counter: item.request.counter,
            body_sha256: item.body_sha256.clone(),
        }
    }
}

/// What a request came to.
pub struct Decision {
    pub effect: Effect,
    /// Identity-validation facts (challenge issued, answered, failed, expired, refused), each
    /// an `identity_decision` audit record.
    pub identity: Vec<IdentityNote>,
}

pub enum Effect {
    /// Refused before any decision: nothing is stored but the audit record.
    Refused { code: ErrorCode, message: String },
    /// Decided for good (posted or declined): a stored request, a final receipt.
    Final(Box<Final>),
    /// Held for a step-up: the challenge is stored with a `challenged` receipt.
    Challenge(Box<Challenge>),
    /// A wrong answer with attempts left: the challenge's receipt is renewed and the answer
    /// stored with it.
    ChallengeRetry {
        challenge: Box<Challenge>,
        attempts: u32,
        answer: RequestRef,
    },
    /// Sent to the UPI network after the commit; a `pending` receipt now.
    UpiInitiated(Box<UpiInitiation>),
    /// An earlier receipt answers (a closed challenge answered again, a status enquiry).
    Stored(Vec<u8>),
    /// A status enquiry about a key nothing was received under: `REQUEST_UNKNOWN`, naming
    /// that key.
    Unknown { key: IdempotencyKey },
}

/// A final decision and everything its receipt, stored row and audit record say.
#[derive(Debug, Clone)]
pub struct Final {
    /// The request it decides (for a payment completed by a challenge answer: the payment).
    pub request: RequestRef,
    /// The challenge answer that completed it: stored with the same receipt.
    pub answer: Option<RequestRef>,
    pub tx_id: Option<TxId>,
    pub code: Option<ErrorCode>,
    /// The receipt's message (why it was declined, or a note on an approval).
    pub message: Option<String>,
    pub amount: Money,
    pub merchant: Option<AccountId>,
    /// Who the money went to or came from (`wallet w-2`, `agent a-1`, `upi m@bank`).
    pub counterparty: Option<String>,
    /// The payer instrument, masked, for the receipt.
    pub payer: Option<String>,
    /// The payer instrument to store with the request (merchant payments).
    pub stored_payer: Option<SealedPayer>,
    pub audit: AuditFacts,
    /// A UPI payment's network references, for its receipt.
    pub upi: Option<paygate_core::receipt::UpiReference>,
    /// A UPI payment this settles (its row takes the final receipt).
    pub settles_upi_payment: Option<String>,
    /// Money moved that the books cannot follow (a UPI success the merchant cannot be
    /// credited): an alert for an operator.
    pub alert: bool,
}

/// What the audit record of a decision says beyond the receipt.
#[derive(Debug, Clone)]
pub struct AuditFacts {
    /// The account the record is about.
    pub account: String,
    pub wallet: Option<AccountId>,
    pub merchant: Option<AccountId>,
    pub detail: String,
    /// Decided on the UPI network's answer (source `upi-switch`, component `upi`), not on a
    /// device's request.
    pub by_upi_switch: bool,
}

/// A UPI payment or collect to record as initiated and hand to the worker.
pub struct UpiInitiation {
    pub payment_id: String,
    pub merchant: AccountId,
    pub merchant_vpa: String,
    pub amount: Money,
    pub payer: SealedPayer,
    pub collect: bool,
    pub handoff: Handoff,
}

/// An identity-validation fact about a payment.
#[derive(Debug, Clone)]
pub struct IdentityNote {
    pub device: DeviceId,
    pub wallet: AccountId,
    pub merchant: AccountId,
    pub amount: Money,
    pub key: IdempotencyKey,
    pub outcome: AuditOutcome,
    pub code: Option<ErrorCode>,
    pub detail: String,
}

impl Decision {
    pub fn of(effect: Effect) -> Decision {
        Decision {
            effect,
            identity: Vec::new(),
        }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Decision {
        Decision::of(Effect::Refused {
            code,
            message: message.into(),
        })
    }

    pub fn final_(decided: Final) -> Decision {
        Decision::of(Effect::Final(Box::new(decided)))
    }
}

/// What a wallet product came to before it becomes a [`Final`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Posted {
        tx_id: TxId,
        /// Who the money went to or came from, for the receipt (`wallet w-2`, `agent a-1`).
        counterparty: String,
    },
    Declined {
        code: ErrorCode,
        reason: String,
    },
}

pub(crate) fn declined(code: ErrorCode, reason: impl Into<String>) -> Result<Decided, StoreError> {
    Ok(Decided::Declined {
        code,
        reason: reason.into(),
    })
}

/// The request that causes a transfer.
pub struct Origin<'a> {
    pub device: &'a DeviceId,
    pub key: &'a IdempotencyKey,
    pub now_ms: u64,
}

/// Decides one request: one line per operation.
pub async fn decide(
    tx: &mut Batch<'_>,
    rules: &Rules,
    item: &Prepared,
    now_ms: u64,
) -> Result<Decision, StoreError> {
    match &item.request.operation {
        Operation::MerchantPayment {
            merchant_id,
            amount,
            ..
        } => merchant_payment::decide(tx, rules, item, merchant_id, *amount, 0, now_ms).await,
        Operation::PointsPayment {
            merchant_id,
            amount,
            points,
        } => merchant_payment::decide(tx, rules, item, merchant_id, *amount, *points, now_ms).await,
        Operation::ChallengeAnswer { .. } => {
            challenge_answer::decide(tx, rules, item, now_ms).await
        }
        Operation::UpiPayment { .. } | Operation::UpiCollect { .. } => {
            upi::decide(tx, rules, item, now_ms).await
        }
        Operation::P2pTransfer { .. }
        | Operation::CashIn { .. }
        | Operation::CashOut { .. }
        | Operation::Refund { .. } => wallet::decide(tx, rules, item, now_ms).await,
        Operation::StatusEnquiry { .. } => status::decide(tx, item).await,
    }
}
