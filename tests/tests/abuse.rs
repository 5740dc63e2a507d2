//! Abuse of the device plane (issue 16, item 2), each against a running gateway: afterwards
//! the gateway still answers, a legitimate payment from another device is approved, and the
//! abusive connections are gone (closed by the gateway, not by the test). Counts and times are
//! bounded; every test stops by itself.

#![allow(clippy::unwrap_used)]

use paygate_core::receipt::Outcome;
use paygate_core::{AccountId, ErrorCode};
use paygate_tests::{inr, RawClient, TestGateway, MERCHANT};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn pays(gateway: &TestGateway, device: &str) {
    let mut agent = gateway.agent(device).await;
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    agent.disconnect().await;
}

/// Reads until the peer closes (Ok(true)) or `within` passes (Ok(false)).
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut sink = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// 2,000 sockets that open TCP and then trickle a byte of a TLS ClientHello every 200 ms never
/// finish a handshake: a device pays while they hang, and the gateway closes each of them at
/// its handshake timeout, whatever they keep sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_tls_handshake() {
    const SOCKETS: usize = 2_000;
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.handshake_timeout_ms = 1_500;
        s.mqtt.connections_max = 3_000;
    })
    .await;
    gateway.device("pos-1", "10.00").await;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(
            TcpStream::connect(("127.0.0.1", gateway.port()))
                .await
                .unwrap(),
        );
    }
    // the first bytes of a ClientHello record, one at a time
    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let trickle = tokio::spawn(async move {
        for byte in hello {
            for socket in sockets.iter_mut() {
                let _ = socket.write_all(&[byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sockets
    });
    pays(&gateway, "pos-1").await;
    let mut sockets = trickle.await.unwrap();
    let mut open = 0;
    for socket in sockets.iter_mut() {
        if !closed_within(socket, Duration::from_secs(5)).await {
            open += 1;
        }
    }
    assert_eq!(
        open, 0,
        "sockets the gateway left open past the handshake timeout"
    );
    assert!(
        gateway
            .wait_for_refusals(ErrorCode::TlsHandshakeFailed, SOCKETS as u64)
            .await
            >= SOCKETS as u64
    );
    pays(&gateway, "pos-1").await;
}

/// 50 devices complete TLS and never send CONNECT: closed at the connect timeout, while
/// another device pays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_after_the_handshake() {
    const CLIENTS: usize = 50;
    let gateway = TestGateway::start_with(|s| s.mqtt.connect_timeout_ms = 1_500).await;
    gateway.device("pos-1", "10.00").await;
    gateway.device("pos-slow", "10.00").await;
    let config = gateway.tls_client_config(Some(&gateway.bundle_dir("pos-slow")));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(
            RawClient::connect_tls(gateway.port(), config.clone())
                .await
                .unwrap(),
        );
    }
    pays(&gateway, "pos-1").await;
    for client in clients.iter_mut() {
        let (_, closed) = client.until_closed(Duration::from_secs(5)).await;
        assert!(closed, "a connection without CONNECT stayed open");
    }
    pays(&gateway, "pos-1").await;
}

/// Connections beyond `mqtt.connections_max` are closed at once, before any TLS, and the
/// devices already connected keep paying; once the crowd leaves, new devices connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_maximum_are_closed_at_once() {
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.connections_max = 20;
        s.mqtt.handshake_timeout_ms = 30_000;
    })
    .await;
    gateway.device("pos-1", "10.00").await;
    gateway.device("pos-2", "10.00").await;
    let mut agent = gateway.agent("pos-1").await;
    // 19 half-open sockets fill the remaining slots; 100 more are turned away
    let mut holding = Vec::new();
    for _ in 0..19 {
        holding.push(
            TcpStream::connect(("127.0.0.1", gateway.port()))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut turned_away = 0;
    for _ in 0..100 {
        let mut extra = TcpStream::connect(("127.0.0.1", gateway.port()))
            .await
            .unwrap();
        if closed_within(&mut extra, Duration::from_secs(2)).await {
            turned_away += 1;
        }
    }
    assert_eq!(turned_away, 100);
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    assert!(
        gateway
            .running
            .metrics
            .snapshot()
            .refusals_of(ErrorCode::Overloaded)
            >= 100
    );
    drop(holding);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pays(&gateway, "pos-2").await;
    agent.disconnect().await;
}

/// 1,000 terminals connect at once, drop, and connect again, three times over; then every one
/// of them pays and is approved, and the gateway's connection count is back to what is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_a_thousand_terminals() {
    const TERMINALS: usize = 1_000;
    let gateway = TestGateway::start_with(|s| s.mqtt.connections_max = 2_000).await;
    for n in 0..TERMINALS {
        gateway.device(&format!("storm-{n}"), "10.00").await;
    }
    for _ in 0..3 {
        let mut connecting = Vec::new();
        for n in 0..TERMINALS {
            let config =
                gateway.tls_client_config(Some(&gateway.bundle_dir(&format!("storm-{n}"))));
            let port = gateway.port();
            connecting.push(tokio::spawn(async move {
                let mut client = RawClient::connect_tls(port, config).await.unwrap();
                client.mqtt_connect(&format!("storm-{n}")).await.unwrap()
            }));
        }
        for client in connecting {
            assert_eq!(client.await.unwrap(), 0, "CONNACK accepted");
        }
    }
    let mut paying = Vec::new();
    for n in 0..TERMINALS {
        let mut agent = gateway.agent(&format!("storm-{n}")).await;
        paying.push(tokio::spawn(async move {
            let receipt = agent
                .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
                .await
                .unwrap();
            agent.disconnect().await;
            receipt.receipt.outcome
        }));
    }
    for outcome in paying {
        assert_eq!(outcome.await.unwrap(), Outcome::Approved);
    }
    assert_eq!(gateway.balance(MERCHANT).await, 100 * TERMINALS as i64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.running.metrics.snapshot().connections_open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gateway.running.metrics.snapshot().connections_open, 0);
}
