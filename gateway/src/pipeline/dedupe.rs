//! Stage 4's first step, deduplicate: what the store already holds for the batch's idempotency
//! keys and counters, read in two queries per chunk of the batch (keys, then counters, each over
//! decided requests, challenged payments and UPI payments), then kept up to date as the batch decides, so two requests with
//! one key in the same batch are answered as if they came one after the other.
//!
//! A known key with the same body answers the stored receipt; with another body
//! `IDEMPOTENCY_CONFLICT`; a new key on a used counter `COUNTER_REUSED`.

use crate::store::{self, Batch as Tx, StoreError};
use paygate_core::{DeviceId, ErrorCode, IdempotencyKey};
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// What a request is, given what is already decided.
pub enum Seen {
    New,
    Replay(Vec<u8>),
    Refused(ErrorCode, String),
}

#[derive(Default)]
pub struct Known {
    by_key: HashMap<(String, String), (Vec<u8>, Vec<u8>)>,
    counters: HashSet<(String, i64)>,
}

/// A request's identity for deduplication.
pub struct Probe<'a> {
    pub device: &'a DeviceId,
    pub key: &'a IdempotencyKey,
    pub counter: u64,
}

fn counter_value(counter: u64) -> i64 {
    i64::try_from(counter).unwrap_or(i64::MAX)
}

/// Tables that hold a request's first answer, latest last: a request decided for good
/// answers with its `requests` row over its challenge or UPI payment row.
const TABLES: [&str; 3] = ["identity_challenges", "upi_payments", "requests"];

/// `WITH probe(device, value) AS (VALUES ($1, $2), ...) SELECT 0 AS rank, columns FROM probe
/// JOIN first_table t ON ... UNION ALL SELECT 1 AS rank, ... ORDER BY rank`: every table in
/// [`TABLES`] for `count` (device, `by`) pairs, bound once and joined in each table's part, in
/// table order. A join on a list of values is planned once for the list (a disjunction of
/// `count` terms costs SQLite a plan per term: three times the time on a batch of 120).
fn probe_query(columns: &str, by: &str, by_type: &str, count: usize) -> String {
    let values: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "(CAST(${} AS TEXT), CAST(${} AS {by_type}))",
                2 * i + 1,
                2 * i + 2
            )
        })
        .collect();
    let parts: Vec<String> = TABLES
        .iter()
        .enumerate()
        .map(|(rank, table)| {
            format!(
                "SELECT {rank} AS rank, {columns} FROM probe JOIN {table} t \
                 ON t.device_id = probe.device AND t.{by} = probe.value"
            )
        })
        .collect();
    format!(
        "WITH probe(device, value) AS (VALUES {}) {} ORDER BY rank",
        values.join(", "),
        parts.join(" UNION ALL ")
    )
}

impl Known {
    pub async fn load(tx: &mut Tx<'_>, probes: &[Probe<'_>]) -> Result<Known, StoreError> {
        let mut known = Known::default();
        for chunk in probes.chunks(store::rows_per_statement(tx, 2)) {
            known.load_keys(tx, chunk).await?;
            known.load_counters(tx, chunk).await?;
        }
        Ok(known)
    }

    async fn load_keys(&mut self, tx: &mut Tx<'_>, probes: &[Probe<'_>]) -> Result<(), StoreError> {
        let columns = "t.device_id AS device_id, t.idempotency_key AS idempotency_key, \
            t.body_sha256 AS body_sha256, t.receipt AS receipt";
        let sql = probe_query(columns, "idempotency_key", "TEXT", probes.len());
        let mut query = sqlx::query(&sql);
        for probe in probes {
            query = query.bind(probe.device.as_str()).bind(probe.key.as_str());
        }
        for row in query.fetch_all(&mut **tx).await? {
            self.by_key.insert(
                (row.try_get("device_id")?, row.try_get("idempotency_key")?),
                (row.try_get("body_sha256")?, row.try_get("receipt")?),
            );
        }
        Ok(())
    }

    async fn load_counters(
        &mut self,
        tx: &mut Tx<'_>,
        probes: &[Probe<'_>],
    ) -> Result<(), StoreError> {
        let sql = probe_query(
            "t.device_id AS device_id, t.counter AS counter",
            "counter",
            "BIGINT",
            probes.len(),
        );
        let mut query = sqlx::query(&sql);
        for probe in probes {
            query = query
                .bind(probe.device.as_str())
                .bind(counter_value(probe.counter));
        }
        for row in query.fetch_all(&mut **tx).await? {
            self.counters
                .insert((row.try_get("device_id")?, row.try_get("counter")?));
        }
        Ok(())
    }

    pub fn check(&self, probe: &Probe<'_>, body_sha256: &[u8]) -> Seen {
        let id = (probe.device.to_string(), probe.key.to_string());
        if let Some((body, receipt)) = self.by_key.get(&id) {
            if body == body_sha256 {
                return Seen::Replay(receipt.clone());
            }
            return Seen::Refused(
                ErrorCode::IdempotencyConflict,
                "this idempotency key was used with a different request body".into(),
            );
        }
        let counter = (probe.device.to_string(), counter_value(probe.counter));
        if self.counters.contains(&counter) {
            return Seen::Refused(
                ErrorCode::CounterReused,
                format!(
                    "counter {} was already used by another request",
                    probe.counter
                ),
            );
        }
        Seen::New
    }

    /// A request decided in this batch: later ones with its key or counter see it.
    pub fn remember(&mut self, probe: &Probe<'_>, body_sha256: &[u8], receipt: &[u8]) {
        self.by_key.insert(
            (probe.device.to_string(), probe.key.to_string()),
            (body_sha256.to_vec(), receipt.to_vec()),
        );
        self.counters
            .insert((probe.device.to_string(), counter_value(probe.counter)));
    }
}
