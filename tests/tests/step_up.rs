//! Step-up authentication end to end over real mutual TLS and MQTT: a large payment is
//! challenged and completed with a TOTP code; wrong answers lock; silence expires; a challenge
//! survives a gateway restart; validate pass spares a second payment inside its window only;
//! codes are bound to their payment (dynamic linking) and used once.

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, VerifiedReceipt};
use paygate_core::identity::{self, Mechanism, OtpAlgorithm, PassWindow, RiskLevel, Rule};
use paygate_core::receipt::Outcome;
use paygate_core::request::{OneTimeCode, Operation, Request, REQUEST_CONTENT_TYPE};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey};
use paygate_gateway::config::Settings;
use paygate_gateway::profiles::{self, WalletProfile};
use paygate_tests::{inr, TestGateway, MERCHANT};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &[u8] = b"step-up-test-secret-0123456789";
const LARGE: &str = "2500.00";

fn now_s() -> u64 {
    paygate_agent::now_ms() / 1000
}

fn code_at(offset_steps: i64) -> String {
    let time = i64::try_from(now_s()).unwrap() + offset_steps * 30;
    identity::totp(
        SECRET,
        OtpAlgorithm::Sha1,
        6,
        30,
        u64::try_from(time).unwrap(),
    )
}

fn not_the_code() -> String {
    let valid: Vec<String> = (-1..=1).map(code_at).collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap()
}

/// A gateway whose large-payment rule asks for `require`, with the given validate-pass window.
async fn gateway_with(
    require: Vec<Mechanism>,
    pass_window_ms: u64,
    adjust: impl FnOnce(&mut Settings),
) -> TestGateway {
    let gateway = TestGateway::start_with(|s| {
        s.identity.rules = vec![Rule {
            name: "large-payment".into(),
            risk: RiskLevel::High,
            require,
            when: identity::Condition {
                amount_minor_min: Some(200_000),
                ..identity::Condition::default()
            },
        }];
        s.identity.pass_windows = vec![PassWindow {
            mechanism: Mechanism::Totp,
            risk: RiskLevel::High,
            window_ms: pass_window_ms,
        }];
        adjust(s);
    })
    .await;
    gateway.device("pos-1", "10000.00").await;
    profiles::save(
        &gateway.running.cipher,
        gateway.store().pool(),
        &AccountId::parse("wallet-pos-1").unwrap(),
        &WalletProfile {
            name: "Asha R".into(),
            phone: "+919800000001".into(),
            vpa: "asha@okbank".into(),
        },
        Some(SECRET),
    )
    .await
    .unwrap();
    gateway
}

/// Scripted answers; records every prompt the agent showed.
fn scripted(
    agent: &mut Agent,
    answers: Vec<Option<Vec<(String, String)>>>,
) -> Arc<Mutex<Vec<u32>>> {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let seen = prompts.clone();
    let mut answers = answers.into_iter();
    agent.on_challenge(Box::new(move |prompt| {
        seen.lock().unwrap().push(prompt.attempts_left);
        answers.next().flatten()
    }));
    prompts
}

fn totp_answer(code: String) -> Option<Vec<(String, String)>> {
    Some(vec![("totp".into(), code)])
}

fn merchant() -> AccountId {
    AccountId::parse(MERCHANT).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_payment_is_challenged_and_approved_with_a_correct_totp_and_a_used_code_is_refused()
{
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |_| {}).await;
    let mut agent = gateway.agent("pos-1").await;
    let first_code = code_at(0);
    let prompts = scripted(&mut agent, vec![totp_answer(first_code.clone())]);
    let receipt = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    assert_eq!(*prompts.lock().unwrap(), vec![3]);
    assert_eq!(gateway.balance(MERCHANT).await, 250_000);
    // a small payment is not challenged
    let small = agent.pay(&merchant(), inr("10.00")).await.unwrap();
    assert_eq!(small.receipt.outcome, Outcome::Approved);
    assert_eq!(prompts.lock().unwrap().len(), 1);

    // the same code again (no validate pass here): refused, then the next step's code passes
    let prompts = scripted(
        &mut agent,
        vec![totp_answer(first_code), totp_answer(code_at(1))],
    );
    let receipt = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    assert_eq!(
        *prompts.lock().unwrap(),
        vec![3, 2],
        "the used code cost an attempt"
    );
    assert_eq!(gateway.balance(MERCHANT).await, 2 * 250_000 + 1_000);
    assert_eq!(gateway.running.metrics.snapshot().challenges_issued, 2);
    gateway.assert_ledger_balanced().await;
    // every identification decision is in the audit trail
    gateway.running.audit.seal_if_due(true).await.unwrap();
    let mut trail = String::new();
    for sub in ["audit/journal/segments", "audit/worm/segments"] {
        if let Ok(entries) = std::fs::read_dir(gateway.dir.path().join(sub)) {
            for entry in entries {
                trail.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
            }
        }
    }
    let decisions: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("\"identity_decision\""))
        .collect();
    assert!(
        decisions
            .iter()
            .filter(|l| l.contains("issued: totp"))
            .count()
            == 2,
        "{trail}"
    );
    assert!(
        decisions.iter().any(|l| l.contains("attempt 1 of 3")),
        "{trail}"
    );
    assert!(
        decisions.iter().filter(|l| l.contains("answered")).count() == 2,
        "{trail}"
    );
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_wrong_answers_decline_the_payment_and_lock_the_mechanism() {
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |_| {}).await;
    let before = gateway.ledger_fingerprint().await;
    let mut agent = gateway.agent("pos-1").await;
    let wrong = not_the_code();
    let prompts = scripted(
        &mut agent,
        vec![
            totp_answer(wrong.clone()),
            totp_answer(wrong.clone()),
            totp_answer(wrong),
        ],
    );
    let receipt = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Declined);
    assert_eq!(receipt.code(), Some(ErrorCode::ChallengeFailed));
    assert_eq!(*prompts.lock().unwrap(), vec![3, 2, 1]);
    assert_eq!(gateway.ledger_fingerprint().await, before, "nothing posted");
    // locked: the next large payment is declined without a challenge, even with a right code
    let prompts = scripted(&mut agent, vec![totp_answer(code_at(0))]);
    let locked = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(locked.code(), Some(ErrorCode::MechanismLocked));
    assert!(prompts.lock().unwrap().is_empty());
    // small payments still go through
    let small = agent.pay(&merchant(), inr("5.00")).await.unwrap();
    assert_eq!(small.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_challenge_is_declined_at_expiry() {
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |s| {
        s.identity.challenge_ttl_ms = 1_500
    })
    .await;
    let before = gateway.ledger_fingerprint().await;
    let mut agent = gateway.agent("pos-1").await;
    let prompts = scripted(&mut agent, vec![None]);
    let receipt = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Declined, "{receipt:?}");
    assert_eq!(receipt.code(), Some(ErrorCode::ChallengeExpired));
    assert_eq!(*prompts.lock().unwrap(), vec![3]);
    assert_eq!(gateway.ledger_fingerprint().await, before);
    agent.disconnect().await;
}

async fn send(agent: &mut Agent, request: &Request) -> VerifiedReceipt {
    let sealed = agent
        .bundle()
        .signing_key
        .seal(REQUEST_CONTENT_TYPE, &request.to_payload());
    let key = request.idempotency_key.to_string();
    for _ in 0..5 {
        agent.publish_raw(sealed.clone()).await.unwrap();
        if let Some(reply) = agent.next_reply(Duration::from_secs(3), None).await {
            let _ = &key;
            return reply;
        }
    }
    panic!("no reply to {key}");
}

fn payment(key: &str, counter: u64, amount: &str) -> Request {
    Request {
        device_id: DeviceId::parse("pos-1").unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        counter,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::MerchantPayment {
            merchant_id: merchant(),
            amount: inr(amount),
            payer: None,
        },
    }
}

fn answer(
    key: &str,
    counter: u64,
    challenge_id: &str,
    payee: &str,
    amount: &str,
    mechanism: Mechanism,
    code: &str,
) -> Request {
    Request {
        device_id: DeviceId::parse("pos-1").unwrap(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        counter,
        created_at_ms: paygate_agent::now_ms(),
        operation: Operation::ChallengeAnswer {
            challenge_id: challenge_id.into(),
            merchant_id: AccountId::parse(payee).unwrap(),
            amount: inr(amount),
            responses: vec![(mechanism, OneTimeCode::new(code))],
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_survives_a_gateway_restart_and_is_answered_afterwards() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |s| {
        s.mqtt.listen = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let counter = paygate_agent::now_ms() * 1000;
    let mut agent = gateway.agent("pos-1").await;
    let original = payment("restart-1", counter, LARGE);
    let challenged = send(&mut agent, &original).await;
    assert_eq!(
        challenged.receipt.outcome,
        Outcome::Challenged,
        "{challenged:?}"
    );
    let challenge_id = challenged.receipt.challenge.unwrap().challenge_id;
    agent.disconnect().await;

    let gateway = gateway.restart().await;
    assert_eq!(gateway.port(), port);
    let mut agent = gateway.agent("pos-1").await;
    // the retry of the original request is still answered with its challenge
    let again = send(&mut agent, &original).await;
    assert_eq!(again.receipt.outcome, Outcome::Challenged, "{again:?}");
    let done = send(
        &mut agent,
        &answer(
            "restart-1-answer",
            counter + 1,
            &challenge_id,
            MERCHANT,
            LARGE,
            Mechanism::Totp,
            &code_at(0),
        ),
    )
    .await;
    assert_eq!(done.receipt.outcome, Outcome::Approved, "{done:?}");
    assert_eq!(done.receipt.idempotency_key.as_deref(), Some("restart-1"));
    assert_eq!(gateway.balance(MERCHANT).await, 250_000);
    // and the original key now answers with the same final receipt
    let final_again = send(&mut agent, &original).await;
    assert_eq!(final_again.envelope, done.envelope);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_pass_spares_a_payment_inside_the_window_and_not_outside() {
    let gateway = gateway_with(vec![Mechanism::Totp], 2_000, |_| {}).await;
    let mut agent = gateway.agent("pos-1").await;
    let prompts = scripted(
        &mut agent,
        vec![totp_answer(code_at(0)), totp_answer(code_at(1))],
    );
    assert_eq!(
        agent
            .pay(&merchant(), inr(LARGE))
            .await
            .unwrap()
            .receipt
            .outcome,
        Outcome::Approved
    );
    assert_eq!(prompts.lock().unwrap().len(), 1);
    // inside the window: frictionless
    assert_eq!(
        agent
            .pay(&merchant(), inr(LARGE))
            .await
            .unwrap()
            .receipt
            .outcome,
        Outcome::Approved
    );
    assert_eq!(
        prompts.lock().unwrap().len(),
        1,
        "no second challenge inside the window"
    );
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    // outside it: challenged again
    assert_eq!(
        agent
            .pay(&merchant(), inr(LARGE))
            .await
            .unwrap()
            .receipt
            .outcome,
        Outcome::Approved
    );
    assert_eq!(
        prompts.lock().unwrap().len(),
        2,
        "challenged again outside the window"
    );
    assert_eq!(gateway.balance(MERCHANT).await, 3 * 250_000);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_bound_to_their_amount_and_payee() {
    let gateway = gateway_with(vec![Mechanism::Oob], 0, |_| {}).await;
    let mut agent = gateway.agent("pos-1").await;
    let base = paygate_agent::now_ms() * 1000;
    let a = send(&mut agent, &payment("bind-a", base, LARGE)).await;
    let b = send(&mut agent, &payment("bind-b", base + 1, "3000.00")).await;
    let a_id = a.receipt.challenge.unwrap().challenge_id;
    let b_id = b.receipt.challenge.unwrap().challenge_id;
    // the development notifier's file: one code per challenge
    let sent = std::fs::read_to_string(gateway.dir.path().join("notifier/outbox.jsonl")).unwrap();
    let code_of = |id: &str| -> String {
        sent.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["challenge_id"] == id)
            .map(|v| v["code"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (a_code, b_code) = (code_of(&a_id), code_of(&b_id));
    // A's code for B: refused
    let refused = send(
        &mut agent,
        &answer(
            "bind-1",
            base + 2,
            &b_id,
            MERCHANT,
            "3000.00",
            Mechanism::Oob,
            &a_code,
        ),
    )
    .await;
    assert_eq!(refused.receipt.outcome, Outcome::Challenged);
    assert_eq!(refused.receipt.challenge.unwrap().attempts_left, 2);
    // B's code restating another amount, or another payee: refused
    let other_amount = send(
        &mut agent,
        &answer(
            "bind-2",
            base + 3,
            &b_id,
            MERCHANT,
            "30.00",
            Mechanism::Oob,
            &b_code,
        ),
    )
    .await;
    assert_eq!(other_amount.receipt.challenge.unwrap().attempts_left, 1);
    // B's code with B's payment: approved (last attempt)
    let done = send(
        &mut agent,
        &answer(
            "bind-3",
            base + 4,
            &b_id,
            MERCHANT,
            "3000.00",
            Mechanism::Oob,
            &b_code,
        ),
    )
    .await;
    assert_eq!(done.receipt.outcome, Outcome::Approved, "{done:?}");
    assert_eq!(gateway.balance(MERCHANT).await, 300_000);
    // A's own code still completes A
    let done = send(
        &mut agent,
        &answer(
            "bind-4",
            base + 5,
            &a_id,
            MERCHANT,
            LARGE,
            Mechanism::Oob,
            &a_code,
        ),
    )
    .await;
    assert_eq!(done.receipt.outcome, Outcome::Approved);
    // an answer for a challenge that is not this device's or does not exist
    let unknown = send(
        &mut agent,
        &answer(
            "bind-5",
            base + 6,
            "no-such-challenge",
            MERCHANT,
            LARGE,
            Mechanism::Oob,
            "123456",
        ),
    )
    .await;
    assert_eq!(unknown.code(), Some(ErrorCode::ChallengeUnknown));
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_checked_against_its_argon2_hash() {
    let gateway = gateway_with(vec![Mechanism::Pin], 0, |_| {}).await;
    let wallet = AccountId::parse("wallet-pos-1").unwrap();
    paygate_gateway::identity::set_pin(gateway.store().pool(), &wallet, "4321", 0)
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("SELECT pin_phc FROM customer_pins")
        .fetch_one(gateway.store().pool())
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$") && !stored.contains("4321"),
        "{stored}"
    );
    let mut agent = gateway.agent("pos-1").await;
    let prompts = scripted(
        &mut agent,
        vec![
            Some(vec![("pin".into(), "1234".into())]),
            Some(vec![("pin".into(), "4321".into())]),
        ],
    );
    let receipt = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    assert_eq!(*prompts.lock().unwrap(), vec![3, 2]);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_without_the_mechanism_enrolled_is_declined_and_velocity_is_limited() {
    let gateway = gateway_with(vec![Mechanism::Pin], 0, |s| {
        s.identity.device_payments_per_window_max = 3
    })
    .await;
    let mut agent = gateway.agent("pos-1").await;
    let no_pin = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(no_pin.code(), Some(ErrorCode::MechanismNotEnrolled));
    for _ in 0..2 {
        assert_eq!(
            agent
                .pay(&merchant(), inr("1.00"))
                .await
                .unwrap()
                .receipt
                .outcome,
            Outcome::Approved
        );
    }
    let limited = agent.pay(&merchant(), inr("1.00")).await.unwrap();
    assert_eq!(limited.code(), Some(ErrorCode::LimitExceeded));
    agent.disconnect().await;
}

/// Two challenged payments, each within the daily limit alone, answered one after the other:
/// the second is checked against the limit again when it is answered and declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_answered_later_passes_the_daily_limit_again() {
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |s| {
        s.wallet.full_kyc.daily_debit_max_minor = 400_000;
    })
    .await;
    let counter = paygate_agent::now_ms() * 1000;
    let mut agent = gateway.agent("pos-1").await;
    let first = send(&mut agent, &payment("limit-1", counter, LARGE)).await;
    let second = send(&mut agent, &payment("limit-2", counter + 1, LARGE)).await;
    assert_eq!(first.receipt.outcome, Outcome::Challenged, "{first:?}");
    assert_eq!(second.receipt.outcome, Outcome::Challenged, "{second:?}");
    let first_id = first.receipt.challenge.unwrap().challenge_id;
    let second_id = second.receipt.challenge.unwrap().challenge_id;
    let approved = send(
        &mut agent,
        &answer(
            "limit-1-answer",
            counter + 2,
            &first_id,
            MERCHANT,
            LARGE,
            Mechanism::Totp,
            &code_at(0),
        ),
    )
    .await;
    assert_eq!(approved.receipt.outcome, Outcome::Approved, "{approved:?}");
    let declined = send(
        &mut agent,
        &answer(
            "limit-2-answer",
            counter + 3,
            &second_id,
            MERCHANT,
            LARGE,
            Mechanism::Totp,
            &code_at(1),
        ),
    )
    .await;
    assert_eq!(declined.receipt.outcome, Outcome::Declined, "{declined:?}");
    assert_eq!(
        declined.code(),
        Some(ErrorCode::LimitExceeded),
        "{declined:?}"
    );
    assert_eq!(declined.receipt.idempotency_key.as_deref(), Some("limit-2"));
    assert_eq!(gateway.balance("wallet-pos-1").await, 1_000_000 - 250_000);
    assert_eq!(gateway.balance(MERCHANT).await, 250_000);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// An answer that names another amount fails, and the TOTP code it carried is used up: the
/// same code with the right amount cannot pass afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_sent_with_the_wrong_amount_is_used_up() {
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |_| {}).await;
    let counter = paygate_agent::now_ms() * 1000;
    let mut agent = gateway.agent("pos-1").await;
    let held = send(&mut agent, &payment("linked-1", counter, LARGE)).await;
    let challenge_id = held.receipt.challenge.unwrap().challenge_id;
    let code = code_at(0);
    let wrong_amount = send(
        &mut agent,
        &answer(
            "linked-1-a",
            counter + 1,
            &challenge_id,
            MERCHANT,
            "2400.00",
            Mechanism::Totp,
            &code,
        ),
    )
    .await;
    assert_eq!(
        wrong_amount.receipt.outcome,
        Outcome::Challenged,
        "{wrong_amount:?}"
    );
    let same_code = send(
        &mut agent,
        &answer(
            "linked-1-b",
            counter + 2,
            &challenge_id,
            MERCHANT,
            LARGE,
            Mechanism::Totp,
            &code,
        ),
    )
    .await;
    assert_ne!(
        same_code.receipt.outcome,
        Outcome::Approved,
        "{same_code:?}"
    );
    assert_eq!(
        same_code
            .receipt
            .challenge
            .as_ref()
            .map(|c| c.attempts_left),
        Some(1)
    );
    assert_eq!(gateway.balance(MERCHANT).await, 0);
    let next_code = send(
        &mut agent,
        &answer(
            "linked-1-c",
            counter + 3,
            &challenge_id,
            MERCHANT,
            LARGE,
            Mechanism::Totp,
            &code_at(1),
        ),
    )
    .await;
    assert_eq!(
        next_code.receipt.outcome,
        Outcome::Approved,
        "{next_code:?}"
    );
    assert_eq!(gateway.balance(MERCHANT).await, 250_000);
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
}

/// Issue 12, defect 8: wrong PINs count against the wallet, not the challenge: spread over
/// several payments they still lock the PIN at `identity.attempts_max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pins_spread_over_challenges_still_lock_the_pin() {
    let gateway = gateway_with(vec![Mechanism::Pin], 0, |_| {}).await;
    let wallet = AccountId::parse("wallet-pos-1").unwrap();
    paygate_gateway::identity::set_pin(gateway.store().pool(), &wallet, "4321", 0)
        .await
        .unwrap();
    let before = gateway.ledger_fingerprint().await;
    let mut agent = gateway.agent("pos-1").await;
    let counter = paygate_agent::now_ms() * 1000;
    // two wrong PINs on the first payment's challenge (one attempt of three left on it)
    let first = send(&mut agent, &payment("spread-1", counter, LARGE)).await;
    let first_id = first.receipt.challenge.unwrap().challenge_id;
    for (i, key) in ["spread-1-a", "spread-1-b"].into_iter().enumerate() {
        let wrong = answer(
            key,
            counter + 1 + i as u64,
            &first_id,
            MERCHANT,
            LARGE,
            Mechanism::Pin,
            "0000",
        );
        let retry = send(&mut agent, &wrong).await;
        assert_eq!(retry.receipt.outcome, Outcome::Challenged, "{retry:?}");
    }
    // a second payment's fresh challenge: its first wrong PIN is the wallet's third
    let second = send(&mut agent, &payment("spread-2", counter + 10, LARGE)).await;
    assert_eq!(second.receipt.outcome, Outcome::Challenged, "{second:?}");
    let second_id = second.receipt.challenge.unwrap().challenge_id;
    let wrong = answer(
        "spread-2-a",
        counter + 11,
        &second_id,
        MERCHANT,
        LARGE,
        Mechanism::Pin,
        "1111",
    );
    let locked = send(&mut agent, &wrong).await;
    assert_eq!(
        locked.code(),
        Some(ErrorCode::ChallengeFailed),
        "{locked:?}"
    );
    // the PIN is locked now: the next large payment is declined without a challenge
    let third = send(&mut agent, &payment("spread-3", counter + 20, LARGE)).await;
    assert_eq!(third.code(), Some(ErrorCode::MechanismLocked), "{third:?}");
    // and the right PIN on the first challenge does not pass while locked
    let right = answer(
        "spread-1-c",
        counter + 30,
        &first_id,
        MERCHANT,
        LARGE,
        Mechanism::Pin,
        "4321",
    );
    let refused = send(&mut agent, &right).await;
    assert_eq!(
        refused.code(),
        Some(ErrorCode::MechanismLocked),
        "{refused:?}"
    );
    assert_eq!(refused.receipt.idempotency_key.as_deref(), Some("spread-1"));
    assert_eq!(gateway.ledger_fingerprint().await, before);
    agent.disconnect().await;
}

/// Issue 12, defect 8: a validate pass spares a later payment only to the same payee and up
/// to the amount the holder authenticated, not any amount to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_pass_spares_only_the_same_payee_up_to_the_same_amount() {
    let gateway = gateway_with(vec![Mechanism::Totp], 60_000, |_| {}).await;
    gateway
        .store()
        .open_account(
            &AccountId::parse("m-2").unwrap(),
            paygate_gateway::ledger::AccountKind::Merchant,
            paygate_core::Currency::parse("INR").unwrap(),
            0,
        )
        .await
        .unwrap();
    let mut agent = gateway.agent("pos-1").await;
    let prompts = scripted(&mut agent, vec![totp_answer(code_at(0))]);
    let first = agent.pay(&merchant(), inr(LARGE)).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved, "{first:?}");
    // the same payee, no more than authenticated: spared (no prompt)
    let spared = agent.pay(&merchant(), inr("2400.00")).await.unwrap();
    assert_eq!(spared.receipt.outcome, Outcome::Approved, "{spared:?}");
    assert_eq!(*prompts.lock().unwrap(), vec![3]);
    // more than authenticated, or another payee: asked again
    let counter = paygate_agent::now_ms() * 1000;
    let more = send(&mut agent, &payment("pass-more", counter, "3000.00")).await;
    assert_eq!(more.receipt.outcome, Outcome::Challenged, "{more:?}");
    let mut elsewhere = payment("pass-elsewhere", counter + 1, LARGE);
    elsewhere.operation = Operation::MerchantPayment {
        merchant_id: AccountId::parse("m-2").unwrap(),
        amount: inr(LARGE),
        payer: None,
    };
    let other = send(&mut agent, &elsewhere).await;
    assert_eq!(other.receipt.outcome, Outcome::Challenged, "{other:?}");
    agent.disconnect().await;
}

/// Issue 12, defect 8: hour conditions run in the business time zone, the one the KYC limits
/// reset in (IST by default), not in UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hour_rules_run_in_the_business_time_zone() {
    let now = paygate_agent::now_ms();
    let ist_hour = u8::try_from((now + 330 * 60_000) / 3_600_000 % 24).unwrap();
    let utc_hour = u8::try_from(now / 3_600_000 % 24).unwrap();
    let window = |from: u8| identity::Condition {
        hour_from: Some(from),
        hour_to: Some((from + 2) % 24),
        ..identity::Condition::default()
    };
    // a rule for these two local hours applies now
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |s| {
        s.identity.rules[0].when = window(ist_hour);
    })
    .await;
    let mut agent = gateway.agent("pos-1").await;
    let local = send(&mut agent, &payment("hour-local", now * 1000, "5.00")).await;
    assert_eq!(local.receipt.outcome, Outcome::Challenged, "{local:?}");
    agent.disconnect().await;
    // a rule for the same hours read as UTC does not
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |s| {
        s.identity.rules[0].when = window(utc_hour);
    })
    .await;
    let mut agent = gateway.agent("pos-1").await;
    let utc = send(&mut agent, &payment("hour-utc", now * 1000 + 1, "5.00")).await;
    assert_eq!(utc.receipt.outcome, Outcome::Approved, "{utc:?}");
    agent.disconnect().await;
}

/// Issue 12, defect 8: P2P transfers and cash-outs pass the same risk rules as merchant
/// payments: a large one is held behind a challenge, posted on the right answer (its limits
/// checked again), declined on failure; nothing moves before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_p2p_transfers_and_cash_outs_are_challenged_too() {
    use paygate_core::request::Party;
    let gateway = gateway_with(vec![Mechanism::Totp], 0, |_| {}).await;
    gateway.device("pos-2", "1.00").await;
    gateway
        .terminal(
            "agent-1",
            "agent-float-1",
            paygate_gateway::ledger::AccountKind::Agent,
            "100.00",
        )
        .await;
    let mut agent = gateway.agent("pos-1").await;
    let wrong = || totp_answer(not_the_code());
    let prompts = scripted(
        &mut agent,
        vec![totp_answer(code_at(0)), wrong(), wrong(), wrong()],
    );
    // a P2P over the rule's amount: challenged, then posted on the right code
    let p2p = agent
        .submit(Operation::P2pTransfer {
            to: Party::Wallet(AccountId::parse("wallet-pos-2").unwrap()),
            amount: inr(LARGE),
        })
        .await
        .unwrap();
    assert_eq!(p2p.receipt.outcome, Outcome::Approved, "{p2p:?}");
    assert_eq!(
        p2p.receipt.counterparty.as_deref(),
        Some("wallet wallet-pos-2")
    );
    assert_eq!(gateway.balance("wallet-pos-2").await, 100 + 250_000);
    // a cash-out over it: challenged, three wrong codes: declined, nothing moves
    let before = gateway.ledger_fingerprint().await;
    let cash = agent
        .submit(Operation::CashOut {
            agent_id: AccountId::parse("agent-float-1").unwrap(),
            amount: inr("2000.00"),
        })
        .await
        .unwrap();
    assert_eq!(cash.code(), Some(ErrorCode::ChallengeFailed), "{cash:?}");
    assert_eq!(*prompts.lock().unwrap(), vec![3, 3, 2, 1]);
    assert_eq!(gateway.ledger_fingerprint().await, before);
    agent.disconnect().await;
}
