//! The ledger contract: the same tests on SQLite and on PostgreSQL (the server
//! `scripts/with-postgres` starts). Each test gets a fresh database.

#![allow(clippy::unwrap_used)]

use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, TxId};
use paygate_gateway::ledger::{
    self, AccountKind, KycTier, Leg, NewAccount, NewTransfer, POINTS, SHARD_BALANCE_LIMIT,
};
use paygate_gateway::store::{new_tx_id, Store, StoreError};
use paygate_tests::{Db, TestDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Runs a contract test on both backends.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(paygate_tests::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(paygate_tests::Db::Postgres).await;
                }
            )*
        }
    };
}

contract!(
    a_payment_moves_money_and_the_books_balance,
    every_refusal_leaves_the_ledger_unchanged,
    a_sharded_account_is_debited_across_its_shards,
    transfers_with_points_and_money_balance_per_unit,
    posted_entries_cannot_be_changed,
    concurrent_random_transfers_with_retries_keep_every_invariant,
    counters_follow_postings_and_the_business_time_zone,
);

fn id(text: &str) -> AccountId {
    AccountId::parse(text).unwrap()
}

/// Funds a wallet as the operator does (default KYC limits).
async fn fund(store: &paygate_gateway::store::Store, wallet: &str, amount: &str) {
    paygate_gateway::products::wallet::fund(
        store,
        &Default::default(),
        &id(wallet),
        paygate_tests::inr(amount),
        0,
    )
    .await
    .unwrap();
}

async fn open(store: &Store, account: &str, kind: AccountKind, unit: &str) {
    open_tier(store, account, kind, unit, None).await;
}

async fn open_tier(
    store: &Store,
    account: &str,
    kind: AccountKind,
    unit: &str,
    tier: Option<KycTier>,
) {
    store
        .open_with(
            &NewAccount {
                account_id: id(account),
                kind,
                unit: unit.into(),
                kyc_tier: tier,
                category: None,
                owner: None,
            },
            0,
        )
        .await
        .unwrap();
}

async fn post(
    store: &Store,
    legs: Vec<Leg>,
    origin: Option<(&str, &str)>,
) -> Result<TxId, StoreError> {
    let tx_id = new_tx_id();
    let origin = origin.map(|(d, k)| {
        (
            DeviceId::parse(d).unwrap(),
            IdempotencyKey::parse(k).unwrap(),
        )
    });
    let mut batch = store.begin_batch().await?;
    let posted = ledger::post(
        &mut batch,
        &NewTransfer {
            tx_id: &tx_id,
            kind: "test",
            origin: origin.as_ref().map(|(d, k)| (d, k)),
            related: None,
            legs,
            now_ms: 1,
        },
    )
    .await;
    match posted {
        Ok(()) => {
            batch.commit().await?;
            Ok(tx_id)
        }
        Err(e) => {
            batch.rollback().await?;
            Err(e)
        }
    }
}

fn pay(from: &str, to: &str, kind: AccountKind, amount: i64) -> Vec<Leg> {
    vec![
        Leg::debit(&id(from), AccountKind::Wallet, "INR", amount),
        Leg::credit(&id(to), kind, "INR", amount),
    ]
}

async fn balance(store: &Store, account: &str) -> i64 {
    store.balance(&id(account)).await.unwrap().unwrap()
}

/// Books balance: every unit sums to zero, balances equal postings, no forbidden negative.
async fn assert_books_balance(store: &Store) {
    for unit in store.trial_balance().await.unwrap() {
        assert_eq!(unit.balance_sum_minor, 0, "{unit:?}");
        assert_eq!(unit.posting_sum_minor, 0, "{unit:?}");
        assert_eq!(unit.unbalanced_transfers, 0, "{unit:?}");
    }
    assert!(store.balances_match_postings().await.unwrap());
    let mut conn = store.begin_batch().await.unwrap();
    assert_eq!(
        ledger::forbidden_negative_shards(&mut conn).await.unwrap(),
        0
    );
    conn.rollback().await.unwrap();
}

async fn funded(db: Db) -> TestDb {
    let test = TestDb::new(db, 4).await;
    let store = &test.store;
    open(store, "w-a", AccountKind::Wallet, "INR").await;
    open(store, "w-b", AccountKind::Wallet, "INR").await;
    open(store, "m-1", AccountKind::Merchant, "INR").await;
    open(store, "m-usd", AccountKind::Merchant, "USD").await;
    fund(store, "w-a", "1000.00").await;
    test
}

async fn a_payment_moves_money_and_the_books_balance(db: Db) {
    let test = funded(db).await;
    let store = &test.store;
    post(
        store,
        pay("w-a", "m-1", AccountKind::Merchant, 25_050),
        Some(("pos-1", "k-1")),
    )
    .await
    .unwrap();
    assert_eq!(balance(store, "w-a").await, 100_000 - 25_050);
    assert_eq!(balance(store, "m-1").await, 25_050);
    assert_eq!(balance(store, "issuance-inr").await, -100_000);
    assert_books_balance(store).await;
    // the same device and key cannot post twice
    let again = post(
        store,
        pay("w-a", "m-1", AccountKind::Merchant, 1),
        Some(("pos-1", "k-1")),
    )
    .await;
    assert!(matches!(again, Err(StoreError::AlreadyPosted)), "{again:?}");
    assert_eq!(balance(store, "w-a").await, 100_000 - 25_050);
}

async fn every_refusal_leaves_the_ledger_unchanged(db: Db) {
    let test = funded(db).await;
    let store = &test.store;
    open_tier(
        store,
        "w-small",
        AccountKind::Wallet,
        "INR",
        Some(KycTier::Min),
    )
    .await;
    open(store, "m-big", AccountKind::Merchant, "INR").await;
    let cases: Vec<(&str, Vec<Leg>, ErrorCode)> = vec![
        (
            "more than the balance",
            pay("w-a", "m-1", AccountKind::Merchant, 100_001),
            ErrorCode::InsufficientFunds,
        ),
        (
            "an empty wallet",
            pay("w-b", "m-1", AccountKind::Merchant, 1),
            ErrorCode::InsufficientFunds,
        ),
        (
            "a merchant in another currency",
            pay("w-a", "m-usd", AccountKind::Merchant, 100),
            ErrorCode::CurrencyMismatch,
        ),
        (
            "an unknown merchant",
            pay("w-a", "m-nobody", AccountKind::Merchant, 100),
            ErrorCode::UnknownMerchant,
        ),
        (
            "a wallet named as a merchant",
            pay("w-a", "w-b", AccountKind::Merchant, 100),
            ErrorCode::UnknownMerchant,
        ),
        (
            "an unknown wallet",
            pay("w-a", "w-nobody", AccountKind::Wallet, 100),
            ErrorCode::UnknownWallet,
        ),
        (
            "an unknown payer",
            pay("w-nobody", "m-1", AccountKind::Merchant, 100),
            ErrorCode::UnknownWallet,
        ),
        (
            "to oneself",
            pay("w-a", "w-a", AccountKind::Wallet, 100),
            ErrorCode::TransferToSelf,
        ),
        (
            "an amount past the ledger's limit",
            pay("w-a", "m-1", AccountKind::Merchant, SHARD_BALANCE_LIMIT + 1),
            ErrorCode::AmountOverflow,
        ),
        (
            "an amount of i64::MAX",
            pay("w-a", "m-1", AccountKind::Merchant, i64::MAX),
            ErrorCode::AmountOverflow,
        ),
        (
            "a credit past the KYC balance cap",
            vec![
                Leg::debit(&id("w-a"), AccountKind::Wallet, "INR", 600),
                Leg::credit(&id("w-small"), AccountKind::Wallet, "INR", 600).capped(Some(500)),
            ],
            ErrorCode::LimitExceeded,
        ),
    ];
    for (what, legs, code) in cases {
        let before = store.trial_balance().await.unwrap();
        let transfers = store.count_transfers("test").await.unwrap();
        let got = post(store, legs, Some(("pos-1", "k-refused"))).await;
        assert!(
            matches!(&got, Err(StoreError::Refused(c)) if *c == code),
            "{what}: expected {code}, got {got:?}"
        );
        assert_eq!(
            store.count_transfers("test").await.unwrap(),
            transfers,
            "{what}: nothing posted"
        );
        assert_eq!(store.trial_balance().await.unwrap(), before, "{what}");
        assert_eq!(balance(store, "w-a").await, 100_000, "{what}");
    }

    // a balance pushed to the ledger's limit: one more unit overflows, nothing changes
    open(store, "issuance-big", AccountKind::Issuance, "INR").await;
    let mut legs = vec![
        Leg::debit(
            &id("issuance-big"),
            AccountKind::Issuance,
            "INR",
            SHARD_BALANCE_LIMIT,
        ),
        Leg::credit(&id("w-b"), AccountKind::Wallet, "INR", SHARD_BALANCE_LIMIT),
    ];
    post(store, legs.clone(), None).await.unwrap();
    legs[0].amount = -1;
    legs[1].amount = 1;
    let got = post(store, legs, None).await;
    assert!(
        matches!(got, Err(StoreError::Refused(ErrorCode::AmountOverflow))),
        "{got:?}"
    );
    assert_eq!(balance(store, "w-b").await, SHARD_BALANCE_LIMIT);
    assert_books_balance(store).await;

    // legs that do not balance are a bug, refused before anything is written
    let got = post(
        store,
        vec![
            Leg::debit(&id("w-a"), AccountKind::Wallet, "INR", 100),
            Leg::credit(&id("m-1"), AccountKind::Merchant, "INR", 99),
        ],
        None,
    )
    .await;
    assert!(matches!(got, Err(StoreError::Invariant(_))), "{got:?}");
    assert_eq!(balance(store, "w-a").await, 100_000);
    assert_books_balance(store).await;
}

async fn a_sharded_account_is_debited_across_its_shards(db: Db) {
    let test = funded(db).await;
    let store = &test.store;
    // forty payments land on random shards of the merchant
    for _ in 0..40 {
        post(store, pay("w-a", "m-1", AccountKind::Merchant, 250), None)
            .await
            .unwrap();
    }
    assert_eq!(balance(store, "m-1").await, 10_000);
    let shards: Vec<(i64,)> = sqlx::query_as(
        "SELECT balance_minor FROM balance_shards WHERE account_id = 'm-1' AND balance_minor > 0",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(shards.len() > 1, "credits spread over shards: {shards:?}");
    let refund = |amount| {
        vec![
            Leg::debit(&id("m-1"), AccountKind::Merchant, "INR", amount),
            Leg::credit(&id("w-b"), AccountKind::Wallet, "INR", amount),
        ]
    };
    // one more than the merchant holds is refused; all of it is not
    let got = post(store, refund(10_001), None).await;
    assert!(
        matches!(got, Err(StoreError::Refused(ErrorCode::InsufficientFunds))),
        "{got:?}"
    );
    post(store, refund(10_000), None).await.unwrap();
    assert_eq!(balance(store, "m-1").await, 0);
    assert_eq!(balance(store, "w-b").await, 10_000);
    assert_books_balance(store).await;
}

async fn transfers_with_points_and_money_balance_per_unit(db: Db) {
    let test = funded(db).await;
    let store = &test.store;
    open(store, "pts-a", AccountKind::Points, POINTS).await;
    open(
        store,
        "points-liability",
        AccountKind::PointsLiability,
        POINTS,
    )
    .await;
    open(store, "rewards-funding", AccountKind::RewardsFunding, "INR").await;
    // earn 120 points, then pay 100.00 with 50.00 money and 50 points worth 50.00
    post(
        store,
        vec![
            Leg::debit(
                &id("points-liability"),
                AccountKind::PointsLiability,
                POINTS,
                120,
            ),
            Leg::credit(&id("pts-a"), AccountKind::Points, POINTS, 120),
        ],
        None,
    )
    .await
    .unwrap();
    post(
        store,
        vec![
            Leg::debit(&id("w-a"), AccountKind::Wallet, "INR", 5_000),
            Leg::debit(
                &id("rewards-funding"),
                AccountKind::RewardsFunding,
                "INR",
                5_000,
            ),
            Leg::credit(&id("m-1"), AccountKind::Merchant, "INR", 10_000),
            Leg::debit(&id("pts-a"), AccountKind::Points, POINTS, 50),
            Leg::credit(
                &id("points-liability"),
                AccountKind::PointsLiability,
                POINTS,
                50,
            ),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(balance(store, "pts-a").await, 70);
    assert_eq!(balance(store, "m-1").await, 10_000);
    assert_eq!(balance(store, "points-liability").await, -70);
    // points are not money: a points leg on a money account is a unit mismatch
    let got = post(
        store,
        vec![
            Leg::debit(&id("pts-a"), AccountKind::Points, POINTS, 10),
            Leg::credit(
                &id("points-liability"),
                AccountKind::PointsLiability,
                "INR",
                10,
            ),
        ],
        None,
    )
    .await;
    assert!(matches!(got, Err(StoreError::Invariant(_))), "{got:?}");
    let got = post(
        store,
        vec![
            Leg::debit(&id("pts-a"), AccountKind::Points, "INR", 10),
            Leg::credit(&id("m-1"), AccountKind::Merchant, "INR", 10),
        ],
        None,
    )
    .await;
    assert!(
        matches!(got, Err(StoreError::Refused(ErrorCode::CurrencyMismatch))),
        "{got:?}"
    );
    let trial = store.trial_balance().await.unwrap();
    assert!(trial.iter().any(|t| t.currency == POINTS));
    assert_books_balance(store).await;
}

async fn posted_entries_cannot_be_changed(db: Db) {
    let test = funded(db).await;
    let store = &test.store;
    let tx = post(store, pay("w-a", "m-1", AccountKind::Merchant, 100), None)
        .await
        .unwrap();
    for statement in [
        format!("UPDATE postings SET amount_minor = 1 WHERE tx_id = '{tx}'"),
        format!("DELETE FROM postings WHERE tx_id = '{tx}'"),
        format!("UPDATE transfers SET amount_minor = 1 WHERE tx_id = '{tx}'"),
        format!("DELETE FROM transfers WHERE tx_id = '{tx}'"),
    ] {
        let got = sqlx::query(&statement).execute(store.pool()).await;
        let message = got.expect_err(&statement).to_string();
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
    // and no balance can be forced below zero behind the ledger's back
    let got = sqlx::query("UPDATE balance_shards SET balance_minor = -1 WHERE account_id = 'w-b'")
        .execute(store.pool())
        .await;
    assert!(got.is_err());
    assert_books_balance(store).await;
}

/// Thousands of random transfers from concurrent tasks, with a share of them retried under
/// the same device and idempotency key (a terminal that did not see its answer), checked
/// against a model: every transfer balanced, each unit's sum unchanged (zero), no forbidden
/// negative, each key posted at most once, and each account's balance what the accepted
/// transfers say.
async fn concurrent_random_transfers_with_retries_keep_every_invariant(db: Db) {
    const TASKS: u32 = 8;
    const PER_TASK: usize = 250;
    const WALLETS: usize = 12;
    let test = TestDb::new(db, TASKS + 2).await;
    let store = Arc::new(test.store.clone());
    let seed: u64 = std::env::var("PAYGATE_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (PAYGATE_PROPTEST_SEED={seed} reruns it)");
    for w in 0..WALLETS {
        open(&store, &format!("w-{w}"), AccountKind::Wallet, "INR").await;
        fund(&store, &format!("w-{w}"), "50.00").await;
    }
    open(&store, "m-hot", AccountKind::Merchant, "INR").await;
    open(&store, "m-other", AccountKind::Merchant, "INR").await;

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(u64::from(t)));
        tasks.push(tokio::spawn(async move {
            // (key, from, to, amount) -> posted?
            let mut accepted: Vec<(String, String, String, i64)> = Vec::new();
            let mut sent: Vec<(String, Vec<Leg>, String, String, i64)> = Vec::new();
            for n in 0..PER_TASK {
                let retry = !sent.is_empty() && rng.gen_bool(0.3);
                let (key, legs, from, to, amount) = if retry {
                    sent[rng.gen_range(0..sent.len())].clone()
                } else {
                    let wallet = format!("w-{}", rng.gen_range(0..WALLETS));
                    let (from, to, kind) = match rng.gen_range(0..5) {
                        0 => (wallet, "m-other".to_owned(), AccountKind::Merchant),
                        1 => (
                            wallet,
                            format!("w-{}", rng.gen_range(0..WALLETS)),
                            AccountKind::Wallet,
                        ),
                        // the hot merchant pays back (a refund): a debit across its shards
                        2 => ("m-hot".to_owned(), wallet, AccountKind::Wallet),
                        _ => (wallet, "m-hot".to_owned(), AccountKind::Merchant),
                    };
                    let amount = rng.gen_range(1..=900);
                    let key = format!("k-{t}-{n}");
                    let from_kind = if from.starts_with("m-") {
                        AccountKind::Merchant
                    } else {
                        AccountKind::Wallet
                    };
                    let legs = vec![
                        Leg::debit(&id(&from), from_kind, "INR", amount),
                        Leg::credit(&id(&to), kind, "INR", amount),
                    ];
                    sent.push((key.clone(), legs.clone(), from.clone(), to.clone(), amount));
                    (key, legs, from, to, amount)
                };
                let device = format!("pos-{t}");
                match post(&store, legs, Some((&device, &key))).await {
                    Ok(_) => accepted.push((key, from, to, amount)),
                    Err(StoreError::AlreadyPosted) => {
                        assert!(retry, "{key} posted before it was sent")
                    }
                    Err(StoreError::Refused(
                        ErrorCode::InsufficientFunds | ErrorCode::TransferToSelf,
                    )) => {}
                    Err(other) => panic!("{key}: {other}"),
                }
            }
            accepted
        }));
    }
    let mut model: BTreeMap<String, i64> = BTreeMap::new();
    model.insert("m-hot".into(), 0);
    model.insert("m-other".into(), 0);
    for w in 0..WALLETS {
        model.insert(format!("w-{w}"), 5_000);
    }
    let mut keys = std::collections::BTreeSet::new();
    let mut accepted_count = 0;
    for task in tasks {
        for (key, from, to, amount) in task.await.unwrap() {
            assert!(keys.insert(key.clone()), "{key} accepted twice");
            *model.entry(from).or_default() -= amount;
            *model.entry(to).or_default() += amount;
            accepted_count += 1;
        }
    }
    assert!(
        accepted_count > TASKS as usize * PER_TASK / 4,
        "only {accepted_count} accepted"
    );
    for (account, expected) in &model {
        assert_eq!(balance(&store, account).await, *expected, "{account}");
    }
    let posted: i64 = store.count_transfers("test").await.unwrap();
    assert_eq!(
        posted, accepted_count as i64,
        "one transfer per accepted key"
    );
    let duplicates: Vec<(String,)> = sqlx::query_as(
        "SELECT idempotency_key FROM transfers WHERE idempotency_key IS NOT NULL
         GROUP BY device_id, idempotency_key HAVING COUNT(*) > 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(duplicates.is_empty(), "{duplicates:?}");
    assert_books_balance(&store).await;
    eprintln!(
        "{db:?}: {accepted_count} of {} transfers accepted",
        TASKS as usize * PER_TASK
    );
}

/// The counters `ledger::post` keeps (per-day debits, payees, spend since strong
/// authentication) follow the postings, and a change of business time zone recounts the days.
async fn counters_follow_postings_and_the_business_time_zone(db: Db) {
    use sqlx::Row;
    let test = funded(db).await;
    let store = &test.store;
    // 2026-11-23 20:00 UTC: still the 23rd in UTC, already the 24th in India (UTC+05:30)
    let at: u64 = 1_795_464_000_000;
    let utc_day = i64::try_from(at / 86_400_000).unwrap();
    let mut batch = store.begin_batch().await.unwrap();
    ledger::post(
        &mut batch,
        &NewTransfer {
            tx_id: &new_tx_id(),
            kind: "merchant_payment",
            origin: None,
            related: None,
            legs: pay("w-a", "m-1", AccountKind::Merchant, 500),
            now_ms: at,
        },
    )
    .await
    .unwrap();
    batch.commit().await.unwrap();
    let day_rows = |store: &Store| {
        let pool = store.pool().clone();
        async move {
            sqlx::query("SELECT CAST(local_day AS BIGINT) AS day, CAST(total_minor AS BIGINT) AS total FROM debit_days WHERE account_id = 'w-a'")
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<i64, _>("day"), r.get::<i64, _>("total")))
                .collect::<Vec<_>>()
        }
    };
    // counted in IST, the migration's and the process's default zone
    assert_eq!(day_rows(store).await, vec![(utc_day + 1, 500)]);
    let mut batch = store.begin_batch().await.unwrap();
    let totals = ledger::debits_in_days(&mut batch, &id("w-a"), &["merchant_payment"], at)
        .await
        .unwrap();
    batch.rollback().await.unwrap();
    assert_eq!((totals.today_minor, totals.this_month_minor), (500, 500));
    let counted: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM wallet_payees WHERE wallet_account_id = 'w-a' AND payee_account_id = 'm-1'),
                (SELECT CAST(debited_since_strong_auth_minor AS BIGINT) FROM wallet_counters WHERE account_id = 'w-a')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(counted, (1, 500));
    // a gateway started in UTC recounts the days once
    assert!(ledger::align_calendar(store, 0).await.unwrap());
    assert_eq!(day_rows(store).await, vec![(utc_day, 500)]);
    assert!(!ledger::align_calendar(store, 0).await.unwrap());
    assert!(ledger::align_calendar(store, 330).await.unwrap());
    assert_eq!(day_rows(store).await, vec![(utc_day + 1, 500)]);
    // a strong authentication starts the spend again from zero
    let mut batch = store.begin_batch().await.unwrap();
    ledger::reset_since_strong_auth(&mut batch, &id("w-a"))
        .await
        .unwrap();
    batch.commit().await.unwrap();
    let since: i64 = sqlx::query_scalar("SELECT CAST(debited_since_strong_auth_minor AS BIGINT) FROM wallet_counters WHERE account_id = 'w-a'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(since, 0);
    assert_books_balance(store).await;
}
