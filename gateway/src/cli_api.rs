//! The CLI's commands that change money, devices or keys, as clients of the operator API
//! (`--api https://host:port`): the gateway checks the operator's token (role, second factor)
//! and records the change as `operator:<sub>`. Without `--api` they write the database directly:
//! the local bootstrap mode, for the first operator before any gateway serves, recorded as the
//! OS account that ran them (docs/http-api.md).

use crate::{DevicesCommand, KeysCommand, LedgerCommand};
use anyhow::{bail, Context, Result};
use paygate_gateway::config::Settings;
use paygate_gateway::http::client::ApiClient;
use serde_json::{json, Value};
use std::path::PathBuf;

/// How a command reaches the operator API.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Remote {
    /// Go through the gateway's operator API at this address (https://host:port) instead of
    /// writing the database directly (the local bootstrap mode).
    #[arg(long)]
    pub api: Option<String>,
    /// A file holding the operator's bearer token (default: $PAYGATE_API_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The CA the API's server certificate chains to (default: the development CA).
    #[arg(long)]
    pub api_ca: Option<PathBuf>,
    /// The write's Idempotency-Key (default: a new one, printed): to retry a command whose
    /// answer was lost, give the key it printed; the gateway answers the first answer again.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// A connection to the operator API, with the operator's token.
pub struct Api {
    client: ApiClient,
    token: String,
    key: String,
}

impl Remote {
    /// The API to go through, `None` in the local bootstrap mode.
    pub fn connect(&self, settings: &Settings) -> Result<Option<Api>> {
        let Some(url) = &self.api else {
            return Ok(None);
        };
        let token = match &self.token_file {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("reading the token file {}", file.display()))?,
            None => std::env::var("PAYGATE_API_TOKEN")
                .context("--api needs the operator's token: --token-file, or $PAYGATE_API_TOKEN")?,
        };
        let ca = self
            .api_ca
            .clone()
            .unwrap_or_else(|| settings.data_dir.join("pki").join("ca.cert.pem"));
        Ok(Some(Api {
            client: ApiClient::new(url, &ca)?,
            token: token.trim().to_owned(),
            key: self
                .idempotency_key
                .clone()
                .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4())),
        }))
    }
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let bearer = format!("Bearer {}", self.token);
        let body = body.map(|b| b.to_string());
        let mut headers = vec![("authorization", bearer.as_str())];
        if body.is_some() {
            headers.push(("idempotency-key", self.key.as_str()));
            eprintln!("Idempotency-Key: {}", self.key);
        }
        let reply = self
            .client
            .send(method, path, &headers, body.as_deref().map(str::as_bytes))
            .await?;
        let answer = reply.json();
        if reply.status >= 400 {
            let error = &answer["error"];
            bail!(
                "{} ({}): {}",
                error["code"].as_str().unwrap_or("HTTP_ERROR"),
                reply.status,
                error["message"].as_str().unwrap_or_default()
            );
        }
        Ok(answer)
    }

    async fn print(&self, method: &str, path: &str, body: Option<Value>) -> Result<()> {
        let answer = self.call(method, path, body).await?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        Ok(())
    }
}

/// A decimal amount (`500.00`) in minor units of `currency`.
fn minor_units(amount: &str, currency: &str) -> Result<i64> {
    let money = paygate_core::Money::parse_decimal(amount, currency)?;
    Ok(money.minor_signed())
}

pub async fn ledger(api: &Api, command: &LedgerCommand) -> Result<()> {
    match command {
        LedgerCommand::OpenMerchant {
            id,
            currency,
            category,
            vpa,
        } => {
            let mut body = json!({"merchant_id": id, "currency": currency});
            if let Some(category) = category {
                body["category"] = json!(category);
            }
            if let Some(vpa) = vpa {
                body["vpa"] = json!(vpa);
            }
            api.print("POST", "/v1/ops/merchants", Some(body)).await
        }
        LedgerCommand::OpenAgent { id, currency } => {
            let body = json!({"agent_id": id, "currency": currency});
            api.print("POST", "/v1/ops/agents", Some(body)).await
        }
        LedgerCommand::SetTier { wallet, tier } => {
            let path = format!("/v1/ops/wallets/{wallet}/kyc-tier");
            api.print("PUT", &path, Some(json!({"kyc_tier": tier})))
                .await
        }
        LedgerCommand::Fund {
            wallet,
            amount,
            currency,
        } => {
            let body = json!({"wallet_id": wallet, "amount_minor": minor_units(amount, currency)?, "currency": currency});
            let answer = api.call("POST", "/v1/ops/fundings", Some(body)).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            if answer["state"] == "awaiting_approval" {
                eprintln!(
                    "funding {} waits for a second finance operator: paygate ledger --api ... approve-funding {}",
                    answer["funding_id"].as_str().unwrap_or_default(),
                    answer["funding_id"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        LedgerCommand::ApproveFunding { id, reason }
        | LedgerCommand::RejectFunding { id, reason } => {
            let verb = if matches!(command, LedgerCommand::ApproveFunding { .. }) {
                "approve"
            } else {
                "reject"
            };
            let mut body = json!({});
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            api.print("POST", &format!("/v1/ops/fundings/{id}/{verb}"), Some(body))
                .await
        }
        LedgerCommand::Funding { id } => {
            api.print("GET", &format!("/v1/ops/fundings/{id}"), None)
                .await
        }
        LedgerCommand::Limits => api.print("GET", "/v1/ops/limits", None).await,
        LedgerCommand::RewardsReport | LedgerCommand::UpiReport | LedgerCommand::Check => {
            bail!("this report reads the database: run it without --api, on the gateway's host")
        }
    }
}

pub async fn devices(api: &Api, settings: &Settings, command: &DevicesCommand) -> Result<()> {
    match command {
        DevicesCommand::Enrol { id, .. } => {
            let device = paygate_core::DeviceId::parse(id)?;
            let dir = paygate_gateway::pki::device_dir(&settings.data_dir.join("pki"), &device);
            let enrolment = paygate_gateway::pki::read_enrolment(&dir.join("enrolment.json"))?;
            let body = json!({
                "device_id": id,
                "account_id": enrolment.wallet_id,
                "algorithm": enrolment.algorithm,
                "public_key": enrolment.public_key,
            });
            api.print("POST", "/v1/ops/devices", Some(body)).await
        }
        DevicesCommand::Suspend { id } | DevicesCommand::Resume { id } => {
            let status = if matches!(command, DevicesCommand::Suspend { .. }) {
                "suspended"
            } else {
                "active"
            };
            let path = format!("/v1/ops/devices/{id}/status");
            api.print("PUT", &path, Some(json!({"status": status})))
                .await
        }
        DevicesCommand::Revoke { id, reason } => {
            let mut body = json!({});
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            api.print("POST", &format!("/v1/ops/devices/{id}/revoke"), Some(body))
                .await
        }
    }
}

pub async fn keys(api: &Api, command: &KeysCommand) -> Result<()> {
    let KeysCommand::Rotate { to_kms_key } = command;
    let mut body = json!({});
    if let Some(key) = to_kms_key {
        body["to_kms_key"] = json!(key);
    }
    api.print("POST", "/v1/ops/keys/rotate", Some(body)).await
}
