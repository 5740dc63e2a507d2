//! `paygate`: the gateway command. Thin glue over the paygate-gateway library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use paygate_core::audit::EventType;
use paygate_core::envelope::SigningAlgorithm;
use paygate_core::{AccountId, Currency, DeviceId, Money};
use paygate_gateway::audit::{self};
use paygate_gateway::config::Settings;
use paygate_gateway::keys::provider::KeyProvider;
use paygate_gateway::ledger::AccountKind;
use paygate_gateway::{demo, gateway, pki};
use std::path::PathBuf;

mod cli_api;
mod cli_audit;
mod cli_identity;
mod cli_wallets;
use cli_audit::{run_audit, AuditCommand};
use cli_identity::admin_event;
use cli_wallets::{open_cipher, WalletsCommand};

#[derive(Parser)]
#[command(
    name = "paygate",
    about = "paygate: MQTT edge gateway for POS terminals and mobile wallets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// parsed once at start; boxing variants would only add noise
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway (production entry).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start a gateway and simulated terminals on embedded defaults; print a summary.
    Demo {
        #[arg(long, default_value = "paygate-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        terminals: usize,
        #[arg(long, default_value_t = 25)]
        payments: usize,
        /// After the summary, keep the gateway and its console up until Ctrl-C.
        #[arg(long)]
        keep_serving: bool,
    },
    /// Measure throughput and latency on 127.0.0.1 against the references of the same run
    /// (mosquitto, pgbench); prints one table (docs/benchmarks.md).
    Bench {
        /// Where the bench makes its data directories (afresh each run).
        #[arg(long, default_value = "paygate-bench")]
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        terminals: usize,
        /// Requests each terminal keeps in flight (closed loop).
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// Offer a fixed rate instead (open loop), requests per second over all terminals.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long, default_value_t = 3)]
        warmup_s: u64,
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Historical payments put on the ledger before a second run.
        #[arg(long, default_value_t = 0)]
        preload: u64,
        /// An admin URL of a PostgreSQL server (default: $PAYGATE_TEST_PG_URL when set).
        #[arg(long)]
        postgres_url: Option<String>,
        /// Skip the mosquitto reference.
        #[arg(long)]
        no_mosquitto: bool,
        /// Idle connections held after the load to report memory per connection.
        #[arg(long, default_value_t = 0)]
        idle_connections: usize,
        /// Keep reward points on, as the default configuration has them (every payment earns).
        #[arg(long)]
        reward_points: bool,
        /// Add the flood scenario: one terminal far over its admission limits while the others
        /// pay one at a time; their p99 before, during and after.
        #[arg(long)]
        flood: bool,
        /// A short run for CI: 8 terminals, 1 s warm-up, 2 s measured, 1,000 preloaded.
        #[arg(long)]
        smoke: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The development PKI (CA, server certificate, device bundles, CRL).
    Certs {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Device enrolment.
    Devices {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: cli_api::Remote,
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Ledger operations for development and operators.
    Ledger {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: cli_api::Remote,
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Wallet holders' personal data (encrypted at rest; shown masked).
    Wallets {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: WalletsCommand,
    },
    /// The HTTP API's development token issuer (made by `certs init`).
    Api {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ApiCommand,
    },
    /// Envelope-encryption keys.
    Keys {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        remote: cli_api::Remote,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The auditor's tools: verify an exported audit archive, prove a transaction's records,
    /// search and export. They work offline from a copy and the audit public key alone.
    Audit {
        /// The gateway's configuration: when given, this read of the audit log is itself
        /// recorded in the audit log (PCI DSS 10.2.1.3), and `fetch` reads its store.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Who is reading (recorded with --config, followed by the OS account running it).
        #[arg(long)]
        operator: Option<String>,
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Print a bearer token signed by the development issuer, e.g. `--sub auditor-1 --scope
    /// audit:read`, `--sub wallet-1 --scope wallet` for a holder's own wallet, or `--sub alice
    /// --roles finance --second-factor` for an operator who just signed in with two factors.
    Token {
        #[arg(long)]
        sub: String,
        /// Space-separated: wallet, wallets:read, wallets:write, audit:read.
        #[arg(long, default_value = "")]
        scope: String,
        #[arg(long, default_value_t = 900)]
        lifetime_s: u64,
        /// Operator roles, space- or comma-separated: operator, finance, security.
        #[arg(long, default_value = "")]
        roles: String,
        /// The token says its holder signed in just now with a password and a one-time code
        /// (`amr` pwd otp, `auth_time` now), as operator calls need.
        #[arg(long)]
        second_factor: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rewrap every data key under a new key-encryption key, without touching the fields:
    /// local: a new KEK file becomes active; AWS KMS: `--to-kms-key` (then set keys.kms_key_id).
    Rotate {
        #[arg(long)]
        to_kms_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    PrintDefault,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a development CA, the gateway's server certificate and receipt key, and a CRL.
    Init {
        /// Names the server certificate is valid for.
        #[arg(long, default_values = ["localhost", "127.0.0.1"])]
        server_name: Vec<String>,
    },
    /// Make a device bundle: TLS key and client certificate, signing key, enrolment record.
    IssueDevice {
        id: String,
        #[arg(long)]
        wallet: Option<String>,
        #[arg(long, default_value = "ed25519")]
        algorithm: String,
    },
    /// Revoke a device's certificate (rewrites the CRL; the gateway reads CRLs at start).
    Revoke { id: String },
    /// Make the gateway's client certificate for an external broker, under a CA of its own
    /// that the broker's gateway listener trusts (deploy/mosquitto/).
    IssueBrokerClient {
        /// The certificate's common name: the gateway's user name at the broker.
        #[arg(long, default_value = "paygate-gateway")]
        name: String,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Enrol a device from its bundle's enrolment.json; opens its wallet if needed (locally;
    /// through --api the wallet must exist).
    Enrol {
        id: String,
        #[arg(long, default_value = "INR")]
        currency: String,
    },
    /// Suspend a device: its requests are refused from the next one on (--api only).
    Suspend { id: String },
    /// Make a suspended device active again (--api only).
    Resume { id: String },
    /// Revoke a device for good: its sessions close now and it never connects again under
    /// this id (--api only).
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Open a merchant account, with the category reward rules match on and its public UPI
    /// address.
    OpenMerchant {
        id: String,
        currency: String,
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        vpa: Option<String>,
    },
    /// Open a cash-in/cash-out agent's float account (enrol the agent's terminal on it).
    OpenAgent { id: String, currency: String },
    /// Set a wallet's KYC tier: `min` or `full`.
    SetTier { wallet: String, tier: String },
    /// The outstanding reward points liability, as JSON.
    RewardsReport,
    /// UPI reversals and refunds through the network, and those not confirmed by T+1, as JSON.
    UpiReport,
    /// Fund a wallet from the issuance account, e.g. `fund wallet-1 500.00 INR`.
    Fund {
        wallet: String,
        amount: String,
        currency: String,
    },
    /// Check that the books balance.
    Check,
    /// Approve another finance operator's funding (--api only).
    ApproveFunding {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject a funding waiting for approval (--api only).
    RejectFunding {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// A funding and its state (--api only).
    Funding { id: String },
    /// The limits and rules in force (--api only).
    Limits,
}

fn pki_dir(settings: &Settings) -> PathBuf {
    settings.data_dir.join("pki")
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // rumqttd logs ordinary disconnects at ERROR; the front logs what matters about devices
    let default_filter = match cli.command {
        Command::Demo { .. } | Command::Bench { .. } => "warn,rumqttd=off",
        _ => "info,rumqttd=warn",
    };
    // logs go to standard error: standard output is the commands' answer (scripts read it)
    // and at most a burst of lines per place in the code per window (paygate_gateway::logs)
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::{filter::FilterExt, Layer};
        let levels = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| default_filter.into());
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(levels.and(paygate_gateway::logs::RepeatLimit::on_stderr())),
            )
            .init();
    }
    match cli.command {
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())?;
            let settings_host_port = (
                settings.broker.external.host.clone(),
                settings.broker.external.port,
            );
            let running = gateway::start(settings).await?;
            match running.mqtt_address {
                Some(address) => println!("paygate listening for devices on {address}"),
                None => println!(
                    "paygate consuming device requests from the broker at {}:{}",
                    settings_host_port.0, settings_host_port.1
                ),
            }
            // Ctrl-C by hand, SIGTERM from Kubernetes or systemd
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let pipeline_failed = tokio::select! {
                _ = tokio::signal::ctrl_c() => false,
                _ = terminate.recv() => false,
                _ = running.wait_pipeline_ended() => true,
            };
            tracing::info!("stopping: no new device connections");
            running.stop().await;
            if pipeline_failed {
                // decided requests are durable; the supervisor restarts a whole gateway
                bail!("the request pipeline stopped; exiting so the supervisor restarts paygate");
            }
        }
        Command::Demo {
            data_dir,
            terminals,
            payments,
            keep_serving,
        } => {
            let summary = demo::run(demo::DemoOptions {
                data_dir,
                terminals,
                payments_per_terminal: payments,
                keep_serving,
            })
            .await?;
            if !keep_serving {
                println!("{summary}");
            }
            if !summary.ledger_balanced {
                bail!("the ledger does not balance");
            }
        }
        Command::Bench {
            dir,
            terminals,
            inflight,
            rate,
            warmup_s,
            duration_s,
            preload,
            postgres_url,
            no_mosquitto,
            idle_connections,
            reward_points,
            flood,
            smoke,
        } => {
            let mut options = paygate_gateway::bench::BenchOptions {
                dir,
                terminals,
                mode: match rate {
                    Some(rate_per_s) => paygate_gateway::bench::LoadMode::Open { rate_per_s },
                    None => paygate_gateway::bench::LoadMode::Closed { inflight },
                },
                warmup: std::time::Duration::from_secs(warmup_s),
                duration: std::time::Duration::from_secs(duration_s),
                preload,
                postgres_url: postgres_url.or_else(|| std::env::var("PAYGATE_TEST_PG_URL").ok()),
                mosquitto: !no_mosquitto,
                idle_connections,
                reward_points,
                flood,
            };
            if smoke {
                options.terminals = 8;
                options.warmup = std::time::Duration::from_secs(1);
                options.duration = std::time::Duration::from_secs(2);
                options.preload = 1_000;
                options.idle_connections = 8;
            }
            let rows = paygate_gateway::bench::run(options.clone()).await?;
            println!("{}", paygate_gateway::bench::table(&rows, &options));
            let approved: u64 = rows
                .iter()
                .filter(|r| r.name.starts_with("paygate"))
                .filter_map(|r| r.outcomes.as_ref())
                .map(|o| o.approved)
                .sum();
            if approved == 0 {
                bail!("no payment was approved in the bench");
            }
        }
        Command::Config {
            command: ConfigCommand::PrintDefault,
        } => print!("{}", Settings::default_file()),
        Command::Api {
            config,
            command:
                ApiCommand::Token {
                    sub,
                    scope,
                    lifetime_s,
                    roles,
                    second_factor,
                },
        } => {
            let roles: Vec<&str> = roles.split([' ', ',']).filter(|r| !r.is_empty()).collect();
            let now_s = paygate_gateway::clock::now_ms() / 1_000;
            let settings = Settings::load(config.as_deref())?;
            let jwt = &settings.http.jwt;
            let token = paygate_gateway::http::dev_issuer::token(
                &pki_dir(&settings),
                &paygate_gateway::http::dev_issuer::TokenAsk {
                    issuer: &jwt.issuer,
                    audience: &jwt.audience,
                    subject: &sub,
                    scope: &scope,
                    lifetime_s,
                    roles: &roles,
                    second_factor_at_s: second_factor.then_some(now_s),
                },
            )?;
            println!("{token}");
        }
        Command::Certs { config, command } => {
            let settings = Settings::load(config.as_deref())?;
            let dir = pki_dir(&settings);
            match command {
                CertsCommand::Init { server_name } => {
                    pki::init(&dir, &server_name, &settings.receipts.key_id)?;
                    audit::load_or_make_key(
                        &settings.resolve(&settings.audit.signing_key),
                        &settings.audit.key_id,
                    )?;
                    println!("development PKI written to {}", dir.display());
                    admin_event(
                        &settings,
                        EventType::CredentialChanged,
                        "pki",
                        "development CA, server certificate, receipt and audit keys made",
                    )
                    .await?;
                }
                CertsCommand::IssueDevice {
                    id,
                    wallet,
                    algorithm,
                } => {
                    let device = DeviceId::parse(&id)?;
                    let wallet =
                        AccountId::parse(&wallet.unwrap_or_else(|| format!("wallet-{id}")))?;
                    let algorithm = SigningAlgorithm::parse(&algorithm)
                        .context("--algorithm is ed25519 or es256")?;
                    pki::issue_device(&dir, &device, &wallet, algorithm)?;
                    println!(
                        "device bundle written to {}",
                        pki::device_dir(&dir, &device).display()
                    );
                    admin_event(
                        &settings,
                        EventType::CredentialChanged,
                        &format!("device:{device}"),
                        "device certificate and signing key issued",
                    )
                    .await?;
                }
                CertsCommand::IssueBrokerClient { name } => {
                    pki::broker_client::issue(&dir, &name)?;
                    println!(
                        "broker client certificate for {name} written to {}",
                        dir.display()
                    );
                    admin_event(
                        &settings,
                        EventType::CredentialChanged,
                        &format!("broker-client:{name}"),
                        "gateway client certificate for the external broker issued",
                    )
                    .await?;
                }
                CertsCommand::Revoke { id } => {
                    pki::revoke_device(&dir, &DeviceId::parse(&id)?)?;
                    println!("revoked {id}; restart the gateway to load the new CRL");
                    admin_event(
                        &settings,
                        EventType::CredentialChanged,
                        &format!("device:{id}"),
                        "device certificate revoked",
                    )
                    .await?;
                }
            }
        }
        Command::Devices {
            config,
            remote,
            command,
        } => {
            let settings = Settings::load(config.as_deref())?;
            if let Some(api) = remote.connect(&settings)? {
                return cli_api::devices(&api, &settings, &command).await;
            }
            let DevicesCommand::Enrol { id, currency } = command else {
                bail!("suspend, resume and revoke go through the operator API: give --api");
            };
            cli_identity::local_bootstrap(&settings)?;
            let store = paygate_gateway::audit::open_store(&settings, 1).await?;
            let currency = Currency::parse(&currency).context("unknown currency")?;
            let wallet = demo::enrol_from_bundle(
                &store,
                &pki_dir(&settings),
                &DeviceId::parse(&id)?,
                currency,
            )
            .await?;
            println!("enrolled {id} with wallet {wallet}");
            admin_event(
                &settings,
                EventType::DeviceEnrolled,
                &format!("device:{id}"),
                &format!("enrolled with wallet {wallet}"),
            )
            .await?;
        }
        Command::Ledger {
            config,
            remote,
            command,
        } => {
            let settings = Settings::load(config.as_deref())?;
            if let Some(api) = remote.connect(&settings)? {
                return cli_api::ledger(&api, &command).await;
            }
            if !matches!(
                command,
                LedgerCommand::RewardsReport | LedgerCommand::UpiReport | LedgerCommand::Check
            ) {
                cli_identity::local_bootstrap(&settings)?;
            }
            let store = paygate_gateway::audit::open_store(&settings, 1).await?;
            let now = paygate_gateway::clock::now_ms();
            match command {
                LedgerCommand::OpenMerchant {
                    id,
                    currency,
                    category,
                    vpa,
                } => {
                    let currency = Currency::parse(&currency).context("unknown currency")?;
                    let account = AccountId::parse(&id)?;
                    store
                        .open_with(
                            &paygate_gateway::ledger::NewAccount {
                                account_id: account.clone(),
                                kind: AccountKind::Merchant,
                                unit: currency.code().to_owned(),
                                kyc_tier: None,
                                category: category.clone(),
                                owner: None,
                            },
                            now,
                        )
                        .await?;
                    if let Some(vpa) = &vpa {
                        let vpa = paygate_core::payer::Vpa::parse(vpa)
                            .map_err(|e| anyhow::anyhow!("--vpa: {e}"))?;
                        store.register_merchant_vpa(&vpa, &account).await?;
                    }
                    admin_event(
                        &settings,
                        EventType::AdminAction,
                        &format!("account:{id}"),
                        &format!(
                            "merchant account opened in {currency}, category {}, vpa {}",
                            category.as_deref().unwrap_or("-"),
                            vpa.as_deref().unwrap_or("-")
                        ),
                    )
                    .await?;
                }
                LedgerCommand::OpenAgent { id, currency } => {
                    let currency = Currency::parse(&currency).context("unknown currency")?;
                    store
                        .open_account(&AccountId::parse(&id)?, AccountKind::Agent, currency, now)
                        .await?;
                    admin_event(
                        &settings,
                        EventType::AdminAction,
                        &format!("account:{id}"),
                        &format!("agent float account opened in {currency}"),
                    )
                    .await?;
                }
                LedgerCommand::SetTier { wallet, tier } => {
                    let tier = paygate_gateway::ledger::KycTier::parse(&tier)
                        .context("tier must be min or full")?;
                    let mut batch = store.begin_batch().await?;
                    paygate_gateway::ledger::set_kyc_tier(
                        &mut batch,
                        &AccountId::parse(&wallet)?,
                        tier,
                    )
                    .await?;
                    batch.commit().await?;
                    admin_event(
                        &settings,
                        EventType::AdminAction,
                        &format!("account:{wallet}"),
                        &format!("KYC tier set to {}", tier.as_str()),
                    )
                    .await?;
                }
                LedgerCommand::UpiReport => {
                    let now = paygate_gateway::clock::now_ms();
                    let report = paygate_gateway::upi::repo::report(&store, now).await?;
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                LedgerCommand::RewardsReport => {
                    let report =
                        paygate_gateway::rewards::liability_report(&store, &settings.rewards)
                            .await?;
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                LedgerCommand::Fund {
                    wallet,
                    amount,
                    currency,
                } => {
                    let tx = paygate_gateway::products::wallet::fund(
                        &store,
                        &settings.wallet,
                        &AccountId::parse(&wallet)?,
                        Money::parse_decimal(&amount, &currency)?,
                        now,
                    )
                    .await?;
                    println!("funded {wallet}: {tx}");
                    admin_event(
                        &settings,
                        EventType::AdminAction,
                        &format!("account:{wallet}"),
                        &format!("funded {amount} {currency} by transfer {tx}"),
                    )
                    .await?;
                }
                LedgerCommand::Check => {
                    for line in store.trial_balance().await? {
                        println!("{line:?}");
                    }
                    println!(
                        "balances match postings: {}",
                        store.balances_match_postings().await?
                    );
                }
                LedgerCommand::ApproveFunding { .. }
                | LedgerCommand::RejectFunding { .. }
                | LedgerCommand::Funding { .. }
                | LedgerCommand::Limits => {
                    bail!("approvals and views go through the operator API: give --api")
                }
            }
        }
        Command::Audit {
            config,
            operator,
            command,
        } => return run_audit(config, operator, command).await,
        Command::Wallets { config, command } => cli_wallets::run(config, command).await?,
        Command::Keys {
            config,
            remote,
            command,
        } => {
            let settings = Settings::load(config.as_deref())?;
            if let Some(api) = remote.connect(&settings)? {
                return cli_api::keys(&api, &command).await;
            }
            let KeysCommand::Rotate { to_kms_key } = command;
            cli_identity::local_bootstrap(&settings)?;
            let (_store, cipher) = open_cipher(&settings).await?;
            if let KeyProvider::Local(keyring) = cipher.provider() {
                let id = keyring.rotate()?;
                println!("new local key-encryption key {id} is active");
            } else if to_kms_key.is_none() {
                bail!("with keys.provider = \"aws_kms\", name the new key with --to-kms-key");
            }
            let count = cipher.rewrap_all(to_kms_key.as_deref()).await?;
            println!("rewrapped {count} data keys; no field was decrypted");
            admin_event(
                &settings,
                EventType::KeyOperation,
                "data_keys",
                &format!("key-encryption key rotated; {count} data keys rewrapped"),
            )
            .await?;
        }
    }
    Ok(())
}
