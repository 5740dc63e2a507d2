//! The system clock stepped under a running `paygate serve` (libfaketime, changed while it
//! runs; the monotonic clock is left alone, as NTP or an operator stepping the clock would):
//! an hour forward and back, then an hour back and forward. While the system clock is off the
//! gateway's own time, nothing is approved and terminals are told to retry; once it agrees
//! again, the terminal's resend is approved once; a step forward that stays is followed after
//! 10 s. The trail says so, each step once, and its
//! times never go back.

#![allow(clippy::unwrap_used)]

mod serve;

use paygate_agent::{Agent, DeviceBundle};
use paygate_core::audit::{parse_rfc3339_ms, AuditOutcome, EventType};
use paygate_core::receipt::Outcome;
use paygate_core::AccountId;
use paygate_gateway::audit::archive;
use serve::inr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Debian's libfaketime (package `faketime`, which `scripts/test` installs).
fn libfaketime() -> PathBuf {
    for dir in std::fs::read_dir("/usr/lib").unwrap() {
        let candidate = dir.unwrap().path().join("faketime/libfaketime.so.1");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("libfaketime.so.1 is not installed: run the tests with ./scripts/test (apt package faketime)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stepped_system_clock_stops_approvals_until_it_agrees_and_audit_times_stay_in_order() {
    let prepared = serve::prepare(
        "",
        "[audit]\nseal_check_interval_ms = 100\nseal_interval_ms = 500\nship_interval_ms = 100",
        1,
    );
    let data = &prepared.data;
    let offset = prepared.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let library = libfaketime();
    let mut server = prepared.serve(&[
        ("LD_PRELOAD", library.as_os_str()),
        ("FAKETIME_TIMESTAMP_FILE", offset.as_os_str()),
        ("FAKETIME_NO_CACHE", "1".as_ref()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".as_ref()),
    ]);
    serve::wait_listening(prepared.port).await;
    let mut agent = Agent::connect(
        DeviceBundle::load(&prepared.bundle_dir(0)).unwrap(),
        prepared.agent_settings(0),
    )
    .await
    .unwrap();
    let merchant = AccountId::parse("m-1").unwrap();
    let first = agent.pay(&merchant, inr(100)).await.unwrap();
    assert_eq!(first.receipt.outcome, Outcome::Approved);

    let mut approved = 1;
    for (step, back) in [("+1h", "+0"), ("-1h", "+0")] {
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let paying = tokio::spawn(async move {
            let reply = agent.pay(&merchant_of(), inr(200)).await;
            (agent, reply)
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !paying.is_finished(),
            "{step}: nothing is approved while the clock is stepped"
        );
        std::fs::write(&offset, format!("{back}\n")).unwrap();
        let (back_agent, reply) = tokio::time::timeout(Duration::from_secs(15), paying)
            .await
            .expect("approved once the clocks agree")
            .unwrap();
        agent = back_agent;
        assert_eq!(reply.unwrap().receipt.outcome, Outcome::Approved, "{step}");
        approved += 1;
    }
    // a step forward that stays (a VM resumed): after 10 s the gateway's time follows it,
    // forward, and approvals resume without the clock coming back
    std::fs::write(&offset, "+30\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let paying = tokio::spawn(async move {
        let reply = agent.pay(&merchant_of(), inr(300)).await;
        (agent, reply)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!paying.is_finished(), "+30 s: stopped at first");
    let (back_agent, reply) = tokio::time::timeout(Duration::from_secs(25), paying)
        .await
        .expect("approved once the gateway's time follows the clock forward")
        .unwrap();
    agent = back_agent;
    assert_eq!(reply.unwrap().receipt.outcome, Outcome::Approved);
    approved += 1;
    agent.disconnect().await;
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    server.wait().unwrap();

    let (key, key_id) =
        archive::read_public_jwk(&data.join("pki/audit-signing.pub.jwk.json")).unwrap();
    let mut times = Vec::new();
    let mut clock = Vec::new();
    let mut decided = 0;
    archive::verify_archive(&data.join("audit/worm"), key, &key_id, None, false, |at| {
        times.push(parse_rfc3339_ms(&at.record.time).unwrap());
        match at.record.event {
            EventType::ClockChecked => {
                clock.push((at.record.outcome, at.record.detail.clone().unwrap()))
            }
            EventType::PaymentDecided => decided += 1,
            _ => {}
        }
    })
    .unwrap();
    assert_eq!(decided, approved, "each payment decided once");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "audit times go back: {times:?}"
    );
    assert_eq!(
        clock.len(),
        6,
        "each step and each return, once: {clock:#?}"
    );
    assert_eq!(clock[0].0, AuditOutcome::Failure);
    assert!(
        clock[0].1.contains("ahead of the gateway's own time"),
        "{clock:#?}"
    );
    assert_eq!(clock[1].0, AuditOutcome::Success);
    assert_eq!(clock[2].0, AuditOutcome::Failure);
    assert!(
        clock[2].1.contains("behind the gateway's own time"),
        "{clock:#?}"
    );
    assert_eq!(clock[3].0, AuditOutcome::Success);
    assert_eq!(clock[4].0, AuditOutcome::Failure);
    assert_eq!(clock[5].0, AuditOutcome::Success);
    assert!(
        clock[5]
            .1
            .contains("the gateway's time moved forward to it"),
        "{clock:#?}"
    );
}

fn merchant_of() -> AccountId {
    AccountId::parse("m-1").unwrap()
}
