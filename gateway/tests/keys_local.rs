//! Envelope encryption with the local key-encryption key: wrap, unwrap, rotate, wrong context
//! and tampered blobs refused; field encryption bound to its field and record; blind indexes;
//! the data-key cache; and Wycheproof's AES-GCM vectors against the AEAD paygate uses (ring's
//! AES-256-GCM, 96-bit nonces, 128-bit tags).

#![allow(clippy::unwrap_used)]

use paygate_gateway::config::{KeySettings, Settings};
use paygate_gateway::keys::cipher::FieldCipher;
use paygate_gateway::keys::provider::{KeyProvider, LocalKeyring};
use paygate_gateway::keys::{KeyContext, KeyError};
use paygate_gateway::ledger::AccountKind;
use paygate_gateway::profiles::{self, WalletProfile};
use paygate_gateway::store::Store;
use std::sync::atomic::Ordering;

async fn cipher_in(dir: &std::path::Path, settings: KeySettings) -> (Store, FieldCipher) {
    let app = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    let store = Store::open(&app.database_url(), 2).await.unwrap();
    let provider = KeyProvider::from_settings(&settings, dir).await.unwrap();
    let cipher = FieldCipher::new(provider, store.pool().clone(), settings);
    (store, cipher)
}

#[tokio::test]
async fn the_local_kek_wraps_unwraps_rotates_and_refuses_wrong_context_or_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = LocalKeyring::open(&dir.path().join("keys")).unwrap();
    let kek_file = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&kek_file).unwrap().permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the KEK file is readable by its owner only"
    );

    let provider = KeyProvider::Local(keyring);
    let phone = KeyContext::new("field-encryption", "wallet_profiles", "phone", "t1");
    let (key, wrapped) = provider.generate(&phone).await.unwrap();
    assert!(
        !wrapped.windows(32).any(|w| w == key.bytes()),
        "the wrap hides the key"
    );
    let again = provider.unwrap(&wrapped, &phone).await.unwrap();
    assert_eq!(again.bytes(), key.bytes());
    assert_eq!(format!("{again:?}"), "DataKey(***)");

    // another field's context, another tenant, a flipped byte: refused
    let name = KeyContext::new("field-encryption", "wallet_profiles", "name", "t1");
    assert!(matches!(
        provider.unwrap(&wrapped, &name).await,
        Err(KeyError::Refused(_))
    ));
    let other_tenant = KeyContext::new("field-encryption", "wallet_profiles", "phone", "t2");
    assert!(matches!(
        provider.unwrap(&wrapped, &other_tenant).await,
        Err(KeyError::Refused(_))
    ));
    let mut tampered = wrapped.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(matches!(
        provider.unwrap(&tampered, &phone).await,
        Err(KeyError::Refused(_))
    ));
    assert!(matches!(
        provider.unwrap(b"garbage", &phone).await,
        Err(KeyError::Refused(_))
    ));

    // rotation: a new active KEK; the old wrap still opens, the rewrap opens to the same key
    let KeyProvider::Local(keyring) = &provider else {
        unreachable!()
    };
    let old_id = keyring.active_id();
    let new_id = keyring.rotate().unwrap();
    assert_ne!(old_id, new_id);
    assert_eq!(
        provider.unwrap(&wrapped, &phone).await.unwrap().bytes(),
        key.bytes()
    );
    let rewrapped = provider.rewrap(&wrapped, &phone, None).await.unwrap();
    assert_ne!(rewrapped, wrapped);
    assert!(String::from_utf8_lossy(&rewrapped).contains(&new_id));
    assert_eq!(
        provider.unwrap(&rewrapped, &phone).await.unwrap().bytes(),
        key.bytes()
    );
}

#[tokio::test]
async fn fields_are_bound_to_their_field_and_record_and_found_by_blind_index() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cipher) = cipher_in(dir.path(), KeySettings::default()).await;
    let sealed = cipher
        .encrypt("wallet_profiles", "phone", "wallet-1", b"+919876543210")
        .await
        .unwrap();
    assert!(!sealed.windows(13).any(|w| w == b"+919876543210"));
    let plain = cipher
        .decrypt("wallet_profiles", "phone", "wallet-1", &sealed)
        .await
        .unwrap();
    assert_eq!(&plain[..], b"+919876543210");
    // moved to another record or another field: refused
    assert!(matches!(
        cipher
            .decrypt("wallet_profiles", "phone", "wallet-2", &sealed)
            .await,
        Err(KeyError::Refused(_))
    ));
    assert!(matches!(
        cipher
            .decrypt("wallet_profiles", "name", "wallet-1", &sealed)
            .await,
        Err(KeyError::Refused(_))
    ));
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x40;
    assert!(cipher
        .decrypt("wallet_profiles", "phone", "wallet-1", &tampered)
        .await
        .is_err());

    // profiles: stored encrypted, found by phone or VPA, shown masked
    for wallet in ["wallet-a", "wallet-b"] {
        store
            .open_account(
                &paygate_core::AccountId::parse(wallet).unwrap(),
                AccountKind::Wallet,
                paygate_core::Currency::parse("INR").unwrap(),
                0,
            )
            .await
            .unwrap();
    }
    let a = paygate_core::AccountId::parse("wallet-a").unwrap();
    profiles::save(
        &cipher,
        store.pool(),
        &a,
        &WalletProfile {
            name: "Ramesh Kumar".into(),
            phone: "+91 98765 43210".into(),
            vpa: "Ramesh.K@okbank".into(),
        },
        Some(b"12345678901234567890"),
    )
    .await
    .unwrap();
    assert_eq!(
        profiles::find(&cipher, store.pool(), Some("+919876543210"), None)
            .await
            .unwrap(),
        Some("wallet-a".to_owned())
    );
    assert_eq!(
        profiles::find(&cipher, store.pool(), None, Some("ramesh.k@OKBANK"))
            .await
            .unwrap(),
        Some("wallet-a".to_owned())
    );
    assert_eq!(
        profiles::find(&cipher, store.pool(), Some("+919876543211"), None)
            .await
            .unwrap(),
        None
    );
    let shown = profiles::show(&cipher, store.pool(), &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.phone, "**********10");
    assert_eq!(shown.vpa, "r******k@okbank");
    assert_eq!(shown.name, "R***");
    assert!(shown.has_totp_secret);
    assert_eq!(
        &profiles::totp_secret(&cipher, store.pool(), &a)
            .await
            .unwrap()
            .unwrap()[..],
        b"12345678901234567890"
    );
    // look-alike and invisible characters in a VPA are refused, nothing stored
    for bad in [
        "rames\u{200b}h@okbank",
        "rаmesh@okbank",
        "ramesh@okbаnk",
        "no-at-sign",
    ] {
        let b = paygate_core::AccountId::parse("wallet-b").unwrap();
        let result = profiles::save(
            &cipher,
            store.pool(),
            &b,
            &WalletProfile {
                name: "B".into(),
                phone: "+919800000000".into(),
                vpa: bad.into(),
            },
            None,
        )
        .await;
        assert!(
            matches!(
                result,
                Err(profiles::ProfileError::Invalid { field: "vpa", .. })
            ),
            "{bad:?}"
        );
        assert!(profiles::show(&cipher, store.pool(), &b)
            .await
            .unwrap()
            .is_none());
    }
}

#[tokio::test]
async fn the_cache_makes_provider_calls_rare_and_respects_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let settings = KeySettings {
        data_key_uses_max: 250,
        ..KeySettings::default()
    };
    let (_store, cipher) = cipher_in(dir.path(), settings).await;
    let mut sealed = Vec::new();
    for i in 0..1_000 {
        let record = format!("r-{i}");
        sealed.push((
            record.clone(),
            cipher.encrypt("t", "f", &record, b"value").await.unwrap(),
        ));
    }
    let calls = cipher.provider().calls();
    assert_eq!(
        calls.generate.load(Ordering::Relaxed),
        4,
        "one data key per 250 uses"
    );
    for (record, blob) in &sealed {
        cipher.decrypt("t", "f", record, blob).await.unwrap();
    }
    assert_eq!(
        calls.unwrap.load(Ordering::Relaxed),
        0,
        "decryption keys came from the cache"
    );

    // a cold cipher (a restart) unwraps each data key once, then serves from the cache
    let (_store, cold) = cipher_in(dir.path(), KeySettings::default()).await;
    for (record, blob) in &sealed {
        cold.decrypt("t", "f", record, blob).await.unwrap();
    }
    assert_eq!(cold.provider().calls().unwrap.load(Ordering::Relaxed), 4);
    // a one-entry cache evicts: alternate between two data keys and every decrypt unwraps
    let tiny = KeySettings {
        cache_entries_max: 1,
        ..KeySettings::default()
    };
    let (_store, small) = cipher_in(dir.path(), tiny).await;
    for (record, blob) in [&sealed[0], &sealed[999], &sealed[0], &sealed[999]] {
        small.decrypt("t", "f", record, blob).await.unwrap();
    }
    assert_eq!(small.provider().calls().unwrap.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn rotation_rewraps_every_data_key_and_old_fields_keep_decrypting() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, cipher) = cipher_in(dir.path(), KeySettings::default()).await;
    let sealed = cipher
        .encrypt("t", "f", "r", b"before rotation")
        .await
        .unwrap();
    cipher
        .blind_index("t", "phone", "+911234567890")
        .await
        .unwrap();
    let KeyProvider::Local(keyring) = cipher.provider() else {
        unreachable!()
    };
    keyring.rotate().unwrap();
    assert_eq!(cipher.rewrap_all(None).await.unwrap(), 2);
    // a fresh process with the new KEK active opens the old field and computes the same index
    let (_store, after) = cipher_in(dir.path(), KeySettings::default()).await;
    assert_eq!(
        &after.decrypt("t", "f", "r", &sealed).await.unwrap()[..],
        b"before rotation"
    );
    assert_eq!(
        after
            .blind_index("t", "phone", "+911234567890")
            .await
            .unwrap(),
        cipher
            .blind_index("t", "phone", "+911234567890")
            .await
            .unwrap()
    );
}

/// Wycheproof aes_gcm_test.json: every vector with the key, nonce and tag sizes ring's
/// AES-GCM takes (128/256-bit keys, 96-bit nonces, 128-bit tags) must behave as labelled;
/// the others are skipped and counted.
#[test]
fn wycheproof_aes_gcm_vectors_pass_against_ring() {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
    use wycheproof::aead::{TestName, TestSet};
    use wycheproof::TestResult;
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let (mut checked, mut skipped, mut checked_256) = (0, 0, 0);
    for group in &set.test_groups {
        let algorithm = match group.key_size {
            128 => &AES_128_GCM,
            256 => &AES_256_GCM,
            _ => {
                skipped += group.tests.len();
                continue;
            }
        };
        if group.nonce_size != 96 || group.tag_size != 128 {
            skipped += group.tests.len();
            continue;
        }
        for test in &group.tests {
            let key = LessSafeKey::new(UnboundKey::new(algorithm, &test.key).unwrap());
            let nonce: [u8; 12] = test.nonce.as_ref().try_into().unwrap();
            let mut sealed = test.ct.to_vec();
            sealed.extend_from_slice(&test.tag);
            let opened = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&test.aad[..]),
                    &mut sealed,
                )
                .map(|p| p.to_vec());
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(opened.as_deref(), Ok(&test.pt[..]), "tcId {}", test.tc_id);
                    let mut again = test.pt.to_vec();
                    key.seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&test.aad[..]),
                        &mut again,
                    )
                    .unwrap();
                    let mut expected = test.ct.to_vec();
                    expected.extend_from_slice(&test.tag);
                    assert_eq!(again, expected, "tcId {}", test.tc_id);
                }
                TestResult::Invalid => assert!(opened.is_err(), "tcId {} opened", test.tc_id),
            }
            checked += 1;
            if group.key_size == 256 {
                checked_256 += 1;
            }
        }
    }
    assert!(
        checked_256 > 50,
        "AES-256-GCM vectors checked: {checked_256}"
    );
    eprintln!("wycheproof aes_gcm: {checked} checked ({checked_256} AES-256), {skipped} skipped (sizes ring does not offer)");
}
