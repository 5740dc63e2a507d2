//! `[http]`: the HTTP API for the wallet backend and auditors, and the operations endpoints.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// false: no HTTP listener (devices still pay over MQTT).
    pub enabled: bool,
    /// HTTPS, with the server certificate and key of `[tls]`.
    pub listen: SocketAddr,
    pub connections_max: usize,
    pub handshake_timeout_ms: u64,
    /// Time to read a request's headers; a connection slower than this is closed.
    pub header_read_timeout_ms: u64,
    /// Time from the headers read to the answer written, body included; past it the caller
    /// gets `REQUEST_TIMED_OUT`.
    pub request_timeout_ms: u64,
    pub body_bytes_max: usize,
    /// Requests per second per caller (a token's subject; before sign-in, the peer address),
    /// and the burst after a quiet spell; the excess gets `OVERLOADED` with `Retry-After`.
    pub caller_requests_per_s: u32,
    pub caller_requests_burst: u32,
    /// Callers the rate limiter remembers at once; past it, unknown callers are refused
    /// `OVERLOADED` until the sweep forgets idle ones.
    pub callers_max: usize,
    /// Entries a page of transaction history holds at most.
    pub page_entries_max: u32,
    /// Records one audit search or export returns at most (the answer says when it stopped).
    pub audit_records_max: usize,
    pub jwt: JwtSettings,
    pub operator: OperatorSettings,
}

/// The operator API (`/v1/ops/...`): tokens with roles and a recent second factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSettings {
    /// An operator's sign-in with a second factor (the token's `auth_time`) counts this long
    /// (PCI DSS 8.2.8: 15 minutes idle).
    pub second_factor_max_age_s: u64,
    /// A funding of at least this many minor units of its currency waits for a second
    /// operator's approval.
    pub funding_approval_min_minor: i64,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        OperatorSettings {
            second_factor_max_age_s: 900,
            funding_approval_min_minor: 1_000_000,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            enabled: true,
            listen: ([127, 0, 0, 1], 8443).into(),
            connections_max: 1_024,
            handshake_timeout_ms: 5_000,
            header_read_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            body_bytes_max: 64 * 1024,
            caller_requests_per_s: 50,
            caller_requests_burst: 100,
            callers_max: 100_000,
            page_entries_max: 100,
            audit_records_max: 100_000,
            jwt: JwtSettings::default(),
            operator: OperatorSettings::default(),
        }
    }
}

/// Bearer tokens: JWTs signed by the identity provider, checked against its key set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// The identity provider's JSON Web Key Set (RFC 7517). Read at start, and again when a
    /// token names a `kid` not in it (key rotation), at most once per
    /// `jwks_reload_interval_ms`.
    pub jwks_file: PathBuf,
    pub jwks_reload_interval_ms: u64,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// A value the token's `aud` must hold.
    pub audience: String,
    /// Signature algorithms accepted (JWA names); `none` never is.
    pub algorithms: Vec<String>,
    /// Clock tolerance for `exp` and `nbf`.
    pub leeway_s: u64,
    /// Tokens living longer than this (`exp - iat`) are refused.
    pub lifetime_max_s: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            jwks_file: "pki/api-jwks.json".into(),
            jwks_reload_interval_ms: 1_000,
            issuer: "paygate-dev-issuer".into(),
            audience: "paygate".into(),
            algorithms: vec!["EdDSA".into(), "ES256".into(), "RS256".into()],
            leeway_s: 30,
            lifetime_max_s: 3_600,
        }
    }
}

/// The JWA names `http.jwt.algorithms` may list: asymmetric signatures only (never HMAC, whose
/// key the gateway would share with every issuer, nor `none`).
pub const JWT_ALGORITHMS: [&str; 9] = [
    "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];
