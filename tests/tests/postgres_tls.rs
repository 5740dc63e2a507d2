//! The gateway's PostgreSQL connections over TLS, as production runs them (RDS with
//! `rds.force_ssl`): with `sslmode=verify-full` and the server's CA the whole gateway runs and
//! every one of its connections is encrypted; with a CA that did not issue the server's
//! certificate it refuses to start rather than talk in clear or to an impostor.

#![allow(clippy::unwrap_used)]

use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::config::Secret;
use paygate_tests::{fresh_postgres_database, inr, TestGateway, MERCHANT};

fn ca() -> String {
    std::env::var("PAYGATE_TEST_PG_CA").expect(
        "PAYGATE_TEST_PG_CA is not set: run the tests with ./scripts/test (scripts/with-postgres)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verify_full_every_connection_of_the_gateway_is_encrypted_and_payments_run() {
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        fresh_postgres_database().await,
        ca()
    );
    let gateway = TestGateway::start_with(|s| s.database.url = Secret::new(url)).await;
    gateway.device("pos-1", "10.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    let database: String = sqlx::query_scalar("SELECT CAST(current_database() AS TEXT)")
        .fetch_one(gateway.store().pool())
        .await
        .unwrap();
    let (all, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
         WHERE CAST(a.datname AS TEXT) = $1",
    )
    .bind(&database)
    .fetch_one(gateway.store().pool())
    .await
    .unwrap();
    assert!(all >= 1);
    assert_eq!(
        encrypted, all,
        "a connection of the gateway is not encrypted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_that_did_not_sign_the_server_the_gateway_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    // a CA of its own, not the one that signed the database server's certificate
    paygate_gateway::pki::init(dir.path(), &["localhost".into()], "receipt-1").unwrap();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        fresh_postgres_database().await,
        dir.path().join("ca.cert.pem").display()
    );
    let mut settings = paygate_gateway::config::Settings {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    settings.database.url = Secret::new(url);
    settings.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.enabled = false;
    settings.mqtt.connections_max = 64;
    let started = paygate_gateway::gateway::start(settings).await;
    let error = started
        .err()
        .expect("the gateway started with an untrusted database server");
    let text = format!("{error:#}");
    assert!(
        text.to_lowercase().contains("certificate") || text.to_lowercase().contains("tls"),
        "{text}"
    );
}
