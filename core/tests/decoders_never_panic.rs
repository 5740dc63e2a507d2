//! The decoders a device can reach must never panic: every input ends in a value or a stable
//! error code. Arbitrary bytes, and valid messages with bytes flipped, inserted or cut.
//! (Coverage-guided fuzzing needs a nightly toolchain this project's machines cannot fetch;
//! these properties run on stable in every test run.)

#![allow(clippy::unwrap_used)]

use paygate_core::envelope::{SigningAlgorithm, SigningKey, UnverifiedEnvelope};
use paygate_core::request::{decode_request, REQUEST_CONTENT_TYPE};
use paygate_core::ErrorCode;
use proptest::prelude::*;

const GOOD: &str = r#"{"v":1,"device_id":"pos-1","idempotency_key":"k1","counter":7,"created_at_ms":1700000000000,"op":{"type":"merchant_payment","merchant_id":"m-1","amount":{"minor":1250,"currency":"INR"}}}"#;

fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for (position, value, kind) in edits {
        if bytes.is_empty() {
            bytes.push(*value);
            continue;
        }
        let at = position % bytes.len();
        match kind % 3 {
            0 => bytes[at] = *value,
            1 => bytes.insert(at, *value),
            _ => bytes.truncate(at),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn request_decoding_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = decode_request(&bytes) {
            prop_assert!(ErrorCode::ALL.contains(&error.code));
        }
    }

    #[test]
    fn request_decoding_never_panics_on_mutated_requests(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let bytes = mutate(GOOD.as_bytes(), &edits);
        match decode_request(&bytes) {
            Ok(request) => prop_assert!(!request.device_id.as_str().is_empty()),
            Err(error) => prop_assert!(ErrorCode::ALL.contains(&error.code)),
        }
    }

    #[test]
    fn envelope_parsing_and_verification_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6)) {
        let pkcs8 = SigningKey::generate_pkcs8(SigningAlgorithm::Ed25519).unwrap();
        let key = SigningKey::from_pkcs8(SigningAlgorithm::Ed25519, "pos-1", &pkcs8).unwrap();
        let sealed = key.seal(REQUEST_CONTENT_TYPE, GOOD.as_bytes());
        let bytes = mutate(&sealed, &edits);
        let outcome = UnverifiedEnvelope::parse(&bytes)
            .and_then(|envelope| envelope.verify(&key.verifying_key(), "pos-1", REQUEST_CONTENT_TYPE).map(<[u8]>::to_vec));
        match outcome {
            // a changed envelope verifies only if the edit left the signed bytes identical
            // (overwriting a byte with itself, or re-encoding the same CBOR)
            Ok(payload) => prop_assert_eq!(payload, GOOD.as_bytes().to_vec()),
            Err(error) => prop_assert!(ErrorCode::ALL.contains(&error.code)),
        }
    }
}
