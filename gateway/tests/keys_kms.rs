//! The AWS KMS key provider through aws-sdk-kms against moto's server on 127.0.0.1 (started
//! here; scripts/test installs `moto[server]`): GenerateDataKey, Decrypt and ReEncrypt with an
//! encryption context on every call; wrong context and tampered blobs refused; a disabled key,
//! throttling and an unreachable endpoint handled as documented: retried where it may pass,
//! failing closed with nothing written, while cached keys keep serving.

#![allow(clippy::unwrap_used)]

mod common;

use common::{aws_env, start_moto, start_switch, Switch};
use paygate_gateway::config::{KeyProviderKind, KeySettings, Settings};
use paygate_gateway::keys::cipher::FieldCipher;
use paygate_gateway::keys::provider::KeyProvider;
use paygate_gateway::keys::{KeyContext, KeyError};
use paygate_gateway::store::Store;
use std::sync::atomic::Ordering;

async fn kms_admin(endpoint: &str) -> aws_sdk_kms::Client {
    aws_env();
    let shared = paygate_gateway::aws::defaults()
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_kms::Client::new(&shared)
}

async fn new_key(admin: &aws_sdk_kms::Client) -> String {
    admin
        .create_key()
        .description("paygate test KEK")
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_owned()
}

fn kms_settings(endpoint: &str, key_id: &str) -> KeySettings {
    KeySettings {
        provider: KeyProviderKind::AwsKms,
        kms_key_id: key_id.to_owned(),
        kms_region: "us-east-1".into(),
        kms_endpoint_url: endpoint.to_owned(),
        retry_delay_max_ms: 100,
        ..KeySettings::default()
    }
}

async fn data_key_rows(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_generates_unwraps_rotates_and_refuses_wrong_context_and_tampering() {
    let moto = start_moto().await;
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let admin = kms_admin(&endpoint).await;
    let first = new_key(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = KeyProvider::from_settings(&kms_settings(&endpoint, &first), dir.path())
        .await
        .unwrap();

    let phone = KeyContext::new("field-encryption", "wallet_profiles", "phone", "default");
    let (key, wrapped) = provider.generate(&phone).await.unwrap();
    assert_eq!(
        provider.unwrap(&wrapped, &phone).await.unwrap().bytes(),
        key.bytes()
    );
    let name = KeyContext::new("field-encryption", "wallet_profiles", "name", "default");
    assert!(matches!(
        provider.unwrap(&wrapped, &name).await,
        Err(KeyError::Refused(_))
    ));
    let mut tampered = wrapped.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    assert!(matches!(
        provider.unwrap(&tampered, &phone).await,
        Err(KeyError::Refused(_))
    ));

    // rotation with ReEncrypt: the data key never comes back to paygate, and is the same
    let second = new_key(&admin).await;
    let rewrapped = provider
        .rewrap(&wrapped, &phone, Some(&second))
        .await
        .unwrap();
    assert_ne!(rewrapped, wrapped);
    assert_eq!(
        provider.unwrap(&rewrapped, &phone).await.unwrap().bytes(),
        key.bytes()
    );

    // fields: encrypted under the first key, every data key rewrapped to the second, the first
    // disabled: a fresh process still opens every field
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let store = paygate_gateway::audit::open_store(&settings, 2)
        .await
        .unwrap();
    let cipher = FieldCipher::new(
        provider,
        store.pool().clone(),
        kms_settings(&endpoint, &first),
    );
    let sealed = cipher
        .encrypt("wallet_profiles", "phone", "wallet-1", b"+919876543210")
        .await
        .unwrap();
    let index = cipher
        .blind_index("wallet_profiles", "phone", "+919876543210")
        .await
        .unwrap();
    assert_eq!(cipher.rewrap_all(Some(&second)).await.unwrap(), 2);
    admin.disable_key().key_id(&first).send().await.unwrap();
    let after = FieldCipher::new(
        KeyProvider::from_settings(&kms_settings(&endpoint, &second), dir.path())
            .await
            .unwrap(),
        store.pool().clone(),
        kms_settings(&endpoint, &second),
    );
    assert_eq!(
        &after
            .decrypt("wallet_profiles", "phone", "wallet-1", &sealed)
            .await
            .unwrap()[..],
        b"+919876543210"
    );
    assert_eq!(
        after
            .blind_index("wallet_profiles", "phone", "+919876543210")
            .await
            .unwrap(),
        index
    );
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT kek_id FROM data_keys")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(kek_ids, vec![second.clone()]);

    // (moto does not enforce a disabled key's state on crypto calls; the disabled case is
    // injected in the next test)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_an_unreachable_kms_are_retried_then_fail_closed_while_the_cache_serves() {
    let moto = start_moto().await;
    let switch = start_switch(moto.port).await;
    let direct = format!("http://127.0.0.1:{}", moto.port);
    let via_switch = format!("http://{}", switch.address);
    let admin = kms_admin(&direct).await;
    let key_id = new_key(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    let store = paygate_gateway::audit::open_store(&settings, 2)
        .await
        .unwrap();
    // each failure here is followed by a call that must reach KMS: no pause after failures
    // (the pause is shown by a_stalled_kms_holds_up_only_the_request_that_needs_a_new_key)
    let keys = KeySettings {
        unavailable_for_ms: 0,
        ..kms_settings(&via_switch, &key_id)
    };
    let cipher = FieldCipher::new(
        KeyProvider::from_settings(&keys, dir.path()).await.unwrap(),
        store.pool().clone(),
        keys,
    );
    let calls = || cipher.provider().calls();

    // two throttled answers, then KMS answers: the call succeeds after retries
    switch.throttle_next.store(2, Ordering::SeqCst);
    let sealed = cipher
        .encrypt("t", "phone", "r1", b"+919800000001")
        .await
        .unwrap();
    assert_eq!(calls().retries.load(Ordering::Relaxed), 2);

    // throttled past keys.attempts_max (4): fail closed, nothing written; cached keys serve
    switch.throttle_next.store(10, Ordering::SeqCst);
    let rows = data_key_rows(&store).await;
    let refused = cipher.encrypt("t", "vpa", "r1", b"x@y").await;
    assert!(
        matches!(refused, Err(KeyError::Throttled(_))),
        "{refused:?}"
    );
    assert_eq!(
        data_key_rows(&store).await,
        rows,
        "no data key row without a wrapped key"
    );
    assert_eq!(
        refused.unwrap_err().code(),
        paygate_core::ErrorCode::KeyUnavailable
    );
    let cached = cipher
        .encrypt("t", "phone", "r2", b"+919800000002")
        .await
        .unwrap();
    assert_eq!(
        &cipher.decrypt("t", "phone", "r1", &sealed).await.unwrap()[..],
        b"+919800000001"
    );
    switch.throttle_next.store(0, Ordering::SeqCst);

    // the endpoint goes away: retried, then Unreachable; the cache still serves
    switch.up.store(false, Ordering::SeqCst);
    let retries = calls().retries.load(Ordering::Relaxed);
    let unreachable = cipher.encrypt("t", "name", "r1", b"Asha").await;
    assert!(
        matches!(unreachable, Err(KeyError::Unreachable(_))),
        "{unreachable:?}"
    );
    assert!(calls().failures.load(Ordering::Relaxed) >= 2);
    assert_eq!(calls().retries.load(Ordering::Relaxed), retries + 3);
    assert!(cipher
        .encrypt("t", "phone", "r3", b"+919800000003")
        .await
        .is_ok());
    assert_eq!(data_key_rows(&store).await, rows);

    // a disabled or pending-deletion key: refused at once, not retried, nothing written
    switch.up.store(true, Ordering::SeqCst);
    *switch.fail_with.lock().unwrap() = "DisabledException".to_owned();
    switch.throttle_next.store(1, Ordering::SeqCst);
    let retries = calls().retries.load(Ordering::Relaxed);
    let disabled = cipher.encrypt("t", "name", "r1", b"Asha").await;
    assert!(
        matches!(disabled, Err(KeyError::KeyUnusable(_))),
        "{disabled:?}"
    );
    assert_eq!(calls().retries.load(Ordering::Relaxed), retries);
    assert_eq!(data_key_rows(&store).await, rows);

    // back: new keys again
    switch.up.store(true, Ordering::SeqCst);
    let name = cipher.encrypt("t", "name", "r1", b"Asha").await.unwrap();
    assert_eq!(
        &cipher.decrypt("t", "name", "r1", &name).await.unwrap()[..],
        b"Asha"
    );
    assert_eq!(
        &cipher.decrypt("t", "phone", "r2", &cached).await.unwrap()[..],
        b"+919800000002"
    );
}

/// The real gateway on AWS KMS behind `switch` (its key settings as `keys` makes them from
/// the test defaults), merchant `m-1` open, and per id a terminal enrolled, its wallet funded
/// with 100.00 INR and its agent connected.
async fn kms_gateway(
    switch: &Switch,
    key_id: &str,
    keys: impl FnOnce(KeySettings) -> KeySettings,
    terminals: &[&str],
) -> (
    tempfile::TempDir,
    paygate_gateway::gateway::RunningGateway,
    Vec<paygate_agent::Agent>,
) {
    use paygate_agent::{Agent, AgentSettings, DeviceBundle};
    use paygate_core::{AccountId, Currency, DeviceId, Money};
    use paygate_gateway::ledger::AccountKind;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.mqtt.connections_max = 100;
    settings.keys = keys(kms_settings(&format!("http://{}", switch.address), key_id));
    let pki = dir.path().join("pki");
    paygate_gateway::pki::init(
        &pki,
        &["localhost".into(), "127.0.0.1".into()],
        "paygate-receipts-1",
    )
    .unwrap();
    let gateway = paygate_gateway::gateway::start(settings.clone())
        .await
        .unwrap();
    let inr = Currency::parse("INR").unwrap();
    gateway
        .store
        .open_account(
            &AccountId::parse("m-1").unwrap(),
            AccountKind::Merchant,
            inr,
            0,
        )
        .await
        .unwrap();
    let mut agents = Vec::new();
    for id in terminals {
        let device = DeviceId::parse(id).unwrap();
        let wallet = AccountId::parse(&format!("wallet-{id}")).unwrap();
        paygate_gateway::pki::issue_device(
            &pki,
            &device,
            &wallet,
            paygate_core::envelope::SigningAlgorithm::Ed25519,
        )
        .unwrap();
        paygate_gateway::demo::enrol_from_bundle(&gateway.store, &pki, &device, inr)
            .await
            .unwrap();
        paygate_gateway::products::wallet::fund(
            &gateway.store,
            &Default::default(),
            &wallet,
            Money::parse_decimal("100.00", "INR").unwrap(),
            0,
        )
        .await
        .unwrap();
        let bundle_dir = paygate_gateway::pki::device_dir(&pki, &device);
        agents.push(
            Agent::connect(
                DeviceBundle::load(&bundle_dir).unwrap(),
                AgentSettings {
                    host: "127.0.0.1".into(),
                    port: gateway.mqtt_address.unwrap().port(),
                    keep_alive: Duration::from_secs(30),
                    resend_interval: Duration::from_millis(500),
                    receipt_timeout: Duration::from_secs(60),
                    outbox_dir: bundle_dir.join("outbox"),
                },
            )
            .await
            .unwrap(),
        );
    }
    (dir, gateway, agents)
}

/// End to end with the real gateway on AWS KMS (moto behind a switch): a payment naming a card
/// is approved; with KMS unreachable, a payment with a new payer field whose key is not cached
/// is refused with KEY_UNAVAILABLE and nothing is posted, while payments needing no new key
/// still go through; when KMS is back the refused request's retry is approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_fails_closed_without_kms_and_keeps_paying_what_needs_no_new_key() {
    use paygate_core::payer::{Payer, PayerWire};
    use paygate_core::receipt::Outcome;
    use paygate_core::{AccountId, ErrorCode, Money};
    use std::time::Duration;

    let moto = start_moto().await;
    let switch = start_switch(moto.port).await;
    let admin = kms_admin(&format!("http://127.0.0.1:{}", moto.port)).await;
    let key_id = new_key(&admin).await;
    let (_dir, gateway, mut agents) = kms_gateway(&switch, &key_id, |k| k, &["pos-1"]).await;
    let mut agent = agents.pop().unwrap();
    let wallet = AccountId::parse("wallet-pos-1").unwrap();
    let merchant = AccountId::parse("m-1").unwrap();
    let one = || Money::parse_decimal("1.00", "INR").unwrap();
    let card = || {
        Payer::decode(&PayerWire::Card {
            pan: "4111111111111111".into(),
        })
        .unwrap()
    };

    let approved = agent
        .pay_with_payer(&merchant, one(), Some(card()))
        .await
        .unwrap();
    assert_eq!(approved.receipt.outcome, Outcome::Approved);
    assert_eq!(
        approved.receipt.payer.as_deref(),
        Some("card 411111******1111")
    );

    switch.up.store(false, Ordering::SeqCst);
    // no payer: no key needed
    let plain = agent.pay(&merchant, one()).await.unwrap();
    assert_eq!(plain.receipt.outcome, Outcome::Approved);
    // a card again: its data key and index key are cached, so it still goes through
    let cached = agent
        .pay_with_payer(&merchant, one(), Some(card()))
        .await
        .unwrap();
    assert_eq!(cached.receipt.outcome, Outcome::Approved);
    // a UPI payer needs a new data key: refused, nothing posted, and the agent keeps resending
    let balance = gateway.store.balance(&wallet).await.unwrap().unwrap();
    let upi = Payer::decode(&PayerWire::Upi {
        vpa: "asha@okbank".into(),
        credential_block: "c2VjcmV0LXBpbi1ibG9jay0xMjM0NTY=".into(),
    })
    .unwrap();
    let pending = tokio::spawn(async move {
        let receipt = agent.pay_with_payer(&merchant, one(), Some(upi)).await;
        agent.disconnect().await;
        receipt
    });
    for _ in 0..200 {
        if gateway
            .metrics
            .snapshot()
            .refusals_of(ErrorCode::KeyUnavailable)
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gateway
            .metrics
            .snapshot()
            .refusals_of(ErrorCode::KeyUnavailable)
            > 0
    );
    assert!(gateway.metrics.snapshot().key_failures > 0);
    assert_eq!(
        gateway.store.balance(&wallet).await.unwrap().unwrap(),
        balance,
        "nothing posted"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM payment_instruments WHERE kind = 'upi'")
            .fetch_one(gateway.store.pool())
            .await
            .unwrap();
    assert_eq!(rows, 0);

    switch.up.store(true, Ordering::SeqCst);
    let receipt = pending.await.unwrap().unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    assert_eq!(receipt.receipt.payer.as_deref(), Some("upi a**a@okbank"));
    gateway.shutdown();
}

/// KMS stalls (connections accepted, requests never answered, pooled connections too) while
/// one terminal pays with a UPI payer whose data key is not cached and another pays plainly.
/// The plain payments are approved meanwhile: the stalled call holds up only the request that
/// needs the key. That one is refused KEY_UNAVAILABLE once the calls time out, nothing posted,
/// and its resend is approved once KMS answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_kms_holds_up_only_the_request_that_needs_a_new_key() {
    use paygate_core::payer::{Payer, PayerWire};
    use paygate_core::receipt::Outcome;
    use paygate_core::{AccountId, ErrorCode, Money};
    use std::time::{Duration, Instant};

    let moto = start_moto().await;
    let switch = start_switch(moto.port).await;
    let admin = kms_admin(&format!("http://127.0.0.1:{}", moto.port)).await;
    let key_id = new_key(&admin).await;
    let (_dir, gateway, mut agents) = kms_gateway(
        &switch,
        &key_id,
        |k| KeySettings {
            attempt_timeout_ms: 500,
            unavailable_for_ms: 3_000,
            ..k
        },
        &["pos-1", "pos-2"],
    )
    .await;
    let merchant = AccountId::parse("m-1").unwrap();
    let mut plain = agents.pop().unwrap();
    let mut keyed = agents.pop().unwrap();
    let one = || Money::parse_decimal("1.00", "INR").unwrap();
    // KMS answers: a first payment warms the pooled connection
    let warm = plain.pay(&merchant, one()).await.unwrap();
    assert_eq!(warm.receipt.outcome, Outcome::Approved);

    switch.stall.store(true, Ordering::SeqCst);
    let stalled_at = Instant::now();
    let upi = Payer::decode(&PayerWire::Upi {
        vpa: "asha@okbank".into(),
        credential_block: "c2VjcmV0LXBpbi1ibG9jay0xMjM0NTY=".into(),
    })
    .unwrap();
    let pending = {
        let merchant = merchant.clone();
        tokio::spawn(async move {
            let receipt = keyed.pay_with_payer(&merchant, one(), Some(upi)).await;
            keyed.disconnect().await;
            receipt
        })
    };
    // while the keyed request waits on KMS, the other terminal pays five times
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let receipt = plain.pay(&merchant, one()).await.unwrap();
        assert_eq!(receipt.receipt.outcome, Outcome::Approved);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        !pending.is_finished(),
        "the keyed payment is still waiting on KMS"
    );
    // the first keyed attempts time out (3 x 500 ms); after that, for keys.unavailable_for_ms,
    // key operations fail at once instead of stalling the batch again at every resend (which
    // held every payment up for over a minute before)
    assert!(
        slowest < Duration::from_secs(5),
        "a plain payment took {slowest:?} while KMS stalled"
    );
    for _ in 0..600 {
        if gateway
            .metrics
            .snapshot()
            .refusals_of(ErrorCode::KeyUnavailable)
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gateway
            .metrics
            .snapshot()
            .refusals_of(ErrorCode::KeyUnavailable)
            > 0,
        "refused once the stalled calls timed out"
    );
    let refused_after = stalled_at.elapsed();
    assert!(
        !gateway.cipher.provider().available(),
        "in its pause after the failure"
    );
    let upi_rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM payment_instruments WHERE kind = 'upi'")
            .fetch_one(gateway.store.pool())
            .await
            .unwrap();
    assert_eq!(upi_rows, 0, "nothing written for the refused request");

    switch.stall.store(false, Ordering::SeqCst);
    let receipt = pending.await.unwrap().unwrap();
    assert!(gateway.readiness().await.ready());
    assert_eq!(receipt.receipt.outcome, Outcome::Approved, "{receipt:?}");
    assert_eq!(
        gateway.store.balance(&merchant).await.unwrap().unwrap(),
        700
    );
    plain.disconnect().await;
    gateway.shutdown();
    eprintln!("KMS stall: refused after {refused_after:?}; slowest plain payment {slowest:?}");
}
