//! Wallet products end to end through MQTT: P2P (by wallet id, phone alias and VPA), cash-in
//! and cash-out at an agent's terminal, refunds from a merchant's till, each KYC limit, and the
//! bad inputs, each refused with its stable code and nothing posted.

#![allow(clippy::unwrap_used)]

use paygate_agent::{Agent, VerifiedReceipt};
use paygate_core::request::{Operation, Party};
use paygate_core::{AccountId, ErrorCode, Money, TxId};
use paygate_gateway::clock::now_ms;
use paygate_gateway::ledger::{AccountKind, KycTier};
use paygate_gateway::profiles::{self, WalletProfile};
use paygate_tests::{inr, TestGateway};

const RUPEE: i64 = 100;

/// Full-KYC wallets: 300.00 per transaction, 500.00 a day. Minimum-KYC wallets: 1,000.00
/// balance cap, 400.00 a month, no P2P, no cash-out. Cash-out (full): 200.00 per transaction,
/// 300.00 a month.
async fn gateway() -> TestGateway {
    let gateway = TestGateway::start_with(|s| {
        let full = &mut s.wallet.full_kyc;
        full.per_transaction_max_minor = 300 * RUPEE;
        full.daily_debit_max_minor = 500 * RUPEE;
        full.cash_out_per_transaction_max_minor = 200 * RUPEE;
        full.cash_out_monthly_max_minor = 300 * RUPEE;
        let min = &mut s.wallet.min_kyc;
        min.balance_max_minor = 1_000 * RUPEE;
        min.per_transaction_max_minor = 1_000 * RUPEE;
        min.daily_debit_max_minor = 1_000 * RUPEE;
        min.monthly_debit_max_minor = 400 * RUPEE;
    })
    .await;
    gateway.device("pos-a", "2000.00").await;
    gateway.device("pos-b", "10.00").await;
    gateway.device("pos-small", "900.00").await;
    gateway.set_tier("wallet-pos-small", KycTier::Min).await;
    gateway
        .terminal("agent-1", "agent-float-1", AccountKind::Agent, "5000.00")
        .await;
    gateway
        .terminal("till-1", "m-shop", AccountKind::Merchant, "1.00")
        .await;
    profiles::save(
        &gateway.running.cipher,
        gateway.store().pool(),
        &AccountId::parse("wallet-pos-b").unwrap(),
        &WalletProfile {
            name: "Bala S".into(),
            phone: "+919800000002".into(),
            vpa: "bala@okbank".into(),
        },
        None,
    )
    .await
    .unwrap();
    gateway
}

fn wallet(id: &str) -> Party {
    Party::Wallet(AccountId::parse(id).unwrap())
}

async fn p2p(agent: &mut Agent, to: Party, amount: &str) -> VerifiedReceipt {
    agent
        .submit(Operation::P2pTransfer {
            to,
            amount: inr(amount),
        })
        .await
        .unwrap()
}

fn approved(receipt: &VerifiedReceipt) -> TxId {
    assert!(receipt.code().is_none(), "{:?}", receipt.receipt);
    TxId::parse(receipt.receipt.tx_id.as_deref().unwrap()).unwrap()
}

/// Declined with `code`, the reason containing `reason`, and the ledger unchanged.
async fn assert_declined(
    gateway: &TestGateway,
    agent: &mut Agent,
    operation: Operation,
    code: ErrorCode,
    reason: &str,
) {
    let before = gateway.ledger_fingerprint().await;
    let receipt = agent.submit(operation.clone()).await.unwrap();
    assert_eq!(
        receipt.code(),
        Some(code),
        "{operation:?}: {:?}",
        receipt.receipt
    );
    let message = receipt.receipt.message.clone().unwrap_or_default();
    assert!(
        message.contains(reason),
        "{operation:?}: {message:?} lacks {reason:?}"
    );
    assert!(receipt.receipt.tx_id.is_none());
    assert_eq!(
        gateway.ledger_fingerprint().await,
        before,
        "{operation:?} changed the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_by_wallet_id_phone_alias_and_vpa() {
    let gateway = gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let by_id = p2p(&mut a, wallet("wallet-pos-b"), "10.00").await;
    approved(&by_id);
    assert_eq!(
        by_id.receipt.counterparty.as_deref(),
        Some("wallet wallet-pos-b")
    );
    approved(&p2p(&mut a, Party::Phone("+919800000002".into()), "20.00").await);
    let vpa = paygate_core::payer::Vpa::parse("Bala@OKBANK").unwrap();
    approved(&p2p(&mut a, Party::Vpa(vpa), "30.00").await);
    assert_eq!(gateway.balance("wallet-pos-a").await, 200_000 - 6_000);
    assert_eq!(gateway.balance("wallet-pos-b").await, 1_000 + 6_000);
    assert_eq!(gateway.store().count_transfers("p2p").await.unwrap(), 3);
    gateway.assert_ledger_balanced().await;
    a.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cash_in_and_cash_out_at_an_agent() {
    let gateway = gateway().await;
    let mut agent = gateway.agent("agent-1").await;
    let cash_in = agent
        .submit(Operation::CashIn {
            customer: Party::Phone("+919800000002".into()),
            amount: inr("150.00"),
        })
        .await
        .unwrap();
    approved(&cash_in);
    assert_eq!(gateway.balance("agent-float-1").await, 500_000 - 15_000);
    assert_eq!(gateway.balance("wallet-pos-b").await, 1_000 + 15_000);

    let mut b = gateway.agent("pos-b").await;
    let cash_out = b
        .submit(Operation::CashOut {
            agent_id: AccountId::parse("agent-float-1").unwrap(),
            amount: inr("100.00"),
        })
        .await
        .unwrap();
    approved(&cash_out);
    assert_eq!(
        cash_out.receipt.counterparty.as_deref(),
        Some("agent agent-float-1")
    );
    assert_eq!(gateway.balance("wallet-pos-b").await, 16_000 - 10_000);
    assert_eq!(gateway.balance("agent-float-1").await, 485_000 + 10_000);

    // an agent's float that does not cover a cash-in
    assert_declined(
        &gateway,
        &mut agent,
        Operation::CashIn {
            customer: wallet("wallet-pos-a"),
            amount: inr("4950.01"),
        },
        ErrorCode::InsufficientFunds,
        "float",
    )
    .await;
    // only an agent takes cash in; only a wallet withdraws
    assert_declined(
        &gateway,
        &mut b,
        Operation::CashIn {
            customer: wallet("wallet-pos-a"),
            amount: inr("1.00"),
        },
        ErrorCode::OperationNotAllowed,
        "agent",
    )
    .await;
    assert_declined(
        &gateway,
        &mut agent,
        Operation::CashOut {
            agent_id: AccountId::parse("agent-float-1").unwrap(),
            amount: inr("1.00"),
        },
        ErrorCode::OperationNotAllowed,
        "wallet",
    )
    .await;
    assert_declined(
        &gateway,
        &mut b,
        Operation::CashOut {
            agent_id: AccountId::parse("agent-nobody").unwrap(),
            amount: inr("1.00"),
        },
        ErrorCode::UnknownMerchant,
        "agent-nobody",
    )
    .await;
    gateway.assert_ledger_balanced().await;
    agent.disconnect().await;
    b.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_up_to_the_original_and_never_past_it() {
    let gateway = gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let payment = a
        .pay(&AccountId::parse("m-shop").unwrap(), inr("250.00"))
        .await
        .unwrap();
    let original = approved(&payment);
    let mut till = gateway.agent("till-1").await;
    let refund = |amount: &str| Operation::Refund {
        tx_id: original.clone(),
        amount: inr(amount),
    };
    approved(&till.submit(refund("100.00")).await.unwrap());
    approved(&till.submit(refund("150.00")).await.unwrap());
    assert_eq!(gateway.balance("wallet-pos-a").await, 200_000);
    assert_eq!(gateway.balance("m-shop").await, 100);
    let refunds: Vec<(String,)> =
        sqlx::query_as("SELECT related_tx_id FROM transfers WHERE kind = 'refund'")
            .fetch_all(gateway.store().pool())
            .await
            .unwrap();
    assert_eq!(refunds.len(), 2);
    assert!(refunds.iter().all(|(r,)| r == original.as_str()));

    assert_declined(
        &gateway,
        &mut till,
        refund("0.01"),
        ErrorCode::RefundExceedsOriginal,
        "250.00 INR, of which 250.00 INR is refunded already",
    )
    .await;
    assert_declined(
        &gateway,
        &mut till,
        Operation::Refund {
            tx_id: TxId::parse("tx-000000000000000000000000").unwrap(),
            amount: inr("1.00"),
        },
        ErrorCode::OriginalUnknown,
        "not a payment to m-shop",
    )
    .await;
    // a payment to another merchant is not this till's to refund
    let other = approved(
        &a.pay(
            &AccountId::parse(paygate_tests::MERCHANT).unwrap(),
            inr("5.00"),
        )
        .await
        .unwrap(),
    );
    assert_declined(
        &gateway,
        &mut till,
        Operation::Refund {
            tx_id: other.clone(),
            amount: inr("1.00"),
        },
        ErrorCode::OriginalUnknown,
        "not a payment to m-shop",
    )
    .await;
    // a wallet cannot refund, even its own payment
    assert_declined(
        &gateway,
        &mut a,
        Operation::Refund {
            tx_id: other,
            amount: inr("1.00"),
        },
        ErrorCode::OperationNotAllowed,
        "merchant",
    )
    .await;
    gateway.assert_ledger_balanced().await;
    a.disconnect().await;
    till.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kyc_limit_is_refused_with_its_reason() {
    let gateway = gateway().await;
    let shop = || AccountId::parse(paygate_tests::MERCHANT).unwrap();
    let mut a = gateway.agent("pos-a").await;
    // full KYC: per transaction, then per day
    assert_declined(
        &gateway,
        &mut a,
        Operation::MerchantPayment {
            merchant_id: shop(),
            amount: inr("300.01"),
            payer: None,
        },
        ErrorCode::LimitExceeded,
        "per-transaction limit of a full-KYC wallet is 300.00 INR",
    )
    .await;
    approved(&a.pay(&shop(), inr("300.00")).await.unwrap());
    approved(&p2p(&mut a, wallet("wallet-pos-b"), "200.00").await);
    assert_declined(
        &gateway,
        &mut a,
        Operation::P2pTransfer {
            to: wallet("wallet-pos-b"),
            amount: inr("0.01"),
        },
        ErrorCode::LimitExceeded,
        "daily limit of a full-KYC wallet is 500.00 INR; 500.00 INR already spent today",
    )
    .await;

    // full KYC cash-out: per transaction, then per month
    let mut b = gateway.agent("pos-b").await;
    let mut agent = gateway.agent("agent-1").await;
    approved(
        &agent
            .submit(Operation::CashIn {
                customer: wallet("wallet-pos-b"),
                amount: inr("400.00"),
            })
            .await
            .unwrap(),
    );
    let cash_out = |amount: &str| Operation::CashOut {
        agent_id: AccountId::parse("agent-float-1").unwrap(),
        amount: inr(amount),
    };
    assert_declined(
        &gateway,
        &mut b,
        cash_out("200.01"),
        ErrorCode::LimitExceeded,
        "cash-out limit per transaction of a full-KYC wallet is 200.00 INR",
    )
    .await;
    approved(&b.submit(cash_out("200.00")).await.unwrap());
    approved(&b.submit(cash_out("100.00")).await.unwrap());
    assert_declined(
        &gateway,
        &mut b,
        cash_out("0.01"),
        ErrorCode::LimitExceeded,
        "monthly cash-out limit of a full-KYC wallet is 300.00 INR; 300.00 INR already withdrawn",
    )
    .await;

    // minimum KYC: no P2P, no cash-out, a balance cap, a monthly limit
    let mut small = gateway.agent("pos-small").await;
    assert_declined(
        &gateway,
        &mut small,
        Operation::P2pTransfer {
            to: wallet("wallet-pos-b"),
            amount: inr("1.00"),
        },
        ErrorCode::LimitExceeded,
        "a minimum-KYC wallet cannot send P2P transfers",
    )
    .await;
    assert_declined(
        &gateway,
        &mut small,
        cash_out("1.00"),
        ErrorCode::LimitExceeded,
        "a minimum-KYC wallet cannot withdraw cash",
    )
    .await;
    assert_declined(
        &gateway,
        &mut agent,
        Operation::CashIn {
            customer: wallet("wallet-pos-small"),
            amount: inr("100.01"),
        },
        ErrorCode::LimitExceeded,
        "the receiving wallet's balance would exceed its KYC cap of 1000.00 INR",
    )
    .await;
    approved(
        &agent
            .submit(Operation::CashIn {
                customer: wallet("wallet-pos-small"),
                amount: inr("100.00"),
            })
            .await
            .unwrap(),
    );
    approved(&small.pay(&shop(), inr("400.00")).await.unwrap());
    assert_declined(
        &gateway,
        &mut small,
        Operation::MerchantPayment {
            merchant_id: shop(),
            amount: inr("0.01"),
            payer: None,
        },
        ErrorCode::LimitExceeded,
        "monthly limit of a minimum-KYC wallet is 400.00 INR; 400.00 INR already spent this month",
    )
    .await;
    gateway.assert_ledger_balanced().await;
    for agent in [a, b, agent, small] {
        agent.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_and_post_nothing() {
    let gateway = gateway().await;
    let mut a = gateway.agent("pos-a").await;
    let cases = [
        (
            Operation::P2pTransfer {
                to: wallet("wallet-pos-a"),
                amount: inr("1.00"),
            },
            ErrorCode::TransferToSelf,
            "itself",
        ),
        (
            Operation::P2pTransfer {
                to: wallet("wallet-nobody"),
                amount: inr("1.00"),
            },
            ErrorCode::UnknownWallet,
            "wallet-nobody",
        ),
        (
            Operation::P2pTransfer {
                to: Party::Phone("+919811111111".into()),
                amount: inr("1.00"),
            },
            ErrorCode::UnknownWallet,
            "phone or VPA",
        ),
        (
            Operation::P2pTransfer {
                to: wallet("m-shop"),
                amount: inr("1.00"),
            },
            ErrorCode::UnknownWallet,
            "m-shop",
        ),
        (
            Operation::P2pTransfer {
                to: wallet("wallet-pos-b"),
                amount: Money::parse_decimal("1.00", "USD").unwrap(),
            },
            ErrorCode::CurrencyMismatch,
            "currency",
        ),
        (
            Operation::MerchantPayment {
                merchant_id: AccountId::parse("m-nobody").unwrap(),
                amount: inr("1.00"),
                payer: None,
            },
            ErrorCode::UnknownMerchant,
            "merchant",
        ),
    ];
    for (operation, code, reason) in cases {
        assert_declined(&gateway, &mut a, operation, code, reason).await;
    }
    gateway.assert_ledger_balanced().await;
    a.disconnect().await;
}

/// The whole gateway on PostgreSQL (the server `scripts/with-postgres` started): payments,
/// a P2P transfer by phone alias (encrypted profiles, blind index), a decline, the audit
/// trail's outbox, and the books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_on_postgresql() {
    let url = paygate_tests::fresh_postgres_database().await;
    let gateway = TestGateway::start_with(|s| {
        s.database.url = paygate_gateway::config::Secret::new(url.clone());
    })
    .await;
    assert_eq!(
        gateway.store().backend(),
        paygate_gateway::store::Backend::Postgres
    );
    gateway.device("pos-a", "100.00").await;
    gateway.device("pos-b", "1.00").await;
    profiles::save(
        &gateway.running.cipher,
        gateway.store().pool(),
        &AccountId::parse("wallet-pos-b").unwrap(),
        &WalletProfile {
            name: "Bala S".into(),
            phone: "+919800000002".into(),
            vpa: "bala@okbank".into(),
        },
        None,
    )
    .await
    .unwrap();
    let mut a = gateway.agent("pos-a").await;
    let shop = AccountId::parse(paygate_tests::MERCHANT).unwrap();
    approved(&a.pay(&shop, inr("40.00")).await.unwrap());
    approved(&p2p(&mut a, Party::Phone("+919800000002".into()), "10.00").await);
    assert_declined(
        &gateway,
        &mut a,
        Operation::MerchantPayment {
            merchant_id: shop.clone(),
            amount: inr("50.01"),
            payer: None,
        },
        ErrorCode::InsufficientFunds,
        "balance",
    )
    .await;
    assert_eq!(gateway.balance("wallet-pos-a").await, 5_000);
    assert_eq!(gateway.balance("wallet-pos-b").await, 1_100);
    // reward points: 40 earned on the payment, activated by the job, 20 redeemed
    let later = paygate_gateway::clock::now_ms() + gateway.settings.rewards.pending_ms + 1;
    let run = paygate_gateway::rewards::run_jobs(gateway.store(), later)
        .await
        .unwrap();
    assert_eq!(run.lots_activated, 1);
    approved(
        &a.submit(Operation::PointsPayment {
            merchant_id: shop.clone(),
            amount: inr("10.00"),
            points: 20,
        })
        .await
        .unwrap(),
    );
    assert_eq!(gateway.balance("wallet-pos-a").await, 5_000 - 500);
    let report =
        paygate_gateway::rewards::liability_report(gateway.store(), &gateway.settings.rewards)
            .await
            .unwrap();
    assert_eq!(
        report.ledger_points,
        report.pending_points + report.active_points
    );
    assert_eq!(report.active_points, 20);
    let decided: Vec<(String,)> = sqlx::query_as("SELECT outcome FROM requests ORDER BY outcome")
        .fetch_all(gateway.store().pool())
        .await
        .unwrap();
    assert_eq!(decided.len(), 4);
    gateway.assert_ledger_balanced().await;
    a.disconnect().await;
}

/// RBI: credits to a wallet respect its balance cap, refunds included (the excess goes back
/// to the customer's source of funds), and a minimum-KYC wallet takes at most its monthly load
/// limit in cash-in and funding. Minimum-KYC here: 1,000.00 cap, 1,350.00 loaded a month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_and_loads_respect_the_kyc_cap_and_the_monthly_load_limit() {
    let gateway = TestGateway::start_with(|s| {
        let min = &mut s.wallet.min_kyc;
        min.balance_max_minor = 1_000 * RUPEE;
        min.monthly_load_max_minor = 1_350 * RUPEE;
    })
    .await;
    gateway.device("pos-small", "700.00").await;
    gateway.set_tier("wallet-pos-small", KycTier::Min).await;
    gateway
        .terminal("till-1", "m-shop", AccountKind::Merchant, "1.00")
        .await;
    gateway
        .terminal("agent-1", "agent-float-1", AccountKind::Agent, "5000.00")
        .await;
    let small = AccountId::parse("wallet-pos-small").unwrap();
    let fund = |amount: &'static str| {
        let (store, limits, small) = (gateway.store(), &gateway.settings.wallet, small.clone());
        async move {
            paygate_gateway::products::wallet::fund(store, limits, &small, inr(amount), now_ms())
                .await
        }
    };

    // pay 300.00, then load back to the cap: 700 - 300 + 600 = 1,000.00
    let mut a = gateway.agent("pos-small").await;
    let payment = approved(
        &a.pay(&AccountId::parse("m-shop").unwrap(), inr("300.00"))
            .await
            .unwrap(),
    );
    fund("600.00").await.unwrap();
    assert_eq!(gateway.balance("wallet-pos-small").await, 1_000 * RUPEE);

    // the operator's funding past the cap is refused, nothing posted
    let before = gateway.ledger_fingerprint().await;
    let refused = fund("0.01").await.unwrap_err();
    assert!(
        matches!(
            refused,
            paygate_gateway::store::StoreError::Refused(ErrorCode::LimitExceeded)
        ),
        "{refused:?}"
    );
    assert_eq!(gateway.ledger_fingerprint().await, before);

    // the refund is approved, but the wallet at its cap takes none of it: the 300.00 is owed
    // back to the customer's source, on the refunds-payable account
    let mut till = gateway.agent("till-1").await;
    let refund = till
        .submit(Operation::Refund {
            tx_id: payment,
            amount: inr("300.00"),
        })
        .await
        .unwrap();
    approved(&refund);
    assert_eq!(gateway.balance("wallet-pos-small").await, 1_000 * RUPEE);
    assert_eq!(gateway.balance("refunds-payable-inr").await, 300 * RUPEE);
    let counterparty = refund.receipt.counterparty.clone().unwrap_or_default();
    assert!(
        counterparty.contains("300.00 INR over the wallet's balance cap is owed back"),
        "{counterparty:?}"
    );

    // 1,300.00 loaded this month (700 + 600): a cash-in after spending is past the load limit
    // (900.00 after this payment: 60.00 more is under the cap, but not under the load limit)
    approved(
        &a.pay(&AccountId::parse("m-shop").unwrap(), inr("100.00"))
            .await
            .unwrap(),
    );
    let mut agent = gateway.agent("agent-1").await;
    assert_declined(
        &gateway,
        &mut agent,
        Operation::CashIn {
            customer: wallet("wallet-pos-small"),
            amount: inr("60.00"),
        },
        ErrorCode::LimitExceeded,
        "monthly load limit of a minimum-KYC wallet is 1350.00 INR; 1300.00 INR already loaded this month",
    )
    .await;
    // a full-KYC wallet has no monthly load limit of its own
    gateway.device("pos-full", "10.00").await;
    approved(
        &agent
            .submit(Operation::CashIn {
                customer: wallet("wallet-pos-full"),
                amount: inr("1500.00"),
            })
            .await
            .unwrap(),
    );
    gateway.assert_ledger_balanced().await;
    a.disconnect().await;
    till.disconnect().await;
    agent.disconnect().await;
}
