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
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
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

/// Starts the broker on its own thread and waits until its loopback listener answers.
pub async fn start(connections_max: usize, packet_bytes_max: usize) -> Result<EmbeddedBroker> {
    let secret = BrokerSecret::generate();
    // rumqttd binds the port itself and reports a bind failure only in its log, so pick a free
    // port, hand it over, and probe until it answers
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a loopback port for the broker")?;
        probe.local_addr()?
    };
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
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
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
    std::thread::Builder::new()
        .name("paygate-broker".to_owned())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded broker stopped");
            }
        })?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(EmbeddedBroker {
                address,
                secret,
                pipeline_link: (link_tx, link_rx),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the embedded broker did not start listening on {address}")
}
