//! A status enquiry: a device asks what became of one of its own requests, by idempotency
//! key. The answer is that request's stored receipt, exactly as first sent (final, or the
//! challenge or pending receipt while it waits), or `REQUEST_UNKNOWN` naming the key when
//! nothing was received under it. Nothing is decided or written.

use super::{Decision, Effect, Prepared};
use crate::store::{Batch, StoreError};
use paygate_core::request::Operation;
use paygate_core::{ErrorCode, IdempotencyKey};

/// Where a request's receipt is kept, latest first: a request decided for good answers with
/// its `requests` row over its UPI payment or challenge row.
const TABLES: [&str; 3] = ["requests", "upi_payments", "identity_challenges"];

pub async fn decide(tx: &mut Batch<'_>, item: &Prepared) -> Result<Decision, StoreError> {
    let Operation::StatusEnquiry { idempotency_key } = &item.request.operation else {
        return Err(StoreError::Invariant(
            "the status enquiry handler got another operation".into(),
        ));
    };
    match stored_receipt(tx, item, idempotency_key).await? {
        Some(receipt) => Ok(Decision::of(Effect::Stored(receipt))),
        None => Ok(Decision::of(Effect::Unknown {
            key: idempotency_key.clone(),
        })),
    }
}

async fn stored_receipt(
    tx: &mut Batch<'_>,
    item: &Prepared,
    key: &IdempotencyKey,
) -> Result<Option<Vec<u8>>, StoreError> {
    for table in TABLES {
        let sql =
            format!("SELECT receipt FROM {table} WHERE device_id = $1 AND idempotency_key = $2");
        let found: Option<Vec<u8>> = sqlx::query_scalar(&sql)
            .bind(item.request.device_id.as_str())
            .bind(key.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The message of a `REQUEST_UNKNOWN` answer.
pub fn unknown_message(key: &IdempotencyKey) -> String {
    format!(
        "no request with idempotency key {key} is recorded for this device: {}",
        ErrorCode::RequestUnknown.description()
    )
}
