//! Crash safety of the ledger and the audit trail: the real `paygate serve` process is killed
//! with SIGKILL at random moments while terminals pay merchants and send each other P2P
//! transfers (some too large, so declined) and the shipper moves segments to write-once
//! storage, then restarted; the terminals' retries complete. Afterwards every request a
//! terminal saw approved is posted exactly once and nothing else is, each wallet holds what the
//! approved requests say, the ledger balances, the archive verifies, and every decision is in it
//! exactly once. The number of kills and requests is bounded; the test stops by itself.
//! A second run aborts the gateway at each named crash point instead (`crash::POINTS`): in
//! the middle of a batch, of a segment seal and of a shipment.

#![allow(clippy::unwrap_used)]

mod serve;

use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::audit::EventType;
use paygate_core::receipt::Outcome;
use paygate_core::request::{Operation, Party};
use paygate_core::AccountId;
use paygate_gateway::audit::archive;
use paygate_gateway::store::Store;
use rand::Rng;
use serve::Prepared;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

const DEVICES: usize = 3;
const PAYMENTS_PER_DEVICE: usize = 25;
const KILLS: usize = 3;

fn scenario() -> Prepared {
    serve::prepare(
        "",
        "[audit]\nrecords_per_segment_max = 3\nseal_interval_ms = 200\nseal_check_interval_ms = 50\nship_interval_ms = 20",
        DEVICES,
    )
}

fn start_terminals(s: &Prepared) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..DEVICES)
        .map(|n| tokio::spawn(run_terminal(s.bundle_dir(n), s.port, n)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_posts_each_approved_request_once_and_loses_no_audit_record() {
    let s = scenario();
    let mut server = s.serve(&[]);
    serve::wait_listening(s.port).await;
    let terminals = start_terminals(&s);
    let mut rng = rand::thread_rng();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..1500))).await;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        server = s.serve(&[]);
        serve::wait_listening(s.port).await;
    }
    check_after_restarts(&s, server, terminals, KILLS + 1..=KILLS + 1).await;
}

/// The gateway aborts at each crash point in turn (`paygate_gateway::crash::POINTS`: after a
/// batch's commit and before its journal write, before and after a checkpoint is written,
/// after a segment and after its checkpoint reach write-once storage), each time restarted,
/// while the terminals pay on. The same checks as after random kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_point_of_a_payments_life_loses_and_doubles_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let s = scenario();
    let mut terminals = None;
    // starts that listened certainly recorded audit_started; one that crashed while starting
    // (sealing a recovered segment) may not have
    let mut listened = 0;
    for point in paygate_gateway::crash::POINTS {
        let mut server = s.serve(&[("PAYGATE_CRASH_AT", point.as_ref())]);
        // a crash point may come during the start (a recovered segment sealed at once)
        let mut listening = false;
        for _ in 0..200 {
            if server.try_wait().unwrap().is_some() {
                break;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", s.port))
                .await
                .is_ok()
            {
                listening = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        listened += usize::from(listening);
        if listening && terminals.is_none() {
            terminals = Some(start_terminals(&s));
        }
        let mut status = None;
        for _ in 0..400 {
            status = server.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(status) = status else {
            server.kill().unwrap();
            panic!("the gateway never reached {point}");
        };
        assert_eq!(
            status.signal(),
            Some(6),
            "{point}: it aborted there ({status:?})"
        );
    }
    let server = s.serve(&[]);
    serve::wait_listening(s.port).await;
    check_after_restarts(
        &s,
        server,
        terminals.unwrap(),
        listened + 1..=paygate_gateway::crash::POINTS.len() + 1,
    )
    .await;
}

/// Waits for the terminals, stops the gateway cleanly, and checks the archive, the trail and
/// the ledger against what the terminals saw.
async fn check_after_restarts(
    s: &Prepared,
    mut server: Child,
    terminals: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
    starts_expected: std::ops::RangeInclusive<usize>,
) {
    let data = &s.data;
    let mut approved_by_terminals = BTreeSet::new();
    let mut receipts = 0;
    // every wallet starts with 1000.00; apply what the terminals saw approved
    let mut expected: BTreeMap<String, i64> = (0..DEVICES)
        .map(|n| (format!("wallet-pos-{n}"), 100_000))
        .collect();
    expected.insert("m-1".into(), 0);
    for terminal in terminals {
        for seen in terminal.await.unwrap() {
            receipts += 1;
            if seen.outcome == Outcome::Approved {
                assert!(
                    approved_by_terminals.insert(seen.tx_id.unwrap()),
                    "one transfer id for two requests"
                );
                *expected.get_mut(&seen.from).unwrap() -= seen.minor;
                *expected.get_mut(&seen.to).unwrap() += seen.minor;
            }
        }
    }
    assert_eq!(
        receipts,
        DEVICES * PAYMENTS_PER_DEVICE,
        "every request got a final receipt"
    );
    assert!(approved_by_terminals.len() > DEVICES * PAYMENTS_PER_DEVICE / 3);

    // a clean stop seals and ships the rest
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    server.wait().unwrap();
    let journal = data.join("audit/journal/segments");
    assert_eq!(
        std::fs::read_dir(&journal).unwrap().count(),
        0,
        "every segment shipped at the clean stop"
    );

    let (key, key_id) =
        archive::read_public_jwk(&data.join("pki/audit-signing.pub.jwk.json")).unwrap();
    let mut decided: BTreeMap<String, usize> = BTreeMap::new();
    let mut tx_ids = BTreeSet::new();
    let mut outbox_ids = BTreeSet::new();
    let mut starts = 0;
    let mut admin = 0;
    archive::verify_archive(&data.join("audit/worm"), key, &key_id, None, false, |at| {
        if let Some(id) = at.record.outbox_id {
            assert!(outbox_ids.insert(id), "outbox row {id} journaled twice");
        }
        match at.record.event {
            EventType::PaymentDecided => {
                *decided
                    .entry(at.record.detail.clone().unwrap())
                    .or_default() += 1;
                if let Some(tx) = &at.record.tx_id {
                    tx_ids.insert(tx.clone());
                }
            }
            EventType::AuditStarted => starts += 1,
            EventType::AdminAction | EventType::CredentialChanged | EventType::DeviceEnrolled => {
                admin += 1
            }
            _ => {}
        }
    })
    .unwrap();
    assert!(
        starts_expected.contains(&starts),
        "one audit_started per start: {starts}, expected {starts_expected:?}"
    );
    // certs init, merchant, and per device: issue, enrol, fund
    assert_eq!(
        admin,
        2 + 3 * DEVICES,
        "every operator command is in the trail"
    );
    assert!(
        decided.values().all(|&n| n == 1),
        "a decision journaled twice: {decided:?}"
    );
    assert_eq!(
        tx_ids, approved_by_terminals,
        "exactly the approved payments, each once"
    );

    // the ledger: exactly the approved requests, each posted once, and the books balance
    let store = Store::open(
        &format!("sqlite://{}", data.join("paygate.db").display()),
        1,
    )
    .await
    .unwrap();
    let posted: Vec<(String,)> =
        sqlx::query_as("SELECT tx_id FROM transfers WHERE device_id IS NOT NULL")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let posted_set: BTreeSet<String> = posted.iter().map(|(t,)| t.clone()).collect();
    assert_eq!(posted.len(), posted_set.len());
    assert_eq!(
        posted_set, approved_by_terminals,
        "posted = what the terminals saw approved"
    );
    for (account, minor) in &expected {
        let balance = store
            .balance(&AccountId::parse(account).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(balance, *minor, "{account}");
    }
    for unit in store.trial_balance().await.unwrap() {
        assert_eq!(unit.balance_sum_minor, 0, "{unit:?}");
        assert_eq!(unit.posting_sum_minor, 0, "{unit:?}");
        assert_eq!(unit.unbalanced_transfers, 0, "{unit:?}");
    }
    assert!(store.balances_match_postings().await.unwrap());

    // and exactly the decisions the ledger holds
    let pool = store.pool();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT idempotency_key FROM requests")
        .fetch_all(pool)
        .await
        .unwrap();
    let in_db: BTreeSet<String> = rows
        .into_iter()
        .map(|(k,)| format!("idempotency_key {k}"))
        .collect();
    // payment_decided details read "[kind ]idempotency_key K[ ...]"
    let in_trail: BTreeSet<String> = decided
        .keys()
        .map(|detail| {
            let key = detail
                .split("idempotency_key ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap();
            format!("idempotency_key {key}")
        })
        .collect();
    assert_eq!(in_trail.len(), decided.len());
    let only_trail: Vec<_> = in_trail.difference(&in_db).collect();
    let only_db: Vec<_> = in_db.difference(&in_trail).collect();
    assert!(
        only_trail.is_empty() && only_db.is_empty(),
        "only in the trail: {only_trail:?}; only in the ledger: {only_db:?}"
    );
}

/// What a terminal saw for one request.
struct Seen {
    outcome: Outcome,
    tx_id: Option<String>,
    from: String,
    to: String,
    minor: i64,
}

/// Pays the merchant and sends P2P transfers to the next terminal's wallet until done, riding
/// through gateway restarts (the agent resends from its outbox). Every fifth request asks for
/// more than any wallet holds, so it is declined.
async fn run_terminal(bundle_dir: PathBuf, port: u16, n: usize) -> Vec<Seen> {
    let settings = AgentSettings {
        host: "127.0.0.1".into(),
        port,
        keep_alive: Duration::from_secs(5),
        resend_interval: Duration::from_millis(500),
        receipt_timeout: Duration::from_secs(30),
        outbox_dir: bundle_dir.join("outbox"),
    };
    let bundle = DeviceBundle::load(&bundle_dir).unwrap();
    let mut agent = Agent::connect(bundle, settings).await.unwrap();
    let me = format!("wallet-pos-{n}");
    let next = format!("wallet-pos-{}", (n + 1) % DEVICES);
    let mut out = Vec::new();
    for i in 0..PAYMENTS_PER_DEVICE {
        let minor = if i % 5 == 4 {
            5_000_000
        } else {
            rand::thread_rng().gen_range(100..900)
        };
        let amount = paygate_core::Money::new(
            u64::try_from(minor).unwrap(),
            paygate_core::Currency::parse("INR").unwrap(),
        )
        .unwrap();
        let (to, operation) = if i % 2 == 0 {
            (
                "m-1".to_owned(),
                Operation::MerchantPayment {
                    merchant_id: AccountId::parse("m-1").unwrap(),
                    amount,
                    payer: None,
                },
            )
        } else {
            (
                next.clone(),
                Operation::P2pTransfer {
                    to: Party::Wallet(AccountId::parse(&next).unwrap()),
                    amount,
                },
            )
        };
        let receipt = match agent.submit(operation).await {
            Ok(receipt) => receipt,
            Err(_) => {
                // still in the outbox: the next drain delivers it
                let mut drained = agent.drain_outbox().await.unwrap();
                drained.pop().unwrap()
            }
        };
        out.push(Seen {
            outcome: receipt.receipt.outcome,
            tx_id: receipt.receipt.tx_id.clone(),
            from: me.clone(),
            to,
            minor,
        });
    }
    agent.disconnect().await;
    out
}

/// A gateway configured for more connections than its file descriptor limit allows refuses to
/// start, saying what to change, instead of failing under load later.
#[test]
fn more_connections_than_descriptors_refuses_to_start_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paygate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nenabled = false\n[mqtt]\nlisten = \"127.0.0.1:0\"\nconnections_max = 100000000\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    serve::paygate(&config, &["certs", "init"]);
    let output = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,rumqttd=off")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs 300000256 file descriptors")
            && stderr.contains("mqtt.connections_max to"),
        "{stderr}"
    );
}
