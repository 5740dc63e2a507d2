//! PCI DSS 10.3.2 between the commit and the journal: audit events wait in the database's
//! outbox, and someone with write access to the database (not to the gateway's keys) changes
//! them there. On SQLite and PostgreSQL alike: rows inserted, altered, copied or removed are
//! recorded as `audit_outbox_tampered`, forged content never reaches the journal as an event,
//! every genuine row still does, and the gateway goes on approving payments.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{AuditEvent, AuditOutcome, AuditRecord, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::audit::{self, AuditLog};
use paygate_gateway::config::{Secret, Settings};
use paygate_gateway::metrics::Metrics;
use paygate_tests::{fresh_postgres_database, inr, Db, TestGateway, MERCHANT};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn event(n: u64) -> AuditEvent {
    AuditEvent::new(
        1_700_000_000_000 + n,
        EventType::AdminAction,
        "operator:alice",
        "cli:host",
        AuditOutcome::Success,
        "cli",
        format!("account:acct-{n}"),
    )
}

fn journal(dir: &Path) -> Vec<AuditRecord> {
    paygate_tests::journal_in(dir)
}

/// The accounts of the admin events journaled, in order, and the tamper findings' details.
fn read_back(records: &[AuditRecord]) -> (Vec<String>, Vec<String>) {
    let accounts = records
        .iter()
        .filter(|r| r.event == EventType::AdminAction)
        .map(|r| r.resource.clone())
        .collect();
    let findings = records
        .iter()
        .filter(|r| r.event == EventType::AuditOutboxTampered)
        .map(|r| r.detail.clone().unwrap())
        .collect();
    (accounts, findings)
}

async fn settings_for(db: Db, dir: &Path) -> Settings {
    let mut settings = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    if db == Db::Postgres {
        settings.database.url = Secret::new(fresh_postgres_database().await);
    }
    settings
}

async fn sql(store: &paygate_gateway::store::Store, statement: &str) {
    sqlx::query(statement).execute(store.pool()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_changed_in_the_database_are_recorded_as_tampered_and_never_journaled_as_events(
) {
    for db in [Db::Sqlite, Db::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_for(db, dir.path()).await;
        let store = audit::open_store(&settings, 2).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let log = AuditLog::open(&settings, store.clone(), metrics.clone())
            .await
            .unwrap();
        for n in 1..=3 {
            store.record_audit(&event(n)).await.unwrap();
        }
        log.drain().await.unwrap();
        // written, committed, not yet journaled: the insider's window
        for n in 4..=8 {
            store.record_audit(&event(n)).await.unwrap();
        }
        // altered: acct-5 becomes acct-55
        sql(
            &store,
            "UPDATE audit_outbox SET event_json = REPLACE(event_json, 'acct-5\"', 'acct-55\"')
             WHERE event_json LIKE '%acct-5\"%'",
        )
        .await;
        // removed: acct-7 (acct-6 stays, so the gap is not hidden by the altered row)
        sql(
            &store,
            "DELETE FROM audit_outbox WHERE event_json LIKE '%acct-7\"%'",
        )
        .await;
        // inserted: a made-up event without a MAC, and one with a MAC of the right length,
        // both under this gateway's log (the insider reads its id off the table)
        let log_id = log.log_id().to_owned();
        let forged = serde_json::to_string(&event(100)).unwrap();
        sql(
            &store,
            &format!("INSERT INTO audit_outbox (log_id, outbox_id, event_json) VALUES ('{log_id}', 9, '{forged}')"),
        )
        .await;
        let hex = if db == Db::Postgres {
            format!("'\\x{}'", "5a".repeat(32))
        } else {
            format!("X'{}'", "5a".repeat(32))
        };
        let forged = serde_json::to_string(&event(101)).unwrap();
        sql(
            &store,
            &format!(
                "INSERT INTO audit_outbox (log_id, outbox_id, event_json, mac) VALUES ('{log_id}', 10, '{forged}', {hex})"
            ),
        )
        .await;
        // copied: acct-4's row again under a new id, MAC and all
        sql(
            &store,
            "INSERT INTO audit_outbox (log_id, outbox_id, event_json, mac)
             SELECT log_id, 11, event_json, mac FROM audit_outbox WHERE event_json LIKE '%acct-4\"%'",
        )
        .await;
        // moved: a genuine row of another replica's log (same database, same audit key) put
        // into this log at the next place; its MAC names the other log
        let other_log = paygate_gateway::store::Store::open(&settings.database_url(), 1)
            .await
            .unwrap()
            .with_audit_key(paygate_gateway::audit_outbox::OutboxKey::derive(
                &std::fs::read(settings.resolve(&settings.audit.signing_key)).unwrap(),
                "paygate-replica-b",
            ));
        other_log.record_audit(&event(50)).await.unwrap();
        sql(
            &store,
            &format!("UPDATE audit_outbox SET log_id = '{log_id}', outbox_id = 12 WHERE log_id = 'paygate-replica-b'"),
        )
        .await;
        // the honest writers carry on, after the highest row (13 and 14)
        for n in 9..=10 {
            store.record_audit(&event(n)).await.unwrap();
        }
        log.drain().await.unwrap();

        let (accounts, findings) = read_back(&journal(&log.dir().await));
        let expected: Vec<String> = [1, 2, 3, 4, 6, 8, 9, 10]
            .iter()
            .map(|n| format!("account:acct-{n}"))
            .collect();
        assert_eq!(accounts, expected, "{db:?}: {findings:#?}");
        assert!(
            !accounts.iter().any(|a| [
                "account:acct-55",
                "account:acct-100",
                "account:acct-101",
                "account:acct-50"
            ]
            .contains(&a.as_str())),
            "{db:?}: forged content journaled"
        );
        let has = |text: &str| findings.iter().any(|f| f.contains(text));
        assert!(has("outbox row 5 fails its MAC"), "{db:?}: {findings:#?}");
        assert!(
            has("outbox rows 7 to 7 are missing before outbox row 8"),
            "{db:?}: {findings:#?}"
        );
        assert!(has("outbox row 9 has no MAC"), "{db:?}: {findings:#?}");
        assert!(has("outbox row 10 fails its MAC"), "{db:?}: {findings:#?}");
        assert!(has("outbox row 11 fails its MAC"), "{db:?}: {findings:#?}");
        assert!(has("outbox row 12 fails its MAC"), "{db:?}: {findings:#?}");
        // the altered, the removed, the two forged, the copy and the moved; rows 9 to 12
        // stand for places, so the honest row 13 after them shows nothing missing
        assert_eq!(findings.len(), 6, "{db:?}: {findings:#?}");
        assert_eq!(metrics.snapshot().audit_outbox_tampered, 6);
        assert!(!log.blocked(), "{db:?}: the journal keeps working");
    }
}

/// The anchor survives a restart: pruning keeps the last row journaled, and a row removed while
/// the gateway was down, right after it, is found when the next one is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_removed_while_the_gateway_was_down_is_found_after_the_restart() {
    for db in [Db::Sqlite, Db::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_for(db, dir.path()).await;
        let store = audit::open_store(&settings, 2).await.unwrap();
        let log = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
            .await
            .unwrap();
        for n in 1..=3 {
            store.record_audit(&event(n)).await.unwrap();
        }
        log.seal_if_due(true).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_outbox")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(left, 1, "{db:?}: only the anchor is kept after the seal");
        drop(log);
        for n in 4..=5 {
            store.record_audit(&event(n)).await.unwrap();
        }
        sql(
            &store,
            "DELETE FROM audit_outbox WHERE event_json LIKE '%acct-4\"%'",
        )
        .await;

        let log = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
            .await
            .unwrap();
        log.drain().await.unwrap();
        let (accounts, findings) = read_back(&journal(&log.dir().await));
        assert_eq!(
            accounts,
            [
                "account:acct-1",
                "account:acct-2",
                "account:acct-3",
                "account:acct-5"
            ],
            "{db:?}"
        );
        assert_eq!(findings.len(), 1, "{db:?}: {findings:#?}");
        assert!(
            findings[0].contains("outbox rows 4 to 4 are missing"),
            "{db:?}: {findings:#?}"
        );
    }
}

/// The insider empties the outbox, the journal's anchor row included, so that another
/// process's writer starts again from the bottom, below the journal's last row, where the
/// journal writer does not read. The gateway's own writers keep placing rows after the
/// journal's last (they are journaled); the anchor's absence is recorded as tampering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_emptied_below_the_journal_is_recorded_and_the_gateways_rows_still_journaled() {
    for db in [Db::Sqlite, Db::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_for(db, dir.path()).await;
        let store = audit::open_store(&settings, 2).await.unwrap();
        let log = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
            .await
            .unwrap();
        for n in 1..=3 {
            store.record_audit(&event(n)).await.unwrap();
        }
        log.drain().await.unwrap();
        sql(&store, "DELETE FROM audit_outbox").await;
        // another process (the CLI) writes: it starts again at 1
        let other = audit::open_store(&settings, 1).await.unwrap();
        other.record_audit(&event(4)).await.unwrap();
        // the gateway writes: after the journal's last row
        store.record_audit(&event(5)).await.unwrap();
        log.seal_if_due(false).await.unwrap();
        let (accounts, findings) = read_back(&journal(&log.dir().await));
        assert_eq!(
            accounts,
            [
                "account:acct-1",
                "account:acct-2",
                "account:acct-3",
                "account:acct-5"
            ],
            "{db:?}: {findings:#?}"
        );
        assert_eq!(findings.len(), 1, "{db:?}: {findings:#?}");
        assert!(
            findings[0].contains("outbox row 1, journaled and kept as the anchor, was replaced"),
            "{db:?}: {findings:#?}"
        );
    }
}

/// A store opened without the key cannot write audit events (so no writer can leave rows the
/// journal would flag), and the journal cannot be opened on one.
#[tokio::test]
async fn a_store_without_the_outbox_key_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(Db::Sqlite, dir.path()).await;
    let keyless = paygate_gateway::store::Store::open(&settings.database_url(), 1)
        .await
        .unwrap();
    let error = keyless.record_audit(&event(1)).await.unwrap_err();
    assert!(
        error.to_string().contains("without the audit outbox key"),
        "{error}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_outbox")
        .fetch_one(keyless.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert!(
        AuditLog::open(&settings, keyless, Arc::new(Metrics::default()))
            .await
            .is_err()
    );
}

/// On a running gateway: an event forged into the outbox is recorded as tampering, the archive
/// still verifies (the finding is part of it), and payments go on being approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateway_records_a_forged_outbox_row_and_keeps_approving() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let merchant = AccountId::parse(MERCHANT).unwrap();
    let reply = agent.pay(&merchant, inr("3.00")).await.unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved);

    let mut forged = event(7);
    forged.detail = Some("refund approved by the manager".into());
    let forged = serde_json::to_string(&forged).unwrap();
    sql(
        gateway.store(),
        &format!(
            "INSERT INTO audit_outbox (log_id, outbox_id, event_json)
             SELECT log_id, MAX(outbox_id) + 1, '{forged}' FROM audit_outbox GROUP BY log_id"
        ),
    )
    .await;
    let journal_dir = gateway.dir.path().join("audit/journal");
    let mut findings = Vec::new();
    for _ in 0..100 {
        findings = read_back(&journal(&journal_dir)).1;
        if !findings.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert!(findings[0].contains("has no MAC"), "{}", findings[0]);
    assert!(journal(&journal_dir)
        .iter()
        .all(|r| r.detail.as_deref() != Some("refund approved by the manager")));
    assert_eq!(gateway.running.metrics.snapshot().audit_outbox_tampered, 1);

    let reply = agent.pay(&merchant, inr("4.00")).await.unwrap();
    assert_eq!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");
    agent.disconnect().await;
    assert_eq!(gateway.balance(MERCHANT).await, 700);

    // the journal, findings and all, is one unbroken chain
    gateway.running.audit.seal_if_due(true).await.unwrap();
    let key = audit::public_jwk_path(
        &gateway
            .settings
            .resolve(&gateway.settings.audit.signing_key),
    );
    let (key, key_id) = paygate_gateway::audit::archive::read_public_jwk(&key).unwrap();
    paygate_gateway::audit::archive::verify_archive(
        &journal_dir,
        key,
        &key_id,
        None,
        false,
        |_| {},
    )
    .unwrap();
}

/// An event stamped earlier than the latest record journaled (a process whose clock went back,
/// or differs from the gateway's) is journaled after a `clock_checked` failure that says by
/// how much, so audit times never go back silently. Within the tolerance, nothing is added.
#[tokio::test]
async fn an_event_stamped_before_the_latest_record_comes_after_a_clock_record() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(Db::Sqlite, dir.path()).await;
    let store = audit::open_store(&settings, 1).await.unwrap();
    let log = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
        .await
        .unwrap();
    let now = paygate_gateway::clock::now_ms();
    let at = |time_ms: u64, n: u64| {
        let mut e = event(n);
        e.time_ms = time_ms;
        e
    };
    log.record(at(now, 1)).await.unwrap();
    log.record(at(now - 1_000, 2)).await.unwrap(); // within audit.clock_skew_max_ms
    log.record(at(now - 60_000, 3)).await.unwrap();
    let records = journal(&log.dir().await);
    let kinds: Vec<(EventType, String)> = records
        .iter()
        .filter(|r| r.event != EventType::AuditStarted)
        .map(|r| (r.event, r.resource.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventType::AdminAction, "account:acct-1".to_owned()),
            (EventType::AdminAction, "account:acct-2".to_owned()),
            (EventType::ClockChecked, "audit-log".to_owned()),
            (EventType::AdminAction, "account:acct-3".to_owned()),
        ]
    );
    let clock = records
        .iter()
        .find(|r| r.event == EventType::ClockChecked)
        .unwrap();
    assert_eq!(clock.outcome, AuditOutcome::Failure);
    assert!(
        clock
            .detail
            .as_deref()
            .unwrap()
            .contains("is stamped 60000 ms before the latest record journaled"),
        "{clock:?}"
    );
}

/// An upgrade: rows the gateway wrote before outbox rows named their log (an empty log id,
/// a MAC over place and text only) wait in the outbox. The journal that opens next takes them
/// into its log: the genuine one is journaled as an event, the altered one as tampered, and
/// rows written afterwards follow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_from_before_logs_had_ids_are_taken_into_the_next_journal_opened() {
    for db in [Db::Sqlite, Db::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_for(db, dir.path()).await;
        let store = audit::open_store(&settings, 2).await.unwrap();
        let key = audit::outbox_key(&settings).unwrap();
        let genuine = serde_json::to_string(&event(1)).unwrap();
        let altered = serde_json::to_string(&event(2)).unwrap();
        for (place, json, mac) in [
            (1i64, &genuine, key.tag_unlogged(1, &genuine)),
            (
                2,
                &altered.replace("acct-2", "acct-22"),
                key.tag_unlogged(2, &altered),
            ),
        ] {
            sqlx::query("INSERT INTO audit_outbox (log_id, outbox_id, event_json, mac) VALUES ('', $1, $2, $3)")
                .bind(place)
                .bind(json)
                .bind(mac)
                .execute(store.pool())
                .await
                .unwrap();
        }
        // a command run before the gateway starts writes after them
        store.record_audit(&event(3)).await.unwrap();
        let log = AuditLog::open(&settings, store.clone(), Arc::new(Metrics::default()))
            .await
            .unwrap();
        log.drain().await.unwrap();
        let (accounts, findings) = read_back(&journal(&log.dir().await));
        assert_eq!(
            accounts,
            ["account:acct-1", "account:acct-3"],
            "{db:?}: {findings:#?}"
        );
        assert_eq!(findings.len(), 1, "{db:?}: {findings:#?}");
        assert!(
            findings[0].contains("outbox row 2 fails its MAC"),
            "{db:?}: {findings:#?}"
        );
        let unlogged: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_outbox WHERE log_id = ''")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(unlogged, 0, "{db:?}");
    }
}
