//! The references measured in the same run: Debian's mosquitto (mutual TLS, QoS 1) with a
//! responder that answers each request on the reply topic, driven by the same load
//! generator; and pgbench's simple-update rate on the same PostgreSQL.

use super::loadgen::{self, Load, Mode, Replies};
use super::setup;
use anyhow::{bail, Context, Result};
use paygate_agent::DeviceBundle;
use paygate_core::topics::{ALL_REQUESTS_FILTER, PREFIX, REPLIES_SUFFIX, REQUESTS_SUFFIX};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::path::Path;
use std::time::Duration;

/// Where mosquitto is, if it is installed (`apt-get install mosquitto`).
pub fn mosquitto_binary() -> Option<std::path::PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

/// CPU over a reference run's measured window, in cores.
pub struct ReferenceCpu {
    /// mosquitto's.
    pub server_cores: f64,
    /// The bench process's: the load generator and the echo responder.
    pub load_cores: f64,
}

/// Runs the same load against mosquitto with an echoing responder.
pub async fn mosquitto(
    pki_dir: &Path,
    bundles: Vec<DeviceBundle>,
    responder: DeviceBundle,
    mode: Mode,
    warmup: Duration,
    duration: Duration,
) -> Result<(loadgen::Outcomes, ReferenceCpu)> {
    let binary =
        mosquitto_binary().context("mosquitto is not installed (apt-get install mosquitto)")?;
    let port = setup::free_port()?;
    let dir = pki_dir.parent().unwrap_or(pki_dir).join("mosquitto");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\n\
             allow_anonymous false\npersistence false\n\
             max_inflight_messages 1000\nmax_queued_messages 100000\nset_tcp_nodelay true\n\
             log_dest stderr\nlog_type error\n\
             # run as root, mosquitto would switch to its own user, which cannot read the\n\
             # bench's 0600 server key; as another user this line has no effect\n\
             user root\n",
            ca = pki_dir.join("ca.cert.pem").display(),
            cert = pki_dir.join("server.cert.pem").display(),
            key = pki_dir.join("server.key.pem").display(),
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    let mut broker = tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting mosquitto")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if std::time::Instant::now() > deadline {
            let _ = broker.kill().await;
            bail!("mosquitto did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let echo = tokio::spawn(respond(responder, port));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let load = Load {
        host: "127.0.0.1".into(),
        port,
        bundles,
        merchant: paygate_core::AccountId::parse(setup::MERCHANT)?,
        amount: paygate_core::Money::parse_decimal("1.00", "INR")?,
        mode,
        replies: Replies::Echo,
        warmup,
        duration,
        counter_base: 0,
    };
    let broker_pid = broker.id().context("mosquitto's process id")?;
    let load_task = tokio::spawn(loadgen::run(load));
    tokio::time::sleep(warmup).await;
    let cores = setup::cores_over(&[broker_pid, std::process::id()], duration).await?;
    let outcomes = load_task.await.context("load task");
    echo.abort();
    let _ = broker.kill().await;
    let cpu = ReferenceCpu {
        server_cores: cores[0],
        load_cores: cores[1],
    };
    Ok((outcomes??, cpu))
}

/// The responder: every request is published back, unchanged, on its device's reply topic.
async fn respond(bundle: DeviceBundle, port: u16) -> Result<()> {
    let mut options = MqttOptions::new(bundle.device_id.as_str(), "127.0.0.1", port);
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            paygate_agent::tls_config(&bundle)?,
        )))
        .set_clean_session(true)
        .set_inflight(10_000)
        .set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    eventloop.network_options.set_tcp_nodelay(true);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client
                    .subscribe(ALL_REQUESTS_FILTER, QoS::AtLeastOnce)
                    .await?;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let device = publish
                    .topic
                    .strip_prefix(PREFIX)
                    .and_then(|t| t.strip_suffix(REQUESTS_SUFFIX))
                    .unwrap_or_default()
                    .to_owned();
                let topic = format!("{PREFIX}{device}{REPLIES_SUFFIX}");
                client
                    .publish(topic, QoS::AtLeastOnce, false, publish.payload)
                    .await?;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "responder connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// pgbench's simple-update transactions per second on the server at `url` (8 clients, 2
/// threads, `seconds` long), after `pgbench -i`.
pub async fn pgbench(url: &str, seconds: u64) -> Result<f64> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            let mut found: Vec<_> = dirs
                .flatten()
                .map(|d| d.path().join("bin/pgbench"))
                .filter(|p| p.exists())
                .collect();
            found.sort();
            found.pop()
        })
        .context("pgbench not found under /usr/lib/postgresql")?;
    let init = tokio::process::Command::new(&bin)
        .args(["-i", "-q", "-s", "4", url])
        .output()
        .await?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let run = tokio::process::Command::new(&bin)
        .args([
            "-b",
            "simple-update",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            url,
        ])
        .output()
        .await?;
    if !run.status.success() {
        bail!("pgbench: {}", String::from_utf8_lossy(&run.stderr));
    }
    let out = String::from_utf8_lossy(&run.stdout);
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("no tps line in pgbench's output")
}
