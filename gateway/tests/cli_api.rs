//! The CLI's money, device and key commands as clients of the operator API, run as an operator
//! would: the real `paygate` binary against a served gateway, with tokens from the development
//! issuer. The gateway checks each token's role and second factor and records the change as the
//! token's operator, whatever `$USER` says; a funding above the threshold waits for a second
//! operator; a command retried under its printed key gets the first answer.

#![allow(clippy::unwrap_used)]

mod serve;

use paygate_agent::{Agent, DeviceBundle};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::http::client::ApiClient;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// `paygate <group> --config F <args>` with `$USER` set to someone else.
fn run(config: &Path, group: &str, extra: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paygate"))
        .arg(group)
        .arg("--config")
        .arg(config)
        .args(extra)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("USER", "eve")
        .env_remove("PAYGATE_API_TOKEN")
        .output()
        .unwrap()
}

fn token(config: &Path, args: &[&str]) -> String {
    let out = run(config, "api", &[], &[&["token"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn args(owned: &[String]) -> Vec<&str> {
    owned.iter().map(String::as_str).collect()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refused_with(out: &Output, code: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(code), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_go_through_the_operator_api_as_the_tokens_operator_with_four_eyes_above_the_threshold(
) {
    let prepared = serve::prepare(
        "",
        "[audit]\nrecords_per_segment_max = 4\nseal_check_interval_ms = 50\nship_interval_ms = 50\n",
        1,
    );
    let mut gateway = prepared.serve(&[]);
    serve::wait_listening(prepared.port).await;
    serve::wait_listening(prepared.http_port).await;
    let config = prepared.config.as_path();
    let dir = prepared.dir.path();
    let token_file = |name: &str, args: &[&str]| {
        let path = dir.join(format!("{name}.token"));
        std::fs::write(&path, token(config, args)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let alice = token_file(
        "alice",
        &["--sub", "alice", "--roles", "finance", "--second-factor"],
    );
    let bob = token_file(
        "bob",
        &["--sub", "bob", "--roles", "finance", "--second-factor"],
    );
    let olga = token_file(
        "olga",
        &["--sub", "olga", "--roles", "operator", "--second-factor"],
    );
    let single = token_file("single", &["--sub", "mallory", "--roles", "finance"]);
    let api = format!("https://127.0.0.1:{}", prepared.http_port);
    let as_ = |file: &str| {
        vec![
            "--api".to_owned(),
            api.clone(),
            "--token-file".into(),
            file.into(),
        ]
    };

    // below the threshold: posted at once, as alice
    let alice_args = as_(&alice);
    let small = run(
        config,
        "ledger",
        &args(&alice_args),
        &["fund", "wallet-pos-0", "50.00", "INR"],
    );
    let posted = json_of(&small);
    assert_eq!(posted["state"], "done");
    let key = String::from_utf8_lossy(&small.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("Idempotency-Key: ").map(str::to_owned))
        .expect("the command prints its key");
    // the same command retried under its key: the first answer, no second funding
    let mut retry_args = alice_args.clone();
    retry_args.extend(["--idempotency-key".to_owned(), key]);
    let retried = run(
        config,
        "ledger",
        &args(&retry_args),
        &["fund", "wallet-pos-0", "50.00", "INR"],
    );
    assert_eq!(json_of(&retried), posted);

    // at the threshold: waits; the requester cannot approve; another finance operator does
    let big = json_of(&run(
        config,
        "ledger",
        &args(&alice_args),
        &["fund", "wallet-pos-0", "20000.00", "INR"],
    ));
    assert_eq!(big["state"], "awaiting_approval");
    let id = big["funding_id"].as_str().unwrap().to_owned();
    refused_with(
        &run(
            config,
            "ledger",
            &args(&alice_args),
            &["approve-funding", &id],
        ),
        "APPROVER_IS_REQUESTER",
    );
    refused_with(
        &run(
            config,
            "ledger",
            &args(&as_(&single)),
            &["approve-funding", &id],
        ),
        "SECOND_FACTOR_REQUIRED",
    );
    refused_with(
        &run(
            config,
            "ledger",
            &args(&as_(&olga)),
            &["approve-funding", &id],
        ),
        "SCOPE_MISSING",
    );
    let approved = json_of(&run(
        config,
        "ledger",
        &args(&as_(&bob)),
        &["approve-funding", &id, "--reason", "branch request 42"],
    ));
    assert_eq!(approved["state"], "done");
    assert_eq!(approved["decided_by"], "bob");
    let tx = approved["tx_id"].as_str().unwrap().to_owned();

    // a device suspended through the API cannot pay; resumed, it can
    let bundle = DeviceBundle::load(&prepared.bundle_dir(0)).unwrap();
    let agent = Agent::connect(bundle, prepared.agent_settings(0))
        .await
        .unwrap();
    let merchant = AccountId::parse("m-1").unwrap();
    json_of(&run(
        config,
        "devices",
        &args(&as_(&olga)),
        &["suspend", "pos-0"],
    ));
    // (its session closing at once and its payments refused: http_operator.rs)
    drop(agent);
    json_of(&run(
        config,
        "devices",
        &args(&as_(&olga)),
        &["resume", "pos-0"],
    ));
    let bundle = DeviceBundle::load(&prepared.bundle_dir(0)).unwrap();
    let mut agent = Agent::connect(bundle, prepared.agent_settings(0))
        .await
        .unwrap();
    let paid = agent.pay(&merchant, serve::inr(100)).await.unwrap();
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    // the API-only commands refuse to run without it
    refused_with(&run(config, "devices", &[], &["suspend", "pos-0"]), "--api");
    // and the local bootstrap mode does not write beside a serving gateway
    for command in [
        &["ledger", "fund", "wallet-pos-0", "1.00", "INR"][..],
        &["devices", "enrol", "pos-0"][..],
        &["keys", "rotate"][..],
    ] {
        refused_with(
            &run(config, command[0], &[], &command[1..]),
            "a gateway serves on this data directory",
        );
    }

    // the wallet holds what was posted, once each
    let client = ApiClient::new(&api, &prepared.data.join("pki/ca.cert.pem")).unwrap();
    let backend = token(config, &["--sub", "backend", "--scope", "wallets:read"]);
    let reply = client
        .send(
            "GET",
            "/v1/wallets/wallet-pos-0",
            &[("authorization", &format!("Bearer {backend}"))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.json()["balance_minor"],
        100_000 + 5_000 + 2_000_000 - 100
    );

    // the trail names the operators of the tokens, never $USER
    let auditor = token(config, &["--sub", "auditor-1", "--scope", "audit:read"]);
    let mut actors = Vec::new();
    for _ in 0..100 {
        let reply = client
            .send(
                "GET",
                "/v1/audit/records?wallet=wallet-pos-0",
                &[("authorization", &format!("Bearer {auditor}"))],
                None,
            )
            .await
            .unwrap();
        let text = String::from_utf8(reply.body).unwrap();
        actors = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| record["tx_id"] == tx.as_str() || record["event"] == "admin_action")
            .map(|record| record["actor"].as_str().unwrap_or_default().to_owned())
            .collect();
        if actors.iter().any(|a| a == "operator:bob") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(actors.iter().any(|a| a == "operator:alice"), "{actors:?}");
    assert!(actors.iter().any(|a| a == "operator:bob"), "{actors:?}");
    assert!(actors.iter().all(|a| !a.contains("eve")), "{actors:?}");
    gateway.kill().unwrap();
    gateway.wait().unwrap();
}
