//! What the operator API's tests share: a gateway, the counts a refusal must leave as they
//! were, a write, a wallet opened through the backend's API, a device session.

#![allow(dead_code)]

use paygate_gateway::config::Secret;
use paygate_tests::http::{Answer, HttpClient};
use paygate_tests::{fresh_postgres_database, Db, TestGateway};
use serde_json::{json, Value};

pub async fn gateway(db: Db) -> TestGateway {
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

pub async fn counts(gateway: &TestGateway) -> String {
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

pub async fn post(http: &HttpClient, path: &str, token: &str, key: &str, body: Value) -> Answer {
    http.write("POST", path, token, key, &body).await
}

pub fn status_code(answer: &Answer) -> (u16, String) {
    (answer.status, answer.code())
}

/// Opens a wallet through the wallet backend's API.
pub async fn open_wallet(gateway: &TestGateway, id: &str, tier: &str) {
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

/// A device session opened now, through the front with its own certificate: the CONNACK code.
pub async fn session(gateway: &TestGateway, device: &str) -> (paygate_tests::RawClient, u8) {
    let config = gateway.tls_client_config(Some(&gateway.bundle_dir(device)));
    let mut client = paygate_tests::RawClient::connect_tls(gateway.port(), config)
        .await
        .unwrap();
    let code = client.mqtt_connect(device).await.unwrap();
    (client, code)
}
