//! The operator API through real HTTPS on 127.0.0.1: every call needs its role and a fresh
//! second factor, each refusal is audited and changes nothing, every change is audited with
//! the operator's identity, and a funding above the threshold moves money only once a second
//! finance operator approves it. A seeded run of random fundings, approvals and rejections by
//! random operators checks the ledger against a model after every step.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::{AuditOutcome, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::config::Secret;
use paygate_tests::http::{Answer, HttpClient};
use paygate_tests::{fresh_postgres_database, inr, Db, TestGateway, MERCHANT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Duration;

async fn gateway(db: Db) -> TestGateway {
    let url = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_postgres_database().await),
    };
    TestGateway::start_with(|s| {
        if let Some(url) = url {
            s.database.url = Secret::new(url);
        }
        // a generous rate: the model run makes a few hundred calls per operator
        s.http.caller_requests_per_s = 10_000;
        s.http.caller_requests_burst = 10_000;
    })
    .await
}

async fn counts(gateway: &TestGateway) -> String {
    let pool = gateway.store().pool();
    let mut out = gateway.ledger_fingerprint().await;
    for table in [
        "accounts",
        "postings",
        "devices",
        "merchant_vpas",
        "operator_approvals",
    ] {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        out.push_str(&format!(" {table}={count}"));
    }
    out
}

async fn post(http: &HttpClient, path: &str, token: &str, key: &str, body: Value) -> Answer {
    http.write("POST", path, token, key, &body).await
}

fn status_code(answer: &Answer) -> (u16, String) {
    (answer.status, answer.code())
}

/// Opens a wallet through the wallet backend's API.
async fn open_wallet(gateway: &TestGateway, id: &str, tier: &str) {
    let backend = gateway.token("backend", "wallets:write");
    let answer = post(
        &gateway.http(),
        "/v1/wallets",
        &backend,
        &format!("open-{id}"),
        json!({"wallet_id": id, "currency": "INR", "kyc_tier": tier}),
    )
    .await;
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
}

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
async fn a_funding_above_the_threshold_waits_for_a_second_finance_operator_sqlite() {
    run_four_eyes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funding_above_the_threshold_waits_for_a_second_finance_operator_postgres() {
    run_four_eyes(Db::Postgres).await;
}

async fn run_four_eyes(db: Db) {
    let gateway = gateway(db).await;
    let http = gateway.http();
    open_wallet(&gateway, "w-big", "full").await;
    open_wallet(&gateway, "w-small", "min").await;
    let alice = gateway.operator_token("alice", &["finance"], Some(10));
    let bob = gateway.operator_token("bob", &["finance"], Some(10));
    let olga = gateway.operator_token("olga", &["operator"], Some(10));

    // below the threshold: posted at once
    let small = post(
        &http,
        "/v1/ops/fundings",
        &alice,
        "f-1",
        json!({"wallet_id": "w-big", "amount_minor": 999_999, "currency": "INR"}),
    )
    .await;
    assert_eq!(
        small.status,
        201,
        "{}",
        String::from_utf8_lossy(&small.body)
    );
    assert_eq!(small.json()["state"], "done");
    assert_eq!(gateway.balance("w-big").await, 999_999);
    // a part that brings what alice funded alone today to the threshold waits too
    let split = post(
        &http,
        "/v1/ops/fundings",
        &alice,
        "f-split",
        json!({"wallet_id": "w-big", "amount_minor": 1, "currency": "INR"}),
    )
    .await;
    assert_eq!(
        split.status,
        202,
        "{}",
        String::from_utf8_lossy(&split.body)
    );
    assert_eq!(gateway.balance("w-big").await, 999_999);
    let withdraw = post(
        &http,
        &format!(
            "/v1/ops/fundings/{}/reject",
            split.json()["funding_id"].as_str().unwrap()
        ),
        &alice,
        "f-split-withdrawn",
        json!({"reason": "asked in two parts by mistake"}),
    )
    .await;
    assert_eq!(withdraw.json()["state"], "rejected");

    // at the threshold: waits
    let big = post(
        &http,
        "/v1/ops/fundings",
        &alice,
        "f-2",
        json!({"wallet_id": "w-big", "amount_minor": 1_500_000, "currency": "INR"}),
    )
    .await;
    assert_eq!(big.status, 202, "{}", String::from_utf8_lossy(&big.body));
    let id = big.json()["funding_id"].as_str().unwrap().to_owned();
    assert_eq!(big.json()["state"], "awaiting_approval");
    assert_eq!(big.json()["tx_id"], Value::Null);
    assert_eq!(gateway.balance("w-big").await, 999_999);

    let before = counts(&gateway).await;
    let approve = format!("/v1/ops/fundings/{id}/approve");
    let own = post(&http, &approve, &alice, "a-1", json!({})).await;
    assert_eq!(status_code(&own), (403, "APPROVER_IS_REQUESTER".into()));
    let wrong_role = post(&http, &approve, &olga, "a-2", json!({})).await;
    assert_eq!(wrong_role.code(), "SCOPE_MISSING");
    let no_factor = post(
        &http,
        &approve,
        &gateway.operator_token("bob", &["finance"], None),
        "a-3",
        json!({}),
    )
    .await;
    assert_eq!(no_factor.code(), "SECOND_FACTOR_REQUIRED");
    let unknown = post(
        &http,
        "/v1/ops/fundings/fund-00000000-0000-0000-0000-000000000000/approve",
        &bob,
        "a-4",
        json!({}),
    )
    .await;
    assert_eq!(unknown.code(), "NOT_FOUND");
    assert_eq!(
        counts(&gateway).await,
        before,
        "a refused approval changed something"
    );

    let approved = post(
        &http,
        &approve,
        &bob,
        "a-5",
        json!({"reason": "KYC file checked"}),
    )
    .await;
    assert_eq!(
        approved.status,
        200,
        "{}",
        String::from_utf8_lossy(&approved.body)
    );
    let view = approved.json();
    assert_eq!(view["state"], "done");
    assert_eq!(view["requested_by"], "alice");
    assert_eq!(view["decided_by"], "bob");
    let tx = view["tx_id"].as_str().unwrap().to_owned();
    assert_eq!(gateway.balance("w-big").await, 999_999 + 1_500_000);
    // the same approval again: the first answer; a new one: not pending
    let replay = post(
        &http,
        &approve,
        &bob,
        "a-5",
        json!({"reason": "KYC file checked"}),
    )
    .await;
    assert_eq!(
        (replay.status, &replay.body),
        (approved.status, &approved.body)
    );
    let twice = post(&http, &approve, &bob, "a-6", json!({})).await;
    assert_eq!(status_code(&twice), (409, "APPROVAL_NOT_PENDING".into()));
    assert_eq!(gateway.balance("w-big").await, 999_999 + 1_500_000);
    let read = http.get(&format!("/v1/ops/fundings/{id}"), &alice).await;
    assert_eq!(read.json(), view);

    // approved, then refused by the wallet's limit: kept as refused, no money moved
    let over = post(
        &http,
        "/v1/ops/fundings",
        &bob,
        "f-3",
        json!({"wallet_id": "w-small", "amount_minor": 1_000_001, "currency": "INR"}),
    )
    .await;
    assert_eq!(over.status, 202);
    let over_id = over.json()["funding_id"].as_str().unwrap().to_owned();
    let refused = post(
        &http,
        &format!("/v1/ops/fundings/{over_id}/approve"),
        &alice,
        "a-7",
        json!({}),
    )
    .await;
    assert_eq!(status_code(&refused), (422, "LIMIT_EXCEEDED".into()));
    let read = http
        .get(&format!("/v1/ops/fundings/{over_id}"), &alice)
        .await;
    assert_eq!(read.json()["state"], "refused");
    assert_eq!(read.json()["code"], "LIMIT_EXCEEDED");
    assert_eq!(gateway.balance("w-small").await, 0);

    // rejected: nothing moves, and it cannot be approved afterwards
    let third = post(
        &http,
        "/v1/ops/fundings",
        &bob,
        "f-4",
        json!({"wallet_id": "w-big", "amount_minor": 2_000_000, "currency": "INR"}),
    )
    .await;
    let third_id = third.json()["funding_id"].as_str().unwrap().to_owned();
    let rejected = post(
        &http,
        &format!("/v1/ops/fundings/{third_id}/reject"),
        &alice,
        "r-1",
        json!({"reason": "no request on file"}),
    )
    .await;
    assert_eq!(rejected.json()["state"], "rejected");
    let late = post(
        &http,
        &format!("/v1/ops/fundings/{third_id}/approve"),
        &alice,
        "a-8",
        json!({}),
    )
    .await;
    assert_eq!(late.code(), "APPROVAL_NOT_PENDING");
    assert_eq!(gateway.balance("w-big").await, 999_999 + 1_500_000);

    // two approvers and a rejecter at once: exactly one decides, the money moves at most once
    let carol = gateway.operator_token("carol", &["finance"], Some(10));
    let raced = post(
        &http,
        "/v1/ops/fundings",
        &bob,
        "f-5",
        json!({"wallet_id": "w-big", "amount_minor": 1_000_000, "currency": "INR"}),
    )
    .await;
    let raced_id = raced.json()["funding_id"].as_str().unwrap().to_owned();
    let approve_raced = format!("/v1/ops/fundings/{raced_id}/approve");
    let reject_raced = format!("/v1/ops/fundings/{raced_id}/reject");
    let (one, two, three) = tokio::join!(
        post(&http, &approve_raced, &alice, "race-1", json!({})),
        post(&http, &approve_raced, &carol, "race-2", json!({})),
        post(&http, &reject_raced, &carol, "race-3", json!({})),
    );
    let answers = [&one, &two, &three];
    let decided: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(decided.len(), 1, "{answers:?}");
    assert!(answers
        .iter()
        .filter(|a| a.status != 200)
        .all(|a| a.code() == "APPROVAL_NOT_PENDING"));
    let moved = if decided[0].json()["state"] == "done" {
        1_000_000
    } else {
        0
    };
    assert_eq!(gateway.balance("w-big").await, 999_999 + 1_500_000 + moved);
    gateway.assert_ledger_balanced().await;

    // the trail names both operators of the approved funding
    let records = gateway.journal_records().await;
    let asked = records
        .iter()
        .find(|r| {
            r.actor == "operator:alice"
                && r.detail
                    .as_deref()
                    .is_some_and(|d| d.contains(&id) && d.contains("waits"))
        })
        .expect("the request is audited as alice's");
    assert_eq!(asked.wallet_id.as_deref(), Some("w-big"));
    let decided = records
        .iter()
        .find(|r| r.actor == "operator:bob" && r.tx_id.as_deref() == Some(tx.as_str()))
        .expect("the approval is audited as bob's, with the transfer");
    let detail = decided.detail.as_deref().unwrap();
    assert!(
        detail.contains("asked by operator:alice") && detail.contains("KYC file checked"),
        "{detail}"
    );
    let own = records
        .iter()
        .find(|r| r.actor == "operator:alice" && r.code.as_deref() == Some("APPROVER_IS_REQUESTER"))
        .expect("the refused self-approval is audited");
    assert_eq!(own.outcome, AuditOutcome::Failure);
    let limit = records
        .iter()
        .find(|r| r.actor == "operator:alice" && r.code.as_deref() == Some("LIMIT_EXCEEDED"))
        .expect("the refused approval is audited with its code");
    assert_eq!(limit.outcome, AuditOutcome::Failure);
}

/// What the model holds of one funding.
#[derive(Debug, Clone)]
struct Funding {
    id: String,
    wallet: usize,
    amount: i64,
    requested_by: usize,
    state: &'static str,
}

/// After every step: each wallet holds what the model says.
async fn check_balances(
    gateway: &TestGateway,
    wallets: &[&str],
    balances: &[i64],
    seed: u64,
    steps: &[String],
) {
    for (n, wallet) in wallets.iter().enumerate() {
        assert_eq!(
            gateway.balance(wallet).await,
            balances[n],
            "seed {seed}, steps {steps:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_fundings_approvals_and_rejections_by_random_operators_keep_the_ledger_as_the_model_says(
) {
    let seed: u64 = std::env::var("PAYGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    let wallets = ["w-a", "w-b", "w-c"];
    for (n, wallet) in wallets.iter().enumerate() {
        open_wallet(&gateway, wallet, if n == 2 { "min" } else { "full" }).await;
    }
    let names = ["alice", "bob", "carol"];
    let tokens: Vec<String> = names
        .iter()
        .map(|name| gateway.operator_token(name, &["finance"], Some(5)))
        .collect();
    let threshold = gateway.settings.http.operator.funding_approval_min_minor;
    let mut fundings: Vec<Funding> = Vec::new();
    let mut balances = [0i64; 3];
    // what each operator funded without a second approver (all of the run is within 24 h)
    let mut alone = [0i64; 3];
    let mut steps: Vec<String> = Vec::new();
    // how often each kind of decision came up: the run must reach every one
    let mut seen = std::collections::BTreeMap::<&str, u32>::new();
    for step in 0..120 {
        let who = rng.gen_range(0..names.len());
        let key = format!("s-{step}");
        let pending: Vec<usize> = (0..fundings.len())
            .filter(|i| fundings[*i].state == "awaiting_approval")
            .collect();
        let action = rng.gen_range(0..10);
        if action < 4 || pending.is_empty() && action < 8 {
            let wallet = rng.gen_range(0..wallets.len());
            let amount = if rng.gen_bool(0.5) {
                rng.gen_range(1..threshold / 8)
            } else {
                rng.gen_range(threshold..threshold * 3)
            };
            steps.push(format!(
                "{} asks {amount} for {}",
                names[who], wallets[wallet]
            ));
            let answer = post(
                &http,
                "/v1/ops/fundings",
                &tokens[who],
                &key,
                json!({"wallet_id": wallets[wallet], "amount_minor": amount, "currency": "INR"}),
            )
            .await;
            let body = answer.json();
            let context = format!("seed {seed}, steps {steps:#?}, answer {body}");
            let waits = amount + alone[who] >= threshold;
            if !waits && answer.status != 201 {
                // posted at once or refused at once by the wallet's limits
                assert_eq!(answer.code(), "LIMIT_EXCEEDED", "{context}");
                check_balances(&gateway, &wallets, &balances, seed, &steps).await;
                continue;
            }
            let id = body["funding_id"].as_str().expect(&context).to_owned();
            let state = if waits {
                assert_eq!(
                    (answer.status, &body["state"]),
                    (202, &json!("awaiting_approval")),
                    "{context}"
                );
                "awaiting_approval"
            } else {
                assert_eq!(body["state"], "done", "{context}");
                balances[wallet] += amount;
                alone[who] += amount;
                "done"
            };
            fundings.push(Funding {
                id,
                wallet,
                amount,
                requested_by: who,
                state,
            });
        } else if !fundings.is_empty() {
            // approve or reject any funding, pending or not
            let index = if !pending.is_empty() && rng.gen_bool(0.8) {
                pending[rng.gen_range(0..pending.len())]
            } else {
                rng.gen_range(0..fundings.len())
            };
            let approve = rng.gen_bool(0.7);
            let verb = if approve { "approve" } else { "reject" };
            let funding = fundings[index].clone();
            steps.push(format!(
                "{} {verb}s {} ({:?})",
                names[who], funding.id, funding
            ));
            let answer = post(
                &http,
                &format!("/v1/ops/fundings/{}/{verb}", funding.id),
                &tokens[who],
                &key,
                json!({}),
            )
            .await;
            let context = format!("seed {seed}, steps {steps:#?}, answer {}", answer.json());
            if funding.state != "awaiting_approval" {
                assert_eq!(answer.code(), "APPROVAL_NOT_PENDING", "{context}");
                *seen.entry("not pending").or_default() += 1;
            } else if approve && funding.requested_by == who {
                assert_eq!(answer.code(), "APPROVER_IS_REQUESTER", "{context}");
                *seen.entry("own approval").or_default() += 1;
            } else if !approve {
                assert_eq!(answer.json()["state"], "rejected", "{context}");
                fundings[index].state = "rejected";
                *seen.entry("rejected").or_default() += 1;
            } else if answer.status == 200 {
                *seen.entry("approved").or_default() += 1;
                assert_eq!(answer.json()["state"], "done", "{context}");
                assert_eq!(answer.json()["decided_by"], names[who], "{context}");
                fundings[index].state = "done";
                balances[funding.wallet] += funding.amount;
            } else {
                assert_eq!(answer.code(), "LIMIT_EXCEEDED", "{context}");
                fundings[index].state = "refused";
            }
        }
        check_balances(&gateway, &wallets, &balances, seed, &steps).await;
    }
    for kind in ["not pending", "own approval", "rejected", "approved"] {
        assert!(
            seen.contains_key(kind),
            "seed {seed}: no {kind} in {seen:?}"
        );
    }
    // the gateway's view of every funding is the model's
    for funding in &fundings {
        let read = http
            .get(&format!("/v1/ops/fundings/{}", funding.id), &tokens[0])
            .await;
        assert_eq!(
            read.json()["state"],
            funding.state,
            "seed {seed}, {funding:?}"
        );
    }
    // a min-KYC wallet never holds more than its cap, however many approvals
    assert!(balances[2] <= gateway.settings.wallet.min_kyc.balance_max_minor);
    gateway.assert_ledger_balanced().await;
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

/// A device session opened now, through the front with its own certificate: the CONNACK code.
async fn session(gateway: &TestGateway, device: &str) -> (paygate_tests::RawClient, u8) {
    let config = gateway.tls_client_config(Some(&gateway.bundle_dir(device)));
    let mut client = paygate_tests::RawClient::connect_tls(gateway.port(), config)
        .await
        .unwrap();
    let code = client.mqtt_connect(device).await.unwrap();
    (client, code)
}

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
