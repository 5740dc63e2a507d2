//! `cargo bench -p paygate-gateway --bench keys`: what envelope encryption costs a transaction.
//!
//! For 1,000 transactions each carrying a payer (encrypt the PAN + its blind index, as the
//! pipeline does), with the local KEK and with AWS KMS (moto's server on 127.0.0.1, started
//! here; `pip install 'moto[server]'`), cache on (defaults) and off (a new data key per value):
//! the time per transaction, as a ratio to the transaction's own SQLite batch commit measured in
//! the same run, and the key provider calls per 1,000 transactions.

#![allow(clippy::unwrap_used)]

use paygate_gateway::config::{KeyProviderKind, KeySettings, Settings};
use paygate_gateway::keys::cipher::FieldCipher;
use paygate_gateway::keys::provider::KeyProvider;
use paygate_gateway::store::Store;
use std::time::{Duration, Instant};

const TRANSACTIONS: usize = 1_000;

async fn run(dir: &std::path::Path, settings: KeySettings) -> (Duration, u64) {
    let app = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    let store = Store::open(&app.database_url(), 2).await.unwrap();
    let provider = KeyProvider::from_settings(&settings, dir).await.unwrap();
    let cipher = FieldCipher::new(provider, store.pool().clone(), settings);
    let start = Instant::now();
    for i in 0..TRANSACTIONS {
        let record = format!("pos-1/key-{i}");
        let pan = format!("411111{:010}", i);
        cipher
            .encrypt("payment_instruments", "card", &record, pan.as_bytes())
            .await
            .unwrap();
        cipher
            .blind_index("payment_instruments", "card", &pan)
            .await
            .unwrap();
    }
    (start.elapsed(), cipher.provider().calls().total())
}

async fn commit_reference(dir: &std::path::Path) -> Duration {
    let app = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    let store = Store::open(&app.database_url(), 2).await.unwrap();
    let start = Instant::now();
    for i in 0..TRANSACTIONS / 64 {
        let mut batch = store.begin_batch().await.unwrap();
        for j in 0..64 {
            sqlx::query(
                "INSERT INTO audit_outbox (log_id, outbox_id, event_json) VALUES ('bench', $1, $2)",
            )
            .bind(i64::try_from(i * 64 + j + 1).unwrap())
            .bind(format!("{{\"bench\":{}}}", i * 64 + j))
            .execute(&mut *batch)
            .await
            .unwrap();
        }
        batch.commit().await.unwrap();
    }
    start.elapsed() * u32::try_from(TRANSACTIONS).unwrap()
        / u32::try_from(TRANSACTIONS / 64 * 64).unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reference = commit_reference(tempfile::tempdir().unwrap().path()).await;
    let per_tx = |d: Duration| d.as_secs_f64() * 1e6 / TRANSACTIONS as f64;
    println!(
        "reference: a transaction's share of a 64-request SQLite batch commit: {:.1} us",
        per_tx(reference)
    );
    let cache_off = |s: KeySettings| KeySettings {
        data_key_uses_max: 1,
        ..s
    };

    // moto for KMS
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = std::process::Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m moto.server");
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shared = paygate_gateway::aws::defaults()
        .endpoint_url(&endpoint)
        .load()
        .await;
    let key_id = aws_sdk_kms::Client::new(&shared)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned();
    let kms = KeySettings {
        provider: KeyProviderKind::AwsKms,
        kms_key_id: key_id,
        kms_endpoint_url: endpoint,
        kms_region: "us-east-1".into(),
        ..KeySettings::default()
    };

    println!("{TRANSACTIONS} transactions, each: encrypt a PAN + compute its blind index");
    for (name, settings) in [
        ("local KEK, cache on ", KeySettings::default()),
        ("local KEK, cache off", cache_off(KeySettings::default())),
        ("AWS KMS,   cache on ", kms.clone()),
        ("AWS KMS,   cache off", cache_off(kms.clone())),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (elapsed, calls) = run(dir.path(), settings).await;
        println!(
            "  {name}: {:8.1} us/tx ({:6.2}x the commit reference), {:5} provider calls per 1,000 tx",
            per_tx(elapsed),
            elapsed.as_secs_f64() / reference.as_secs_f64(),
            calls * 1000 / TRANSACTIONS as u64
        );
    }
    let _ = moto.kill();
    let _ = moto.wait();
}
