//! schemathesis (PyPI) generates requests from the served OpenAPI document, valid and not,
//! and checks every answer: no server error, every status, content type, header and body as
//! the document says, every schema-violating request refused, and authentication enforced
//! where it is declared. Bounded by examples per operation and by time.

#![allow(clippy::unwrap_used)]

use paygate_core::AccountId;
use paygate_tests::{inr, TestGateway, MERCHANT};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_openapi_document() {
    let gateway = TestGateway::start_with(|s| {
        // the fuzzer is one caller sending as fast as it can; the rate limit is tested apart
        s.http.caller_requests_per_s = 1_000_000;
        s.http.caller_requests_burst = 1_000_000;
    })
    .await;
    // some history, so reads of wallet-pos-1 find postings
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    // every scope and every operator role, signed in with a second factor: each operation is
    // reached past its authorization
    let token = gateway.token_with(
        "schemathesis",
        "wallets:read wallets:write audit:read",
        &["operator", "finance", "security"],
        Some(paygate_gateway::clock::now_ms() / 1_000),
    );
    let address = gateway.running.http_address().unwrap();
    let ca = gateway.pki_dir().join("ca.cert.pem");
    let mut command = tokio::process::Command::new("python3");
    command
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("https://{address}/openapi.json"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--tls-verify")
        .arg(&ca)
        .args(["--max-examples", "40", "--request-timeout", "10"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance,\
             negative_data_rejection,ignored_auth",
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("schemathesis ran longer than 300 s")
        .expect("python3 -m schemathesis.cli (tests/python/requirements.txt; ./scripts/test installs it)");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // it really tested the operations (a run that reached nothing would also exit 0)
    assert!(out.contains("Tested: 30"), "{out}");
    assert!(!gateway.running.pipeline_ended());
    gateway.assert_ledger_balanced().await;
}
