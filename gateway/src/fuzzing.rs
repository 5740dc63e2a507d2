//! The bodies of the fuzz targets (`fuzz/`, run by `scripts/fuzz` on nightly with libFuzzer).
//!
//! They live here, not in `fuzz/`, so that the committed corpus and every input that ever
//! crashed a target run through the very same code on stable, in the normal test suite
//! (`gateway/tests/fuzz_corpus.rs`). Each function takes the fuzzer's bytes, must never panic,
//! and asserts the property its target exists for; an `Err` from the code under test is a
//! normal outcome (a refused input), a panic is a finding.
//!
//! Keys here are fixed test keys, so that corpus entries signed by them reach the code behind
//! the signature check in every run.

use crate::config::Settings;
use crate::front::{check_packet, decode_strict, encode, Verdict};
use bytes::BytesMut;
use paygate_core::audit::{ArchiveVerifier, AuditRecord, CheckpointBody, CHECKPOINT_CONTENT_TYPE};
use paygate_core::envelope::{SigningAlgorithm, SigningKey, UnverifiedEnvelope};
use paygate_core::receipt::{Receipt, RECEIPT_CONTENT_TYPE};
use paygate_core::request::{decode_request, REQUEST_CONTENT_TYPE};
use paygate_core::DeviceId;
use rumqttc::mqttbytes;
use rumqttd::protocol::Protocol;
use std::sync::OnceLock;

/// The largest frame the targets accept (the gateway's default is 64 KiB too).
pub const PACKET_BYTES_MAX: usize = 64 * 1024;

/// The device every target speaks for.
pub const DEVICE: &str = "pos-1";

/// The key id of [`test_key`].
pub const TEST_KEY_ID: &str = "fuzz-key";

/// A fixed Ed25519 key (seed 00 01 .. 1f): the device's and the gateway's key in the targets.
pub fn test_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut pkcs8 = hex::decode("302e020100300506032b657004220420").expect("hex");
        pkcs8.extend(0u8..32);
        SigningKey::from_pkcs8(SigningAlgorithm::Ed25519, TEST_KEY_ID, &pkcs8)
            .expect("fixed test key")
    })
}

fn device() -> DeviceId {
    DeviceId::parse(DEVICE).expect("valid device id")
}

/// The device plane: a byte stream from a device, split into frames as the front splits it,
/// each decoded strictly and judged by the guard's policy.
///
/// Properties: every frame the strict decoder accepts is byte for byte its canonical
/// encoding; and every frame the guard would forward to rumqttd is decoded by rumqttd's own
/// decoder, without a panic, to a packet that rumqttd encodes back to the same bytes, so the
/// broker acts on exactly the packet the guard checked.
pub fn mqtt_frames(data: &[u8]) {
    let device = device();
    let mut rest = data;
    while !rest.is_empty() {
        let Ok(header) = mqttbytes::check(rest.iter(), PACKET_BYTES_MAX) else {
            return; // incomplete or refused header: the front waits or closes
        };
        let (raw, tail) = rest.split_at(header.frame_length());
        rest = tail;
        let Ok(packet) = decode_strict(raw, PACKET_BYTES_MAX) else {
            return; // the front closes the connection
        };
        if !matches!(packet, rumqttc::mqttbytes::v4::Packet::Connect(_)) {
            // CONNECT is never forwarded (the front sends rumqttd its own); all else must be
            // canonical
            assert_eq!(&encode(&packet)[..], raw, "accepted a non-canonical frame");
        }
        if check_packet(&device, &packet) == Verdict::Forward {
            let mut stream = BytesMut::from(raw);
            let broker = rumqttd::protocol::v4::V4
                .read_mut(&mut stream, PACKET_BYTES_MAX)
                .unwrap_or_else(|error| {
                    panic!("rumqttd refuses a frame the guard forwards: {error:?}")
                });
            assert!(stream.is_empty(), "rumqttd read less than the frame");
            let mut again = BytesMut::new();
            rumqttd::protocol::v4::V4
                .write(broker.clone(), &mut again)
                .unwrap_or_else(|error| panic!("rumqttd cannot encode {broker:?}: {error:?}"));
            assert_eq!(&again[..], raw, "rumqttd reads {broker:?} differently");
        }
    }
}

/// Requests: the COSE envelope a device publishes and the JSON request inside it.
///
/// The first byte chooses: even bytes go through envelope parsing and verification under
/// the test key (what the pipeline does to every publish), odd bytes go straight to the
/// request decoder (what a signed but hostile payload meets). Property: no panic, whatever the
/// bytes (the decoders refuse with an error code, they never crash).
pub fn request(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(envelope) = UnverifiedEnvelope::parse(body) else {
            return;
        };
        let key = test_key().verifying_key();
        if let Ok(payload) = envelope.verify(&key, TEST_KEY_ID, REQUEST_CONTENT_TYPE) {
            let _ = decode_request(payload);
        }
    } else {
        let _ = decode_request(body);
    }
}

/// Receipts as the edge agent checks them ([`paygate_agent::verify_receipt`]): even first
/// bytes through the agent's whole check under the test key, odd ones straight to the receipt
/// decoder. Property: no panic.
pub fn receipt(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let key = test_key().verifying_key();
        let _ = paygate_agent::verify_receipt(body, &key, TEST_KEY_ID, &device());
    } else {
        let _ = Receipt::decode(body);
    }
}

/// The configuration file: any text, as `paygate serve --config` would read it (without the
/// environment and without resolving `env:`/`file:` secrets, which read outside the input).
/// Properties: no panic; settings that load, written out as TOML, load back equal.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = Settings::parse_toml(text) {
        // what loads can be written out (`paygate config`) and loads back the same
        let written = toml::to_string(&settings).expect("loaded settings serialise");
        let again = Settings::parse_toml(&written)
            .unwrap_or_else(|error| panic!("written settings do not load: {error}\n{written}"));
        assert_eq!(again, settings, "settings change when written and loaded");
    }
}

/// The audit archive as the offline verifier reads it: one record line, a checkpoint's body
/// (signed by the target), a segment with its checkpoint's body, or a whole checkpoint file,
/// chosen by the first byte. Properties: no panic; a record line
/// that parses encodes back to a line that parses to the same record; a segment the verifier
/// accepts moves it on by exactly one segment.
pub fn audit(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let key = test_key().verifying_key();
    match mode % 4 {
        0 => {
            if let Ok(record) = AuditRecord::from_line(body) {
                let again = AuditRecord::from_line(&record.to_line())
                    .unwrap_or_else(|error| panic!("a record's own line is refused: {error}"));
                assert_eq!(again, record, "a record does not survive its own line");
            }
        }
        1 => {
            // the bytes as a checkpoint's JSON body, signed here so that the body's parser is
            // reached (a mutated signed checkpoint never gets past the signature)
            let sealed = test_key().seal(CHECKPOINT_CONTENT_TYPE, body);
            let _ = CheckpointBody::open(&sealed, &key, TEST_KEY_ID);
        }
        2 => {
            // a two-byte big-endian length, the segment, then its checkpoint's JSON body
            let Some((length, rest)) = body.split_first_chunk::<2>() else {
                return;
            };
            let split = usize::from(u16::from_be_bytes(*length)).min(rest.len());
            let (segment, checkpoint_body) = rest.split_at(split);
            let checkpoint = test_key().seal(CHECKPOINT_CONTENT_TYPE, checkpoint_body);
            let mut verifier = ArchiveVerifier::new(key, TEST_KEY_ID);
            if verifier
                .add_segment(0, segment, &checkpoint, |_, _, _| {})
                .is_ok()
            {
                assert_eq!(
                    verifier.next_segment(),
                    1,
                    "one segment accepted, not one step"
                );
            }
        }
        _ => {
            // the bytes as a whole checkpoint file (COSE), signature and all
            let _ = CheckpointBody::open(body, &key, TEST_KEY_ID);
        }
    }
}

/// A target's body: the fuzzer's bytes in, a panic for a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for `gateway/tests/fuzz_corpus.rs`.
pub const TARGETS: &[(&str, Target)] = &[
    ("mqtt_frames", mqtt_frames),
    ("request", request),
    ("receipt", receipt),
    ("config", config),
    ("audit", audit),
];

/// The committed corpus's starting points (`fuzz/corpus/<target>/seed-*`): one input per
/// target that reaches past every check to the deepest code, so the fuzzer mutates from
/// there. `gateway/tests/fuzz_corpus.rs` holds them to that and writes missing ones.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use paygate_core::audit::{
        rfc3339_ms, sha256, AuditEvent, AuditOutcome, EventType, MerkleTree, FORMAT_VERSION,
        GENESIS_HASH,
    };
    use rumqttc::mqttbytes::v4::{
        Packet, PubAck, Publish, Subscribe, SubscribeFilter, Unsubscribe,
    };
    use rumqttc::mqttbytes::QoS;

    let key = test_key();
    let requests = paygate_core::topics::requests_topic(&device());
    let replies = paygate_core::topics::replies_topic(&device());
    let request = format!(
        r#"{{"v":1,"device_id":"{DEVICE}","idempotency_key":"k-1","counter":1,"created_at_ms":1765000000000,"op":{{"type":"merchant_payment","merchant_id":"m-1","amount":{{"minor":1000,"currency":"INR"}}}}}}"#
    );
    let envelope = key.seal(REQUEST_CONTENT_TYPE, request.as_bytes());

    let mut publish = Publish::new(requests, QoS::AtLeastOnce, envelope.clone());
    publish.pkid = 1;
    let session = [
        Packet::Subscribe(Subscribe {
            pkid: 2,
            filters: vec![SubscribeFilter::new(replies.clone(), QoS::AtLeastOnce)],
        }),
        Packet::Publish(publish),
        Packet::PubAck(PubAck::new(7)),
        Packet::PingReq,
        Packet::Unsubscribe(Unsubscribe::new(replies)),
        Packet::Disconnect,
    ];
    let frames: Vec<u8> = session.iter().flat_map(|p| encode(p).to_vec()).collect();

    let receipt = Receipt {
        v: 1,
        outcome: paygate_core::receipt::Outcome::Approved,
        code: None,
        message: None,
        device_id: DEVICE.to_owned(),
        idempotency_key: Some("k-1".to_owned()),
        body_sha256: Some(hex::encode(sha256(request.as_bytes()))),
        tx_id: Some("PGW0123456789abcdef0123456789abcdef".to_owned()),
        amount: None,
        merchant_id: Some("m-1".to_owned()),
        counterparty: None,
        payer: None,
        challenge: None,
        upi: None,
        retry_after_ms: None,
        decided_at_ms: 1_765_000_000_000,
    }
    .to_payload();
    let sealed_receipt = key.seal(RECEIPT_CONTENT_TYPE, &receipt);

    // one segment of two records and its signed checkpoint, as the journal writes them
    let mut segment = Vec::new();
    let mut tree = MerkleTree::new();
    let mut prev = GENESIS_HASH;
    let mut first_line = Vec::new();
    for seq in 0..2u64 {
        let event = AuditEvent::new(
            1_765_000_000_000 + seq,
            EventType::PaymentDecided,
            "device:pos-1",
            "mqtt:127.0.0.1:50000",
            AuditOutcome::Success,
            "pipeline",
            "tx:PGW0123456789abcdef0123456789abcdef",
        );
        let line = AuditRecord::place(event, seq, &prev, Some(seq + 1)).to_line();
        prev = sha256(&line);
        tree.push(&line);
        segment.extend_from_slice(&line);
        segment.push(b'\n');
        if seq == 0 {
            first_line = line;
        }
    }
    let mut log_tree = MerkleTree::new();
    log_tree.push(&tree.root());
    let checkpoint_body = CheckpointBody {
        v: FORMAT_VERSION,
        log_id: "fuzz-log".to_owned(),
        segment: 0,
        first_seq: 0,
        record_count: tree.len(),
        segment_sha256: hex::encode(sha256(&segment)),
        segment_root: hex::encode(tree.root()),
        last_record_hash: hex::encode(prev),
        log_size: log_tree.len(),
        log_root: hex::encode(log_tree.root()),
        prev_checkpoint_sha256: hex::encode(GENESIS_HASH),
        outbox_id_max: 2,
        sealed_at: rfc3339_ms(1_765_000_001_000),
    };
    let checkpoint_json = serde_json::to_vec(&checkpoint_body).expect("serialises");
    let checkpoint = checkpoint_body.seal(key);
    let segment_len = u16::try_from(segment.len()).expect("a small segment");
    let mut archive = vec![2u8];
    archive.extend_from_slice(&segment_len.to_be_bytes());
    archive.extend_from_slice(&segment);
    archive.extend_from_slice(&checkpoint_json);

    let prefixed = |mode: u8, body: &[u8]| [&[mode][..], body].concat();
    vec![
        ("mqtt_frames", "seed-session", frames),
        ("request", "seed-envelope", prefixed(0, &envelope)),
        ("request", "seed-json", prefixed(1, request.as_bytes())),
        ("receipt", "seed-envelope", prefixed(0, &sealed_receipt)),
        ("receipt", "seed-json", prefixed(1, &receipt)),
        (
            "config",
            "seed-default",
            Settings::default_file().as_bytes().to_vec(),
        ),
        ("audit", "seed-line", prefixed(0, &first_line)),
        (
            "audit",
            "seed-checkpoint-body",
            prefixed(1, &checkpoint_json),
        ),
        ("audit", "seed-checkpoint", prefixed(3, &checkpoint)),
        ("audit", "seed-segment", archive),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::test_frames::{frame, subscribe_own};
    use proptest::prelude::*;
    use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
    use rumqttc::mqttbytes::QoS;

    fn canonical_frame() -> impl Strategy<Value = Vec<u8>> {
        let own = "paygate/v1/devices/pos-1/requests";
        let publish = (
            prop_oneof![Just(own.to_owned()), "[a-z/+#]{0,12}"],
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
            1u16..,
        )
            .prop_map(|(topic, payload, qos1, pkid)| {
                let qos = if qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                let mut publish = Publish::new(topic, qos, payload);
                if qos1 {
                    publish.pkid = pkid;
                }
                frame(Packet::Publish(publish))
            });
        prop_oneof![
            publish,
            Just(subscribe_own()),
            (1u16..).prop_map(|pkid| frame(Packet::PubAck(PubAck::new(pkid)))),
            Just(frame(Packet::PingReq)),
            Just(frame(Packet::Disconnect)),
        ]
    }

    proptest! {
        /// A canonical frame with any one byte changed is refused, or is itself canonical and
        /// read the same way by rumqttd (the `mqtt_frames` fuzz target's property, searched
        /// here on stable from valid frames).
        #[test]
        fn one_changed_byte_never_makes_the_guard_and_the_broker_disagree(
            frames in proptest::collection::vec(canonical_frame(), 1..4),
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            let mut bytes: Vec<u8> = frames.concat();
            let index = at.index(bytes.len());
            bytes[index] = value;
            mqtt_frames(&bytes);
        }
    }
}
