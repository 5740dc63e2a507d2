//! External broker mode against Debian's Mosquitto, started with the configuration paygate
//! ships (`deploy/mosquitto/`: mutual TLS on two listeners, `use_identity_as_username`, the
//! per-device ACL patterns), only its paths and ports changed for the test. Real `paygate
//! serve` processes consume the requests through the shared subscription.

#![allow(clippy::unwrap_used)]

mod serve;

use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::receipt::Outcome;
use paygate_core::request::{Operation, Request, REQUEST_CONTENT_TYPE};
use paygate_core::{AccountId, IdempotencyKey};
use paygate_gateway::http::client::ApiClient;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serve::Prepared;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mosquitto");

/// Mosquitto running on the shipped configuration; killed when dropped.
struct Mosquitto {
    child: Child,
    device_port: u16,
    gateway_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("Debian's mosquitto is not installed (scripts/test installs it)");
}

/// Starts Mosquitto on the shipped files, serving the development server certificate and
/// trusting the development device CA on the device listener and the gateway-client CA on
/// the gateway listener.
async fn start_mosquitto(pki: &Path) -> Mosquitto {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("paygate");
    std::fs::create_dir_all(&files).unwrap();
    for (from, to) in [
        ("ca.cert.pem", "device-ca.pem"),
        ("crl.pem", "device-crl.pem"),
        ("server.cert.pem", "server.cert.pem"),
        ("server.key.pem", "server.key.pem"),
        ("broker-client-ca.cert.pem", "gateway-client-ca.pem"),
    ] {
        std::fs::copy(pki.join(from), files.join(to)).unwrap();
    }
    for acl in ["devices.acl", "gateways.acl"] {
        std::fs::copy(Path::new(SHIPPED).join(acl), files.join(acl)).unwrap();
    }
    let device_port = serve::free_port();
    let gateway_port = serve::free_port();
    let persistence = dir.path().join("persistence");
    std::fs::create_dir_all(&persistence).unwrap();
    let shipped = std::fs::read_to_string(Path::new(SHIPPED).join("mosquitto.conf")).unwrap();
    assert!(shipped.contains("listener 8883\n") && shipped.contains("listener 8884\n"));
    let mut config = shipped
        .replace("/etc/mosquitto/paygate/", &format!("{}/", files.display()))
        .replace(
            "/var/lib/mosquitto/",
            &format!("{}/", persistence.display()),
        )
        .replace(
            "listener 8883\n",
            &format!("listener {device_port} 127.0.0.1\n"),
        )
        .replace(
            "listener 8884\n",
            &format!("listener {gateway_port} 127.0.0.1\n"),
        );
    // run as whoever runs the tests (as root, Mosquitto would switch to its own user, which
    // cannot read the test's files)
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    config.push_str(&format!("user {}\n", user.trim()));
    let path = dir.path().join("mosquitto.conf");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(mosquitto_binary())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    serve::wait_listening(device_port).await;
    serve::wait_listening(gateway_port).await;
    Mosquitto {
        child,
        device_port,
        gateway_port,
        _dir: dir,
    }
}

/// A gateway data directory with `terminals` funded terminals and the gateway's broker
/// client certificate, configured for external broker mode on `gateway_port`.
fn prepare(terminals: usize, broker_port_placeholder: u16, database: Option<&str>) -> Prepared {
    let database = database
        .map(|url| format!("\n[database]\nurl = \"{url}\""))
        .unwrap_or_default();
    let s = serve::prepare(
        "",
        &format!(
            "[broker]\nmode = \"external\"\n[broker.external]\nport = {broker_port_placeholder}\ninflight_max = 1000\nreconnect_delay_ms = 200\nshare_group = \"{}\"{database}",
            hex::encode(rand::random::<[u8; 16]>())
        ),
        terminals,
    );
    serve::paygate(&s.config, &["certs", "issue-broker-client"]);
    s
}

fn agent_settings(s: &Prepared, terminal: usize, port: u16) -> AgentSettings {
    AgentSettings {
        port,
        ..s.agent_settings(terminal)
    }
}

/// A bare MQTT client with terminal `terminal`'s certificate: what an attacker holding one
/// device's credentials can do at the broker.
async fn raw_device_client(
    s: &Prepared,
    terminal: usize,
    port: u16,
) -> (AsyncClient, tokio::sync::mpsc::Receiver<rumqttc::Publish>) {
    let bundle = DeviceBundle::load(&s.bundle_dir(terminal)).unwrap();
    let mut options = MqttOptions::new(format!("raw-{terminal}"), "127.0.0.1", port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        paygate_agent::tls_config(&bundle).unwrap(),
    )));
    let (client, mut events) = AsyncClient::new(options, 16);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = tx.send(publish).await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

/// Waits until `/readyz` says ready: in external mode that includes the broker connection.
async fn wait_ready(s: &Prepared) {
    wait_ready_on(s.http_port, s).await;
}

/// A merchant payment signed with `bundle`'s key, as its agent would sign it.
fn signed_payment(bundle: &DeviceBundle, minor: u64, counter: u64) -> Vec<u8> {
    let request = Request {
        device_id: bundle.device_id.clone(),
        idempotency_key: IdempotencyKey::parse(&hex::encode(rand::random::<[u8; 16]>())).unwrap(),
        counter,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::MerchantPayment {
            merchant_id: AccountId::parse("m-1").unwrap(),
            amount: serve::inr(minor),
            payer: None,
        },
    };
    bundle
        .signing_key
        .seal(REQUEST_CONTENT_TYPE, &request.to_payload())
}

/// A `paygate serve` process, killed when dropped (a failed test leaves no gateway behind).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `paygate serve` on the prepared directory's own configuration.
fn serve_on(s: &Prepared, gateway_port: u16) -> Served {
    serve_config(&s.config, gateway_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_pays_through_mosquitto_and_the_acl_keeps_devices_apart() {
    let s = prepare(2, 1, None);
    let broker = start_mosquitto(&s.data.join("pki")).await;
    let _gateway = serve_on(&s, broker.gateway_port);
    wait_ready(&s).await;

    let merchant = AccountId::parse("m-1").unwrap();
    let mut pos0 = Agent::connect(
        DeviceBundle::load(&s.bundle_dir(0)).unwrap(),
        agent_settings(&s, 0, broker.device_port),
    )
    .await
    .unwrap();
    // pos-1's credentials, used by hand: subscribe to pos-0's replies, publish on its topic
    let (spy, mut spied) = raw_device_client(&s, 1, broker.device_port).await;
    spy.subscribe("paygate/v1/devices/pos-0/replies", QoS::AtLeastOnce)
        .await
        .unwrap();
    spy.subscribe("paygate/v1/devices/+/replies", QoS::AtLeastOnce)
        .await
        .unwrap();
    spy.subscribe("paygate/v1/devices/pos-1/replies", QoS::AtLeastOnce)
        .await
        .unwrap();
    // and tries to join the gateways' share group, which would give it a turn at every
    // request (Mosquitto does not check subscriptions against its ACL): it does not know the
    // group's name, so it only makes groups of its own, whose copies the broker drops
    for guess in ["paygate", "gateway", "paygate-gateway"] {
        spy.subscribe(
            format!("$share/{guess}/paygate/v1/devices/+/requests"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 0..6 {
        let receipt = tokio::time::timeout(
            Duration::from_secs(5),
            pos0.pay(&merchant, serve::inr(12_34 + n)),
        )
        .await
        .expect("a payment was not answered within 5 s: the device's shared subscription took it")
        .unwrap();
        assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    }

    // pos-1 signs a payment of its own and publishes it on pos-0's request topic: the broker
    // drops it (pos-0 would get a refusal if it reached the gateway), while the same request
    // on pos-1's own topic is answered on pos-1's reply topic, the only one it can read
    let forged = signed_payment(
        &DeviceBundle::load(&s.bundle_dir(1)).unwrap(),
        5_00,
        1 << 40,
    );
    spy.publish(
        "paygate/v1/devices/pos-0/requests",
        QoS::AtLeastOnce,
        false,
        forged.clone(),
    )
    .await
    .unwrap();
    let leaked = pos0.next_reply(Duration::from_secs(2), None).await;
    assert!(
        leaked.is_none(),
        "a request published on another device's topic reached the gateway: {leaked:?}"
    );
    spy.publish(
        "paygate/v1/devices/pos-1/requests",
        QoS::AtLeastOnce,
        false,
        forged,
    )
    .await
    .unwrap();
    let own = tokio::time::timeout(Duration::from_secs(10), spied.recv())
        .await
        .expect("the request on its own topic was answered")
        .unwrap();
    assert_eq!(own.topic, "paygate/v1/devices/pos-1/replies");
    // of all it subscribed to, only its own replies ever reached pos-1
    while let Ok(Some(publish)) =
        tokio::time::timeout(Duration::from_millis(500), spied.recv()).await
    {
        assert_eq!(publish.topic, "paygate/v1/devices/pos-1/replies");
    }
}

const TERMINALS: usize = 4;
const PAYMENTS_PER_TERMINAL: usize = 25;

/// Replica B of the gateway in `s`: its own data directory (its own journal and audit log,
/// its own write-once directory), the same database, keys and PKI (linked, as a cluster
/// mounts one secret into every replica), and its own HTTP port.
fn second_replica(s: &Prepared, database_url: &str) -> (PathBuf, u16, PathBuf) {
    let data = s.dir.path().join("data-b");
    std::fs::create_dir_all(&data).unwrap();
    for shared in ["pki", "keys"] {
        std::os::unix::fs::symlink(s.data.join(shared), data.join(shared)).unwrap();
    }
    let http_port = serve::free_port();
    let mut config = std::fs::read_to_string(&s.config).unwrap().replace(
        &format!("data_dir = \"{}\"", s.data.display()),
        &format!("data_dir = \"{}\"", data.display()),
    );
    if !config.contains("[database]") {
        config.push_str(&format!("\n[database]\nurl = \"{database_url}\"\n"));
    }
    let config = config.replace(
        &format!("127.0.0.1:{}", s.http_port),
        &format!("127.0.0.1:{http_port}"),
    );
    let path = s.dir.path().join("paygate-b.toml");
    std::fs::write(&path, config).unwrap();
    (path, http_port, data)
}

fn serve_config(config: &Path, gateway_port: u16) -> Served {
    Served(
        Command::new(env!("CARGO_BIN_EXE_paygate"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env("PAYGATE__BROKER__EXTERNAL__PORT", gateway_port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// What one terminal saw: (outcome, transfer id) per payment.
async fn run_terminal(
    s_bundle: PathBuf,
    settings: AgentSettings,
    done: Arc<AtomicUsize>,
) -> Vec<(Outcome, Option<String>, u64)> {
    let merchant = AccountId::parse("m-1").unwrap();
    let mut agent = Agent::connect(DeviceBundle::load(&s_bundle).unwrap(), settings)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for n in 0..PAYMENTS_PER_TERMINAL {
        let minor = 1_00 + (n as u64) * 7;
        let receipt = agent.pay(&merchant, serve::inr(minor)).await.unwrap();
        seen.push((
            receipt.receipt.outcome,
            receipt.receipt.tx_id.clone(),
            minor,
        ));
        done.fetch_add(1, Ordering::SeqCst);
    }
    agent.disconnect().await;
    seen
}

/// Two gateway replicas (on one SQLite file, or on one PostgreSQL) consume one Mosquitto's requests through the shared subscription
/// and share one ledger; one is killed (SIGKILL) while the terminals pay. Every payment gets
/// its final receipt (the terminals resend what the dead replica never answered, the broker
/// gives the dead replica's unacknowledged requests back when it returns), each approved
/// payment is posted once, the ledger balances, and the two audit logs verify together with
/// every decision in exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_sqlite_file_behind_mosquitto_survive_one_killed() {
    two_replicas(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgresql_behind_mosquitto_survive_one_killed() {
    two_replicas(Some(fresh_postgres_database().await)).await;
}

/// A database of its own on the test PostgreSQL server (scripts/with-postgres starts it).
async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("PAYGATE_TEST_PG_URL")
        .expect("PAYGATE_TEST_PG_URL is not set: run the tests with ./scripts/test");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
    let name = format!("paygate_replicas_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

async fn two_replicas(postgres: Option<String>) {
    // the last terminal sends its requests by hand: each twice at once (see below)
    let s = prepare(TERMINALS + 1, 1, postgres.as_deref());
    let database_url = postgres
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", s.data.join("paygate.db").display()));
    let broker = start_mosquitto(&s.data.join("pki")).await;
    let (config_b, http_b, data_b) = second_replica(&s, &database_url);
    // A first: it makes the local key-encryption key the replicas share (in production the
    // key lives in KMS)
    let mut a = serve_on(&s, broker.gateway_port);
    wait_ready(&s).await;
    let mut b = serve_config(&config_b, broker.gateway_port);
    wait_ready_on(http_b, &s).await;

    // one request published twice back to back: the share group hands the copies to the two
    // replicas, which decide them at the same moment on the shared database. Both answers
    // must be the first one (one signed receipt, twice), never a refusal for the loser
    let raced = TERMINALS;
    let bundle = DeviceBundle::load(&s.bundle_dir(raced)).unwrap();
    let (racer, mut raced_replies) = raw_device_client(&s, raced, broker.device_port).await;
    racer
        .subscribe(
            format!("paygate/v1/devices/pos-{raced}/replies"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    const RACES: usize = 10;
    for n in 0..RACES {
        let envelope = signed_payment(&bundle, 1_00, 1_000 + n as u64);
        for _ in 0..2 {
            racer
                .publish(
                    format!("paygate/v1/devices/pos-{raced}/requests"),
                    QoS::AtLeastOnce,
                    false,
                    envelope.clone(),
                )
                .await
                .unwrap();
        }
    }
    let mut answers: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    for _ in 0..2 * RACES {
        let reply = tokio::time::timeout(Duration::from_secs(20), raced_replies.recv())
            .await
            .expect("every copy answered")
            .unwrap();
        let verified = bundle.verify_receipt(&reply.payload).unwrap();
        let receipt = verified.receipt;
        assert_eq!(receipt.outcome, Outcome::Approved, "{receipt:?}");
        answers
            .entry(receipt.idempotency_key.clone().unwrap())
            .or_default()
            .push(reply.payload.to_vec());
    }
    assert_eq!(answers.len(), RACES);
    for (key, copies) in &answers {
        assert!(
            copies.len() == 2 && copies[0] == copies[1],
            "{key}: both copies got the first answer"
        );
    }
    let raced_paid = i64::try_from(RACES).unwrap() * 1_00;

    let done = Arc::new(AtomicUsize::new(0));
    let terminals: Vec<_> = (0..TERMINALS)
        .map(|n| {
            tokio::spawn(run_terminal(
                s.bundle_dir(n),
                agent_settings(&s, n, broker.device_port),
                done.clone(),
            ))
        })
        .collect();
    // SIGKILL mid-load: once a quarter of the payments are answered
    while done.load(Ordering::SeqCst) < TERMINALS * PAYMENTS_PER_TERMINAL / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let at_kill = done.load(Ordering::SeqCst);
    assert!(
        at_kill < TERMINALS * PAYMENTS_PER_TERMINAL,
        "the load was over before the kill"
    );
    let mut seen = Vec::new();
    for terminal in terminals {
        seen.extend(terminal.await.unwrap());
    }
    assert_eq!(seen.len(), TERMINALS * PAYMENTS_PER_TERMINAL);
    assert!(
        seen.iter()
            .all(|(outcome, _, _)| *outcome == Outcome::Approved),
        "{seen:?}"
    );

    // replica A comes back on its data directory, then both stop cleanly: seal and ship
    a = serve_on(&s, broker.gateway_port);
    wait_ready(&s).await;
    for replica in [&mut a, &mut b] {
        Command::new("kill")
            .args(["-TERM", &replica.0.id().to_string()])
            .status()
            .unwrap();
        replica.0.wait().unwrap();
    }

    // the ledger: each approved payment posted once, and the books balance
    let store = paygate_gateway::store::Store::open(&database_url, 1)
        .await
        .unwrap();
    let approved: std::collections::BTreeSet<String> =
        seen.iter().map(|(_, tx, _)| tx.clone().unwrap()).collect();
    assert_eq!(approved.len(), seen.len(), "one transfer per payment");
    let raced_device = format!("pos-{raced}");
    let raced_posted: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transfers WHERE device_id = $1")
            .bind(&raced_device)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        raced_posted,
        i64::try_from(RACES).unwrap(),
        "each raced request posted once"
    );
    let posted: Vec<(String,)> = sqlx::query_as(
        "SELECT tx_id FROM transfers WHERE device_id IS NOT NULL AND device_id <> $1",
    )
    .bind(&raced_device)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let posted_set: std::collections::BTreeSet<String> =
        posted.iter().map(|(t,)| t.clone()).collect();
    assert_eq!(posted.len(), posted_set.len(), "a transfer posted twice");
    assert_eq!(
        posted_set, approved,
        "posted = what the terminals saw approved"
    );
    let paid: i64 = seen
        .iter()
        .map(|(_, _, m)| i64::try_from(*m).unwrap())
        .sum::<i64>()
        + raced_paid;
    let merchant = store
        .balance(&AccountId::parse("m-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(merchant, paid);
    for unit in store.trial_balance().await.unwrap() {
        assert_eq!(unit.balance_sum_minor, 0, "{unit:?}");
        assert_eq!(unit.unbalanced_transfers, 0, "{unit:?}");
    }

    // the auditor: both archives verify together, as two logs, and every approved payment's
    // decision is in exactly one of them
    let verify = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["audit", "verify", "--archive"])
        .arg(s.data.join("audit/worm"))
        .arg("--archive")
        .arg(data_b.join("audit/worm"))
        .arg("--public-key")
        .arg(s.data.join("pki/audit-signing.pub.jwk.json"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}");
    assert!(out.contains("OK: 2 logs"), "{out}");
    let (key, key_id) = paygate_gateway::audit::archive::read_public_jwk(
        &s.data.join("pki/audit-signing.pub.jwk.json"),
    )
    .unwrap();
    let mut decided_tx = Vec::new();
    let mut per_log = Vec::new();
    for dir in [s.data.join("audit/worm"), data_b.join("audit/worm")] {
        let mut decisions = 0;
        paygate_gateway::audit::archive::verify_archive(
            &dir,
            key.clone(),
            &key_id,
            None,
            false,
            |at| {
                if at.record.event == paygate_core::audit::EventType::PaymentDecided {
                    decisions += 1;
                    if let Some(tx) = &at.record.tx_id {
                        decided_tx.push(tx.clone());
                    }
                }
            },
        )
        .unwrap();
        per_log.push(decisions);
    }
    let decided_set: std::collections::BTreeSet<String> = decided_tx.iter().cloned().collect();
    assert_eq!(
        decided_tx.len(),
        decided_set.len(),
        "a payment decided in two logs"
    );
    assert!(decided_set.is_superset(&approved));
    assert_eq!(
        decided_set.len(),
        approved.len() + RACES,
        "each raced request decided once"
    );
    assert!(
        per_log.iter().all(|&n| n > 0),
        "both replicas decided payments: {per_log:?}"
    );
}

async fn wait_ready_on(http_port: u16, s: &Prepared) {
    let client = ApiClient::new(
        &format!("https://127.0.0.1:{http_port}"),
        &s.data.join("pki/ca.cert.pem"),
    )
    .unwrap();
    for _ in 0..300 {
        if let Ok(answer) = client.send("GET", "/readyz", &[], None).await {
            if answer.status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway on {http_port} never became ready (connected to the broker)");
}
