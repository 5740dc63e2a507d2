//! UPI through the sandbox switch, end to end over MQTT: approval, a decline of each NPCI code
//! class, timeout -> pending -> resolved by a status check, timeout -> reversal, deemed, no
//! answer -> reversal after the last check, and a pending payment that survives a gateway
//! restart and is resolved afterwards. Timers are shortened; the scenario is the amount's paise.

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, VerifiedReceipt};
use paygate_core::payer::{CredentialBlock, Payer, Vpa};
use paygate_core::receipt::Outcome;
use paygate_core::request::Operation;
use paygate_core::{AccountId, ErrorCode};
use paygate_tests::{inr, TestGateway};
use std::time::Duration;

async fn gateway(first_check_ms: u64) -> TestGateway {
    gateway_with(|s| {
        s.upi.pay_timeout_ms = 300;
        s.upi.sandbox_delay_ms = 1_000;
        s.upi.first_status_check_ms = first_check_ms;
        s.upi.status_check_interval_ms = 150;
        s.upi.status_checks_max = 3;
    })
    .await
}

/// A gateway with the UPI timers `adjust` sets, a paying device and the merchant's address.
async fn gateway_with(adjust: impl FnOnce(&mut paygate_gateway::config::Settings)) -> TestGateway {
    let gateway = TestGateway::start_with(adjust).await;
    gateway.device("pos-1", "1.00").await;
    gateway
        .store()
        .register_merchant_vpa(
            &Vpa::parse("shop@okaxis").unwrap(),
            &AccountId::parse(paygate_tests::MERCHANT).unwrap(),
        )
        .await
        .unwrap();
    gateway
}

fn upi_payment(amount: &str) -> Operation {
    use base64::Engine;
    let block = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Operation::UpiPayment {
        merchant_vpa: Vpa::parse("shop@okaxis").unwrap(),
        amount: inr(amount),
        payer: Payer::Upi {
            vpa: Vpa::parse("asha@okbank").unwrap(),
            credential_block: CredentialBlock::parse(&block).unwrap(),
        },
    }
}

/// Resends what is left in the outbox until the final receipt comes back.
async fn final_receipt(agent: &mut Agent) -> VerifiedReceipt {
    for _ in 0..100 {
        let mut receipts = agent.drain_outbox().await.unwrap();
        if let Some(last) = receipts.pop() {
            if last.receipt.outcome != Outcome::Pending {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no final receipt");
}

async fn pay(agent: &mut Agent, amount: &str) -> (VerifiedReceipt, VerifiedReceipt) {
    let first = agent.submit(upi_payment(amount)).await.unwrap();
    assert_eq!(
        first.receipt.outcome,
        Outcome::Pending,
        "{:?}",
        first.receipt
    );
    assert_eq!(first.receipt.payer.as_deref(), Some("upi a**a@okbank"));
    let last = final_receipt(agent).await;
    assert_eq!(last.receipt.idempotency_key, first.receipt.idempotency_key);
    // the UPI transaction id: 35 alphanumerics, from the first receipt on
    let txn_id = first.receipt.upi.as_ref().unwrap().txn_id.clone();
    assert_eq!(txn_id.len(), 35, "{txn_id}");
    assert!(
        txn_id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{txn_id}"
    );
    assert_eq!(last.receipt.upi.as_ref().unwrap().txn_id, txn_id);
    (first, last)
}

/// The network's retrieval reference number on a receipt: 12 digits.
fn rrn_of(receipt: &VerifiedReceipt) -> String {
    let rrn = receipt
        .receipt
        .upi
        .as_ref()
        .and_then(|u| u.rrn.clone())
        .unwrap_or_default();
    assert!(
        rrn.len() == 12 && rrn.chars().all(|c| c.is_ascii_digit()),
        "RRN {rrn:?}"
    );
    rrn
}

async fn sandbox(gateway: &TestGateway, column: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT {column} FROM upi_sandbox ORDER BY created_at_ms"
    ))
    .fetch_all(gateway.store().pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_declines_timeouts_reversals_and_deemed() {
    let gateway = gateway(150).await;
    let mut agent = gateway.agent("pos-1").await;

    // approved at once: the merchant is credited from the UPI settlement account, once
    let (_, approved) = pay(&mut agent, "100.00").await;
    assert_eq!(approved.receipt.outcome, Outcome::Approved);
    rrn_of(&approved);
    assert!(approved.receipt.tx_id.is_some());
    assert_eq!(gateway.balance("m-1").await, 10_000);
    assert_eq!(gateway.balance("upi-settlement-inr").await, -10_000);
    assert_eq!(
        gateway
            .store()
            .count_transfers("upi_payment")
            .await
            .unwrap(),
        1
    );

    // a decline of each NPCI code class, nothing posted
    for (amount, code, class) in [
        ("1.51", "ZM", "customer"),
        ("1.52", "Z9", "customer"),
        ("1.53", "U30", "remitter bank"),
        ("1.54", "U16", "risk"),
        ("1.55", "XH", "beneficiary"),
        ("1.56", "U17", "technical"),
    ] {
        let before = gateway.ledger_fingerprint().await;
        let (_, last) = pay(&mut agent, amount).await;
        assert_eq!(last.code(), Some(ErrorCode::UpiDeclined), "{amount}");
        rrn_of(&last);
        let message = last.receipt.message.clone().unwrap();
        assert!(
            message.contains(&format!("NPCI {code} ({class})")),
            "{message}"
        );
        assert_eq!(gateway.ledger_fingerprint().await, before, "{amount}");
    }

    // timeout -> pending -> a status check finds it succeeded
    let (_, late) = pay(&mut agent, "2.61").await;
    assert_eq!(
        late.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        late.receipt
    );
    rrn_of(&late);
    assert_eq!(gateway.balance("m-1").await, 10_000 + 261);

    // timeout -> the status check finds the debit failed -> reversed
    let before = gateway.ledger_fingerprint().await;
    let (_, reversed) = pay(&mut agent, "2.62").await;
    assert_eq!(reversed.code(), Some(ErrorCode::UpiDeclined));
    assert!(reversed
        .receipt
        .message
        .as_deref()
        .unwrap()
        .contains("reversed"));
    assert_eq!(gateway.ledger_fingerprint().await, before);

    // timeout -> deemed by the network: approved
    let (_, deemed) = pay(&mut agent, "2.63").await;
    assert_eq!(deemed.receipt.outcome, Outcome::Approved);
    assert!(deemed
        .receipt
        .message
        .as_deref()
        .unwrap()
        .contains("deemed"));

    // no answer at all: three status checks, then a reversal and UPI_TIMED_OUT
    let before = gateway.ledger_fingerprint().await;
    let (_, silent) = pay(&mut agent, "2.64").await;
    assert_eq!(silent.code(), Some(ErrorCode::UpiTimedOut));
    assert_eq!(gateway.ledger_fingerprint().await, before);

    let calls = sandbox(&gateway, "status_calls").await;
    let reversed_flags = sandbox(&gateway, "reversed").await;
    // rows: success, six declines, late-success, late-failure, deemed, silent
    assert_eq!(calls.len(), 11);
    assert_eq!(calls[..7], [0; 7], "no status check for answered payments");
    assert!(calls[7] >= 1 && calls[9] >= 1);
    assert_eq!(calls[10], 3, "at most three status checks");
    assert_eq!(reversed_flags, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
    // each reversal's own outcome is tracked
    let report =
        paygate_gateway::upi::repo::report(gateway.store(), paygate_gateway::clock::now_ms())
            .await
            .unwrap();
    assert_eq!(
        (report.reversals_requested, report.reversals_confirmed),
        (2, 2),
        "{report:?}"
    );
    // the credential block was passed on, never written down
    let stored: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT payer_ct FROM upi_payments")
        .fetch_all(gateway.store().pool())
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|(ct,)| !ct.windows(8).any(|w| w == [7u8; 8])));
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_payment_survives_a_restart_and_is_resolved_after() {
    let gateway = gateway(1_500).await;
    let mut agent = gateway.agent("pos-1").await;
    let first = agent.submit(upi_payment("3.61")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Pending);
    // wait for the pay call to time out: the payment is pending, its first check not yet due
    for _ in 0..50 {
        let state: String = sqlx::query_scalar("SELECT state FROM upi_payments")
            .fetch_one(gateway.store().pool())
            .await
            .unwrap();
        if state == "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.disconnect().await;
    let gateway = gateway.restart().await;
    let mut agent = gateway.agent("pos-1").await;
    let last = final_receipt(&mut agent).await;
    assert_eq!(
        last.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        last.receipt
    );
    assert_eq!(last.receipt.idempotency_key, first.receipt.idempotency_key);
    assert_eq!(gateway.balance("m-1").await, 361);
    assert_eq!(sandbox(&gateway, "status_calls").await, [1]);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// Collect: only a merchant's terminal may ask a customer's address for money; the customer
/// approves in their own app (the sandbox approves at once); the outcome follows the same
/// scenarios and the merchant is credited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_requests_come_only_from_a_merchant() {
    let gateway = gateway(150).await;
    gateway
        .terminal(
            "till-1",
            "m-shop",
            paygate_gateway::ledger::AccountKind::Merchant,
            "1.00",
        )
        .await;
    gateway
        .store()
        .register_merchant_vpa(
            &Vpa::parse("till@okaxis").unwrap(),
            &AccountId::parse("m-shop").unwrap(),
        )
        .await
        .unwrap();
    let collect = |amount: &str| Operation::UpiCollect {
        payer_vpa: Vpa::parse("asha@okbank").unwrap(),
        amount: inr(amount),
    };
    let mut till = gateway.agent("till-1").await;
    let first = till.submit(collect("5.00")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Pending);
    let approved = final_receipt(&mut till).await;
    assert_eq!(
        approved.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        approved.receipt
    );
    assert_eq!(gateway.balance("m-shop").await, 100 + 500);
    let first = till.submit(collect("5.51")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Pending);
    let declined = final_receipt(&mut till).await;
    assert_eq!(declined.code(), Some(ErrorCode::UpiDeclined));
    assert_eq!(gateway.balance("m-shop").await, 600);

    // a wallet's device cannot collect
    let mut wallet = gateway.agent("pos-1").await;
    let before = gateway.ledger_fingerprint().await;
    let refused = wallet.submit(collect("5.00")).await.unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::OperationNotAllowed));
    assert!(refused
        .receipt
        .message
        .as_deref()
        .unwrap()
        .contains("merchant's terminal"));
    assert_eq!(gateway.ledger_fingerprint().await, before);
    gateway.assert_ledger_balanced().await;
    till.disconnect().await;
    wallet.disconnect().await;
}

/// Issue 12, defect 1: the gateway stops while a pay call is at the switch (the switch took
/// the customer's money). The next gateway must not declare it "not sent": the payment's
/// lease runs out, a status check finds the debit, and the terminal and merchant get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_pay_call_resolves_it_by_status_check_not_as_unsent() {
    let gateway = gateway_with(|s| {
        s.upi.pay_timeout_ms = 5_000;
        s.upi.sandbox_delay_ms = 60_000; // the switch sits on it past the restart
        s.upi.first_status_check_ms = 150;
        s.upi.status_check_interval_ms = 150;
        s.upi.lease_margin_ms = 200;
    })
    .await;
    let mut agent = gateway.agent("pos-1").await;
    let first = agent.submit(upi_payment("4.61")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Pending);
    // the call has left: the switch holds the payment, the gateway has no answer
    for _ in 0..100 {
        if !sandbox(&gateway, "debited").await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sandbox(&gateway, "debited").await, [1]);
    agent.disconnect().await;
    let gateway = gateway.restart().await;
    let state: (String, Option<String>) = sqlx::query_as("SELECT state, result FROM upi_payments")
        .fetch_one(gateway.store().pool())
        .await
        .unwrap();
    assert_eq!(state, ("initiated".into(), None), "a start decided nothing");
    let mut agent = gateway.agent("pos-1").await;
    let last = final_receipt(&mut agent).await;
    assert_eq!(
        last.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        last.receipt
    );
    assert_eq!(last.receipt.idempotency_key, first.receipt.idempotency_key);
    assert_eq!(gateway.balance("m-1").await, 461);
    assert_eq!(sandbox(&gateway, "status_calls").await, [1]);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// Issue 12, defect 1, with replicas: a second gateway starting on the same PostgreSQL
/// database leaves the first one's payment in flight alone; the first resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_starting_leaves_the_first_ones_payment_in_flight_alone() {
    let url = paygate_tests::fresh_postgres_database().await;
    let adjust = |s: &mut paygate_gateway::config::Settings| {
        s.database.url = paygate_gateway::config::Secret::new(url.clone());
        s.upi.pay_timeout_ms = 1_500;
        s.upi.sandbox_delay_ms = 60_000;
        s.upi.first_status_check_ms = 100;
        s.upi.status_check_interval_ms = 150;
        s.upi.lease_margin_ms = 30_000; // a long lease: only its holder may act on it
    };
    let first_gateway = TestGateway::start_with(adjust).await;
    first_gateway.device("pos-1", "1.00").await;
    first_gateway
        .store()
        .register_merchant_vpa(
            &Vpa::parse("shop@okaxis").unwrap(),
            &AccountId::parse(paygate_tests::MERCHANT).unwrap(),
        )
        .await
        .unwrap();
    let mut agent = first_gateway.agent("pos-1").await;
    let first = agent.submit(upi_payment("5.61")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Pending);
    while sandbox(&first_gateway, "debited").await.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second_gateway = TestGateway::start_with(adjust).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several of its worker's ticks
    let result: Option<String> = sqlx::query_scalar("SELECT result FROM upi_payments")
        .fetch_one(second_gateway.store().pool())
        .await
        .unwrap();
    assert_eq!(result, None, "another replica's start decided the payment");
    // the first replica's call times out, its status check finds the debit
    let last = final_receipt(&mut agent).await;
    assert_eq!(
        last.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        last.receipt
    );
    assert_eq!(first_gateway.balance("m-1").await, 561);
    first_gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
    second_gateway.running.shutdown();
}

/// Issue 12, defect 5: a merchant account that cannot take the money (closed, or in another
/// currency) is found before the pay request leaves: declined, nothing sent to the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_that_cannot_be_credited_is_refused_before_the_network_is_asked() {
    let gateway = gateway(150).await;
    let store = gateway.store();
    for (id, currency) in [("m-usd", "USD"), ("m-closed", "INR")] {
        store
            .open_account(
                &AccountId::parse(id).unwrap(),
                paygate_gateway::ledger::AccountKind::Merchant,
                paygate_core::Currency::parse(currency).unwrap(),
                0,
            )
            .await
            .unwrap();
    }
    sqlx::query("UPDATE accounts SET status = 'closed' WHERE account_id = 'm-closed'")
        .execute(store.pool())
        .await
        .unwrap();
    for (vpa, id) in [("usd@okaxis", "m-usd"), ("closed@okaxis", "m-closed")] {
        store
            .register_merchant_vpa(&Vpa::parse(vpa).unwrap(), &AccountId::parse(id).unwrap())
            .await
            .unwrap();
    }
    let mut agent = gateway.agent("pos-1").await;
    for (vpa, code, reason) in [
        (
            "usd@okaxis",
            ErrorCode::CurrencyMismatch,
            "merchant m-usd is paid in USD",
        ),
        (
            "closed@okaxis",
            ErrorCode::UnknownMerchant,
            "merchant m-closed cannot take payments",
        ),
    ] {
        let before = gateway.ledger_fingerprint().await;
        let mut operation = upi_payment("10.00");
        if let Operation::UpiPayment { merchant_vpa, .. } = &mut operation {
            *merchant_vpa = Vpa::parse(vpa).unwrap();
        }
        let receipt = agent.submit(operation).await.unwrap();
        assert_eq!(receipt.code(), Some(code), "{:?}", receipt.receipt);
        let message = receipt.receipt.message.clone().unwrap_or_default();
        assert!(message.contains(reason), "{message}");
        assert_eq!(gateway.ledger_fingerprint().await, before);
    }
    assert!(
        sandbox(&gateway, "debited").await.is_empty(),
        "the switch was asked"
    );
    agent.disconnect().await;
}

/// Issue 12, defect 5: the merchant account closes while the network has the payment; the
/// success cannot be posted, so the customer's debit is reversed through the switch and the
/// terminal is told, with the ledger's reason. Nothing is posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_the_ledger_refuses_is_reversed_through_the_switch() {
    let gateway = gateway(600).await;
    let mut agent = gateway.agent("pos-1").await;
    let before = gateway.ledger_fingerprint().await;
    let first = agent.submit(upi_payment("6.61")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Pending);
    // the merchant closes while the pay call is out
    sqlx::query("UPDATE accounts SET status = 'closed' WHERE account_id = 'm-1'")
        .execute(gateway.store().pool())
        .await
        .unwrap();
    let last = final_receipt(&mut agent).await;
    assert_eq!(
        last.code(),
        Some(ErrorCode::UnknownMerchant),
        "{:?}",
        last.receipt
    );
    let message = last.receipt.message.clone().unwrap_or_default();
    assert!(message.contains("debit was reversed"), "{message}");
    assert_eq!(last.receipt.idempotency_key, first.receipt.idempotency_key);
    assert_eq!(sandbox(&gateway, "reversed").await, [1], "no reversal");
    assert_eq!(gateway.ledger_fingerprint().await, before);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// Issue 12, defect 10: NPCI's higher limit per transaction for some merchant categories (5
/// lakh INR for education, by default): a school takes 2 lakh over UPI, a shop does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_categories_have_their_own_upi_limit_per_transaction() {
    let gateway = gateway(150).await;
    let store = gateway.store();
    store
        .open_with(
            &paygate_gateway::ledger::NewAccount {
                account_id: AccountId::parse("m-school").unwrap(),
                kind: paygate_gateway::ledger::AccountKind::Merchant,
                unit: "INR".into(),
                kyc_tier: None,
                category: Some("education".into()),
                owner: None,
            },
            0,
        )
        .await
        .unwrap();
    store
        .register_merchant_vpa(
            &Vpa::parse("school@okaxis").unwrap(),
            &AccountId::parse("m-school").unwrap(),
        )
        .await
        .unwrap();
    let mut agent = gateway.agent("pos-1").await;
    // a shop: the standard 1 lakh, refused before the network
    let before = gateway.ledger_fingerprint().await;
    let refused = agent.submit(upi_payment("200000.00")).await.unwrap();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::LimitExceeded),
        "{refused:?}"
    );
    let message = refused.receipt.message.clone().unwrap_or_default();
    assert!(message.contains("100000.00 INR"), "{message}");
    assert_eq!(gateway.ledger_fingerprint().await, before);
    // the school: up to 5 lakh
    let mut operation = upi_payment("200000.00");
    if let Operation::UpiPayment { merchant_vpa, .. } = &mut operation {
        *merchant_vpa = Vpa::parse("school@okaxis").unwrap();
    }
    agent.submit(operation).await.unwrap();
    let last = final_receipt(&mut agent).await;
    assert_eq!(last.receipt.outcome, Outcome::Approved, "{last:?}");
    assert_eq!(gateway.balance("m-school").await, 200_000 * 100);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// Issue 12, defect 10: a UPI payment is refunded through the network: the merchant pays the
/// UPI settlement account back at once, the worker sends each refund under its own 35-
/// character id until the network confirms it (once per id), refunds never pass the payment,
/// and the T+1 report lists reversals and refunds not confirmed in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upi_payments_are_refunded_through_the_network_and_reported() {
    let gateway = gateway(150).await;
    gateway
        .terminal(
            "till-1",
            paygate_tests::MERCHANT,
            paygate_gateway::ledger::AccountKind::Merchant,
            "1.00",
        )
        .await;
    let mut agent = gateway.agent("pos-1").await;
    let (_, paid) = pay(&mut agent, "100.00").await;
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    let tx_id = paygate_core::TxId::parse(paid.receipt.tx_id.as_deref().unwrap()).unwrap();
    let mut till = gateway.agent("till-1").await;
    let refund = |amount: &str| Operation::Refund {
        tx_id: tx_id.clone(),
        amount: inr(amount),
    };
    let first = till.submit(refund("30.00")).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved, "{first:?}");
    let counterparty = first.receipt.counterparty.clone().unwrap_or_default();
    assert!(counterparty.starts_with("upi refund PGW"), "{counterparty}");
    assert_eq!(gateway.balance("m-1").await, 100 + 10_000 - 3_000);
    // more than is left: declined, nothing moves
    let before = gateway.ledger_fingerprint().await;
    let over = till.submit(refund("80.00")).await.unwrap();
    assert_eq!(
        over.code(),
        Some(ErrorCode::RefundExceedsOriginal),
        "{over:?}"
    );
    assert_eq!(gateway.ledger_fingerprint().await, before);
    let rest = till.submit(refund("70.00")).await.unwrap();
    assert_eq!(rest.receipt.outcome, Outcome::Approved, "{rest:?}");
    assert_eq!(gateway.balance("m-1").await, 100);
    assert_eq!(gateway.balance("upi-settlement-inr").await, 0);
    // the network refunds the customer, once per refund
    let mut confirmed = 0;
    for _ in 0..100 {
        confirmed = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM upi_refunds WHERE state = 'confirmed' AND rrn IS NOT NULL",
        )
        .fetch_one(gateway.store().pool())
        .await
        .unwrap();
        if confirmed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(confirmed, 2);
    let refunded: Vec<(String, i64)> = sqlx::query_as(
        "SELECT refund_txn_id, amount_minor FROM upi_sandbox_refunds ORDER BY amount_minor",
    )
    .fetch_all(gateway.store().pool())
    .await
    .unwrap();
    assert_eq!(
        refunded.iter().map(|r| r.1).collect::<Vec<_>>(),
        [3_000, 7_000]
    );
    assert!(refunded.iter().all(|r| r.0.len() == 35));
    let now = paygate_gateway::clock::now_ms();
    let report = paygate_gateway::upi::repo::report(gateway.store(), now)
        .await
        .unwrap();
    assert_eq!((report.refunds_initiated, report.refunds_confirmed), (2, 2));
    assert!(report.refunds_overdue.is_empty() && report.reversals_overdue.is_empty());
    // a reversal asked for two days ago and never confirmed is overdue
    sqlx::query(
        "UPDATE upi_payments SET reversal_requested_at_ms = $1, reversal_confirmed_at_ms = NULL",
    )
    .bind(i64::try_from(now - 2 * 86_400_000).unwrap())
    .execute(gateway.store().pool())
    .await
    .unwrap();
    let report = paygate_gateway::upi::repo::report(gateway.store(), now)
        .await
        .unwrap();
    assert_eq!(report.reversals_overdue.len(), 1, "{report:?}");
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
    till.disconnect().await;
}

/// Issue 12, defect 10: an answer the network gives after the gateway's timer is reconciled,
/// not dropped. Still being checked, it resolves the payment (before any status check); after
/// the gateway gave up and reversed, the disagreement is kept and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_the_timer_are_reconciled_not_dropped() {
    // the first status check is far off: only the late answer can resolve this one
    let gateway = gateway(30_000).await;
    let mut agent = gateway.agent("pos-1").await;
    let (_, late) = pay(&mut agent, "7.65").await;
    assert_eq!(
        late.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        late.receipt
    );
    assert_eq!(gateway.balance("m-1").await, 765);
    assert_eq!(
        sandbox(&gateway, "status_calls").await,
        [0],
        "resolved by the late answer"
    );
    agent.disconnect().await;

    // checks give up (no answer), the debit is reversed; then the pay call answers success
    let gateway = self::gateway(100).await;
    let mut agent = gateway.agent("pos-1").await;
    let before = gateway.ledger_fingerprint().await;
    let (_, gave_up) = pay(&mut agent, "7.66").await;
    assert_eq!(
        gave_up.code(),
        Some(ErrorCode::UpiTimedOut),
        "{:?}",
        gave_up.receipt
    );
    let mut report = None;
    for _ in 0..60 {
        let now = paygate_gateway::clock::now_ms();
        let current = paygate_gateway::upi::repo::report(gateway.store(), now)
            .await
            .unwrap();
        if !current.late_answers_disagreeing.is_empty() {
            report = Some(current);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = report.expect("the late answer was dropped");
    let (_, answer, recorded) = &report.late_answers_disagreeing[0];
    assert_eq!(
        (answer.as_str(), recorded.as_str()),
        ("success", "timed_out")
    );
    assert_eq!(sandbox(&gateway, "reversed").await, [1]);
    assert_eq!(
        gateway.ledger_fingerprint().await,
        before,
        "nothing posted on the late answer"
    );
    agent.disconnect().await;
}

/// Issue 12, defect 10: a reversal the bank never answers times out, and while it hangs the
/// worker still sends new payments (its checks and reversals run beside its loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_reversal_never_holds_up_new_payments() {
    let gateway = gateway_with(|s| {
        s.upi.pay_timeout_ms = 300;
        s.upi.sandbox_delay_ms = 500;
        s.upi.first_status_check_ms = 100;
        s.upi.status_check_interval_ms = 100;
        s.upi.status_timeout_ms = 3_000;
    })
    .await;
    let mut agent = gateway.agent("pos-1").await;
    let hanging = agent.submit(upi_payment("8.67")).await.unwrap();
    assert_eq!(hanging.receipt.outcome, Outcome::Pending);
    // wait until its reversal is asked for (and hangs)
    let mut requested_at: Option<i64> = None;
    for _ in 0..100 {
        requested_at = sqlx::query_scalar("SELECT reversal_requested_at_ms FROM upi_payments")
            .fetch_one(gateway.store().pool())
            .await
            .unwrap();
        if requested_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requested_at = requested_at.expect("no reversal asked for");
    // a new payment is sent while that reversal hangs, not after its timeout
    let (_, paid) = pay(&mut agent, "1.00").await;
    assert_eq!(
        paid.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        paid.receipt
    );
    let sent_at: i64 =
        sqlx::query_scalar("SELECT sent_at_ms FROM upi_payments WHERE amount_minor = 100")
            .fetch_one(gateway.store().pool())
            .await
            .unwrap();
    assert!(
        sent_at - requested_at < 3_000,
        "the new payment waited for the hanging reversal ({} ms)",
        sent_at - requested_at
    );
    let confirmed: Option<i64> = sqlx::query_scalar(
        "SELECT reversal_confirmed_at_ms FROM upi_payments WHERE amount_minor = 867",
    )
    .fetch_one(gateway.store().pool())
    .await
    .unwrap();
    assert_eq!(confirmed, None, "the hanging reversal is not confirmed");
    agent.disconnect().await;
}
