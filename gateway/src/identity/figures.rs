//! The completeness figures of a whole batch of payments, read in a few statements for all of
//! them (one per table and chunk of `store::rows_per_statement` rows), then kept up to date in memory as the
//! batch's payments are approved, so each payment sees the ones decided before it exactly as
//! [`super::completeness`] would have read them from the database.
//!
//! Every figure is bounded as the single read is: the device's and the wallet's counts by the
//! velocity window and their limits, the payees and passes by the key looked up.

use super::{unsigned, Figures};
use crate::store::{placeholders, rows_per_statement, Batch, StoreError};
use paygate_core::identity::Mechanism;
use paygate_core::{AccountId, DeviceId};
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// A payment whose figures are wanted.
pub struct PaymentRef<'a> {
    pub device: &'a DeviceId,
    pub wallet: &'a AccountId,
    pub merchant: &'a AccountId,
}

/// The velocity window and the counts' limits (the abuse limits).
pub struct Window {
    pub now_ms: u64,
    pub velocity_window_ms: u64,
    pub device_count_max: u32,
    pub wallet_count_max: u32,
}

/// A validate pass as read: for which payee, up to which amount, by which mechanism, when.
struct Pass {
    payee: String,
    amount_minor: i64,
    mechanism: Mechanism,
    passed_at_ms: u64,
}

#[derive(Default)]
pub struct BatchFigures {
    /// Per device: used before, decided requests in the window.
    devices: HashMap<String, (bool, u32)>,
    /// Per wallet: debits in the window, spent since the last strong authentication.
    wallets: HashMap<String, (u32, i64)>,
    /// (wallet, payee) pairs the wallet has paid.
    payees: HashSet<(String, String)>,
    passes: HashMap<String, Vec<Pass>>,
}

fn count(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl BatchFigures {
    /// Reads the figures of every payment in `payments`.
    pub async fn load(
        tx: &mut Batch<'_>,
        payments: &[PaymentRef<'_>],
        window: &Window,
    ) -> Result<BatchFigures, StoreError> {
        let mut figures = BatchFigures::default();
        let devices: Vec<&str> = distinct(payments.iter().map(|p| p.device.as_str()));
        let wallets: Vec<&str> = distinct(payments.iter().map(|p| p.wallet.as_str()));
        let since = i64::try_from(window.now_ms.saturating_sub(window.velocity_window_ms))
            .unwrap_or(i64::MAX);
        for chunk in devices.chunks(rows_per_statement(tx, 1)) {
            figures.load_devices(tx, chunk, since, window).await?;
        }
        for chunk in wallets.chunks(rows_per_statement(tx, 1)) {
            figures.load_wallets(tx, chunk, since, window).await?;
            figures.load_passes(tx, chunk).await?;
        }
        let mut pairs: Vec<(&str, &str)> = payments
            .iter()
            .map(|p| (p.wallet.as_str(), p.merchant.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        for chunk in pairs.chunks(rows_per_statement(tx, 2)) {
            figures.load_payees(tx, chunk).await?;
        }
        Ok(figures)
    }

    async fn load_devices(
        &mut self,
        tx: &mut Batch<'_>,
        devices: &[&str],
        since: i64,
        window: &Window,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "WITH d(id) AS (VALUES {})
             SELECT d.id AS id,
               (SELECT COUNT(*) FROM (SELECT 1 FROM requests WHERE device_id = d.id LIMIT 1) AS u)
                 AS used_before,
               (SELECT COUNT(*) FROM (SELECT 1 FROM requests
                 WHERE device_id = d.id AND decided_at_ms >= $1 LIMIT $2) AS r) AS in_window
             FROM d",
            placeholders(devices.len(), 1, 3)
        );
        let mut query = sqlx::query(&sql)
            .bind(since)
            .bind(i64::from(window.device_count_max));
        for device in devices {
            query = query.bind(*device);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let used: i64 = row.try_get("used_before")?;
            let in_window: i64 = row.try_get("in_window")?;
            self.devices
                .insert(row.try_get("id")?, (used > 0, count(in_window)));
        }
        Ok(())
    }

    async fn load_wallets(
        &mut self,
        tx: &mut Batch<'_>,
        wallets: &[&str],
        since: i64,
        window: &Window,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "WITH w(id) AS (VALUES {})
             SELECT w.id AS id,
               (SELECT COUNT(*) FROM (SELECT 1 FROM wallet_debit_log
                 WHERE account_id = w.id AND created_at_ms >= $1 LIMIT $2) AS l) AS in_window,
               (SELECT COALESCE(MAX(debited_since_strong_auth_minor), 0) FROM wallet_counters
                 WHERE account_id = w.id) AS since_strong
             FROM w",
            placeholders(wallets.len(), 1, 3)
        );
        let mut query = sqlx::query(&sql)
            .bind(since)
            .bind(i64::from(window.wallet_count_max));
        for wallet in wallets {
            query = query.bind(*wallet);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let in_window: i64 = row.try_get("in_window")?;
            let since_strong: i64 = row.try_get("since_strong")?;
            self.wallets
                .insert(row.try_get("id")?, (count(in_window), since_strong));
        }
        Ok(())
    }

    async fn load_passes(
        &mut self,
        tx: &mut Batch<'_>,
        wallets: &[&str],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT wallet_account_id, payee_account_id, amount_minor, mechanism, passed_at_ms
             FROM identity_passes WHERE wallet_account_id IN ({})",
            (1..=wallets.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut query = sqlx::query(&sql);
        for wallet in wallets {
            query = query.bind(*wallet);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let name: String = row.try_get("mechanism")?;
            let Some(mechanism) = Mechanism::parse(&name) else {
                continue;
            };
            let wallet: String = row.try_get("wallet_account_id")?;
            self.passes.entry(wallet).or_default().push(Pass {
                payee: row.try_get("payee_account_id")?,
                amount_minor: row.try_get("amount_minor")?,
                mechanism,
                passed_at_ms: unsigned(row.try_get("passed_at_ms")?),
            });
        }
        Ok(())
    }

    async fn load_payees(
        &mut self,
        tx: &mut Batch<'_>,
        pairs: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let sql = format!(
            "WITH p(wallet, payee) AS (VALUES {})
             SELECT p.wallet AS wallet, p.payee AS payee FROM p
             WHERE EXISTS (SELECT 1 FROM wallet_payees
               WHERE wallet_account_id = p.wallet AND payee_account_id = p.payee)",
            placeholders(pairs.len(), 2, 1)
        );
        let mut query = sqlx::query(&sql);
        for (wallet, payee) in pairs {
            query = query.bind(*wallet).bind(*payee);
        }
        for row in query.fetch_all(&mut **tx).await? {
            self.payees
                .insert((row.try_get("wallet")?, row.try_get("payee")?));
        }
        Ok(())
    }

    /// The figures of one payment, as [`super::completeness`] would read them now; `None`
    /// for a device or wallet that was not loaded.
    pub fn figures(&self, payment: &PaymentRef<'_>, amount_minor: i64) -> Option<Figures> {
        let (used_before, device_in_window) = *self.devices.get(payment.device.as_str())?;
        let (wallet_in_window, since_strong_minor) = *self.wallets.get(payment.wallet.as_str())?;
        let passes = self
            .passes
            .get(payment.wallet.as_str())
            .map(|passes| {
                passes
                    .iter()
                    .filter(|p| {
                        p.payee == payment.merchant.as_str() && p.amount_minor >= amount_minor
                    })
                    .map(|p| (p.mechanism, p.passed_at_ms))
                    .collect()
            })
            .unwrap_or_default();
        Some(Figures {
            paid_before: self
                .payees
                .contains(&(payment.wallet.to_string(), payment.merchant.to_string())),
            used_before,
            device_in_window,
            wallet_in_window,
            since_strong_minor,
            passes,
        })
    }

    /// A payment approved: what the database would now read for the next one (its request
    /// decided, its debit logged and counted, its payee paid).
    pub fn count_debit(&mut self, payment: &PaymentRef<'_>, amount_minor: i64) {
        if let Some((used, in_window)) = self.devices.get_mut(payment.device.as_str()) {
            *used = true;
            *in_window = in_window.saturating_add(1);
        }
        if let Some((in_window, since_strong)) = self.wallets.get_mut(payment.wallet.as_str()) {
            *in_window = in_window.saturating_add(1);
            *since_strong = since_strong.saturating_add(amount_minor);
        }
        self.payees
            .insert((payment.wallet.to_string(), payment.merchant.to_string()));
    }
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut values: Vec<&str> = values.collect();
    values.sort_unstable();
    values.dedup();
    values
}
