//! The operator API through real HTTPS on 127.0.0.1: every call needs its role and a fresh
//! second factor, each refusal is audited and changes nothing, every change is audited with
//! the operator's identity, and a funding above the threshold moves money only once a second
//! finance operator approves it. A seeded run of random fundings, approvals and rejections by
//! random operators checks the ledger against a model after every step.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{AuditOutcome, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_tests::{inr, Db, MERCHANT};
use serde_json::{json, Value};

mod operator_support;
use operator_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_call_without_its_role_or_a_fresh_second_factor_is_refused_audited_and_changes_nothing(
) {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    open_wallet(&gateway, "w-1", "full").await;
    let merchant = json!({"merchant_id": "m-new", "currency": "INR", "category": "grocery"});
    let funding = json!({"wallet_id": "w-1", "amount_minor": 500, "currency": "INR"});
    let cases: Vec<(&str, String, &str, Value, u16, &str)> = vec![
        (
            "one factor only",
            gateway.operator_token("mallory", &["operator"], None),
            "/v1/ops/merchants",
            merchant.clone(),
            401,
            "SECOND_FACTOR_REQUIRED",
        ),
        (
            "second factor 16 minutes ago",
            gateway.operator_token("mallory", &["operator"], Some(16 * 60)),
            "/v1/ops/merchants",
            merchant.clone(),
            401,
            "SECOND_FACTOR_REQUIRED",
        ),
        (
            "the wallet backend's token",
            gateway.token("backend", "wallets:read wallets:write"),
            "/v1/ops/fundings",
            funding.clone(),
            403,
            "SCOPE_MISSING",
        ),
        (
            "no role and a bad body: the role is checked first",
            gateway.operator_token("mallory", &["operator"], None),
            "/v1/ops/fundings",
            json!({"wallet_id": 7}),
            403,
            "SCOPE_MISSING",
        ),
        (
            "operator role funding",
            gateway.operator_token("mallory", &["operator"], Some(5)),
            "/v1/ops/fundings",
            funding.clone(),
            403,
            "SCOPE_MISSING",
        ),
        (
            "finance role opening a merchant",
            gateway.operator_token("mallory", &["finance"], Some(5)),
            "/v1/ops/merchants",
            merchant.clone(),
            403,
            "SCOPE_MISSING",
        ),
        (
            "finance role rotating keys",
            gateway.operator_token("mallory", &["finance", "operator"], Some(5)),
            "/v1/ops/keys/rotate",
            json!({}),
            403,
            "SCOPE_MISSING",
        ),
    ];
    let before = counts(&gateway).await;
    let refusals_before = gateway
        .journal_records()
        .await
        .iter()
        .filter(|r| r.event == EventType::AccessRefused && r.actor != "api:unauthenticated")
        .count();
    for (n, (what, token, path, body, status, code)) in cases.iter().enumerate() {
        let answer = post(&http, path, token, &format!("k-{n}"), body.clone()).await;
        assert_eq!(
            status_code(&answer),
            (*status, (*code).to_owned()),
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let limits = http
        .get(
            "/v1/ops/limits",
            &gateway.operator_token("mallory", &["operator"], None),
        )
        .await;
    assert_eq!(limits.code(), "SECOND_FACTOR_REQUIRED");
    assert_eq!(
        counts(&gateway).await,
        before,
        "a refused call changed something"
    );
    let records = gateway.journal_records().await;
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.event == EventType::AccessRefused && r.actor != "api:unauthenticated")
        .collect();
    // each case and the limits read, as the token names its caller (an operator, or a service)
    assert_eq!(refused.len() - refusals_before, cases.len() + 1);
    assert!(refused.iter().any(|r| r.actor == "api:backend"));
    assert!(refused.iter().all(|r| r.outcome == AuditOutcome::Failure
        && r.code.is_some()
        && r.resource.starts_with("http:/v1/ops/")));
    // a refusal is not kept as an answer: with the role, the same key goes through
    let operator = gateway.operator_token("olga", &["operator"], Some(5));
    let answer = post(&http, "/v1/ops/merchants", &operator, "k-0", merchant).await;
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_opens_accounts_sets_tiers_and_suspends_a_device_each_change_audited_as_that_operator(
) {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    let olga = gateway.operator_token("olga", &["operator"], Some(30));
    let merchant = json!({"merchant_id": "m-books", "currency": "INR", "category": "books", "vpa": "books@bank"});
    let opened = post(&http, "/v1/ops/merchants", &olga, "m-1", merchant.clone()).await;
    assert_eq!(
        opened.status,
        201,
        "{}",
        String::from_utf8_lossy(&opened.body)
    );
    assert_eq!(
        opened.json(),
        json!({"account_id": "m-books", "kind": "merchant", "currency": "INR", "category": "books", "vpa": "books@bank"})
    );
    // a retry gets the first answer; the same id or vpa under a new key is refused
    let again = post(&http, "/v1/ops/merchants", &olga, "m-1", merchant).await;
    assert_eq!((again.status, &again.body), (opened.status, &opened.body));
    let before = counts(&gateway).await;
    for (key, body, status, code) in [
        (
            "m-2",
            json!({"merchant_id": "m-books", "currency": "INR"}),
            409,
            "ACCOUNT_EXISTS",
        ),
        (
            "m-3",
            json!({"merchant_id": "m-other", "currency": "INR", "vpa": "books@bank"}),
            409,
            "ACCOUNT_EXISTS",
        ),
        (
            "m-4",
            json!({"merchant_id": "m-other", "currency": "XXY"}),
            422,
            "CURRENCY_UNKNOWN",
        ),
        (
            "m-5",
            json!({"merchant_id": "m-other", "currency": "INR", "category": "Big Box"}),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "m-6",
            json!({"merchant_id": "m-other", "currency": "INR", "vpa": "no-at-sign"}),
            422,
            "PAYER_INVALID",
        ),
    ] {
        let answer = post(&http, "/v1/ops/merchants", &olga, key, body).await;
        assert_eq!(
            status_code(&answer),
            (status, code.to_owned()),
            "{key}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert_eq!(counts(&gateway).await, before);

    let agent = post(
        &http,
        "/v1/ops/agents",
        &olga,
        "a-1",
        json!({"agent_id": "agent-7", "currency": "INR"}),
    )
    .await;
    assert_eq!(agent.status, 201);
    assert_eq!(agent.json()["kind"], "agent");

    // a device paying, suspended, refused, active again, paying
    gateway.device("pos-1", "100.00").await;
    let mut terminal = gateway.agent("pos-1").await;
    let shop = AccountId::parse(MERCHANT).unwrap();
    let paid = terminal.pay(&shop, inr("1.00")).await.unwrap();
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    let suspend = http
        .write(
            "PUT",
            "/v1/ops/devices/pos-1/status",
            &olga,
            "d-1",
            &json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(
        suspend.status,
        200,
        "{}",
        String::from_utf8_lossy(&suspend.body)
    );
    assert_eq!(suspend.json()["status"], "suspended");
    // its session is closed and it cannot connect again
    let (_, code) = session(&gateway, "pos-1").await;
    assert_eq!(code, 5, "a suspended device connected");
    drop(terminal);
    let unknown = http
        .write(
            "PUT",
            "/v1/ops/devices/pos-404/status",
            &olga,
            "d-2",
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(unknown.code(), "DEVICE_NOT_ENROLLED");
    let resume = http
        .write(
            "PUT",
            "/v1/ops/devices/pos-1/status",
            &olga,
            "d-3",
            &json!({"status": "active"}),
        )
        .await;
    assert_eq!(resume.status, 200);
    let mut terminal = gateway.agent("pos-1").await;
    let paid = terminal.pay(&shop, inr("2.00")).await.unwrap();
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    assert_eq!(gateway.balance("wallet-pos-1").await, 10_000 - 300);

    // a wallet's tier, by an operator
    let tier = http
        .write(
            "PUT",
            "/v1/ops/wallets/wallet-pos-1/kyc-tier",
            &olga,
            "t-1",
            &json!({"kyc_tier": "min"}),
        )
        .await;
    assert_eq!(tier.status, 200, "{}", String::from_utf8_lossy(&tier.body));
    assert_eq!(tier.json()["kyc_tier"], "min");

    // a device enrolled through the API on the agent's float
    let key = paygate_core::envelope::SigningKey::generate_pkcs8(
        paygate_core::envelope::SigningAlgorithm::Ed25519,
    )
    .unwrap();
    let key = paygate_core::envelope::SigningKey::from_pkcs8(
        paygate_core::envelope::SigningAlgorithm::Ed25519,
        "k",
        &key,
    )
    .unwrap();
    use base64::Engine;
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().public_key);
    let enrol = json!({"device_id": "pos-agent-7", "account_id": "agent-7", "algorithm": "ed25519", "public_key": public});
    let enrolled = post(&http, "/v1/ops/devices", &olga, "e-1", enrol.clone()).await;
    assert_eq!(
        enrolled.status,
        201,
        "{}",
        String::from_utf8_lossy(&enrolled.body)
    );
    let before = counts(&gateway).await;
    for (key, body, code) in [
        ("e-2", enrol.clone(), "ACCOUNT_EXISTS"),
        (
            "e-3",
            json!({"device_id": "pos-x", "account_id": "agent-7", "algorithm": "ed25519", "public_key": "AAAA"}),
            "MALFORMED_REQUEST",
        ),
        (
            "e-4",
            json!({"device_id": "pos-x", "account_id": "agent-7", "algorithm": "rsa", "public_key": public}),
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "e-5",
            json!({"device_id": "pos-x", "account_id": "m-books", "algorithm": "ed25519", "public_key": public}),
            "UNKNOWN_WALLET",
        ),
    ] {
        let answer = post(&http, "/v1/ops/devices", &olga, key, body).await;
        assert_eq!(
            answer.code(),
            code,
            "{key}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    assert_eq!(counts(&gateway).await, before);

    let limits = http.get("/v1/ops/limits", &olga).await;
    assert_eq!(
        limits.status,
        200,
        "{}",
        String::from_utf8_lossy(&limits.body)
    );
    assert_eq!(
        limits.json()["wallet"]["min_kyc"]["balance_max_minor"],
        json!(gateway.settings.wallet.min_kyc.balance_max_minor)
    );
    assert_eq!(
        limits.json()["funding_approval_min_minor"],
        json!(1_000_000)
    );

    let records = gateway.journal_records().await;
    let by_olga: Vec<_> = records
        .iter()
        .filter(|r| r.actor == "operator:olga" && r.outcome == AuditOutcome::Success)
        .map(|r| (r.event, r.resource.as_str()))
        .collect();
    for expected in [
        (EventType::AdminAction, "account:m-books"),
        (EventType::AdminAction, "account:agent-7"),
        (EventType::CredentialChanged, "device:pos-1"),
        (EventType::AdminAction, "account:wallet-pos-1"),
        (EventType::DeviceEnrolled, "device:pos-agent-7"),
    ] {
        assert!(
            by_olga.contains(&expected),
            "{expected:?} not in {by_olga:?}"
        );
    }
    // one record per change: the replay of m-1 and the refusals added none
    assert_eq!(
        by_olga
            .iter()
            .filter(|(_, resource)| *resource == "account:m-books")
            .count(),
        1
    );
    assert_eq!(
        by_olga
            .iter()
            .filter(|(_, resource)| *resource == "device:pos-1")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_operator_rotates_the_key_encryption_key_and_the_fields_still_decrypt() {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    open_wallet(&gateway, "w-1", "full").await;
    let cipher = &gateway.running.cipher;
    let profile = paygate_gateway::profiles::WalletProfile {
        name: "Asha Rao".into(),
        phone: "+919800000001".into(),
        vpa: "asha@bank".into(),
    };
    let wallet = AccountId::parse("w-1").unwrap();
    paygate_gateway::profiles::save(cipher, gateway.store().pool(), &wallet, &profile, None)
        .await
        .unwrap();
    let before = cipher.provider().active_kek_id();
    let sam = gateway.operator_token("sam", &["security"], Some(5));
    let rotated = post(&http, "/v1/ops/keys/rotate", &sam, "rot-1", json!({})).await;
    assert_eq!(
        rotated.status,
        200,
        "{}",
        String::from_utf8_lossy(&rotated.body)
    );
    let new_key = rotated.json()["key_encryption_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_key, before);
    assert!(rotated.json()["rewrapped"].as_u64().unwrap() >= 1);
    // a retry is the first answer, not a second rotation
    let again = post(&http, "/v1/ops/keys/rotate", &sam, "rot-1", json!({})).await;
    assert_eq!(again.body, rotated.body);
    assert_eq!(cipher.provider().active_kek_id(), new_key);
    let kms = post(
        &http,
        "/v1/ops/keys/rotate",
        &sam,
        "rot-2",
        json!({"to_kms_key": "arn:aws:kms:ap-south-1:111122223333:key/x"}),
    )
    .await;
    assert_eq!(kms.code(), "MALFORMED_REQUEST");
    let shown = paygate_gateway::profiles::show(cipher, gateway.store().pool(), &wallet)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.wallet, "w-1");
    let found = paygate_gateway::profiles::find(
        cipher,
        gateway.store().pool(),
        Some("+919800000001"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(found.as_deref(), Some("w-1"));
    let records = gateway.journal_records().await;
    let rotations: Vec<_> = records
        .iter()
        .filter(|r| r.event == EventType::KeyOperation && r.actor == "operator:sam")
        .filter_map(|r| r.detail.clone())
        .collect();
    assert_eq!(rotations.len(), 2, "{rotations:?}");
    assert!(rotations[0].starts_with("key-encryption key rotation begun"));
    assert!(rotations[1].contains(&format!("rotated to {new_key}")));
    let refused = records
        .iter()
        .find(|r| r.actor == "operator:sam" && r.code.as_deref() == Some("MALFORMED_REQUEST"))
        .expect("the refused rotation is audited");
    assert_eq!(refused.outcome, AuditOutcome::Failure);

    // three at once under one key: one rotation, and its key is the one in force
    let (a, b, c) = tokio::join!(
        post(&http, "/v1/ops/keys/rotate", &sam, "rot-3", json!({})),
        post(&http, "/v1/ops/keys/rotate", &sam, "rot-3", json!({})),
        post(&http, "/v1/ops/keys/rotate", &sam, "rot-3", json!({})),
    );
    assert_eq!((a.status, b.status, c.status), (200, 200, 200));
    assert!(a.body == b.body && b.body == c.body);
    let third = a.json()["key_encryption_key"].as_str().unwrap().to_owned();
    assert_eq!(cipher.provider().active_kek_id(), third);
    let rotated = gateway
        .journal_records()
        .await
        .iter()
        .filter(|r| {
            r.detail
                .as_deref()
                .is_some_and(|d| d.contains("rotated to"))
        })
        .count();
    assert_eq!(rotated, 2);
}
