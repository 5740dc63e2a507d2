//! `paygate wallets`: wallet holders' personal data, encrypted at rest and shown masked.

use crate::cli_identity::admin_event;
use anyhow::{bail, Result};
use clap::Subcommand;
use paygate_core::audit::EventType;
use paygate_core::AccountId;
use paygate_gateway::config::Settings;
use paygate_gateway::keys::cipher::FieldCipher;
use paygate_gateway::keys::provider::KeyProvider;
use paygate_gateway::profiles;
use paygate_gateway::store::Store;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum WalletsCommand {
    /// Store (encrypted) the holder's name, phone and UPI address; `--new-totp` also makes a
    /// TOTP secret and prints it once, for the holder's authenticator.
    SetProfile {
        wallet: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        phone: String,
        #[arg(long)]
        vpa: String,
        #[arg(long)]
        new_totp: bool,
    },
    /// The wallet of a holder, found by phone or VPA (blind index).
    Find {
        #[arg(long)]
        phone: Option<String>,
        #[arg(long)]
        vpa: Option<String>,
    },
    /// A holder's profile, decrypted and shown masked (the access is audited).
    Show { wallet: String },
    /// Set the holder's PIN for step-up, read from standard input (stored as an Argon2id hash).
    SetPin { wallet: String },
}

pub async fn run(config: Option<PathBuf>, command: WalletsCommand) -> Result<()> {
    let settings = Settings::load(config.as_deref())?;
    let (store, cipher) = open_cipher(&settings).await?;
    match command {
        WalletsCommand::SetProfile {
            wallet,
            name,
            phone,
            vpa,
            new_totp,
        } => {
            let wallet = AccountId::parse(&wallet)?;
            let secret = new_totp.then(rand::random::<[u8; 20]>);
            let profile = profiles::WalletProfile { name, phone, vpa };
            profiles::save(
                &cipher,
                store.pool(),
                &wallet,
                &profile,
                secret.as_ref().map(|s| &s[..]),
            )
            .await?;
            println!("profile of {wallet} stored, encrypted");
            if let Some(secret) = secret {
                // shown once, for the holder's authenticator app; never stored in clear
                println!(
                    "TOTP secret (base32, shown once): {}",
                    data_encoding::BASE32_NOPAD.encode(&secret)
                );
            }
            admin_event(
                &settings,
                EventType::AdminAction,
                &format!("account:{wallet}"),
                "wallet profile stored (encrypted)",
            )
            .await?;
        }
        WalletsCommand::Find { phone, vpa } => {
            match profiles::find(&cipher, store.pool(), phone.as_deref(), vpa.as_deref()).await? {
                Some(wallet) => println!("{wallet}"),
                None => bail!("no wallet holder matches"),
            }
            admin_event(
                &settings,
                EventType::DataAccessed,
                "wallet_profiles",
                "lookup by blind index",
            )
            .await?;
        }
        WalletsCommand::SetPin { wallet } => {
            let wallet = AccountId::parse(&wallet)?;
            let mut pin = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut pin)?;
            paygate_gateway::identity::set_pin(
                store.pool(),
                &wallet,
                pin.trim(),
                paygate_gateway::clock::now_ms(),
            )
            .await?;
            println!("PIN of {wallet} set (Argon2id hash)");
            admin_event(
                &settings,
                EventType::CredentialChanged,
                &format!("account:{wallet}"),
                "customer PIN set",
            )
            .await?;
        }
        WalletsCommand::Show { wallet } => {
            let wallet = AccountId::parse(&wallet)?;
            admin_event(
                &settings,
                EventType::DataAccessed,
                &format!("account:{wallet}"),
                "wallet profile decrypted and shown masked",
            )
            .await?;
            match profiles::show(&cipher, store.pool(), &wallet).await? {
                Some(p) => println!(
                    "{} name {} phone {} vpa {} totp {}",
                    p.wallet,
                    p.name,
                    p.phone,
                    p.vpa,
                    if p.has_totp_secret { "set" } else { "none" }
                ),
                None => bail!("no profile for {wallet}"),
            }
        }
    }
    Ok(())
}

pub async fn open_cipher(settings: &Settings) -> Result<(Store, FieldCipher)> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let store = paygate_gateway::audit::open_store(settings, 2).await?;
    let provider = KeyProvider::from_settings(&settings.keys, &settings.data_dir).await?;
    let cipher = FieldCipher::new(provider, store.pool().clone(), settings.keys.clone());
    Ok((store, cipher))
}
