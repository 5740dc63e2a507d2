//! Bearer tokens: JWTs from the identity provider, checked against its JSON Web Key Set.
//!
//! A token is accepted when its header names an algorithm of `http.jwt.algorithms` and a
//! `kid` in the key set whose key is of that algorithm's family, its signature verifies, its
//! `iss` is `http.jwt.issuer`, its `aud` holds `http.jwt.audience`, `exp` and `nbf` hold
//! (within `leeway_s`), and it lives at most `lifetime_max_s`. `alg: none` and HMAC are never
//! accepted. A `kid` not in the set makes the file be read again (key rotation), at most once
//! per `jwks_reload_interval_ms`.
//!
//! What a caller may touch comes from the token alone: its subject and its `scope` claim
//! (space-separated, RFC 8693 section 4.2), see [`Scope`].

use super::error::ApiError;
use crate::config::JwtSettings;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use paygate_core::ErrorCode;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// The scopes paygate knows. A token may carry others; they grant nothing here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A wallet holder (the mobile app): its own wallet only, the one named by `sub`.
    Wallet,
    /// The wallet backend reading any wallet.
    WalletsRead,
    /// The wallet backend opening wallets and changing their tier and aliases.
    WalletsWrite,
    /// An auditor: read-only access to the audit trail.
    AuditRead,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Wallet => "wallet",
            Scope::WalletsRead => "wallets:read",
            Scope::WalletsWrite => "wallets:write",
            Scope::AuditRead => "audit:read",
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        [
            Scope::Wallet,
            Scope::WalletsRead,
            Scope::WalletsWrite,
            Scope::AuditRead,
        ]
        .into_iter()
        .find(|scope| scope.as_str() == text)
    }
}

/// An operator's role (the token's `roles` claim): what operator calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Merchants, agents, KYC tiers, rule and limit views.
    Operator,
    /// Funding wallets, and approving another operator's funding.
    Finance,
    /// Key rotation.
    Security,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Finance => "finance",
            Role::Security => "security",
        }
    }

    fn parse(text: &str) -> Option<Role> {
        [Role::Operator, Role::Finance, Role::Security]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// RFC 8176 methods that are a factor of possession or inherence, and of knowledge.
const POSSESSION_OR_INHERENCE: &[&str] = &[
    "otp", "hwk", "swk", "sms", "tel", "sc", "fpt", "face", "iris", "retina", "vbm", "pop",
];
const KNOWLEDGE: &[&str] = &["pwd", "pin", "kba"];

/// Whether `amr` says the user signed in with more than one kind of factor (PCI DSS 8.4,
/// 8.5): `mfa`, or a knowledge factor with a possession or inherence one.
fn multi_factor(amr: &[String]) -> bool {
    amr.iter().any(|m| m == "mfa")
        || (amr.iter().any(|m| KNOWLEDGE.contains(&m.as_str()))
            && amr
                .iter()
                .any(|m| POSSESSION_OR_INHERENCE.contains(&m.as_str())))
}

/// Who is calling, as the verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`; for a [`Scope::Wallet`] token, the holder's wallet id.
    pub subject: String,
    pub scopes: BTreeSet<Scope>,
    pub roles: BTreeSet<Role>,
    /// When the caller last signed in with more than one factor (`auth_time`, when `amr`
    /// shows several factors), seconds since the epoch.
    pub multi_factor_at_s: Option<u64>,
    /// The token's `jti` when it has one (recorded in the audit trail).
    pub token_id: Option<String>,
}

impl Caller {
    /// How the audit trail names this caller: `operator:<sub>` for a token with operator
    /// roles, `holder:<sub>` for a wallet holder's, `api:<sub>` for a service's (the wallet
    /// backend, an auditor).
    pub fn actor(&self) -> String {
        format!("{}:{}", self.kind(), self.subject)
    }

    /// The caller's kind. Idempotency keys, kept answers and rate limits are per kind and
    /// subject, so a holder's token whose `sub` is an operator's name shares nothing with it.
    pub fn kind(&self) -> &'static str {
        if !self.roles.is_empty() {
            "operator"
        } else if self.scopes.iter().all(|s| *s == Scope::Wallet) && !self.scopes.is_empty() {
            "holder"
        } else {
            "api"
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::ScopeMissing,
                format!("this call needs the {} scope", scope.as_str()),
            ))
        }
    }

    /// An operator call: the role, then a sign-in with a second factor at most `max_age_s`
    /// ago (PCI DSS 8.4.2); a sign-in from the future is none.
    pub fn require_operator(&self, role: Role, now_s: u64, max_age_s: u64) -> Result<(), ApiError> {
        if !self.roles.contains(&role) {
            return Err(ApiError::new(
                ErrorCode::ScopeMissing,
                format!("this call needs the {} role", role.as_str()),
            ));
        }
        let fresh = self.multi_factor_at_s.is_some_and(|at| {
            at <= now_s.saturating_add(60) && now_s.saturating_sub(at) <= max_age_s
        });
        if !fresh {
            return Err(ApiError::new(
                ErrorCode::SecondFactorRequired,
                format!(
                    "operator calls need a token whose amr shows a second factor and whose auth_time is at most {max_age_s} s old (http.operator.second_factor_max_age_s)"
                ),
            ));
        }
        Ok(())
    }

    /// A wallet's data: the backend (`wallets:read`), or its holder (`wallet`, `sub` = id).
    pub fn may_read_wallet(&self, wallet: &str) -> Result<(), ApiError> {
        if self.scopes.contains(&Scope::WalletsRead) {
            return Ok(());
        }
        self.holder_of(wallet)
    }

    fn holder_of(&self, wallet: &str) -> Result<(), ApiError> {
        if !self.scopes.contains(&Scope::Wallet) {
            return Err(ApiError::new(
                ErrorCode::ScopeMissing,
                "this call needs the wallets:read scope, or the wallet scope of the wallet's holder",
            ));
        }
        if self.subject != wallet {
            return Err(ApiError::new(
                ErrorCode::AccessDenied,
                "a wallet holder's token gives access to the holder's own wallet only",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    amr: Vec<String>,
    #[serde(default)]
    auth_time: Option<u64>,
}

/// The JWA name of an algorithm paygate accepts, `None` for any other (HMAC, `none`).
pub fn algorithm(name: &str) -> Option<Algorithm> {
    let algorithm = match name {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    };
    Some(algorithm)
}

/// The configured key set and how tokens are checked against it.
pub struct Verifier {
    settings: JwtSettings,
    path: PathBuf,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Loaded>,
}

struct Loaded {
    set: JwkSet,
    read_at: Instant,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::TokenInvalid, message)
}

async fn read_jwks(path: &std::path::Path) -> Result<JwkSet, String> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("reading the JWKS {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("the JWKS {} is not a key set: {e}", path.display()))
}

impl Verifier {
    /// Reads the key set; a missing or unreadable file stops the start.
    pub async fn open(settings: &JwtSettings, path: PathBuf) -> Result<Verifier, String> {
        let set = read_jwks(&path).await?;
        let algorithms = settings
            .algorithms
            .iter()
            .filter_map(|name| algorithm(name))
            .collect();
        Ok(Verifier {
            settings: settings.clone(),
            path,
            algorithms,
            keys: RwLock::new(Loaded {
                set,
                read_at: Instant::now(),
            }),
        })
    }

    /// The key for `kid`, reading the file again if it is not known and the last read is
    /// older than the reload interval.
    async fn key(&self, kid: &str) -> Result<jsonwebtoken::jwk::Jwk, ApiError> {
        let interval = Duration::from_millis(self.settings.jwks_reload_interval_ms);
        {
            let loaded = self.keys.read().await;
            if let Some(jwk) = loaded.set.find(kid) {
                return Ok(jwk.clone());
            }
            // a flood of unknown kids waits for no lock while a reload is not due
            if loaded.read_at.elapsed() < interval {
                return Err(invalid(
                    "the token's kid names no key of the configured JWKS",
                ));
            }
        }
        let mut loaded = self.keys.write().await;
        if loaded.set.find(kid).is_none() && loaded.read_at.elapsed() >= interval {
            loaded.read_at = Instant::now();
            match read_jwks(&self.path).await {
                Ok(set) => loaded.set = set,
                // the keys already loaded stay in use
                Err(error) => tracing::warn!(%error, "the JWKS could not be read again"),
            }
        }
        loaded
            .set
            .find(kid)
            .cloned()
            .ok_or_else(|| invalid("the token's kid names no key of the configured JWKS"))
    }

    /// Checks a bearer token and says who it names.
    pub async fn verify(&self, token: &str, now_s: u64) -> Result<Caller, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            invalid("the token is not a JWT signed with an accepted algorithm (alg none and HMAC are refused)")
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "the token is signed with {:?}, which http.jwt.algorithms does not allow",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token's header names no kid"))?;
        let jwk = self.key(&kid).await?;
        if let Some(declared) = jwk.common.key_algorithm {
            if format!("{declared:?}") != format!("{:?}", header.alg) {
                return Err(invalid("the token's alg is not the one its key is for"));
            }
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| invalid("the token's key in the JWKS cannot be used"))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_s;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::new(ErrorCode::TokenExpired, "the token has expired")
                }
                ErrorKind::ImmatureSignature => ApiError::new(
                    ErrorCode::TokenNotYetValid,
                    "the token's nbf is in the future",
                ),
                ErrorKind::InvalidIssuer => invalid("the token's iss is not http.jwt.issuer"),
                ErrorKind::InvalidAudience => {
                    invalid("the token's aud does not hold http.jwt.audience")
                }
                ErrorKind::InvalidSignature => invalid("the token's signature does not verify"),
                ErrorKind::MissingRequiredClaim(claim) => {
                    invalid(format!("the token has no {claim} claim"))
                }
                _ => invalid("the token is malformed or its claims have the wrong types"),
            }
        })?;
        let claims = data.claims;
        if claims.exp.saturating_sub(claims.iat) > self.settings.lifetime_max_s {
            return Err(invalid(format!(
                "the token lives longer than http.jwt.lifetime_max_s ({} s)",
                self.settings.lifetime_max_s
            )));
        }
        if claims.iat > now_s.saturating_add(self.settings.leeway_s) {
            return Err(ApiError::new(
                ErrorCode::TokenNotYetValid,
                "the token's iat is in the future",
            ));
        }
        if claims.iat > claims.exp {
            return Err(invalid("the token's iat is after its exp"));
        }
        if claims
            .auth_time
            .is_some_and(|at| at > claims.iat.saturating_add(self.settings.leeway_s))
        {
            return Err(invalid("the token's auth_time is after its iat"));
        }
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(invalid("the token's sub is empty or longer than 128 bytes"));
        }
        Ok(Caller {
            subject: claims.sub,
            scopes: claims.scope.split(' ').filter_map(Scope::parse).collect(),
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            multi_factor_at_s: claims.auth_time.filter(|_| multi_factor(&claims.amr)),
            token_id: claims.jti,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_the_configuration_takes_is_one_the_verifier_knows() {
        for name in crate::config::JWT_ALGORITHMS {
            assert!(algorithm(name).is_some(), "{name}");
        }
        for name in ["HS256", "HS512", "none", "None", "eddsa", ""] {
            assert!(algorithm(name).is_none(), "{name}");
        }
    }

    #[test]
    fn a_second_factor_is_two_kinds_of_factor_or_mfa() {
        let amr = |methods: &[&str]| methods.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        assert!(multi_factor(&amr(&["mfa"])));
        assert!(multi_factor(&amr(&["pwd", "otp"])));
        assert!(multi_factor(&amr(&["pin", "hwk"])));
        assert!(multi_factor(&amr(&["otp", "kba"])));
        // two of one kind is one factor (PCI DSS 8.4: different kinds)
        assert!(!multi_factor(&amr(&["pwd", "pin"])));
        assert!(!multi_factor(&amr(&["otp", "sms"])));
        assert!(!multi_factor(&amr(&["pwd"])));
        assert!(!multi_factor(&amr(&[])));
        assert!(!multi_factor(&amr(&["MFA", "PWD+OTP"])));
    }

    fn operator(roles: &[Role], at: Option<u64>) -> Caller {
        Caller {
            subject: "alice".into(),
            scopes: BTreeSet::new(),
            roles: roles.iter().copied().collect(),
            multi_factor_at_s: at,
            token_id: None,
        }
    }

    #[test]
    fn an_operator_call_needs_its_role_and_a_second_factor_within_the_age() {
        let now = 1_800_000_000;
        let code = |caller: &Caller, role| {
            caller
                .require_operator(role, now, 900)
                .err()
                .map(|e| e.code)
        };
        let fresh = operator(&[Role::Finance], Some(now - 900));
        assert_eq!(code(&fresh, Role::Finance), None);
        assert_eq!(code(&fresh, Role::Security), Some(ErrorCode::ScopeMissing));
        // the role is asked first: a caller without it never hears about second factors
        let single_other = operator(&[Role::Operator], None);
        assert_eq!(
            code(&single_other, Role::Finance),
            Some(ErrorCode::ScopeMissing)
        );
        let stale = operator(&[Role::Finance], Some(now - 901));
        assert_eq!(
            code(&stale, Role::Finance),
            Some(ErrorCode::SecondFactorRequired)
        );
        let single = operator(&[Role::Finance], None);
        assert_eq!(
            code(&single, Role::Finance),
            Some(ErrorCode::SecondFactorRequired)
        );
        // a sign-in from the future (beyond a minute's skew) is not a sign-in
        let ahead = operator(&[Role::Finance], Some(now + 61));
        assert_eq!(
            code(&ahead, Role::Finance),
            Some(ErrorCode::SecondFactorRequired)
        );
        let skewed = operator(&[Role::Finance], Some(now + 60));
        assert_eq!(code(&skewed, Role::Finance), None);
    }
}
