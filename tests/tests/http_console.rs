//! The auditors' web console in a real browser: headless Chromium (Debian's), driven through
//! chromedriver by tests/python/console.py. An auditor signs in (a bad token first), searches
//! for a transaction, opens it with its inclusion proofs, runs verification and reads
//! "verified" on the page; a screenshot is taken. Every read the page made is in the trail.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::EventType;
use paygate_core::AccountId;
use paygate_tests::{inr, TestGateway, MERCHANT};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_signs_in_finds_a_payment_opens_it_and_sees_the_archive_verified() {
    let gateway = TestGateway::start_with(|s| {
        s.audit.records_per_segment_max = 4;
        s.audit.seal_check_interval_ms = 50;
        s.audit.ship_interval_ms = 50;
    })
    .await;
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("42.00"))
        .await
        .unwrap();
    let tx = receipt.receipt.tx_id.clone().unwrap();
    let http = gateway.http();
    let token = gateway.token("auditor-1", "audit:read");
    // wait until the payment's record is shipped to the write-once store
    for _ in 0..100 {
        let found = http
            .get(&format!("/v1/audit/records?tx={tx}"), &token)
            .await;
        if String::from_utf8_lossy(&found.body).contains("payment_decided") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = http.send("GET", "/console/", &[], None).await.unwrap();
    assert_eq!(page.status, 200);
    let policy = page.header("content-security-policy").unwrap();
    assert!(
        policy.contains("script-src 'self'") && !policy.contains("unsafe"),
        "{policy}"
    );

    let screenshot = gateway.dir.path().join("console.png");
    let address = gateway.running.http_address().unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/console.py"))
            .arg(format!("https://127.0.0.1:{}", address.port()))
            .arg(&token)
            .arg(&tx)
            .arg(gateway.pki_dir().join("server.cert.pem"))
            .arg(&screenshot)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run took longer than 180 s")
    .unwrap();
    assert!(
        run.status.success(),
        "console.py failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(seen["title"], "paygate audit console");
    assert!(
        seen["bad_signin"]
            .as_str()
            .unwrap()
            .contains("TOKEN_INVALID"),
        "{seen}"
    );
    assert_eq!(seen["search_hidden_after_bad_signin"], true);
    assert_eq!(seen["who"], "signed in as auditor-1");
    assert!(seen["rows"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["transaction"], tx.as_str());
    assert!(
        seen["transaction_records"]
            .as_str()
            .unwrap()
            .contains("payment_decided"),
        "{seen}"
    );
    assert!(
        seen["proofs"]
            .as_str()
            .unwrap()
            .contains("inclusion proofs"),
        "{seen}"
    );
    let verify = seen["verify"].as_str().unwrap();
    assert!(verify.starts_with("verified: "), "{seen}");
    let text = seen["page_text"].as_str().unwrap();
    assert!(text.contains("verified") && text.contains(&tx), "{text}");
    // the one error the browser logged is the refused sign-in's 401
    let errors: Vec<&str> = seen["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.len() == 1
            && errors[0].contains("/v1/audit/public-key")
            && errors[0].contains("401"),
        "{errors:?}"
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "{} bytes",
        png.len()
    );
    // what the page read is in the trail under the auditor's name
    let reads: Vec<String> = gateway
        .journal_records()
        .await
        .into_iter()
        .filter(|r| r.event == EventType::AuditLogRead && r.actor == "api:auditor-1")
        .map(|r| r.detail.unwrap_or_default())
        .collect();
    assert!(
        reads.iter().any(|r| r == "audit verify via api"),
        "{reads:?}"
    );
    assert!(
        reads
            .iter()
            .any(|r| r == &format!("audit prove via api tx {tx}")),
        "{reads:?}"
    );
    // the refused sign-in is an invalid access attempt on record
    let refused = gateway
        .journal_records()
        .await
        .into_iter()
        .filter(|r| {
            r.event == EventType::AccessRefused && r.code.as_deref() == Some("TOKEN_INVALID")
        })
        .count();
    assert!(refused >= 1);
}
