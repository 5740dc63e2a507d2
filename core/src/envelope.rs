//! The signature envelope: COSE_Sign1 (RFC 9052) over the exact payload bytes, with
//! EdDSA/Ed25519 (RFC 8037 names, COSE alg -8) or ES256 (ECDSA P-256 SHA-256, COSE alg -7).
//! See docs/adr/0001-cose-sign1-envelope.md for why COSE and not JWS.
//!
//! Rules the verifier enforces, whatever the message says:
//! - the algorithm comes from the enrolled key; the protected header must name exactly it and
//!   the unprotected header must not name one (no "none", no downgrade, no confusion);
//! - the key id sits in the protected header and must be the sender's id;
//! - the content type sits in the protected header and must be the one expected here;
//! - no critical headers; the payload is attached.
//!
//! CBOR structure handling is coset's; signatures are ring's.

use crate::error::ErrorCode;
use coset::iana;
use coset::{
    CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, RegisteredLabelWithPrivate,
    TaggedCborSerializable,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

/// The signature algorithms a key may be enrolled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// EdDSA with Ed25519 (COSE -8). The default for devices and the gateway.
    Ed25519,
    /// ECDSA with P-256 and SHA-256, signature as r||s (COSE -7), for secure elements that
    /// only do P-256.
    Es256,
}

impl SigningAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::Ed25519 => "ed25519",
            SigningAlgorithm::Es256 => "es256",
        }
    }

    pub fn parse(name: &str) -> Option<SigningAlgorithm> {
        match name {
            "ed25519" => Some(SigningAlgorithm::Ed25519),
            "es256" => Some(SigningAlgorithm::Es256),
            _ => None,
        }
    }

    fn cose(self) -> iana::Algorithm {
        match self {
            SigningAlgorithm::Ed25519 => iana::Algorithm::EdDSA,
            SigningAlgorithm::Es256 => iana::Algorithm::ES256,
        }
    }
}

/// Why a key could not be loaded or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not a valid PKCS#8 {0} private key")]
    BadPrivateKey(&'static str),
    #[error("the system random generator failed")]
    Random,
}

enum KeyPairInner {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

/// A private signing key and the key id it signs as.
pub struct SigningKey {
    key_id: String,
    inner: KeyPairInner,
    random: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm())
            .field("private_key", &"***")
            .finish()
    }
}

impl SigningKey {
    /// Makes a new private key, returned as PKCS#8 DER.
    pub fn generate_pkcs8(algorithm: SigningAlgorithm) -> Result<Vec<u8>, KeyError> {
        let random = SystemRandom::new();
        match algorithm {
            SigningAlgorithm::Ed25519 => ed25519_pkcs8_v1(&random),
            SigningAlgorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &random)
                    .map(|document| document.as_ref().to_vec())
                    .map_err(|_| KeyError::Random)
            }
        }
    }

    pub fn from_pkcs8(
        algorithm: SigningAlgorithm,
        key_id: &str,
        pkcs8: &[u8],
    ) -> Result<SigningKey, KeyError> {
        let random = SystemRandom::new();
        let inner = match algorithm {
            SigningAlgorithm::Ed25519 => KeyPairInner::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|_| KeyError::BadPrivateKey("ed25519"))?,
            ),
            SigningAlgorithm::Es256 => KeyPairInner::Es256(
                EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &random,
                )
                .map_err(|_| KeyError::BadPrivateKey("es256"))?,
            ),
        };
        Ok(SigningKey {
            key_id: key_id.to_owned(),
            inner,
            random,
        })
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        match self.inner {
            KeyPairInner::Ed25519(_) => SigningAlgorithm::Ed25519,
            KeyPairInner::Es256(_) => SigningAlgorithm::Es256,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, as enrolled on the other side.
    pub fn verifying_key(&self) -> VerifyingKey {
        let public_key = match &self.inner {
            KeyPairInner::Ed25519(pair) => pair.public_key().as_ref().to_vec(),
            KeyPairInner::Es256(pair) => pair.public_key().as_ref().to_vec(),
        };
        VerifyingKey {
            algorithm: self.algorithm(),
            public_key,
        }
    }

    fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        match &self.inner {
            KeyPairInner::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            // ring's ECDSA signing fails only if the system random generator fails; an empty
            // signature then fails verification on the other side instead of panicking here
            KeyPairInner::Es256(pair) => pair
                .sign(&self.random, message)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
        }
    }

    /// Seals a payload: a tagged COSE_Sign1 with alg, kid and content type protected.
    pub fn seal(&self, content_type: &str, payload: &[u8]) -> Vec<u8> {
        seal_with_headers(
            HeaderBuilder::new()
                .algorithm(self.algorithm().cose())
                .key_id(self.key_id.as_bytes().to_vec())
                .content_type(content_type.to_owned())
                .build(),
            payload,
            |data| self.sign_bytes(data),
        )
    }

    /// Seals with a caller-made protected header. Exists so tests can forge hostile envelopes
    /// (other algorithms, missing kid); production code uses [`SigningKey::seal`].
    pub fn seal_with_protected_header(&self, protected: coset::Header, payload: &[u8]) -> Vec<u8> {
        seal_with_headers(protected, payload, |data| self.sign_bytes(data))
    }
}

/// A new Ed25519 key as a PKCS#8 v1 document (RFC 5208 with the RFC 8410 key format). ring's
/// own generator writes v2 documents that common parsers (OpenSSL-based stacks, Python's
/// cryptography) refuse, and a device key must load in any firmware's crypto library.
fn ed25519_pkcs8_v1(random: &SystemRandom) -> Result<Vec<u8>, KeyError> {
    use pkcs8::der::Encode;
    use ring::rand::SecureRandom;
    const ED25519_OID: pkcs8::ObjectIdentifier = pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112");
    let mut seed = [0u8; 32];
    random.fill(&mut seed).map_err(|_| KeyError::Random)?;
    let encoding = |_| KeyError::Random;
    let curve_private_key = pkcs8::der::asn1::OctetStringRef::new(&seed)
        .map_err(encoding)?
        .to_der()
        .map_err(encoding)?;
    let info = pkcs8::PrivateKeyInfo {
        algorithm: pkcs8::AlgorithmIdentifierRef {
            oid: ED25519_OID,
            parameters: None,
        },
        private_key: &curve_private_key,
        public_key: None,
    };
    info.to_der().map_err(encoding)
}

fn seal_with_headers(
    protected: coset::Header,
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload.to_vec())
        .create_signature(b"", sign)
        .build();
    // encoding a structure of byte strings and small maps cannot fail
    sign1.to_tagged_vec().unwrap_or_default()
}

/// A public key with the one algorithm it may be used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub algorithm: SigningAlgorithm,
    /// Ed25519: the 32-byte public key. ES256: the 65-byte uncompressed point.
    pub public_key: Vec<u8>,
}

/// An envelope whose structure was read but whose signature is not yet checked.
#[derive(Debug)]
pub struct UnverifiedEnvelope {
    sign1: CoseSign1,
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EnvelopeError {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> EnvelopeError {
    EnvelopeError {
        code,
        message: message.into(),
    }
}

/// Envelopes larger than this are refused before CBOR decoding.
pub const ENVELOPE_BYTES_MAX: usize = 64 * 1024;

impl UnverifiedEnvelope {
    /// Reads the CBOR structure (tagged or untagged COSE_Sign1).
    pub fn parse(bytes: &[u8]) -> Result<UnverifiedEnvelope, EnvelopeError> {
        if bytes.len() > ENVELOPE_BYTES_MAX {
            return Err(refuse(ErrorCode::MalformedEnvelope, "envelope too large"));
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| {
                refuse(
                    ErrorCode::MalformedEnvelope,
                    format!("not a COSE_Sign1: {e}"),
                )
            })?;
        Ok(UnverifiedEnvelope { sign1 })
    }

    /// The key id in the protected header, as text (empty if absent or not UTF-8).
    pub fn key_id(&self) -> &str {
        std::str::from_utf8(&self.sign1.protected.header.key_id).unwrap_or("")
    }

    /// The payload as sent, before verification. Only for hashing and logging of refusals.
    pub fn payload_unverified(&self) -> Option<&[u8]> {
        self.sign1.payload.as_deref()
    }

    /// Checks every rule in this module's doc and the signature; returns the payload.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        expected_key_id: &str,
        expected_content_type: &str,
    ) -> Result<&[u8], EnvelopeError> {
        let protected = &self.sign1.protected.header;
        if self.sign1.unprotected.alg.is_some() {
            return Err(refuse(
                ErrorCode::AlgorithmNotAllowed,
                "algorithm in the unprotected header",
            ));
        }
        match &protected.alg {
            Some(RegisteredLabelWithPrivate::Assigned(alg)) if *alg == key.algorithm.cose() => {}
            Some(other) => {
                return Err(refuse(
                    ErrorCode::AlgorithmNotAllowed,
                    format!(
                        "algorithm {other:?} is not the enrolled {}",
                        key.algorithm.name()
                    ),
                ))
            }
            None => {
                return Err(refuse(
                    ErrorCode::AlgorithmNotAllowed,
                    "no algorithm in the protected header",
                ))
            }
        }
        if !protected.crit.is_empty() || !self.sign1.unprotected.crit.is_empty() {
            return Err(refuse(
                ErrorCode::CriticalHeaderUnsupported,
                "critical headers are not supported",
            ));
        }
        if self.key_id() != expected_key_id {
            return Err(refuse(
                ErrorCode::KeyIdMismatch,
                format!(
                    "key id {:?} is not the sender {expected_key_id:?}",
                    self.key_id()
                ),
            ));
        }
        match &protected.content_type {
            Some(coset::ContentType::Text(text)) if text == expected_content_type => {}
            _ => {
                return Err(refuse(
                    ErrorCode::UnsupportedContentType,
                    format!("content type must be {expected_content_type}"),
                ))
            }
        }
        let payload = self.sign1.payload.as_deref().ok_or_else(|| {
            refuse(
                ErrorCode::MalformedEnvelope,
                "detached payloads are not accepted",
            )
        })?;
        let algorithm: &dyn signature::VerificationAlgorithm = match key.algorithm {
            SigningAlgorithm::Ed25519 => &signature::ED25519,
            SigningAlgorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        self.sign1
            .verify_signature(b"", |sig, data| {
                signature::UnparsedPublicKey::new(algorithm, &key.public_key).verify(data, sig)
            })
            .map_err(|_| refuse(ErrorCode::SignatureInvalid, "signature does not verify"))?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(algorithm: SigningAlgorithm, id: &str) -> SigningKey {
        let pkcs8 = SigningKey::generate_pkcs8(algorithm).expect("rng");
        SigningKey::from_pkcs8(algorithm, id, &pkcs8).expect("fresh key loads")
    }

    const CT: &str = "application/test";

    fn verify(bytes: &[u8], key: &VerifyingKey, kid: &str) -> Result<Vec<u8>, ErrorCode> {
        UnverifiedEnvelope::parse(bytes)
            .and_then(|e| e.verify(key, kid, CT).map(<[u8]>::to_vec))
            .map_err(|e| e.code)
    }

    #[test]
    fn ed25519_keys_are_pkcs8_v1_and_load() {
        let document = SigningKey::generate_pkcs8(SigningAlgorithm::Ed25519).expect("rng");
        assert_eq!(
            document.len(),
            48,
            "v1: 16 bytes of header and the 32-byte seed"
        );
        // SEQUENCE (30 2e), then the version INTEGER (02 01 00): v1
        assert_eq!(&document[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        assert!(SigningKey::from_pkcs8(SigningAlgorithm::Ed25519, "d", &document).is_ok());
    }

    #[test]
    fn seals_and_verifies_with_both_algorithms() {
        for algorithm in [SigningAlgorithm::Ed25519, SigningAlgorithm::Es256] {
            let signer = key(algorithm, "dev-1");
            let sealed = signer.seal(CT, b"hello");
            assert_eq!(
                verify(&sealed, &signer.verifying_key(), "dev-1"),
                Ok(b"hello".to_vec())
            );
        }
    }

    #[test]
    fn refuses_hostile_envelopes() {
        let signer = key(SigningAlgorithm::Ed25519, "dev-1");
        let enrolled = signer.verifying_key();
        let other = key(SigningAlgorithm::Ed25519, "dev-1");
        let es256 = key(SigningAlgorithm::Es256, "dev-1");
        let header = |alg: Option<RegisteredLabelWithPrivate<iana::Algorithm>>| {
            let mut h = HeaderBuilder::new()
                .key_id(b"dev-1".to_vec())
                .content_type(CT.to_owned())
                .build();
            h.alg = alg;
            h
        };
        use ErrorCode::*;
        let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
            ("garbage", b"\x01\x02".to_vec(), MalformedEnvelope),
            (
                "signed by another key",
                other.seal(CT, b"x"),
                SignatureInvalid,
            ),
            (
                "no alg",
                signer.seal_with_protected_header(header(None), b"x"),
                AlgorithmNotAllowed,
            ),
            (
                "alg none as text",
                signer.seal_with_protected_header(
                    header(Some(RegisteredLabelWithPrivate::Text("none".into()))),
                    b"x",
                ),
                AlgorithmNotAllowed,
            ),
            (
                "es256 for an ed25519 device",
                es256.seal(CT, b"x"),
                AlgorithmNotAllowed,
            ),
            (
                "other content type",
                signer.seal("application/other", b"x"),
                UnsupportedContentType,
            ),
            (
                "other kid",
                key(SigningAlgorithm::Ed25519, "dev-2").seal(CT, b"x"),
                KeyIdMismatch,
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(verify(&bytes, &enrolled, "dev-1"), Err(expected), "{name}");
        }
        // a flipped payload byte breaks the signature
        let mut sealed = signer.seal(CT, b"pay 100");
        let at = sealed.len() - 70;
        sealed[at] ^= 1;
        assert!(verify(&sealed, &enrolled, "dev-1").is_err());
    }
}
