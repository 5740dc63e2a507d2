//! The UPI worker: sends handed-off payments within `upi.pay_timeout_ms`, runs due status
//! checks, reverses failed debits, and writes each final answer to the payment as `answered`
//! for the pipeline's tick to settle.

use super::{Handoff, PayRequest, SwitchAnswer, SwitchError, SwitchReply, UpiSwitch};
use crate::config::UpiSettings;
use crate::store::{Store, StoreError};
use sqlx::Row;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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
        // only by the worker holding the payment: one whose lease ran out and was taken
        // over writes nothing
        sqlx::query(
            "UPDATE upi_payments SET state = 'answered', result = $1, npci_code = $2
             WHERE payment_id = $3 AND state = $4 AND worker_id = $5",
        )
        .bind(result)
        .bind(code)
        .bind(payment_id)
        .bind(*state)
        .bind(worker_id())
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
         WHERE payment_id = $3 AND state IN ('initiated', 'pending') AND worker_id = $4",
    )
    .bind(ms(at_ms))
    .bind(checks)
    .bind(payment_id)
    .bind(worker_id())
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Asks the switch to reverse a debit, within `status_timeout_ms` (a switch that hangs
/// never stalls the worker), after renewing this worker's lease for that long: a worker whose
/// lease was taken over does not reverse (the new holder decides).
async fn reverse_in_time<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
    payment_id: &str,
) -> Result<(), SwitchError> {
    let until = crate::clock::now_ms()
        .saturating_add(settings.status_timeout_ms)
        .saturating_add(settings.lease_margin_ms);
    let renewed = sqlx::query(
        "UPDATE upi_payments SET lease_until_ms = $1,
                next_check_at_ms = CASE WHEN state = 'pending' THEN $1 ELSE next_check_at_ms END,
                reversal_requested_at_ms = COALESCE(reversal_requested_at_ms, $4),
                reversal_attempts = reversal_attempts + 1
         WHERE payment_id = $2 AND worker_id = $3 AND state IN ('initiated', 'pending')",
    )
    .bind(ms(until))
    .bind(payment_id)
    .bind(worker_id())
    .bind(ms(crate::clock::now_ms()))
    .execute(store.pool())
    .await
    .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
    if renewed.rows_affected() != 1 {
        return Err(SwitchError::Unavailable(
            "the payment's lease is another worker's now".into(),
        ));
    }
    let timeout = Duration::from_millis(settings.status_timeout_ms);
    let reversed = match tokio::time::timeout(timeout, switch.reverse(payment_id)).await {
        Ok(reversed) => reversed,
        Err(_) => Err(SwitchError::Timeout),
    };
    if reversed.is_ok() {
        // the reversal's own outcome, for the T+1 report
        sqlx::query("UPDATE upi_payments SET reversal_confirmed_at_ms = $1 WHERE payment_id = $2")
            .bind(ms(crate::clock::now_ms()))
            .bind(payment_id)
            .execute(store.pool())
            .await
            .map_err(|e| SwitchError::Unavailable(e.to_string()))?;
    }
    reversed
}

/// Applies a final or pending answer to a payment.
async fn apply<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
    payment_id: &str,
    got: Result<SwitchReply, SwitchError>,
    checks_done: i64,
) -> Result<(), StoreError> {
    let now = crate::clock::now_ms();
    let got = match got {
        Ok(SwitchReply { answer, rrn }) => {
            if let Some(rrn) = rrn {
                // the network's reference, kept from its first answer that carried one
                sqlx::query(
                    "UPDATE upi_payments SET rrn = COALESCE(rrn, $1) WHERE payment_id = $2",
                )
                .bind(rrn)
                .bind(payment_id)
                .execute(store.pool())
                .await?;
            }
            Ok(answer)
        }
        Err(error) => Err(error),
    };
    let states = ["initiated", "pending"];
    match got {
        Ok(SwitchAnswer::Success) => answer(store, payment_id, &states, "success", None).await,
        Ok(SwitchAnswer::Deemed) => answer(store, payment_id, &states, "deemed", None).await,
        Ok(SwitchAnswer::Failure { code, debited }) => {
            if debited {
                // a failed payment that debited the payer is reversed (RBI: by T+1)
                match reverse_in_time(store, switch, settings, payment_id).await {
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
                match reverse_in_time(store, switch, settings, payment_id).await {
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

/// Sends due refunds of UPI payments to the network, each claimed first (as a status check
/// is) and retried until the network confirms it.
async fn send_refunds<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
    now: u64,
) -> Result<(), StoreError> {
    let due = sqlx::query(
        "SELECT refund_txn_id, payment_id, amount_minor, next_attempt_at_ms FROM upi_refunds
         WHERE state = 'initiated' AND next_attempt_at_ms <= $1
         ORDER BY next_attempt_at_ms LIMIT 64",
    )
    .bind(ms(now))
    .fetch_all(store.pool())
    .await?;
    for row in due {
        let refund_txn: String = row.try_get("refund_txn_id")?;
        let payment_id: String = row.try_get("payment_id")?;
        let amount: i64 = row.try_get("amount_minor")?;
        let due_at: i64 = row.try_get("next_attempt_at_ms")?;
        let until = now
            .saturating_add(settings.status_timeout_ms)
            .saturating_add(settings.lease_margin_ms);
        let claimed = sqlx::query(
            "UPDATE upi_refunds SET next_attempt_at_ms = $1, worker_id = $2, attempts = attempts + 1
             WHERE refund_txn_id = $3 AND state = 'initiated' AND next_attempt_at_ms = $4",
        )
        .bind(ms(until))
        .bind(worker_id())
        .bind(&refund_txn)
        .bind(due_at)
        .execute(store.pool())
        .await?;
        if claimed.rows_affected() != 1 {
            continue; // another worker has it
        }
        let call = switch.refund(&payment_id, &refund_txn, amount);
        let timeout = Duration::from_millis(settings.status_timeout_ms);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(rrn)) => {
                sqlx::query(
                    "UPDATE upi_refunds SET state = 'confirmed', confirmed_at_ms = $1, rrn = $2
                     WHERE refund_txn_id = $3 AND worker_id = $4",
                )
                .bind(ms(crate::clock::now_ms()))
                .bind(rrn)
                .bind(&refund_txn)
                .bind(worker_id())
                .execute(store.pool())
                .await?;
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => "the switch did not answer in time".to_owned(),
                };
                tracing::warn!(%error, refund_txn, "UPI refund not confirmed; retried");
                sqlx::query(
                    "UPDATE upi_refunds SET next_attempt_at_ms = $1
                     WHERE refund_txn_id = $2 AND worker_id = $3 AND state = 'initiated'",
                )
                .bind(ms(now.saturating_add(settings.status_check_interval_ms)))
                .bind(&refund_txn)
                .bind(worker_id())
                .execute(store.pool())
                .await?;
            }
        }
    }
    Ok(())
}

/// This worker's name in the leases it takes (one per process: a restarted gateway is
/// another worker, and finds its predecessor's leases by their expiry).
fn worker_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("upi-{}", hex::encode(rand::random::<[u8; 6]>())))
}

/// Claims a payment for sending: only one not yet claimed and still inside its send window
/// (`pay_timeout_ms` from its commit). The claim is written before the pay call leaves, so a
/// payment never claimed was certainly never sent.
async fn claim_for_send(
    store: &Store,
    settings: &UpiSettings,
    payment_id: &str,
    now: u64,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "UPDATE upi_payments SET sent_at_ms = $1, lease_until_ms = $2, worker_id = $3
         WHERE payment_id = $4 AND state = 'initiated' AND sent_at_ms IS NULL
           AND created_at_ms + $5 > $1",
    )
    .bind(ms(now))
    .bind(ms(now
        .saturating_add(settings.pay_timeout_ms)
        .saturating_add(settings.lease_margin_ms)))
    .bind(worker_id())
    .bind(payment_id)
    .bind(ms(settings.pay_timeout_ms))
    .execute(store.pool())
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Payments whose worker went away (any replica's, this one's predecessor's): never claimed
/// within the send window, declined `not_sent` (certain: the claim comes before the call);
/// claimed and the lease run out, the outcome unknown: a status check is due now.
async fn recover_abandoned(
    store: &Store,
    settings: &UpiSettings,
    now: u64,
) -> Result<(), StoreError> {
    let unsent = sqlx::query(
        "UPDATE upi_payments SET state = 'answered', result = 'not_sent'
         WHERE state = 'initiated' AND sent_at_ms IS NULL AND created_at_ms + $1 <= $2",
    )
    .bind(ms(settings.pay_timeout_ms))
    .bind(ms(now))
    .execute(store.pool())
    .await?;
    let unknown = sqlx::query(
        "UPDATE upi_payments SET state = 'pending', next_check_at_ms = $1
         WHERE state = 'initiated' AND sent_at_ms IS NOT NULL AND lease_until_ms <= $1",
    )
    .bind(ms(now))
    .execute(store.pool())
    .await?;
    if unsent.rows_affected() > 0 || unknown.rows_affected() > 0 {
        tracing::warn!(
            not_sent = unsent.rows_affected(),
            outcome_unknown = unknown.rows_affected(),
            "UPI payments of a stopped worker taken over"
        );
    }
    Ok(())
}

/// Claims a due status check: moves its time past this check's own timeout, if no other
/// worker moved it first.
async fn claim_check(
    store: &Store,
    settings: &UpiSettings,
    payment_id: &str,
    due_at: i64,
    now: u64,
) -> Result<bool, StoreError> {
    let until = now
        .saturating_add(settings.status_timeout_ms)
        .saturating_add(settings.lease_margin_ms);
    let claimed = sqlx::query(
        "UPDATE upi_payments SET next_check_at_ms = $1, lease_until_ms = $1, worker_id = $2
         WHERE payment_id = $3 AND state = 'pending' AND next_check_at_ms = $4",
    )
    .bind(ms(until))
    .bind(worker_id())
    .bind(payment_id)
    .bind(due_at)
    .execute(store.pool())
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// The worker: sends handed-off payments and runs due status checks every `tick`.
pub async fn run_worker<S: UpiSwitch + Clone>(
    store: Store,
    switch: S,
    settings: UpiSettings,
    mut handoffs: mpsc::Receiver<Handoff>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // calls in flight end with the worker, as they would with the process: their leases
    // run out and the next worker resolves them
    let mut sends = tokio::task::JoinSet::new();
    let mut checks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            handoff = handoffs.recv() => {
                let Some(handoff) = handoff else { return };
                let store = store.clone();
                let switch = switch.clone();
                let settings = settings.clone();
                sends.spawn(async move {
                    if let Err(error) = send(&store, &switch, &settings, handoff).await {
                        tracing::error!(%error, "UPI pay failed; the status checks take over");
                    }
                });
            }
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
            _ = tick.tick() => {
                // the checks, reversals and refunds run beside the loop, one round at a time:
                // a switch slow to answer them never holds up a new payment's send
                while checks.try_join_next().is_some() {}
                if checks.is_empty() {
                    let store = store.clone();
                    let switch = switch.clone();
                    let settings = settings.clone();
                    checks.spawn(async move {
                        if let Err(error) = check_due(&store, &switch, &settings).await {
                            tracing::error!(%error, "UPI status checks failed; retried at the next tick");
                        }
                    });
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
    if !claim_for_send(store, settings, &handoff.payment_id, crate::clock::now_ms()).await? {
        // its send window closed before the worker got to it: declined as never sent
        return Ok(());
    }
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
    let payment_id = handoff.payment_id.clone();
    let mut call = std::pin::pin!(call);
    let timer = Duration::from_millis(settings.pay_timeout_ms);
    let got = match tokio::time::timeout(timer, &mut call).await {
        Ok(answer) => answer,
        Err(_) => {
            // the timer ran out: the status checks take over, but the call is not dropped:
            // an answer that still comes is reconciled
            apply(
                store,
                switch,
                settings,
                &payment_id,
                Err(SwitchError::Timeout),
                0,
            )
            .await?;
            let window = Duration::from_millis(settings.late_answer_window_ms);
            if let Ok(Ok(reply)) = tokio::time::timeout(window, &mut call).await {
                late_answer(store, switch, settings, &payment_id, reply).await?;
            }
            return Ok(());
        }
    };
    apply(store, switch, settings, &payment_id, got, 0).await
}

/// A pay call's answer after its timer. While the payment is still being checked it is
/// applied (after claiming the payment as a status check would, so a check in progress and
/// the late answer never both act); once the payment was decided otherwise, the disagreement
/// is kept for reconciliation with the network.
async fn late_answer<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
    payment_id: &str,
    reply: SwitchReply,
) -> Result<(), StoreError> {
    let answer = match &reply.answer {
        SwitchAnswer::Pending => return Ok(()),
        SwitchAnswer::Success => "success",
        SwitchAnswer::Deemed => "deemed",
        SwitchAnswer::Failure { .. } => "failure",
    };
    let row = sqlx::query(
        "SELECT state, result, status_checks, next_check_at_ms FROM upi_payments WHERE payment_id = $1",
    )
    .bind(payment_id)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(()) };
    let state: String = row.try_get("state")?;
    if state == "pending" {
        let due_at: i64 = row.try_get("next_check_at_ms")?;
        let checks: i64 = row.try_get("status_checks")?;
        let now = crate::clock::now_ms();
        if claim_check(store, settings, payment_id, due_at, now).await? {
            tracing::info!(payment_id, answer, "a late UPI answer resolves the payment");
            apply(store, switch, settings, payment_id, Ok(reply), checks).await?;
        }
        return Ok(());
    }
    let recorded: Option<String> = row.try_get("result")?;
    let recorded = recorded.unwrap_or_else(|| state.clone());
    let agrees = match answer {
        "success" | "deemed" => matches!(recorded.as_str(), "success" | "deemed"),
        _ => !matches!(recorded.as_str(), "success" | "deemed"),
    };
    if !agrees {
        tracing::error!(
            payment_id,
            answer,
            recorded,
            "a late UPI answer disagrees with the payment's outcome; kept for reconciliation"
        );
        sqlx::query(
            "INSERT INTO upi_late_answers (payment_id, late_answer, recorded_result, at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(payment_id)
        .bind(answer)
        .bind(&recorded)
        .bind(ms(crate::clock::now_ms()))
        .execute(store.pool())
        .await?;
    }
    Ok(())
}

async fn check_due<S: UpiSwitch>(
    store: &Store,
    switch: &S,
    settings: &UpiSettings,
) -> Result<(), StoreError> {
    let now = crate::clock::now_ms();
    recover_abandoned(store, settings, now).await?;
    send_refunds(store, switch, settings, now).await?;
    let due = sqlx::query(
        "SELECT payment_id, status_checks, next_check_at_ms, reversal_due FROM upi_payments
         WHERE state = 'pending' AND next_check_at_ms <= $1 ORDER BY next_check_at_ms LIMIT 64",
    )
    .bind(ms(now))
    .fetch_all(store.pool())
    .await?;
    for row in due {
        let payment_id: String = row.try_get("payment_id")?;
        let checks: i64 = row.try_get("status_checks")?;
        let due_at: i64 = row.try_get("next_check_at_ms")?;
        if !claim_check(store, settings, &payment_id, due_at, now).await? {
            continue; // another worker has it
        }
        if row.try_get::<i64, _>("reversal_due")? == 1 {
            // a success the ledger refused: the customer's debit goes back
            match reverse_in_time(store, switch, settings, &payment_id).await {
                Ok(()) => answer(store, &payment_id, &["pending"], "reversed", None).await?,
                Err(error) => {
                    tracing::error!(%error, payment_id, "reversal of an unpostable UPI success failed; retried")
                }
            }
            continue;
        }
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
