//! One bad request in a full batch fails alone: the pipeline decides each request in its own
//! savepoint, so a request whose decision breaks an invariant (here, a wallet row corrupted
//! behind the gateway's back) is refused with `INTERNAL_ERROR` and an alert, and every other
//! request of the same batch is approved, posted once and receipted.

#![allow(clippy::unwrap_used)]

use paygate_core::receipt::Outcome;
use paygate_core::{AccountId, ErrorCode};
use paygate_tests::{inr, TestGateway, MERCHANT};
use std::time::Duration;

const GOOD_TERMINALS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_request_in_a_full_batch_fails_alone() {
    // no reward points: a payment that earns points is decided alone, outside the fast lane
    let gateway = TestGateway::start_with(|s| {
        s.pipeline.batch_size_max = 48;
        s.rewards.enabled = false;
    })
    .await;
    for n in 0..GOOD_TERMINALS {
        gateway.device(&format!("pos-{n}"), "100.00").await;
    }
    gateway.device("pos-bad", "100.00").await;
    gateway.device("pos-primer", "100.00").await;
    // corrupt the bad terminal's wallet row: reading it breaks an invariant
    sqlx::query(
        "UPDATE accounts SET owner_account_id = 'not an id!' WHERE account_id = 'wallet-pos-bad'",
    )
    .execute(gateway.store().pool())
    .await
    .unwrap();
    let mut agents = Vec::new();
    for n in 0..GOOD_TERMINALS {
        agents.push(gateway.agent(&format!("pos-{n}")).await);
    }
    let mut bad_settings = gateway.agent_settings("pos-bad");
    bad_settings.receipt_timeout = Duration::from_secs(8);
    let bad_bundle = paygate_agent::DeviceBundle::load(&gateway.bundle_dir("pos-bad")).unwrap();
    let mut bad = paygate_agent::Agent::connect(bad_bundle, bad_settings)
        .await
        .unwrap();

    // hold the ledger's write lock: a first payment takes the pipeline into a batch that
    // waits for it, and every request sent meanwhile queues up for the next batch
    let lock = gateway.store().begin_batch().await.unwrap();
    let merchant = AccountId::parse(MERCHANT).unwrap();
    let mut primer = gateway.agent("pos-primer").await;
    let primer_payment = {
        let merchant = merchant.clone();
        tokio::spawn(async move { primer.pay(&merchant, inr("10.00")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut payments = Vec::new();
    for mut agent in agents {
        let merchant = merchant.clone();
        payments.push(tokio::spawn(async move {
            let receipt = agent.pay(&merchant, inr("10.00")).await;
            agent.disconnect().await;
            receipt
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bad_payment = {
        let merchant = merchant.clone();
        tokio::spawn(async move {
            let receipt = bad.pay(&merchant, inr("10.00")).await;
            (bad, receipt)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.rollback().await.unwrap();

    let primed = primer_payment.await.unwrap().unwrap();
    assert_eq!(primed.receipt.outcome, Outcome::Approved, "{primed:?}");
    for payment in payments {
        let receipt = payment.await.unwrap().unwrap();
        assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    }
    let (mut bad, outcome) = bad_payment.await.unwrap();
    assert!(
        outcome.is_err(),
        "the bad request got a final receipt: {outcome:?}"
    );
    let metrics = gateway.running.metrics.snapshot();
    assert!(
        metrics.pipeline_batch_size_max > GOOD_TERMINALS as u64,
        "the requests were not decided together: largest batch {}",
        metrics.pipeline_batch_size_max
    );
    assert!(
        metrics.pipeline_bulk_decided >= GOOD_TERMINALS as u64,
        "the good payments were not decided together: {} in the fast lane",
        metrics.pipeline_bulk_decided
    );
    assert!(metrics.refusals_of(ErrorCode::InternalError) >= 1);
    assert!(metrics.ledger_invariant_alerts >= 1);
    let approved = GOOD_TERMINALS as u64 + 1;
    assert_eq!(metrics.requests_approved, approved);
    assert_eq!(
        gateway
            .store()
            .count_transfers("merchant_payment")
            .await
            .unwrap(),
        approved as i64
    );
    // nothing of the bad request stayed: its wallet is untouched
    assert_eq!(gateway.balance("wallet-pos-bad").await, 10_000);
    assert_eq!(gateway.balance(MERCHANT).await, 1_000 * approved as i64);
    gateway.assert_ledger_balanced().await;

    // repaired, the same request (still in the terminal's outbox) is approved once
    sqlx::query("UPDATE accounts SET owner_account_id = NULL WHERE account_id = 'wallet-pos-bad'")
        .execute(gateway.store().pool())
        .await
        .unwrap();
    let receipts = bad.drain_outbox().await.unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].receipt.outcome,
        Outcome::Approved,
        "{:?}",
        receipts[0]
    );
    assert_eq!(gateway.balance("wallet-pos-bad").await, 10_000 - 1_000);
    gateway.assert_ledger_balanced().await;
    bad.disconnect().await;
}

/// A batch that cannot be recorded is refused `INTERNAL_ERROR`, but only if the refusals
/// themselves reach the audit trail: while the database takes nothing at all, no reply may
/// leave (audit before receipt). The terminal's resend is approved once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_cannot_be_audited_never_leaves() {
    use paygate_core::request::{Operation, Request, REQUEST_CONTENT_TYPE};
    use paygate_core::{DeviceId, IdempotencyKey};
    let gateway = TestGateway::start_with(|s| s.database.sqlite_busy_timeout_ms = 200).await;
    let bundle = gateway.device("pos-held", "100.00").await;
    let mut agent = gateway.agent("pos-held").await;
    let request = Request {
        device_id: DeviceId::parse("pos-held").unwrap(),
        idempotency_key: IdempotencyKey::parse("held-1").unwrap(),
        counter: 1,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::MerchantPayment {
            merchant_id: AccountId::parse(MERCHANT).unwrap(),
            amount: inr("10.00"),
            payer: None,
        },
    };
    let envelope = bundle
        .signing_key
        .seal(REQUEST_CONTENT_TYPE, &request.to_payload());

    // SQLite's write lock held past the batch's wait and the refusals' wait for it
    let lock = gateway.store().begin_batch().await.unwrap();
    agent.publish_raw(envelope.clone()).await.unwrap();
    let during = agent
        .next_reply(Duration::from_millis(2_000), Some("held-1"))
        .await;
    assert!(
        during.is_none(),
        "a reply left although nothing of its batch could be recorded: {during:?}"
    );
    let refused = gateway.running.metrics.snapshot();
    assert_eq!(refused.requests_approved, 0);
    lock.rollback().await.unwrap();

    agent.publish_raw(envelope).await.unwrap();
    let after = agent
        .next_reply(Duration::from_secs(10), Some("held-1"))
        .await
        .expect("the resend is answered once the database is back");
    assert_eq!(after.receipt.outcome, Outcome::Approved, "{after:?}");
    assert_eq!(gateway.balance("wallet-pos-held").await, 10_000 - 1_000);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// The pipeline's end is visible to whoever runs the gateway (`paygate serve` exits non-zero
/// when it ends without a shutdown): it runs while the gateway does and stops with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_says_when_it_has_stopped() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    assert!(!gateway.running.pipeline_ended());
    gateway.running.shutdown();
    tokio::time::timeout(
        Duration::from_secs(10),
        gateway.running.wait_pipeline_ended(),
    )
    .await
    .expect("the pipeline stops with the gateway");
    assert!(gateway.running.pipeline_ended());
}
