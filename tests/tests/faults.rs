//! Faults of the parts paygate stands on (issue 16, item 3), each with nothing lost, nothing
//! doubled, nothing approved unrecorded, and the gateway serving again once the fault ends:
//! the database stopping and returning, the disk under the audit journal filling up.
//! (Elsewhere: the S3 endpoint refusing PUTs in `audit_s3`, KMS throttling and stalling in
//! `keys_kms`, the UPI switch hanging in `upi`, SIGKILL under load in `audit_kill`.)

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{AuditRecord, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::config::Secret;
use paygate_tests::{
    fresh_postgres_database, inr, postgres_address, OutageProxy, TestGateway, MERCHANT,
};
use std::path::Path;
use std::time::{Duration, Instant};

fn records_in(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for sub in ["segments"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            // whole lines only: the journal may be in the middle of a write
            let whole = bytes
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |end| end + 1);
            for line in bytes[..whole]
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
            {
                out.push(AuditRecord::from_line(line).unwrap());
            }
        }
    }
    out
}

/// Every decision the gateway recorded, journal and write-once store together, by tx id.
fn decisions(gateway: &TestGateway) -> Vec<String> {
    let data = gateway.dir.path();
    let mut all = records_in(&data.join("audit/journal"));
    all.extend(records_in(&data.join("audit/worm")));
    all.sort_by_key(|r| r.seq);
    all.dedup_by_key(|r| r.seq);
    all.into_iter()
        .filter(|r| r.event == EventType::PaymentDecided)
        .filter_map(|r| r.tx_id)
        .collect()
}

/// PostgreSQL goes away for six seconds (every connection cut, new ones refused) while a
/// terminal pays, and comes back. Nothing is approved meanwhile; the terminal's resends, under
/// the same idempotency key, get one approval once it is back; the gateway serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopping_and_returning_loses_and_doubles_nothing() {
    let direct = fresh_postgres_database().await;
    let proxy = OutageProxy::start(postgres_address(&direct)).await;
    let url = proxy.postgres_url(&direct);
    let gateway = TestGateway::start_with(|s| {
        s.database.url = Secret::new(url.clone());
        s.database.acquire_timeout_ms = 2_000;
    })
    .await;
    gateway.device("pos-1", "100.00").await;
    gateway.device("pos-2", "100.00").await;
    let merchant = AccountId::parse(MERCHANT).unwrap();
    let mut agent = gateway.agent("pos-1").await;
    let first = agent.pay(&merchant, inr("1.00")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved);
    let approved_before = gateway.running.metrics.snapshot().requests_approved;
    assert_eq!(readyz(&gateway).await.0, 200);

    proxy.cut();
    let cut_at = Instant::now();
    let paying = {
        let merchant = merchant.clone();
        tokio::spawn(async move {
            let reply = agent.pay(&merchant, inr("2.00")).await;
            (agent, reply, Instant::now())
        })
    };
    // a terminal that connects during the outage
    let second = {
        let bundle = paygate_agent::DeviceBundle::load(&gateway.bundle_dir("pos-2")).unwrap();
        let settings = gateway.agent_settings("pos-2");
        let merchant = merchant.clone();
        tokio::spawn(async move {
            let mut agent = paygate_agent::Agent::connect(bundle, settings)
                .await
                .unwrap();
            let reply = agent.pay(&merchant, inr("5.00")).await;
            agent.disconnect().await;
            reply
        })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        gateway.running.metrics.snapshot().requests_approved,
        approved_before,
        "nothing is approved while the database is away"
    );
    assert!(!paying.is_finished(), "the terminal is still waiting");
    // what a load balancer or Kubernetes sees: /readyz over HTTPS
    let (status, parts) = readyz(&gateway).await;
    assert_eq!(status, 503, "{parts}");
    assert_eq!(
        (parts["ready"].clone(), parts["database"].clone()),
        (false.into(), false.into()),
        "{parts}"
    );
    proxy.restore();
    let (mut agent, reply, answered_at) = paying.await.unwrap();
    let reply = reply.unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");
    assert!(answered_at - cut_at >= Duration::from_secs(6));
    let reply = second.await.unwrap().unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");

    // and after: served as before, each payment posted once and recorded once
    let third = agent.pay(&merchant, inr("4.00")).await.unwrap();
    assert_eq!(third.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
    assert_eq!(gateway.balance(MERCHANT).await, 1_200);
    assert_eq!(gateway.balance("wallet-pos-1").await, 10_000 - 700);
    assert_eq!(gateway.balance("wallet-pos-2").await, 10_000 - 500);
    gateway.assert_ledger_balanced().await;
    gateway.running.audit.drain().await.unwrap();
    let decided = decisions(&gateway);
    assert_eq!(
        decided.len(),
        4,
        "one decision record per payment: {decided:?}"
    );
    let mut unique = decided.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{decided:?}");
    assert_eq!(readyz(&gateway).await.0, 200);
}

/// `/readyz` as a probe reads it: the status and the parts.
async fn readyz(gateway: &TestGateway) -> (u16, serde_json::Value) {
    let answer = gateway
        .http()
        .send("GET", "/readyz", &[], None)
        .await
        .unwrap();
    (answer.status, answer.json())
}

/// A tmpfs of `size` mounted on `dir` for the test, unmounted when dropped. Needs root (or
/// CAP_SYS_ADMIN), which CI has: a real full disk, ENOSPC from the kernel.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount(8) to run");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed: this test needs root (CI runs as root)",
            dir.display()
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills what is left with one file; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // the last partial block too
        while let Ok(n) = file.write(&block[..512]) {
            if n == 0 {
                break;
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// The disk under the audit journal fills up while a terminal pays. The payment decided in
/// the batch whose journal write failed keeps its receipt back (its audit record is not
/// durable); nothing is approved after it; once space is freed, the journal takes the records
/// that waited in the outbox, the terminal's resend gets the first answer, and payments go on.
/// Every decision is in the journal once, and the journal verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_journal_holds_receipts_back_and_loses_nothing() {
    let holder = tempfile::tempdir().unwrap();
    let journal = holder.path().join("journal");
    let disk = SmallDisk::mount(&journal, "1m");
    let journal_dir = journal.clone();
    let gateway = TestGateway::start_with(move |s| {
        s.audit.journal_dir = journal_dir;
        // nothing sealed and shipped during the test: shipping deletes local segments, which
        // would free the disk by itself
        s.audit.seal_interval_ms = 600_000;
        s.audit.records_per_segment_max = 100_000;
    })
    .await;
    gateway.device("pos-1", "100.00").await;
    let merchant = AccountId::parse(MERCHANT).unwrap();
    let mut agent = gateway.agent("pos-1").await;
    let first = agent.pay(&merchant, inr("1.00")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved);

    let filler = disk.fill();
    // the journal's last page may still have room for a few records: pay until a receipt is
    // held back, which is when the disk is full for the journal too; every receipt that does
    // come has its decision in the journal already
    let mut paid_in_slack = 0i64;
    let (held, full_at) = loop {
        assert!(paid_in_slack < 20, "the journal never ran out of room");
        let merchant = merchant.clone();
        let mut paying = tokio::spawn(async move {
            let reply = agent.pay(&merchant, inr("2.00")).await;
            (agent, reply, Instant::now())
        });
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(8), &mut paying).await {
            Ok(done) => {
                let (back, reply, _) = done.unwrap();
                let reply = reply.unwrap();
                assert_eq!(reply.receipt.outcome, Outcome::Approved);
                let tx = reply.receipt.tx_id.clone().unwrap();
                assert!(
                    records_in(&journal)
                        .iter()
                        .any(|r| r.event == EventType::PaymentDecided
                            && r.tx_id.as_deref() == Some(&tx)),
                    "a receipt for {tx} left before its decision was whole in the journal"
                );
                agent = back;
                paid_in_slack += 1;
            }
            Err(_) => break (paying, started),
        }
    };
    assert!(
        gateway.running.audit.blocked(),
        "approvals stop while the journal fails"
    );
    assert!(gateway.running.metrics.snapshot().audit_journal_failures > 0);
    let (status, parts) = readyz(&gateway).await;
    assert_eq!(status, 503, "{parts}");
    assert_eq!(
        (parts["audit_journal"].clone(), parts["database"].clone()),
        (false.into(), true.into()),
        "{parts}"
    );

    std::fs::remove_file(filler).unwrap();
    let (mut agent, reply, answered_at) = held.await.unwrap();
    let reply = reply.unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");
    assert!(answered_at - full_at >= Duration::from_secs(8));
    assert!(!gateway.running.audit.blocked());

    let third = agent.pay(&merchant, inr("4.00")).await.unwrap();
    assert_eq!(third.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
    let paid = 100 + 200 * (paid_in_slack + 1) + 400;
    assert_eq!(gateway.balance(MERCHANT).await, paid);
    assert_eq!(gateway.balance("wallet-pos-1").await, 10_000 - paid);
    gateway.assert_ledger_balanced().await;

    gateway.running.audit.seal_if_due(true).await.unwrap();
    let records = records_in(&journal);
    let decided: Vec<String> = records
        .iter()
        .filter(|r| r.event == EventType::PaymentDecided)
        .filter_map(|r| r.tx_id.clone())
        .collect();
    let mut unique = decided.clone();
    unique.sort();
    unique.dedup();
    let payments = usize::try_from(paid_in_slack).unwrap() + 3;
    assert_eq!(decided.len(), payments, "{decided:?}");
    assert_eq!(unique.len(), payments, "{decided:?}");
    let key = paygate_gateway::audit::public_jwk_path(
        &gateway
            .settings
            .resolve(&gateway.settings.audit.signing_key),
    );
    let (key, key_id) = paygate_gateway::audit::archive::read_public_jwk(&key).unwrap();
    paygate_gateway::audit::archive::verify_archive(&journal, key, &key_id, None, false, |_| {})
        .unwrap();
    gateway.running.shutdown();
    drop(disk);
}
