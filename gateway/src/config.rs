//! Configuration: defaults, then a TOML file, then `PAYGATE__SECTION__KEY` environment
//! overrides, parsed strictly (unknown keys are errors) and then validated into [`Settings`]
//! before anything starts.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the database, the development PKI and keys live. Relative paths below are
    /// resolved against it.
    pub data_dir: PathBuf,
    pub mqtt: MqttSettings,
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
}

impl Default for UpiSettings {
    fn default() -> Self {
        UpiSettings {
            enabled: true,
            currency: "INR".into(),
            per_transaction_max_minor: 100_000 * 100,
            pay_timeout_ms: 15_000,
            status_timeout_ms: 10_000,
            first_status_check_ms: 60_000,
            status_check_interval_ms: 1_800_000,
            status_checks_max: 3,
            sandbox_delay_ms: 30_000,
            handoff_queue_max: 1_024,
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
pub struct AuditSettings {
    /// The fsync'd local journal: the active segment, sealed segments not yet shipped, and
    /// every checkpoint.
    pub journal_dir: PathBuf,
    /// PKCS#8 Ed25519 key that signs checkpoints (made on first start, 0600).
    pub signing_key: PathBuf,
    /// The key id checkpoints carry; auditors verify with the matching public key.
    pub key_id: String,
    /// A segment is sealed when it holds this many records...
    pub records_per_segment_max: u64,
    /// ...or when its first record is this old.
    pub seal_interval_ms: u64,
    /// How often the journal writer picks up events from other processes and checks the age.
    pub seal_check_interval_ms: u64,
    /// Outbox rows appended per journal write.
    pub outbox_rows_per_write_max: u32,
    /// Sealed segments waiting for write-once storage, in bytes. Past this the gateway stops
    /// approving payments (PCI DSS 10.7.2: never approve what cannot be audited).
    pub backlog_bytes_max: u64,
    pub ship_interval_ms: u64,
    /// The shipper's retry delay doubles after each failure up to this (with jitter).
    pub ship_retry_delay_max_ms: u64,
    /// `local` (a write-once directory) or `s3` (S3 Object Lock, COMPLIANCE mode).
    pub store: AuditStoreKind,
    pub local: LocalWormSettings,
    pub s3: S3WormSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStoreKind {
    Local,
    S3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalWormSettings {
    pub dir: PathBuf,
    /// Days each object is kept before paygate lets it be deleted (365 at least).
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3WormSettings {
    /// A versioned bucket with Object Lock enabled (checked at start).
    pub bucket: String,
    /// Key prefix, e.g. `paygate-audit/`.
    pub prefix: String,
    /// COMPLIANCE retention of every object, in days (365 at least).
    pub retention_days: u32,
    /// Empty: the standard AWS chain (AWS_REGION, profile, instance metadata).
    pub region: String,
    /// Empty: the standard AWS chain (AWS_ENDPOINT_URL). Set for S3-compatible endpoints.
    pub endpoint_url: String,
    /// Path-style addressing (needed by most S3-compatible endpoints).
    pub force_path_style: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            journal_dir: PathBuf::from("audit/journal"),
            signing_key: PathBuf::from("pki/audit-signing.pk8"),
            key_id: "paygate-audit-1".to_owned(),
            records_per_segment_max: 10_000,
            seal_interval_ms: 60_000,
            seal_check_interval_ms: 1_000,
            outbox_rows_per_write_max: 1_000,
            backlog_bytes_max: 256 * 1024 * 1024,
            ship_interval_ms: 1_000,
            ship_retry_delay_max_ms: 60_000,
            store: AuditStoreKind::Local,
            local: LocalWormSettings::default(),
            s3: S3WormSettings::default(),
        }
    }
}

impl Default for LocalWormSettings {
    fn default() -> Self {
        LocalWormSettings {
            dir: PathBuf::from("audit/worm"),
            retention_days: 365,
        }
    }
}

impl Default for S3WormSettings {
    fn default() -> Self {
        S3WormSettings {
            bucket: String::new(),
            prefix: "paygate-audit/".to_owned(),
            retention_days: 365,
            region: String::new(),
            endpoint_url: String::new(),
            force_path_style: false,
        }
    }
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
            tls: TlsSettings::default(),
            pipeline: PipelineSettings::default(),
            database: DatabaseSettings::default(),
            wallet: WalletSettings::default(),
            rewards: RewardsSettings::default(),
            upi: UpiSettings::default(),
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
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: Secret::default(),
            connections_max: 4,
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
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mqtt = &self.mqtt;
        if !(128..=1024 * 1024).contains(&mqtt.packet_bytes_max) {
            return Err(invalid("mqtt.packet_bytes_max", "must be 128 to 1048576"));
        }
        if mqtt.connections_max == 0 {
            return Err(invalid("mqtt.connections_max", "must be at least 1"));
        }
        if mqtt.handshake_timeout_ms == 0
            || mqtt.connect_timeout_ms == 0
            || mqtt.idle_timeout_max_ms == 0
        {
            return Err(invalid("mqtt.*_timeout_ms", "timeouts must be positive"));
        }
        if mqtt.outbound_queue_packets_max == 0 {
            return Err(invalid(
                "mqtt.outbound_queue_packets_max",
                "must be at least 1",
            ));
        }
        if self.tls.client_ca_bundles.is_empty() {
            return Err(invalid(
                "tls.client_ca_bundles",
                "needs at least one CA bundle",
            ));
        }
        let pipeline = &self.pipeline;
        if pipeline.batch_size_max == 0 || pipeline.batch_size_max > 10_000 {
            return Err(invalid("pipeline.batch_size_max", "must be 1 to 10000"));
        }
        if pipeline.verify_threads_max == 0 || pipeline.verify_threads_max > 64 {
            return Err(invalid("pipeline.verify_threads_max", "must be 1 to 64"));
        }
        if pipeline.tick_interval_ms == 0 || pipeline.device_cache_entries_max == 0 {
            return Err(invalid(
                "pipeline.tick_interval_ms",
                "the tick interval and the device cache size must be above zero",
            ));
        }
        if self.upi.handoff_queue_max == 0 {
            return Err(invalid("upi.handoff_queue_max", "must be above zero"));
        }
        if pipeline.queue_depth_max < pipeline.batch_size_max {
            return Err(invalid(
                "pipeline.queue_depth_max",
                "must be at least pipeline.batch_size_max",
            ));
        }
        if paygate_core::Currency::parse(&self.wallet.currency).is_none() {
            return Err(invalid(
                "wallet.currency",
                "must be an active ISO 4217 code",
            ));
        }
        if self.wallet.limits_utc_offset_minutes.abs() > 14 * 60 {
            return Err(invalid(
                "wallet.limits_utc_offset_minutes",
                "must be within -840 to 840",
            ));
        }
        for (field, limits) in [
            ("wallet.min_kyc", &self.wallet.min_kyc),
            ("wallet.full_kyc", &self.wallet.full_kyc),
        ] {
            let amounts = [
                limits.balance_max_minor,
                limits.per_transaction_max_minor,
                limits.daily_debit_max_minor,
                limits.monthly_debit_max_minor,
                limits.cash_out_per_transaction_max_minor,
                limits.cash_out_monthly_max_minor,
            ];
            if amounts
                .iter()
                .any(|a| *a < 0 || *a > crate::ledger::SHARD_BALANCE_LIMIT)
            {
                return Err(invalid(field, "limits must be 0 to the ledger's limit"));
            }
        }
        let upi = &self.upi;
        if upi.pay_timeout_ms == 0
            || upi.status_timeout_ms == 0
            || upi.status_checks_max == 0
            || upi.per_transaction_max_minor <= 0
        {
            return Err(invalid(
                "upi",
                "timeouts, status_checks_max and per_transaction_max_minor must be above 0",
            ));
        }
        let rewards = &self.rewards;
        if paygate_core::Currency::parse(&rewards.currency).is_none() {
            return Err(invalid(
                "rewards.currency",
                "must be an active ISO 4217 code",
            ));
        }
        if rewards.point_value_minor <= 0 || rewards.point_value_minor > 1_000_000 {
            return Err(invalid("rewards.point_value_minor", "must be 1 to 1000000"));
        }
        if rewards.expiry_ms <= rewards.pending_ms || rewards.job_interval_ms == 0 {
            return Err(invalid(
                "rewards.expiry_ms",
                "must be longer than rewards.pending_ms (and job_interval_ms above 0)",
            ));
        }
        if rewards.rules.iter().any(|r| {
            r.points_per_unit < 0 || r.points_per_unit > 1_000 || r.cap_per_transaction < 0
        }) {
            return Err(invalid(
                "rewards.rules",
                "points_per_unit must be 0 to 1000 and cap_per_transaction at least 0",
            ));
        }
        if self.database.connections_max == 0 {
            return Err(invalid("database.connections_max", "must be at least 1"));
        }
        if !self.database.url.is_empty()
            && crate::store::Backend::of_url(self.database.url.expose()).is_none()
        {
            return Err(invalid(
                "database.url",
                "must be a sqlite: or postgres:// URL",
            ));
        }
        if paygate_core::DeviceId::parse(&self.receipts.key_id).is_err() {
            return Err(invalid("receipts.key_id", "must be a plain identifier"));
        }
        let audit = &self.audit;
        if paygate_core::DeviceId::parse(&audit.key_id).is_err() {
            return Err(invalid("audit.key_id", "must be a plain identifier"));
        }
        if audit.records_per_segment_max == 0 || audit.records_per_segment_max > 1_000_000 {
            return Err(invalid(
                "audit.records_per_segment_max",
                "must be 1 to 1000000",
            ));
        }
        if audit.seal_interval_ms == 0
            || audit.seal_check_interval_ms == 0
            || audit.ship_interval_ms == 0
            || audit.ship_retry_delay_max_ms == 0
        {
            return Err(invalid("audit.*_ms", "intervals must be positive"));
        }
        if audit.outbox_rows_per_write_max == 0 {
            return Err(invalid(
                "audit.outbox_rows_per_write_max",
                "must be at least 1",
            ));
        }
        if audit.local.retention_days < AUDIT_RETENTION_DAYS_MIN {
            return Err(invalid(
                "audit.local.retention_days",
                "must be at least 365 (PCI DSS 10.5.1)",
            ));
        }
        if audit.s3.retention_days < AUDIT_RETENTION_DAYS_MIN {
            return Err(invalid(
                "audit.s3.retention_days",
                "must be at least 365 (PCI DSS 10.5.1)",
            ));
        }
        let identity = &self.identity;
        for rule in &identity.rules {
            if rule.name.is_empty() || rule.require.is_empty() {
                return Err(invalid(
                    "identity.rules",
                    "every rule needs a name and at least one mechanism",
                ));
            }
        }
        if !(6..=8).contains(&identity.totp.digits)
            || identity.totp.step_s == 0
            || identity.totp.drift_steps > 10
        {
            return Err(invalid(
                "identity.totp",
                "digits 6-8, step_s at least 1, drift_steps at most 10",
            ));
        }
        // within the UPI timers: a pending payment is checked from 45 s; the holder gets at most 2 min
        if !(1_000..=120_000).contains(&identity.challenge_ttl_ms) {
            return Err(invalid(
                "identity.challenge_ttl_ms",
                "must be 1000 to 120000",
            ));
        }
        if !(1..=10).contains(&identity.attempts_max) {
            return Err(invalid("identity.attempts_max", "must be 1 to 10"));
        }
        if identity.velocity_window_ms == 0
            || identity.device_payments_per_window_max == 0
            || identity.wallet_payments_per_window_max == 0
        {
            return Err(invalid(
                "identity.*_max",
                "velocity limits must be positive",
            ));
        }
        let keys = &self.keys;
        if keys.provider == KeyProviderKind::AwsKms && keys.kms_key_id.is_empty() {
            return Err(invalid(
                "keys.kms_key_id",
                "is needed when keys.provider = \"aws_kms\"",
            ));
        }
        if keys.attempts_max == 0 || keys.attempts_max > 10 {
            return Err(invalid("keys.attempts_max", "must be 1 to 10"));
        }
        if keys.data_key_uses_max == 0
            || keys.data_key_age_max_ms == 0
            || keys.cache_entries_max == 0
        {
            return Err(invalid("keys.*_max", "cache limits must be positive"));
        }
        if audit.store == AuditStoreKind::S3 && audit.s3.bucket.is_empty() {
            return Err(invalid(
                "audit.s3.bucket",
                "is needed when audit.store = \"s3\"",
            ));
        }
        Ok(())
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

const DEFAULT_FILE: &str = r#"# paygate configuration. Every key is optional; these are the defaults.
# Environment overrides: PAYGATE__SECTION__KEY, e.g. PAYGATE__MQTT__LISTEN=0.0.0.0:8883.
# Unknown keys are errors. Relative paths are resolved against data_dir.

# Database, development PKI and keys.
data_dir = "paygate-data"

[mqtt]
# Device-facing MQTT over TLS (mutual TLS, MQTT 3.1.1).
listen = "127.0.0.1:8883"
handshake_timeout_ms = 5000
# Time a device has after the TLS handshake to send CONNECT.
connect_timeout_ms = 5000
connections_max = 10000
# Largest MQTT packet accepted from a device; larger ones close the connection.
packet_bytes_max = 16384
# A connection silent for longer than 1.5 x its keep-alive, capped by this, is closed.
idle_timeout_max_ms = 300000
# Packets queued towards one device before it is dropped as too slow.
outbound_queue_packets_max = 256

[tls]
server_cert = "pki/server.cert.pem"
server_key = "pki/server.key.pem"
# CA bundles trusted to issue device certificates (each file may hold several CAs).
client_ca_bundles = ["pki/ca.cert.pem"]
# CRLs; by default every device certificate's issuer needs one.
crls = ["pki/crl.pem"]
allow_unknown_revocation_status = false

[pipeline]
queue_depth_max = 4096
# Requests decided and committed in one database transaction (group commit).
batch_size_max = 64
# Oldest request creation time accepted (an edge outbox may hold requests through an outage).
request_age_max_ms = 86400000
request_future_skew_max_ms = 300000
# Blocking-pool tasks one batch's signature checks are split across (about the cores).
verify_threads_max = 2
# How often expired challenges are declined and answered UPI payments settled.
tick_interval_ms = 250
# How long an enrolled device's key is used from memory before it is read again (0: never
# cached); a device suspended or re-keyed by another process counts within this time.
device_cache_ttl_ms = 1000
device_cache_entries_max = 100000

[database]
# Empty: sqlite://{data_dir}/paygate.db. A secret: write it here, or "env:NAME" to read an
# environment variable, or "file:/path" to read a mounted secret file. Never logged.
url = ""
connections_max = 4

[receipts]
signing_key = "pki/receipt-signing.pk8"
key_id = "paygate-receipts-1"

[audit]
# The fsync'd local journal: active segment, sealed segments not yet shipped, all checkpoints.
journal_dir = "audit/journal"
# Signs checkpoints (made on first start, mode 0600). Auditors verify with
# pki/audit-signing.pub.jwk.json.
signing_key = "pki/audit-signing.pk8"
key_id = "paygate-audit-1"
# A segment is sealed (Merkle root, signed checkpoint) at this many records or this age.
records_per_segment_max = 10000
seal_interval_ms = 60000
seal_check_interval_ms = 1000
outbox_rows_per_write_max = 1000
# Sealed segments not yet in write-once storage. Past this, payments are refused with
# AUDIT_UNAVAILABLE rather than approved unaudited (PCI DSS 10.7.2).
backlog_bytes_max = 268435456
ship_interval_ms = 1000
ship_retry_delay_max_ms = 60000
# "local" (a write-once directory) or "s3" (S3 Object Lock in COMPLIANCE mode).
store = "local"

[audit.local]
dir = "audit/worm"
# At least 365 (PCI DSS 10.5.1); can only be raised.
retention_days = 365

[audit.s3]
# A versioned bucket with Object Lock enabled; both are checked at start.
bucket = ""
prefix = "paygate-audit/"
# COMPLIANCE-mode retention of every object; at least 365.
retention_days = 365
# Empty: the standard AWS chain (AWS_REGION, AWS_ENDPOINT_URL, credentials).
region = ""
endpoint_url = ""
force_path_style = false

[keys]
# Envelope encryption of sensitive fields. "local": KEK files under local_dir (made on first
# run, mode 0600); "aws_kms": the KMS key kms_key_id wraps every data key.
provider = "local"
local_dir = "keys"
kms_key_id = ""
# Empty: the standard AWS chain (AWS_REGION, AWS_ENDPOINT_URL, credentials).
kms_region = ""
kms_endpoint_url = ""
# Named in every encryption context, with the purpose, table and field.
tenant = "default"
# Provider calls per operation (retries with exponential backoff and jitter).
attempts_max = 4
retry_delay_max_ms = 2000
# A data key encrypts new values for at most this long and this many times.
data_key_age_max_ms = 3600000
data_key_uses_max = 100000
# Unwrapped data keys held in memory.
cache_entries_max = 1024

# Wallet limits by KYC tier, in minor units of `currency` (RBI prepaid instruments). Debits are
# payments, P2P transfers and cash-outs; day and month reset at local midnight.
[wallet]
currency = "INR"
limits_utc_offset_minutes = 330

[wallet.min_kyc]
balance_max_minor = 1000000
per_transaction_max_minor = 1000000
daily_debit_max_minor = 1000000
monthly_debit_max_minor = 1000000
p2p_allowed = false
cash_out_allowed = false
cash_out_per_transaction_max_minor = 0
cash_out_monthly_max_minor = 0

[wallet.full_kyc]
balance_max_minor = 20000000
per_transaction_max_minor = 10000000
daily_debit_max_minor = 10000000
monthly_debit_max_minor = 20000000
p2p_allowed = true
cash_out_allowed = true
cash_out_per_transaction_max_minor = 200000
cash_out_monthly_max_minor = 1000000

# Reward points: earned on purchases paid in money by the first rule matching the merchant's
# category, pending for pending_ms, then redeemable at point_value_minor each until they expire
# (first in, first out by earning lot).
[rewards]
enabled = true
pending_ms = 604800000
expiry_ms = 31536000000
point_value_minor = 25
currency = "INR"
job_interval_ms = 60000

[[rewards.rules]]
name = "groceries"
categories = ["grocery"]
points_per_unit = 2
cap_per_transaction = 1000

[[rewards.rules]]
name = "everything-else"
categories = []
points_per_unit = 1
cap_per_transaction = 500

# UPI through the sandbox switch (NPCI timers: pay 15 s, status 10 s, first status check after
# 45-90 s, at most 3 within 2 h, then a reversal). Sandbox scenarios by the amount's paise:
# docs/protocol.md.
[upi]
enabled = true
currency = "INR"
per_transaction_max_minor = 10000000
pay_timeout_ms = 15000
status_timeout_ms = 10000
first_status_check_ms = 60000
status_check_interval_ms = 1800000
status_checks_max = 3
sandbox_delay_ms = 30000
# Payments waiting between the pipeline and the UPI worker (the pipeline waits when full).
handoff_queue_max = 1024

[identity]
# A challenge not answered in time declines the payment (at most 120000: within the UPI timers).
challenge_ttl_ms = 60000
# Wrong answers before a challenge fails and its mechanisms lock for lockout_ms.
attempts_max = 3
lockout_ms = 900000
# Velocity counters (rules) and abuse limits: decided payments per window.
velocity_window_ms = 3600000
device_payments_per_window_max = 1000
wallet_payments_per_window_max = 1000
# The development notifier's file for out-of-band codes (an SMS or push provider replaces it).
notifier_file = "notifier/outbox.jsonl"

[identity.totp]
algorithm = "sha1"
digits = 6
step_s = 30
drift_steps = 1

# Rules are data: every matching rule's mechanisms are asked, at the highest risk that asks.
# Conditions: amount_minor_min/max, currency, first_payee, first_device_use,
# payments_in_window_min, cumulative_minor_since_strong_auth_min, hour_utc_from/to, payee_in.
# Mechanisms: totp, pin, oob (device_possession is always present).
[[identity.rules]]
name = "large-payment"
risk = "high"
require = ["totp"]
when = { amount_minor_min = 200000 }

# A mechanism passed within window_ms at that risk level is not asked again (validate pass).
[[identity.pass_windows]]
mechanism = "totp"
risk = "high"
window_ms = 300000
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_file_is_exactly_the_defaults() {
        let from_file: Settings = Figment::new()
            .merge(Toml::string(DEFAULT_FILE))
            .extract()
            .expect("default file parses");
        assert_eq!(from_file, Settings::default());
        assert!(Settings::default().validate().is_ok());
    }

    #[test]
    // figment's Jail closure must return figment's own (large) error type
    #[allow(clippy::result_large_err)]
    fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "paygate.toml",
                "data_dir = \"/srv/paygate\"\n[mqtt]\nlisten = \"0.0.0.0:8883\"\npacket_bytes_max = 4096\n",
            )?;
            jail.set_env("PAYGATE__MQTT__PACKET_BYTES_MAX", "8192");
            let settings =
                Settings::load(Some(Path::new("paygate.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.data_dir, PathBuf::from("/srv/paygate"));
            assert_eq!(
                settings.mqtt.listen,
                "0.0.0.0:8883"
                    .parse::<SocketAddr>()
                    .map_err(|e| e.to_string())?
            );
            assert_eq!(settings.mqtt.packet_bytes_max, 8192);
            assert_eq!(settings.pipeline, PipelineSettings::default());
            jail.set_env("PAYGATE__MQTT__PACKET_BYTES_MAX", "1");
            assert!(matches!(
                Settings::load(Some(Path::new("paygate.toml"))),
                Err(ConfigError::Invalid {
                    field: "mqtt.packet_bytes_max",
                    ..
                })
            ));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn secrets_come_from_the_environment_or_a_file_and_never_print() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("db-url", "sqlite://from-file.db?password=hunter2\n")?;
            jail.create_file("a.toml", "[database]\nurl = \"file:db-url\"\n")?;
            let settings = Settings::load(Some(Path::new("a.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                settings.database_url(),
                "sqlite://from-file.db?password=hunter2"
            );
            let printed = format!("{settings:?}");
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("url: ***"));
            jail.set_env("PAYGATE_TEST_DB", "sqlite://from-env.db?password=swordfish");
            jail.create_file("b.toml", "[database]\nurl = \"env:PAYGATE_TEST_DB\"\n")?;
            let settings = Settings::load(Some(Path::new("b.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                settings.database_url(),
                "sqlite://from-env.db?password=swordfish"
            );
            assert!(!format!("{settings:?}").contains("swordfish"));
            jail.create_file(
                "c.toml",
                "[database]\nurl = \"env:PAYGATE_NOT_SET_ANYWHERE\"\n",
            )?;
            assert!(matches!(
                Settings::load(Some(Path::new("c.toml"))),
                Err(ConfigError::Invalid {
                    field: "database.url",
                    ..
                })
            ));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let unknown: Result<Settings, _> = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string("[mqtt]\nlisten_port = 1\n"))
            .extract();
        assert!(unknown.is_err());
        let mut settings = Settings::default();
        settings.pipeline.batch_size_max = 0;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                field: "pipeline.batch_size_max",
                ..
            })
        ));
        let mut settings = Settings::default();
        settings.database.url = Secret::new("mysql://x");
        assert!(settings.validate().is_err());
        settings.database.url = Secret::new("postgres://paygate@127.0.0.1/paygate");
        assert!(settings.validate().is_ok());
        // audit retention can be raised, never set below a year (PCI DSS 10.5.1)
        let mut settings = Settings::default();
        settings.audit.s3.retention_days = 364;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                field: "audit.s3.retention_days",
                ..
            })
        ));
        settings.audit.s3.retention_days = 3650;
        assert!(settings.validate().is_ok());
        settings.audit.local.retention_days = 30;
        assert!(settings.validate().is_err());
        let mut settings = Settings::default();
        settings.audit.store = AuditStoreKind::S3;
        assert!(matches!(
            settings.validate(),
            Err(ConfigError::Invalid {
                field: "audit.s3.bucket",
                ..
            })
        ));
    }
}
