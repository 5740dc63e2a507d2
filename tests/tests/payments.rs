//! A payment end to end over real mutual TLS and MQTT: approved, receipted, signed, posted once.

#![allow(clippy::unwrap_used)]

use paygate_core::receipt::Outcome;
use paygate_core::request::{Operation, Request, REQUEST_CONTENT_TYPE};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey};
use paygate_tests::{inr, TestGateway, MERCHANT};
use std::time::Duration;

fn request(device: &str, key: &str, counter: u64, amount: &str) -> Request {
    Request {
        device_id: DeviceId::parse(device).unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        counter,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::MerchantPayment {
            merchant_id: AccountId::parse(MERCHANT).unwrap(),
            amount: inr(amount),
            payer: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_approved_receipted_signed_and_balanced() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;

    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("12.50"))
        .await
        .unwrap();

    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    assert!(receipt.receipt.tx_id.as_deref().unwrap().starts_with("tx-"));
    // the agent verified the signature; check it again from the raw envelope, independently
    let verified = agent.bundle().verify_receipt(&receipt.envelope).unwrap();
    assert_eq!(verified.receipt, receipt.receipt);
    let mut tampered = receipt.envelope.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(agent.bundle().verify_receipt(&tampered).is_err());

    assert_eq!(gateway.balance("wallet-pos-1").await, 10_000 - 1_250);
    assert_eq!(gateway.balance(MERCHANT).await, 1_250);
    gateway.assert_ledger_balanced().await;
    assert_eq!(
        gateway
            .store()
            .count_transfers("merchant_payment")
            .await
            .unwrap(),
        1
    );
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_returns_the_same_receipt_and_posts_once() {
    let gateway = TestGateway::start().await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let envelope = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        &request("pos-1", "retry-1", 1, "10.00").to_payload(),
    );

    agent.publish_raw(envelope.clone()).await.unwrap();
    let first = agent
        .next_reply(Duration::from_secs(10), Some("retry-1"))
        .await
        .unwrap();
    agent.publish_raw(envelope.clone()).await.unwrap();
    let second = agent
        .next_reply(Duration::from_secs(10), Some("retry-1"))
        .await
        .unwrap();

    assert_eq!(first.receipt.outcome, Outcome::Approved);
    assert_eq!(
        first.envelope, second.envelope,
        "a retry must get the original receipt, byte for byte"
    );
    assert_eq!(
        gateway
            .store()
            .count_transfers("merchant_payment")
            .await
            .unwrap(),
        1
    );
    assert_eq!(gateway.balance("wallet-pos-1").await, 9_000);
    assert_eq!(gateway.running.metrics.snapshot().requests_replayed, 1);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_key_with_a_changed_body_is_an_idempotency_conflict_and_changes_nothing() {
    let gateway = TestGateway::start().await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let original = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        &request("pos-1", "k-1", 1, "10.00").to_payload(),
    );
    agent.publish_raw(original).await.unwrap();
    let approved = agent
        .next_reply(Duration::from_secs(10), Some("k-1"))
        .await
        .unwrap();
    assert_eq!(approved.receipt.outcome, Outcome::Approved);
    let before = gateway.ledger_fingerprint().await;

    // same key, same counter, another amount: a changed body
    let changed = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        &request("pos-1", "k-1", 1, "90.00").to_payload(),
    );
    agent.publish_raw(changed).await.unwrap();
    let refused = agent
        .next_reply(Duration::from_secs(10), Some("k-1"))
        .await
        .unwrap();

    assert_eq!(refused.receipt.outcome, Outcome::Rejected);
    assert_eq!(refused.code(), Some(ErrorCode::IdempotencyConflict));
    assert_eq!(gateway.ledger_fingerprint().await, before);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_counter_under_a_new_key_is_refused_and_changes_nothing() {
    let gateway = TestGateway::start().await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let first = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        &request("pos-1", "k-1", 5, "1.00").to_payload(),
    );
    agent.publish_raw(first).await.unwrap();
    assert_eq!(
        agent
            .next_reply(Duration::from_secs(10), Some("k-1"))
            .await
            .unwrap()
            .receipt
            .outcome,
        Outcome::Approved
    );
    let before = gateway.ledger_fingerprint().await;

    let replay = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        &request("pos-1", "k-2", 5, "1.00").to_payload(),
    );
    agent.publish_raw(replay).await.unwrap();
    let refused = agent
        .next_reply(Duration::from_secs(10), Some("k-2"))
        .await
        .unwrap();

    assert_eq!(refused.code(), Some(ErrorCode::CounterReused));
    assert_eq!(gateway.ledger_fingerprint().await, before);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_are_final_receipted_and_move_no_money() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "5.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let before = gateway.balance("wallet-pos-1").await;

    let too_much = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("6.00"))
        .await
        .unwrap();
    gateway.device("pos-2", "1.00").await;
    let wallet_as_merchant = agent
        .pay(&AccountId::parse("wallet-pos-2").unwrap(), inr("1.00"))
        .await
        .unwrap();
    let unknown = agent
        .pay(&AccountId::parse("m-nowhere").unwrap(), inr("1.00"))
        .await
        .unwrap();

    assert_eq!(too_much.receipt.outcome, Outcome::Declined);
    assert_eq!(too_much.code(), Some(ErrorCode::InsufficientFunds));
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownMerchant));
    // a wallet is not a merchant: paying one through a merchant payment is refused
    assert_eq!(wallet_as_merchant.code(), Some(ErrorCode::UnknownMerchant));
    assert_eq!(gateway.balance("wallet-pos-2").await, 100);
    assert_eq!(gateway.balance("wallet-pos-1").await, before);
    assert_eq!(
        gateway
            .store()
            .count_transfers("merchant_payment")
            .await
            .unwrap(),
        0
    );
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es256_device_pays_too() {
    let gateway = TestGateway::start().await;
    gateway
        .device_with(
            "pos-ec",
            "20.00",
            paygate_core::envelope::SigningAlgorithm::Es256,
        )
        .await;
    let mut agent = gateway.agent("pos-ec").await;
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("2.00"))
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    assert_eq!(gateway.balance(MERCHANT).await, 200);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_of_a_decided_request_gets_its_first_answer_however_old() {
    let gateway = TestGateway::start_with(|s| s.pipeline.request_age_max_ms = 1_500).await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let envelope = bundle.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        &request("pos-1", "old-1", 1, "10.00").to_payload(),
    );
    agent.publish_raw(envelope.clone()).await.unwrap();
    let first = agent
        .next_reply(Duration::from_secs(10), Some("old-1"))
        .await
        .unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved, "{first:?}");
    // the terminal's outbox resends it after the age limit: it must not hear "rejected"
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    agent.publish_raw(envelope).await.unwrap();
    let again = agent
        .next_reply(Duration::from_secs(10), Some("old-1"))
        .await
        .unwrap();
    assert_eq!(again.envelope, first.envelope, "{again:?}");
    // a request never decided, as old, is still refused and changes nothing
    let before = gateway.ledger_fingerprint().await;
    let mut stale = request("pos-1", "old-2", 2, "10.00");
    stale.created_at_ms -= 5_000;
    agent
        .publish_raw(
            bundle
                .signing_key
                .seal(REQUEST_CONTENT_TYPE, &stale.to_payload()),
        )
        .await
        .unwrap();
    let refused = agent
        .next_reply(Duration::from_secs(10), Some("old-2"))
        .await
        .unwrap();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::RequestExpired),
        "{refused:?}"
    );
    // the refusal names its request, so the terminal knows which entry it answers
    assert_eq!(refused.receipt.idempotency_key.as_deref(), Some("old-2"));
    assert_eq!(gateway.ledger_fingerprint().await, before);
    assert_eq!(gateway.balance("wallet-pos-1").await, 9_000);
    agent.disconnect().await;
}

/// Issue 12, defect 9: a terminal that lost track of a request asks by its idempotency key.
/// A decided request answers with its own first receipt, byte for byte (however old); a key
/// never received answers `REQUEST_UNKNOWN` naming that key; nothing moves either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_enquiry_answers_the_stored_receipt_or_request_unknown() {
    let gateway = TestGateway::start_with(|s| s.pipeline.request_age_max_ms = 1_500).await;
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let shop = AccountId::parse(MERCHANT).unwrap();
    let approved = agent.pay(&shop, inr("10.00")).await.unwrap();
    assert_eq!(approved.receipt.outcome, Outcome::Approved);
    let declined = agent.pay(&shop, inr("150.00")).await.unwrap();
    assert_eq!(declined.code(), Some(ErrorCode::InsufficientFunds));
    // past the request age limit: the answers are the stored ones all the same
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let before = gateway.ledger_fingerprint().await;
    for first in [&approved, &declined] {
        let key = IdempotencyKey::parse(first.receipt.idempotency_key.as_deref().unwrap()).unwrap();
        let answer = agent.status(&key).await.unwrap();
        assert_eq!(answer.envelope, first.envelope, "{:?}", answer.receipt);
    }
    let never = IdempotencyKey::parse("never-sent-1").unwrap();
    let unknown = agent.status(&never).await.unwrap();
    assert_eq!(
        unknown.code(),
        Some(ErrorCode::RequestUnknown),
        "{unknown:?}"
    );
    assert_eq!(
        unknown.receipt.idempotency_key.as_deref(),
        Some("never-sent-1")
    );
    assert!(unknown.receipt.tx_id.is_none());
    assert_eq!(gateway.ledger_fingerprint().await, before);
    assert_eq!(gateway.balance(MERCHANT).await, 1_000);
    // another device's key is unknown to this one: no device reads another's receipts
    gateway.device("pos-2", "1.00").await;
    let mut other = gateway.agent("pos-2").await;
    let key = IdempotencyKey::parse(approved.receipt.idempotency_key.as_deref().unwrap()).unwrap();
    let foreign = other.status(&key).await.unwrap();
    assert_eq!(
        foreign.code(),
        Some(ErrorCode::RequestUnknown),
        "{foreign:?}"
    );
    agent.disconnect().await;
    other.disconnect().await;
}
