//! The fast lane decides what the one-at-a-time path decides. Seeded bursts of requests from
//! several terminals (payments of every size, to known and unknown merchants, resends, keys
//! and counters reused with other bodies, P2P transfers and status enquiries, mixed in one
//! batch) run through two fresh gateways: one with `pipeline.decide_in_bulk` on, one with it
//! off. Every answer, every balance, the stored requests, the transfers and postings, the
//! counters the limits read (day totals, debit log, spend since strong authentication, payees),
//! the challenges, the points lots and the points debts must be the same, and no invariant
//! alert may be raised. Failing seeds print; `PAYGATE_LANE_SEED=<seed>` reruns one.

#![allow(clippy::unwrap_used)]

use paygate_agent::Agent;
use paygate_core::request::{Operation, Party, Request, REQUEST_CONTENT_TYPE};
use paygate_core::{AccountId, DeviceId, IdempotencyKey, Money};
use paygate_tests::{inr, TestGateway, MERCHANT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;

const TERMINALS: usize = 6;
const REQUESTS_PER_TERMINAL: usize = 14;

/// What one terminal sends, in order: the sealed envelope and its idempotency key.
struct Script {
    /// Minor units put in the terminal's wallet before the burst.
    funds: i64,
    sends: Vec<(Vec<u8>, String)>,
}

fn minor(amount: i64) -> Money {
    let inr = paygate_core::Currency::parse("INR").unwrap();
    Money::new(u64::try_from(amount).unwrap(), inr).unwrap()
}

/// The requests of every terminal for `seed`. Signing needs the bundles, so this takes them.
fn scripts(seed: u64, bundles: &[paygate_agent::DeviceBundle]) -> Vec<Script> {
    let mut rng = StdRng::seed_from_u64(seed);
    // how much of the burst is plain payments the lane can take, the rest decided alone
    let plain_share = rng.gen_range(40..=95);
    let mut out = Vec::new();
    for bundle in bundles {
        let device = bundle.device_id.clone();
        let funds = rng.gen_range(0..=150_000);
        let mut sends: Vec<(Vec<u8>, String)> = Vec::new();
        let mut bodies: Vec<(String, u64)> = Vec::new();
        let mut counter = 0;
        for i in 0..REQUESTS_PER_TERMINAL {
            let roll = rng.gen_range(0..100);
            if roll < 10 && !sends.is_empty() {
                // a resend of an earlier envelope, byte for byte
                let (envelope, key) = sends[rng.gen_range(0..sends.len())].clone();
                sends.push((envelope, key));
                continue;
            }
            counter += 1;
            let (key, counter_used) = if roll < 16 && !bodies.is_empty() {
                // an earlier key or counter with another body
                let (key, used) = bodies[rng.gen_range(0..bodies.len())].clone();
                if rng.gen_bool(0.5) {
                    (key, counter)
                } else {
                    (format!("{device}-k{i}"), used)
                }
            } else {
                (format!("{device}-k{i}"), counter)
            };
            let operation = if rng.gen_range(0..100) < plain_share {
                payment(MERCHANT, rng.gen_range(100..=6_000))
            } else {
                match rng.gen_range(0..100) {
                    0..=20 => payment(MERCHANT, rng.gen_range(6_000..=25_000)),
                    21..=35 => payment("m-other", rng.gen_range(1..=5_000)),
                    36..=48 => payment("m-missing", rng.gen_range(1..=5_000)),
                    // over the step-up rule's amount: held for a challenge
                    49..=60 => payment(MERCHANT, rng.gen_range(500_000..=2_500_000)),
                    // to a wallet that sends nothing, so no terminal's funds depend on the
                    // order in which the terminals' requests reach the gateway
                    61..=80 => Operation::P2pTransfer {
                        to: Party::Wallet(AccountId::parse("wallet-lane-sink").unwrap()),
                        amount: minor(rng.gen_range(1..=8_000)),
                    },
                    _ => Operation::StatusEnquiry {
                        idempotency_key: IdempotencyKey::parse(
                            &bodies
                                .first()
                                .map_or_else(|| format!("{device}-none"), |(k, _)| k.clone()),
                        )
                        .unwrap(),
                    },
                }
            };
            let request = Request {
                device_id: DeviceId::parse(device.as_str()).unwrap(),
                idempotency_key: IdempotencyKey::parse(&key).unwrap(),
                counter: counter_used,
                created_at_ms: paygate_agent::now_ms(),
                operation,
            };
            let envelope = bundle
                .signing_key
                .seal(REQUEST_CONTENT_TYPE, &request.to_payload());
            bodies.push((key.clone(), counter_used));
            sends.push((envelope, key));
        }
        out.push(Script { funds, sends });
    }
    out
}

fn payment(merchant: &str, amount: i64) -> Operation {
    Operation::MerchantPayment {
        merchant_id: AccountId::parse(merchant).unwrap(),
        amount: minor(amount),
        payer: None,
    }
}

/// Everything the two runs must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// Per terminal: (key, outcome, code) of every answer, sorted.
    answers: BTreeMap<String, Vec<(String, String, Option<String>)>>,
    tables: Vec<(String, Vec<String>)>,
}

async fn run(seed: u64, bulk: bool, database_url: Option<String>) -> (Observed, u64) {
    // limits tight enough that a burst meets them: per payment, per day, per month, and the
    // abuse limits on payments per window
    let mut limits = StdRng::seed_from_u64(seed ^ 0x6c69_6d69_7473);
    let gateway = TestGateway::start_with(|s| {
        let per_transaction = limits.gen_range(3_000..=12_000);
        let daily = limits.gen_range(5_000..=25_000);
        let monthly = daily + limits.gen_range(0..=10_000);
        for tier in [&mut s.wallet.min_kyc, &mut s.wallet.full_kyc] {
            tier.per_transaction_max_minor = per_transaction;
            tier.daily_debit_max_minor = daily;
            tier.monthly_debit_max_minor = monthly;
        }
        s.identity.device_payments_per_window_max = limits.gen_range(4..=14);
        s.identity.wallet_payments_per_window_max = limits.gen_range(4..=14);
        s.pipeline.decide_in_bulk = bulk;
        s.pipeline.batch_size_max = 256;
        // reward points on for most seeds (earned in the lane too), pending or active at once
        s.rewards.enabled = limits.gen_bool(0.75);
        if limits.gen_bool(0.5) {
            s.rewards.pending_ms = 0;
        }
        if let Some(url) = database_url {
            s.database.url = paygate_gateway::config::Secret::new(url);
        }
    })
    .await;
    gateway
        .store()
        .open_account(
            &AccountId::parse("m-other").unwrap(),
            paygate_gateway::ledger::AccountKind::Merchant,
            paygate_core::Currency::parse("INR").unwrap(),
            0,
        )
        .await
        .unwrap();
    let mut bundles = Vec::new();
    for n in 0..TERMINALS {
        bundles.push(gateway.device(&format!("lane-{n}"), "0.01").await);
    }
    gateway.device("lane-sink", "0.01").await;
    gateway
        .set_tier("wallet-lane-sink", paygate_gateway::ledger::KycTier::Full)
        .await;
    let scripts = scripts(seed, &bundles);
    for (n, script) in scripts.iter().enumerate() {
        if script.funds > 0 {
            paygate_gateway::products::wallet::fund(
                gateway.store(),
                &gateway.settings.wallet,
                &AccountId::parse(&format!("wallet-lane-{n}")).unwrap(),
                minor(script.funds),
                paygate_gateway::clock::now_ms(),
            )
            .await
            .unwrap();
        }
    }
    // some wallets owe points (a clawback they could not cover): their points repay it
    let mut owed = StdRng::seed_from_u64(seed ^ 0x6465_6274);
    for n in 0..TERMINALS {
        if owed.gen_bool(0.3) {
            sqlx::query(
                "INSERT INTO points_debts (wallet_account_id, points_owed) VALUES ($1, $2)",
            )
            .bind(format!("wallet-lane-{n}"))
            .bind(owed.gen_range(1_i64..=40))
            .execute(gateway.store().pool())
            .await
            .unwrap();
        }
    }
    gateway.device("lane-primer", "100.00").await;
    let mut agents: Vec<Agent> = Vec::new();
    for n in 0..TERMINALS {
        agents.push(gateway.agent(&format!("lane-{n}")).await);
    }

    // hold the primer's wallet: its batch waits, and the burst gathers into the next one
    let mut hold = gateway.store().begin_batch().await.unwrap();
    sqlx::query("UPDATE accounts SET shards = shards WHERE account_id = 'wallet-lane-primer'")
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut primer = gateway.agent("lane-primer").await;
    let primer_paid = tokio::spawn(async move {
        let merchant = AccountId::parse(MERCHANT).unwrap();
        let receipt = primer.pay(&merchant, inr("1.00")).await;
        primer.disconnect().await;
        receipt
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (agent, script) in agents.iter().zip(&scripts) {
        for (envelope, _) in &script.sends {
            agent.publish_raw(envelope.clone()).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    hold.rollback().await.unwrap();
    primer_paid.await.unwrap().unwrap();

    let mut answers = BTreeMap::new();
    for (n, (mut agent, script)) in agents.into_iter().zip(&scripts).enumerate() {
        let mut got = Vec::new();
        for _ in &script.sends {
            let Some(reply) = agent.next_reply(Duration::from_secs(20), None).await else {
                panic!(
                    "seed {seed}: terminal {n} got {} of {} answers",
                    got.len(),
                    script.sends.len()
                );
            };
            got.push((
                reply.receipt.idempotency_key.clone().unwrap_or_default(),
                format!("{:?}", reply.receipt.outcome),
                reply.code().map(|c| c.as_str().to_owned()),
            ));
        }
        got.sort();
        answers.insert(format!("lane-{n}"), got);
        agent.disconnect().await;
    }
    let mut tables = Vec::new();
    for (name, sql) in [
        ("balances", "SELECT account_id || ' ' || CAST(SUM(balance_minor) AS TEXT) FROM balance_shards GROUP BY account_id ORDER BY 1"),
        ("requests", "SELECT device_id || ' ' || idempotency_key || ' ' || CAST(counter AS TEXT) || ' ' || outcome || ' ' || COALESCE(code, '-') FROM requests ORDER BY 1"),
        ("transfers", "SELECT kind || ' ' || COALESCE(device_id, '-') || ' ' || COALESCE(idempotency_key, '-') || ' ' || CAST(amount_minor AS TEXT) FROM transfers ORDER BY 1"),
        ("postings", "SELECT p.account_id || ' ' || CAST(p.amount_minor AS TEXT) || ' ' || COALESCE(t.device_id, '-') || ' ' || COALESCE(t.idempotency_key, '-') FROM postings p JOIN transfers t ON t.tx_id = p.tx_id ORDER BY 1"),
        ("debit_days", "SELECT account_id || ' ' || kind || ' ' || CAST(total_minor AS TEXT) || ' ' || CAST(debit_count AS TEXT) FROM debit_days ORDER BY 1"),
        ("debit_log", "SELECT account_id || ' ' || CAST(COUNT(*) AS TEXT) FROM wallet_debit_log GROUP BY account_id ORDER BY 1"),
        ("since_strong", "SELECT account_id || ' ' || CAST(debited_since_strong_auth_minor AS TEXT) FROM wallet_counters ORDER BY 1"),
        ("payees", "SELECT wallet_account_id || ' ' || payee_account_id FROM wallet_payees ORDER BY 1"),
        ("challenges", "SELECT device_id || ' ' || idempotency_key || ' ' || state FROM identity_challenges ORDER BY 1"),
        ("lots", "SELECT l.wallet_account_id || ' ' || CAST(l.points_earned AS TEXT) || ' ' || CAST(l.points_remaining AS TEXT) || ' ' || l.state || ' ' || COALESCE(t.idempotency_key, '-') FROM points_lots l JOIN transfers t ON t.tx_id = l.payment_tx_id ORDER BY 1"),
        ("debts", "SELECT wallet_account_id || ' ' || CAST(points_owed AS TEXT) FROM points_debts ORDER BY 1"),
    ] {
        let rows: Vec<(String,)> = sqlx::query_as(sql)
            .fetch_all(gateway.store().pool())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // the primer's key is random: its rows are left out
        let rows = rows.into_iter().map(|r| r.0).filter(|r| !r.contains("lane-primer"));
        tables.push((name.to_owned(), rows.collect()));
    }
    gateway.assert_ledger_balanced().await;
    let metrics = gateway.running.metrics.snapshot();
    // a lane write the database refuses is decided again alone, with an alert: the answers
    // would still agree, so the alert itself is what shows the lane decided wrongly
    assert_eq!(
        metrics.ledger_invariant_alerts, 0,
        "seed {seed} (PAYGATE_LANE_SEED={seed}), lane {bulk}: an invariant broke"
    );
    let lane = metrics.pipeline_bulk_decided;
    gateway.running.shutdown();
    (Observed { answers, tables }, lane)
}

fn seeds(count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("PAYGATE_LANE_SEED") {
        return vec![seed.parse().expect("PAYGATE_LANE_SEED is a number")];
    }
    let base: u64 = rand::random();
    (0..count).map(|n| base.wrapping_add(n)).collect()
}

async fn compare(seed: u64, pg: bool) -> u64 {
    let url = || async {
        if pg {
            Some(paygate_tests::fresh_postgres_database().await)
        } else {
            None
        }
    };
    let (alone, alone_lane) = run(seed, false, url().await).await;
    let (together, lane) = run(seed, true, url().await).await;
    assert_eq!(
        alone_lane, 0,
        "seed {seed}: the lane ran while switched off"
    );
    if let Some(diff) = first_difference(&alone, &together) {
        panic!("seed {seed} (PAYGATE_LANE_SEED={seed}): the lane decided differently: {diff}");
    }
    lane
}

fn first_difference(alone: &Observed, together: &Observed) -> Option<String> {
    for (device, answers) in &alone.answers {
        let other = together.answers.get(device);
        if other != Some(answers) {
            return Some(format!(
                "{device} answers alone {answers:?}, in the lane {other:?}"
            ));
        }
    }
    for ((name, rows), (_, other)) in alone.tables.iter().zip(&together.tables) {
        let only_alone: Vec<&String> = rows.iter().filter(|r| !other.contains(r)).collect();
        let only_lane: Vec<&String> = other.iter().filter(|r| !rows.contains(r)).collect();
        if rows != other {
            return Some(format!(
                "{name}: only alone {only_alone:?}; only in the lane {only_lane:?}"
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_decides_what_deciding_alone_decides_on_sqlite() {
    let mut lane_total = 0;
    for seed in seeds(4) {
        eprintln!("lane differential seed {seed} (SQLite)");
        lane_total += compare(seed, false).await;
    }
    assert!(
        lane_total > 0,
        "no payment went through the fast lane: the comparison compared nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_decides_what_deciding_alone_decides_on_postgres() {
    let mut lane_total = 0;
    for seed in seeds(2) {
        eprintln!("lane differential seed {seed} (PostgreSQL)");
        lane_total += compare(seed, true).await;
    }
    assert!(
        lane_total > 0,
        "no payment went through the fast lane: the comparison compared nothing"
    );
}
