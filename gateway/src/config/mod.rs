//! Configuration: defaults, then a TOML file, then `PAYGATE__SECTION__KEY` environment
//! overrides, parsed strictly (unknown keys are errors) and then validated into [`Settings`]
//! before anything starts.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod audit;
mod broker;
mod http;
pub use audit::{
    AuditSettings, AuditStoreKind, LocalWormSettings, S3WormSettings, WitnessSettings,
    WitnessStoreKind,
};
pub use broker::{BrokerMode, BrokerSettings, ExternalBrokerSettings};
pub use http::{HttpSettings, JwtSettings, OperatorSettings, JWT_ALGORITHMS};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the database, the development PKI and keys live. Relative paths below are
    /// resolved against it.
    pub data_dir: PathBuf,
    pub mqtt: MqttSettings,
    pub broker: BrokerSettings,
    pub tls: TlsSettings,
    pub pipeline: PipelineSettings,
    pub database: DatabaseSettings,
    pub receipts: ReceiptSettings,
    pub audit: AuditSettings,
    pub keys: KeySettings,
    pub identity: IdentitySettings,
    pub wallet: WalletSettings,
    pub rewards: RewardsSettings,
    pub upi: UpiSettings,
    pub http: HttpSettings,
}

/// UPI through the `UpiSwitch` connector (the sandbox switch ships with paygate). Timers follow
/// NPCI's (../shared/DOMAIN.md): pay 15 s, status check 10 s; an unanswered pay is PENDING and
/// resolved by status checks (the first after 45-90 s, at most 3 within 2 h) or a reversal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpiSettings {
    pub enabled: bool,
    pub currency: String,
    /// The UPI limit per transaction (1 lakh INR standard).
    pub per_transaction_max_minor: i64,
    /// Higher limits per transaction for merchant categories NPCI allows them (5 lakh INR for
    /// education, hospitals, insurance, capital markets, tax): category -> limit.
    pub category_per_transaction_max_minor: std::collections::BTreeMap<String, i64>,
    pub pay_timeout_ms: u64,
    pub status_timeout_ms: u64,
    pub first_status_check_ms: u64,
    pub status_check_interval_ms: u64,
    /// Status checks before the gateway gives up, asks for a reversal and declines.
    pub status_checks_max: u32,
    /// How long the sandbox switch sits on a payment whose scenario is a timeout.
    pub sandbox_delay_ms: u64,
    /// Payments waiting between the pipeline and the UPI worker.
    pub handoff_queue_max: usize,
    /// Added to a call's own timeout in the lease a worker takes on a payment it sends or
    /// checks: covers clock skew between replicas and scheduling delay. A lease run out means
    /// the worker is gone; another resolves the payment.
    pub lease_margin_ms: u64,
    /// How long a pay call is still listened to after its timer ran out: an answer in that
    /// time resolves a payment still being checked, or is kept as a disagreement to reconcile.
    pub late_answer_window_ms: u64,
}

impl Default for UpiSettings {
    fn default() -> Self {
        UpiSettings {
            enabled: true,
            currency: "INR".into(),
            per_transaction_max_minor: 100_000 * 100,
            category_per_transaction_max_minor: [
                "education",
                "hospital",
                "insurance",
                "capital_markets",
                "tax",
            ]
            .into_iter()
            .map(|category| (category.to_owned(), 500_000 * 100))
            .collect(),
            pay_timeout_ms: 15_000,
            status_timeout_ms: 10_000,
            first_status_check_ms: 60_000,
            status_check_interval_ms: 1_800_000,
            status_checks_max: 3,
            sandbox_delay_ms: 30_000,
            handoff_queue_max: 1_024,
            lease_margin_ms: 5_000,
            late_answer_window_ms: 120_000,
        }
    }
}

/// Reward points (../shared/DOMAIN.md): earned on qualifying purchases, pending then active,
/// expiring first-in-first-out by lot, redeemable as tender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardsSettings {
    pub enabled: bool,
    /// The first rule whose categories include the merchant's (or that names none) applies.
    pub rules: Vec<EarnRule>,
    /// Earned points wait this long before they can be redeemed (the return window).
    pub pending_ms: u64,
    /// Points expire this long after they were earned.
    pub expiry_ms: u64,
    /// What one point is worth as tender, in minor units of `currency`.
    pub point_value_minor: i64,
    pub currency: String,
    /// How often the activation and expiry job runs in `paygate serve`.
    pub job_interval_ms: u64,
    /// What happens when a refund's clawback finds the points already spent.
    pub clawback_shortfall: ClawbackShortfall,
}

/// A clawback the customer's points cannot cover (they spent them): never written off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClawbackShortfall {
    /// The points are owed, and taken from the next points the wallet earns.
    PointsDebt,
    /// Their value (at `rewards.point_value_minor` when the refund is decided) is kept back
    /// from the refund's money, and what the refund's money cannot cover is owed as points.
    DeductFromRefund,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarnRule {
    pub name: String,
    /// Merchant categories the rule covers; empty: every merchant.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Points per whole currency unit paid in money (points tendered earn nothing).
    pub points_per_unit: i64,
    /// At most this many points per purchase.
    pub cap_per_transaction: i64,
}

impl Default for RewardsSettings {
    fn default() -> Self {
        RewardsSettings {
            enabled: true,
            rules: vec![
                EarnRule {
                    name: "groceries".into(),
                    categories: vec!["grocery".into()],
                    points_per_unit: 2,
                    cap_per_transaction: 1_000,
                },
                EarnRule {
                    name: "everything-else".into(),
                    categories: Vec::new(),
                    points_per_unit: 1,
                    cap_per_transaction: 500,
                },
            ],
            pending_ms: 7 * 86_400_000,
            expiry_ms: 365 * 86_400_000,
            point_value_minor: 25,
            currency: "INR".into(),
            job_interval_ms: 60_000,
            clawback_shortfall: ClawbackShortfall::PointsDebt,
        }
    }
}

/// Wallet limits by KYC tier (RBI prepaid payment instruments; ../shared/DOMAIN.md). Amounts
/// are minor units of `wallet.currency`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalletSettings {
    /// The currency wallets hold and the limits are stated in.
    pub currency: String,
    /// Day and month limits reset at local midnight at this offset east of UTC (India: 330).
    pub limits_utc_offset_minutes: i32,
    /// Minimum-KYC ("small") wallets.
    pub min_kyc: TierLimits,
    /// Full-KYC wallets.
    pub full_kyc: TierLimits,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// The balance a wallet may not exceed (credits past it are refused).
    pub balance_max_minor: i64,
    /// Any one debit: payment, P2P or cash-out.
    pub per_transaction_max_minor: i64,
    /// All debits in a local day, and in a calendar month.
    pub daily_debit_max_minor: i64,
    pub monthly_debit_max_minor: i64,
    pub p2p_allowed: bool,
    pub cash_out_allowed: bool,
    pub cash_out_per_transaction_max_minor: i64,
    pub cash_out_monthly_max_minor: i64,
    /// Loads (cash-in, funding) in a calendar month; refunds are not loads.
    #[serde(default = "no_load_limit")]
    pub monthly_load_max_minor: i64,
}

fn no_load_limit() -> i64 {
    crate::ledger::SHARD_BALANCE_LIMIT
}

impl Default for WalletSettings {
    fn default() -> Self {
        const RUPEE: i64 = 100;
        WalletSettings {
            currency: "INR".into(),
            limits_utc_offset_minutes: 330,
            min_kyc: TierLimits {
                balance_max_minor: 10_000 * RUPEE,
                per_transaction_max_minor: 10_000 * RUPEE,
                daily_debit_max_minor: 10_000 * RUPEE,
                monthly_debit_max_minor: 10_000 * RUPEE,
                p2p_allowed: false,
                cash_out_allowed: false,
                cash_out_per_transaction_max_minor: 0,
                cash_out_monthly_max_minor: 0,
                monthly_load_max_minor: 10_000 * RUPEE,
            },
            full_kyc: TierLimits {
                balance_max_minor: 200_000 * RUPEE,
                per_transaction_max_minor: 100_000 * RUPEE,
                daily_debit_max_minor: 100_000 * RUPEE,
                monthly_debit_max_minor: 200_000 * RUPEE,
                p2p_allowed: true,
                cash_out_allowed: true,
                cash_out_per_transaction_max_minor: 2_000 * RUPEE,
                cash_out_monthly_max_minor: 10_000 * RUPEE,
                monthly_load_max_minor: no_load_limit(),
            },
        }
    }
}

impl WalletSettings {
    pub fn tier(&self, tier: crate::ledger::KycTier) -> &TierLimits {
        match tier {
            crate::ledger::KycTier::Min => &self.min_kyc,
            crate::ledger::KycTier::Full => &self.full_kyc,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// The device-facing MQTT over TLS listener.
    pub listen: SocketAddr,
    pub handshake_timeout_ms: u64,
    /// Time a device has after the handshake to send CONNECT.
    pub connect_timeout_ms: u64,
    pub connections_max: usize,
    /// Largest MQTT packet accepted from a device (whole packet after the fixed header).
    pub packet_bytes_max: usize,
    /// A connection silent for longer than 1.5 x its keep-alive, capped by this, is closed.
    pub idle_timeout_max_ms: u64,
    /// Packets queued towards one device before the connection is dropped as too slow.
    pub outbound_queue_packets_max: usize,
    /// Requests one device may send per second, on average (see [`crate::admission`]).
    pub device_requests_per_s: u32,
    /// Requests one device may send at once after a quiet spell.
    pub device_requests_burst: u32,
    /// Requests of one device admitted and not yet answered.
    pub device_inflight_max: usize,
    /// An admitted request whose reply never passed the front stops counting after this.
    pub inflight_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// PEM files, each with one or more CA certificates trusted to issue device certificates.
    pub client_ca_bundles: Vec<PathBuf>,
    /// PEM CRL files. With the default policy every device certificate's issuer needs one.
    pub crls: Vec<PathBuf>,
    /// Accept a device whose revocation status no loaded CRL covers.
    pub allow_unknown_revocation_status: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Requests waiting between the broker and the pipeline.
    pub queue_depth_max: usize,
    /// Requests decided and committed in one database transaction.
    pub batch_size_max: usize,
    /// Oldest creation time accepted (an edge outbox may hold requests through an outage).
    pub request_age_max_ms: u64,
    /// How far ahead of the gateway's clock a device clock may run.
    pub request_future_skew_max_ms: u64,
    /// Blocking-pool tasks one batch's signature checks are split across (the cores).
    pub verify_threads_max: usize,
    /// How often the tick runs (challenge expiry, UPI settlement).
    pub tick_interval_ms: u64,
    /// How long an enrolled device's key is trusted from the cache (0: no cache).
    pub device_cache_ttl_ms: u64,
    pub device_cache_entries_max: usize,
    /// Plain merchant payments of a batch decided together in memory and written in
    /// multi-row statements (off: every request decided alone, statement by statement).
    pub decide_in_bulk: bool,
}

/// A configuration value that may hold a secret (a database password in a URL, an API key).
/// `Debug` prints `***`. Written as the value itself, `env:NAME` (read from the environment at
/// load), or `file:/path` (read from a file at load, trailing newline trimmed; a mounted
/// Kubernetes or Secrets Manager secret).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("***")
        }
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that uses it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces `env:NAME` and `file:PATH` with what they point at.
    fn resolve(&mut self, field: &'static str) -> Result<(), ConfigError> {
        if let Some(name) = self.0.strip_prefix("env:") {
            let value = std::env::var(name).map_err(|_| {
                invalid(
                    field,
                    format!("names environment variable {name}, which is not set"),
                )
            })?;
            self.0 = value;
        } else if let Some(path) = self.0.strip_prefix("file:") {
            let value = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    field,
                    format!("names file {path}, which cannot be read: {e}"),
                )
            })?;
            self.0 = value.trim_end_matches(['\n', '\r']).to_owned();
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Empty: `sqlite://{data_dir}/paygate.db`. May carry a password: a [`Secret`].
    pub url: Secret,
    pub connections_max: u32,
    /// How long a task waits for a database connection (or for one to be made) before its
    /// work fails: while the database is away, a batch waits at most this, then is refused.
    pub acquire_timeout_ms: u64,
    /// SQLite: how long a writer waits for the write lock before its transaction fails.
    pub sqlite_busy_timeout_ms: u64,
    /// SQLite: page cache per connection, in MiB.
    pub sqlite_cache_mib: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptSettings {
    /// PKCS#8 Ed25519 key that signs receipts and notices.
    pub signing_key: PathBuf,
    /// The key id receipts carry.
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Which step-up mechanisms a payment needs, as data (docs/identity.md).
    pub rules: Vec<paygate_core::identity::Rule>,
    /// How long a passed mechanism spares the holder, per mechanism and risk level.
    pub pass_windows: Vec<paygate_core::identity::PassWindow>,
    pub totp: paygate_core::identity::TotpParams,
    /// A challenge not answered in this time declines the payment.
    pub challenge_ttl_ms: u64,
    /// Wrong answers before the challenge fails and its mechanisms lock.
    pub attempts_max: u32,
    pub lockout_ms: u64,
    /// The window of the velocity counters (rules and limits).
    pub velocity_window_ms: u64,
    /// Abuse limits: decided payments per window per device and per wallet.
    pub device_payments_per_window_max: u32,
    pub wallet_payments_per_window_max: u32,
    /// Where the development notifier writes out-of-band codes (an SMS or push provider
    /// replaces it). Relative to data_dir.
    pub notifier_file: PathBuf,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        use paygate_core::identity::{
            Condition, Mechanism, OtpAlgorithm, PassWindow, RiskLevel, Rule, TotpParams,
        };
        IdentitySettings {
            rules: vec![Rule {
                name: "large-payment".into(),
                risk: RiskLevel::High,
                require: vec![Mechanism::Totp],
                when: Condition {
                    amount_minor_min: Some(200_000),
                    ..Condition::default()
                },
            }],
            pass_windows: vec![PassWindow {
                mechanism: Mechanism::Totp,
                risk: RiskLevel::High,
                window_ms: 300_000,
            }],
            totp: TotpParams {
                algorithm: OtpAlgorithm::Sha1,
                digits: 6,
                step_s: 30,
                drift_steps: 1,
            },
            challenge_ttl_ms: 60_000,
            attempts_max: 3,
            lockout_ms: 900_000,
            velocity_window_ms: 3_600_000,
            device_payments_per_window_max: 1_000,
            wallet_payments_per_window_max: 1_000,
            notifier_file: PathBuf::from("notifier/outbox.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyProviderKind {
    Local,
    AwsKms,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    /// `local` (KEK files under `local_dir`) or `aws_kms`.
    pub provider: KeyProviderKind,
    pub local_dir: PathBuf,
    /// The KMS key (id, ARN or alias) that wraps new data keys.
    pub kms_key_id: String,
    /// Empty: the standard AWS chain (AWS_REGION, AWS_ENDPOINT_URL, credentials).
    pub kms_region: String,
    pub kms_endpoint_url: String,
    /// Tenant named in every encryption context.
    pub tenant: String,
    /// Calls to the provider per operation, retries included.
    pub attempts_max: u32,
    pub retry_delay_max_ms: u64,
    /// One KMS call's limit (connect and answer): a stalled endpoint fails the attempt here.
    pub attempt_timeout_ms: u64,
    /// After an operation fails for want of KMS (every attempt unreachable, throttled or
    /// timed out), further operations fail at once for this long, so a stalled KMS holds up
    /// the pipeline for one operation, not for every request that needs a key.
    pub unavailable_for_ms: u64,
    /// A data key encrypts new values for at most this long...
    pub data_key_age_max_ms: u64,
    /// ...and at most this many times; then a new one is made.
    pub data_key_uses_max: u64,
    /// Unwrapped data keys kept in memory (plaintext keys, wiped on eviction).
    pub cache_entries_max: usize,
}

impl Default for KeySettings {
    fn default() -> Self {
        KeySettings {
            provider: KeyProviderKind::Local,
            local_dir: PathBuf::from("keys"),
            kms_key_id: String::new(),
            kms_region: String::new(),
            kms_endpoint_url: String::new(),
            tenant: "default".to_owned(),
            attempts_max: 4,
            retry_delay_max_ms: 2_000,
            attempt_timeout_ms: 1_000,
            unavailable_for_ms: 5_000,
            data_key_age_max_ms: 3_600_000,
            data_key_uses_max: 100_000,
            cache_entries_max: 1_024,
        }
    }
}

/// PCI DSS 10.5.1 keeps audit logs a year: retention can be raised, never set below this.
pub const AUDIT_RETENTION_DAYS_MIN: u32 = 365;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("paygate-data"),
            mqtt: MqttSettings::default(),
            broker: BrokerSettings::default(),
            tls: TlsSettings::default(),
            pipeline: PipelineSettings::default(),
            database: DatabaseSettings::default(),
            wallet: WalletSettings::default(),
            rewards: RewardsSettings::default(),
            upi: UpiSettings::default(),
            http: HttpSettings::default(),
            receipts: ReceiptSettings::default(),
            audit: AuditSettings::default(),
            keys: KeySettings::default(),
            identity: IdentitySettings::default(),
        }
    }
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8883)),
            handshake_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            connections_max: 10_000,
            packet_bytes_max: 16 * 1024,
            idle_timeout_max_ms: 300_000,
            outbound_queue_packets_max: 256,
            device_requests_per_s: 100,
            device_requests_burst: 200,
            device_inflight_max: 8,
            inflight_timeout_ms: 30_000,
        }
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            server_cert: PathBuf::from("pki/server.cert.pem"),
            server_key: PathBuf::from("pki/server.key.pem"),
            client_ca_bundles: vec![PathBuf::from("pki/ca.cert.pem")],
            crls: vec![PathBuf::from("pki/crl.pem")],
            allow_unknown_revocation_status: false,
        }
    }
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            queue_depth_max: 4_096,
            batch_size_max: 64,
            request_age_max_ms: 24 * 3_600_000,
            request_future_skew_max_ms: 300_000,
            verify_threads_max: 2,
            tick_interval_ms: 250,
            device_cache_ttl_ms: 1_000,
            device_cache_entries_max: 100_000,
            decide_in_bulk: true,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: Secret::default(),
            connections_max: 4,
            acquire_timeout_ms: 5_000,
            sqlite_busy_timeout_ms: 10_000,
            sqlite_cache_mib: 64,
        }
    }
}

impl Default for ReceiptSettings {
    fn default() -> Self {
        ReceiptSettings {
            signing_key: PathBuf::from("pki/receipt-signing.pk8"),
            key_id: "paygate-receipts-1".to_owned(),
        }
    }
}

/// A configuration that parsed but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration: {field} {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl Settings {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("PAYGATE__").split("__"));
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.database.url.resolve("database.url")?;
        settings
            .broker
            .external
            .share_group
            .resolve("broker.external.share_group")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults, then `text` as a configuration file: what [`Settings::load`] does with a
    /// file, without the environment and without resolving `env:`/`file:` secrets (the
    /// `config` fuzz target, [`crate::fuzzing::config`]).
    pub fn parse_toml(text: &str) -> Result<Settings, ConfigError> {
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// A path from the settings, resolved against the data directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.data_dir.join(path)
        }
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("paygate.db").display())
        } else {
            self.database.url.expose().to_owned()
        }
    }

    /// The commented default file that `paygate config print-default` writes.
    pub fn default_file() -> &'static str {
        DEFAULT_FILE
    }
}

/// The commented default file (`paygate config print-default`); a test holds it equal to
/// the defaults in code.
const DEFAULT_FILE: &str = include_str!("default.toml");

mod validate;

#[cfg(test)]
mod tests;
