//! `cargo bench -p paygate-gateway --bench audit`: what the audit trail costs.
//!
//! 1. Append: a batch of 64 payment events through the outbox (one SQLite commit) and the
//!    journal (one write + fsync), per transaction, against the same batch's SQLite commit
//!    alone (the ledger's own floor), measured in the same run.
//! 2. Verify: `ArchiveVerifier` throughput (records/s, MB/s) over an archive of 20 segments,
//!    against plain SHA-256 over the same bytes, measured in the same run.
//!
//! Figures are printed as ratios; absolute numbers vary with the machine and its load.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{
    checkpoint_name, segment_name, sha256, ArchiveVerifier, AuditEvent, AuditOutcome, EventType,
};
use paygate_gateway::audit::{archive, AuditLog};
use paygate_gateway::config::Settings;
use paygate_gateway::metrics::Metrics;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 64;
const BATCHES: usize = 40;

fn event(i: usize) -> AuditEvent {
    let mut e = AuditEvent::new(
        1_700_000_000_000,
        EventType::PaymentDecided,
        format!("device:pos-{}", i % 50),
        format!("mqtt:pos-{}", i % 50),
        AuditOutcome::Success,
        "pipeline",
        format!("account:wallet-pos-{}", i % 50),
    );
    e.tx_id = Some(format!("tx-{i:032x}"));
    e.device_id = Some(format!("pos-{}", i % 50));
    e.wallet_id = Some(format!("wallet-pos-{}", i % 50));
    e.merchant_id = Some("m-coffee".into());
    e.amount = Some("1250 INR".into());
    e.detail = Some(format!("idempotency_key {i:032x}"));
    e
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.audit.records_per_segment_max = 1_000;
    let store = paygate_gateway::audit::open_store(&settings, 2)
        .await
        .unwrap();
    let log = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
        .await
        .unwrap();

    // reference: the batch's own database commit, with the events in it, no journal
    let reference = Instant::now();
    for b in 0..BATCHES {
        let mut tx = store.begin_batch().await.unwrap();
        let events: Vec<_> = (0..BATCH).map(|i| event(b * BATCH + i)).collect();
        store.add_audit_events(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }
    let reference = reference.elapsed();
    // the same rows drained into the journal (serialise, chain, write, fsync, seal as due)
    let journal_only = Instant::now();
    log.drain().await.unwrap();
    let journal_only = journal_only.elapsed();
    // and the whole path, batch by batch, as the pipeline runs it
    let whole = Instant::now();
    for b in BATCHES..2 * BATCHES {
        let mut tx = store.begin_batch().await.unwrap();
        let events: Vec<_> = (0..BATCH).map(|i| event(b * BATCH + i)).collect();
        store.add_audit_events(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
        log.drain().await.unwrap();
    }
    let whole = whole.elapsed();
    let per_tx = |d: std::time::Duration| d.as_secs_f64() * 1e6 / (BATCHES * BATCH) as f64;
    println!(
        "audit append, batches of {BATCH}, {} transactions each run:",
        BATCHES * BATCH
    );
    println!(
        "  database commit with the outbox rows (reference): {:8.1} us/tx",
        per_tx(reference)
    );
    println!(
        "  journal drain of the same rows (one fsync):       {:8.1} us/tx",
        per_tx(journal_only)
    );
    println!(
        "  commit + journal + fsync per batch:               {:8.1} us/tx  ({:.2}x the reference)",
        per_tx(whole),
        whole.as_secs_f64() / reference.as_secs_f64()
    );

    // an archive of sealed segments to verify
    for b in 2 * BATCHES..8 * BATCHES {
        let mut tx = store.begin_batch().await.unwrap();
        let events: Vec<_> = (0..BATCH).map(|i| event(b * BATCH + i)).collect();
        store.add_audit_events(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }
    log.drain().await.unwrap();
    log.seal_if_due(true).await.unwrap();
    let journal = log.dir().await;
    let key =
        paygate_gateway::audit::public_jwk_path(&settings.resolve(&settings.audit.signing_key));
    let (key, key_id) = archive::read_public_jwk(&key).unwrap();
    let mut segments = Vec::new();
    let mut n = 0;
    while let (Ok(segment), Ok(checkpoint)) = (
        std::fs::read(journal.join(segment_name(n))),
        std::fs::read(journal.join(checkpoint_name(n))),
    ) {
        segments.push((segment, checkpoint));
        n += 1;
    }
    let bytes: usize = segments.iter().map(|(s, _)| s.len()).sum();
    let records: u64;
    let verify = Instant::now();
    {
        let mut verifier = ArchiveVerifier::new(key, &key_id);
        for (i, (segment, checkpoint)) in segments.iter().enumerate() {
            verifier
                .add_segment(i as u64, segment, checkpoint, |_, _, _| {})
                .unwrap();
        }
        records = verifier.summary(0).records;
    }
    let verify = verify.elapsed();
    let hashing = Instant::now();
    let mut sink = 0u8;
    for (segment, _) in &segments {
        for line in segment.split(|&b| b == b'\n') {
            sink ^= sha256(line)[0];
        }
    }
    let hashing = hashing.elapsed();
    let mb = bytes as f64 / 1e6;
    println!(
        "audit verify, {} segments, {records} records, {mb:.1} MB:",
        segments.len()
    );
    println!(
        "  plain SHA-256 of every line (reference):  {:10.0} records/s {:7.1} MB/s",
        records as f64 / hashing.as_secs_f64(),
        mb / hashing.as_secs_f64()
    );
    println!(
        "  paygate audit verify (parse, chain, Merkle, signatures): {:10.0} records/s {:7.1} MB/s  ({:.2}x slower than hashing alone) [{sink}]",
        records as f64 / verify.as_secs_f64(),
        mb / verify.as_secs_f64(),
        verify.as_secs_f64() / hashing.as_secs_f64()
    );
}
