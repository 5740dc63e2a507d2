//! Validation: ranges and relations between settings, checked before anything starts.

use super::{
    invalid, AuditStoreKind, BrokerMode, ConfigError, KeyProviderKind, Settings, WitnessStoreKind,
    AUDIT_RETENTION_DAYS_MIN,
};

impl Settings {
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
        if !(1..=1_000_000).contains(&mqtt.device_requests_per_s) {
            return Err(invalid(
                "mqtt.device_requests_per_s",
                "must be 1 to 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&mqtt.device_requests_burst) {
            return Err(invalid(
                "mqtt.device_requests_burst",
                "must be 1 to 1000000",
            ));
        }
        if mqtt.device_inflight_max == 0
            || mqtt.device_inflight_max > self.pipeline.queue_depth_max.min(4096)
        {
            return Err(invalid(
                "mqtt.device_inflight_max",
                "must be 1 to pipeline.queue_depth_max, and at most 4096",
            ));
        }
        // per request in flight: the broker's PUBACK and the reply (or the front's PUBACK and
        // OVERLOADED notice); a device that reads is never dropped as too slow
        if mqtt.outbound_queue_packets_max < 2 * mqtt.device_inflight_max + 8 {
            return Err(invalid(
                "mqtt.outbound_queue_packets_max",
                "must be at least 2 x mqtt.device_inflight_max + 8",
            ));
        }
        if !(1_000..=3_600_000).contains(&mqtt.inflight_timeout_ms) {
            return Err(invalid(
                "mqtt.inflight_timeout_ms",
                "must be 1000 to 3600000",
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
        if pipeline.queue_depth_max < pipeline.batch_size_max || pipeline.queue_depth_max > 1 << 20
        {
            return Err(invalid(
                "pipeline.queue_depth_max",
                "must be pipeline.batch_size_max to 1048576",
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
                limits.monthly_load_max_minor,
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
        if upi
            .category_per_transaction_max_minor
            .values()
            .any(|limit| *limit <= 0 || *limit > crate::ledger::SHARD_BALANCE_LIMIT)
        {
            return Err(invalid(
                "upi.category_per_transaction_max_minor",
                "each limit must be above 0 and within the ledger's limit",
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
        if !(100..=600_000).contains(&self.database.acquire_timeout_ms) {
            return Err(invalid(
                "database.acquire_timeout_ms",
                "must be 100 to 600000",
            ));
        }
        if !(1..=600_000).contains(&self.database.sqlite_busy_timeout_ms) {
            return Err(invalid(
                "database.sqlite_busy_timeout_ms",
                "must be 1 to 600000",
            ));
        }
        if !(1..=16_384).contains(&self.database.sqlite_cache_mib) {
            return Err(invalid("database.sqlite_cache_mib", "must be 1 to 16384"));
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
            || audit.clock_check_interval_ms == 0
            || audit.clock_skew_max_ms == 0
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
        if !(100..=60_000).contains(&keys.attempt_timeout_ms) {
            return Err(invalid("keys.attempt_timeout_ms", "must be 100 to 60000"));
        }
        if keys.unavailable_for_ms > 600_000 {
            return Err(invalid("keys.unavailable_for_ms", "must be 0 to 600000"));
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
        let witness = &audit.witness;
        if witness.local.retention_days < AUDIT_RETENTION_DAYS_MIN
            || witness.s3.retention_days < AUDIT_RETENTION_DAYS_MIN
        {
            return Err(invalid(
                "audit.witness.*.retention_days",
                format!("must be at least {AUDIT_RETENTION_DAYS_MIN} (PCI DSS 10.5.1)"),
            ));
        }
        match witness.store {
            WitnessStoreKind::S3 if witness.s3.bucket.is_empty() => {
                return Err(invalid(
                    "audit.witness.s3.bucket",
                    "is needed when audit.witness.store = \"s3\"",
                ));
            }
            WitnessStoreKind::S3
                if audit.store == AuditStoreKind::S3
                    && witness.s3.bucket == audit.s3.bucket
                    && nested(
                        witness.s3.prefix.trim_end_matches('/'),
                        audit.s3.prefix.trim_end_matches('/'),
                    ) =>
            {
                return Err(invalid(
                    "audit.witness.s3",
                    "is the audit store itself or inside it; a witness must be another bucket or prefix",
                ));
            }
            WitnessStoreKind::Local
                if audit.store == AuditStoreKind::Local
                    && lexically_nested(
                        &self.resolve(&witness.local.dir),
                        &self.resolve(&audit.local.dir),
                    ) =>
            {
                return Err(invalid(
                    "audit.witness.local.dir",
                    "is the audit store's directory, or inside it or around it; a witness must be another directory",
                ));
            }
            _ => {}
        }
        self.validate_broker()?;
        self.validate_http()
    }

    fn validate_broker(&self) -> Result<(), ConfigError> {
        if self.broker.mode != BrokerMode::External {
            return Ok(());
        }
        let external = &self.broker.external;
        if external.host.is_empty() || external.port == 0 {
            return Err(invalid(
                "broker.external.host",
                "and broker.external.port must name the broker",
            ));
        }
        let valid_name = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let group = external.share_group.expose();
        if !valid_name(group) || group.len() < 16 {
            return Err(invalid(
                "broker.external.share_group",
                "must be a secret of at least 16 letters, digits, '-' or '_' (devices must not be able to guess it)",
            ));
        }
        if !external.client_id.is_empty() && !valid_name(&external.client_id) {
            return Err(invalid(
                "broker.external.client_id",
                "must be empty or letters, digits, '-' or '_'",
            ));
        }
        if !(1..=65_535).contains(&external.inflight_max)
            || external.inflight_max > self.pipeline.queue_depth_max
        {
            return Err(invalid(
                "broker.external.inflight_max",
                "must be 1 to 65535, and at most pipeline.queue_depth_max",
            ));
        }
        if !(5..=3_600).contains(&external.keep_alive_s) {
            return Err(invalid("broker.external.keep_alive_s", "must be 5 to 3600"));
        }
        if external.reconnect_delay_ms == 0 {
            return Err(invalid(
                "broker.external.reconnect_delay_ms",
                "must be positive",
            ));
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let http = &self.http;
        if http.enabled && http.listen == self.mqtt.listen {
            return Err(invalid("http.listen", "must differ from mqtt.listen"));
        }
        if http.connections_max == 0 || http.callers_max == 0 {
            return Err(invalid(
                "http.connections_max",
                "connections_max and callers_max must be at least 1",
            ));
        }
        if http.handshake_timeout_ms == 0
            || http.header_read_timeout_ms == 0
            || http.request_timeout_ms == 0
        {
            return Err(invalid("http.*_timeout_ms", "timeouts must be positive"));
        }
        if !(1_024..=16 * 1024 * 1024).contains(&http.body_bytes_max) {
            return Err(invalid("http.body_bytes_max", "must be 1024 to 16777216"));
        }
        if !(1..=1_000_000).contains(&http.caller_requests_per_s)
            || !(1..=1_000_000).contains(&http.caller_requests_burst)
        {
            return Err(invalid(
                "http.caller_requests_per_s",
                "the rate and the burst must be 1 to 1000000",
            ));
        }
        if !(1..=10_000).contains(&http.page_entries_max) {
            return Err(invalid("http.page_entries_max", "must be 1 to 10000"));
        }
        if http.audit_records_max == 0 {
            return Err(invalid("http.audit_records_max", "must be at least 1"));
        }
        let jwt = &http.jwt;
        if jwt.issuer.is_empty() || jwt.audience.is_empty() {
            return Err(invalid(
                "http.jwt.issuer",
                "the issuer and the audience must not be empty",
            ));
        }
        if jwt.algorithms.is_empty() {
            return Err(invalid("http.jwt.algorithms", "must name at least one"));
        }
        for name in &jwt.algorithms {
            if !super::http::JWT_ALGORITHMS.contains(&name.as_str()) {
                return Err(invalid(
                    "http.jwt.algorithms",
                    "takes EdDSA, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512 (HMAC and none are never accepted)",
                ));
            }
        }
        if http.operator.second_factor_max_age_s == 0
            || http.operator.funding_approval_min_minor < 1
        {
            return Err(invalid(
                "http.operator.second_factor_max_age_s",
                "second_factor_max_age_s and funding_approval_min_minor must be positive",
            ));
        }
        if jwt.lifetime_max_s == 0 || jwt.leeway_s > 300 {
            return Err(invalid(
                "http.jwt.lifetime_max_s",
                "lifetime_max_s must be positive and leeway_s at most 300",
            ));
        }
        Ok(())
    }
}

/// Whether one of two key prefixes contains the other (`a` and `a/b`, or equal).
fn nested(a: &str, b: &str) -> bool {
    let under = |inner: &str, outer: &str| {
        inner == outer || outer.is_empty() || inner.starts_with(&format!("{outer}/"))
    };
    under(a, b) || under(b, a)
}

/// Whether one of two paths is the other or inside it, after removing `.` and resolving `..`
/// by name (the directories need not exist yet).
fn lexically_nested(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::path::{Component, PathBuf};
    let normal = |path: &std::path::Path| {
        let mut out = PathBuf::new();
        for part in path.components() {
            match part {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    };
    let (a, b) = (normal(a), normal(b));
    a.starts_with(&b) || b.starts_with(&a)
}
