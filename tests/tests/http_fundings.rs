//! Fundings through the operator API: posted at once below the four-eyes threshold, waiting
//! for a second finance operator at or above it (what one operator funded alone in 24 h
//! counts), the requester never approving its own, concurrent deciders deciding once, and a
//! seeded run of random fundings, approvals and rejections checked against a model.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::AuditOutcome;
use paygate_tests::{Db, TestGateway};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

mod operator_support;
use operator_support::*;

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
