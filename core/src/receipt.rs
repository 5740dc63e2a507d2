//! The receipt the gateway signs for every request it decides, and the notice it signs when
//! its device front refuses something. Both travel in the same envelope as requests, signed by
//! the gateway's receipt key, so a terminal can later prove what it was told.

use crate::error::ErrorCode;
use crate::request::MoneyWire;
use crate::strict_json::reject_duplicate_keys;
use serde::{Deserialize, Serialize};

pub const RECEIPT_CONTENT_TYPE: &str = "application/vnd.paygate.receipt.v1+json";

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Posted: money moved, durably, before this receipt was sent.
    Approved,
    /// A valid request the gateway decided against (funds, limits, unknown payee...). Final for
    /// this idempotency key: a retry returns this same receipt.
    Declined,
    /// The message was refused before any decision (bad envelope, signature, schema, topic).
    /// Nothing was recorded; fix the request and send it again.
    Rejected,
    /// Not final: the payment needs a step-up (`challenge` says which mechanisms). The device
    /// answers with a `challenge_answer` request; a final receipt follows.
    Challenged,
    /// Not final: the UPI network has not given its final answer yet. The gateway resolves the
    /// payment on its own (status checks, reversal) and pushes the final receipt; a resend of
    /// the same request gets the latest receipt. Never resubmit it under a new key.
    Pending,
}

/// What a challenged receipt asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeWire {
    pub challenge_id: String,
    /// e.g. `["totp"]`, `["pin", "oob"]`.
    pub mechanisms: Vec<String>,
    pub expires_at_ms: u64,
    pub attempts_left: u32,
}

/// A UPI payment's references: its transaction id (35 alphanumeric characters, given when the
/// payment is sent: the one to quote to the bank), and the retrieval reference number the
/// network gave it (12 digits), once the network has answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpiReference {
    pub txn_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rrn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub v: u32,
    pub outcome: Outcome,
    /// The stable error code for declined and rejected outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Lowercase hex SHA-256 of the signed request payload, when the envelope could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<MoneyWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// For wallet products: who the money went to or came from (`wallet w-2`, `agent a-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<String>,
    /// The payer instrument, masked: `card 411111******1111` or `upi a****r@okbank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// With outcome `challenged`: what to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<ChallengeWire>,
    /// UPI payments: the network's references (see [`UpiReference`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upi: Option<UpiReference>,
    /// With code `OVERLOADED`: how long the device should wait before sending the same
    /// request again, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// When the gateway decided, in milliseconds since the Unix epoch, UTC.
    pub decided_at_ms: u64,
}

impl Receipt {
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code.as_deref().and_then(ErrorCode::parse)
    }

    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Strict decode, as a device must do it.
    pub fn decode(payload: &[u8]) -> Result<Receipt, serde_json::Error> {
        reject_duplicate_keys(payload)?;
        serde_json::from_slice(payload)
    }
}
