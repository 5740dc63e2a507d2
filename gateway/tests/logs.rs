//! What `paygate serve` writes to its log, with its default filter: nothing at ERROR for
//! devices that pay and disconnect normally (rumqttd 0.20 logged two ERRORs per disconnect),
//! and a bounded number of lines for a flood of connections that fail their TLS handshake
//! (`paygate_gateway::logs`: at most a burst per place in the code per window).

#![allow(clippy::unwrap_used)]

mod serve;

use paygate_agent::{Agent, DeviceBundle};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_disconnects_log_no_error_and_a_flood_of_bad_handshakes_logs_a_bounded_few() {
    let prepared = serve::prepare("handshake_timeout_ms = 1000", "", 1);
    let port = prepared.port;
    let log = prepared.dir.path().join("serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["serve", "--config"])
        .arg(&prepared.config)
        .env_remove("RUST_LOG") // the default filter, as an operator runs it
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    serve::wait_listening(port).await;

    // ten sessions that pay and disconnect as a terminal does
    let merchant = AccountId::parse("m-1").unwrap();
    for n in 0..10 {
        let mut agent = Agent::connect(
            DeviceBundle::load(&prepared.bundle_dir(0)).unwrap(),
            prepared.agent_settings(0),
        )
        .await
        .unwrap();
        let reply = agent.pay(&merchant, serve::inr(100)).await.unwrap();
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
        lines <= 4 * paygate_gateway::logs::BURST as usize,
        "300 bad handshakes wrote {lines} log lines:\n{flood}"
    );
}
