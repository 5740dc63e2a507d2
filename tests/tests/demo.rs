//! `paygate demo` on embedded defaults: a fresh data directory, a PKI made on first run,
//! terminals paying over real mutual-TLS MQTT, a summary, a balanced ledger. Run twice on the
//! same directory, as a user re-running the README command would.

#![allow(clippy::unwrap_used)]

use paygate_gateway::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pays_declines_by_reason_and_balances_twice_on_one_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let summary = run(DemoOptions {
            data_dir: dir.path().join("paygate-data"),
            terminals: 2,
            payments_per_terminal: 14,
            keep_serving: false,
        })
        .await
        .unwrap();
        assert_eq!(summary.sent, 28, "round {round}");
        assert_eq!(summary.failed, 0, "every payment got a receipt");
        assert!(summary.approved > 0);
        // every 7th payment goes to a merchant that does not exist
        assert_eq!(summary.declined.get("UNKNOWN_MERCHANT"), Some(&4));
        let declined: u64 = summary.declined.values().sum();
        assert_eq!(
            summary.approved + declined + summary.rejected.values().sum::<u64>(),
            28
        );
        assert!(summary.ledger_balanced);
        assert!(summary.latency_p50_ms > 0.0 && summary.latency_p50_ms <= summary.latency_p99_ms);
        let text = summary.to_string();
        assert!(text.contains("ledger     balanced"), "{text}");
        let console = summary.console.as_deref().unwrap();
        assert!(console.starts_with("https://127.0.0.1:") && console.ends_with("/console/"));
        assert!(text.contains(&format!("console    {console}")), "{text}");
    }
}
