//! The end-to-end harness: a real gateway on 127.0.0.1:0 in a temporary data directory, with a
//! development PKI, real TLS, real MQTT and SQLite; real agents; and a raw TLS MQTT client for
//! sending what no well-behaved client would.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result};
use bytes::BytesMut;
use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::envelope::SigningAlgorithm;
use paygate_core::{AccountId, Currency, DeviceId, Money};
use paygate_gateway::config::Settings;
use paygate_gateway::gateway::{self, RunningGateway};
use paygate_gateway::ledger::AccountKind;
use paygate_gateway::pki;
use paygate_gateway::store::Store;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::mqttbytes::{self, Protocol};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub mod http;

pub const MERCHANT: &str = "m-1";

pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub running: RunningGateway,
}

pub fn inr(text: &str) -> Money {
    Money::parse_decimal(text, "INR").unwrap()
}

impl TestGateway {
    /// A fresh gateway with a development PKI and merchant `m-1` (INR).
    pub async fn start() -> TestGateway {
        TestGateway::start_with(|_| {}).await
    }

    /// A fresh gateway whose settings `adjust` changes first.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> TestGateway {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        settings.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        settings.http.listen = "127.0.0.1:0".parse().unwrap();
        settings.mqtt.handshake_timeout_ms = 2_000;
        // a test gateway needs few connections; the default's descriptors may not be there
        settings.mqtt.connections_max = 1_000;
        adjust(&mut settings);
        pki::init(
            &dir.path().join("pki"),
            &["localhost".into(), "127.0.0.1".into()],
            &settings.receipts.key_id,
        )
        .unwrap();
        let running = gateway::start(settings.clone()).await.unwrap();
        let gateway = TestGateway {
            dir,
            settings,
            running,
        };
        gateway
            .store()
            .open_account(
                &AccountId::parse(MERCHANT).unwrap(),
                AccountKind::Merchant,
                Currency::parse("INR").unwrap(),
                0,
            )
            .await
            .unwrap();
        gateway
    }

    /// Stops this gateway and starts another on the same data directory (new port). Used after
    /// a revocation, since CRLs are read at start.
    pub async fn restart(self) -> TestGateway {
        self.running.shutdown();
        // the old front lets go of its listener when its task sees the shutdown
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(self.running);
        // the old gateway's tasks let go of its audit journal as they end (a second writer is
        // refused, as a second process on the data directory would be)
        let mut waited = 0;
        let running = loop {
            match gateway::start(self.settings.clone()).await {
                Ok(running) => break running,
                Err(error)
                    if waited < 300
                        && error.chain().any(|cause| {
                            matches!(
                                cause.downcast_ref::<paygate_gateway::audit::AuditError>(),
                                Some(paygate_gateway::audit::AuditError::InUse(_))
                            )
                        }) =>
                {
                    waited += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("the gateway did not start again: {error:#}"),
            }
        };
        TestGateway {
            running,
            dir: self.dir,
            settings: self.settings,
        }
    }

    pub fn store(&self) -> &Store {
        &self.running.store
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn port(&self) -> u16 {
        self.running
            .mqtt_address
            .expect("the test gateway runs the embedded broker")
            .port()
    }

    /// Issues, enrols and funds a device with an Ed25519 signing key.
    pub async fn device(&self, id: &str, funds: &str) -> DeviceBundle {
        self.device_with(id, funds, SigningAlgorithm::Ed25519).await
    }

    pub async fn device_with(
        &self,
        id: &str,
        funds: &str,
        algorithm: SigningAlgorithm,
    ) -> DeviceBundle {
        let device = DeviceId::parse(id).unwrap();
        let wallet = AccountId::parse(&format!("wallet-{id}")).unwrap();
        pki::issue_device(&self.pki_dir(), &device, &wallet, algorithm).unwrap();
        paygate_gateway::demo::enrol_from_bundle(
            self.store(),
            &self.pki_dir(),
            &device,
            Currency::parse("INR").unwrap(),
        )
        .await
        .unwrap();
        paygate_gateway::products::wallet::fund(
            self.store(),
            &self.settings.wallet,
            &wallet,
            inr(funds),
            paygate_gateway::clock::now_ms(),
        )
        .await
        .unwrap();
        DeviceBundle::load(&pki::device_dir(&self.pki_dir(), &device)).unwrap()
    }

    /// A terminal whose account is not a wallet: an agent's float or a merchant's till. The
    /// account is opened with `kind` and funded with `float` from the issuance account.
    pub async fn terminal(
        &self,
        id: &str,
        account: &str,
        kind: AccountKind,
        float: &str,
    ) -> DeviceBundle {
        use paygate_gateway::ledger::{self, Leg, NewAccount, NewTransfer};
        let device = DeviceId::parse(id).unwrap();
        let account_id = AccountId::parse(account).unwrap();
        self.store()
            .open_with(
                &NewAccount {
                    account_id: account_id.clone(),
                    kind,
                    unit: "INR".into(),
                    kyc_tier: None,
                    category: None,
                    owner: None,
                },
                0,
            )
            .await
            .unwrap();
        pki::issue_device(
            &self.pki_dir(),
            &device,
            &account_id,
            SigningAlgorithm::Ed25519,
        )
        .unwrap();
        paygate_gateway::demo::enrol_from_bundle(
            self.store(),
            &self.pki_dir(),
            &device,
            Currency::parse("INR").unwrap(),
        )
        .await
        .unwrap();
        let minor = inr(float).minor_signed();
        let issuance = AccountId::parse("issuance-inr").unwrap();
        self.store()
            .open_account(
                &issuance,
                AccountKind::Issuance,
                Currency::parse("INR").unwrap(),
                0,
            )
            .await
            .unwrap();
        let mut batch = self.store().begin_batch().await.unwrap();
        ledger::post(
            &mut batch,
            &NewTransfer {
                tx_id: &paygate_gateway::store::new_tx_id(),
                kind: "funding",
                origin: None,
                related: None,
                legs: vec![
                    Leg::debit(&issuance, AccountKind::Issuance, "INR", minor),
                    Leg::credit(&account_id, kind, "INR", minor),
                ],
                now_ms: 0,
            },
        )
        .await
        .unwrap();
        batch.commit().await.unwrap();
        DeviceBundle::load(&pki::device_dir(&self.pki_dir(), &device)).unwrap()
    }

    /// Sets a wallet's KYC tier.
    pub async fn set_tier(&self, wallet: &str, tier: paygate_gateway::ledger::KycTier) {
        let mut batch = self.store().begin_batch().await.unwrap();
        paygate_gateway::ledger::set_kyc_tier(&mut batch, &AccountId::parse(wallet).unwrap(), tier)
            .await
            .unwrap();
        batch.commit().await.unwrap();
    }

    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        pki::device_dir(&self.pki_dir(), &DeviceId::parse(id).unwrap())
    }

    pub fn agent_settings(&self, id: &str) -> AgentSettings {
        AgentSettings {
            host: "127.0.0.1".into(),
            port: self.port(),
            keep_alive: Duration::from_secs(30),
            resend_interval: Duration::from_secs(3),
            receipt_timeout: Duration::from_secs(20),
            outbox_dir: self.bundle_dir(id).join("outbox"),
        }
    }

    pub async fn agent(&self, id: &str) -> Agent {
        let bundle = DeviceBundle::load(&self.bundle_dir(id)).unwrap();
        Agent::connect(bundle, self.agent_settings(id))
            .await
            .unwrap()
    }

    pub async fn balance(&self, account: &str) -> i64 {
        self.store()
            .balance(&AccountId::parse(account).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// What no refusal or decline may change: every balance, and the transfers and postings.
    /// (A decline is a recorded decision, so the decided-requests table may grow.)
    pub async fn ledger_fingerprint(&self) -> String {
        let pool = self.store().pool();
        let balances: Vec<(String, i64)> = sqlx::query_as(
            "SELECT account_id, balance_minor FROM balance_shards ORDER BY account_id, shard",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM transfers), (SELECT COUNT(*) FROM postings)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        format!("{balances:?} {counts:?}")
    }

    /// The books balance: every transfer sums to zero, the sum of balances is zero per
    /// currency, and every balance equals its postings.
    pub async fn assert_ledger_balanced(&self) {
        for line in self.store().trial_balance().await.unwrap() {
            assert_eq!(line.balance_sum_minor, 0, "{line:?}");
            assert_eq!(line.posting_sum_minor, 0, "{line:?}");
            assert_eq!(line.unbalanced_transfers, 0, "{line:?}");
        }
        assert!(self.store().balances_match_postings().await.unwrap());
    }

    /// Waits until the gateway has counted `count` refusals with `code` (refusals are counted
    /// by the connection task, which may finish just after the client sees the close).
    pub async fn wait_for_refusals(&self, code: paygate_core::ErrorCode, count: u64) -> u64 {
        for _ in 0..200 {
            let seen = self.running.metrics.snapshot().refusals_of(code);
            if seen >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.running.metrics.snapshot().refusals_of(code)
    }

    /// Every record of this gateway's audit trail, in order, after the outbox is drained: the
    /// segments shipped to the local write-once store and those still in the journal.
    pub async fn journal_records(&self) -> Vec<paygate_core::audit::AuditRecord> {
        self.running.audit.drain().await.unwrap();
        let mut records = journal_in(&self.running.audit.dir().await);
        let shipped = self.settings.resolve(&self.settings.audit.local.dir);
        if shipped.join("segments").exists() {
            records.extend(journal_in(&shipped));
        }
        records.sort_by_key(|r| r.seq);
        records.dedup_by_key(|r| r.seq);
        records
    }

    /// A client of this gateway's HTTP API.
    pub fn http(&self) -> http::HttpClient {
        let address = self
            .running
            .http_address()
            .expect("the test gateway serves HTTP");
        http::HttpClient::new(address, &self.pki_dir().join("ca.cert.pem"))
    }

    /// A bearer token from the development issuer, for `subject` with `scope`.
    pub fn token(&self, subject: &str, scope: &str) -> String {
        self.token_with(subject, scope, &[], None)
    }

    /// An operator's token: `roles`, and a second factor `second_factor_age_s` ago (none:
    /// a single-factor token).
    pub fn operator_token(
        &self,
        subject: &str,
        roles: &[&str],
        second_factor_age_s: Option<u64>,
    ) -> String {
        let now_s = paygate_gateway::clock::now_ms() / 1_000;
        self.token_with(
            subject,
            "",
            roles,
            second_factor_age_s.map(|age| now_s - age),
        )
    }

    /// A token with `scope`, operator `roles` and, when given, a second factor at that time.
    pub fn token_with(
        &self,
        subject: &str,
        scope: &str,
        roles: &[&str],
        second_factor_at_s: Option<u64>,
    ) -> String {
        let jwt = &self.settings.http.jwt;
        paygate_gateway::http::dev_issuer::token(
            &self.pki_dir(),
            &paygate_gateway::http::dev_issuer::TokenAsk {
                issuer: &jwt.issuer,
                audience: &jwt.audience,
                subject,
                scope,
                lifetime_s: 600,
                roles,
                second_factor_at_s,
            },
        )
        .unwrap()
    }

    pub fn tls_client_config(&self, client_bundle: Option<&Path>) -> Arc<rustls::ClientConfig> {
        tls_client_config(&self.pki_dir().join("ca.cert.pem"), client_bundle)
    }
}

/// The records of the audit journal in `dir`, in order.
pub fn journal_in(dir: &Path) -> Vec<paygate_core::audit::AuditRecord> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        for line in std::fs::read(path).unwrap().split(|&b| b == b'\n') {
            if !line.is_empty() {
                out.push(paygate_core::audit::AuditRecord::from_line(line).unwrap());
            }
        }
    }
    out
}

fn read_certs(path: &Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// A TLS client trusting `ca_file`, presenting the bundle's certificate if one is given.
pub fn tls_client_config(
    ca_file: &Path,
    client_bundle: Option<&Path>,
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(ca_file) {
        roots.add(ca).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_bundle {
        None => builder.with_no_client_auth(),
        Some(dir) => {
            let chain = read_certs(&dir.join("device.cert.pem"));
            let key_pem = std::fs::read(dir.join("device.key.pem")).unwrap();
            let key = rustls_pki_types::pem::PemObject::from_pem_slice(&key_pem).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// A raw MQTT 3.1.1 client over TLS: sends exactly the packets a test builds.
pub struct RawClient {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
}

impl RawClient {
    pub async fn connect_tls(port: u16, config: Arc<rustls::ClientConfig>) -> Result<RawClient> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let stream = connector
            .connect(name, tcp)
            .await
            .context("tls handshake")?;
        Ok(RawClient {
            stream,
            buffer: BytesMut::new(),
        })
    }

    pub async fn send(&mut self, packet: Packet) -> Result<()> {
        let mut out = BytesMut::new();
        packet.write(&mut out, 10 * 1024 * 1024)?;
        self.send_bytes(&out).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next packet, or the error that ended the stream (closed, TLS alert, timeout).
    pub async fn recv(&mut self, timeout: Duration) -> Result<Packet> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Packet::read(&mut self.buffer, 10 * 1024 * 1024) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(other) => anyhow::bail!("bad packet from server: {other}"),
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer))
                .await
                .context("timed out")??;
            if read == 0 {
                anyhow::bail!("connection closed");
            }
        }
    }

    /// Sends CONNECT with `client_id`, returns the CONNACK return code.
    pub async fn mqtt_connect(&mut self, client_id: &str) -> Result<u8> {
        let mut connect = Connect::new(client_id);
        connect.protocol = Protocol::V4;
        connect.keep_alive = 30;
        connect.clean_session = true;
        self.send(Packet::Connect(connect)).await?;
        match self.recv(Duration::from_secs(5)).await? {
            Packet::ConnAck(ack) => Ok(ack.code as u8),
            other => anyhow::bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Reads until the server closes the connection; returns the packets seen before that.
    pub async fn until_closed(&mut self, timeout: Duration) -> (Vec<Packet>, bool) {
        let mut packets = Vec::new();
        loop {
            match self.recv(timeout).await {
                Ok(packet) => packets.push(packet),
                Err(error) => return (packets, !error.to_string().contains("timed out")),
            }
        }
    }
}

/// rumqttd's loopback address behind the guard.
pub fn broker_address_of(gateway: &TestGateway) -> std::net::SocketAddr {
    gateway
        .running
        .broker_address
        .expect("the test gateway runs the embedded broker")
}

/// Which database a contract test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh, empty, migrated store on `db`: a SQLite file in a temporary directory, or a new
/// database on the PostgreSQL server `scripts/with-postgres` started (`PAYGATE_TEST_PG_URL`).
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(db: Db, connections: u32) -> TestDb {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
                TestDb {
                    store: Store::open(&url, connections).await.unwrap(),
                    url,
                    _dir: Some(dir),
                }
            }
            Db::Postgres => {
                let url = fresh_postgres_database().await;
                TestDb {
                    store: Store::open(&url, connections).await.unwrap(),
                    url,
                    _dir: None,
                }
            }
        }
    }
}

/// Creates a database with a unique name on the test PostgreSQL server and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("PAYGATE_TEST_PG_URL").expect(
        "PAYGATE_TEST_PG_URL is not set: run the tests with ./scripts/test, which starts PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
    let name = format!(
        "paygate_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

static NEXT_DB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A TCP proxy on 127.0.0.1 in front of a server, which a test can take down (every
/// connection through it cut, new ones closed at once) and bring back: a database that stops
/// and returns, as a failover or a network partition looks to the gateway.
pub struct OutageProxy {
    pub port: u16,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl OutageProxy {
    pub async fn start(target: std::net::SocketAddr) -> OutageProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, up_rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut down = up_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        OutageProxy { port, up, task }
    }

    /// Cuts every connection and refuses new ones until [`OutageProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `url` (a PostgreSQL URL on 127.0.0.1) through this proxy.
    pub fn postgres_url(&self, url: &str) -> String {
        let (scheme_host, rest) = url.rsplit_once(':').unwrap();
        let (_, path) = rest.split_once('/').unwrap();
        format!("{scheme_host}:{}/{path}", self.port)
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address a PostgreSQL URL of the test server points at.
pub fn postgres_address(url: &str) -> std::net::SocketAddr {
    let (_, rest) = url.rsplit_once(':').unwrap();
    let port: u16 = rest.split_once('/').unwrap().0.parse().unwrap();
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}
