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

use crate::store::Store;
use paygate_core::payer::CredentialBlock;
use sqlx::Row;
use std::future::Future;
use std::time::Duration;

pub mod repo;
mod worker;
pub use worker::run_worker;

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

/// What the network said, and the retrieval reference number (12 digits) it gave the
/// payment, once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchReply {
    pub answer: SwitchAnswer,
    pub rrn: Option<String>,
}

impl SwitchReply {
    fn with(answer: SwitchAnswer, rrn: Option<String>) -> SwitchReply {
        SwitchReply { answer, rrn }
    }
}

/// A new UPI transaction id: 35 alphanumeric characters (NPCI), `PGW` and 32 hex digits.
pub fn new_txn_id() -> String {
    format!("PGW{}", uuid::Uuid::new_v4().simple()).to_uppercase()
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
    ) -> impl Future<Output = Result<SwitchReply, SwitchError>> + Send;
    /// A merchant's collect request to the customer's address.
    fn collect(
        &self,
        request: &PayRequest<'_>,
    ) -> impl Future<Output = Result<SwitchReply, SwitchError>> + Send;
    fn status(
        &self,
        txn_ref: &str,
    ) -> impl Future<Output = Result<SwitchReply, SwitchError>> + Send;
    /// Reverses a failed debit.
    fn reverse(&self, txn_ref: &str) -> impl Future<Output = Result<(), SwitchError>> + Send;
    /// Refunds `amount_minor` of the successful payment `txn_ref` to its payer, under the
    /// refund's own transaction id (a resend of one refund id refunds once); returns the RRN.
    fn refund(
        &self,
        txn_ref: &str,
        refund_txn_ref: &str,
        amount_minor: i64,
    ) -> impl Future<Output = Result<String, SwitchError>> + Send;
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
/// | 65 | the pay call answers success after its timer: the late answer resolves it |
/// | 66 | the pay call answers success after the last check gave up: kept to reconcile |
/// | 67 | like 62, but the reversal never answers: each attempt times out |
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

    async fn scenario(
        &self,
        txn_ref: &str,
    ) -> Result<Option<(String, bool, Option<String>)>, SwitchError> {
        let row = sqlx::query("SELECT scenario, reversed, rrn FROM upi_sandbox WHERE txn_ref = $1")
            .bind(txn_ref)
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        row.map(|r| {
            Ok((
                r.try_get::<String, _>("scenario")?,
                r.try_get::<i64, _>("reversed")? == 1,
                r.try_get::<Option<String>, _>("rrn")?,
            ))
        })
        .transpose()
        .map_err(|e: sqlx::Error| SwitchError::Unavailable(e.to_string()))
    }
}

impl UpiSwitch for SandboxSwitch {
    async fn pay(&self, request: &PayRequest<'_>) -> Result<SwitchReply, SwitchError> {
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
            65 => ("late-answer", true),
            66 => ("late-after-give-up", true),
            67 => ("reversal-hangs", true),
            _ => ("success", true),
        };
        if request
            .credential_block
            .is_none_or(|block| block.expose().is_empty())
        {
            let refused = SwitchAnswer::Failure {
                code: "ZM".into(),
                debited: false,
            };
            return Ok(SwitchReply::with(refused, None));
        }
        // the network gives every payment it takes a retrieval reference number
        let rrn = format!("{:012}", rand::random::<u64>() % 1_000_000_000_000);
        sqlx::query(
            "INSERT INTO upi_sandbox (txn_ref, scenario, debited, created_at_ms, rrn)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (txn_ref) DO NOTHING",
        )
        .bind(request.txn_ref)
        .bind(scenario)
        .bind(i64::from(debited))
        .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(0))
        .bind(&rrn)
        .execute(self.store.pool())
        .await
        .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        let answer = match scenario {
            "success" => SwitchAnswer::Success,
            "late-success" | "late-failure" | "deemed" | "silent" | "reversal-hangs" => {
                // the network sits on it past the caller's timer
                tokio::time::sleep(self.delay).await;
                SwitchAnswer::Pending
            }
            "late-answer" | "late-after-give-up" => {
                // the answer comes, but after the caller's timer
                tokio::time::sleep(self.delay).await;
                SwitchAnswer::Success
            }
            code => SwitchAnswer::Failure {
                code: code.into(),
                debited,
            },
        };
        Ok(SwitchReply::with(answer, Some(rrn)))
    }

    async fn collect(&self, request: &PayRequest<'_>) -> Result<SwitchReply, SwitchError> {
        // the sandbox customer approves at once; the outcome follows the same scenarios
        let approved = CredentialBlock::parse("c2FuZGJveC1jdXN0b21lci1hcHByb3ZhbA==")
            .map_err(SwitchError::Unavailable)?;
        self.pay(&PayRequest {
            credential_block: Some(&approved),
            ..*request
        })
        .await
    }

    async fn status(&self, txn_ref: &str) -> Result<SwitchReply, SwitchError> {
        sqlx::query("UPDATE upi_sandbox SET status_calls = status_calls + 1 WHERE txn_ref = $1")
            .bind(txn_ref)
            .execute(self.store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        let Some((scenario, _, rrn)) = self.scenario(txn_ref).await? else {
            // never received: no reference number
            let unknown = SwitchAnswer::Failure {
                code: "U17".into(),
                debited: false,
            };
            return Ok(SwitchReply::with(unknown, None));
        };
        let answer = match scenario.as_str() {
            "success" | "late-success" | "late-answer" => SwitchAnswer::Success,
            "late-after-give-up" => SwitchAnswer::Pending,
            "deemed" => SwitchAnswer::Deemed,
            "late-failure" | "reversal-hangs" => SwitchAnswer::Failure {
                code: "U30".into(),
                debited: true,
            },
            "silent" => SwitchAnswer::Pending,
            code => SwitchAnswer::Failure {
                code: code.into(),
                debited: false,
            },
        };
        Ok(SwitchReply::with(answer, rrn))
    }

    async fn reverse(&self, txn_ref: &str) -> Result<(), SwitchError> {
        if self
            .scenario(txn_ref)
            .await?
            .is_some_and(|(scenario, _, _)| scenario == "reversal-hangs")
        {
            // a bank that never answers the reversal: the caller's timeout must end it
            tokio::time::sleep(self.delay * 1_000).await;
        }
        sqlx::query("UPDATE upi_sandbox SET reversed = 1 WHERE txn_ref = $1")
            .bind(txn_ref)
            .execute(self.store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn refund(
        &self,
        txn_ref: &str,
        refund_txn_ref: &str,
        amount_minor: i64,
    ) -> Result<String, SwitchError> {
        let unavailable = |e: sqlx::Error| SwitchError::Unavailable(e.to_string());
        let rrn = format!("{:012}", rand::random::<u64>() % 1_000_000_000_000);
        sqlx::query(
            "INSERT INTO upi_sandbox_refunds (refund_txn_id, txn_ref, amount_minor, rrn)
             VALUES ($1, $2, $3, $4) ON CONFLICT (refund_txn_id) DO NOTHING",
        )
        .bind(refund_txn_ref)
        .bind(txn_ref)
        .bind(amount_minor)
        .bind(&rrn)
        .execute(self.store.pool())
        .await
        .map_err(unavailable)?;
        // a resend of the same refund answers with its first reference
        sqlx::query_scalar("SELECT rrn FROM upi_sandbox_refunds WHERE refund_txn_id = $1")
            .bind(refund_txn_ref)
            .fetch_one(self.store.pool())
            .await
            .map_err(unavailable)
    }
}

/// A payment for the worker to send: its id and the credential block (memory only).
pub struct Handoff {
    pub payment_id: String,
    pub payer_vpa: String,
    /// `None` for a collect request.
    pub credential_block: Option<CredentialBlock>,
}
