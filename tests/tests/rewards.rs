//! Reward points end to end through MQTT: earn by rule and category (pending, then active),
//! redeem as tender (all points, part points), first-in-first-out use and expiry by lot,
//! clawback on refund, the liability report, and the refusals (more points than held, points
//! that have expired or are still pending, points worth more than the amount).

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, VerifiedReceipt};
use paygate_core::request::Operation;
use paygate_core::{AccountId, ErrorCode, TxId};
use paygate_gateway::ledger::AccountKind;
use paygate_gateway::rewards;
use paygate_tests::{inr, TestGateway};

const PENDING_MS: u64 = 60_000;

async fn gateway() -> TestGateway {
    gateway_with(|_| {}).await
}

async fn gateway_with(adjust: impl FnOnce(&mut paygate_gateway::config::Settings)) -> TestGateway {
    let gateway = TestGateway::start_with(|s| {
        s.rewards.pending_ms = PENDING_MS;
        s.rewards.expiry_ms = 86_400_000;
        s.rewards.point_value_minor = 25;
        // the test runs the job itself, with its own clock
        s.rewards.job_interval_ms = 3_600_000;
        adjust(s);
    })
    .await;
    gateway.device("pos-a", "5000.00").await;
    gateway
        .terminal("till-g", "m-grocer", AccountKind::Merchant, "1.00")
        .await;
    let mut batch = gateway.store().begin_batch().await.unwrap();
    sqlx::query("UPDATE accounts SET category = 'grocery' WHERE account_id = 'm-grocer'")
        .execute(&mut *batch)
        .await
        .unwrap();
    batch.commit().await.unwrap();
    gateway
}

fn id(text: &str) -> AccountId {
    AccountId::parse(text).unwrap()
}

fn points_payment(merchant: &str, amount: &str, points: i64) -> Operation {
    Operation::PointsPayment {
        merchant_id: id(merchant),
        amount: inr(amount),
        points,
    }
}

fn approved(receipt: &VerifiedReceipt) -> TxId {
    assert!(receipt.code().is_none(), "{:?}", receipt.receipt);
    TxId::parse(receipt.receipt.tx_id.as_deref().unwrap()).unwrap()
}

async fn points(gateway: &TestGateway) -> i64 {
    gateway
        .store()
        .balance(&rewards::points_account(&id("wallet-pos-a")))
        .await
        .unwrap()
        .unwrap_or(0)
}

/// The lots of wallet-pos-a, oldest first: (state, remaining, expires_at_ms).
async fn lots(gateway: &TestGateway) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT state, points_remaining, expires_at_ms FROM points_lots
         WHERE wallet_account_id = 'wallet-pos-a' ORDER BY created_at_ms, lot_id",
    )
    .fetch_all(gateway.store().pool())
    .await
    .unwrap()
}

/// The points balance is always the remaining points of the pending and active lots.
async fn assert_lots_match_ledger(gateway: &TestGateway) {
    let held: i64 = lots(gateway)
        .await
        .iter()
        .filter(|(state, _, _)| state == "pending" || state == "active")
        .map(|(_, remaining, _)| remaining)
        .sum();
    assert_eq!(points(gateway).await, held);
    gateway.assert_ledger_balanced().await;
}

async fn declined(
    gateway: &TestGateway,
    agent: &mut Agent,
    operation: Operation,
    code: ErrorCode,
    reason: &str,
) {
    let before = gateway.ledger_fingerprint().await;
    let lots_before = lots(gateway).await;
    let receipt = agent.submit(operation.clone()).await.unwrap();
    assert_eq!(
        receipt.code(),
        Some(code),
        "{operation:?}: {:?}",
        receipt.receipt
    );
    let message = receipt.receipt.message.clone().unwrap_or_default();
    assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    assert_eq!(gateway.ledger_fingerprint().await, before);
    assert_eq!(lots(gateway).await, lots_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earn_redeem_expire_claw_back_and_report() {
    let gateway = gateway().await;
    let store = gateway.store();
    let mut a = gateway.agent("pos-a").await;

    // earn: 2 points per rupee at a grocer, 1 elsewhere, capped at 500 per purchase
    let grocery = approved(&a.pay(&id("m-grocer"), inr("100.00")).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    approved(&a.pay(&id("m-1"), inr("50.99")).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    approved(&a.pay(&id("m-1"), inr("900.00")).await.unwrap());
    assert_eq!(points(&gateway).await, 200 + 50 + 500);
    let held = lots(&gateway).await;
    assert_eq!(
        held.iter().map(|l| (l.0.as_str(), l.1)).collect::<Vec<_>>(),
        [("pending", 200), ("pending", 50), ("pending", 500)]
    );

    // pending points cannot be spent
    declined(
        &gateway,
        &mut a,
        points_payment("m-1", "10.00", 40),
        ErrorCode::PointsInsufficient,
        "40 points asked, 0 active points held",
    )
    .await;

    // the job activates them once the pending time has passed
    let run = rewards::run_jobs(store, paygate_gateway::clock::now_ms() + PENDING_MS + 1)
        .await
        .unwrap();
    assert_eq!(run.lots_activated, 3);

    // redeem: all in points (40 points = 10.00), then part points and part money
    let wallet_before = gateway.balance("wallet-pos-a").await;
    let merchant_before = gateway.balance("m-1").await;
    approved(&a.submit(points_payment("m-1", "10.00", 40)).await.unwrap());
    assert_eq!(gateway.balance("wallet-pos-a").await, wallet_before);
    assert_eq!(gateway.balance("m-1").await, merchant_before + 1_000);
    approved(&a.submit(points_payment("m-1", "20.00", 20)).await.unwrap());
    assert_eq!(gateway.balance("wallet-pos-a").await, wallet_before - 1_500);
    assert_eq!(gateway.balance("m-1").await, merchant_before + 3_000);
    assert_eq!(
        gateway.balance("rewards-funding-inr").await,
        -(1_000 + 500),
        "the programme paid the merchant for 60 points"
    );
    // first in, first out: both redemptions came out of the oldest lot; the money part of the
    // second earned 15 points, pending
    let held = lots(&gateway).await;
    assert_eq!(
        held.iter().map(|l| (l.0.as_str(), l.1)).collect::<Vec<_>>(),
        [
            ("active", 140),
            ("active", 50),
            ("active", 500),
            ("pending", 15)
        ]
    );
    assert_lots_match_ledger(&gateway).await;

    // refusals: more than held, worth more than the amount
    declined(
        &gateway,
        &mut a,
        points_payment("m-1", "500.00", 691),
        ErrorCode::PointsInsufficient,
        "691 points asked, 690 active points held",
    )
    .await;
    declined(
        &gateway,
        &mut a,
        points_payment("m-1", "1.00", 5),
        ErrorCode::AmountInvalid,
        "worth more than the amount",
    )
    .await;

    // clawback: half the grocery payment refunded takes back half its 200 points
    let mut till = gateway.agent("till-g").await;
    approved(
        &till
            .submit(Operation::Refund {
                tx_id: grocery.clone(),
                amount: inr("50.00"),
            })
            .await
            .unwrap(),
    );
    assert_eq!(
        lots(&gateway).await[0].1,
        40,
        "100 points clawed from the grocery lot"
    );
    // the rest of the refund: the lot holds 40 of the 100 still due; 60 come from the next lot
    approved(
        &till
            .submit(Operation::Refund {
                tx_id: grocery,
                amount: inr("50.00"),
            })
            .await
            .unwrap(),
    );
    let held = lots(&gateway).await;
    assert_eq!(
        held.iter().map(|l| (l.0.as_str(), l.1)).collect::<Vec<_>>(),
        [("spent", 0), ("spent", 0), ("active", 490), ("pending", 15)]
    );
    let clawbacks: (i64,) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM transfers WHERE kind = 'points_clawback'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(clawbacks.0, 2);
    assert_lots_match_ledger(&gateway).await;

    // expiry, first in first out by lot: at the third lot's expiry time it alone goes
    let third_expires = u64::try_from(held[2].2).unwrap();
    let run = rewards::run_jobs(store, third_expires).await.unwrap();
    assert_eq!((run.lots_expired, run.points_expired), (1, 490), "{run:?}");
    let held = lots(&gateway).await;
    assert_eq!(held[2].0, "expired");
    assert_eq!(
        (held[3].0.as_str(), held[3].1),
        ("active", 15),
        "the newest lot does not expire (and its pending time is over)"
    );
    // a second run finds nothing to expire again
    let again = rewards::run_jobs(store, third_expires).await.unwrap();
    assert_eq!(again.lots_expired, 0);
    assert_lots_match_ledger(&gateway).await;

    // expired points are gone: only the newest lot's 15 can be spent
    declined(
        &gateway,
        &mut a,
        points_payment("m-1", "10.00", 16),
        ErrorCode::PointsInsufficient,
        "16 points asked, 15 active points held",
    )
    .await;

    // the liability report: 15 active points worth 3.75
    let report = rewards::liability_report(store, &gateway.settings.rewards)
        .await
        .unwrap();
    assert_eq!(report.pending_points, 0);
    assert_eq!(report.active_points, 15);
    assert_eq!(report.ledger_points, 15);
    assert_eq!(report.value_minor, 375);
    assert_eq!(report.wallets, 1);
    a.disconnect().await;
    till.disconnect().await;
}

fn refund(original: &TxId, amount: &str) -> Operation {
    Operation::Refund {
        tx_id: original.clone(),
        amount: inr(amount),
    }
}

async fn activate(gateway: &TestGateway) {
    rewards::run_jobs(
        gateway.store(),
        paygate_gateway::clock::now_ms() + PENDING_MS + 1,
    )
    .await
    .unwrap();
}

async fn transfers_of(gateway: &TestGateway, kind: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT CAST(COUNT(*) AS BIGINT) FROM transfers WHERE kind = $1")
        .bind(kind)
        .fetch_one(gateway.store().pool())
        .await
        .unwrap()
}

/// A refund gives back each tender: the money to the wallet, the points to the customer's
/// points (a new active lot), and the points the money part earned are clawed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_tendered_in_points_are_refunded_to_each_tender() {
    let gateway = gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let mut till = gateway.agent("till-g").await;
    approved(&a.pay(&id("m-grocer"), inr("100.00")).await.unwrap());
    activate(&gateway).await;
    // 20.00: 20 points (5.00) and 15.00 in money, which earns 30 points; 10.00 all in points
    let part = approved(
        &a.submit(points_payment("m-grocer", "20.00", 20))
            .await
            .unwrap(),
    );
    let whole = approved(
        &a.submit(points_payment("m-grocer", "10.00", 40))
            .await
            .unwrap(),
    );
    assert_eq!(points(&gateway).await, 200 - 20 + 30 - 40);
    let wallet_before = gateway.balance("wallet-pos-a").await;

    let receipt = till.submit(refund(&whole, "10.00")).await.unwrap();
    approved(&receipt);
    assert_eq!(gateway.balance("wallet-pos-a").await, wallet_before);
    assert_eq!(points(&gateway).await, 170 + 40);
    assert_eq!(gateway.balance("rewards-funding-inr").await, -500);
    assert!(receipt
        .receipt
        .counterparty
        .as_deref()
        .unwrap_or_default()
        .contains("40 points returned"));

    // the part-points payment in two halves: 10 points and 7.50 each, 15 earned points clawed
    approved(&till.submit(refund(&part, "10.00")).await.unwrap());
    assert_eq!(gateway.balance("wallet-pos-a").await, wallet_before + 750);
    assert_eq!(points(&gateway).await, 210 + 10 - 15);
    approved(&till.submit(refund(&part, "10.00")).await.unwrap());
    assert_eq!(gateway.balance("wallet-pos-a").await, wallet_before + 1_500);
    assert_eq!(
        points(&gateway).await,
        205 + 10 - 15,
        "the grocery points and every point tendered are back"
    );
    assert_eq!(gateway.balance("rewards-funding-inr").await, 0);
    assert_eq!(gateway.balance("m-grocer").await, 100 + 10_000);
    // and no more than the payment
    declined(
        &gateway,
        &mut till,
        refund(&part, "0.01"),
        ErrorCode::RefundExceedsOriginal,
        "the payment was 20.00 INR, of which 20.00 INR is refunded already",
    )
    .await;
    assert_lots_match_ledger(&gateway).await;
    a.disconnect().await;
    till.disconnect().await;
}

/// Points of the refunded payment's lot that expired went back to the programme then: the
/// clawback never takes them again from the customer's other lots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clawback_never_takes_back_points_that_expired() {
    let gateway = gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let grocery = approved(&a.pay(&id("m-grocer"), inr("100.00")).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    approved(&a.pay(&id("m-1"), inr("50.00")).await.unwrap());
    let first_expires = u64::try_from(lots(&gateway).await[0].2).unwrap();
    let run = rewards::run_jobs(gateway.store(), first_expires)
        .await
        .unwrap();
    assert_eq!((run.lots_expired, run.points_expired), (1, 200));

    let mut till = gateway.agent("till-g").await;
    approved(&till.submit(refund(&grocery, "100.00")).await.unwrap());
    let held = lots(&gateway).await;
    assert_eq!(
        held.iter().map(|l| (l.0.as_str(), l.1)).collect::<Vec<_>>(),
        [("expired", 0), ("active", 50)]
    );
    assert_eq!(transfers_of(&gateway, "points_clawback").await, 0);
    assert_lots_match_ledger(&gateway).await;
    a.disconnect().await;
    till.disconnect().await;
}

/// Pays 100.00 at the grocer (200 points), spends them all on a 60.00 payment (50.00 in points,
/// 10.00 in money, which earns 10), then refunds the grocery payment: 200 points are due and
/// the customer holds 10.
async fn spend_the_points_then_refund(gateway: &TestGateway) -> (Agent, Agent) {
    let mut a = gateway.agent("pos-a").await;
    let grocery = approved(&a.pay(&id("m-grocer"), inr("100.00")).await.unwrap());
    activate(gateway).await;
    approved(&a.submit(points_payment("m-1", "60.00", 200)).await.unwrap());
    assert_eq!(points(gateway).await, 10);
    let mut till = gateway.agent("till-g").await;
    approved(&till.submit(refund(&grocery, "100.00")).await.unwrap());
    (a, till)
}

/// A clawback shortfall is never written off: under the default policy the spent points are
/// owed, reported, and taken from the next points the wallet earns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clawback_of_spent_points_is_owed_and_recovered_from_the_next_points_earned() {
    let gateway = gateway().await;
    let (mut a, till) = spend_the_points_then_refund(&gateway).await;
    assert_eq!(points(&gateway).await, 0, "the 10 held are clawed");
    assert_eq!(
        gateway.balance("wallet-pos-a").await,
        500_000 - 10_000 - 1_000 + 10_000,
        "the refund's money is whole"
    );
    let report = rewards::liability_report(gateway.store(), &gateway.settings.rewards)
        .await
        .unwrap();
    assert_eq!((report.points_owed, report.wallets_owing), (190, 1));

    // the next 100 points earned pay 100 of the 190 owed
    approved(&a.pay(&id("m-1"), inr("100.00")).await.unwrap());
    assert_eq!(points(&gateway).await, 0);
    let report = rewards::liability_report(gateway.store(), &gateway.settings.rewards)
        .await
        .unwrap();
    assert_eq!(report.points_owed, 90);
    assert_eq!(transfers_of(&gateway, "points_debt_recovery").await, 1);
    assert_lots_match_ledger(&gateway).await;
    a.disconnect().await;
    till.disconnect().await;
}

/// Under `deduct_from_refund` the spent points' value is kept back from the refund's money
/// and goes back to the rewards funding; nothing is owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clawback_shortfall_can_be_kept_back_from_the_refund() {
    let gateway = gateway_with(|s| {
        s.rewards.clawback_shortfall = paygate_gateway::config::ClawbackShortfall::DeductFromRefund;
    })
    .await;
    let (a, till) = spend_the_points_then_refund(&gateway).await;
    assert_eq!(points(&gateway).await, 0);
    assert_eq!(
        gateway.balance("wallet-pos-a").await,
        500_000 - 10_000 - 1_000 + 10_000 - 190 * 25
    );
    assert_eq!(
        gateway.balance("rewards-funding-inr").await,
        -5_000 + 190 * 25
    );
    let report = rewards::liability_report(gateway.store(), &gateway.settings.rewards)
        .await
        .unwrap();
    assert_eq!(report.points_owed, 0);
    assert_lots_match_ledger(&gateway).await;
    a.disconnect().await;
    till.disconnect().await;
}

/// Review of issue 12: refunding a payment whose points were spent in two halves owes its
/// points once, not one and a half times; and a lot past its expiry that the expiry job has
/// not reached yet is not claimed (it expires, it is not owed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_owe_the_spent_points_once_and_never_claim_points_past_expiry() {
    let gateway = gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let grocery = approved(&a.pay(&id("m-grocer"), inr("100.00")).await.unwrap());
    activate(&gateway).await;
    approved(&a.submit(points_payment("m-1", "60.00", 200)).await.unwrap());
    assert_eq!(points(&gateway).await, 10);
    let mut till = gateway.agent("till-g").await;
    approved(&till.submit(refund(&grocery, "50.00")).await.unwrap());
    approved(&till.submit(refund(&grocery, "50.00")).await.unwrap());
    let report = rewards::liability_report(gateway.store(), &gateway.settings.rewards)
        .await
        .unwrap();
    // 200 earned on the grocery payment: 10 taken back, 190 owed, in all
    assert_eq!(points(&gateway).await, 0);
    assert_eq!(report.points_owed, 190, "{report:?}");
    assert_lots_match_ledger(&gateway).await;

    a.disconnect().await;
    till.disconnect().await;

    // a fresh wallet's lot past its expiry time, not yet expired by the job: nothing is owed
    let gateway = self::gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let grocery = approved(&a.pay(&id("m-grocer"), inr("100.00")).await.unwrap());
    sqlx::query("UPDATE points_lots SET expires_at_ms = 1 WHERE payment_tx_id = $1")
        .bind(grocery.as_str())
        .execute(gateway.store().pool())
        .await
        .unwrap();
    let mut till = gateway.agent("till-g").await;
    approved(&till.submit(refund(&grocery, "100.00")).await.unwrap());
    let report = rewards::liability_report(gateway.store(), &gateway.settings.rewards)
        .await
        .unwrap();
    assert_eq!(
        report.points_owed, 0,
        "points past expiry were owed: {report:?}"
    );
    a.disconnect().await;
    till.disconnect().await;
}
