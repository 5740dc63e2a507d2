//! What `paygate serve` writes to its log, with its default filter: nothing at ERROR for
//! devices that pay and disconnect normally (rumqttd 0.20 logged two ERRORs per disconnect),
//! and a bounded number of lines for a flood of connections that fail their TLS handshake
//! (`paygate_gateway::logs`: at most a burst per place in the code per window).

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_disconnects_log_no_error_and_a_flood_of_bad_handshakes_logs_a_bounded_few() {
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
            "data_dir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\nconnections_max = 1000\nhandshake_timeout_ms = 1000\n",
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

    let log = dir.path().join("serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG") // the default filter, as an operator runs it
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
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

    // ten sessions that pay and disconnect as a terminal does
    let bundle_dir = data.join("pki/devices/pos-1");
    let merchant = AccountId::parse("m-1").unwrap();
    for n in 0..10 {
        let settings = AgentSettings {
            host: "127.0.0.1".into(),
            port,
            keep_alive: Duration::from_secs(5),
            resend_interval: Duration::from_millis(500),
            receipt_timeout: Duration::from_secs(20),
            outbox_dir: bundle_dir.join("outbox"),
        };
        let mut agent = Agent::connect(DeviceBundle::load(&bundle_dir).unwrap(), settings)
            .await
            .unwrap();
        let amount =
            paygate_core::Money::new(100, paygate_core::Currency::parse("INR").unwrap()).unwrap();
        let reply = agent.pay(&merchant, amount).await.unwrap();
        assert_eq!(reply.receipt.outcome, Outcome::Approved, "session {n}");
        agent.disconnect().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_sessions = std::fs::read_to_string(&log).unwrap();

    // 300 connections that send garbage instead of a TLS ClientHello
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        drop(tcp);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let all = std::fs::read_to_string(&log).unwrap();

    let errors: Vec<&str> = after_sessions
        .lines()
        .filter(|l| l.contains("ERROR"))
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines for normal sessions: {errors:#?}"
    );
    let flood = &all[after_sessions.len()..];
    let lines = flood.lines().count();
    assert!(
        lines <= 2 * paygate_gateway::logs::BURST as usize,
        "300 bad handshakes wrote {lines} log lines:\n{flood}"
    );
}
