//! The one closed list of error codes a device, API client or auditor can see.
//!
//! Codes are stable: once published, a code keeps its spelling and meaning. The mapping to
//! MQTT reason codes and HTTP statuses lives here and nowhere else.

use std::fmt;

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $http:literal, $connack:literal, $doc:literal), )*) => {
        /// A stable error code. See docs/protocol.md for the table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The wire spelling, e.g. `SIGNATURE_INVALID`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The HTTP status an API answer carries for this code.
            pub fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $http, )* }
            }

            /// The MQTT 3.1.1 CONNACK return code used when this code refuses a connection
            /// (0 where the code never refuses a connection).
            pub fn mqtt_connack_code(self) -> u8 {
                match self { $( ErrorCode::$variant => $connack, )* }
            }

            /// One line saying what the code means.
            pub fn description(self) -> &'static str {
                match self { $( ErrorCode::$variant => $doc, )* }
            }

            /// Parses the wire spelling.
            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

// CONNACK codes (MQTT 3.1.1 section 3.2.2.3): 1 protocol version, 2 identifier rejected,
// 3 server unavailable, 4 bad user name or password, 5 not authorized.
error_codes! {
    MalformedEnvelope => ("MALFORMED_ENVELOPE", 400, 0, "the message is not a well-formed COSE_Sign1 envelope"),
    UnsupportedContentType => ("UNSUPPORTED_CONTENT_TYPE", 415, 0, "the envelope's content type is not the one this topic carries"),
    AlgorithmNotAllowed => ("ALGORITHM_NOT_ALLOWED", 401, 0, "the envelope names no algorithm or not the device's enrolled one"),
    CriticalHeaderUnsupported => ("CRITICAL_HEADER_UNSUPPORTED", 400, 0, "the envelope marks a header critical that paygate does not understand"),
    KeyIdMismatch => ("KEY_ID_MISMATCH", 401, 0, "the envelope's key id is not the sending device's"),
    SignatureInvalid => ("SIGNATURE_INVALID", 401, 0, "the signature does not verify under the device's enrolled key"),
    DeviceNotEnrolled => ("DEVICE_NOT_ENROLLED", 403, 5, "the device has no active enrolment"),
    DeviceRevoked => ("DEVICE_REVOKED", 409, 0, "the device is revoked for good; a replacement enrols under a new device id"),
    DeviceMismatch => ("DEVICE_MISMATCH", 403, 0, "the request names another device than the one that sent it"),
    MalformedRequest => ("MALFORMED_REQUEST", 400, 0, "the payload is not a valid request: bad JSON, duplicate or unknown keys, wrong types"),
    UnsupportedVersion => ("UNSUPPORTED_VERSION", 400, 0, "the request schema version is not supported"),
    AmountInvalid => ("AMOUNT_INVALID", 422, 0, "the amount is zero, negative or too large"),
    CurrencyUnknown => ("CURRENCY_UNKNOWN", 422, 0, "the currency is not an active ISO 4217 code"),
    CurrencyMismatch => ("CURRENCY_MISMATCH", 422, 0, "the currency does not match the account's"),
    RequestExpired => ("REQUEST_EXPIRED", 422, 0, "the request was created too long ago"),
    RequestFromFuture => ("REQUEST_FROM_FUTURE", 422, 0, "the request's creation time is ahead of the gateway's clock beyond the allowed skew"),
    CounterReused => ("COUNTER_REUSED", 409, 0, "the device counter was already used by another request"),
    IdempotencyConflict => ("IDEMPOTENCY_CONFLICT", 409, 0, "the idempotency key was used with a different request body"),
    PayerInvalid => ("PAYER_INVALID", 422, 0, "the payer instrument is invalid: a PAN failing the Luhn check, a VPA with characters outside ASCII, a bad credential block"),
    LimitExceeded => ("LIMIT_EXCEEDED", 422, 0, "a configured limit (velocity, amount, balance) does not allow this request"),
    ChallengeUnknown => ("CHALLENGE_UNKNOWN", 404, 0, "no step-up challenge with this id is open for this device"),
    ChallengeFailed => ("CHALLENGE_FAILED", 401, 0, "the step-up answer was wrong, or named another amount or payee"),
    ChallengeExpired => ("CHALLENGE_EXPIRED", 408, 0, "the step-up challenge was not answered in time; the payment is declined"),
    MechanismLocked => ("MECHANISM_LOCKED", 423, 0, "too many failed step-up attempts; the mechanism is locked for a while"),
    MechanismNotEnrolled => ("MECHANISM_NOT_ENROLLED", 422, 0, "the payment needs a step-up mechanism the wallet holder has not enrolled"),
    InsufficientFunds => ("INSUFFICIENT_FUNDS", 422, 0, "the paying account's balance does not cover the amount"),
    AmountOverflow => ("AMOUNT_OVERFLOW", 422, 0, "the posting would overflow a balance"),
    UnknownMerchant => ("UNKNOWN_MERCHANT", 404, 0, "no active merchant has this id"),
    UnknownWallet => ("UNKNOWN_WALLET", 404, 0, "no active wallet has this id"),
    OriginalUnknown => ("ORIGINAL_UNKNOWN", 404, 0, "the transfer to refund is not one of this merchant's payments"),
    RefundExceedsOriginal => ("REFUND_EXCEEDS_ORIGINAL", 422, 0, "the refund, with earlier refunds, would exceed the original payment"),
    OperationNotAllowed => ("OPERATION_NOT_ALLOWED", 403, 0, "this device's account may not make this kind of request"),
    PointsInsufficient => ("POINTS_INSUFFICIENT", 422, 0, "the wallet's active (unexpired, no longer pending) points do not cover the redemption"),
    UpiDeclined => ("UPI_DECLINED", 422, 0, "the UPI network declined the payment; the message names the NPCI response code and its class"),
    UpiTimedOut => ("UPI_TIMED_OUT", 504, 0, "the UPI network gave no final answer within the status checks; any debit is reversed"),
    UpiNotSent => ("UPI_NOT_SENT", 503, 0, "the payment never left for the UPI network (the gateway stopped before sending it); nothing was debited; pay again under a new key"),
    RequestUnknown => ("REQUEST_UNKNOWN", 404, 0, "no request with this idempotency key is recorded for this device (never received, refused without a record, or still being decided); send it again under the same key, never a new one"),
    TransferToSelf => ("TRANSFER_TO_SELF", 422, 0, "the paying and the receiving account are the same"),
    TopicNotAuthorized => ("TOPIC_NOT_AUTHORIZED", 403, 5, "the device may not publish or subscribe to this topic"),
    ClientIdMismatch => ("CLIENT_ID_MISMATCH", 403, 2, "the MQTT client id is not the device id in the client certificate"),
    ProtocolViolation => ("PROTOCOL_VIOLATION", 400, 1, "the MQTT packet is not allowed from a device here"),
    PacketTooLarge => ("PACKET_TOO_LARGE", 413, 0, "the MQTT packet exceeds the configured maximum size"),
    QosNotSupported => ("QOS_NOT_SUPPORTED", 400, 0, "QoS 2 and retained messages are not accepted"),
    DeviceIdInvalid => ("DEVICE_ID_INVALID", 403, 5, "the client certificate carries no valid device id"),
    TlsClientCertRequired => ("TLS_CLIENT_CERT_REQUIRED", 401, 0, "the TLS client presented no certificate"),
    TlsCertUntrusted => ("TLS_CERT_UNTRUSTED", 401, 0, "the client certificate does not chain to a trusted CA or is not for client auth"),
    TlsCertRevoked => ("TLS_CERT_REVOKED", 401, 0, "the client certificate is revoked by a loaded CRL"),
    TlsHandshakeFailed => ("TLS_HANDSHAKE_FAILED", 400, 0, "the TLS handshake failed or timed out"),
    AccountExists => ("ACCOUNT_EXISTS", 409, 0, "an account with this id exists already"),
    AliasTaken => ("ALIAS_TAKEN", 409, 0, "the phone or VPA is linked to another wallet already; one alias names one wallet"),
    AuditBroken => ("AUDIT_BROKEN", 409, 0, "the audit archive does not verify; the message says what broke and where"),
    TokenMissing => ("TOKEN_MISSING", 401, 0, "the HTTP request carries no bearer token"),
    TokenInvalid => ("TOKEN_INVALID", 401, 0, "the bearer token is malformed, not signed by a key in the configured JWKS, signed with an algorithm off the allow-list, or for another issuer or audience"),
    TokenExpired => ("TOKEN_EXPIRED", 401, 0, "the bearer token has expired; get a new one"),
    TokenNotYetValid => ("TOKEN_NOT_YET_VALID", 401, 0, "the bearer token's not-before time has not come"),
    ScopeMissing => ("SCOPE_MISSING", 403, 0, "the bearer token lacks the scope or role this call needs"),
    AccessDenied => ("ACCESS_DENIED", 403, 0, "the caller may not touch this resource (another holder's wallet)"),
    SecondFactorRequired => ("SECOND_FACTOR_REQUIRED", 401, 0, "operator calls need a sign-in with a second factor (the token's amr) within http.operator.second_factor_max_age_s (its auth_time)"),
    ApproverIsRequester => ("APPROVER_IS_REQUESTER", 403, 0, "an action that needs a second approver cannot be approved by the operator who asked for it"),
    ApprovalNotPending => ("APPROVAL_NOT_PENDING", 409, 0, "the action is not waiting for approval any more (approved, rejected or refused)"),
    IdempotencyKeyMissing => ("IDEMPOTENCY_KEY_MISSING", 400, 0, "a write needs an Idempotency-Key header of 1 to 64 characters from [A-Za-z0-9._:-]"),
    BodyTooLarge => ("BODY_TOO_LARGE", 413, 0, "the HTTP request body exceeds http.body_bytes_max"),
    RouteUnknown => ("ROUTE_UNKNOWN", 404, 0, "no HTTP endpoint has this path"),
    MethodNotAllowed => ("METHOD_NOT_ALLOWED", 405, 0, "the HTTP endpoint does not take this method"),
    NotFound => ("NOT_FOUND", 404, 0, "the resource asked for does not exist"),
    RequestTimedOut => ("REQUEST_TIMED_OUT", 503, 0, "the HTTP request was not answered within http.request_timeout_ms; a write may still complete: retry with the same idempotency key"),
    KeyUnavailable => ("KEY_UNAVAILABLE", 503, 3, "the key that protects this request's sensitive data is unavailable; nothing was written; retry later with the same idempotency key"),
    AuditUnavailable => ("AUDIT_UNAVAILABLE", 503, 3, "the audit trail cannot take more records now; nothing was posted; retry later with the same idempotency key"),
    Overloaded => ("OVERLOADED", 503, 3, "the gateway is at a configured limit; retry later with the same idempotency key"),
    InternalError => ("INTERNAL_ERROR", 500, 3, "the gateway failed; nothing was posted; retry with the same idempotency key"),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique_upper_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "duplicate code {text}");
            assert!(text
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()));
            assert_eq!(ErrorCode::parse(text), Some(*code));
            assert!(!code.description().ends_with('.'));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn connection_refusals_map_to_mqtt_connack_codes() {
        assert_eq!(ErrorCode::ClientIdMismatch.mqtt_connack_code(), 2);
        assert_eq!(ErrorCode::DeviceNotEnrolled.mqtt_connack_code(), 5);
        assert_eq!(ErrorCode::ProtocolViolation.mqtt_connack_code(), 1);
        assert_eq!(ErrorCode::SignatureInvalid.http_status(), 401);
    }
}
