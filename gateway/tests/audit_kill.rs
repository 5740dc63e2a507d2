//! Crash safety of the audit trail: the real `paygate serve` process is killed with SIGKILL at
//! random moments while terminals pay and the shipper moves segments to write-once storage,
//! then restarted. Afterwards the archive verifies, every decision is in it exactly once, and
//! nothing else is. The number of kills and payments is bounded; the test stops by itself.

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::audit::EventType;
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::audit::archive;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEVICES: usize = 3;
const PAYMENTS_PER_DEVICE: usize = 25;
const KILLS: usize = 3;

fn paygate(config: &Path, args: &[&str]) {
    // --config belongs to the command group: `paygate certs --config F init`
    let status = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "paygate {args:?}");
}

fn serve(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,rumqttd=off")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not listen on {port}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_payments_and_shipping_loses_and_duplicates_no_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let config = dir.path().join("paygate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[audit]\nrecords_per_segment_max = 3\nseal_interval_ms = 200\nseal_check_interval_ms = 50\nship_interval_ms = 20\n",
            data.display()
        ),
    )
    .unwrap();
    paygate(&config, &["certs", "init"]);
    paygate(&config, &["ledger", "open-merchant", "m-1", "INR"]);
    for n in 0..DEVICES {
        let id = format!("pos-{n}");
        paygate(&config, &["certs", "issue-device", &id]);
        paygate(&config, &["devices", "enrol", &id]);
        paygate(
            &config,
            &["ledger", "fund", &format!("wallet-{id}"), "1000.00", "INR"],
        );
    }

    let mut server = serve(&config);
    wait_listening(port).await;

    let mut terminals = Vec::new();
    for n in 0..DEVICES {
        let bundle_dir = data.join(format!("pki/devices/pos-{n}"));
        terminals.push(tokio::spawn(run_terminal(bundle_dir, port)));
    }

    let mut rng = rand::thread_rng();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..1500))).await;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        server = serve(&config);
        wait_listening(port).await;
    }
    let mut approved_by_terminals = BTreeSet::new();
    let mut receipts = 0;
    for terminal in terminals {
        for receipt in terminal.await.unwrap() {
            receipts += 1;
            if receipt.0 == Outcome::Approved {
                approved_by_terminals.insert(receipt.1.unwrap());
            }
        }
    }
    assert_eq!(
        receipts,
        DEVICES * PAYMENTS_PER_DEVICE,
        "every payment got a final receipt"
    );

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
    assert_eq!(starts, KILLS + 1, "one audit_started per start");
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

    // and exactly the decisions the ledger holds
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("paygate.db").display()))
            .await
            .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT idempotency_key FROM requests")
        .fetch_all(&pool)
        .await
        .unwrap();
    let in_db: BTreeSet<String> = rows
        .into_iter()
        .map(|(k,)| format!("idempotency_key {k}"))
        .collect();
    let in_trail: BTreeSet<String> = decided.keys().cloned().collect();
    let only_trail: Vec<_> = in_trail.difference(&in_db).collect();
    let only_db: Vec<_> = in_db.difference(&in_trail).collect();
    assert!(
        only_trail.is_empty() && only_db.is_empty(),
        "only in the trail: {only_trail:?}; only in the ledger: {only_db:?}"
    );
}

/// Pays until done, riding through gateway restarts (the agent resends from its outbox).
async fn run_terminal(bundle_dir: PathBuf, port: u16) -> Vec<(Outcome, Option<String>)> {
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
    let merchant = AccountId::parse("m-1").unwrap();
    let mut out = Vec::new();
    for _ in 0..PAYMENTS_PER_DEVICE {
        let amount = paygate_core::Money::parse_decimal("1.00", "INR").unwrap();
        let receipt = match agent.pay(&merchant, amount).await {
            Ok(receipt) => receipt,
            Err(_) => {
                // still in the outbox: the next drain delivers it
                let mut drained = agent.drain_outbox().await.unwrap();
                drained.pop().unwrap()
            }
        };
        out.push((receipt.receipt.outcome, receipt.receipt.tx_id.clone()));
    }
    agent.disconnect().await;
    out
}
