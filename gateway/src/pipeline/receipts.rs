//! The receipts the record stage signs: final (approved or declined), challenged, pending
//! (UPI) and rejected. One builder each; nothing else in the gateway makes a `Receipt`.

use crate::identity::Challenge;
use crate::products::{Final, UpiInitiation};
use paygate_core::receipt::{ChallengeWire, Outcome, Receipt};
use paygate_core::request::{MoneyWire, SCHEMA_VERSION};
use paygate_core::{DeviceId, ErrorCode, IdempotencyKey};

pub fn final_receipt(decided: &Final, now_ms: u64) -> Receipt {
    Receipt {
        v: SCHEMA_VERSION,
        outcome: if decided.code.is_none() {
            Outcome::Approved
        } else {
            Outcome::Declined
        },
        code: decided.code.map(|c| c.as_str().to_owned()),
        // a decline's reason can quote what the device sent (an id): no card number in it
        message: decided.message.as_deref().map(paygate_core::audit::scrub),
        device_id: decided.request.device.to_string(),
        idempotency_key: Some(decided.request.key.to_string()),
        body_sha256: Some(hex::encode(&decided.request.body_sha256)),
        tx_id: decided.tx_id.as_ref().map(|t| t.to_string()),
        amount: Some(MoneyWire::from(decided.amount)),
        merchant_id: decided.merchant.as_ref().map(|m| m.to_string()),
        counterparty: decided.counterparty.clone(),
        payer: decided.payer.clone(),
        challenge: None,
        upi: decided.upi.clone(),
        retry_after_ms: None,
        decided_at_ms: now_ms,
    }
}

pub fn challenge_receipt(challenge: &Challenge, attempts_left: u32, now_ms: u64) -> Receipt {
    let names: Vec<String> = challenge
        .mechanisms
        .iter()
        .map(|m| m.as_str().to_owned())
        .collect();
    Receipt {
        v: SCHEMA_VERSION,
        outcome: Outcome::Challenged,
        code: None,
        message: Some(format!(
            "confirm {} to {} with: {}",
            challenge.amount,
            challenge.merchant,
            names.join(", ")
        )),
        device_id: challenge.device.to_string(),
        idempotency_key: Some(challenge.idempotency_key.to_string()),
        body_sha256: Some(hex::encode(&challenge.body_sha256)),
        tx_id: None,
        amount: Some(MoneyWire::from(challenge.amount)),
        merchant_id: Some(challenge.merchant.to_string()),
        counterparty: None,
        payer: challenge.payer.as_ref().map(|p| p.masked.clone()),
        challenge: Some(ChallengeWire {
            challenge_id: challenge.challenge_id.clone(),
            mechanisms: names,
            expires_at_ms: challenge.expires_at_ms,
            attempts_left,
        }),
        upi: None,
        retry_after_ms: None,
        decided_at_ms: now_ms,
    }
}

pub fn pending_receipt(
    upi: &UpiInitiation,
    device: &DeviceId,
    key: &IdempotencyKey,
    body_sha256: &[u8],
    now_ms: u64,
) -> Receipt {
    Receipt {
        v: SCHEMA_VERSION,
        outcome: Outcome::Pending,
        code: None,
        message: Some("sent to the UPI network; the final receipt follows".into()),
        device_id: device.to_string(),
        idempotency_key: Some(key.to_string()),
        body_sha256: Some(hex::encode(body_sha256)),
        tx_id: None,
        amount: Some(MoneyWire::from(upi.amount)),
        merchant_id: Some(upi.merchant.to_string()),
        counterparty: Some(format!("upi {}", upi.merchant_vpa)),
        payer: Some(upi.payer.masked.clone()),
        challenge: None,
        upi: Some(paygate_core::receipt::UpiReference {
            txn_id: upi.payment_id.clone(),
            rrn: None,
        }),
        retry_after_ms: None,
        decided_at_ms: now_ms,
    }
}

pub fn rejected_receipt(
    device: &DeviceId,
    key: Option<&IdempotencyKey>,
    body_sha256: Option<&[u8]>,
    code: ErrorCode,
    message: String,
    now_ms: u64,
) -> Receipt {
    Receipt {
        v: SCHEMA_VERSION,
        outcome: Outcome::Rejected,
        code: Some(code.as_str().to_owned()),
        message: Some(paygate_core::audit::scrub(&message)),
        device_id: device.to_string(),
        idempotency_key: key.map(|k| k.to_string()),
        body_sha256: body_sha256.map(hex::encode),
        tx_id: None,
        amount: None,
        merchant_id: None,
        counterparty: None,
        payer: None,
        challenge: None,
        upi: None,
        retry_after_ms: None,
        decided_at_ms: now_ms,
    }
}
