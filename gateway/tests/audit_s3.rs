//! The S3 Object Lock store against moto's server (PyPI `moto[server]`, installed by
//! scripts/test), started here on 127.0.0.1. moto speaks the real S3 API to the real AWS SDK,
//! so these tests cover the request path, the checks at start and the faults; moto cannot
//! prove immutability (it lets COMPLIANCE retention be shortened), see docs/audit-format.md.

#![allow(clippy::unwrap_used)]

mod common;

use common::{aws_env, start_moto, start_switch};

use aws_sdk_s3::types::{
    BucketVersioningStatus, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockMode,
    VersioningConfiguration,
};
use paygate_core::audit::{segment_name, AuditEvent, AuditOutcome, EventType};
use paygate_gateway::audit::archive;
use paygate_gateway::audit::worm::{PutOutcome, S3Worm, WormError, WormStore};
use paygate_gateway::audit::{self as audit_log, shipper, AuditLog};
use paygate_gateway::config::{S3WormSettings, Settings};
use paygate_gateway::metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

async fn admin_client(endpoint: &str) -> aws_sdk_s3::Client {
    aws_env();
    let shared = paygate_gateway::aws::defaults()
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build(),
    )
}

fn settings_for(endpoint: &str, bucket: &str) -> S3WormSettings {
    S3WormSettings {
        bucket: bucket.to_owned(),
        prefix: "audit/".to_owned(),
        retention_days: 365,
        region: "us-east-1".to_owned(),
        endpoint_url: endpoint.to_owned(),
        force_path_style: true,
    }
}

async fn locked_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    client
        .create_bucket()
        .bucket(bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_land_with_compliance_retention_and_checksums_and_cannot_be_deleted() {
    let moto = start_moto().await;
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let client = admin_client(&endpoint).await;
    locked_bucket(&client, "audit-locked").await;
    let worm = S3Worm::connect(&settings_for(&endpoint, "audit-locked"))
        .await
        .unwrap();

    let bytes = b"{\"v\":1}\n".to_vec();
    assert_eq!(
        worm.put_once("segments/000000000000.jsonl", &bytes)
            .await
            .unwrap(),
        PutOutcome::Stored
    );
    // a retry after a crash stores nothing new; other bytes under the same key are refused
    assert_eq!(
        worm.put_once("segments/000000000000.jsonl", &bytes)
            .await
            .unwrap(),
        PutOutcome::AlreadyStored
    );
    assert!(matches!(
        worm.put_once("segments/000000000000.jsonl", b"other").await,
        Err(WormError::Conflict { .. })
    ));

    let head = client
        .head_object()
        .bucket("audit-locked")
        .key("audit/segments/000000000000.jsonl")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let now = i64::try_from(paygate_gateway::clock::now_ms() / 1000).unwrap();
    assert!(
        until >= now + 365 * 86_400 - 60,
        "retained until {until}, now {now}"
    );
    use base64::Engine;
    let expected =
        base64::engine::general_purpose::STANDARD.encode(paygate_core::audit::sha256(&bytes));
    assert_eq!(head.checksum_sha256(), Some(expected.as_str()));
    let versions = client
        .list_object_versions()
        .bucket("audit-locked")
        .prefix("audit/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        versions.versions().len(),
        1,
        "one version: the retry stored nothing"
    );

    // deleting the locked version is refused
    let version = head.version_id().unwrap().to_owned();
    let deleted = client
        .delete_object()
        .bucket("audit-locked")
        .key("audit/segments/000000000000.jsonl")
        .version_id(version)
        .send()
        .await;
    assert!(deleted.is_err(), "a locked version must not be deletable");
    assert_eq!(
        worm.get("segments/000000000000.jsonl").await.unwrap(),
        Some(bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_versioning_or_object_lock_is_refused_at_start() {
    let moto = start_moto().await;
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let client = admin_client(&endpoint).await;
    client.create_bucket().bucket("plain").send().await.unwrap();
    let refused = S3Worm::connect(&settings_for(&endpoint, "plain")).await;
    assert!(
        matches!(&refused, Err(WormError::Misconfigured(m)) if m.contains("not versioned")),
        "{:?}",
        refused.err()
    );
    client
        .put_bucket_versioning()
        .bucket("plain")
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let refused = S3Worm::connect(&settings_for(&endpoint, "plain")).await;
    assert!(
        matches!(&refused, Err(WormError::Misconfigured(m)) if m.contains("Object Lock")),
        "{:?}",
        refused.err()
    );
    // a bucket made with Object Lock passes
    locked_bucket(&client, "locked").await;
    client
        .put_object_lock_configuration()
        .bucket("locked")
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(S3Worm::connect(&settings_for(&endpoint, "locked"))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipper_resumes_after_the_endpoint_is_down_with_nothing_lost_or_duplicated() {
    let moto = start_moto().await;
    let switch = start_switch(moto.port).await;
    let direct = format!("http://127.0.0.1:{}", moto.port);
    let via_switch = format!("http://{}", switch.address);
    let client = admin_client(&direct).await;
    locked_bucket(&client, "audit").await;

    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.audit.records_per_segment_max = 2;
    settings.audit.ship_interval_ms = 50;
    settings.audit.ship_retry_delay_max_ms = 300;
    let metrics = Arc::new(Metrics::default());
    let store = paygate_gateway::audit::open_store(&settings, 2)
        .await
        .unwrap();
    let log = AuditLog::open(&settings, store, metrics.clone())
        .await
        .unwrap();
    let worm = S3Worm::connect(&settings_for(&via_switch, "audit"))
        .await
        .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let shipping = tokio::spawn(shipper::run(log.clone(), worm, None::<S3Worm>, stop_rx));

    let event = |i: u64| {
        let mut e = AuditEvent::new(
            paygate_gateway::clock::now_ms(),
            EventType::PaymentDecided,
            "device:pos-1",
            "mqtt:pos-1",
            AuditOutcome::Success,
            "pipeline",
            "account:wallet-pos-1",
        );
        e.tx_id = Some(format!("tx-{i}"));
        e
    };
    for i in 0..6 {
        log.record(event(i)).await.unwrap();
    }
    wait_until(|| log.backlog_bytes() == 0, "the first segments ship").await;

    switch.up.store(false, Ordering::SeqCst);
    for i in 6..12 {
        log.record(event(i)).await.unwrap();
    }
    wait_until(
        || metrics.snapshot().audit_shipping_failures > 0,
        "a failed shipment",
    )
    .await;
    assert!(log.backlog_bytes() > 0, "segments wait in the journal");

    switch.up.store(true, Ordering::SeqCst);
    wait_until(|| log.backlog_bytes() == 0, "the backlog drains").await;
    let _ = stop.send(true);
    shipping.await.unwrap();

    // every segment and checkpoint exactly once, one version each
    let versions = client
        .list_object_versions()
        .bucket("audit")
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = versions
        .versions()
        .iter()
        .map(|v| v.key().unwrap().to_owned())
        .collect();
    keys.sort();
    let before_dedup = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before_dedup, "a key stored twice: {keys:?}");
    // 6 segments of 2 + the shipping failure and recovery events in a 7th and maybe 8th
    assert!(
        keys.contains(&format!("audit/{}", segment_name(5))),
        "{keys:?}"
    );

    // what an auditor fetches from the bucket verifies with the public key alone
    let copy = tempfile::tempdir().unwrap();
    let fetched = S3Worm::connect(&settings_for(&direct, "audit"))
        .await
        .unwrap();
    archive::fetch(&fetched, copy.path()).await.unwrap();
    let key = audit_log::public_jwk_path(&settings.resolve(&settings.audit.signing_key));
    let (key, key_id) = archive::read_public_jwk(&key).unwrap();
    let mut txs = Vec::new();
    archive::verify_archive(copy.path(), key, &key_id, None, false, |at| {
        if let Some(tx) = &at.record.tx_id {
            txs.push(tx.clone());
        }
    })
    .unwrap();
    let expected: Vec<String> = (0..12).map(|i| format!("tx-{i}")).collect();
    // the sealed part holds every event, once, in order (later ones may still be unsealed)
    assert_eq!(txs[..12], expected[..]);
}

async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
