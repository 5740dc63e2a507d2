//! An archive cut short (its last segments and checkpoints removed, the rest untouched) passes
//! every hash, chain and signature check on its own. Two things show it without a checkpoint
//! handed over by hand: the witness store, which received every checkpoint too, and the age
//! of the newest checkpoint, since an idle journal still seals a heartbeat every interval.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{
    checkpoint_name, segment_name, AuditEvent, AuditOutcome, AuditRecord, BreakKind, EventType,
};
use paygate_gateway::audit::archive;
use paygate_gateway::audit::worm::LocalWorm;
use paygate_gateway::audit::{self as audit_log, shipper, AuditLog};
use paygate_gateway::config::Settings;
use paygate_gateway::metrics::Metrics;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const SEAL_INTERVAL_MS: u64 = 200;

fn settings(dir: &Path) -> Settings {
    let mut settings = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    settings.audit.seal_interval_ms = SEAL_INTERVAL_MS;
    settings
}

async fn open(settings: &Settings) -> Arc<AuditLog> {
    let store = paygate_gateway::audit::open_store(settings, 2)
        .await
        .unwrap();
    AuditLog::open(settings, store, Arc::new(Metrics::default()))
        .await
        .unwrap()
}

fn records_of(segment: &Path) -> Vec<AuditRecord> {
    std::fs::read(segment)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| AuditRecord::from_line(l).unwrap())
        .collect()
}

/// Busy or idle, a checkpoint is sealed once per interval: an idle interval gets a segment
/// holding one `audit_heartbeat` record; a busy one gets none, and is sealed an interval after
/// the last seal however late in it its first record came.
#[tokio::test]
async fn an_idle_journal_seals_a_heartbeat_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let log = open(&settings).await;
    let event = event_now();
    log.record(event.clone()).await.unwrap();
    log.seal_if_due(true).await.unwrap();
    // not idle for a whole interval yet: nothing
    log.seal_if_due(false).await.unwrap();
    let journal = log.dir().await;
    assert!(!journal.join(checkpoint_name(1)).exists());
    for segment in 1..=3 {
        tokio::time::sleep(Duration::from_millis(SEAL_INTERVAL_MS + 50)).await;
        log.seal_if_due(false).await.unwrap();
        assert!(journal.join(checkpoint_name(segment)).exists());
        let records = records_of(&journal.join(segment_name(segment)));
        assert_eq!(records.len(), 1, "segment {segment}: {records:?}");
        assert_eq!(records[0].event, EventType::AuditHeartbeat);
    }
    // a busy interval seals its own records, with no heartbeat among them
    log.record(event).await.unwrap();
    tokio::time::sleep(Duration::from_millis(SEAL_INTERVAL_MS + 50)).await;
    log.seal_if_due(false).await.unwrap();
    let records = records_of(&journal.join(segment_name(4)));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].event, EventType::AdminAction);

    // under steady traffic the interval counts from the last seal, not from the segment's
    // first record: a record arriving late in the interval is sealed when the interval ends
    tokio::time::sleep(Duration::from_millis(SEAL_INTERVAL_MS / 2)).await;
    log.record(event_now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(SEAL_INTERVAL_MS / 2 + 50)).await;
    log.seal_if_due(false).await.unwrap();
    assert!(journal.join(checkpoint_name(5)).exists());
    let records = records_of(&journal.join(segment_name(5)));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].event, EventType::AdminAction);
}

fn event_now() -> AuditEvent {
    AuditEvent::new(
        paygate_gateway::clock::now_ms(),
        EventType::AdminAction,
        "operator:ann",
        "cli",
        AuditOutcome::Success,
        "cli",
        "account:m-1",
    )
}

/// Five segments sealed at least an interval apart, shipped to the audit store and the
/// witness; then the archive with its last two segments removed.
#[tokio::test]
async fn an_archive_cut_short_is_shown_by_the_witness_and_by_its_age() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let log = open(&settings).await;
    let worm = LocalWorm::new(dir.path().join("worm"), &settings.audit.local).unwrap();
    let witness = LocalWorm::new(dir.path().join("witness"), &settings.audit.local).unwrap();
    log.record(log.system_event(EventType::AuditStarted, AuditOutcome::Success))
        .await
        .unwrap();
    log.seal_if_due(true).await.unwrap();
    for _ in 1..5 {
        tokio::time::sleep(Duration::from_millis(SEAL_INTERVAL_MS + 50)).await;
        log.seal_if_due(false).await.unwrap();
    }
    assert_eq!(
        shipper::ship_pending(&log, &worm, Some(&witness))
            .await
            .unwrap(),
        5
    );
    let key_file = audit_log::public_jwk_path(&settings.resolve(&settings.audit.signing_key));
    let (key, key_id) = archive::read_public_jwk(&key_file).unwrap();

    // the auditor fetches the witness, then the archive
    let fetched = tempfile::tempdir().unwrap();
    let witness_copy = fetched.path().join("witness");
    let archive_copy = fetched.path().join("archive");
    archive::fetch(&witness, &witness_copy).await.unwrap();
    archive::fetch(&worm, &archive_copy).await.unwrap();
    assert!(witness_copy.join(checkpoint_name(4)).exists());
    assert!(
        !witness_copy.join(segment_name(0)).exists(),
        "the witness holds checkpoints only"
    );

    let (full, _) =
        archive::verify_archive(&archive_copy, key.clone(), &key_id, None, false, |_| {}).unwrap();
    assert_eq!(archive::check_witness(&full, &witness_copy).unwrap(), 4);
    let as_of = full.newest_sealed_at_ms().unwrap();
    let allowed = SEAL_INTERVAL_MS + 100;
    full.check_fresh(as_of, allowed).unwrap();

    // cut: segments and checkpoints 3 and 4 removed; every remaining check still passes
    for n in [3, 4] {
        for name in [segment_name(n), checkpoint_name(n)] {
            let path = archive_copy.join(name);
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(&path, permissions).unwrap();
            std::fs::remove_file(&path).unwrap();
        }
    }
    let (cut, summary) =
        archive::verify_archive(&archive_copy, key, &key_id, None, false, |_| {}).unwrap();
    assert_eq!(summary.segments, 3);

    let found = archive::check_witness(&cut, &witness_copy).unwrap_err();
    assert_eq!(found.kind, BreakKind::TrustedCheckpoint, "{found}");
    assert_eq!(found.location, format!("witness {}", checkpoint_name(4)));
    assert!(found.message.contains("removed from the end"), "{found}");

    let found = cut.check_fresh(as_of, allowed).unwrap_err();
    assert_eq!(found.kind, BreakKind::Stale, "{found}");
    assert_eq!(found.location, checkpoint_name(2));

    // the same through the command an auditor runs
    let run = |archive: &Path, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_paygate"))
            .args(["audit", "verify", "--archive", archive.to_str().unwrap()])
            .args(["--public-key", key_file.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let witness_arg = ["--witness", witness_copy.to_str().unwrap()];
    let out = run(&archive_copy, &witness_arg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("BROKEN: TRUSTED_CHECKPOINT at witness checkpoints/000000000004.cose"),
        "{stdout}"
    );
    let as_of_text = paygate_core::audit::rfc3339_ms(as_of + 60_000);
    let out = run(
        &archive_copy,
        &["--max-age-seconds", "30", "--as-of", &as_of_text],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("BROKEN: STALE at checkpoints/"),
        "{stdout}"
    );
    let out = run(
        &archive_copy,
        &["--max-age-seconds", "120", "--as-of", &as_of_text],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("newest checkpoint sealed"), "{stdout}");
}
