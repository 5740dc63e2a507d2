//! The leak test: the real `paygate serve` with debug logging, payments carrying a planted PAN
//! and UPI PIN credential block, a step-up answered with a one-time code and a PIN, a wallet
//! profile with a planted name, phone, UPI address and TOTP secret; then every byte the gateway wrote (database and WAL, logs, audit journal and
//! write-once store) is scanned: none of the planted values appears in clear. Positive
//! controls show the scan looks in the right places (masked forms are there, and the
//! encrypted PAN decrypts back).

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, AgentSettings, DeviceBundle};
use paygate_core::payer::{Payer, PayerWire};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::config::Settings;
use paygate_gateway::keys::cipher::FieldCipher;
use paygate_gateway::keys::provider::KeyProvider;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PAN: &str = "4000056655665556";
const BAD_PAN: &str = "4000056655665557";
const PAYER_VPA: &str = "planted.payer@oksbi";
const PIN_BLOCK: &[u8] = b"PLANTED-UPI-PIN-BLOCK-0123456789";
const NAME: &str = "Zyxwvut Plantedname";
const PHONE_DIGITS: &str = "9876501234";
const PROFILE_VPA: &str = "planted.holder@okbank";
/// Long enough that finding it by chance in hex or timestamps is out of the question.
const PIN: &str = "804527193620";

/// Large payments need an 8-digit TOTP code and the PIN: both travel through the gateway.
const STEP_UP: &str = r#"
[identity.totp]
algorithm = "sha1"
digits = 8
step_s = 30
drift_steps = 1

[[identity.rules]]
name = "large"
risk = "high"
require = ["totp", "pin"]
when = { amount_minor_min = 200000 }
"#;

fn paygate_with_input(config: &Path, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "paygate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(config.with_file_name("cli-set-pin.log"), &output.stderr).unwrap();
}

fn paygate(config: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "paygate {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // the commands' own logs are scanned too
    let mut logs = String::from_utf8_lossy(&output.stderr).into_owned();
    logs.push('\n');
    std::fs::write(
        config.with_file_name(format!("cli-{}.log", args.join("-").replace('/', "_"))),
        logs,
    )
    .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_nowhere_in_clear() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("paygate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nenabled = false\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\nconnections_max = 1000\n[audit]\nrecords_per_segment_max = 4\nseal_check_interval_ms = 50\nship_interval_ms = 50\n{STEP_UP}",
            data.display()
        ),
    )
    .unwrap();
    paygate(&config, &["certs", "init"]);
    paygate(&config, &["ledger", "open-merchant", "m-1", "INR"]);
    paygate(&config, &["certs", "issue-device", "pos-0"]);
    paygate(&config, &["devices", "enrol", "pos-0"]);
    paygate(
        &config,
        &["ledger", "fund", "wallet-pos-0", "10000.00", "INR"],
    );
    let printed = paygate(
        &config,
        &[
            "wallets",
            "set-profile",
            "wallet-pos-0",
            "--name",
            NAME,
            "--phone",
            "+91 98765 01234",
            "--vpa",
            PROFILE_VPA,
            "--new-totp",
        ],
    );
    let totp_base32 = printed
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret (base32, shown once): "))
        .unwrap()
        .to_owned();
    let totp_raw = data_encoding::BASE32_NOPAD
        .decode(totp_base32.as_bytes())
        .unwrap();
    assert_eq!(
        paygate(&config, &["wallets", "find", "--phone", "+919876501234"]).trim(),
        "wallet-pos-0"
    );
    paygate_with_input(
        &config,
        &["wallets", "set-pin", "wallet-pos-0"],
        &format!("{PIN}\n"),
    );
    let shown = paygate(&config, &["wallets", "show", "wallet-pos-0"]);
    assert!(shown.contains("phone **********34"), "{shown}");

    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bundle_dir = data.join("pki/devices/pos-0");
    let mut agent = Agent::connect(
        DeviceBundle::load(&bundle_dir).unwrap(),
        AgentSettings {
            host: "127.0.0.1".into(),
            port,
            keep_alive: Duration::from_secs(30),
            resend_interval: Duration::from_secs(2),
            receipt_timeout: Duration::from_secs(20),
            outbox_dir: dir.path().join("agent-outbox"),
        },
    )
    .await
    .unwrap();
    let merchant = AccountId::parse("m-1").unwrap();
    let amount = || paygate_core::Money::parse_decimal("10.00", "INR").unwrap();
    // a large payment: challenged for TOTP and PIN, answered through the agent
    let otps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = otps.clone();
    let secret = totp_raw.clone();
    agent.on_challenge(Box::new(move |prompt| {
        let now = paygate_agent::now_ms() / 1000;
        let code = paygate_core::identity::totp(
            &secret,
            paygate_core::identity::OtpAlgorithm::Sha1,
            8,
            30,
            now,
        );
        seen.lock().unwrap().push(code.clone());
        assert_eq!(prompt.mechanisms, vec!["totp".to_owned(), "pin".to_owned()]);
        Some(vec![("totp".into(), code), ("pin".into(), PIN.into())])
    }));
    let large = agent
        .pay(
            &merchant,
            paygate_core::Money::parse_decimal("2500.00", "INR").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(large.receipt.outcome, Outcome::Approved, "{large:?}");
    let otp = otps.lock().unwrap()[0].clone();
    assert_eq!(otp.len(), 8);
    let card = Payer::decode(&PayerWire::Card { pan: PAN.into() }).unwrap();
    let by_card = agent
        .pay_with_payer(&merchant, amount(), Some(card))
        .await
        .unwrap();
    assert_eq!(by_card.receipt.outcome, Outcome::Approved);
    assert_eq!(
        by_card.receipt.payer.as_deref(),
        Some("card 400005******5556")
    );
    let upi = Payer::decode(&PayerWire::Upi {
        vpa: PAYER_VPA.into(),
        credential_block: base64::engine::general_purpose::STANDARD.encode(PIN_BLOCK),
    })
    .unwrap();
    let by_upi = agent
        .pay_with_payer(&merchant, amount(), Some(upi))
        .await
        .unwrap();
    assert_eq!(by_upi.receipt.outcome, Outcome::Approved);
    assert_eq!(
        by_upi.receipt.payer.as_deref(),
        Some("upi p***********r@oksbi")
    );
    // a PAN failing Luhn is refused with its code; the refusal must not echo it either
    let bad = serde_json::json!({
        "v": 1, "device_id": "pos-0", "idempotency_key": "bad-pan-1", "counter": paygate_agent::now_ms() * 1000,
        "created_at_ms": paygate_agent::now_ms(),
        "op": {"type": "merchant_payment", "merchant_id": "m-1", "amount": {"minor": 100, "currency": "INR"},
               "payer": {"type": "card", "pan": BAD_PAN}}
    });
    let sealed = agent.bundle().signing_key.seal(
        paygate_core::request::REQUEST_CONTENT_TYPE,
        &serde_json::to_vec(&bad).unwrap(),
    );
    agent.publish_raw(sealed).await.unwrap();
    let refused = agent
        .next_reply(Duration::from_secs(10), Some("bad-pan-1"))
        .await
        .unwrap();
    assert_eq!(refused.code(), Some(paygate_core::ErrorCode::PayerInvalid));
    // a PAN sent as a JSON number: serde's message quotes it; the gateway must mask it
    let as_number = bad
        .to_string()
        .replace(&format!("\"{BAD_PAN}\""), PAN)
        .replace("bad-pan-1", "bad-pan-2")
        .replace(
            &format!("\"counter\":{}", bad["counter"]),
            &format!("\"counter\":{}", bad["counter"].as_u64().unwrap() + 1),
        );
    assert!(as_number.contains(&format!("\"pan\":{PAN}")), "{as_number}");
    let sealed = agent.bundle().signing_key.seal(
        paygate_core::request::REQUEST_CONTENT_TYPE,
        as_number.as_bytes(),
    );
    agent.publish_raw(sealed).await.unwrap();
    let refused = agent
        .next_reply(Duration::from_secs(10), None)
        .await
        .unwrap();
    assert_eq!(
        refused.code(),
        Some(paygate_core::ErrorCode::MalformedRequest)
    );
    let message = refused.receipt.message.clone().unwrap();
    assert!(message.contains("400005******5556"), "{message}");
    agent.disconnect().await;

    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    server.wait().unwrap();

    // positive controls: the PAN is stored, encrypted, and decrypts back for its record
    let settings = Settings::load(Some(&config)).unwrap();
    let pool = paygate_gateway::store::Store::open(&settings.database_url(), 2)
        .await
        .unwrap()
        .pool()
        .clone();
    let (ct,): (Vec<u8>,) =
        sqlx::query_as("SELECT value_ct FROM payment_instruments WHERE kind = 'card'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let cipher = FieldCipher::new(
        KeyProvider::from_settings(&settings.keys, &settings.data_dir)
            .await
            .unwrap(),
        pool.clone(),
        settings.keys.clone(),
    );
    let record = format!("pos-0/{}", by_card.receipt.idempotency_key.clone().unwrap());
    assert_eq!(
        &cipher
            .decrypt("payment_instruments", "card", &record, &ct)
            .await
            .unwrap()[..],
        PAN.as_bytes()
    );
    pool.close().await;

    // scan everything the gateway and its commands wrote: database, WAL, journal, write-once
    // store, logs. (The device's own outbox holds its signed requests by design: it is the
    // terminal's storage, not the gateway's, and is left out; so are the key files.)
    let mut files = Vec::new();
    files_under(&data, &mut files);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            files.push(path);
        }
    }
    let scanned: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| !p.starts_with(data.join("pki")) && !p.starts_with(data.join("keys")))
        .collect();
    assert!(scanned.iter().any(|p| p.ends_with("paygate.db")));
    assert!(scanned
        .iter()
        .any(|p| p.to_string_lossy().contains("audit/worm/segments")));
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("PAN", PAN.as_bytes().to_vec()),
        ("refused PAN", BAD_PAN.as_bytes().to_vec()),
        ("payer VPA", PAYER_VPA.as_bytes().to_vec()),
        ("UPI PIN block", PIN_BLOCK.to_vec()),
        (
            "UPI PIN block, base64",
            base64::engine::general_purpose::STANDARD
                .encode(PIN_BLOCK)
                .into_bytes(),
        ),
        ("holder name", NAME.as_bytes().to_vec()),
        ("phone", PHONE_DIGITS.as_bytes().to_vec()),
        ("holder VPA", PROFILE_VPA.as_bytes().to_vec()),
        ("TOTP secret, base32", totp_base32.as_bytes().to_vec()),
        ("TOTP secret, raw", totp_raw.clone()),
        ("one-time code (TOTP answer)", otp.as_bytes().to_vec()),
        ("PIN", PIN.as_bytes().to_vec()),
    ];
    let mut masked_seen = false;
    for path in &scanned {
        // (SQLite removes its -wal and -shm files when the last connection closes)
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        for (what, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == &needle[..]),
                "{what} found in clear in {}",
                path.display()
            );
        }
        masked_seen |= bytes.windows(16).any(|w| w == b"400005******5556");
    }
    assert!(
        masked_seen,
        "the masked PAN is in the receipts and audit records"
    );
    let serve_log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        serve_log.matches("DEBUG").count() > 20,
        "the gateway logged at debug level while the secrets went through"
    );
}
