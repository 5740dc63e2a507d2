//! The fuzz corpus on stable, in the normal suite: every committed input of every target
//! (`fuzz/corpus/<target>/`, the fuzzer's working set, and `fuzz/regressions/<target>/`, each
//! input that once crashed a target) runs through the target's body
//! (`paygate_gateway::fuzzing`), the same code `scripts/fuzz` runs under libFuzzer on nightly.

#![allow(clippy::unwrap_used)]

use paygate_core::DeviceId;
use paygate_gateway::config::Settings;
use paygate_gateway::front::{check_packet, decode_strict, Verdict};
use paygate_gateway::fuzzing::{self, seeds, test_key, TARGETS, TEST_KEY_ID};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("readable corpus file");
            (path, bytes)
        })
        .collect()
}

#[test]
fn every_committed_input_runs_through_its_target_without_a_finding() {
    let mut ran = 0;
    for (name, target) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for (path, bytes) in inputs(&fuzz_dir().join(kind).join(name)) {
                let outcome = std::panic::catch_unwind(|| target(&bytes));
                assert!(outcome.is_ok(), "{} fails its target", path.display());
                ran += 1;
            }
        }
    }
    // at least every seed is committed (the next test checks each one)
    assert!(ran >= seeds().len(), "only {ran} committed inputs");
}

/// Each seed is committed under `fuzz/corpus/<target>/`, and reaches past every check to the
/// deepest code of its target (else the fuzzer would start from the front door). With
/// PAYGATE_FUZZ_WRITE_SEEDS=1 (scripts/fuzz sets it) missing seeds are written.
#[test]
fn the_seeds_are_committed_and_reach_past_every_check() {
    let device = DeviceId::parse(fuzzing::DEVICE).unwrap();
    let key = test_key().verifying_key();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(name);
        if std::env::var_os("PAYGATE_FUZZ_WRITE_SEEDS").is_some() && !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        assert!(
            path.exists(),
            "{} is not committed (PAYGATE_FUZZ_WRITE_SEEDS=1 writes it)",
            path.display()
        );
        let body = &bytes[1..];
        match (target, name) {
            ("mqtt_frames", _) => {
                let mut rest = &bytes[..];
                let mut forwarded = 0;
                while !rest.is_empty() {
                    let header = rumqttc::mqttbytes::check(rest.iter(), 65_536).unwrap();
                    let (raw, tail) = rest.split_at(header.frame_length());
                    rest = tail;
                    let packet = decode_strict(raw, 65_536).unwrap();
                    assert_eq!(check_packet(&device, &packet), Verdict::Forward);
                    forwarded += 1;
                }
                assert_eq!(forwarded, 6);
            }
            ("request", "seed-envelope") => {
                let envelope = paygate_core::envelope::UnverifiedEnvelope::parse(body).unwrap();
                let payload = envelope
                    .verify(
                        &key,
                        TEST_KEY_ID,
                        paygate_core::request::REQUEST_CONTENT_TYPE,
                    )
                    .unwrap();
                paygate_core::request::decode_request(payload).unwrap();
            }
            ("request", _) => {
                paygate_core::request::decode_request(body).unwrap();
            }
            ("receipt", "seed-envelope") => {
                paygate_agent::verify_receipt(body, &key, TEST_KEY_ID, &device).unwrap();
            }
            ("receipt", _) => {
                paygate_core::receipt::Receipt::decode(body).unwrap();
            }
            ("config", _) => {
                Settings::parse_toml(std::str::from_utf8(&bytes).unwrap()).unwrap();
            }
            ("audit", "seed-line") => {
                paygate_core::audit::AuditRecord::from_line(body).unwrap();
            }
            ("audit", "seed-checkpoint") => {
                paygate_core::audit::CheckpointBody::open(body, &key, TEST_KEY_ID).unwrap();
            }
            ("audit", "seed-checkpoint-body") => {
                let sealed = test_key().seal(paygate_core::audit::CHECKPOINT_CONTENT_TYPE, body);
                paygate_core::audit::CheckpointBody::open(&sealed, &key, TEST_KEY_ID).unwrap();
            }
            ("audit", _) => {
                let length = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let (segment, checkpoint_body) = body[2..].split_at(length);
                let checkpoint = test_key().seal(
                    paygate_core::audit::CHECKPOINT_CONTENT_TYPE,
                    checkpoint_body,
                );
                let mut verifier =
                    paygate_core::audit::ArchiveVerifier::new(key.clone(), TEST_KEY_ID);
                verifier
                    .add_segment(0, segment, &checkpoint, |_, _, _| {})
                    .unwrap();
            }
            other => panic!("no check for seed {other:?}"),
        }
    }
}
