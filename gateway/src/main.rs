//! `paygate`: the gateway command. Thin glue over the paygate-gateway library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use paygate_core::envelope::SigningAlgorithm;
use paygate_core::{AccountId, Currency, DeviceId, Money};
use paygate_gateway::config::Settings;
use paygate_gateway::store::{AccountKind, Store};
use paygate_gateway::{demo, gateway, pki};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "paygate",
    about = "paygate: MQTT edge gateway for POS terminals and mobile wallets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Ledger operations for development and operators.
    Ledger {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: LedgerCommand,
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
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Enrol a device from its bundle's enrolment.json; opens its wallet if needed.
    Enrol {
        id: String,
        #[arg(long, default_value = "INR")]
        currency: String,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Open a merchant account.
    OpenMerchant { id: String, currency: String },
    /// Fund a wallet from the issuance account, e.g. `fund wallet-1 500.00 INR`.
    Fund {
        wallet: String,
        amount: String,
        currency: String,
    },
    /// Check that the books balance.
    Check,
}

fn pki_dir(settings: &Settings) -> PathBuf {
    settings.data_dir.join("pki")
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // rumqttd logs ordinary disconnects at ERROR; the front logs what matters about devices
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn,rumqttd=off",
        _ => "info,rumqttd=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    match cli.command {
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())?;
            let running = gateway::start(settings).await?;
            println!("paygate listening for devices on {}", running.mqtt_address);
            // Ctrl-C by hand, SIGTERM from Kubernetes or systemd
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("stopping: no new device connections");
            running.shutdown();
        }
        Command::Demo {
            data_dir,
            terminals,
            payments,
        } => {
            let summary = demo::run(demo::DemoOptions {
                data_dir,
                terminals,
                payments_per_terminal: payments,
            })
            .await?;
            println!("{summary}");
            if !summary.ledger_balanced {
                bail!("the ledger does not balance");
            }
        }
        Command::Config {
            command: ConfigCommand::PrintDefault,
        } => print!("{}", Settings::default_file()),
        Command::Certs { config, command } => {
            let settings = Settings::load(config.as_deref())?;
            let dir = pki_dir(&settings);
            match command {
                CertsCommand::Init { server_name } => {
                    pki::init(&dir, &server_name, &settings.receipts.key_id)?;
                    println!("development PKI written to {}", dir.display());
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
                }
                CertsCommand::Revoke { id } => {
                    pki::revoke_device(&dir, &DeviceId::parse(&id)?)?;
                    println!("revoked {id}; restart the gateway to load the new CRL");
                }
            }
        }
        Command::Devices {
            config,
            command: DevicesCommand::Enrol { id, currency },
        } => {
            let settings = Settings::load(config.as_deref())?;
            let store = Store::open(&settings.database_url(), 1).await?;
            let currency = Currency::parse(&currency).context("unknown currency")?;
            let wallet = demo::enrol_from_bundle(
                &store,
                &pki_dir(&settings),
                &DeviceId::parse(&id)?,
                currency,
            )
            .await?;
            println!("enrolled {id} with wallet {wallet}");
        }
        Command::Ledger { config, command } => {
            let settings = Settings::load(config.as_deref())?;
            let store = Store::open(&settings.database_url(), 1).await?;
            let now = paygate_gateway::pipeline::now_ms();
            match command {
                LedgerCommand::OpenMerchant { id, currency } => {
                    let currency = Currency::parse(&currency).context("unknown currency")?;
                    store
                        .open_account(
                            &AccountId::parse(&id)?,
                            AccountKind::Merchant,
                            currency,
                            now,
                        )
                        .await?;
                }
                LedgerCommand::Fund {
                    wallet,
                    amount,
                    currency,
                } => {
                    let tx = store
                        .fund_wallet(
                            &AccountId::parse(&wallet)?,
                            Money::parse_decimal(&amount, &currency)?,
                            now,
                        )
                        .await?;
                    println!("funded {wallet}: {tx}");
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
            }
        }
    }
    Ok(())
}
