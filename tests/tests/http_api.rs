//! The HTTP API through real HTTPS on 127.0.0.1, as the wallet backend, a wallet holder's app,
//! an auditor and an attacker with only a socket would use it: every refusal has its stable
//! code, and changes nothing.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use paygate_core::audit::EventType;
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::config::Secret;
use paygate_gateway::http::dev_issuer::{self, TokenAsk};
use paygate_tests::{fresh_postgres_database, inr, Db, TestGateway, MERCHANT};
use serde_json::json;
use std::time::Duration;

async fn gateway(db: Db) -> TestGateway {
    let url = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(fresh_postgres_database().await),
    };
    TestGateway::start_with(|s| {
        if let Some(url) = url {
            s.database.url = Secret::new(url);
        }
        s.http.jwt.jwks_reload_interval_ms = 0;
        // small segments shipped often, so the auditor's reads see recent records
        s.audit.records_per_segment_max = 4;
        s.audit.seal_check_interval_ms = 50;
        s.audit.ship_interval_ms = 50;
    })
    .await
}

/// What a refusal must leave as it was: wallets, postings, kept answers, balances.
async fn fingerprint(gateway: &TestGateway) -> String {
    let pool = gateway.store().pool();
    let mut out = gateway.ledger_fingerprint().await;
    for table in ["accounts", "postings", "http_idempotency"] {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        out.push_str(&format!(" {table}={count}"));
    }
    out
}

fn sign_with(gateway: &TestGateway, ask: TokenAsk<'_>, now_s: u64) -> String {
    let pkcs8 = std::fs::read(gateway.pki_dir().join(dev_issuer::KEY_FILE)).unwrap();
    dev_issuer::sign(&pkcs8, dev_issuer::KEY_ID, &ask, now_s).unwrap()
}

fn now_s() -> u64 {
    paygate_gateway::clock::now_ms() / 1_000
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn run_token_refusals(db: Db) {
    let gateway = gateway(db).await;
    let http = gateway.http();
    let jwt = gateway.settings.http.jwt.clone();
    let ask = |subject: &'static str| TokenAsk {
        issuer: "paygate-dev-issuer",
        audience: "paygate",
        subject,
        scope: "wallets:read wallets:write",
        lifetime_s: 600,
        ..TokenAsk::default()
    };
    assert_eq!(jwt.issuer, "paygate-dev-issuer");
    let good = gateway.token("backend", "wallets:read wallets:write");
    let claims = json!({"iss": jwt.issuer, "aud": jwt.audience, "sub": "backend",
        "scope": "wallets:read wallets:write", "iat": now_s(), "exp": now_s() + 600});
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"dev-issuer-1"}"#),
        b64(claims.to_string().as_bytes())
    );
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("dev-issuer-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"a guessed secret"),
    )
    .unwrap();
    let other_key = paygate_core::envelope::SigningKey::generate_pkcs8(
        paygate_core::envelope::SigningAlgorithm::Ed25519,
    )
    .unwrap();
    let unknown_kid = dev_issuer::sign(&other_key, "rotated-2", &ask("backend"), now_s()).unwrap();
    let wrong_key_known_kid =
        dev_issuer::sign(&other_key, dev_issuer::KEY_ID, &ask("backend"), now_s()).unwrap();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "TOKEN_MISSING"),
        (
            "not a bearer",
            Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".into()),
            "TOKEN_INVALID",
        ),
        ("garbage", Some("Bearer not.a.jwt".into()), "TOKEN_INVALID"),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign_with(&gateway, ask("backend"), now_s() - 3_600)
            )),
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                sign_with(&gateway, ask("backend"), now_s() + 3_600)
            )),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "wrong issuer",
            Some(format!(
                "Bearer {}",
                sign_with(
                    &gateway,
                    TokenAsk {
                        issuer: "someone-else",
                        ..ask("backend")
                    },
                    now_s()
                )
            )),
            "TOKEN_INVALID",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                sign_with(
                    &gateway,
                    TokenAsk {
                        audience: "another-api",
                        ..ask("backend")
                    },
                    now_s()
                )
            )),
            "TOKEN_INVALID",
        ),
        (
            "too long lived",
            Some(format!(
                "Bearer {}",
                sign_with(
                    &gateway,
                    TokenAsk {
                        lifetime_s: 86_400,
                        ..ask("backend")
                    },
                    now_s()
                )
            )),
            "TOKEN_INVALID",
        ),
        (
            "alg none",
            Some(format!("Bearer {alg_none}")),
            "TOKEN_INVALID",
        ),
        (
            "HS256 off the allow-list",
            Some(format!("Bearer {hmac}")),
            "TOKEN_INVALID",
        ),
        (
            "kid not in the JWKS",
            Some(format!("Bearer {unknown_kid}")),
            "TOKEN_INVALID",
        ),
        (
            "signed by another key under a known kid",
            Some(format!("Bearer {wrong_key_known_kid}")),
            "TOKEN_INVALID",
        ),
    ];
    let before = fingerprint(&gateway).await;
    for (what, authorization, code) in &cases {
        let mut headers = vec![("idempotency-key", "k-1")];
        if let Some(value) = authorization {
            headers.push(("authorization", value.as_str()));
        }
        let body = json!({"wallet_id": "w-new", "currency": "INR", "kyc_tier": "min"}).to_string();
        let answer = http
            .send("POST", "/v1/wallets", &headers, Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.code(), *code, "{what}");
        assert!(answer.json()["error"]["request_id"].is_string(), "{what}");
        let read = http
            .send("GET", "/v1/wallets/w-new", &headers[1..], None)
            .await
            .unwrap();
        assert_eq!(read.code(), *code, "{what} (read)");
    }
    assert_eq!(
        fingerprint(&gateway).await,
        before,
        "a refused token changed something"
    );
    // each refusal is an invalid access attempt in the audit trail (PCI DSS 10.2.1.4)
    let refused: Vec<_> = gateway
        .journal_records()
        .await
        .into_iter()
        .filter(|r| {
            r.event == EventType::AccessRefused && r.resource.starts_with("http:/v1/wallets")
        })
        .collect();
    assert_eq!(
        refused.len(),
        2 * cases.len(),
        "one record per refused request"
    );
    for (n, (what, _, code)) in cases.iter().enumerate() {
        assert_eq!(refused[2 * n].code.as_deref(), Some(*code), "{what}");
        assert!(
            refused[2 * n].origin.starts_with("https:127.0.0.1:"),
            "{what}"
        );
    }

    // the good token works; then the issuer rotates: a new key under a new kid is accepted
    // once the JWKS file holds it, without a restart
    let opened = http
        .write(
            "POST",
            "/v1/wallets",
            &good,
            "k-1",
            &json!({"wallet_id": "w-new", "currency": "INR", "kyc_tier": "min"}),
        )
        .await;
    assert_eq!(
        opened.status,
        201,
        "{}",
        String::from_utf8_lossy(&opened.body)
    );
    let rotated = paygate_core::envelope::SigningKey::from_pkcs8(
        paygate_core::envelope::SigningAlgorithm::Ed25519,
        "rotated-2",
        &other_key,
    )
    .unwrap();
    let old_pkcs8 = std::fs::read(gateway.pki_dir().join(dev_issuer::KEY_FILE)).unwrap();
    let old = paygate_core::envelope::SigningKey::from_pkcs8(
        paygate_core::envelope::SigningAlgorithm::Ed25519,
        dev_issuer::KEY_ID,
        &old_pkcs8,
    )
    .unwrap();
    std::fs::write(
        gateway.pki_dir().join(dev_issuer::JWKS_FILE),
        dev_issuer::jwks_of(&[&old, &rotated]),
    )
    .unwrap();
    let read = http.get("/v1/wallets/w-new", &unknown_kid).await;
    assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
    assert_eq!(read.json()["kyc_tier"], "min");
}

/// One refused write: what it shows, its headers, its body, the status and the code it must get.
type Refusal<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_code_audited_and_changes_nothing_sqlite() {
    run_token_refusals(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_code_audited_and_changes_nothing_postgres() {
    run_token_refusals(Db::Postgres).await;
}

async fn run_writes(db: Db) {
    let gateway = gateway(db).await;
    let http = gateway.http();
    let backend = gateway.token("backend", "wallets:read wallets:write");
    let open = json!({"wallet_id": "w-1", "currency": "INR", "kyc_tier": "min"});
    let first = http
        .write("POST", "/v1/wallets", &backend, "open-w-1", &open)
        .await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(
        first.json(),
        json!({"wallet_id": "w-1", "currency": "INR", "kyc_tier": "min", "active": true, "balance_minor": 0})
    );
    // a retry gets the first answer, byte for byte, and changes nothing
    let before = fingerprint(&gateway).await;
    let again = http
        .write("POST", "/v1/wallets", &backend, "open-w-1", &open)
        .await;
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(fingerprint(&gateway).await, before);

    let refusals: Vec<Refusal> = {
        let bearer = format!("Bearer {backend}");
        let auditor = format!("Bearer {}", gateway.token("auditor-1", "audit:read"));
        let with = |key: &str, bearer: &str| {
            vec![
                ("authorization", bearer.to_owned()),
                ("idempotency-key", key.to_owned()),
            ]
        };
        vec![
            (
                "same key, another body",
                with("open-w-1", &bearer),
                br#"{"wallet_id":"w-2","currency":"INR","kyc_tier":"min"}"#.to_vec(),
                409,
                "IDEMPOTENCY_CONFLICT",
            ),
            (
                "no idempotency key",
                vec![("authorization", bearer.clone())],
                br#"{"wallet_id":"w-3","currency":"INR","kyc_tier":"min"}"#.to_vec(),
                400,
                "IDEMPOTENCY_KEY_MISSING",
            ),
            (
                "a key with a space",
                with("a key", &bearer),
                br#"{"wallet_id":"w-3","currency":"INR","kyc_tier":"min"}"#.to_vec(),
                400,
                "IDEMPOTENCY_KEY_MISSING",
            ),
            (
                "invalid JSON",
                with("k-json", &bearer),
                b"{\"wallet_id\": ".to_vec(),
                400,
                "MALFORMED_REQUEST",
            ),
            (
                "unknown field",
                with("k-field", &bearer),
                br#"{"wallet_id":"w-3","currency":"INR","kyc_tier":"min","balance_minor":100000}"#
                    .to_vec(),
                400,
                "MALFORMED_REQUEST",
            ),
            (
                "duplicate key",
                with("k-dup", &bearer),
                br#"{"wallet_id":"w-3","wallet_id":"w-4","currency":"INR","kyc_tier":"min"}"#
                    .to_vec(),
                400,
                "MALFORMED_REQUEST",
            ),
            (
                "wrong type",
                with("k-type", &bearer),
                br#"{"wallet_id":3,"currency":"INR","kyc_tier":"min"}"#.to_vec(),
                400,
                "MALFORMED_REQUEST",
            ),
            (
                "oversized body",
                with("k-big", &bearer),
                format!(
                    r#"{{"wallet_id":"{}","currency":"INR","kyc_tier":"min"}}"#,
                    "w".repeat(70_000)
                )
                .into_bytes(),
                413,
                "BODY_TOO_LARGE",
            ),
            (
                "unknown tier",
                with("k-tier", &bearer),
                br#"{"wallet_id":"w-3","currency":"INR","kyc_tier":"gold"}"#.to_vec(),
                400,
                "MALFORMED_REQUEST",
            ),
            (
                "unknown currency",
                with("k-cur", &bearer),
                br#"{"wallet_id":"w-3","currency":"XYZ","kyc_tier":"min"}"#.to_vec(),
                422,
                "CURRENCY_UNKNOWN",
            ),
            (
                "bad wallet id",
                with("k-id", &bearer),
                br#"{"wallet_id":"w 3/..","currency":"INR","kyc_tier":"min"}"#.to_vec(),
                400,
                "MALFORMED_REQUEST",
            ),
            (
                "an existing wallet",
                with("k-exists", &bearer),
                br#"{"wallet_id":"w-1","currency":"INR","kyc_tier":"full"}"#.to_vec(),
                409,
                "ACCOUNT_EXISTS",
            ),
            (
                "an auditor writing",
                with("k-aud", &auditor),
                br#"{"wallet_id":"w-3","currency":"INR","kyc_tier":"min"}"#.to_vec(),
                403,
                "SCOPE_MISSING",
            ),
        ]
    };
    for (what, headers, body, status, code) in &refusals {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = http
            .send("POST", "/v1/wallets", &headers, Some(body))
            .await
            .unwrap();
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (*status, *code),
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let text_body = http
        .send(
            "POST",
            "/v1/wallets",
            &[
                ("authorization", &format!("Bearer {backend}")),
                ("idempotency-key", "k-text"),
                ("content-type", "text/plain"),
            ],
            Some(b"w-3"),
        )
        .await
        .unwrap();
    assert_eq!(text_body.code(), "UNSUPPORTED_CONTENT_TYPE");
    // refusals keep nothing new except the answers a retry must get again
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM http_idempotency")
        .fetch_one(gateway.store().pool())
        .await
        .unwrap();
    // open-w-1, and the three refusals decided under their key (k-id, k-cur, k-exists); a
    // body that cannot be read (an unknown tier is a schema error) is refused before any key
    // is looked at
    assert_eq!(kept, 4);
    let w3 = http.get("/v1/wallets/w-3", &backend).await;
    assert_eq!(w3.code(), "UNKNOWN_WALLET");
    // a refusal kept is answered again the same way under its key
    let exists_again = http
        .send(
            "POST",
            "/v1/wallets",
            &[
                ("authorization", &format!("Bearer {backend}")),
                ("idempotency-key", "k-exists"),
            ],
            Some(br#"{"wallet_id":"w-1","currency":"INR","kyc_tier":"full"}"#),
        )
        .await
        .unwrap();
    assert_eq!(
        (exists_again.status, exists_again.code().as_str()),
        (409, "ACCOUNT_EXISTS")
    );

    // the status of a write, by its key: the first answer, to its caller only
    let status = http.get("/v1/requests/open-w-1", &backend).await;
    assert_eq!(
        status.status,
        200,
        "{}",
        String::from_utf8_lossy(&status.body)
    );
    assert_eq!(status.json()["status"], 201);
    assert_eq!(status.json()["answer"], first.json());
    let refused = http.get("/v1/requests/k-exists", &backend).await;
    assert_eq!(refused.json()["status"], 409);
    assert_eq!(refused.json()["answer"]["error"]["code"], "ACCOUNT_EXISTS");
    for (key, token) in [
        ("never-sent", backend.clone()),
        ("k-json", backend.clone()),
        ("open-w-1", gateway.token("another-backend", "wallets:read")),
    ] {
        let unknown = http.get(&format!("/v1/requests/{key}"), &token).await;
        assert_eq!(
            (unknown.status, unknown.code().as_str()),
            (404, "REQUEST_UNKNOWN"),
            "{key}"
        );
    }

    // a tier change, recorded with the caller's identity
    let tier = http
        .write(
            "PUT",
            "/v1/wallets/w-1/kyc-tier",
            &backend,
            "tier-w-1",
            &json!({"kyc_tier": "full"}),
        )
        .await;
    assert_eq!(tier.status, 200, "{}", String::from_utf8_lossy(&tier.body));
    assert_eq!(tier.json()["kyc_tier"], "full");
    let unknown = http
        .write(
            "PUT",
            "/v1/wallets/nobody/kyc-tier",
            &backend,
            "tier-nobody",
            &json!({"kyc_tier": "full"}),
        )
        .await;
    assert_eq!(unknown.code(), "UNKNOWN_WALLET");
    let audited: Vec<String> = gateway
        .journal_records()
        .await
        .into_iter()
        .filter(|r| r.event == EventType::AdminAction && r.actor == "api:backend")
        .map(|r| r.detail.unwrap_or_default())
        .collect();
    assert_eq!(
        audited,
        [
            "opened wallet w-1 (INR, min KYC)",
            "set wallet w-1 to full KYC"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_writes_are_idempotent_and_every_bad_body_is_refused_with_nothing_changed_sqlite() {
    run_writes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_writes_are_idempotent_and_every_bad_body_is_refused_with_nothing_changed_postgres()
{
    run_writes(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_reads_only_its_own_wallet_and_its_history_pages_through_every_posting() {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    let bundle = gateway.device("pos-1", "500.00").await;
    assert_eq!(bundle.device_id.as_str(), "pos-1");
    let wallet = "wallet-pos-1".to_owned();
    let mut agent = gateway.agent("pos-1").await;
    let merchant = AccountId::parse(MERCHANT).unwrap();
    for n in 1..=7 {
        let receipt = agent.pay(&merchant, inr(&format!("{n}.00"))).await.unwrap();
        assert_eq!(receipt.receipt.outcome, Outcome::Approved);
    }
    let holder = gateway.token(&wallet, "wallet");
    let mine = http.get(&format!("/v1/wallets/{wallet}"), &holder).await;
    assert_eq!(mine.status, 200, "{}", String::from_utf8_lossy(&mine.body));
    assert_eq!(mine.json()["balance_minor"], 50_000 - 2_800);
    gateway.device("pos-2", "10.00").await;
    for path in ["", "/transactions", "/points"] {
        let theirs = http
            .get(&format!("/v1/wallets/wallet-pos-2{path}"), &holder)
            .await;
        assert_eq!(
            (theirs.status, theirs.code().as_str()),
            (403, "ACCESS_DENIED"),
            "{path}"
        );
        let no_scope = http
            .get(
                &format!("/v1/wallets/{wallet}{path}"),
                &gateway.token(&wallet, "audit:read"),
            )
            .await;
        assert_eq!(no_scope.code(), "SCOPE_MISSING", "{path}");
    }
    // pages of 3, newest first, until there is no cursor: every posting once, in order
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => format!("/v1/wallets/{wallet}/transactions?limit=3"),
            Some(c) => format!("/v1/wallets/{wallet}/transactions?limit=3&cursor={c}"),
        };
        let page = http.get(&path, &holder).await.json();
        for entry in page["entries"].as_array().unwrap() {
            seen.push(entry["amount_minor"].as_i64().unwrap());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT amount_minor FROM postings WHERE account_id = $1 ORDER BY posting_id DESC",
    )
    .bind(&wallet)
    .fetch_all(gateway.store().pool())
    .await
    .unwrap();
    assert_eq!(seen, expected);
    assert_eq!(&seen[..7], &[-700, -600, -500, -400, -300, -200, -100]);
    for bad in [
        "limit=0",
        "limit=1000",
        "cursor=abc",
        "cursor=-5",
        "colour=blue",
    ] {
        let answer = http
            .get(&format!("/v1/wallets/{wallet}/transactions?{bad}"), &holder)
            .await;
        assert_eq!(answer.code(), "MALFORMED_REQUEST", "{bad}");
    }
    let points = http
        .get(&format!("/v1/wallets/{wallet}/points"), &holder)
        .await;
    assert_eq!(points.status, 200);
    assert!(
        points.json()["pending_points"].as_i64().unwrap() > 0,
        "{}",
        points.json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer_without_a_token_and_unknown_routes_and_methods_are_refused() {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    let live = http.send("GET", "/livez", &[], None).await.unwrap();
    assert_eq!(
        (live.status, live.body.as_slice()),
        (200, b"ok\n".as_slice())
    );
    let ready = http.send("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json(),
        json!({"ready": true, "database": true, "audit_journal": true, "key_provider": true, "broker": true, "pipeline": true})
    );
    for header in [
        "x-request-id",
        "strict-transport-security",
        "x-content-type-options",
        "content-security-policy",
        "cache-control",
    ] {
        assert!(ready.header(header).is_some(), "{header}");
    }
    assert!(ready.header("access-control-allow-origin").is_none());
    let echoed = http
        .send("GET", "/livez", &[("x-request-id", "trace-42")], None)
        .await
        .unwrap();
    assert_eq!(echoed.header("x-request-id"), Some("trace-42"));
    let unknown = http.send("GET", "/v2/nothing", &[], None).await.unwrap();
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (404, "ROUTE_UNKNOWN")
    );
    let method = http.send("DELETE", "/livez", &[], None).await.unwrap();
    assert_eq!(
        (method.status, method.code().as_str()),
        (405, "METHOD_NOT_ALLOWED")
    );
    // one payment, so every stage of the pipeline has run
    gateway.device("pos-m", "10.00").await;
    let mut agent = gateway.agent("pos-m").await;
    let paid = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("1.00"))
        .await
        .unwrap();
    assert_eq!(paid.receipt.outcome, Outcome::Approved);
    let metrics = http.send("GET", "/metrics", &[], None).await.unwrap();
    let text = String::from_utf8(metrics.body).unwrap();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    };
    // present (sample panics on a missing one), whatever their values
    for gauge in [
        "paygate_audit_backlog_bytes",
        "paygate_pipeline_queue_depth",
        "paygate_key_provider_calls_total{op=\"generate\"}",
        "paygate_key_provider_failures_total",
    ] {
        sample(gauge);
    }
    for stage in ["verify", "prepare", "decide", "journal"] {
        assert!(
            sample(&format!(
                "paygate_pipeline_stage_runs_total{{stage=\"{stage}\"}}"
            )) >= 1.0,
            "{stage}"
        );
        assert!(
            sample(&format!(
                "paygate_pipeline_stage_seconds_total{{stage=\"{stage}\"}}"
            )) > 0.0,
            "{stage}"
        );
    }
    assert!(sample("paygate_connections_open") >= 1.0);
    assert!(
        text.contains("# TYPE paygate_refusals_total counter")
            || !text.contains("paygate_refusals_total{")
    );
    let openapi = http
        .send("GET", "/openapi.json", &[], None)
        .await
        .unwrap()
        .json();
    assert_eq!(openapi["openapi"], "3.1.0");
    for path in [
        "/v1/wallets",
        "/v1/wallets/{wallet_id}/transactions",
        "/v1/audit/records",
        "/v1/audit/verify",
        "/readyz",
    ] {
        assert!(
            openapi["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_told_to_wait_and_another_caller_is_not() {
    let gateway = TestGateway::start_with(|s| {
        s.http.caller_requests_per_s = 1;
        s.http.caller_requests_burst = 3;
    })
    .await;
    let http = gateway.http();
    let backend = gateway.token("backend", "wallets:read");
    let mut codes = Vec::new();
    for _ in 0..5 {
        let answer = http.get("/v1/wallets/nobody", &backend).await;
        codes.push(answer.code());
        if answer.status == 503 {
            assert!(
                answer
                    .header("retry-after")
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
        }
    }
    assert_eq!(
        &codes[..3],
        &["UNKNOWN_WALLET", "UNKNOWN_WALLET", "UNKNOWN_WALLET"]
    );
    assert!(codes[3..].iter().all(|c| c == "OVERLOADED"), "{codes:?}");
    let other = http
        .get(
            "/v1/wallets/nobody",
            &gateway.token("backend-2", "wallets:read"),
        )
        .await;
    assert_eq!(other.code(), "UNKNOWN_WALLET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_searches_verifies_and_proves_and_every_read_is_itself_audited() {
    let gateway = gateway(Db::Sqlite).await;
    let http = gateway.http();
    gateway.device("pos-1", "100.00").await;
    let mut agent = gateway.agent("pos-1").await;
    let receipt = agent
        .pay(&AccountId::parse(MERCHANT).unwrap(), inr("12.50"))
        .await
        .unwrap();
    let tx = receipt.receipt.tx_id.clone().unwrap();
    let auditor = gateway.token("auditor-1", "audit:read");
    // the payment's record reaches the write-once store within a few ship intervals
    let mut found = String::new();
    for _ in 0..100 {
        let answer = http
            .get(&format!("/v1/audit/records?tx={tx}"), &auditor)
            .await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.header("content-type"), Some("application/x-ndjson"));
        found = String::from_utf8(answer.body).unwrap();
        if found.contains("payment_decided") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found.contains("payment_decided"), "{found}");
    for line in found.lines() {
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(line).unwrap()["tx_id"],
            tx.as_str()
        );
    }
    let csv = http
        .get(&format!("/v1/audit/records?tx={tx}&format=csv"), &auditor)
        .await;
    assert_eq!(csv.header("content-type"), Some("text/csv"));
    assert!(String::from_utf8(csv.body).unwrap().lines().count() >= 2);
    let bearer = format!("Bearer {auditor}");
    let verified = http
        .send(
            "POST",
            "/v1/audit/verify",
            &[("authorization", &bearer)],
            Some(b"{}"),
        )
        .await
        .unwrap()
        .json();
    assert_eq!(verified["status"], "verified", "{verified}");
    assert!(verified["records"].as_u64().unwrap() > 0);
    let proofs = http
        .get(&format!("/v1/audit/transactions/{tx}/proofs"), &auditor)
        .await;
    assert_eq!(
        proofs.status,
        200,
        "{}",
        String::from_utf8_lossy(&proofs.body)
    );
    // the proofs check with the public key alone, as the offline command does
    let (key, key_id) = paygate_gateway::audit::archive::read_public_jwk(
        &paygate_gateway::audit::keys::public_jwk_path(
            &gateway
                .settings
                .resolve(&gateway.settings.audit.signing_key),
        ),
    )
    .unwrap();
    let list: Vec<paygate_core::audit::RecordProof> = serde_json::from_slice(&proofs.body).unwrap();
    assert!(!list.is_empty());
    for proof in &list {
        proof.verify(&key, &key_id).unwrap();
    }
    let none = http
        .get("/v1/audit/transactions/no-such-tx/proofs", &auditor)
        .await;
    assert_eq!(none.code(), "NOT_FOUND");
    for bad in [
        "event=nonsense",
        "from=yesterday",
        "format=xml",
        "colour=blue",
    ] {
        assert_eq!(
            http.get(&format!("/v1/audit/records?{bad}"), &auditor)
                .await
                .code(),
            "MALFORMED_REQUEST",
            "{bad}"
        );
    }
    // a wallet token reads no audit record
    let holder = gateway.token("wallet-pos-1", "wallet wallets:read wallets:write");
    assert_eq!(
        http.get("/v1/audit/records", &holder).await.code(),
        "SCOPE_MISSING"
    );
    // every read above is in the trail under the auditor's name (10.2.1.3)
    let reads: Vec<String> = gateway
        .journal_records()
        .await
        .into_iter()
        .filter(|r| r.event == EventType::AuditLogRead && r.actor == "api:auditor-1")
        .map(|r| r.detail.unwrap_or_default())
        .collect();
    assert!(
        reads.iter().any(|r| r.contains("audit verify via api")),
        "{reads:?}"
    );
    assert!(reads
        .iter()
        .any(|r| r.contains(&format!("audit prove via api tx {tx}"))));
    assert!(reads.iter().any(|r| r.contains(&format!("tx={tx}"))));
}
