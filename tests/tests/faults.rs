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
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
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
}
