//! `cargo bench -p paygate-gateway --bench frames`: what taking only canonical frames costs.
//!
//! The guard decodes every frame a device sends; `decode_strict` also re-encodes the packet
//! and compares it with the bytes. Measured on a signed payment's PUBLISH (the frame every
//! payment is), against the plain decode alone and against the envelope parse and signature check
//! the pipeline does on the same payload, all in the same run. Figures are ratios; absolute times vary with
//! the machine and its load.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use paygate_core::request::REQUEST_CONTENT_TYPE;
use paygate_gateway::front::{decode_strict, encode};
use paygate_gateway::fuzzing::{test_key, TEST_KEY_ID};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROUNDS: u32 = 200_000;
const MAX: usize = 64 * 1024;

fn per_call(rounds: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..rounds / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

fn main() {
    let request = r#"{"v":1,"device_id":"pos-1","idempotency_key":"k-1","counter":1,"created_at_ms":1765000000000,"op":{"type":"merchant_payment","merchant_id":"m-1","amount":{"minor":1000,"currency":"INR"}}}"#;
    let envelope = test_key().seal(REQUEST_CONTENT_TYPE, request.as_bytes());
    let mut publish = Publish::new(
        "paygate/v1/devices/pos-1/requests",
        QoS::AtLeastOnce,
        envelope.clone(),
    );
    publish.pkid = 1;
    let frame = encode(&Packet::Publish(publish)).to_vec();

    let plain = per_call(ROUNDS, || {
        let mut copy = BytesMut::from(&frame[..]);
        black_box(Packet::read(&mut copy, MAX).unwrap());
    });
    let strict = per_call(ROUNDS, || {
        black_box(decode_strict(black_box(&frame), MAX).unwrap());
    });
    // the pipeline's own per-request work on the same payload: parse the envelope, verify it
    let key = test_key().verifying_key();
    let verify = per_call(ROUNDS / 20, || {
        let parsed =
            paygate_core::envelope::UnverifiedEnvelope::parse(black_box(&envelope)).unwrap();
        black_box(
            parsed
                .verify(&key, TEST_KEY_ID, REQUEST_CONTENT_TYPE)
                .is_ok(),
        );
    });
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("payment PUBLISH of {} bytes", frame.len());
    println!("  decode alone          {:>9.2?} per frame", plain);
    println!(
        "  decode_strict         {:>9.2?} per frame  ({:.2} x decode alone)",
        strict,
        ratio(strict, plain)
    );
    println!(
        "  the extra work        {:>9.2?} per frame  ({:.4} x the envelope's parse and signature check)",
        strict.saturating_sub(plain),
        ratio(strict.saturating_sub(plain), verify)
    );
}
