//! The system clock stepped under a running `paygate serve` (libfaketime, changed while it
//! runs; the monotonic clock is left alone, as NTP or an operator stepping the clock would):
//! an hour forward and back, then an hour back and forward. While the system clock is off the
//! gateway's own time, nothing is approved and terminals are told to retry; once it agrees
//! again, the terminal's resend is approved once. The trail says so, each step once, and its
//! times never go back.

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::audit::{parse_rfc3339_ms, AuditOutcome, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::audit::archive;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn paygate(config: &Path, args: &[&str]) {
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

/// Debian's libfaketime (package `faketime`, which `scripts/test` installs).
fn libfaketime() -> PathBuf {
    for dir in std::fs::read_dir("/usr/lib").unwrap() {
        let candidate = dir.unwrap().path().join("faketime/libfaketime.so.1");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("libfaketime.so.1 is not installed: run the tests with ./scripts/test (apt package faketime)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stepped_system_clock_stops_approvals_until_it_agrees_and_audit_times_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("paygate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\nconnections_max = 1000\n[audit]\nseal_check_interval_ms = 100\nseal_interval_ms = 500\nship_interval_ms = 100\n",
            data.display()
        ),
    )
    .unwrap();
    paygate(&config, &["certs", "init"]);
    paygate(&config, &["ledger", "open-merchant", "m-1", "INR"]);
    paygate(&config, &["certs", "issue-device", "pos-1"]);
    paygate(&config, &["devices", "enrol", "pos-1"]);
    paygate(
        &config,
        &["ledger", "fund", "wallet-pos-1", "100.00", "INR"],
    );

    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,rumqttd=off")
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &offset)
        .env("FAKETIME_CACHE_DURATION", "0")
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bundle_dir = data.join("pki/devices/pos-1");
    let settings = AgentSettings {
        host: "127.0.0.1".into(),
        port,
        keep_alive: Duration::from_secs(5),
        resend_interval: Duration::from_millis(500),
        receipt_timeout: Duration::from_secs(30),
        outbox_dir: bundle_dir.join("outbox"),
    };
    let mut agent = Agent::connect(DeviceBundle::load(&bundle_dir).unwrap(), settings)
        .await
        .unwrap();
    let merchant = AccountId::parse("m-1").unwrap();
    let inr = |minor| {
        paygate_core::Money::new(minor, paygate_core::Currency::parse("INR").unwrap()).unwrap()
    };
    let first = agent.pay(&merchant, inr(100)).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved);

    let mut approved = 1;
    for (step, back) in [("+1h", "+0"), ("-1h", "+0")] {
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let paying = tokio::spawn(async move {
            let reply = agent.pay(&merchant_of(), inr(200)).await;
            (agent, reply)
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !paying.is_finished(),
            "{step}: nothing is approved while the clock is stepped"
        );
        std::fs::write(&offset, format!("{back}\n")).unwrap();
        let (back_agent, reply) = tokio::time::timeout(Duration::from_secs(15), paying)
            .await
            .expect("approved once the clocks agree")
            .unwrap();
        agent = back_agent;
        assert_eq!(reply.unwrap().receipt.outcome, Outcome::Approved, "{step}");
        approved += 1;
    }
    agent.disconnect().await;
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    server.wait().unwrap();

    let (key, key_id) =
        archive::read_public_jwk(&data.join("pki/audit-signing.pub.jwk.json")).unwrap();
    let mut times = Vec::new();
    let mut clock = Vec::new();
    let mut decided = 0;
    archive::verify_archive(&data.join("audit/worm"), key, &key_id, None, false, |at| {
        times.push(parse_rfc3339_ms(&at.record.time).unwrap());
        match at.record.event {
            EventType::ClockChecked => {
                clock.push((at.record.outcome, at.record.detail.clone().unwrap()))
            }
            EventType::PaymentDecided => decided += 1,
            _ => {}
        }
    })
    .unwrap();
    assert_eq!(decided, approved, "each payment decided once");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "audit times go back: {times:?}"
    );
    assert_eq!(
        clock.len(),
        4,
        "each step and each return, once: {clock:#?}"
    );
    assert_eq!(clock[0].0, AuditOutcome::Failure);
    assert!(
        clock[0].1.contains("ahead of the gateway's own time"),
        "{clock:#?}"
    );
    assert_eq!(clock[1].0, AuditOutcome::Success);
    assert_eq!(clock[2].0, AuditOutcome::Failure);
    assert!(
        clock[2].1.contains("behind the gateway's own time"),
        "{clock:#?}"
    );
    assert_eq!(clock[3].0, AuditOutcome::Success);
}

fn merchant_of() -> AccountId {
    AccountId::parse("m-1").unwrap()
}
