//! paygate's pure domain: identifiers, money, the signed request and receipt envelope, the
//! transaction schema, the closed list of error codes, and the audit trail's format and verifier.
//!
//! This crate does no IO and knows nothing of tokio, sqlx, axum or MQTT. Everything here is
//! deterministic given its inputs (the clock is always a parameter).

pub mod audit;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod ids;
pub mod money;
pub mod payer;
pub mod receipt;
pub mod redact;
pub mod request;
pub mod strict_json;
pub mod topics;

pub use error::ErrorCode;
pub use ids::{AccountId, DeviceId, IdempotencyKey, TxId};
pub use money::{Currency, Money};
