//! The wallet backend's aliases and points history through real HTTPS: one phone or VPA names
//! one wallet (a P2P transfer to it reaches that wallet and no other), lookups are audited,
//! refusals change nothing, and points lots page through without gaps or repeats.

#![allow(clippy::unwrap_used)]

use paygate_core::audit::EventType;
use paygate_core::receipt::Outcome;
use paygate_core::request::{Operation, Party};
use paygate_core::AccountId;
use paygate_tests::{inr, TestGateway, MERCHANT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_names_one_wallet_and_a_p2p_transfer_to_it_reaches_that_wallet() {
    let gateway = TestGateway::start().await;
    let http = gateway.http();
    let backend = gateway.token("backend", "wallets:read wallets:write");
    // the sender pays from its device; two other wallets hold profiles
    gateway.device("pos-1", "100.00").await;
    for id in ["w-asha", "w-ravi"] {
        let opened = http
            .write(
                "POST",
                "/v1/wallets",
                &backend,
                &format!("open-{id}"),
                &json!({"wallet_id": id, "currency": "INR", "kyc_tier": "full"}),
            )
            .await;
        assert_eq!(opened.status, 201);
    }
    let asha = json!({"name": "Asha Rao", "phone": "+91 98000-00001", "vpa": "Asha@Bank"});
    let linked = http
        .write("PUT", "/v1/wallets/w-asha/profile", &backend, "p-1", &asha)
        .await;
    assert_eq!(
        linked.status,
        200,
        "{}",
        String::from_utf8_lossy(&linked.body)
    );
    let shown = linked.json();
    assert_eq!(shown["wallet_id"], "w-asha");
    // shown masked: never the phone or VPA in clear
    let text = shown.to_string();
    assert!(
        !text.contains("9800000001") && !text.contains("asha@bank"),
        "{text}"
    );
    let again = http
        .write("PUT", "/v1/wallets/w-asha/profile", &backend, "p-1", &asha)
        .await;
    assert_eq!(again.body, linked.body);

    let lookup = |body: serde_json::Value| {
        let http = &http;
        let backend = &backend;
        async move {
            http.send(
                "POST",
                "/v1/aliases/lookup",
                &[("authorization", &format!("Bearer {backend}"))],
                Some(body.to_string().as_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let found = lookup(json!({"phone": "+919800000001"})).await;
    assert_eq!(found.json(), json!({"wallet_id": "w-asha"}));
    let found = lookup(json!({"vpa": "asha@bank"})).await;
    assert_eq!(found.json(), json!({"wallet_id": "w-asha"}));

    // another wallet cannot take either alias; nothing changes
    for (key, body, code) in [
        (
            "p-2",
            json!({"name": "Ravi", "phone": "+919800000001", "vpa": "ravi@bank"}),
            "ALIAS_TAKEN",
        ),
        (
            "p-3",
            json!({"name": "Ravi", "phone": "+919800000002", "vpa": "ASHA@bank"}),
            "ALIAS_TAKEN",
        ),
        (
            "p-4",
            json!({"name": "Ravi", "phone": "12", "vpa": "ravi@bank"}),
            "PAYER_INVALID",
        ),
        (
            "p-5",
            json!({"name": "Ravi", "phone": "+919800000002", "vpa": "ravі@bank"}),
            "PAYER_INVALID",
        ),
    ] {
        let refused = http
            .write("PUT", "/v1/wallets/w-ravi/profile", &backend, key, &body)
            .await;
        assert_eq!(
            refused.code(),
            code,
            "{key}: {}",
            String::from_utf8_lossy(&refused.body)
        );
    }
    assert_eq!(
        lookup(json!({"phone": "+919800000001"})).await.json()["wallet_id"],
        "w-asha"
    );
    assert_eq!(
        lookup(json!({"phone": "+919800000002"})).await.code(),
        "UNKNOWN_WALLET"
    );
    for body in [
        json!({}),
        json!({"phone": "+919800000001", "vpa": "asha@bank"}),
    ] {
        assert_eq!(lookup(body).await.code(), "MALFORMED_REQUEST");
    }
    let holder = gateway.token("w-asha", "wallet");
    let as_holder = http
        .send(
            "POST",
            "/v1/aliases/lookup",
            &[("authorization", &format!("Bearer {holder}"))],
            Some(br#"{"phone":"+919800000001"}"#),
        )
        .await
        .unwrap();
    assert_eq!(as_holder.code(), "SCOPE_MISSING");

    // a P2P transfer to the phone reaches the wallet it is linked to
    let mut agent = gateway.agent("pos-1").await;
    let sent = agent
        .submit(Operation::P2pTransfer {
            to: Party::Phone("+919800000001".into()),
            amount: inr("12.00"),
        })
        .await
        .unwrap();
    assert_eq!(
        sent.receipt.outcome,
        Outcome::Approved,
        "{:?}",
        sent.receipt
    );
    assert_eq!(gateway.balance("w-asha").await, 1_200);
    assert_eq!(gateway.balance("w-ravi").await, 0);

    // relinked to a new phone, the old one is free for another wallet
    let moved = http
        .write(
            "PUT",
            "/v1/wallets/w-asha/profile",
            &backend,
            "p-6",
            &json!({"name": "Asha Rao", "phone": "+919800000009", "vpa": "asha@bank"}),
        )
        .await;
    assert_eq!(moved.status, 200);
    let taken = http
        .write(
            "PUT",
            "/v1/wallets/w-ravi/profile",
            &backend,
            "p-7",
            &json!({"name": "Ravi", "phone": "+919800000001", "vpa": "ravi@bank"}),
        )
        .await;
    assert_eq!(
        taken.status,
        200,
        "{}",
        String::from_utf8_lossy(&taken.body)
    );
    assert_eq!(
        lookup(json!({"phone": "+919800000001"})).await.json()["wallet_id"],
        "w-ravi"
    );
    let records = gateway.journal_records().await;
    let lookups = records
        .iter()
        .filter(|r| r.event == EventType::DataAccessed && r.actor == "api:backend")
        .count();
    // every lookup above, found or not; the malformed and the holder's were refused first
    assert_eq!(lookups, 5);
    let lookups: Vec<_> = records
        .iter()
        .filter(|r| r.event == EventType::DataAccessed && r.actor == "api:backend")
        .collect();
    assert_eq!(lookups[0].wallet_id.as_deref(), Some("w-asha"));
    let missed = lookups
        .iter()
        .find(|r| r.code.as_deref() == Some("UNKNOWN_WALLET"))
        .expect("the lookup that found nothing is recorded as such");
    assert_eq!(missed.outcome, paygate_core::audit::AuditOutcome::Failure);
    // one spelling per number: a national or 00 form is refused, never read as another number
    for (n, other) in [
        "9800000001",
        "09800000001",
        "00919800000001",
        "+9+19800000001",
    ]
    .into_iter()
    .enumerate()
    {
        let refused = http
            .write(
                "PUT",
                "/v1/wallets/w-ravi/profile",
                &backend,
                &format!("spelling-{n}"),
                &json!({"name": "Ravi", "phone": other, "vpa": "ravi2@bank"}),
            )
            .await;
        assert_eq!(refused.code(), "PAYER_INVALID", "{other}");
    }
    assert!(records
        .iter()
        .all(|r| !format!("{r:?}").contains("9800000001")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_lots_page_newest_first_without_gaps_or_repeats_to_the_holder_only() {
    let gateway = TestGateway::start().await;
    let http = gateway.http();
    let wallet = "wallet-pos-1";
    gateway.device("pos-1", "500.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let merchant = AccountId::parse(MERCHANT).unwrap();
    let mut paid = Vec::new();
    for n in 1..=5 {
        let receipt = agent
            .pay(&merchant, inr(&format!("{n}0.00")))
            .await
            .unwrap();
        assert_eq!(receipt.receipt.outcome, Outcome::Approved);
        paid.push(receipt.receipt.tx_id.unwrap());
    }
    let holder = gateway.token(wallet, "wallet");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/v1/wallets/{wallet}/points/lots?limit=2"),
            Some(c) => format!("/v1/wallets/{wallet}/points/lots?limit=2&cursor={c}"),
        };
        let page = http.get(&path, &holder).await;
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        let body = page.json();
        for lot in body["lots"].as_array().unwrap() {
            assert_eq!(lot["state"], "pending");
            assert!(lot["points_earned"].as_i64().unwrap() > 0);
            seen.push((
                lot["earned_at"].as_str().unwrap().to_owned(),
                lot["payment_tx_id"].as_str().unwrap().to_owned(),
            ));
        }
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    // newest first (RFC 3339 in UTC sorts as time), each lot once, every payment's lot
    assert!(seen.windows(2).all(|w| w[0].0 >= w[1].0), "{seen:?}");
    let mut lots: Vec<String> = seen.into_iter().map(|(_, tx)| tx).collect();
    let mut expected: Vec<String> = paid.iter().map(|t| t.to_string()).collect();
    lots.sort();
    expected.sort();
    assert_eq!(lots, expected, "each lot once");
    // another holder, a bad cursor, a bad limit
    gateway.device("pos-2", "1.00").await;
    let other = gateway.token("wallet-pos-2", "wallet");
    let denied = http
        .get(&format!("/v1/wallets/{wallet}/points/lots"), &other)
        .await;
    assert_eq!(denied.code(), "ACCESS_DENIED");
    for query in ["?cursor=nope", "?limit=0", "?limit=1000", "?colour=red"] {
        let refused = http
            .get(&format!("/v1/wallets/{wallet}/points/lots{query}"), &holder)
            .await;
        assert_eq!(refused.code(), "MALFORMED_REQUEST", "{query}");
    }
}
