//! `paygate demo`: on embedded defaults (a data directory, a development PKI made on first
//! run, SQLite), starts the gateway and a few simulated terminals that enrol and pay over real
//! mutual-TLS MQTT, shows progress, and ends with a summary and a ledger check.

use crate::config::Settings;
use crate::gateway;
use crate::ledger::AccountKind;
use crate::pki;
use crate::store::{Device, Store};
use anyhow::{Context, Result};
use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::envelope::SigningAlgorithm;
use paygate_core::receipt::Outcome;
use paygate_core::{AccountId, Currency, DeviceId, Money};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub terminals: usize,
    pub payments_per_terminal: usize,
    /// After the summary, keep the gateway (MQTT, the HTTP API, the console) up until Ctrl-C.
    pub keep_serving: bool,
}

#[derive(Debug, Default)]
pub struct DemoSummary {
    /// The auditors' console of this run's gateway.
    pub console: Option<String>,
    pub sent: u64,
    pub approved: u64,
    pub declined: BTreeMap<String, u64>,
    pub rejected: BTreeMap<String, u64>,
    pub failed: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub ledger_balanced: bool,
}

const MERCHANTS: [&str; 3] = ["m-coffee", "m-grocer", "m-fuel"];

/// Enrols a device from its bundle: opens its wallet and registers its signing key.
pub async fn enrol_from_bundle(
    store: &Store,
    pki_dir: &std::path::Path,
    device: &DeviceId,
    currency: Currency,
) -> Result<AccountId> {
    let enrolment = pki::read_enrolment(&pki::device_dir(pki_dir, device).join("enrolment.json"))?;
    let wallet = AccountId::parse(&enrolment.wallet_id)?;
    let now = crate::clock::now_ms();
    store
        .open_account(&wallet, AccountKind::Wallet, currency, now)
        .await?;
    store
        .enrol_device(
            &Device {
                device_id: device.clone(),
                key: enrolment.verifying_key()?,
                wallet: wallet.clone(),
                active: true,
            },
            now,
        )
        .await?;
    Ok(wallet)
}

pub async fn run(options: DemoOptions) -> Result<DemoSummary> {
    let mut settings = Settings {
        data_dir: options.data_dir.clone(),
        ..Settings::default()
    };
    settings.mqtt.listen = "127.0.0.1:0".parse()?;
    settings.http.listen = "127.0.0.1:0".parse()?;
    // room for the demo's own terminals, whatever this machine's descriptor limit
    settings.mqtt.connections_max = options.terminals + 64;
    let pki_dir = settings.data_dir.join("pki");
    if !pki::is_initialised(&pki_dir) {
        eprintln!("making a development PKI in {}", pki_dir.display());
        pki::init(
            &pki_dir,
            &["localhost".into(), "127.0.0.1".into()],
            &settings.receipts.key_id,
        )?;
    }
    let running = gateway::start(settings.clone()).await?;
    let console = running
        .http_address()
        .map(|address| format!("https://{address}/console/"));
    if let Some(console) = &console {
        let jwt = &settings.http.jwt;
        let token = crate::http::dev_issuer::token(
            &pki_dir,
            &crate::http::dev_issuer::TokenAsk {
                issuer: &jwt.issuer,
                audience: &jwt.audience,
                subject: "demo-auditor",
                scope: "audit:read",
                lifetime_s: 3_600,
                ..Default::default()
            },
        )?;
        eprintln!(
            "auditors' console: {console} (its certificate is signed by {})",
            pki_dir.join("ca.cert.pem").display()
        );
        eprintln!("auditor sign-in token (1 hour): {token}");
    }
    let store = running.store.clone();
    let inr = Currency::parse("INR").context("INR")?;
    let now = crate::clock::now_ms();
    for merchant in MERCHANTS {
        store
            .open_account(
                &AccountId::parse(merchant)?,
                AccountKind::Merchant,
                inr,
                now,
            )
            .await?;
    }

    let total = u64::try_from(options.terminals * options.payments_per_terminal)?;
    let sent = Arc::new(AtomicU64::new(0));
    let approved = Arc::new(AtomicU64::new(0));
    let mut terminals = Vec::new();
    for index in 0..options.terminals {
        let device = DeviceId::parse(&format!("demo-pos-{index:03}"))?;
        let bundle_dir = pki::device_dir(&pki_dir, &device);
        if !bundle_dir.join("enrolment.json").exists() {
            let wallet = AccountId::parse(&format!("wallet-{device}"))?;
            pki::issue_device(&pki_dir, &device, &wallet, SigningAlgorithm::Ed25519)?;
        }
        let wallet = enrol_from_bundle(&store, &pki_dir, &device, inr).await?;
        crate::products::wallet::fund(
            &store,
            &settings.wallet,
            &wallet,
            Money::parse_decimal("400.00", "INR")?,
            now,
        )
        .await?;
        let agent_settings = AgentSettings {
            host: "127.0.0.1".into(),
            port: running
                .mqtt_address
                .context("the demo runs the embedded broker")?
                .port(),
            keep_alive: Duration::from_secs(30),
            resend_interval: Duration::from_secs(2),
            receipt_timeout: Duration::from_secs(20),
            outbox_dir: bundle_dir.join("outbox"),
        };
        let bundle = DeviceBundle::load(&bundle_dir)?;
        let (sent, approved) = (sent.clone(), approved.clone());
        let payments = options.payments_per_terminal;
        terminals.push(tokio::spawn(async move {
            let mut results = Vec::with_capacity(payments);
            let mut agent = Agent::connect(bundle, agent_settings).await?;
            for n in 0..payments {
                // mostly small purchases; every 7th to a merchant that does not exist; the
                // wallet runs dry towards the end, so some are declined for funds
                let merchant = if n % 7 == 6 {
                    "m-closed"
                } else {
                    MERCHANTS[n % MERCHANTS.len()]
                };
                let rupees = 5 + (rand::random::<u64>() % 60);
                let amount = Money::new(rupees * 100, inr)?;
                let started = Instant::now();
                let outcome = agent.pay(&AccountId::parse(merchant)?, amount).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if matches!(&outcome, Ok(r) if r.receipt.outcome == Outcome::Approved) {
                    approved.fetch_add(1, Ordering::Relaxed);
                }
                results.push((
                    started.elapsed(),
                    outcome.map(|r| (r.receipt.outcome, r.receipt.code)),
                ));
            }
            agent.disconnect().await;
            anyhow::Ok(results)
        }));
    }

    let progress = {
        let (sent, approved) = (sent.clone(), approved.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                eprintln!(
                    "progress: {}/{total} sent, {} approved",
                    sent.load(Ordering::Relaxed),
                    approved.load(Ordering::Relaxed)
                );
            }
        })
    };

    let mut summary = DemoSummary::default();
    let mut latencies = Vec::new();
    for terminal in terminals {
        for (latency, outcome) in terminal.await.context("terminal task")?? {
            summary.sent += 1;
            latencies.push(latency.as_secs_f64() * 1000.0);
            match outcome {
                Ok((Outcome::Approved, _)) => summary.approved += 1,
                Ok((Outcome::Declined, code)) => {
                    *summary
                        .declined
                        .entry(code.unwrap_or_default())
                        .or_insert(0) += 1
                }
                Ok((Outcome::Rejected | Outcome::Challenged | Outcome::Pending, code)) => {
                    *summary
                        .rejected
                        .entry(code.unwrap_or_default())
                        .or_insert(0) += 1
                }
                Err(error) => {
                    tracing::warn!(%error, "payment failed");
                    summary.failed += 1;
                }
            }
        }
    }
    progress.abort();
    latencies.sort_by(f64::total_cmp);
    summary.latency_p50_ms = percentile(&latencies, 500);
    summary.latency_p99_ms = percentile(&latencies, 990);
    let trial = store.trial_balance().await?;
    summary.ledger_balanced = store.balances_match_postings().await?
        && trial.iter().all(|t| {
            t.balance_sum_minor == 0 && t.posting_sum_minor == 0 && t.unbalanced_transfers == 0
        });
    summary.console = console;
    if options.keep_serving {
        println!("{summary}");
        eprintln!("the gateway keeps serving (MQTT, HTTP API, console); Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
    }
    running.shutdown();
    Ok(summary)
}

/// The nearest-rank percentile of sorted samples; `permille` 500 is the median.
fn percentile(sorted: &[f64], permille: usize) -> f64 {
    match sorted.len() {
        0 => 0.0,
        len => sorted[((len - 1) * permille.min(1000) + 500) / 1000],
    }
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "== paygate demo summary ==")?;
        if let Some(console) = &self.console {
            writeln!(f, "console    {console}")?;
        }
        writeln!(f, "sent       {}", self.sent)?;
        writeln!(f, "approved   {}", self.approved)?;
        let declined: u64 = self.declined.values().sum();
        writeln!(f, "declined   {declined}")?;
        for (code, count) in &self.declined {
            writeln!(f, "  {code:<24} {count}")?;
        }
        let rejected: u64 = self.rejected.values().sum();
        writeln!(f, "rejected   {rejected}")?;
        for (code, count) in &self.rejected {
            writeln!(f, "  {code:<24} {count}")?;
        }
        writeln!(f, "no receipt {}", self.failed)?;
        writeln!(
            f,
            "latency    p50 {:.1} ms, p99 {:.1} ms",
            self.latency_p50_ms, self.latency_p99_ms
        )?;
        write!(
            f,
            "ledger     {}",
            if self.ledger_balanced {
                "balanced: every transfer sums to zero, balances match postings"
            } else {
                "NOT BALANCED"
            }
        )
    }
}
