//! Admission at the front (issue 16, item 0): a device over its rate or its requests in flight,
//! or the gateway over its shared in-flight budget, is answered `OVERLOADED` at once with a
//! retry-after, the request does no durable work, and every publish gets an answer. Another
//! device keeps paying through one device's flood, and the edge agent's own retry, told how
//! long to wait, ends in the approval.

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, DeviceBundle};
use paygate_core::receipt::Outcome;
use paygate_core::request::{Operation, Request, REQUEST_CONTENT_TYPE};
use paygate_core::{AccountId, ErrorCode, IdempotencyKey};
use paygate_tests::{inr, TestGateway, MERCHANT};
use std::collections::BTreeMap;
use std::time::Duration;

fn payment(bundle: &DeviceBundle, key: &str, counter: u64) -> Vec<u8> {
    let request = Request {
        device_id: bundle.device_id.clone(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        counter,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::MerchantPayment {
            merchant_id: AccountId::parse(MERCHANT).unwrap(),
            amount: inr("1.00"),
            payer: None,
        },
    };
    bundle
        .signing_key
        .seal(REQUEST_CONTENT_TYPE, &request.to_payload())
}

type Answers = BTreeMap<String, (Outcome, Option<ErrorCode>, Option<u64>)>;

/// Collects replies until `count` keys have one (the first reply per key counts).
async fn answers(agent: &mut Agent, count: usize, wait: Duration) -> Answers {
    let mut seen = BTreeMap::new();
    collect(agent, &mut seen, count, wait).await;
    seen
}

async fn collect(agent: &mut Agent, seen: &mut Answers, count: usize, wait: Duration) {
    while seen.len() < count {
        let Some(reply) = agent.next_reply(wait, None).await else {
            break;
        };
        let key = reply
            .receipt
            .idempotency_key
            .clone()
            .expect("every answer to a readable request names it");
        seen.entry(key).or_insert((
            reply.receipt.outcome,
            reply.code(),
            reply.receipt.retry_after_ms,
        ));
    }
}

async fn requests_recorded(gateway: &TestGateway, device: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE device_id = $1")
        .bind(device)
        .fetch_one(gateway.store().pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_told_to_wait_and_another_keeps_paying() {
    const FLOOD: usize = 1_500;
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.device_requests_per_s = 100;
        s.mqtt.device_requests_burst = 20;
        s.mqtt.device_inflight_max = 8;
        s.rewards.enabled = false;
    })
    .await;
    let flooder = gateway.device("pos-flood", "100000.00").await;
    gateway.device("pos-calm", "100.00").await;
    let mut flood_agent = gateway.agent("pos-flood").await;
    let mut calm = gateway.agent("pos-calm").await;
    let before = gateway.running.metrics.snapshot();

    let envelopes: Vec<Vec<u8>> = (0..FLOOD)
        .map(|n| payment(&flooder, &format!("flood-{n}"), n as u64 + 1))
        .collect();
    let flood = tokio::spawn(async move {
        // as fast as the client goes, reading what has arrived every few publishes (the
        // agent's reply queue is bounded: a client that never reads stops its own connection)
        let mut seen = Answers::new();
        for (n, envelope) in envelopes.into_iter().enumerate() {
            flood_agent.publish_raw(envelope).await.unwrap();
            if n % 16 == 15 {
                collect(&mut flood_agent, &mut seen, n + 1, Duration::from_millis(1)).await;
            }
        }
        collect(&mut flood_agent, &mut seen, FLOOD, Duration::from_secs(15)).await;
        (flood_agent, seen)
    });
    // while the flood is sent and answered, the other terminal pays one payment after another
    let merchant = AccountId::parse(MERCHANT).unwrap();
    for n in 0..5 {
        let receipt = calm.pay(&merchant, inr("1.00")).await.unwrap();
        assert_eq!(
            receipt.receipt.outcome,
            Outcome::Approved,
            "payment {n}: {receipt:?}"
        );
    }
    let (flood_agent, seen) = flood.await.unwrap();

    // every publish was answered: nothing accepted vanished
    assert_eq!(seen.len(), FLOOD, "publishes without an answer");
    let overloaded: Vec<_> = seen
        .values()
        .filter(|(_, code, _)| *code == Some(ErrorCode::Overloaded))
        .collect();
    let approved = seen
        .values()
        .filter(|(outcome, _, _)| *outcome == Outcome::Approved)
        .count();
    assert!(
        !overloaded.is_empty() && approved > 0,
        "{} overloaded, {approved} approved",
        overloaded.len()
    );
    eprintln!(
        "flood of {FLOOD}: {} OVERLOADED, {approved} approved, {} declined",
        overloaded.len(),
        FLOOD - overloaded.len() - approved
    );
    for (outcome, _, retry_after) in &overloaded {
        assert_eq!(*outcome, Outcome::Rejected);
        assert!(
            retry_after.is_some_and(|ms| ms > 0 && ms <= 30_000),
            "{retry_after:?}"
        );
    }
    // anything else is a decision of its own (approved, or declined by the wallet's limits)
    assert_eq!(
        seen.values()
            .filter(|(outcome, code, _)| *outcome != Outcome::Approved
                && *code != Some(ErrorCode::Overloaded))
            .filter(|(outcome, _, _)| *outcome != Outcome::Declined)
            .count(),
        0,
        "{seen:?}"
    );
    // an overloaded request did no durable work: only admitted ones were recorded
    assert_eq!(
        requests_recorded(&gateway, "pos-flood").await,
        (FLOOD - overloaded.len()) as i64
    );
    assert_eq!(
        gateway.balance(MERCHANT).await,
        100 * (approved as i64 + 5),
        "the merchant got exactly the approved payments"
    );
    let after = gateway.running.metrics.snapshot();
    assert_eq!(
        after.refusals_of(ErrorCode::Overloaded) - before.refusals_of(ErrorCode::Overloaded),
        overloaded.len() as u64
    );
    // the audit trail holds decisions, not one record per refusal the flood provoked
    assert!(
        after.audit_records - before.audit_records < (FLOOD - overloaded.len()) as u64 * 3,
        "{} audit records for {} admitted requests",
        after.audit_records - before.audit_records,
        FLOOD - overloaded.len()
    );
    gateway.assert_ledger_balanced().await;
    flood_agent.disconnect().await;
    calm.disconnect().await;
}

/// While nothing can be decided (the ledger's write lock is held), a device reaches its own
/// in-flight limit and a second device the gateway's shared one; each excess request is
/// refused at once naming the wait, and after the lock goes every admitted request is
/// approved, and so is each refused one sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limits_per_device_and_per_gateway() {
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.device_inflight_max = 4;
        s.pipeline.batch_size_max = 4;
        s.pipeline.queue_depth_max = 6;
        s.rewards.enabled = false;
    })
    .await;
    let first = gateway.device("pos-a", "100.00").await;
    let second = gateway.device("pos-b", "100.00").await;
    let mut agent_a = gateway.agent("pos-a").await;
    let mut agent_b = gateway.agent("pos-b").await;

    let lock = gateway.store().begin_batch().await.unwrap();
    for n in 0..6u64 {
        agent_a
            .publish_raw(payment(&first, &format!("a-{n}"), n + 1))
            .await
            .unwrap();
    }
    let early_a = answers(&mut agent_a, 2, Duration::from_secs(3)).await;
    assert_eq!(early_a.len(), 2, "{early_a:?}");
    for (key, (outcome, code, retry_after)) in &early_a {
        assert!(key == "a-4" || key == "a-5", "the excess is refused: {key}");
        assert_eq!(
            (*outcome, *code),
            (Outcome::Rejected, Some(ErrorCode::Overloaded))
        );
        assert!(retry_after.is_some());
    }
    for n in 0..4u64 {
        agent_b
            .publish_raw(payment(&second, &format!("b-{n}"), n + 1))
            .await
            .unwrap();
    }
    // the gateway holds 6 in flight: four of pos-a's, two of pos-b's
    let early_b = answers(&mut agent_b, 2, Duration::from_secs(3)).await;
    assert_eq!(
        early_b.keys().cloned().collect::<Vec<_>>(),
        ["b-2", "b-3"],
        "{early_b:?}"
    );
    assert!(early_b
        .values()
        .all(|(_, code, _)| *code == Some(ErrorCode::Overloaded)));
    assert_eq!(requests_recorded(&gateway, "pos-a").await, 0);
    lock.rollback().await.unwrap();

    let late_a = answers(&mut agent_a, 4, Duration::from_secs(20)).await;
    let late_b = answers(&mut agent_b, 2, Duration::from_secs(20)).await;
    for (key, (outcome, _, _)) in late_a.iter().chain(late_b.iter()) {
        assert_eq!(*outcome, Outcome::Approved, "{key}");
    }
    assert_eq!(late_a.len() + late_b.len(), 6);
    // the refused ones, sent again with the same bytes' keys, are decided now
    for n in 4..6u64 {
        agent_a
            .publish_raw(payment(&first, &format!("a-{n}"), n + 1))
            .await
            .unwrap();
    }
    let again = answers(&mut agent_a, 2, Duration::from_secs(20)).await;
    assert!(
        again
            .values()
            .all(|(outcome, _, _)| *outcome == Outcome::Approved),
        "{again:?}"
    );
    assert_eq!(gateway.balance(MERCHANT).await, 800);
    gateway.assert_ledger_balanced().await;
    agent_a.disconnect().await;
    agent_b.disconnect().await;
}

/// The edge agent's own delivery loop honours the retry-after: with a burst of one and a slow
/// rate, back-to-back payments from one terminal are each approved, the later ones after an
/// `OVERLOADED` and a wait much shorter than the agent's resend interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_as_told_and_its_payment_is_approved() {
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.device_requests_per_s = 2;
        s.mqtt.device_requests_burst = 1;
        s.rewards.enabled = false;
    })
    .await;
    gateway.device("pos-slow", "100.00").await;
    let mut settings = gateway.agent_settings("pos-slow");
    // a resend interval the test would notice: the retry must come from the named wait
    settings.resend_interval = Duration::from_secs(60);
    settings.receipt_timeout = Duration::from_secs(30);
    let bundle = DeviceBundle::load(&gateway.bundle_dir("pos-slow")).unwrap();
    let mut agent = Agent::connect(bundle, settings).await.unwrap();
    let before = gateway.running.metrics.snapshot();
    let merchant = AccountId::parse(MERCHANT).unwrap();
    for n in 0..4 {
        let receipt = agent.pay(&merchant, inr("1.00")).await.unwrap();
        assert_eq!(receipt.receipt.outcome, Outcome::Approved, "payment {n}");
    }
    let refused = gateway
        .running
        .metrics
        .snapshot()
        .refusals_of(ErrorCode::Overloaded)
        - before.refusals_of(ErrorCode::Overloaded);
    assert!(refused > 0, "the rate limit was never reached");
    assert_eq!(gateway.balance(MERCHANT).await, 400);
    agent.disconnect().await;
}

/// Reconnecting does not reset admission: a device at its in-flight limit that drops its
/// connection and comes back is still at it (the state is the device's, not the session's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_keeps_the_devices_requests_in_flight() {
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.device_inflight_max = 2;
        s.rewards.enabled = false;
    })
    .await;
    let bundle = gateway.device("pos-r", "100.00").await;
    let lock = gateway.store().begin_batch().await.unwrap();
    let agent = gateway.agent("pos-r").await;
    for n in 0..2u64 {
        agent
            .publish_raw(payment(&bundle, &format!("r-{n}"), n + 1))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.disconnect().await;
    let mut again = gateway.agent("pos-r").await;
    again.publish_raw(payment(&bundle, "r-2", 3)).await.unwrap();
    let early = answers(&mut again, 1, Duration::from_secs(3)).await;
    assert_eq!(
        early.get("r-2").map(|(_, code, _)| *code),
        Some(Some(ErrorCode::Overloaded)),
        "{early:?}"
    );
    lock.rollback().await.unwrap();
    // the first two are decided; then the third goes through
    let first = answers(&mut again, 2, Duration::from_secs(20)).await;
    assert!(
        first
            .values()
            .all(|(outcome, _, _)| *outcome == Outcome::Approved),
        "{first:?}"
    );
    again.publish_raw(payment(&bundle, "r-2", 3)).await.unwrap();
    let third = answers(&mut again, 1, Duration::from_secs(20)).await;
    assert_eq!(
        third.get("r-2").map(|(o, _, _)| *o),
        Some(Outcome::Approved)
    );
    again.disconnect().await;
}

/// A device that never subscribes to its replies holds no place in flight once the pipeline
/// has answered: with a gateway budget of one device's worth, another device still pays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_its_replies_does_not_hold_the_gateway() {
    use paygate_tests::RawClient;
    use rumqttc::mqttbytes::v4::{Packet, Publish};
    use rumqttc::mqttbytes::QoS;
    let gateway = TestGateway::start_with(|s| {
        s.mqtt.device_inflight_max = 4;
        s.pipeline.batch_size_max = 4;
        s.pipeline.queue_depth_max = 4;
        s.rewards.enabled = false;
    })
    .await;
    let deaf = gateway.device("pos-deaf", "100.00").await;
    gateway.device("pos-ok", "100.00").await;
    let mut raw = RawClient::connect_tls(
        gateway.port(),
        gateway.tls_client_config(Some(&gateway.bundle_dir("pos-deaf"))),
    )
    .await
    .unwrap();
    assert_eq!(raw.mqtt_connect("pos-deaf").await.unwrap(), 0);
    for n in 0..4u64 {
        let publish = Publish::new(
            "paygate/v1/devices/pos-deaf/requests",
            QoS::AtMostOnce,
            payment(&deaf, &format!("d-{n}"), n + 1),
        );
        raw.send(Packet::Publish(publish)).await.unwrap();
    }
    // all four decided, though no reply could reach the device
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while requests_recorded(&gateway, "pos-deaf").await < 4 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests_recorded(&gateway, "pos-deaf").await, 4);
    let mut ok = gateway.agent("pos-ok").await;
    let receipt = ok
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    ok.disconnect().await;
    drop(raw);
}
