//! What a bench run stands on: a data directory with a development PKI, a merchant, the
//! terminals (each its own device bundle, enrolled, its wallet funded), optionally a ledger
//! preloaded with history, and the gateway as a child process (`paygate serve`) whose CPU
//! time and memory are read from /proc.

use crate::config::Settings;
use crate::ledger::AccountKind;
use crate::pki;
use crate::store::Backend;
use anyhow::{bail, Context, Result};
use paygate_agent::DeviceBundle;
use paygate_core::envelope::SigningAlgorithm;
use paygate_core::{AccountId, Currency, DeviceId, Money};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const MERCHANT: &str = "m-bench";

/// Settings for a bench gateway: embedded defaults, with the limits opened so that every
/// payment of the load is approved (no step-up rules, wide KYC and velocity limits, no
/// reward points) and the device listener on `port`.
pub fn gateway_settings(data_dir: &Path, database_url: Option<&str>, port: u16) -> Settings {
    let mut settings = Settings {
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    settings.mqtt.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // the bench measures the device plane; the HTTP API stays off
    settings.http.enabled = false;
    settings.mqtt.connections_max = crate::descriptors::connections_that_fit().min(20_000);
    if let Some(url) = database_url {
        settings.database.url = crate::config::Secret::new(url);
        settings.database.connections_max = 8;
    }
    settings.pipeline.batch_size_max = 512;
    settings.pipeline.queue_depth_max = 16_384;
    // the load measures the pipeline, not the front's per-device admission
    settings.mqtt.device_requests_per_s = 1_000_000;
    settings.mqtt.device_requests_burst = 1_000_000;
    settings.mqtt.device_inflight_max = 1_024;
    settings.mqtt.outbound_queue_packets_max = 4_096;
    settings.identity.rules.clear();
    settings.identity.device_payments_per_window_max = 1_000_000;
    settings.identity.wallet_payments_per_window_max = 1_000_000;
    settings.rewards.enabled = false;
    for tier in [&mut settings.wallet.min_kyc, &mut settings.wallet.full_kyc] {
        tier.balance_max_minor = i64::MAX >> 10;
        tier.daily_debit_max_minor = i64::MAX >> 10;
        tier.monthly_debit_max_minor = i64::MAX >> 10;
    }
    settings
}

/// Makes the PKI, the merchant and `count` terminals; returns their bundles.
pub async fn terminals(
    settings: &Settings,
    count: usize,
    prefix: &str,
) -> Result<Vec<DeviceBundle>> {
    let pki_dir = settings.data_dir.join("pki");
    if !pki::is_initialised(&pki_dir) {
        pki::init(
            &pki_dir,
            &["localhost".into(), "127.0.0.1".into()],
            &settings.receipts.key_id,
        )?;
    }
    let store = crate::audit::open_store(settings, 4).await?;
    let inr = Currency::parse("INR").context("INR")?;
    let now = crate::clock::now_ms();
    store
        .open_account(
            &AccountId::parse(MERCHANT)?,
            AccountKind::Merchant,
            inr,
            now,
        )
        .await?;
    let mut bundles = Vec::with_capacity(count);
    for index in 0..count {
        let device = DeviceId::parse(&format!("{prefix}-{index:05}"))?;
        let dir = pki::device_dir(&pki_dir, &device);
        if !dir.join("enrolment.json").exists() {
            let wallet = AccountId::parse(&format!("wallet-{device}"))?;
            pki::issue_device(&pki_dir, &device, &wallet, SigningAlgorithm::Ed25519)?;
        }
        let wallet = crate::demo::enrol_from_bundle(&store, &pki_dir, &device, inr).await?;
        crate::products::wallet::fund(
            &store,
            &settings.wallet,
            &wallet,
            Money::new(1_000_000_000_000, inr)?,
            now,
        )
        .await?;
        bundles.push(DeviceBundle::load(&dir)?);
    }
    store.pool().close().await;
    Ok(bundles)
}

/// Puts `payments` historical merchant payments on the ledger, spread over the terminals'
/// wallets and the last 30 days, with everything a payment leaves: the transfer, its two
/// postings, the stored request, the balances and the counters. Made by the database itself
/// (a recursive series), so a million take seconds, not an afternoon.
pub async fn preload(settings: &Settings, wallets: &[AccountId], payments: u64) -> Result<()> {
    if payments == 0 || wallets.is_empty() {
        return Ok(());
    }
    let store = crate::audit::open_store(settings, 2).await?;
    let postgres = store.backend() == Backend::Postgres;
    let hex_id = if postgres {
        "lpad(to_hex(i), 24, '0')"
    } else {
        "printf('%024x', i)"
    };
    let now = i64::try_from(crate::clock::now_ms())?;
    let span_ms: i64 = 30 * 86_400_000;
    let count = i64::try_from(payments)?;
    let wallet_count = i64::try_from(wallets.len())?;
    let mut tx = store.begin_batch().await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE bench_wallets (n BIGINT PRIMARY KEY, account_id TEXT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    for (n, wallet) in wallets.iter().enumerate() {
        sqlx::query("INSERT INTO bench_wallets (n, account_id) VALUES ($1, $2)")
            .bind(i64::try_from(n)?)
            .bind(wallet.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let series = format!("WITH RECURSIVE s(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM s WHERE i < {count})");
    let at = format!("({now} - {span_ms} + (i * {span_ms}) / {count})");
    let statements = [
        format!("{series} INSERT INTO transfers (tx_id, kind, device_id, idempotency_key, currency, amount_minor, created_at_ms)
                 SELECT 'tx-' || {hex_id}, 'merchant_payment', 'hist-' || CAST(i % {wallet_count} AS TEXT), 'hist-' || CAST(i AS TEXT), 'INR', 100, {at} FROM s"),
        format!("{series} INSERT INTO postings (tx_id, account_id, currency, amount_minor)
                 SELECT 'tx-' || {hex_id}, w.account_id, 'INR', -100 FROM s JOIN bench_wallets w ON w.n = i % {wallet_count}"),
        format!("{series} INSERT INTO postings (tx_id, account_id, currency, amount_minor)
                 SELECT 'tx-' || {hex_id}, '{MERCHANT}', 'INR', 100 FROM s"),
        format!("{series} INSERT INTO requests (device_id, idempotency_key, counter, body_sha256, outcome, code, tx_id, receipt, decided_at_ms)
                 SELECT 'hist-' || CAST(i % {wallet_count} AS TEXT), 'hist-' || CAST(i AS TEXT), i, {blob}, 'approved', NULL, 'tx-' || {hex_id}, {blob}, {at} FROM s",
                blob = if postgres { "'\\x00'::bytea" } else { "x'00'" }),
        format!("{series} INSERT INTO wallet_debit_log (account_id, created_at_ms, tx_id)
                 SELECT w.account_id, {at}, 'tx-' || {hex_id} FROM s JOIN bench_wallets w ON w.n = i % {wallet_count}"),
        "INSERT INTO debit_days (account_id, local_day, kind, total_minor, debit_count)
                 SELECT p.account_id, (t.created_at_ms + 19800000) / 86400000, 'merchant_payment', SUM(-p.amount_minor), COUNT(*)
                 FROM postings p JOIN transfers t ON t.tx_id = p.tx_id
                 WHERE t.device_id LIKE 'hist-%' AND p.amount_minor < 0
                 GROUP BY p.account_id, (t.created_at_ms + 19800000) / 86400000
                 ON CONFLICT (account_id, local_day, kind) DO UPDATE
                 SET total_minor = debit_days.total_minor + excluded.total_minor,
                     debit_count = debit_days.debit_count + excluded.debit_count".to_owned(),
        "INSERT INTO wallet_counters (account_id, debited_since_strong_auth_minor)
         SELECT l.account_id, 100 * COUNT(*) FROM wallet_debit_log l
         WHERE l.account_id IN (SELECT account_id FROM bench_wallets) GROUP BY l.account_id
         ON CONFLICT (account_id) DO UPDATE
         SET debited_since_strong_auth_minor =
             wallet_counters.debited_since_strong_auth_minor + excluded.debited_since_strong_auth_minor"
            .to_owned(),
        "INSERT INTO wallet_payees (wallet_account_id, payee_account_id)
         SELECT account_id, 'm-bench' FROM bench_wallets WHERE 1 = 1 ON CONFLICT DO NOTHING".to_owned(),
        format!("UPDATE balance_shards SET balance_minor = balance_minor + 100 * {count}
                 WHERE account_id = '{MERCHANT}' AND shard = 0"),
        "DROP TABLE bench_wallets".to_owned(),
    ];
    for statement in statements {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| {
                format!(
                    "preloading: {}",
                    statement.lines().next().unwrap_or_default()
                )
            })?;
    }
    for (n, wallet) in wallets.iter().enumerate() {
        let n = i64::try_from(n)?;
        // how many i in 1..=count have i % wallets == n
        let debits = if n == 0 {
            count / wallet_count
        } else if n > count {
            0
        } else {
            (count - n) / wallet_count + 1
        };
        sqlx::query(
            "UPDATE balance_shards SET balance_minor = balance_minor - $1 WHERE account_id = $2",
        )
        .bind(100 * debits)
        .bind(wallet.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // a ledger that grew over a month has planner statistics (autovacuum on PostgreSQL); one
    // loaded in seconds does not until they are gathered
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    store.pool().close().await;
    Ok(())
}

/// The gateway as a child process.
pub struct GatewayProcess {
    child: tokio::process::Child,
    pub pid: u32,
    pub port: u16,
}

impl GatewayProcess {
    pub async fn start(settings: &Settings) -> Result<GatewayProcess> {
        let config = settings.data_dir.join("bench-gateway.toml");
        std::fs::write(&config, toml::to_string(settings)?)?;
        let exe = std::env::current_exe()?;
        let child = tokio::process::Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("PAYGATE_BENCH_LOG").unwrap_or_else(|_| "error,rumqttd=off".into()),
            )
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the gateway")?;
        let pid = child.id().context("gateway pid")?;
        let port = settings.mqtt.listen.port();
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the gateway did not listen on {port} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(GatewayProcess { child, pid, port })
    }

    /// Resident memory now and at its peak, in bytes.
    pub fn rss(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    pub async fn stop(mut self) {
        // SIGTERM: a clean stop seals the audit journal
        let _ = std::process::Command::new("kill")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_of(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields 14 and 15 of stat are utime and stime; after the name they are 12 and 13 (0-based 11, 12)
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let total = ticks(11) + ticks(12);
    // the kernel's USER_HZ is 100 on Linux
    Ok(Duration::from_millis(total * 10))
}

/// Waits `window` and returns the CPU each of `pids` used meanwhile, in cores (CPU seconds
/// per second).
pub async fn cores_over(pids: &[u32], window: Duration) -> Result<Vec<f64>> {
    let before = pids
        .iter()
        .map(|&pid| cpu_of(pid))
        .collect::<Result<Vec<_>>>()?;
    tokio::time::sleep(window).await;
    let seconds = window.as_secs_f64().max(1e-9);
    pids.iter()
        .zip(before)
        .map(|(&pid, before)| Ok(cpu_of(pid)?.saturating_sub(before).as_secs_f64() / seconds))
        .collect()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A fresh bench directory under `root`.
pub fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
