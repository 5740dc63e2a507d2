//! UPI payments through a switch connector, and the worker that talks to the network.
//!
//! The pipeline records a UPI payment as `initiated` and answers the terminal with a signed
//! `pending` receipt; it hands the credential block (in memory only) to the worker. The worker
//! sends the pay request within `upi.pay_timeout_ms`. A final answer (success, deemed, failure)
//! is written to the payment as `answered`. A timeout leaves it `pending`, and the worker then
//! runs status checks on NPCI's schedule. A failure after a debit, or no final answer after the
//! last check, ends in a reversal. The pipeline's tick settles answered payments: it posts
//! successes (settlement account to merchant), records the final receipt and pushes it to the
//! terminal. All state is in the database, so a restart resumes the status checks. A payment
//! whose pay call never left the previous process (its credential block died with it) is
//! declined `UPI_NOT_SENT`.

use crate::config::UpiSettings;
use crate::store::{Store, StoreError};
use paygate_core::payer::CredentialBlock;
use sqlx::Row;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The network's answer about one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchAnswer {
    Success,
    /// The network deems the payment successful (its own final state).
    Deemed,
    /// Declined with an NPCI response code; `debited` when the payer's bank had already
    /// debited (so a reversal is due).
    Failure {
        code: String,
        debited: bool,
    },
    /// No final state yet.
    Pending,
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("the switch did not answer in time")]
    Timeout,
    #[error("switch: {0}")]
    Unavailable(String),
}

/// What a pay request carries to the network.
pub struct PayRequest<'a> {
    pub txn_ref: &'a str,
    pub payer_vpa: &'a str,
    pub payee_vpa: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    /// The encrypted UPI PIN block, passed through and never kept. `None` for a collect
    /// request: the customer approves it with their PIN in their own UPI app.
    pub credential_block: Option<&'a CredentialBlock>,
}

/// A connector to a UPI switch (the sandbox below; a bank's or PSP's API in production).
pub trait UpiSwitch: Send + Sync + 'static {
    fn pay(
        &self,
        request: &PayRequest<'_>,
    ) -> impl Future<Output = Result<SwitchAnswer, SwitchError>> + Send;
    /// A merchant's collect request to the customer's address.
    fn collect(
        &self,
        request: &PayRequest<'_>,
    ) -> impl Future<Output = Result<SwitchAnswer, SwitchError>> + Send;
    fn status(
        &self,
        txn_ref: &str,
    ) -> impl Future<Output = Result<SwitchAnswer, SwitchError>> + Send;
    /// Reverses a failed debit.
    fn reverse(&self, txn_ref: &str) -> impl Future<Output = Result<(), SwitchError>> + Send;
}

/// The class of an NPCI response code, for receipts and reports.
pub fn code_class(code: &str) -> &'static str {
    match code {
        "ZM" | "Z9" | "Z8" | "ZA" => "customer",
        "U30" | "U29" | "XY" => "remitter bank",
        "XH" | "U31" | "YE" => "beneficiary",
        "U16" | "U53" => "risk",
        _ => "technical",
    }
}

/// The sandbox switch: behaves like the network, its outcome chosen by the amount's paise
/// (docs/protocol.md). Its records live in `upi_sandbox`, so the network's side of a payment
/// survives a gateway restart.
///
/// | paise | outcome |
/// | --- | --- |
/// | 51 | declined ZM (wrong UPI PIN, customer) |
/// | 52 | declined Z9 (insufficient funds, customer) |
/// | 53 | declined U30 (debit failed, remitter bank) |
/// | 54 | declined U16 (risk threshold, risk) |
/// | 55 | declined XH (beneficiary account missing) |
/// | 56 | declined U17 (PSP not available, technical) |
/// | 61 | pay times out; the status check says success |
/// | 62 | pay times out; the status check says failed after a debit: reversal |
/// | 63 | pay times out; the status check says deemed |
/// | 64 | pay times out; the network never answers: reversal after the last check |
/// | else | approved |
#[derive(Clone)]
pub struct SandboxSwitch {
    store: Store,
    delay: Duration,
}

impl SandboxSwitch {
    pub fn new(store: Store, delay: Duration) -> SandboxSwitch {
        SandboxSwitch { store, delay }
    }

    async fn scenario(&self, txn_ref: &str) -> Result<Option<(String, bool)>, SwitchError> {
        let row = sqlx::query("SELECT scenario, reversed FROM upi_sandbox WHERE txn_ref = $1")
            .bind(txn_ref)
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        row.map(|r| {
            Ok((
                r.try_get::<String, _>("scenario")?,
                r.try_get::<i64, _>("reversed")? == 1,
            ))
        })
        .transpose()
        .map_err(|e: sqlx::Error| SwitchError::Unavailable(e.to_string()))
    }
}

impl UpiSwitch for SandboxSwitch {
    async fn pay(&self, request: &PayRequest<'_>) -> Result<SwitchAnswer, SwitchError> {
        let paise = request.amount_minor.rem_euclid(100);
        let (scenario, debited) = match paise {
            51 => ("ZM", false),
            52 => ("Z9", false),
            53 => ("U30", false),
            54 => ("U16", false),
            55 => ("XH", false),
            56 => ("U17", false),
            61 => ("late-success", true),
            62 => ("late-failure", true),
            63 => ("deemed", true),
            64 => ("silent", true),
            _ => ("success", true),
        };
        if request
            .credential_block
            .is_none_or(|block| block.expose().is_empty())
        {
            return Ok(SwitchAnswer::Failure {
                code: "ZM".into(),
                debited: false,
            });
        }
        sqlx::query(
            "INSERT INTO upi_sandbox (txn_ref, scenario, debited, created_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (txn_ref) DO NOTHING",
        )
        .bind(request.txn_ref)
        .bind(scenario)
        .bind(i64::from(debited))
        .bind(i64::try_from(crate::pipeline::now_ms()).unwrap_or(0))
        .execute(self.store.pool())
        .await
        .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        match scenario {
            "success" => Ok(SwitchAnswer::Success),
            "late-success" | "late-failure" | "deemed" | "silent" => {
                // the network sits on it past the caller's timer
                tokio::time::sleep(self.delay).await;
                Ok(SwitchAnswer::Pending)
            }
            code => Ok(SwitchAnswer::Failure {
                code: code.into(),
                debited,
            }),
        }
    }

    async fn collect(&self, request: &PayRequest<'_>) -> Result<SwitchAnswer, SwitchError> {
        // the sandbox customer approves at once; the outcome follows the same scenarios
        let approved = CredentialBlock::parse("c2FuZGJveC1jdXN0b21lci1hcHByb3ZhbA==")
            .map_err(SwitchError::Unavailable)?;
        self.pay(&PayRequest {
            credential_block: Some(&approved),
            ..*request
        })
        .await
    }

    async fn status(&self, txn_ref: &str) -> Result<SwitchAnswer, SwitchError> {
        sqlx::query("UPDATE upi_sandbox SET status_calls = status_calls + 1 WHERE txn_ref = $1")
            .bind(txn_ref)
            .execute(self.store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        Ok(match self.scenario(txn_ref).await? {
            None => SwitchAnswer::Failure {
                code: "U17".into(),
                debited: false,
            },
            Some((scenario, _)) => match scenario.as_str() {
                "success" | "late-success" => SwitchAnswer::Success,
                "deemed" => SwitchAnswer::Deemed,
                "late-failure" => SwitchAnswer::Failure {
                    code: "U30".into(),
                    debited: true,
                },
                "silent" => SwitchAnswer::Pending,
                code => SwitchAnswer::Failure {
                    code: code.into(),
                    debited: false,
                },
            },
        })
    }

    async fn reverse(&self, txn_ref: &str) -> Result<(), SwitchError> {
        sqlx::query("UPDATE upi_sandbox SET reversed = 1 WHERE txn_ref = $1")
            .bind(txn_ref)
            .execute(self.store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        Ok(())
    }
}

/// A payment for the worker to send: its id and the credential block (memory only).
pub struct Handoff {
    pub payment_id: String,
    pub payer_vpa: String,
    /// `None` for a collect request.
    pub credential_block: Option<CredentialBlock>,
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

async fn answer(
    store: &Store,
    payment_id: &str,
    from_states: &[&str],
    result: &str,
    code: Option<&str>,
) -> Result<(), StoreError> {
    for state in from_states {
        sqlx::query(
            "UPDATE upi_payments SET state = 'answered', result = $1, npci_code = $2
             WHERE payment_id = $3 AND state = $4",
        )
        .bind(result)
        .bind(code)
        .bind(payment_id)
        .bind(*state)
        .execute(store.pool())
        .await?;
    }
    Ok(())
}

async fn schedule_check(
    store: &Store,
    payment_id: &str,
    at_ms: u64,
    checks: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE upi_payments SET state = 'pending', next_check_at_ms = $1, status_checks = $2
         WHERE payment_id = $3 AND state IN ('initiated', 'pending')",
    )
    .bind(ms(at_ms))
    .bind(checks)
    .bind(payment_id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Applies a final or pending answer to a payment.
async fn apply<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
    payment_id: &str,
    got: Result<SwitchAnswer, SwitchError>,
    checks_done: i64,
) -> Result<(), StoreError> {
    let now = crate::pipeline::now_ms();
    let states = ["initiated", "pending"];
    match got {
        Ok(SwitchAnswer::Success) => answer(store, payment_id, &states, "success", None).await,
        Ok(SwitchAnswer::Deemed) => answer(store, payment_id, &states, "deemed", None).await,
        Ok(SwitchAnswer::Failure { code, debited }) => {
            if debited {
                // a failed payment that debited the payer is reversed (RBI: by T+1)
                match switch.reverse(payment_id).await {
                    Ok(()) => answer(store, payment_id, &states, "reversed", Some(&code)).await,
                    Err(error) => {
                        tracing::warn!(%error, payment_id, "reversal failed; retried at the next check");
                        schedule_check(
                            store,
                            payment_id,
                            now + settings.status_check_interval_ms,
                            checks_done,
                        )
                        .await
                    }
                }
            } else {
                answer(store, payment_id, &states, "failure", Some(&code)).await
            }
        }
        Ok(SwitchAnswer::Pending) | Err(_) => {
            if checks_done >= i64::from(settings.status_checks_max) {
                match switch.reverse(payment_id).await {
                    Ok(()) => answer(store, payment_id, &states, "timed_out", None).await,
                    Err(error) => {
                        tracing::warn!(%error, payment_id, "reversal failed; retried later");
                        schedule_check(
                            store,
                            payment_id,
                            now + settings.status_check_interval_ms,
                            checks_done,
                        )
                        .await
                    }
                }
            } else {
                let wait = if checks_done == 0 {
                    settings.first_status_check_ms
                } else {
                    settings.status_check_interval_ms
                };
                schedule_check(store, payment_id, now + wait, checks_done).await
            }
        }
    }
}

/// The worker: sends handed-off payments, runs due status checks every `tick`, and at start
/// declines payments the previous process committed but never sent.
pub async fn run_worker<S: UpiSwitch + Clone>(
    store: Store,
    switch: S,
    settings: UpiSettings,
    mut handoffs: mpsc::UnboundedReceiver<Handoff>,
    mut shutdown: watch::Receiver<bool>,
) {
    // the credential blocks of these died with the previous process
    if let Err(error) = sqlx::query(
        "UPDATE upi_payments SET state = 'answered', result = 'not_sent' WHERE state = 'initiated'",
    )
    .execute(store.pool())
    .await
    {
        tracing::error!(%error, "UPI startup sweep failed");
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            handoff = handoffs.recv() => {
                let Some(handoff) = handoff else { return };
                let store = store.clone();
                let switch = switch.clone();
                let settings = settings.clone();
                tokio::spawn(async move {
                    if let Err(error) = send(&store, &switch, &settings, handoff).await {
                        tracing::error!(%error, "UPI pay failed; the status checks take over");
                    }
                });
            }
            _ = tick.tick() => {
                if let Err(error) = check_due(&store, &switch, &settings).await {
                    tracing::error!(%error, "UPI status checks failed; retried at the next tick");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn send<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
    handoff: Handoff,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT merchant_vpa, amount_minor, currency, direction FROM upi_payments WHERE payment_id = $1 AND state = 'initiated'",
    )
    .bind(handoff.payment_id.as_str())
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(()) };
    let payee: String = row.try_get("merchant_vpa")?;
    let currency: String = row.try_get("currency")?;
    let request = PayRequest {
        txn_ref: &handoff.payment_id,
        payer_vpa: &handoff.payer_vpa,
        payee_vpa: &payee,
        amount_minor: row.try_get("amount_minor")?,
        currency: &currency,
        credential_block: handoff.credential_block.as_ref(),
    };
    let direction: String = row.try_get("direction")?;
    let call = async {
        if direction == "collect" {
            switch.collect(&request).await
        } else {
            switch.pay(&request).await
        }
    };
    let got = match tokio::time::timeout(Duration::from_millis(settings.pay_timeout_ms), call).await
    {
        Ok(answer) => answer,
        Err(_) => Err(SwitchError::Timeout),
    };
    let Handoff {
        payment_id,
        credential_block,
        ..
    } = handoff;
    drop(credential_block); // gone from here on
    apply(store, switch, settings, &payment_id, got, 0).await
}

async fn check_due<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
) -> Result<(), StoreError> {
    let now = crate::pipeline::now_ms();
    let due = sqlx::query(
        "SELECT payment_id, status_checks FROM upi_payments
         WHERE state = 'pending' AND next_check_at_ms <= $1 ORDER BY next_check_at_ms LIMIT 64",
    )
    .bind(ms(now))
    .fetch_all(store.pool())
    .await?;
    for row in due {
        let payment_id: String = row.try_get("payment_id")?;
        let checks: i64 = row.try_get("status_checks")?;
        let got = match tokio::time::timeout(
            Duration::from_millis(settings.status_timeout_ms),
            switch.status(&payment_id),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => Err(SwitchError::Timeout),
        };
        apply(store, switch, settings, &payment_id, got, checks + 1).await?;
    }
    Ok(())
}
