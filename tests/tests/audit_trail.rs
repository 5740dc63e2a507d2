//! The audit trail end to end over real mutual TLS and MQTT: every decision and refusal is in
//! the fsync'd journal by the time its receipt arrives, invalid access attempts are recorded,
//! the shipped archive verifies with the public key alone, and when write-once storage is down
//! for longer than the backlog allows, payments are refused rather than approved unaudited.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{AuditOutcome, AuditRecord, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::request::REQUEST_CONTENT_TYPE;
use paygate_core::{AccountId, ErrorCode};
use paygate_gateway::audit::archive;
use paygate_tests::{inr, tls_client_config, RawClient, TestGateway, MERCHANT};
use std::path::Path;
use std::time::Duration;

fn records_in(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("segments")) else {
        return out;
    };
    for entry in entries {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(AuditRecord::from_line(line).unwrap());
        }
    }
    out
}

/// Every record in the journal and in the write-once store, by seq.
fn all_records(gateway: &TestGateway) -> Vec<AuditRecord> {
    let data = gateway.dir.path();
    let mut all = records_in(&data.join("audit/journal"));
    all.extend(records_in(&data.join("audit/worm")));
    all.sort_by_key(|r| r.seq);
    all.dedup_by_key(|r| r.seq);
    all
}

async fn wait_for_record(
    gateway: &TestGateway,
    what: &str,
    found: impl Fn(&AuditRecord) -> bool,
) -> AuditRecord {
    for _ in 0..100 {
        if let Some(record) = all_records(gateway).into_iter().find(|r| found(r)) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no audit record for {what}: {:#?}", all_records(gateway));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_journaled_before_their_receipts_and_the_archive_verifies() {
    let gateway = TestGateway::start_with(|s| {
        s.audit.records_per_segment_max = 3;
        s.audit.seal_check_interval_ms = 50;
        s.audit.ship_interval_ms = 50;
    })
    .await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let merchant = AccountId::parse(MERCHANT).unwrap();
    for amount in ["1.00", "2.50", "500.00"] {
        let reply = agent.pay(&merchant, inr(amount)).await.unwrap();
        // read straight after the receipt: no waiting, the record must already be on disk
        let records = all_records(&gateway);
        let key = reply.receipt.idempotency_key.clone().unwrap();
        let record = records
            .iter()
            .find(|r| {
                r.event == EventType::PaymentDecided
                    && r.detail.as_deref().is_some_and(|d| {
                        // "idempotency_key K", then what else the decision did (points earned)
                        let wanted = format!("idempotency_key {key}");
                        d == wanted || d.starts_with(&format!("{wanted} "))
                    })
            })
            .unwrap_or_else(|| panic!("no record of {key} when its receipt arrived"));
        match reply.receipt.outcome {
            Outcome::Approved => {
                assert_eq!(record.tx_id, reply.receipt.tx_id);
                assert_eq!(record.outcome, AuditOutcome::Success);
            }
            _ => {
                assert_eq!(record.code.as_deref(), Some("INSUFFICIENT_FUNDS"));
                assert_eq!(record.outcome, AuditOutcome::Failure);
            }
        }
        assert_eq!(record.actor, "device:pos-1");
        assert_eq!(record.wallet_id.as_deref(), Some("wallet-pos-1"));
        assert_eq!(record.merchant_id.as_deref(), Some(MERCHANT));
    }

    // a bad signature is a rejected request, in the journal by the time its notice arrives
    let mut sealed = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        br#"{"v":1,"device_id":"pos-1","idempotency_key":"bad-sig","counter":1,"created_at_ms":1,"operation":{"type":"merchant_payment","merchant_id":"m-1","amount":{"minor":100,"currency":"INR"}}}"#,
    );
    let last = sealed.len() - 1;
    sealed[last] ^= 0x80;
    agent.publish_raw(sealed).await.unwrap();
    let notice = agent
        .next_reply(Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!(notice.code(), Some(ErrorCode::SignatureInvalid));
    assert!(all_records(&gateway)
        .iter()
        .any(|r| r.event == EventType::RequestRejected
            && r.code.as_deref() == Some("SIGNATURE_INVALID")));
    agent.disconnect().await;

    // a certificate from another CA: an invalid access attempt (10.2.1.4)
    let rogue = tempfile::tempdir().unwrap();
    paygate_gateway::pki::init(rogue.path(), &["localhost".into()], "rogue").unwrap();
    let device = paygate_core::DeviceId::parse("pos-9").unwrap();
    paygate_gateway::pki::issue_device(
        rogue.path(),
        &device,
        &AccountId::parse("wallet-pos-9").unwrap(),
        paygate_core::envelope::SigningAlgorithm::Ed25519,
    )
    .unwrap();
    let config = tls_client_config(
        &gateway.pki_dir().join("ca.cert.pem"),
        Some(&paygate_gateway::pki::device_dir(rogue.path(), &device)),
    );
    let refused = async {
        let mut client = RawClient::connect_tls(gateway.port(), config).await?;
        client.mqtt_connect("pos-9").await
    }
    .await;
    assert!(refused.is_err());
    let record = wait_for_record(&gateway, "the refused certificate", |r| {
        r.event == EventType::AccessRefused
    })
    .await;
    assert_eq!(record.code.as_deref(), Some("TLS_CERT_UNTRUSTED"));
    assert!(record.origin.starts_with("mqtt:127.0.0.1:"), "{record:?}");
    assert_eq!(record.actor, "unauthenticated");

    // a clean stop seals the last segment and ships it; the archive then verifies offline
    gateway.running.stop().await;
    let journal = gateway.dir.path().join("audit/journal/segments");
    for _ in 0..100 {
        if std::fs::read_dir(&journal).unwrap().count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_dir(&journal).unwrap().count(),
        0,
        "everything shipped"
    );
    let key = gateway.dir.path().join("pki/audit-signing.pub.jwk.json");
    let (key, key_id) = archive::read_public_jwk(&key).unwrap();
    let mut events = Vec::new();
    let (_, summary) = archive::verify_archive(
        &gateway.dir.path().join("audit/worm"),
        key,
        &key_id,
        None,
        false,
        |at| events.push(at.record.event),
    )
    .unwrap();
    assert_eq!(summary.records, u64::try_from(events.len()).unwrap());
    assert_eq!(events.first(), Some(&EventType::AuditStarted));
    assert_eq!(events.last(), Some(&EventType::AuditStopped));
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == EventType::PaymentDecided)
            .count(),
        3
    );
    // no secret and no full key material in the trail: the signing key's bytes never appear
    let everything = std::fs::read_dir(gateway.dir.path().join("audit/worm/segments"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .concat();
    let private = std::fs::read(gateway.dir.path().join("pki/audit-signing.pk8")).unwrap();
    assert!(!everything
        .windows(16)
        .any(|w| w == &private[private.len() - 16..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_refused_while_the_audit_backlog_is_over_its_limit_then_resume() {
    let gateway = TestGateway::start_with(|s| {
        s.audit.records_per_segment_max = 1;
        s.audit.backlog_bytes_max = 1;
        s.audit.seal_check_interval_ms = 50;
        s.audit.ship_interval_ms = 50;
        s.audit.ship_retry_delay_max_ms = 200;
    })
    .await;
    gateway.device("pos-1", "100.00").await;
    let audit = gateway.running.audit.clone();
    for _ in 0..100 {
        if !audit.blocked() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!audit.blocked(), "the start record ships");

    // write-once storage goes away: its directory becomes a file
    let worm = gateway.dir.path().join("audit/worm");
    std::fs::remove_dir_all(&worm).unwrap();
    std::fs::write(&worm, b"not a directory").unwrap();
    audit
        .record(audit.system_event(EventType::AdminAction, AuditOutcome::Success))
        .await
        .unwrap();
    for _ in 0..100 {
        if audit.blocked() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        audit.blocked(),
        "one sealed segment over a 1-byte backlog limit"
    );

    let before = gateway.ledger_fingerprint().await;
    let mut agent = gateway.agent("pos-1").await;
    let payment = tokio::spawn(async move {
        let merchant = AccountId::parse(MERCHANT).unwrap();
        let reply = agent.pay(&merchant, inr("7.00")).await;
        agent.disconnect().await;
        reply
    });
    for _ in 0..200 {
        if gateway
            .running
            .metrics
            .snapshot()
            .refusals_of(ErrorCode::AuditUnavailable)
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gateway.running.metrics.snapshot();
    assert!(metrics.refusals_of(ErrorCode::AuditUnavailable) > 0);
    assert!(metrics.audit_shipping_failures > 0);
    assert_eq!(
        gateway.ledger_fingerprint().await,
        before,
        "nothing posted unaudited"
    );

    // storage comes back: the shipper resumes, the backlog drains, the agent's resend is approved
    std::fs::remove_file(&worm).unwrap();
    std::fs::create_dir(&worm).unwrap();
    let reply = payment.await.unwrap().unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");
    assert_eq!(gateway.balance(MERCHANT).await, 700);
    assert!(!audit.blocked());
    let records = all_records(&gateway);
    assert!(records
        .iter()
        .any(|r| r.event == EventType::AuditShipping && r.outcome == AuditOutcome::Failure));
    assert!(records
        .iter()
        .any(|r| r.event == EventType::RequestRejected
            && r.code.as_deref() == Some("AUDIT_UNAVAILABLE")));
    gateway.assert_ledger_balanced().await;
}

/// Every file under `dir`, read whole.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(bytes_under(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

/// Issue 12, defect 11: a card number a device puts in any free string (a merchant id, a
/// wallet id, an agent id, a transaction id, an idempotency key) is recorded masked: never in
/// full in the audit outbox, the journal or write-once storage. The records are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_number_in_any_field_a_device_sends_is_masked_in_the_audit_trail() {
    use paygate_core::request::{Operation, Party, Request};
    let gateway = TestGateway::start_with(|s| {
        s.audit.seal_check_interval_ms = 50;
        s.audit.ship_interval_ms = 50;
    })
    .await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let pans = [
        "4111111111111111",
        "w5500-0055-5555-5559",
        "340000000000009",
        "6011000000000004",
        "4012888888881881",
    ];
    let operations = [
        Operation::MerchantPayment {
            merchant_id: AccountId::parse(pans[0]).unwrap(),
            amount: inr("1.00"),
            payer: None,
        },
        Operation::P2pTransfer {
            to: Party::Wallet(AccountId::parse(pans[1]).unwrap()),
            amount: inr("1.00"),
        },
        Operation::CashOut {
            agent_id: AccountId::parse(pans[2]).unwrap(),
            amount: inr("1.00"),
        },
        Operation::Refund {
            tx_id: paygate_core::TxId::parse(pans[3]).unwrap(),
            amount: inr("1.00"),
        },
    ];
    for operation in operations {
        let receipt = agent.submit(operation.clone()).await.unwrap();
        assert!(
            receipt.code().is_some(),
            "{operation:?}: {:?}",
            receipt.receipt
        );
    }
    // the key itself a card number
    let request = Request {
        device_id: paygate_core::DeviceId::parse("pos-1").unwrap(),
        idempotency_key: paygate_core::IdempotencyKey::parse(pans[4]).unwrap(),
        counter: 99,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::MerchantPayment {
            merchant_id: AccountId::parse(MERCHANT).unwrap(),
            amount: inr("1.00"),
            payer: None,
        },
    };
    agent
        .publish_raw(
            bundle
                .signing_key
                .seal(REQUEST_CONTENT_TYPE, &request.to_payload()),
        )
        .await
        .unwrap();
    let keyed = agent
        .next_reply(Duration::from_secs(10), Some(pans[4]))
        .await
        .unwrap();
    assert_eq!(keyed.receipt.outcome, Outcome::Approved, "{keyed:?}");
    // every decision is journaled before its receipt: the records are all in by now
    let records = all_records(&gateway);
    let outbox: Vec<String> = sqlx::query_scalar("SELECT event_json FROM audit_outbox")
        .fetch_all(gateway.store().pool())
        .await
        .unwrap();
    let trail = [
        bytes_under(&gateway.dir.path().join("audit")),
        outbox.join("\n").into_bytes(),
    ]
    .concat();
    let text = String::from_utf8_lossy(&trail);
    for pan in pans {
        assert!(!text.contains(pan), "{pan} is in the audit trail in full");
    }
    // each field that is recorded is there, masked (a refund from a wallet's device is
    // refused before its transaction id is looked at, so that one is not recorded at all)
    for pan in [pans[0], pans[1], pans[2], pans[4]] {
        let masked = paygate_core::audit::mask_pan(pan);
        assert!(
            records
                .iter()
                .any(|r| serde_json::to_string(r).unwrap().contains(&masked)),
            "no record of {masked}"
        );
    }
    agent.disconnect().await;
}

/// PCI DSS 10.6: audit times come from synchronised clocks. Both databases' clocks are read
/// (PostgreSQL's server clock; SQLite's is this process's). While the gateway's clock is off
/// the database's by more than `audit.clock_skew_max_ms`, approvals stop with
/// AUDIT_UNAVAILABLE and nothing moves; when they agree again the device's resend is approved;
/// both changes are in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_stop_while_the_clock_is_off_the_databases_and_resume_after() {
    use paygate_tests::{Db, TestDb};
    for db in [Db::Sqlite, Db::Postgres] {
        let test_db = TestDb::new(db, 1).await;
        let (before, database, after) = test_db.store.database_clock_sample().await.unwrap();
        assert!(before <= after);
        let database = i64::try_from(database).unwrap();
        let ours = i64::try_from(after).unwrap();
        // a slip of units (seconds for milliseconds) would be off by years
        assert!(
            (database - ours).abs() < 5_000,
            "{db:?}: {database} against {ours}"
        );
    }

    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "100.00").await;
    let audit = gateway.running.audit.clone();
    assert!(audit.check_clock().await.unwrap().abs() < 1_000);
    assert!(!audit.blocked());

    // the clocks part by 5 s (the limit is 2 s)
    audit.apply_clock_skew(5_000).await.unwrap();
    audit.apply_clock_skew(6_000).await.unwrap();
    assert!(audit.blocked());
    let before = gateway.ledger_fingerprint().await;
    let mut agent = gateway.agent("pos-1").await;
    let payment = tokio::spawn(async move {
        let merchant = AccountId::parse(MERCHANT).unwrap();
        let reply = agent.pay(&merchant, inr("7.00")).await;
        agent.disconnect().await;
        reply
    });
    for _ in 0..200 {
        let refused = gateway.running.metrics.snapshot();
        if refused.refusals_of(ErrorCode::AuditUnavailable) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gateway.running.metrics.snapshot();
    assert!(metrics.refusals_of(ErrorCode::AuditUnavailable) > 0);
    assert_eq!(gateway.ledger_fingerprint().await, before, "nothing moved");

    // they agree again: the resend is approved
    audit.apply_clock_skew(-300).await.unwrap();
    assert!(!audit.blocked());
    let reply = payment.await.unwrap().unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");
    assert_eq!(gateway.balance(MERCHANT).await, 700);

    let clock: Vec<AuditRecord> = all_records(&gateway)
        .into_iter()
        .filter(|r| r.event == EventType::ClockChecked)
        .collect();
    assert_eq!(
        clock.len(),
        2,
        "one record per change, not per check: {clock:?}"
    );
    assert_eq!(clock[0].outcome, AuditOutcome::Failure);
    assert!(clock[0]
        .detail
        .as_deref()
        .unwrap()
        .contains("5000 ms ahead of the database server's"));
    assert_eq!(clock[1].outcome, AuditOutcome::Success);
    gateway.assert_ledger_balanced().await;
}
