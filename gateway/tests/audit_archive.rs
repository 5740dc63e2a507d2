//! The audit trail as an auditor meets it: an archive made by the real journal and shipper,
//! verified offline with the public key alone, and every kind of tampering detected and
//! located. Also the `paygate audit` command itself.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{
    checkpoint_name, segment_name, AuditEvent, AuditOutcome, BreakKind, CheckpointBody, EventType,
};
use paygate_core::envelope::{SigningAlgorithm, SigningKey, UnverifiedEnvelope};
use paygate_gateway::audit::archive::{self, Filter};
use paygate_gateway::audit::worm::{LocalWorm, WormStore};
use paygate_gateway::audit::{self as audit_log, shipper, AuditLog};
use paygate_gateway::config::Settings;
use paygate_gateway::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const RECORDS_PER_SEGMENT: u64 = 5;

/// 23 events in segments of 5 (the last sealed early), shipped to a local write-once store.
/// Returns the data dir, the store's directory (the archive) and the public key file.
async fn make_archive() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.audit.records_per_segment_max = RECORDS_PER_SEGMENT;
    let store = paygate_gateway::audit::open_store(&settings, 2)
        .await
        .unwrap();
    let log = AuditLog::open(&settings, store, Arc::new(Metrics::default()))
        .await
        .unwrap();
    for i in 0..23u64 {
        let mut event = AuditEvent::new(
            1_700_000_000_000 + i * 1000,
            EventType::PaymentDecided,
            format!("device:pos-{}", i % 3),
            "mqtt:pos",
            AuditOutcome::Success,
            "pipeline",
            format!("account:wallet-pos-{}", i % 3),
        );
        event.tx_id = Some(format!("tx-{i:04}"));
        event.device_id = Some(format!("pos-{}", i % 3));
        event.amount = Some(format!("{} INR", 1000 + i));
        log.record(event).await.unwrap();
    }
    log.seal_if_due(true).await.unwrap();
    let worm_dir = dir.path().join("audit/worm");
    let worm = LocalWorm::new(worm_dir.clone(), &settings.audit.local).unwrap();
    assert_eq!(
        shipper::ship_pending(&log, &worm, None::<&LocalWorm>)
            .await
            .unwrap(),
        5
    );
    let key = audit_log::public_jwk_path(&settings.resolve(&settings.audit.signing_key));
    (dir, worm_dir, key)
}

fn copy_dir(from: &Path, to: &Path) {
    for sub in ["segments", "checkpoints"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            std::fs::write(to.join(sub).join(entry.file_name()), bytes).unwrap();
        }
    }
}

fn verify(archive_dir: &Path, key: &Path) -> Result<u64, paygate_core::audit::AuditBreak> {
    let (key, key_id) = archive::read_public_jwk(key).unwrap();
    archive::verify_archive(archive_dir, key, &key_id, None, false, |_| {}).map(|(_, s)| s.records)
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
    }
    std::fs::write(path, bytes).unwrap();
}

/// Each tampering, applied to a fresh copy: (what, change, expected kind, expected location).
#[tokio::test]
async fn every_kind_of_tampering_is_detected_and_located() {
    let (_dir, archive_dir, key) = make_archive().await;
    assert_eq!(verify(&archive_dir, &key), Ok(23));
    let seg1 = segment_name(1);
    type Tamper = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Tamper, BreakKind, String)> = vec![
        (
            "a changed byte in a record",
            Box::new(|dir: &Path| {
                let path = dir.join(segment_name(1));
                let mut all = lines(&path);
                let text = String::from_utf8(all[1].clone()).unwrap();
                all[1] = text.replace("1006 INR", "9006 INR").into_bytes();
                assert_ne!(text.as_bytes(), &all[1][..]);
                write_lines(&path, &all);
            }),
            BreakKind::ChainBroken,
            format!("{seg1} line 3"),
        ),
        (
            "a changed byte in a segment's last record",
            Box::new(|dir: &Path| {
                let path = dir.join(segment_name(1));
                let mut all = lines(&path);
                let text = String::from_utf8(all[4].clone()).unwrap();
                all[4] = text.replace("1009 INR", "1008 INR").into_bytes();
                write_lines(&path, &all);
            }),
            BreakKind::CheckpointMismatch,
            checkpoint_name(1),
        ),
        (
            "a deleted record",
            Box::new(|dir: &Path| {
                let path = dir.join(segment_name(1));
                let mut all = lines(&path);
                all.remove(1);
                write_lines(&path, &all);
            }),
            BreakKind::SequenceGap,
            format!("{seg1} line 2"),
        ),
        (
            "two records swapped",
            Box::new(|dir: &Path| {
                let path = dir.join(segment_name(1));
                let mut all = lines(&path);
                all.swap(1, 2);
                write_lines(&path, &all);
            }),
            BreakKind::SequenceGap,
            format!("{seg1} line 2"),
        ),
        (
            "a deleted segment with its checkpoint",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join(segment_name(2))).unwrap();
                std::fs::remove_file(dir.join(checkpoint_name(2))).unwrap();
            }),
            BreakKind::SegmentMissing,
            segment_name(2),
        ),
        (
            "a deleted segment file",
            Box::new(|dir: &Path| std::fs::remove_file(dir.join(segment_name(3))).unwrap()),
            BreakKind::SegmentMissing,
            segment_name(3),
        ),
        (
            "a deleted checkpoint",
            Box::new(|dir: &Path| std::fs::remove_file(dir.join(checkpoint_name(4))).unwrap()),
            BreakKind::SegmentMissing,
            checkpoint_name(4),
        ),
        (
            "a truncated tail",
            Box::new(|dir: &Path| {
                let path = dir.join(segment_name(4));
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
            }),
            BreakKind::Truncated,
            format!("{} line 3", segment_name(4)),
        ),
        (
            "a truncated tail cut at a line end",
            Box::new(|dir: &Path| {
                let path = dir.join(segment_name(4));
                let mut all = lines(&path);
                all.pop();
                write_lines(&path, &all);
            }),
            BreakKind::Truncated,
            segment_name(4),
        ),
        (
            "a forged checkpoint (body edited, signature kept)",
            Box::new(|dir: &Path| {
                let path = dir.join(checkpoint_name(2));
                let bytes = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let at = text.find("\"record_count\":5").unwrap();
                let mut forged = bytes.clone();
                forged[at + "\"record_count\":".len()] = b'4';
                std::fs::write(&path, forged).unwrap();
            }),
            BreakKind::CheckpointSignature,
            checkpoint_name(2),
        ),
        (
            "a checkpoint re-signed by another key with the same key id",
            Box::new(|dir: &Path| resign(dir, 1, "paygate-audit-1")),
            BreakKind::CheckpointSignature,
            checkpoint_name(1),
        ),
        (
            "a checkpoint signed by another key id",
            Box::new(|dir: &Path| resign(dir, 0, "someone-else")),
            BreakKind::CheckpointSignature,
            checkpoint_name(0),
        ),
    ];
    for (what, tamper, kind, location) in cases {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&archive_dir, copy.path());
        tamper(copy.path());
        let found = verify(copy.path(), &key).expect_err(what);
        assert_eq!(found.kind, kind, "{what}: {found}");
        assert_eq!(found.location, location, "{what}: {found}");
    }
}

/// Replaces a checkpoint with one whose body is the same but signed by a new key.
fn resign(dir: &Path, segment: u64, key_id: &str) {
    let path = dir.join(checkpoint_name(segment));
    let bytes = std::fs::read(&path).unwrap();
    let envelope = UnverifiedEnvelope::parse(&bytes).unwrap();
    let body: CheckpointBody =
        serde_json::from_slice(envelope.payload_unverified().unwrap()).unwrap();
    let other = SigningKey::from_pkcs8(
        SigningAlgorithm::Ed25519,
        key_id,
        &SigningKey::generate_pkcs8(SigningAlgorithm::Ed25519).unwrap(),
    )
    .unwrap();
    std::fs::write(&path, body.seal(&other)).unwrap();
}

#[tokio::test]
async fn removing_the_newest_segments_is_caught_by_a_trusted_checkpoint() {
    let (_dir, archive_dir, key) = make_archive().await;
    let trusted = std::fs::read(archive_dir.join(checkpoint_name(4))).unwrap();
    let (vk, kid) = archive::read_public_jwk(&key).unwrap();
    assert!(archive::verify_archive(
        &archive_dir,
        vk.clone(),
        &kid,
        Some(&trusted),
        false,
        |_| {}
    )
    .is_ok());
    // an older checkpoint is consistent with the whole archive too (RFC 9162 consistency)
    let older = std::fs::read(archive_dir.join(checkpoint_name(1))).unwrap();
    assert!(
        archive::verify_archive(&archive_dir, vk.clone(), &kid, Some(&older), false, |_| {})
            .is_ok()
    );

    let copy = tempfile::tempdir().unwrap();
    copy_dir(&archive_dir, copy.path());
    for n in [3, 4] {
        std::fs::remove_file(copy.path().join(segment_name(n))).unwrap();
        std::fs::remove_file(copy.path().join(checkpoint_name(n))).unwrap();
    }
    // on its own the shortened archive is a valid prefix...
    assert_eq!(verify(copy.path(), &key), Ok(15));
    // ...but not against what the auditor saw before
    let Err(found) = archive::verify_archive(copy.path(), vk, &kid, Some(&trusted), false, |_| {})
    else {
        panic!("a shortened archive verified");
    };
    assert_eq!(found.kind, BreakKind::TrustedCheckpoint, "{found}");
}

#[tokio::test]
async fn inclusion_proofs_and_search_work_from_the_archive_alone() {
    let (_dir, archive_dir, key) = make_archive().await;
    let (vk, kid) = archive::read_public_jwk(&key).unwrap();
    let proofs = archive::prove_tx(&archive_dir, vk.clone(), &kid, "tx-0012").unwrap();
    assert_eq!(proofs.len(), 1);
    let (record, checkpoint) = proofs[0].verify(&vk, &kid).unwrap();
    assert_eq!(record.tx_id.as_deref(), Some("tx-0012"));
    assert_eq!(record.seq, 12);
    assert_eq!(checkpoint.log_size, 5);
    // a proof for another record's line does not verify
    let mut forged = proofs[0].clone();
    forged.record = forged.record.replace("1012 INR", "1 INR");
    assert!(forged.verify(&vk, &kid).is_err());

    let filter = Filter {
        device: Some("pos-1".into()),
        ..Filter::default()
    };
    let mut found = Vec::new();
    archive::verify_archive(&archive_dir, vk, &kid, None, false, |at| {
        if filter.matches(at.record) {
            found.push(at.record.seq);
        }
    })
    .unwrap();
    assert_eq!(found, vec![1, 4, 7, 10, 13, 16, 19, 22]);
}

#[tokio::test]
async fn the_local_store_refuses_overwrites_and_early_deletes_and_puts_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::default();
    let worm = LocalWorm::new(dir.path().join("worm"), &settings.audit.local).unwrap();
    use paygate_gateway::audit::worm::{PutOutcome, WormError};
    assert_eq!(
        worm.put_once("segments/a.jsonl", b"one").await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        worm.put_once("segments/a.jsonl", b"one").await.unwrap(),
        PutOutcome::AlreadyStored
    );
    assert!(matches!(
        worm.put_once("segments/a.jsonl", b"two").await,
        Err(WormError::Conflict { .. })
    ));
    assert!(matches!(
        worm.delete("segments/a.jsonl", paygate_gateway::clock::now_ms()),
        Err(WormError::Retained { .. })
    ));
    assert_eq!(
        worm.get("segments/a.jsonl").await.unwrap(),
        Some(b"one".to_vec())
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("worm/segments/a.jsonl"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o222, 0, "stored objects are read-only");
    // 366 days later the retention has passed
    let later = paygate_gateway::clock::now_ms() + 366 * 86_400_000;
    worm.delete("segments/a.jsonl", later).unwrap();
    assert!(worm.put_once("../escape", b"x").await.is_err());
}

/// The command an auditor runs: OK on the clean archive, BROKEN with the location and exit
/// status 1 on a tampered copy; prove + verify-proof; search as CSV.
#[tokio::test]
async fn the_audit_command_verifies_proves_and_searches() {
    let (_dir, archive_dir, key) = make_archive().await;
    let paygate = env!("CARGO_BIN_EXE_paygate");
    let run = |args: &[&str]| {
        std::process::Command::new(paygate)
            .args(args)
            .output()
            .unwrap()
    };
    let archive = archive_dir.to_str().unwrap();
    let key = key.to_str().unwrap();
    let ok = run(&["audit", "verify", "--archive", archive, "--public-key", key]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(stdout.starts_with("OK: 5 segments, 23 records"), "{stdout}");

    let copy = tempfile::tempdir().unwrap();
    copy_dir(&archive_dir, copy.path());
    let path = copy.path().join(segment_name(2));
    let mut all = lines(&path);
    all.swap(0, 3);
    write_lines(&path, &all);
    let broken = run(&[
        "audit",
        "verify",
        "--archive",
        copy.path().to_str().unwrap(),
        "--public-key",
        key,
    ]);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("BROKEN: SEQUENCE_GAP at segments/000000000002.jsonl line 1"),
        "{stdout}"
    );

    let proof = run(&[
        "audit",
        "prove",
        "--archive",
        archive,
        "--public-key",
        key,
        "--tx",
        "tx-0007",
    ]);
    assert!(proof.status.success());
    let proof_file = copy.path().join("proof.json");
    std::fs::write(&proof_file, &proof.stdout).unwrap();
    let checked = run(&[
        "audit",
        "verify-proof",
        "--proof",
        proof_file.to_str().unwrap(),
        "--public-key",
        key,
    ]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("OK: record seq 7 (payment_decided)"),
        "{stdout}"
    );

    let csv = run(&[
        "audit",
        "search",
        "--archive",
        archive,
        "--public-key",
        key,
        "--device",
        "pos-2",
        "--from",
        "2023-11-14T22:13:30Z",
        "--format",
        "csv",
    ]);
    let stdout = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.status.success(), "{stdout}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].starts_with("seq,time,event,actor"), "{stdout}");
    // pos-2 events are seq 2, 5, 8, ...; from 22:13:30 (seq >= 10): 11, 14, 17, 20
    let seqs: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.split(',').next().unwrap())
        .collect();
    assert_eq!(seqs, vec!["11", "14", "17", "20"], "{stdout}");
}

/// PCI DSS 10.2.1.3: with the gateway's configuration, reading the audit log through paygate's
/// tools is itself recorded, and reaches the journal.
#[tokio::test]
async fn reading_the_audit_log_with_the_gateways_configuration_is_audited() {
    let (dir, archive_dir, key) = make_archive().await;
    let config = dir.path().join("paygate.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args([
            "audit",
            "--config",
            config.to_str().unwrap(),
            "--operator",
            "auditor-ann",
        ])
        .args(["verify", "--archive", archive_dir.to_str().unwrap()])
        // what the environment says is never who the trail records
        .env("USER", "mallory")
        .args(["--public-key", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let settings = Settings::load(Some(&config)).unwrap();
    let store = paygate_gateway::audit::open_store(&settings, 1)
        .await
        .unwrap();
    let log = AuditLog::open(&settings, store, Arc::new(Metrics::default()))
        .await
        .unwrap();
    log.seal_if_due(true).await.unwrap();
    let journal = log.dir().await;
    let sealed = std::fs::read(journal.join(segment_name(5))).unwrap();
    let record =
        paygate_core::audit::AuditRecord::from_line(sealed.split(|&b| b == b'\n').next().unwrap())
            .unwrap();
    assert_eq!(record.event, EventType::AuditLogRead);
    // the name given, then the OS account the kernel says ran the command
    let account = record
        .actor
        .strip_prefix("operator:auditor-ann as ")
        .unwrap_or_else(|| panic!("{}", record.actor));
    assert!(
        account.contains("(uid ") || account.starts_with("uid "),
        "{account}"
    );
    assert!(!record.actor.contains("mallory"), "{}", record.actor);
    assert_eq!(record.resource, "audit-log");
    assert!(record.detail.unwrap().starts_with("audit verify "));
}

/// An independent verifier (tests/python/verify_audit_archive.py: hashlib + pycose, written
/// from docs/audit-format.md alone) agrees with ours on a clean and on a tampered archive.
#[tokio::test]
async fn an_independent_python_verifier_written_from_the_format_document_agrees() {
    let (_dir, archive_dir, key) = make_archive().await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/verify_audit_archive.py");
    let run = |archive: &Path| {
        let output = std::process::Command::new("python3")
            .arg(&script)
            .args(["--archive", archive.to_str().unwrap()])
            .args(["--public-key", key.to_str().unwrap()])
            .output()
            .expect("python3 with pycose (scripts/test installs it)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let (vk, kid) = archive::read_public_jwk(&key).unwrap();
    let (_, ours) = archive::verify_archive(&archive_dir, vk, &kid, None, false, |_| {}).unwrap();
    let theirs = run(&archive_dir);
    assert_eq!(theirs["ok"], true, "{theirs}");
    assert_eq!(theirs["records"], 23);
    assert_eq!(theirs["segments"], 5);
    assert_eq!(theirs["log_root"], hex::encode(ours.log_root));

    let copy = tempfile::tempdir().unwrap();
    copy_dir(&archive_dir, copy.path());
    let path = copy.path().join(segment_name(1));
    let mut all = lines(&path);
    all.remove(2);
    write_lines(&path, &all);
    let theirs = run(copy.path());
    assert_eq!(theirs["ok"], false, "{theirs}");
    assert_eq!(theirs["kind"], "SEQUENCE_GAP");
    assert_eq!(theirs["location"], format!("{} line 3", segment_name(1)));

    let copy = tempfile::tempdir().unwrap();
    copy_dir(&archive_dir, copy.path());
    resign(copy.path(), 3, "paygate-audit-1");
    let theirs = run(copy.path());
    assert_eq!(theirs["kind"], "CHECKPOINT_SIGNATURE", "{theirs}");
}

/// One writer per journal: a second gateway on the same data directory (another process, or
/// one still stopping) is refused before it reads the journal, so no two records ever get one
/// place in the chain; once the first lets go, the journal opens and continues its chain.
#[tokio::test]
async fn a_second_writer_of_one_journal_is_refused_until_the_first_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let store = paygate_gateway::audit::open_store(&settings, 2)
        .await
        .unwrap();
    let first = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
        .await
        .unwrap();
    let second = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default())).await;
    assert!(
        matches!(second, Err(paygate_gateway::audit::AuditError::InUse(_))),
        "{:?}",
        second.err()
    );
    drop(first);
    let again = AuditLog::open(&settings, store, Arc::new(Metrics::default()))
        .await
        .unwrap();
    again.seal_if_due(true).await.unwrap();
}
