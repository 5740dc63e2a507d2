//! The embedded rumqttd 0.20 broker, reachable only through the device front.
//!
//! rumqttd listens on a loopback port with no TLS; every connection must present the
//! username equal to its client id and a password that is a random secret made at start and
//! held only in this process. The device front rewrites each device's CONNECT with it, so a
//! local process that finds the port still cannot connect. The pipeline attaches through a
//! local link (in process, no network).

use anyhow::{bail, Context, Result};
use paygate_core::topics::ALL_REQUESTS_FILTER;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The secret the front presents on behalf of devices.
#[derive(Clone)]
pub struct BrokerSecret(Arc<String>);

impl std::fmt::Debug for BrokerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerSecret(***)")
    }
}

impl BrokerSecret {
    fn generate() -> BrokerSecret {
        let bytes: [u8; 32] = rand::random();
        BrokerSecret(Arc::new(hex::encode(bytes)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

pub struct EmbeddedBroker {
    pub address: SocketAddr,
    pub secret: BrokerSecret,
    /// The pipeline's link, subscribed to every device's request topic.
    pub pipeline_link: (LinkTx, LinkRx),
}

/// Starts the broker on its own thread and waits until its loopback listener answers as
/// this broker: an MQTT connect with this broker's secret is accepted. rumqttd binds the port
/// itself and reports a bind failure only in its log, so a free port is picked and handed over;
/// if another listener took that port meanwhile (a plain TCP probe would connect to it), the
/// broker is started again on another port.
pub async fn start(
    connections_max: usize,
    packet_bytes_max: usize,
    requests_in_flight_max: usize,
    device_inflight_max: usize,
) -> Result<EmbeddedBroker> {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let secret = BrokerSecret::generate();
        let address = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")
                .context("finding a loopback port for the broker")?;
            probe.local_addr()?
        };
        let logs = LogSizes::new(
            packet_bytes_max,
            requests_in_flight_max,
            device_inflight_max,
        );
        let (link, stopped) = spawn(address, &secret, connections_max, packet_bytes_max, logs)?;
        if answers_as_ours(address, &secret, stopped).await {
            return Ok(EmbeddedBroker {
                address,
                secret,
                pipeline_link: link,
            });
        }
        tracing::warn!(%address, attempt, "the embedded broker could not take its port; trying another");
    }
    bail!("the embedded broker did not start listening after {ATTEMPTS} ports")
}

/// How much rumqttd keeps per filter. rumqttd keeps every filter's messages in memory in a
/// log of segments, read or not, and drops the oldest segment when a new one would exceed the
/// count: a reader further behind than the remaining segments silently skips what it missed.
/// So each log is sized by what can be unread at once, and memory stays bounded by
/// configuration whatever devices send:
/// - all requests go to the pipeline's one filter, and the front admits at most
///   `pipeline.queue_depth_max` of them unanswered ([`crate::admission`]), each at most
///   `mqtt.packet_bytes_max`: three segments of half that keep it all even just after a
///   rollover (1.5 times the bound in memory; 96 MiB at the defaults, most of it only under
///   a flood of packets at the maximum size);
/// - each device's replies go to its own filter. The router appends a whole batch's replies
///   before it serves any connection, so a device can have a reply unread for each of its
///   requests in flight (`mqtt.device_inflight_max`), each under 2 KiB: two segments of that
///   many times 2 KiB (16 KiB each at the default of 8). A reply lost anyway is sent again
///   when the device resends its request.
#[derive(Debug, Clone, Copy)]
struct LogSizes {
    request_segment_bytes: usize,
    reply_segment_bytes: usize,
}

impl LogSizes {
    const REQUEST_SEGMENTS: usize = 3;
    /// A signed receipt is well under this (about 700 bytes with every field).
    const REPLY_BYTES_MAX: usize = 2 * 1024;

    fn new(
        packet_bytes_max: usize,
        requests_in_flight_max: usize,
        device_inflight_max: usize,
    ) -> LogSizes {
        let unread_max = packet_bytes_max.saturating_mul(requests_in_flight_max);
        LogSizes {
            request_segment_bytes: unread_max.div_ceil(2).max(64 * 1024),
            reply_segment_bytes: device_inflight_max
                .saturating_mul(Self::REPLY_BYTES_MAX)
                .max(8 * 1024),
        }
    }
}

/// Builds the broker on `address` and starts it on its own thread; the receiver hears when
/// the broker stops (a bind failure, at once).
fn spawn(
    address: SocketAddr,
    secret: &BrokerSecret,
    connections_max: usize,
    packet_bytes_max: usize,
    logs: LogSizes,
) -> Result<((LinkTx, LinkRx), tokio::sync::oneshot::Receiver<()>)> {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: packet_bytes_max,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let checker = secret.clone();
    connections.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            let allowed = username == client_id && checker.matches(&password);
            async move { allowed }
        },
    );
    let server = ServerSettings {
        name: "paygate-guarded-v4".to_owned(),
        listen: address,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: connections_max.saturating_add(16),
            max_outgoing_packet_count: 200,
            // every other filter is one device's replies
            max_segment_size: logs.reply_segment_bytes,
            max_segment_count: 2,
            custom_segment: Some(HashMap::from([(
                ALL_REQUESTS_FILTER.to_owned(),
                SegmentConfig {
                    max_segment_size: logs.request_segment_bytes,
                    max_segment_count: LogSizes::REQUEST_SEGMENTS,
                },
            )])),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("guarded".to_owned(), server)])),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    let (mut link_tx, link_rx) = broker
        .link("paygate-pipeline")
        .context("creating the pipeline link")?;
    link_tx
        .subscribe(ALL_REQUESTS_FILTER)
        .context("subscribing the pipeline link")?;
    let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("paygate-broker".to_owned())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded broker stopped");
            }
            let _ = stopped_tx.send(());
        })?;
    Ok(((link_tx, link_rx), stopped))
}

/// What one MQTT connect with the broker's secret got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A CONNACK: accepted (true) or refused (false).
    ConnAck(bool),
    /// Not listening, or not answering MQTT (yet).
    NoBroker,
    /// Nothing within the time.
    Silent,
}

async fn connect_once(address: SocketAddr, secret: &BrokerSecret, client_id: &str) -> Answer {
    use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
    let mut options = MqttOptions::new(client_id, address.ip().to_string(), address.port());
    options.set_credentials(client_id, secret.expose());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 1);
    let answer = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    let _ = client.disconnect().await;
    match answer {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
            Answer::ConnAck(ack.code == ConnectReturnCode::Success)
        }
        Ok(Err(_)) | Ok(Ok(_)) => Answer::NoBroker,
        Err(_) => Answer::Silent,
    }
}

/// Whether the embedded broker accepts a session with its secret now (readiness): a full
/// MQTT connect, so rumqttd sees an ordinary session and logs no error.
pub async fn accepts_sessions(address: SocketAddr, secret: &BrokerSecret) -> bool {
    connect_once(address, secret, "paygate-readyz").await == Answer::ConnAck(true)
}

/// Whether the listener on `address` is the broker holding `secret`: it accepts an MQTT
/// connect with the secret within the time given, while the broker's thread still runs.
async fn answers_as_ours(
    address: SocketAddr,
    secret: &BrokerSecret,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> bool {
    for _ in 0..200 {
        if stopped.try_recv().is_ok() {
            return false;
        }
        match connect_once(address, secret, "paygate-probe").await {
            Answer::ConnAck(accepted) => return accepted,
            // not listening yet, or something else that is not an MQTT broker
            Answer::NoBroker => tokio::time::sleep(Duration::from_millis(25)).await,
            // a listener that does not answer MQTT is not ours
            Answer::Silent => return false,
        }
    }
    false
}
