//! `paygate bench`: starts what it needs on 127.0.0.1 (a gateway as a child process on
//! SQLite, and on PostgreSQL when given a server; Debian's mosquitto as the reference broker)
//! and prints one table: approved payments per second, publish-to-verified-receipt latency,
//! the gateway's CPU and memory, for each ledger, and in the same run the references (the
//! same load against mosquitto with an echoing responder, pgbench's simple-update rate).
//! Figures are meant to be read as ratios against the references of the same run.

mod flood;
mod loadgen;
mod reference;
mod setup;

use anyhow::{Context, Result};
use loadgen::{Load, Mode, Outcomes, Replies};
use paygate_core::{AccountId, Money};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub use loadgen::Mode as LoadMode;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the bench keeps its data directories (made afresh each run).
    pub dir: PathBuf,
    pub terminals: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    /// Historical payments put on the ledger before the second run (0: no second run).
    pub preload: u64,
    /// An admin URL of a PostgreSQL server: the bench makes its own database there, and runs
    /// pgbench against it.
    pub postgres_url: Option<String>,
    /// Measure the mosquitto reference (skipped, and said so, when mosquitto is missing).
    pub mosquitto: bool,
    /// Idle mutual-TLS connections to hold open after the load (at most one per terminal), to
    /// report the gateway's memory per connection.
    pub idle_connections: usize,
    /// Keep reward points on (the default configuration's rules: every payment earns points).
    pub reward_points: bool,
    /// Add the flood scenario: one terminal far over its admission limits, the others'
    /// latency before, during and after.
    pub flood: bool,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub outcomes: Option<Outcomes>,
    /// The server's CPU in cores (CPU seconds per second) over the measured window: the
    /// gateway's, or mosquitto's for the reference.
    pub cpu_cores: Option<f64>,
    /// The bench process's own CPU over the same window: the load generator (and, for the
    /// mosquitto reference, its echo responder). With the server's, what the machine spent.
    pub load_cpu_cores: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub note: String,
}

pub async fn run(options: BenchOptions) -> Result<Vec<Row>> {
    std::fs::create_dir_all(&options.dir)?;
    let mut rows = Vec::new();
    let sqlite_dir = setup::fresh_dir(&options.dir, "sqlite")?;
    let (mut sqlite_rows, bundles) =
        ledger_runs("paygate sqlite", &sqlite_dir, None, &options).await?;
    rows.append(&mut sqlite_rows);
    if let Some(admin) = &options.postgres_url {
        let url = fresh_database(admin).await?;
        let dir = setup::fresh_dir(&options.dir, "postgres")?;
        let (mut pg_rows, _) = ledger_runs("paygate postgres", &dir, Some(&url), &options).await?;
        rows.append(&mut pg_rows);
        let tps = reference::pgbench(&url, options.duration.as_secs().max(5)).await;
        rows.push(Row {
            name: "pgbench simple-update".into(),
            outcomes: None,
            cpu_cores: None,
            load_cpu_cores: None,
            rss_bytes: None,
            note: match tps {
                Ok(tps) => format!("{tps:.0} tps (8 clients)"),
                Err(error) => format!("not measured: {error}"),
            },
        });
    }
    if options.flood {
        rows.append(&mut flood::flood_rows(&options).await?);
    }
    if options.mosquitto {
        rows.push(mosquitto_row(&sqlite_dir, bundles, &options).await?);
    }
    Ok(rows)
}

/// The paygate rows for one ledger: an empty ledger, then (with `preload`) the same load on a
/// ledger holding that much history.
async fn ledger_runs(
    name: &str,
    dir: &std::path::Path,
    database_url: Option<&str>,
    options: &BenchOptions,
) -> Result<(Vec<Row>, Vec<paygate_agent::DeviceBundle>)> {
    let port = setup::free_port()?;
    let mut settings = setup::gateway_settings(dir, database_url, port);
    if options.reward_points {
        settings.rewards.enabled = true;
    }
    eprintln!("bench: {name}: making {} terminals", options.terminals);
    let bundles = setup::terminals(&settings, options.terminals, "bench-pos").await?;
    let mut rows = vec![
        paygate_row(
            format!("{name}, empty ledger"),
            &settings,
            &bundles,
            options,
            0,
            0,
        )
        .await?,
    ];
    if options.preload > 0 {
        eprintln!("bench: {name}: preloading {} payments", options.preload);
        let wallets: Vec<AccountId> = bundles
            .iter()
            .map(|b| AccountId::parse(&format!("wallet-{}", b.device_id)))
            .collect::<Result<_, _>>()?;
        setup::preload(&settings, &wallets, options.preload).await?;
    }
    if options.preload > 0 || options.idle_connections > 0 {
        let label = match options.preload {
            0 => format!("{name}, again"),
            preload => format!("{name}, {preload} payments on the ledger"),
        };
        // counters above the first run's, so the devices' requests stay new
        let counter_base = 1_000_000_000;
        let idle = options.idle_connections;
        rows.push(paygate_row(label, &settings, &bundles, options, counter_base, idle).await?);
    }
    Ok((rows, bundles))
}

async fn paygate_row(
    name: String,
    settings: &crate::config::Settings,
    bundles: &[paygate_agent::DeviceBundle],
    options: &BenchOptions,
    counter_base: u64,
    idle_connections: usize,
) -> Result<Row> {
    eprintln!(
        "bench: {name}: {} terminals, {:?}",
        bundles.len(),
        options.mode
    );
    let gateway = setup::GatewayProcess::start(settings).await?;
    let load = Load {
        host: "127.0.0.1".into(),
        port: gateway.port,
        bundles: bundles.iter().map(clone_bundle).collect::<Result<_>>()?,
        merchant: AccountId::parse(setup::MERCHANT)?,
        amount: Money::parse_decimal("1.00", "INR")?,
        mode: options.mode,
        replies: Replies::Receipts,
        warmup: options.warmup,
        duration: options.duration,
        counter_base,
    };
    // CPU is sampled across the measured window only, after the load's warm-up
    let load_task = tokio::spawn(loadgen::run(load));
    tokio::time::sleep(options.warmup).await;
    let cores = setup::cores_over(&[gateway.pid, std::process::id()], options.duration).await?;
    let outcomes = load_task.await.context("load task")??;
    let (cpu, load_cpu) = (cores[0], cores[1]);
    let (rss, _) = gateway.rss()?;
    let mut note = format!(
        "{} unanswered, {} not approved",
        outcomes.unanswered, outcomes.other
    );
    if idle_connections > 0 {
        let per = idle_memory(&gateway, settings, idle_connections).await?;
        let _ = write!(note, "; {per}");
    }
    gateway.stop().await;
    Ok(Row {
        name,
        outcomes: Some(outcomes),
        cpu_cores: Some(cpu),
        load_cpu_cores: Some(load_cpu),
        rss_bytes: Some(rss),
        note,
    })
}

/// Holds `count` idle terminals connected and reports the gateway's memory per connection.
async fn idle_memory(
    gateway: &setup::GatewayProcess,
    settings: &crate::config::Settings,
    count: usize,
) -> Result<String> {
    let pki_dir = settings.data_dir.join("pki");
    let bundle_dir = pki_dir.join("devices");
    let mut bundles = Vec::new();
    for entry in std::fs::read_dir(&bundle_dir)?.flatten().take(count) {
        bundles.push(paygate_agent::DeviceBundle::load(&entry.path())?);
    }
    let (before, _) = gateway.rss()?;
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for bundle in &bundles {
        // the front binds the client id to the certificate: one connection per terminal
        let mut options =
            rumqttc::MqttOptions::new(bundle.device_id.as_str(), "127.0.0.1", gateway.port);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(paygate_agent::tls_config(bundle)?),
        ));
        options.set_keep_alive(Duration::from_secs(120));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        let connected = connected.clone();
        clients.push((
            client,
            tokio::spawn(async move {
                let mut counted = false;
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) if !counted => {
                            counted = true;
                            connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        // a refused or timed-out handshake is tried again
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }),
        ));
        // a steady stream of handshakes, not a thundering herd
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while connected.load(std::sync::atomic::Ordering::Relaxed) < bundles.len()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = gateway.rss()?;
    let open = connected.load(std::sync::atomic::Ordering::Relaxed);
    for (_, task) in clients {
        task.abort();
    }
    let per = after.saturating_sub(before) / u64::try_from(open.max(1))?;
    Ok(format!(
        "{open} idle mTLS connections held, {:.1} KiB each",
        per as f64 / 1024.0
    ))
}

async fn mosquitto_row(
    dir: &std::path::Path,
    bundles: Vec<paygate_agent::DeviceBundle>,
    options: &BenchOptions,
) -> Result<Row> {
    let name = "mosquitto + echo responder".to_owned();
    if reference::mosquitto_binary().is_none() {
        return Ok(Row {
            name,
            outcomes: None,
            cpu_cores: None,
            load_cpu_cores: None,
            rss_bytes: None,
            note: "not measured: mosquitto is not installed (apt-get install mosquitto)".into(),
        });
    }
    let pki_dir = dir.join("pki");
    let responder_id = paygate_core::DeviceId::parse("bench-responder")?;
    let wallet = AccountId::parse("wallet-bench-responder")?;
    crate::pki::issue_device(
        &pki_dir,
        &responder_id,
        &wallet,
        paygate_core::envelope::SigningAlgorithm::Ed25519,
    )?;
    let responder =
        paygate_agent::DeviceBundle::load(&crate::pki::device_dir(&pki_dir, &responder_id))?;
    eprintln!("bench: {name}: {} terminals", bundles.len());
    let (outcomes, cpu) = reference::mosquitto(
        &pki_dir,
        bundles,
        responder,
        options.mode,
        options.warmup,
        options.duration,
    )
    .await?;
    Ok(Row {
        name,
        note: format!("{} unanswered", outcomes.unanswered),
        outcomes: Some(outcomes),
        cpu_cores: Some(cpu.server_cores),
        load_cpu_cores: Some(cpu.load_cores),
        rss_bytes: None,
    })
}

pub(super) fn clone_bundle(
    bundle: &paygate_agent::DeviceBundle,
) -> Result<paygate_agent::DeviceBundle> {
    paygate_agent::DeviceBundle::load(&bundle.dir)
}

/// Makes a database for this run on the server an admin URL names; returns its URL.
async fn fresh_database(admin: &str) -> Result<String> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let name = format!("paygate_bench_{}", hex::encode(rand::random::<[u8; 4]>()));
    let mut conn = sqlx::AnyConnection::connect(admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (base, _) = admin
        .rsplit_once('/')
        .context("a PostgreSQL URL ends in /database")?;
    Ok(format!("{base}/{name}"))
}

/// The table, with each paygate row's rate as a ratio of the mosquitto reference's.
pub fn table(rows: &[Row], options: &BenchOptions) -> String {
    let reference = rows
        .iter()
        .find(|r| r.name.starts_with("mosquitto"))
        .and_then(|r| r.outcomes.as_ref())
        .map(Outcomes::approved_per_s);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== paygate bench: {} terminals, {}, {} s measured after {} s warm-up, reward points {} ==",
        options.terminals,
        match options.mode {
            Mode::Closed { inflight } => format!("closed loop, {inflight} in flight each"),
            Mode::Open { rate_per_s } => format!("open loop at {rate_per_s}/s"),
        },
        options.duration.as_secs(),
        options.warmup.as_secs(),
        if options.reward_points { "on" } else { "off" }
    );
    let _ = writeln!(
        out,
        "| run | answered/s ok | x mosquitto | p50 ms | p90 ms | p99 ms | max ms | server CPU (cores) | load generator CPU (cores) | server RSS MiB | notes |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for row in rows {
        let cells = match &row.outcomes {
            Some(o) => format!(
                "{:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1}",
                o.approved_per_s(),
                reference.map_or("-".into(), |r| format!(
                    "{:.3}",
                    o.approved_per_s() / r.max(1e-9)
                )),
                o.percentile_ms(500),
                o.percentile_ms(900),
                o.percentile_ms(990),
                o.percentile_ms(1000),
            ),
            None => "- | - | - | - | - | -".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {cells} | {} | {} | {} | {} |",
            row.name,
            row.cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            row.load_cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            row.rss_bytes
                .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1_048_576.0)),
            row.note
        );
    }
    out
}
