//! Upgrading a SQLite database made by an earlier paygate: the ledger migration (0006) rebuilds
//! the accounts table and moves balances into shards; balances, devices, transfers and foreign
//! keys must survive it.

#![allow(clippy::unwrap_used)]

use paygate_core::AccountId;
use paygate_gateway::store::Store;
use sqlx::Connection;

#[tokio::test]
async fn a_database_from_before_the_ledger_migration_upgrades_with_its_balances() {
    let dir = tempfile::tempdir().unwrap();
    // the migrations as they were before the ledger issue
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, old.join(&name)).unwrap();
        }
    }
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    for statement in [
        "INSERT INTO accounts (account_id, kind, currency, balance_minor, negative_allowed, created_at_ms)
         VALUES ('issuance-inr', 'issuance', 'INR', -5000, 1, 0),
                ('wallet-pos-1', 'wallet', 'INR', 3000, 0, 0),
                ('m-1', 'merchant', 'INR', 2000, 0, 0)",
        "INSERT INTO devices (device_id, algorithm, public_key, wallet_account_id, enrolled_at_ms)
         VALUES ('pos-1', 'ed25519', x'00', 'wallet-pos-1', 0)",
        "INSERT INTO transfers (tx_id, kind, currency, amount_minor, created_at_ms)
         VALUES ('tx-1', 'funding', 'INR', 5000, 0), ('tx-2', 'merchant_payment', 'INR', 2000, 1)",
        "INSERT INTO postings (tx_id, account_id, currency, amount_minor) VALUES
         ('tx-1', 'issuance-inr', 'INR', -5000), ('tx-1', 'wallet-pos-1', 'INR', 5000),
         ('tx-2', 'wallet-pos-1', 'INR', -2000), ('tx-2', 'm-1', 'INR', 2000)",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();

    // today's paygate opens it: the remaining migrations run
    let store = Store::open(
        &format!("sqlite://{}", dir.path().join("old.db").display()),
        1,
    )
    .await
    .unwrap();
    let balance = |id: &str| {
        let store = store.clone();
        let id = AccountId::parse(id).unwrap();
        async move { store.balance(&id).await.unwrap().unwrap() }
    };
    assert_eq!(balance("wallet-pos-1").await, 3000);
    assert_eq!(balance("m-1").await, 2000);
    assert_eq!(balance("issuance-inr").await, -5000);
    assert!(store.balances_match_postings().await.unwrap());
    for unit in store.trial_balance().await.unwrap() {
        assert_eq!(unit.balance_sum_minor, 0);
    }
    let device = store
        .device(&paygate_core::DeviceId::parse("pos-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.wallet.as_str(), "wallet-pos-1");
    // the rebuilt table is still what devices refer to: a device on a missing account fails
    let orphan = sqlx::query(
        "INSERT INTO devices (device_id, algorithm, public_key, wallet_account_id, enrolled_at_ms)
         VALUES ('pos-2', 'ed25519', x'00', 'wallet-nobody', 0)",
    )
    .execute(store.pool())
    .await;
    assert!(orphan.is_err());
    // the wallet became a full-KYC wallet with one shard; the merchant has eight
    let shards: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account_id, CAST(COUNT(*) AS BIGINT) FROM balance_shards GROUP BY account_id ORDER BY account_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        shards,
        [
            ("issuance-inr".to_owned(), 8),
            ("m-1".to_owned(), 8),
            ("wallet-pos-1".to_owned(), 1)
        ]
    );
}
