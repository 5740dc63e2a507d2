//! The transaction request, schema version 1, as carried in the signed envelope's payload.
//!
//! The payload is JSON, decoded strictly: duplicate keys, unknown fields, floats or strings
//! for amounts and unknown versions are errors. Wire types (`*Wire`) are what serde sees;
//! [`decode_request`] turns them into domain types with a precise [`ErrorCode`].

use crate::error::ErrorCode;
use crate::identity::Mechanism;
use crate::ids::{AccountId, DeviceId, IdempotencyKey};
use crate::money::{Currency, Money, AMOUNT_MINOR_MAX};
use crate::payer::{Payer, PayerWire};
use crate::strict_json::reject_duplicate_keys;
use serde::{Deserialize, Serialize};

/// The one schema version this gateway speaks.
pub const SCHEMA_VERSION: u32 = 1;

/// Content type of a request envelope (COSE protected header 3).
pub const REQUEST_CONTENT_TYPE: &str = "application/vnd.paygate.request.v1+json";

/// An amount on the wire: an integer count of minor units and a currency code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyWire {
    pub minor: i64,
    pub currency: String,
}

impl From<Money> for MoneyWire {
    fn from(money: Money) -> Self {
        MoneyWire {
            minor: money.minor_signed(),
            currency: money.currency.code().to_owned(),
        }
    }
}

/// The request as it appears in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestWire {
    pub v: u32,
    pub device_id: String,
    pub idempotency_key: String,
    pub counter: u64,
    pub created_at_ms: u64,
    pub op: OperationWire,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OperationWire {
    /// The device's wallet pays a merchant.
    MerchantPayment {
        merchant_id: String,
        amount: MoneyWire,
        /// The customer's card or UPI address presented at the terminal, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payer: Option<PayerWire>,
    },
    /// The answer to a step-up challenge. Restates the amount and payee the holder saw and
    /// approved (dynamic linking): they must be the challenged payment's.
    ChallengeAnswer {
        challenge_id: String,
        merchant_id: String,
        amount: MoneyWire,
        /// Mechanism name -> the code or PIN the holder entered.
        responses: std::collections::BTreeMap<String, String>,
    },
    /// The device's wallet pays a merchant with part (or all) of the amount in reward points.
    PointsPayment {
        merchant_id: String,
        amount: MoneyWire,
        points: i64,
    },
    /// A customer pays a merchant's UPI address from their bank account (UPI PIN in the
    /// encrypted credential block), through the UPI network.
    UpiPayment {
        merchant_vpa: String,
        amount: MoneyWire,
        payer: PayerWire,
    },
    /// A merchant's terminal asks a customer's UPI address for a payment (collect); the
    /// customer approves it in their own UPI app with their PIN.
    UpiCollect {
        payer_vpa: String,
        amount: MoneyWire,
    },
    /// The device's wallet sends money to another wallet (P2P).
    P2pTransfer { to: PartyWire, amount: MoneyWire },
    /// An agent's terminal sells e-money for cash: the agent's float pays the customer's
    /// wallet.
    CashIn {
        customer: PartyWire,
        amount: MoneyWire,
    },
    /// The customer's device buys cash from an agent: the wallet pays the agent's float, and
    /// the agent hands over the cash on seeing the receipt.
    CashOut { agent_id: String, amount: MoneyWire },
    /// A merchant's terminal gives back all or part of one of its payments.
    Refund { tx_id: String, amount: MoneyWire },
    /// What became of one of this device's own requests, by its idempotency key: the answer
    /// is that request's stored receipt (or `REQUEST_UNKNOWN`). Decides and moves nothing.
    StatusEnquiry { idempotency_key: String },
}

/// A wallet named by exactly one of its id, its phone alias (E.164) or its VPA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PartyWire {
    WalletId(String),
    Phone(String),
    Vpa(String),
}

/// A wallet named by id, phone alias or VPA (resolved through the encrypted profiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    Wallet(AccountId),
    Phone(String),
    Vpa(crate::payer::Vpa),
}

impl Party {
    fn decode(wire: &PartyWire) -> Result<Party, RequestError> {
        let malformed = |m: String| RequestError::new(ErrorCode::MalformedRequest, m);
        Ok(match wire {
            PartyWire::WalletId(id) => {
                Party::Wallet(AccountId::parse(id).map_err(|e| malformed(e.to_string()))?)
            }
            PartyWire::Phone(phone) => {
                let digits = phone.strip_prefix('+').unwrap_or("");
                // E.164: a country code never starts with 0 (national and 00 forms are refused,
                // so one number has one spelling)
                if !(8..=15).contains(&digits.len())
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || digits.starts_with('0')
                {
                    return Err(malformed(
                        "phone must be E.164: + and 8 to 15 digits, the first not 0".to_owned(),
                    ));
                }
                Party::Phone(phone.clone())
            }
            PartyWire::Vpa(vpa) => Party::Vpa(
                crate::payer::Vpa::parse(vpa)
                    .map_err(|m| RequestError::new(ErrorCode::PayerInvalid, m))?,
            ),
        })
    }

    fn to_wire(&self) -> PartyWire {
        match self {
            Party::Wallet(id) => PartyWire::WalletId(id.to_string()),
            Party::Phone(phone) => PartyWire::Phone(phone.clone()),
            Party::Vpa(vpa) => PartyWire::Vpa(vpa.expose().to_owned()),
        }
    }
}

impl std::fmt::Display for Party {
    /// Masked: phone and VPA are personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Party::Wallet(id) => write!(f, "wallet {id}"),
            Party::Phone(phone) => write!(f, "phone {}", crate::audit::mask_phone(phone)),
            Party::Vpa(vpa) => write!(f, "vpa {}", vpa.masked()),
        }
    }
}

/// A decoded, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub device_id: DeviceId,
    pub idempotency_key: IdempotencyKey,
    /// Strictly increasing per device on the device side; each value is accepted once.
    pub counter: u64,
    /// Milliseconds since the Unix epoch, UTC, by the device's clock.
    pub created_at_ms: u64,
    pub operation: Operation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    MerchantPayment {
        merchant_id: AccountId,
        amount: Money,
        payer: Option<Payer>,
    },
    ChallengeAnswer {
        challenge_id: String,
        merchant_id: AccountId,
        amount: Money,
        responses: Vec<(Mechanism, OneTimeCode)>,
    },
    PointsPayment {
        merchant_id: AccountId,
        amount: Money,
        points: i64,
    },
    UpiPayment {
        merchant_vpa: crate::payer::Vpa,
        amount: Money,
        /// Always `Payer::Upi` (a card payer is `PAYER_INVALID`).
        payer: Payer,
    },
    UpiCollect {
        payer_vpa: crate::payer::Vpa,
        amount: Money,
    },
    P2pTransfer {
        to: Party,
        amount: Money,
    },
    CashIn {
        customer: Party,
        amount: Money,
    },
    CashOut {
        agent_id: AccountId,
        amount: Money,
    },
    Refund {
        tx_id: crate::ids::TxId,
        amount: Money,
    },
    StatusEnquiry {
        idempotency_key: IdempotencyKey,
    },
}

/// A code or PIN the holder typed. Never printed, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeCode(String);

impl OneTimeCode {
    pub fn new(code: impl Into<String>) -> OneTimeCode {
        OneTimeCode(code.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Why a payload is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    v: Option<serde_json::Value>,
}

/// Decodes a request payload strictly.
pub fn decode_request(payload: &[u8]) -> Result<Request, RequestError> {
    reject_duplicate_keys(payload)
        .map_err(|e| RequestError::new(ErrorCode::MalformedRequest, e.to_string()))?;
    let probe: VersionProbe = serde_json::from_slice(payload)
        .map_err(|e| RequestError::new(ErrorCode::MalformedRequest, e.to_string()))?;
    match probe.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(other) => {
            return Err(RequestError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "schema version {other} is not supported; this gateway speaks {SCHEMA_VERSION}"
                ),
            ))
        }
        None => {
            return Err(RequestError::new(
                ErrorCode::MalformedRequest,
                "missing field `v`",
            ))
        }
    }
    let wire: RequestWire = serde_json::from_slice(payload)
        .map_err(|e| RequestError::new(ErrorCode::MalformedRequest, e.to_string()))?;
    let malformed =
        |e: crate::ids::IdError| RequestError::new(ErrorCode::MalformedRequest, e.to_string());
    let operation = match wire.op {
        OperationWire::MerchantPayment {
            merchant_id,
            amount,
            payer,
        } => Operation::MerchantPayment {
            merchant_id: AccountId::parse(&merchant_id).map_err(malformed)?,
            amount: decode_money(&amount)?,
            payer: payer
                .as_ref()
                .map(Payer::decode)
                .transpose()
                .map_err(|(code, message)| RequestError::new(code, message))?,
        },
        OperationWire::ChallengeAnswer {
            challenge_id,
            merchant_id,
            amount,
            responses,
        } => {
            let id_ok = !challenge_id.is_empty()
                && challenge_id.len() <= 64
                && challenge_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !id_ok {
                return Err(RequestError::new(
                    ErrorCode::MalformedRequest,
                    "challenge_id must be 1-64 of [A-Za-z0-9-]",
                ));
            }
            if responses.is_empty() || responses.len() > 4 {
                return Err(RequestError::new(
                    ErrorCode::MalformedRequest,
                    "responses must name 1 to 4 mechanisms",
                ));
            }
            let mut decoded = Vec::with_capacity(responses.len());
            for (name, code) in responses {
                let mechanism = Mechanism::parse(&name).ok_or_else(|| {
                    RequestError::new(
                        ErrorCode::MalformedRequest,
                        format!("unknown mechanism {name:?}"),
                    )
                })?;
                if code.is_empty() || code.len() > 64 {
                    return Err(RequestError::new(
                        ErrorCode::MalformedRequest,
                        format!("the {name} response must be 1-64 characters"),
                    ));
                }
                decoded.push((mechanism, OneTimeCode(code)));
            }
            Operation::ChallengeAnswer {
                challenge_id,
                merchant_id: AccountId::parse(&merchant_id).map_err(malformed)?,
                amount: decode_money(&amount)?,
                responses: decoded,
            }
        }
        OperationWire::PointsPayment {
            merchant_id,
            amount,
            points,
        } => {
            if !(1..=1_000_000_000_000).contains(&points) {
                return Err(RequestError::new(
                    ErrorCode::AmountInvalid,
                    format!("points must be 1 to 10^12, got {points}"),
                ));
            }
            Operation::PointsPayment {
                merchant_id: AccountId::parse(&merchant_id).map_err(malformed)?,
                amount: decode_money(&amount)?,
                points,
            }
        }
        OperationWire::UpiPayment {
            merchant_vpa,
            amount,
            payer,
        } => {
            let payer = Payer::decode(&payer)
                .map_err(|(code, message)| RequestError::new(code, message))?;
            if !matches!(payer, Payer::Upi { .. }) {
                return Err(RequestError::new(
                    ErrorCode::PayerInvalid,
                    "a UPI payment needs a UPI payer with a credential block",
                ));
            }
            Operation::UpiPayment {
                merchant_vpa: crate::payer::Vpa::parse(&merchant_vpa)
                    .map_err(|m| RequestError::new(ErrorCode::PayerInvalid, m))?,
                amount: decode_money(&amount)?,
                payer,
            }
        }
        OperationWire::UpiCollect { payer_vpa, amount } => Operation::UpiCollect {
            payer_vpa: crate::payer::Vpa::parse(&payer_vpa)
                .map_err(|m| RequestError::new(ErrorCode::PayerInvalid, m))?,
            amount: decode_money(&amount)?,
        },
        OperationWire::P2pTransfer { to, amount } => Operation::P2pTransfer {
            to: Party::decode(&to)?,
            amount: decode_money(&amount)?,
        },
        OperationWire::CashIn { customer, amount } => Operation::CashIn {
            customer: Party::decode(&customer)?,
            amount: decode_money(&amount)?,
        },
        OperationWire::CashOut { agent_id, amount } => Operation::CashOut {
            agent_id: AccountId::parse(&agent_id).map_err(malformed)?,
            amount: decode_money(&amount)?,
        },
        OperationWire::Refund { tx_id, amount } => Operation::Refund {
            tx_id: crate::ids::TxId::parse(&tx_id).map_err(malformed)?,
            amount: decode_money(&amount)?,
        },
        OperationWire::StatusEnquiry { idempotency_key } => Operation::StatusEnquiry {
            idempotency_key: IdempotencyKey::parse(&idempotency_key).map_err(malformed)?,
        },
    };
    // counters and times are stored in signed 64-bit columns
    let signed_max = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
    if wire.counter > signed_max || wire.created_at_ms > signed_max {
        return Err(RequestError::new(
            ErrorCode::MalformedRequest,
            "counter and created_at_ms must fit in 63 bits",
        ));
    }
    Ok(Request {
        device_id: DeviceId::parse(&wire.device_id).map_err(malformed)?,
        idempotency_key: IdempotencyKey::parse(&wire.idempotency_key).map_err(malformed)?,
        counter: wire.counter,
        created_at_ms: wire.created_at_ms,
        operation,
    })
}

/// Turns a wire amount into money, with the code a device should see.
pub fn decode_money(wire: &MoneyWire) -> Result<Money, RequestError> {
    let currency = Currency::parse(&wire.currency).ok_or_else(|| {
        RequestError::new(
            ErrorCode::CurrencyUnknown,
            format!(
                "currency {:?} is not an active ISO 4217 code",
                wire.currency
            ),
        )
    })?;
    let minor = u64::try_from(wire.minor)
        .ok()
        .filter(|minor| *minor > 0 && *minor <= AMOUNT_MINOR_MAX)
        .ok_or_else(|| {
            RequestError::new(
                ErrorCode::AmountInvalid,
                format!(
                    "amount must be 1 to {AMOUNT_MINOR_MAX} minor units, got {}",
                    wire.minor
                ),
            )
        })?;
    Money::new(minor, currency)
        .map_err(|e| RequestError::new(ErrorCode::AmountInvalid, e.to_string()))
}

/// Checks the request's creation time against the gateway's clock.
pub fn check_freshness(
    created_at_ms: u64,
    now_ms: u64,
    age_max_ms: u64,
    future_skew_max_ms: u64,
) -> Result<(), ErrorCode> {
    if created_at_ms > now_ms.saturating_add(future_skew_max_ms) {
        return Err(ErrorCode::RequestFromFuture);
    }
    if now_ms.saturating_sub(created_at_ms) > age_max_ms {
        return Err(ErrorCode::RequestExpired);
    }
    Ok(())
}

impl Request {
    /// The wire form of this request (used by the edge agent to build payloads).
    pub fn to_wire(&self) -> RequestWire {
        RequestWire {
            v: SCHEMA_VERSION,
            device_id: self.device_id.to_string(),
            idempotency_key: self.idempotency_key.to_string(),
            counter: self.counter,
            created_at_ms: self.created_at_ms,
            op: match &self.operation {
                Operation::MerchantPayment {
                    merchant_id,
                    amount,
                    payer,
                } => OperationWire::MerchantPayment {
                    merchant_id: merchant_id.to_string(),
                    amount: MoneyWire::from(*amount),
                    payer: payer.as_ref().map(Payer::to_wire),
                },
                Operation::ChallengeAnswer {
                    challenge_id,
                    merchant_id,
                    amount,
                    responses,
                } => OperationWire::ChallengeAnswer {
                    challenge_id: challenge_id.clone(),
                    merchant_id: merchant_id.to_string(),
                    amount: MoneyWire::from(*amount),
                    responses: responses
                        .iter()
                        .map(|(m, code)| (m.as_str().to_owned(), code.0.clone()))
                        .collect(),
                },
                Operation::PointsPayment {
                    merchant_id,
                    amount,
                    points,
                } => OperationWire::PointsPayment {
                    merchant_id: merchant_id.to_string(),
                    amount: MoneyWire::from(*amount),
                    points: *points,
                },
                Operation::UpiPayment {
                    merchant_vpa,
                    amount,
                    payer,
                } => OperationWire::UpiPayment {
                    merchant_vpa: merchant_vpa.expose().to_owned(),
                    amount: MoneyWire::from(*amount),
                    payer: payer.to_wire(),
                },
                Operation::UpiCollect { payer_vpa, amount } => OperationWire::UpiCollect {
                    payer_vpa: payer_vpa.expose().to_owned(),
                    amount: MoneyWire::from(*amount),
                },
                Operation::P2pTransfer { to, amount } => OperationWire::P2pTransfer {
                    to: to.to_wire(),
                    amount: MoneyWire::from(*amount),
                },
                Operation::CashIn { customer, amount } => OperationWire::CashIn {
                    customer: customer.to_wire(),
                    amount: MoneyWire::from(*amount),
                },
                Operation::CashOut { agent_id, amount } => OperationWire::CashOut {
                    agent_id: agent_id.to_string(),
                    amount: MoneyWire::from(*amount),
                },
                Operation::Refund { tx_id, amount } => OperationWire::Refund {
                    tx_id: tx_id.to_string(),
                    amount: MoneyWire::from(*amount),
                },
                Operation::StatusEnquiry { idempotency_key } => OperationWire::StatusEnquiry {
                    idempotency_key: idempotency_key.to_string(),
                },
            },
        }
    }

    /// The exact JSON bytes a device signs.
    pub fn to_payload(&self) -> Vec<u8> {
        // serializing a struct of strings and integers cannot fail
        serde_json::to_vec(&self.to_wire()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"v":1,"device_id":"pos-1","idempotency_key":"k1","counter":7,"created_at_ms":1700000000000,"op":{"type":"merchant_payment","merchant_id":"m-1","amount":{"minor":1250,"currency":"INR"}}}"#;

    fn code_of(payload: &str) -> Result<(), ErrorCode> {
        decode_request(payload.as_bytes())
            .map(|_| ())
            .map_err(|e| e.code)
    }

    #[test]
    fn decodes_a_valid_request_and_round_trips() {
        let request = decode_request(GOOD.as_bytes()).expect("valid");
        assert_eq!(request.counter, 7);
        let Operation::MerchantPayment {
            merchant_id,
            amount,
            payer,
        } = &request.operation
        else {
            panic!("a payment");
        };
        assert!(payer.is_none());
        assert_eq!(merchant_id.as_str(), "m-1");
        assert_eq!(amount.minor, 1250);
        assert_eq!(decode_request(&request.to_payload()), Ok(request));
    }

    #[test]
    fn refuses_each_malformation_with_its_code() {
        use ErrorCode::*;
        let table: &[(&str, &str, ErrorCode)] = &[
            ("duplicate top key", r#""counter":7,"#, MalformedRequest),
            ("float amount", r#""minor":12.5,"#, MalformedRequest),
            ("string amount", r#""minor":"1250","#, MalformedRequest),
            ("zero amount", r#""minor":0,"#, AmountInvalid),
            ("negative amount", r#""minor":-5,"#, AmountInvalid),
            ("unknown currency", r#""currency":"ABC"}"#, CurrencyUnknown),
            ("unknown field", r#""extra":1,"#, MalformedRequest),
            ("version 2", r#""v":2,"#, UnsupportedVersion),
            ("bad device id", r#""device_id":"a/b","#, MalformedRequest),
            ("unknown op", r#""type":"steal","#, MalformedRequest),
        ];
        for (name, fragment, expected) in table {
            let payload = mutate(fragment);
            assert_eq!(code_of(&payload), Err(*expected), "{name}: {payload}");
        }
        assert_eq!(code_of("not json"), Err(MalformedRequest));
        assert_eq!(code_of(r#"{"device_id":"x"}"#), Err(MalformedRequest));
    }

    /// Applies a one-field change to GOOD: a fragment that starts with a key already in GOOD
    /// replaces that key's value; `"counter":7,` is inserted again to make a duplicate; an
    /// unknown key is inserted.
    fn mutate(fragment: &str) -> String {
        match fragment {
            r#""counter":7,"# => GOOD.replacen(r#""counter":7,"#, r#""counter":7,"counter":7,"#, 1),
            r#""extra":1,"# => GOOD.replacen(r#"{"v":1,"#, r#"{"v":1,"extra":1,"#, 1),
            r#""minor":12.5,"# => GOOD.replace(r#""minor":1250,"#, fragment),
            r#""minor":"1250","# => GOOD.replace(r#""minor":1250,"#, fragment),
            r#""minor":0,"# => GOOD.replace(r#""minor":1250,"#, fragment),
            r#""minor":-5,"# => GOOD.replace(r#""minor":1250,"#, fragment),
            r#""currency":"ABC"}"# => GOOD.replace(r#""currency":"INR"}"#, fragment),
            r#""v":2,"# => GOOD.replace(r#""v":1,"#, fragment),
            r#""device_id":"a/b","# => GOOD.replace(r#""device_id":"pos-1","#, fragment),
            r#""type":"steal","# => GOOD.replace(r#""type":"merchant_payment","#, fragment),
            other => panic!("no mutation for {other}"),
        }
    }

    #[test]
    fn freshness_window() {
        assert_eq!(check_freshness(1000, 1000, 10, 5), Ok(()));
        assert_eq!(
            check_freshness(1006, 1000, 10, 5),
            Err(ErrorCode::RequestFromFuture)
        );
        assert_eq!(
            check_freshness(989, 1000, 10, 5),
            Err(ErrorCode::RequestExpired)
        );
    }
}
