//! A client nobody here wrote (Python paho-mqtt + pycose, tests/python/pay_with_paho.py) pays
//! through the gateway from the documented protocol alone, and gets the same results as our
//! agent: approved and signed, the same receipt on a retry, duplicate keys refused.
//! Needs `pip install -r tests/python/requirements.txt` (done by .ci/run).

#![allow(clippy::unwrap_used)]

use paygate_tests::{TestGateway, MERCHANT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_paho_and_pycose_pay_from_the_protocol_document() {
    let gateway = TestGateway::start().await;
    gateway.device("py-1", "50.00").await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/pay_with_paho.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--bundle", gateway.bundle_dir("py-1").to_str().unwrap()])
        .args(["--port", &gateway.port().to_string()])
        .args(["--merchant", MERCHANT, "--amount-minor", "1234"])
        .output()
        .await
        .expect("python3 runs (install tests/python/requirements.txt)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(seen["first"]["outcome"], "approved", "{seen}");
    assert_eq!(seen["first"]["amount"]["minor"], 1234);
    assert_eq!(seen["same_bytes_on_retry"], true);
    assert_eq!(seen["duplicate_keys"]["outcome"], "rejected");
    assert_eq!(seen["duplicate_keys"]["code"], "MALFORMED_REQUEST");
    assert_eq!(gateway.balance("wallet-py-1").await, 5_000 - 1_234);
    assert_eq!(gateway.balance(MERCHANT).await, 1_234);
    assert_eq!(
        gateway
            .store()
            .count_transfers("merchant_payment")
            .await
            .unwrap(),
        1
    );
    gateway.assert_ledger_balanced().await;
}
