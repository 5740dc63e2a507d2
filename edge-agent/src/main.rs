//! `paygate-agent`: the edge agent as a command, for terminals, scripts and operators.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::{AccountId, Money};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "paygate-agent",
    about = "paygate edge agent: signed payments over mutual-TLS MQTT"
)]
struct Cli {
    /// The device bundle directory written by `paygate certs issue-device`.
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// Durable outbox directory (default: BUNDLE/outbox).
    #[arg(long)]
    outbox: Option<PathBuf>,
    /// Seconds to wait for a receipt before giving up (the request stays in the outbox).
    #[arg(long, default_value_t = 30)]
    receipt_timeout_s: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pay a merchant from the device's wallet, e.g. `pay --to m-001 --amount 12.50 INR`.
    Pay {
        #[arg(long)]
        to: String,
        /// The amount as a decimal and a currency code: `--amount 12.50 INR`.
        #[arg(long, num_args = 2, value_names = ["AMOUNT", "CURRENCY"])]
        amount: Vec<String>,
    },
    /// Send again every request left in the outbox and print their receipts.
    Drain,
    /// Ask what became of one of this device's requests, by its idempotency key: prints its
    /// stored receipt, or REQUEST_UNKNOWN if the gateway never received it.
    Status {
        #[arg(long)]
        key: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let bundle = DeviceBundle::load(&cli.bundle)?;
    let settings = AgentSettings {
        host: cli.host,
        port: cli.port,
        keep_alive: Duration::from_secs(30),
        resend_interval: Duration::from_secs(3),
        receipt_timeout: Duration::from_secs(cli.receipt_timeout_s),
        outbox_dir: cli.outbox.unwrap_or_else(|| cli.bundle.join("outbox")),
    };
    let mut agent = Agent::connect(bundle, settings).await?;
    // step-up: ask the holder at the terminal (a wallet app or firmware shows its own UI)
    agent.on_challenge(Box::new(|prompt| {
        use std::io::{BufRead, Write};
        eprintln!(
            "step-up needed: {} (attempts left {})",
            prompt.message, prompt.attempts_left
        );
        let mut answers = Vec::new();
        for mechanism in &prompt.mechanisms {
            eprint!(
                "enter your {mechanism} code to pay {} to {}: ",
                prompt.amount, prompt.merchant_id
            );
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).ok()? == 0 {
                return None;
            }
            answers.push((mechanism.clone(), line.trim().to_owned()));
        }
        Some(answers)
    }));
    let receipts = match cli.command {
        Command::Pay { to, amount } => {
            let merchant = AccountId::parse(&to)?;
            let [value, currency] = <[String; 2]>::try_from(amount)
                .map_err(|_| anyhow::anyhow!("--amount takes AMOUNT CURRENCY"))?;
            let amount = Money::parse_decimal(&value, &currency).context("--amount")?;
            vec![agent.pay(&merchant, amount).await?]
        }
        Command::Drain => agent.drain_outbox().await?,
        Command::Status { key } => {
            let key = paygate_core::IdempotencyKey::parse(&key).context("--key")?;
            vec![agent.status(&key).await?]
        }
    };
    for receipt in &receipts {
        println!("{}", serde_json::to_string_pretty(&receipt.receipt)?);
        println!(
            "receipt signature verified under gateway key {}",
            agent.bundle().gateway_key_id
        );
    }
    agent.disconnect().await;
    Ok(())
}
