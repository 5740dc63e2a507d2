//! For the tests that run the real `paygate` binary: a data directory prepared with the CLI as
//! an operator would (PKI, merchant `m-1`, funded terminals), and `paygate serve` on it.

#![allow(clippy::unwrap_used, dead_code)]

use paygate_agent::AgentSettings;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs one CLI command against `config` and checks that it succeeded.
pub fn paygate(config: &Path, args: &[&str]) {
    // --config belongs to the command group: `paygate certs --config F init`
    let status = Command::new(env!("CARGO_BIN_EXE_paygate"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "paygate {args:?}");
}

/// A prepared data directory and the config that serves it on a free loopback port.
pub struct Prepared {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    /// The HTTP API's port.
    pub http_port: u16,
    pub config: PathBuf,
}

/// `mqtt` and `rest` are TOML added to the `[mqtt]` section and after it; each terminal
/// `pos-N` gets its wallet funded with 1000.00 INR.
pub fn prepare(mqtt: &str, rest: &str, terminals: usize) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let http_port = free_port();
    let config = dir.path().join("paygate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\nconnections_max = 1000\n{mqtt}\n{rest}\n",
            data.display()
        ),
    )
    .unwrap();
    paygate(&config, &["certs", "init"]);
    paygate(&config, &["ledger", "open-merchant", "m-1", "INR"]);
    for n in 0..terminals {
        let id = format!("pos-{n}");
        paygate(&config, &["certs", "issue-device", &id]);
        paygate(&config, &["devices", "enrol", &id]);
        paygate(
            &config,
            &["ledger", "fund", &format!("wallet-{id}"), "1000.00", "INR"],
        );
    }
    Prepared {
        dir,
        data,
        port,
        http_port,
        config,
    }
}

/// A loopback port free a moment ago, below the kernel's ephemeral range: a gateway restarted
/// on it many times must not find it taken by some other test's outgoing connection, which
/// the kernel numbers from that range.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let low = 10_000u16.min(ephemeral_low.saturating_sub(1_000));
    let span = ephemeral_low.saturating_sub(low).max(1);
    for _ in 0..1_000 {
        let port = low + rand::random::<u16>() % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

impl Prepared {
    /// `paygate serve` with `RUST_LOG` quiet and the given extra environment.
    pub fn serve(&self, env: &[(&str, &std::ffi::OsStr)]) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_paygate"));
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdout(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        command.spawn().unwrap()
    }

    pub fn bundle_dir(&self, terminal: usize) -> PathBuf {
        self.data.join(format!("pki/devices/pos-{terminal}"))
    }

    /// Agent settings for terminal `pos-N`.
    pub fn agent_settings(&self, terminal: usize) -> AgentSettings {
        AgentSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            keep_alive: Duration::from_secs(5),
            resend_interval: Duration::from_millis(500),
            receipt_timeout: Duration::from_secs(30),
            outbox_dir: self.bundle_dir(terminal).join("outbox"),
        }
    }
}

pub async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not listen on {port}");
}

/// An amount in INR minor units.
pub fn inr(minor: u64) -> paygate_core::Money {
    paygate_core::Money::new(minor, paygate_core::Currency::parse("INR").unwrap()).unwrap()
}
