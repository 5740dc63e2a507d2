//! A development token issuer, so `paygate demo` and the tests run the HTTP API without an
//! identity provider: `paygate certs init` makes an Ed25519 key (`pki/api-issuer.pk8`) and
//! publishes it as the JWKS the gateway trusts by default (`pki/api-jwks.json`);
//! `paygate api token` signs tokens with it. In production the JWKS is the identity
//! provider's and this key does not exist.

use anyhow::{Context, Result};
use base64::Engine;
use paygate_core::envelope::{SigningAlgorithm, SigningKey};
use std::path::Path;

pub const KEY_FILE: &str = "api-issuer.pk8";
pub const JWKS_FILE: &str = "api-jwks.json";
pub const KEY_ID: &str = "dev-issuer-1";

/// Makes the issuer key and its JWKS in `dir` (the PKI directory).
pub fn init(dir: &Path) -> Result<()> {
    let pkcs8 = SigningKey::generate_pkcs8(SigningAlgorithm::Ed25519)?;
    crate::pki::write_secret(&dir.join(KEY_FILE), &pkcs8)?;
    let key = SigningKey::from_pkcs8(SigningAlgorithm::Ed25519, KEY_ID, &pkcs8)?;
    std::fs::write(dir.join(JWKS_FILE), jwks_of(&[&key]))
        .with_context(|| format!("writing {}", dir.join(JWKS_FILE).display()))?;
    Ok(())
}

/// A JWKS (RFC 7517) holding the public halves of Ed25519 keys.
pub fn jwks_of(keys: &[&SigningKey]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|key| {
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": key.key_id(),
                "x": base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(key.verifying_key().public_key),
            })
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// What a development token says.
#[derive(Debug, Clone, Default)]
pub struct TokenAsk<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub subject: &'a str,
    /// Space-separated scopes, e.g. `wallets:read wallets:write`.
    pub scope: &'a str,
    pub lifetime_s: u64,
    /// Operator roles (`operator`, `finance`, `security`).
    pub roles: &'a [&'a str],
    /// When the operator signed in with a password and a one-time code (`amr` `pwd otp`,
    /// `auth_time`); absent: a single-factor token.
    pub second_factor_at_s: Option<u64>,
}

/// Signs a token with an Ed25519 key given as PKCS#8.
pub fn sign(pkcs8: &[u8], key_id: &str, ask: &TokenAsk<'_>, now_s: u64) -> Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key_id.to_owned());
    let mut claims = serde_json::json!({
        "iss": ask.issuer,
        "aud": ask.audience,
        "sub": ask.subject,
        "scope": ask.scope,
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + ask.lifetime_s,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if !ask.roles.is_empty() {
        claims["roles"] = serde_json::json!(ask.roles);
    }
    if let Some(at) = ask.second_factor_at_s {
        claims["amr"] = serde_json::json!(["pwd", "otp"]);
        claims["auth_time"] = serde_json::json!(at);
    }
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(pkcs8),
    )
    .context("signing the token")
}

/// Signs a token with the development issuer of the PKI directory `dir`.
pub fn token(dir: &Path, ask: &TokenAsk<'_>) -> Result<String> {
    let pkcs8 = std::fs::read(dir.join(KEY_FILE)).with_context(|| {
        format!(
            "reading {}: run `paygate certs init` first",
            dir.join(KEY_FILE).display()
        )
    })?;
    sign(&pkcs8, KEY_ID, ask, crate::clock::now_ms() / 1_000)
}
