//! Devices through the operator API: suspension and revocation that close a device's sessions
//! at once and keep it out, and enrolment with a one-time token of a key the device made.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{AuditOutcome, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_tests::{inr, Db, MERCHANT};
use serde_json::{json, Value};
use std::time::Duration;

mod operator_support;
use operator_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_or_revoked_device_is_disconnected_at_once_and_cannot_connect_again() {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    let olga = gateway.operator_token("olga", &["operator"], Some(30));
    gateway.device("pos-1", "10.00").await;
    let (mut connected, code) = session(&gateway, "pos-1").await;
    assert_eq!(code, 0);

    let suspend = http
        .write(
            "PUT",
            "/v1/ops/devices/pos-1/status",
            &olga,
            "s-1",
            &json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(
        suspend.status,
        200,
        "{}",
        String::from_utf8_lossy(&suspend.body)
    );
    // closed within a second of the answer, after a notice saying why
    let (told, closed) = connected.until_closed(Duration::from_secs(1)).await;
    assert!(closed, "the suspended device's session stayed open");
    assert!(
        told.iter()
            .any(|p| matches!(p, rumqttc::mqttbytes::v4::Packet::Publish(_))),
        "{told:?}"
    );
    let (_, code) = session(&gateway, "pos-1").await;
    assert_eq!(code, 5, "a suspended device connected again");

    let resume = http
        .write(
            "PUT",
            "/v1/ops/devices/pos-1/status",
            &olga,
            "s-2",
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(resume.json()["status"], "active");
    let mut agent = gateway.agent("pos-1").await;
    let paid = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
    let (mut again, code) = session(&gateway, "pos-1").await;
    assert_eq!(code, 0);

    let revoked = post(
        &http,
        "/v1/ops/devices/pos-1/revoke",
        &olga,
        "r-1",
        json!({"reason": "terminal reported stolen"}),
    )
    .await;
    assert_eq!(
        revoked.status,
        200,
        "{}",
        String::from_utf8_lossy(&revoked.body)
    );
    assert_eq!(revoked.json()["revoked"], true);
    let (_, closed) = again.until_closed(Duration::from_secs(1)).await;
    assert!(closed, "the revoked device's session stayed open");
    let (_, code) = session(&gateway, "pos-1").await;
    assert_eq!(code, 5);
    // never active again: not through the API, not by enrolling it anew
    let back = http
        .write(
            "PUT",
            "/v1/ops/devices/pos-1/status",
            &olga,
            "s-3",
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(back.code(), "DEVICE_REVOKED");
    let bundle_enrol = paygate_gateway::demo::enrol_from_bundle(
        gateway.store(),
        &gateway.pki_dir(),
        &paygate_core::DeviceId::parse("pos-1").unwrap(),
        paygate_core::Currency::parse("INR").unwrap(),
    )
    .await;
    assert!(bundle_enrol.is_err(), "a revoked device was enrolled anew");
    let (_, code) = session(&gateway, "pos-1").await;
    assert_eq!(code, 5);
    assert_eq!(gateway.balance("wallet-pos-1").await, 1_000 - 100);
    let records = gateway.journal_records().await;
    assert!(records.iter().any(|r| r.actor == "operator:olga"
        && r.detail
            .as_deref()
            .is_some_and(|d| d.contains("revoked (terminal reported stolen)"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrols_its_own_key_with_a_one_time_token_and_pays() {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    let olga = gateway.operator_token("olga", &["operator"], Some(30));
    let alice = gateway.operator_token("alice", &["finance"], Some(30));
    open_wallet(&gateway, "wallet-pos-t", "full").await;
    let funded = post(
        &http,
        "/v1/ops/fundings",
        &alice,
        "f-1",
        json!({"wallet_id": "wallet-pos-t", "amount_minor": 5_000, "currency": "INR"}),
    )
    .await;
    assert_eq!(funded.status, 201);
    // the terminal's keys and certificate (its bundle): not enrolled yet
    let device = paygate_core::DeviceId::parse("pos-t").unwrap();
    paygate_gateway::pki::issue_device(
        &gateway.pki_dir(),
        &device,
        &AccountId::parse("wallet-pos-t").unwrap(),
        paygate_core::envelope::SigningAlgorithm::Ed25519,
    )
    .unwrap();
    let enrolment = paygate_gateway::pki::read_enrolment(
        &paygate_gateway::pki::device_dir(&gateway.pki_dir(), &device).join("enrolment.json"),
    )
    .unwrap();
    let issued = post(
        &http,
        "/v1/ops/enrolment-tokens",
        &olga,
        "t-1",
        json!({"device_id": "pos-t", "account_id": "wallet-pos-t"}),
    )
    .await;
    assert_eq!(
        issued.status,
        201,
        "{}",
        String::from_utf8_lossy(&issued.body)
    );
    let token = issued.json()["token"].as_str().unwrap().to_owned();
    let enrol = |body: Value| {
        let http = &http;
        async move {
            http.send(
                "POST",
                "/v1/enrolments",
                &[],
                Some(body.to_string().as_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let good = json!({"token": token, "device_id": "pos-t", "algorithm": enrolment.algorithm, "public_key": enrolment.public_key});
    let other_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    let before = counts(&gateway).await;
    for (body, code) in [
        (
            json!({"token": "not-a-token", "device_id": "pos-t", "algorithm": "ed25519", "public_key": enrolment.public_key}),
            "TOKEN_INVALID",
        ),
        (
            json!({"token": token, "device_id": "pos-x", "algorithm": "ed25519", "public_key": enrolment.public_key}),
            "TOKEN_INVALID",
        ),
        (
            json!({"token": token, "device_id": "pos-t", "algorithm": "ed25519", "public_key": "AAAA"}),
            "MALFORMED_REQUEST",
        ),
        (
            json!({"token": token, "device_id": "pos-t", "algorithm": "hs256", "public_key": enrolment.public_key}),
            "ALGORITHM_NOT_ALLOWED",
        ),
    ] {
        let refused = enrol(body).await;
        assert_eq!(
            refused.code(),
            code,
            "{}",
            String::from_utf8_lossy(&refused.body)
        );
    }
    assert_eq!(
        counts(&gateway).await,
        before,
        "a refused enrolment changed something"
    );

    let enrolled = enrol(good.clone()).await;
    assert_eq!(
        enrolled.status,
        201,
        "{}",
        String::from_utf8_lossy(&enrolled.body)
    );
    assert_eq!(
        enrolled.json(),
        json!({"device_id": "pos-t", "account_id": "wallet-pos-t", "algorithm": "ed25519"})
    );
    // a retry gets the first answer; the token with another key is used up
    let again = enrol(good.clone()).await;
    assert_eq!(again.body, enrolled.body);
    let reused = enrol(json!({"token": token, "device_id": "pos-t", "algorithm": "ed25519", "public_key": other_key})).await;
    assert_eq!(reused.code(), "TOKEN_INVALID");
    // the device pays with the key it made
    let mut agent = gateway.agent("pos-t").await;
    let paid = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("12.00"))
        .await
        .unwrap();
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    assert_eq!(gateway.balance("wallet-pos-t").await, 5_000 - 1_200);

    // an expired token (its time moved past in the database) and one for an enrolled id
    let late = post(
        &http,
        "/v1/ops/enrolment-tokens",
        &olga,
        "t-2",
        json!({"device_id": "pos-late", "account_id": "wallet-pos-t", "lifetime_s": 60}),
    )
    .await;
    sqlx::query("UPDATE enrolment_tokens SET expires_at_ms = 1 WHERE device_id = 'pos-late'")
        .execute(gateway.store().pool())
        .await
        .unwrap();
    let expired = enrol(json!({"token": late.json()["token"], "device_id": "pos-late", "algorithm": "ed25519", "public_key": other_key})).await;
    assert_eq!(expired.code(), "TOKEN_EXPIRED");
    let taken = post(
        &http,
        "/v1/ops/enrolment-tokens",
        &olga,
        "t-3",
        json!({"device_id": "pos-t", "account_id": "wallet-pos-t"}),
    )
    .await;
    assert_eq!(taken.code(), "ACCOUNT_EXISTS");
    let short = post(
        &http,
        "/v1/ops/enrolment-tokens",
        &olga,
        "t-4",
        json!({"device_id": "pos-s", "account_id": "wallet-pos-t", "lifetime_s": 5}),
    )
    .await;
    assert_eq!(short.code(), "MALFORMED_REQUEST");

    let records = gateway.journal_records().await;
    let enrolled = records
        .iter()
        .find(|r| r.event == EventType::DeviceEnrolled && r.actor == "device:pos-t")
        .expect("the enrolment is audited as the device's");
    assert!(enrolled
        .detail
        .as_deref()
        .unwrap()
        .contains("issued by operator:olga"));
    let refusals = records
        .iter()
        .filter(|r| r.resource == "http:/v1/enrolments" && r.outcome == AuditOutcome::Failure)
        .count();
    assert_eq!(refusals, 6);
    // the token is kept only as its hash
    let kept: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_sha256 FROM enrolment_tokens")
        .fetch_all(gateway.store().pool())
        .await
        .unwrap();
    assert!(kept
        .iter()
        .all(|hash| hash.len() == 32 && hash != token.as_bytes()));
}
