//! Every bad input the foundation issue lists, one test each: refused with a stable code, and
//! nothing changes (ledger fingerprint equal before and after; the gateway keeps serving).

#![allow(clippy::unwrap_used)]

use paygate_core::envelope::SigningKey;
use paygate_core::receipt::Outcome;
use paygate_core::request::REQUEST_CONTENT_TYPE;
use paygate_core::ErrorCode;
use paygate_tests::{tls_client_config, RawClient, TestGateway, MERCHANT};
use rumqttc::mqttbytes::v4::{Packet, Publish, Subscribe, SubscribeFilter, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A valid v1 payload as text, so tests can bend it byte by byte.
fn payload(device: &str, key: &str, counter: u64, amount_json: &str) -> String {
    format!(
        r#"{{"v":1,"device_id":"{device}","idempotency_key":"{key}","counter":{counter},"created_at_ms":{now},"op":{{"type":"merchant_payment","merchant_id":"{MERCHANT}","amount":{amount_json}}}}}"#,
        now = paygate_agent::now_ms()
    )
}

const GOOD_AMOUNT: &str = r#"{"minor":1000,"currency":"INR"}"#;

/// A pos-1 request for `amount_json`, signed by the device's key.
fn with_amount(amount_json: &'static str) -> impl FnOnce(&SigningKey) -> Vec<u8> {
    move |key| {
        key.seal(
            REQUEST_CONTENT_TYPE,
            payload("pos-1", "k", 1, amount_json).as_bytes(),
        )
    }
}

/// Publishes `envelope` from pos-1 and returns the code of the rejection or decline it gets.
async fn refusal_code(gateway: &TestGateway, envelope: Vec<u8>) -> ErrorCode {
    let mut agent = gateway.agent("pos-1").await;
    agent.publish_raw(envelope).await.unwrap();
    let reply = agent.next_reply(WAIT, None).await.expect("a signed reply");
    agent.disconnect().await;
    assert_ne!(reply.receipt.outcome, Outcome::Approved, "{reply:?}");
    reply.code().expect("refusals carry a code")
}

/// Runs one payload-level refusal case on a fresh gateway and checks nothing changed.
async fn assert_refused(make: impl FnOnce(&SigningKey) -> Vec<u8>, expected: ErrorCode) {
    let gateway = TestGateway::start().await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let before = gateway.ledger_fingerprint().await;
    let code = refusal_code(&gateway, make(&bundle.signing_key)).await;
    assert_eq!(code, expected);
    assert_eq!(
        gateway.ledger_fingerprint().await,
        before,
        "a refusal must change nothing"
    );
    // and the device can still pay afterwards
    let mut agent = gateway.agent("pos-1").await;
    let ok = agent
        .pay(
            &paygate_core::AccountId::parse(MERCHANT).unwrap(),
            paygate_tests::inr("1.00"),
        )
        .await
        .unwrap();
    assert_eq!(ok.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature() {
    assert_refused(
        |key| {
            let mut sealed = key.seal(
                REQUEST_CONTENT_TYPE,
                payload("pos-1", "k", 1, GOOD_AMOUNT).as_bytes(),
            );
            let last = sealed.len() - 1;
            sealed[last] ^= 0x80; // inside the signature
            sealed
        },
        ErrorCode::SignatureInvalid,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_refused() {
    assert_refused(
        |key| {
            let mut header = coset::HeaderBuilder::new()
                .key_id(b"pos-1".to_vec())
                .content_type(REQUEST_CONTENT_TYPE.to_owned())
                .build();
            header.alg = Some(coset::RegisteredLabelWithPrivate::Text("none".into()));
            key.seal_with_protected_header(header, payload("pos-1", "k", 1, GOOD_AMOUNT).as_bytes())
        },
        ErrorCode::AlgorithmNotAllowed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_other_than_the_enrolled_one_is_refused() {
    assert_refused(
        |_| {
            // pos-1 is enrolled with Ed25519; this is a valid ES256 signature under a P-256 key
            let pkcs8 = SigningKey::generate_pkcs8(paygate_core::envelope::SigningAlgorithm::Es256)
                .unwrap();
            let es256 = SigningKey::from_pkcs8(
                paygate_core::envelope::SigningAlgorithm::Es256,
                "pos-1",
                &pkcs8,
            )
            .unwrap();
            es256.seal(
                REQUEST_CONTENT_TYPE,
                payload("pos-1", "k", 1, GOOD_AMOUNT).as_bytes(),
            )
        },
        ErrorCode::AlgorithmNotAllowed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_signed_by_device_a_sent_by_device_b_is_refused() {
    let gateway = TestGateway::start().await;
    let device_a = gateway.device("pos-a", "100.00").await;
    gateway.device("pos-1", "100.00").await;
    let before = gateway.ledger_fingerprint().await;
    // A's key, A's key id, A's device id in the payload; published on pos-1's connection
    let signed_by_a = device_a.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        payload("pos-a", "k", 1, GOOD_AMOUNT).as_bytes(),
    );
    assert_eq!(
        refusal_code(&gateway, signed_by_a).await,
        ErrorCode::KeyIdMismatch
    );
    assert_eq!(gateway.ledger_fingerprint().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_naming_another_device_is_refused() {
    assert_refused(
        |key| {
            key.seal(
                REQUEST_CONTENT_TYPE,
                payload("pos-a", "k", 1, GOOD_AMOUNT).as_bytes(),
            )
        },
        ErrorCode::DeviceMismatch,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys() {
    assert_refused(
        |key| {
            let text = payload(
                "pos-1",
                "k",
                1,
                r#"{"minor":100,"minor":900000,"currency":"INR"}"#,
            );
            key.seal(REQUEST_CONTENT_TYPE, text.as_bytes())
        },
        ErrorCode::MalformedRequest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_as_a_float() {
    assert_refused(
        with_amount(r#"{"minor":12.5,"currency":"INR"}"#),
        ErrorCode::MalformedRequest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_as_a_string() {
    assert_refused(
        with_amount(r#"{"minor":"1250","currency":"INR"}"#),
        ErrorCode::MalformedRequest,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_amount() {
    assert_refused(
        with_amount(r#"{"minor":-1000,"currency":"INR"}"#),
        ErrorCode::AmountInvalid,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_amount() {
    assert_refused(
        with_amount(r#"{"minor":0,"currency":"INR"}"#),
        ErrorCode::AmountInvalid,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_currency() {
    assert_refused(
        with_amount(r#"{"minor":1000,"currency":"XYZ"}"#),
        ErrorCode::CurrencyUnknown,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_currency_that_does_not_match_the_wallet() {
    assert_refused(
        with_amount(r#"{"minor":1000,"currency":"USD"}"#),
        ErrorCode::CurrencyMismatch,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_request() {
    assert_refused(
        |key| {
            let text = payload("pos-1", "k", 1, GOOD_AMOUNT);
            let start = text.find("\"created_at_ms\":").unwrap() + "\"created_at_ms\":".len();
            let end = start + text[start..].find(',').unwrap();
            // 2001-09-09: far older than pipeline.request_age_max_ms
            let stale = format!("{}{}{}", &text[..start], 1_000_000_000_000u64, &text[end..]);
            key.seal(REQUEST_CONTENT_TYPE, stale.as_bytes())
        },
        ErrorCode::RequestExpired,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_an_envelope() {
    assert_refused(
        |_| b"{\"not\":\"cose\"}".to_vec(),
        ErrorCode::MalformedEnvelope,
    )
    .await;
}

// ---- the device front: TLS and the MQTT guard ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate() {
    let gateway = TestGateway::start().await;
    let result = async {
        let mut client =
            RawClient::connect_tls(gateway.port(), gateway.tls_client_config(None)).await?;
        client.mqtt_connect("pos-1").await
    }
    .await;
    let error = result.expect_err("a client without a certificate must not get a CONNACK");
    assert!(
        format!("{error:#}").to_lowercase().contains("certificate"),
        "{error:#}"
    );
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::TlsClientCertRequired, 1)
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca() {
    let gateway = TestGateway::start().await;
    // another PKI entirely: its device certificate chains to a CA the gateway does not trust
    let rogue = tempfile::tempdir().unwrap();
    paygate_gateway::pki::init(rogue.path(), &["localhost".into()], "rogue").unwrap();
    let device = paygate_core::DeviceId::parse("pos-1").unwrap();
    paygate_gateway::pki::issue_device(
        rogue.path(),
        &device,
        &paygate_core::AccountId::parse("wallet-pos-1").unwrap(),
        paygate_core::envelope::SigningAlgorithm::Ed25519,
    )
    .unwrap();
    let config = tls_client_config(
        &gateway.pki_dir().join("ca.cert.pem"),
        Some(&paygate_gateway::pki::device_dir(rogue.path(), &device)),
    );
    let result = async {
        let mut client = RawClient::connect_tls(gateway.port(), config).await?;
        client.mqtt_connect("pos-1").await
    }
    .await;
    // the rogue CA has the same name as the real one, so the issuer is found by name and the
    // signature fails (alert decrypt_error) rather than the issuer being unknown
    let error = result.expect_err("an untrusted certificate must not get a CONNACK");
    assert!(format!("{error:#}").contains("alert"), "{error:#}");
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::TlsCertUntrusted, 1)
            .await,
        1
    );
}

/// A certificate from the gateway's own CA, naming an enrolled device, but without the
/// client-auth extended key usage (webpki takes a certificate without any EKU for every
/// purpose): not a device certificate, refused at CONNECT with TLS_CERT_UNTRUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_client_auth_usage_is_not_a_device() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let before = gateway.ledger_fingerprint().await;
    let bundle = gateway.bundle_dir("pos-1");
    let (ca_cert, ca_key) = paygate_gateway::pki::load_ca(&gateway.pki_dir()).unwrap();
    let device_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(bundle.join("device.key.pem")).unwrap())
            .unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pos-1");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "urn:paygate:device:pos-1".try_into().unwrap(),
    )];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    assert!(params.extended_key_usages.is_empty());
    let cert = params.signed_by(&device_key, &ca_cert, &ca_key).unwrap();
    let forged = tempfile::tempdir().unwrap();
    for file in ["ca.cert.pem", "device.key.pem"] {
        std::fs::copy(bundle.join(file), forged.path().join(file)).unwrap();
    }
    std::fs::write(forged.path().join("device.cert.pem"), cert.pem()).unwrap();

    let mut client = RawClient::connect_tls(
        gateway.port(),
        gateway.tls_client_config(Some(forged.path())),
    )
    .await
    .unwrap();
    let connack = client.mqtt_connect("pos-1").await;
    assert!(
        !matches!(connack, Ok(0)),
        "a certificate without client auth got CONNACK {connack:?}"
    );
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::TlsCertUntrusted, 1)
            .await,
        1
    );
    assert_eq!(gateway.ledger_fingerprint().await, before);

    // the real certificate of the same device still connects
    let mut real = connected(&gateway, "pos-1").await;
    real.send(Packet::Disconnect).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    paygate_gateway::pki::revoke_device(
        &gateway.pki_dir(),
        &paygate_core::DeviceId::parse("pos-1").unwrap(),
    )
    .unwrap();
    let gateway = gateway.restart().await; // CRLs are read at start
    let bundle = gateway.bundle_dir("pos-1");
    let result = async {
        let mut client =
            RawClient::connect_tls(gateway.port(), gateway.tls_client_config(Some(&bundle)))
                .await?;
        client.mqtt_connect("pos-1").await
    }
    .await;
    let error = result.expect_err("a revoked certificate must not get a CONNACK");
    assert!(format!("{error:#}").contains("Revoked"), "{error:#}");
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::TlsCertRevoked, 1)
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_another_devices_client_id() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    gateway.device("pos-2", "10.00").await;
    let bundle = gateway.bundle_dir("pos-1");
    let mut client =
        RawClient::connect_tls(gateway.port(), gateway.tls_client_config(Some(&bundle)))
            .await
            .unwrap();
    let code = client.mqtt_connect("pos-2").await.unwrap();
    assert_eq!(code, 2, "CONNACK 0x02 identifier rejected");
    let (_, closed) = client.until_closed(Duration::from_secs(3)).await;
    assert!(closed);
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::ClientIdMismatch, 1)
            .await,
        1
    );
}

async fn connected(gateway: &TestGateway, id: &str) -> RawClient {
    let bundle = gateway.bundle_dir(id);
    let mut client =
        RawClient::connect_tls(gateway.port(), gateway.tls_client_config(Some(&bundle)))
            .await
            .unwrap();
    assert_eq!(client.mqtt_connect(id).await.unwrap(), 0);
    client
}

fn notice_code(gateway: &TestGateway, device: &str, packets: &[Packet]) -> Option<ErrorCode> {
    let bundle = paygate_agent::DeviceBundle::load(&gateway.bundle_dir(device)).unwrap();
    packets.iter().find_map(|packet| match packet {
        Packet::Publish(publish)
            if publish.topic == format!("paygate/v1/devices/{device}/replies") =>
        {
            bundle
                .verify_receipt(&publish.payload)
                .ok()
                .and_then(|r| r.code())
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_another_devices_topic() {
    let gateway = TestGateway::start().await;
    let bundle_2 = gateway.device("pos-2", "10.00").await;
    gateway.device("pos-1", "10.00").await;
    let mut victim = gateway.agent("pos-2").await;
    let before = gateway.ledger_fingerprint().await;

    let mut attacker = connected(&gateway, "pos-1").await;
    // even a perfectly signed pos-2 request may not be published by pos-1
    let envelope = bundle_2.signing_key.seal(
        REQUEST_CONTENT_TYPE,
        payload("pos-2", "k", 1, GOOD_AMOUNT).as_bytes(),
    );
    let mut publish = Publish::new(
        "paygate/v1/devices/pos-2/requests",
        QoS::AtLeastOnce,
        envelope,
    );
    publish.pkid = 1;
    attacker.send(Packet::Publish(publish)).await.unwrap();
    let (packets, closed) = attacker.until_closed(Duration::from_secs(5)).await;

    assert!(closed, "the guard closes the connection");
    assert_eq!(
        notice_code(&gateway, "pos-1", &packets),
        Some(ErrorCode::TopicNotAuthorized)
    );
    assert!(
        victim
            .next_reply(Duration::from_millis(500), None)
            .await
            .is_none(),
        "nothing reached pos-2's pipeline"
    );
    assert_eq!(gateway.ledger_fingerprint().await, before);
    victim.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_everything_or_to_another_devices_replies() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let mut client = connected(&gateway, "pos-1").await;
    for (pkid, filter) in [
        (1u16, "#"),
        (2, "paygate/v1/devices/pos-2/replies"),
        (3, "$share/g/paygate/v1/devices/+/replies"),
        (4, "$SYS/#"),
    ] {
        client
            .send(Packet::Subscribe(Subscribe {
                pkid,
                filters: vec![SubscribeFilter::new(filter.into(), QoS::AtLeastOnce)],
            }))
            .await
            .unwrap();
        let suback = loop {
            match client.recv(WAIT).await.unwrap() {
                Packet::SubAck(ack) => break ack,
                Packet::Publish(_) => continue, // the signed notice that accompanies it
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(suback.pkid, pkid);
        assert_eq!(
            suback.return_codes,
            vec![SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // the connection survives and its own reply topic can still be subscribed
    client
        .send(Packet::Subscribe(Subscribe {
            pkid: 9,
            filters: vec![SubscribeFilter::new(
                "paygate/v1/devices/pos-1/replies".into(),
                QoS::AtLeastOnce,
            )],
        }))
        .await
        .unwrap();
    let granted = loop {
        match client.recv(WAIT).await.unwrap() {
            Packet::SubAck(ack) if ack.pkid == 9 => break ack,
            _ => continue,
        }
    };
    assert_eq!(
        granted.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::TopicNotAuthorized, 4)
            .await,
        4
    );
}

/// A device that keeps asking for topics it may not have is answered eight times, then closed
/// with the code: each refusal is an audit record, and a loop of them must not fill the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_repeating_refused_subscriptions_is_closed() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let mut client = connected(&gateway, "pos-1").await;
    for pkid in 1..=50u16 {
        let sent = client
            .send(Packet::Subscribe(Subscribe {
                pkid,
                filters: vec![SubscribeFilter::new("#".into(), QoS::AtLeastOnce)],
            }))
            .await;
        if sent.is_err() {
            break; // closed while we were still sending
        }
    }
    let (packets, closed) = client.until_closed(WAIT).await;
    assert!(closed, "the connection stayed open");
    let subacks = packets
        .iter()
        .filter(|p| matches!(p, Packet::SubAck(_)))
        .count();
    assert_eq!(subacks, 8, "{packets:?}");
    // eight answered refusals and the closing one
    assert_eq!(
        gateway
            .wait_for_refusals(ErrorCode::TopicNotAuthorized, 9)
            .await,
        9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_packet() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let before = gateway.ledger_fingerprint().await;
    let mut client = connected(&gateway, "pos-1").await;
    let huge = vec![0u8; gateway.settings.mqtt.packet_bytes_max + 1];
    let mut publish = Publish::new("paygate/v1/devices/pos-1/requests", QoS::AtLeastOnce, huge);
    publish.pkid = 1;
    client.send(Packet::Publish(publish)).await.unwrap_or(());
    let (packets, closed) = client.until_closed(Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(
        notice_code(&gateway, "pos-1", &packets),
        Some(ErrorCode::PacketTooLarge)
    );
    assert_eq!(gateway.ledger_fingerprint().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_packets_and_mqtt5_are_refused_before_rumqttd() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let bundle = gateway.bundle_dir("pos-1");

    // a CONNACK with a body as the first packet (rumqttd 0.20 hits unreachable!() on it)
    let mut client =
        RawClient::connect_tls(gateway.port(), gateway.tls_client_config(Some(&bundle)))
            .await
            .unwrap();
    client.send_bytes(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    let (packets, closed) = client.until_closed(Duration::from_secs(5)).await;
    assert!(closed && packets.is_empty());

    // an MQTT 5 CONNECT gets CONNACK 0x01 (unacceptable protocol version)
    let mut client =
        RawClient::connect_tls(gateway.port(), gateway.tls_client_config(Some(&bundle)))
            .await
            .unwrap();
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("pos-1");
    connect.protocol = rumqttc::mqttbytes::Protocol::V5;
    client.send(Packet::Connect(connect)).await.unwrap();
    match client.recv(WAIT).await.unwrap() {
        Packet::ConnAck(ack) => assert_eq!(ack.code as u8, 1),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    // an UNSUBACK after CONNECT
    let mut client = connected(&gateway, "pos-1").await;
    client.send_bytes(&[0xB0, 0x02, 0x00, 0x01]).await.unwrap();
    let (packets, closed) = client.until_closed(Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(
        notice_code(&gateway, "pos-1", &packets),
        Some(ErrorCode::ProtocolViolation)
    );

    // the broker behind the guard is still alive for everyone
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(
            &paygate_core::AccountId::parse(MERCHANT).unwrap(),
            paygate_tests::inr("1.00"),
        )
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
}

/// Frames that decode but are not in their canonical form (a reserved flag or bit set, header
/// flags the type does not allow) are refused: the guard forwards a device's bytes, so bytes
/// its decoder would have ignored must not reach rumqttd's decoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_not_in_canonical_form_are_refused_before_rumqttd() {
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let bundle = gateway.bundle_dir("pos-1");
    let before = gateway.ledger_fingerprint().await;

    // CONNECT with the reserved flag (bit 0 of the connect flags): closed, no CONNACK
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("pos-1");
    connect.keep_alive = 30;
    let mut bytes = bytes::BytesMut::new();
    Packet::Connect(connect).write(&mut bytes, 1 << 20).unwrap();
    bytes[9] |= 0x01;
    let mut client =
        RawClient::connect_tls(gateway.port(), gateway.tls_client_config(Some(&bundle)))
            .await
            .unwrap();
    client.send_bytes(&bytes).await.unwrap();
    let (packets, closed) = client.until_closed(Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        !packets
            .iter()
            .any(|p| matches!(p, Packet::ConnAck(ack) if ack.code as u8 == 0)),
        "CONNECT with the reserved flag was accepted: {packets:?}"
    );

    // after CONNECT: SUBSCRIBE to its own replies with QoS byte 0x41, SUBSCRIBE with header
    // flags 0000, PINGREQ with a flag: each closes the connection with PROTOCOL_VIOLATION
    let replies = "paygate/v1/devices/pos-1/replies";
    let mut subscribe = bytes::BytesMut::new();
    Packet::Subscribe(rumqttc::mqttbytes::v4::Subscribe::new(
        replies,
        QoS::AtLeastOnce,
    ))
    .write(&mut subscribe, 1 << 20)
    .unwrap();
    let mut qos_0x41 = subscribe.to_vec();
    *qos_0x41.last_mut().unwrap() = 0x41;
    let mut header_flags = subscribe.to_vec();
    header_flags[0] = 0x80;
    for (case, frame) in [
        ("QoS 0x41", qos_0x41),
        ("SUBSCRIBE header flags", header_flags),
        ("PINGREQ flag", vec![0xC1, 0x00]),
    ] {
        let mut client = connected(&gateway, "pos-1").await;
        client.send_bytes(&frame).await.unwrap();
        let (packets, closed) = client.until_closed(Duration::from_secs(5)).await;
        assert!(closed, "{case}: connection left open");
        assert!(
            !packets
                .iter()
                .any(|p| matches!(p, Packet::SubAck(_) | Packet::PingResp)),
            "{case}: answered by the broker: {packets:?}"
        );
        assert_eq!(
            notice_code(&gateway, "pos-1", &packets),
            Some(ErrorCode::ProtocolViolation),
            "{case}"
        );
    }
    assert_eq!(gateway.ledger_fingerprint().await, before);

    // the canonical forms still work, and the device still pays
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(
            &paygate_core::AccountId::parse(MERCHANT).unwrap(),
            paygate_tests::inr("1.00"),
        )
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    agent.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_port_behind_the_guard_refuses_direct_connections() {
    // whoever finds rumqttd's loopback port still needs the in-memory secret
    let gateway = TestGateway::start().await;
    gateway.device("pos-1", "10.00").await;
    let mut victim = gateway.agent("pos-1").await;
    let broker = paygate_tests::broker_address_of(&gateway);
    let mut options = rumqttc::MqttOptions::new("pos-1", broker.ip().to_string(), broker.port());
    options.set_credentials("pos-1", "guess");
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 8);
    let outcome = tokio::time::timeout(WAIT, events.poll()).await.unwrap();
    assert!(
        outcome.is_err(),
        "a direct connection without the secret must be refused: {outcome:?}"
    );
    // and the real device kept its session
    let receipt = victim
        .pay(
            &paygate_core::AccountId::parse(MERCHANT).unwrap(),
            paygate_tests::inr("1.00"),
        )
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    victim.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_connection_does_not_stop_another_device() {
    // a long handshake timeout, so the idle sockets are certainly still pending while the
    // device connects and pays (rumqttd 0.20 would block its accept loop on the first one)
    let gateway =
        TestGateway::start_with(|settings| settings.mqtt.handshake_timeout_ms = 60_000).await;
    gateway.device("pos-1", "10.00").await;
    let idle = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port()))
        .await
        .unwrap();
    let idle_too = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port()))
        .await
        .unwrap();
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(
            &paygate_core::AccountId::parse(MERCHANT).unwrap(),
            paygate_tests::inr("1.00"),
        )
        .await
        .unwrap();
    assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    for socket in [&idle, &idle_too] {
        let mut probe = [0u8; 1];
        let still_open = matches!(socket.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(
            still_open,
            "the idle socket was still waiting for its handshake when the device paid"
        );
    }
    agent.disconnect().await;
}

/// A PUBACK for a packet id the broker never sent goes no further than the guard: rumqttd
/// 0.20 drops the device's broker link on one, and the device would wait for receipts that
/// never come. The acknowledgements it did ask for still reach rumqttd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_puback_does_not_cut_the_devices_link() {
    use rumqttc::mqttbytes::v4::PubAck;
    let gateway = TestGateway::start().await;
    let bundle = gateway.device("pos-1", "100.00").await;
    let mut client = connected(&gateway, "pos-1").await;
    client
        .send(Packet::Subscribe(Subscribe::new(
            "paygate/v1/devices/pos-1/replies",
            QoS::AtLeastOnce,
        )))
        .await
        .unwrap();
    assert!(matches!(
        client.recv(WAIT).await.unwrap(),
        Packet::SubAck(ack) if ack.return_codes == [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    ));
    for (n, key) in [(1u16, "k-1"), (2, "k-2")] {
        // an acknowledgement of nothing, then a payment on the same connection
        client
            .send(Packet::PubAck(PubAck::new(700 + n)))
            .await
            .unwrap();
        let envelope = bundle.signing_key.seal(
            REQUEST_CONTENT_TYPE,
            payload("pos-1", key, u64::from(n), GOOD_AMOUNT).as_bytes(),
        );
        let mut publish = Publish::new(
            "paygate/v1/devices/pos-1/requests",
            QoS::AtLeastOnce,
            envelope,
        );
        publish.pkid = n;
        client.send(Packet::Publish(publish)).await.unwrap();
        let receipt = loop {
            match client.recv(WAIT).await {
                Ok(Packet::Publish(reply)) => break reply,
                Ok(_) => continue,
                Err(error) => panic!("payment {n}: no receipt on the same connection: {error}"),
            }
        };
        let verified = paygate_agent::DeviceBundle::load(&gateway.bundle_dir("pos-1"))
            .unwrap()
            .verify_receipt(&receipt.payload)
            .unwrap();
        assert_eq!(verified.receipt.outcome, Outcome::Approved, "{verified:?}");
        // the acknowledgement the broker asked for
        client
            .send(Packet::PubAck(PubAck::new(receipt.pkid)))
            .await
            .unwrap();
    }
    assert_eq!(gateway.balance(MERCHANT).await, 2_000);
}
