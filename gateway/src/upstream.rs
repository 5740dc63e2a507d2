//! External broker mode: the pipeline takes device requests from an existing broker
//! (Mosquitto, EMQX, AWS IoT Core) instead of the embedded one, as an MQTT client over mutual
//! TLS (rumqttc).
//!
//! - **Shared subscription.** Every replica subscribes to
//!   `$share/<group>/paygate/v1/devices/+/requests`; the broker hands each request to one of
//!   them.
//! - **Acknowledged once decided.** Acknowledgements are manual: a request is acknowledged
//!   only after its batch committed, its audit record is in the fsync'd journal and its reply
//!   was handed to the broker ([`crate::pipeline::Outlet`]). The session is persistent under
//!   a client id stable per data directory, so a replica that restarts gets back from the
//!   broker what it had not acknowledged; a request resent to another replica gets the first
//!   answer (deduplication is in the shared database).
//! - **Identity.** The device is the one the topic names. The broker's ACL confines each
//!   device to its own topics by its certificate (`deploy/mosquitto/`), and the pipeline then
//!   accepts only a request signed by the key enrolled for that device: a device that could
//!   publish on another's topic still could not sign as it.
//!
//! Nothing here blocks the client's event loop: requests wait in a list bounded by the
//! broker's window (`broker.external.inflight_max`, the requests it sends before an
//! acknowledgement) while the pipeline's queue is full, so replies and acknowledgements keep
//! flowing.

use crate::config::{ExternalBrokerSettings, Settings};
use crate::pipeline::{Inbound, Outlet};
use anyhow::{Context, Result};
use paygate_core::topics::{device_of_requests_topic, ALL_REQUESTS_FILTER};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The gateway's connection to the external broker: the client the publisher uses and the
/// event loop the consumer drives.
pub struct Upstream {
    pub client: AsyncClient,
    pub events: EventLoop,
    filter: String,
    settings: ExternalBrokerSettings,
    /// Whether the connection is up now (readiness).
    connected: watch::Sender<bool>,
}

/// The replies side of the connection ([`Outlet`]).
pub struct UpstreamOutlet {
    client: AsyncClient,
}

/// Configures the client (nothing is sent until the consumer polls it).
pub fn connect(settings: &Settings, log_id: &str) -> Result<Upstream> {
    let external = &settings.broker.external;
    let client_id = if external.client_id.is_empty() {
        format!("paygate-{}", log_id.trim_start_matches("paygate-"))
    } else {
        external.client_id.clone()
    };
    let mut options = MqttOptions::new(client_id, external.host.clone(), external.port);
    options
        .set_keep_alive(Duration::from_secs(external.keep_alive_s))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(
            settings.mqtt.packet_bytes_max,
            settings.mqtt.packet_bytes_max,
        )
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls_config(settings)?),
        ));
    // the client's own request channel: replies and acknowledgements of one window
    let (client, events) = AsyncClient::new(options, external.inflight_max.max(16));
    Ok(Upstream {
        client,
        events,
        filter: format!("$share/{}/{ALL_REQUESTS_FILTER}", external.share_group),
        settings: external.clone(),
        connected: watch::channel(false).0,
    })
}

fn tls_config(settings: &Settings) -> Result<Arc<rustls::ClientConfig>> {
    let external = &settings.broker.external;
    let ca_path = settings.resolve(&external.ca);
    let mut roots = rustls::RootCertStore::empty();
    for ca in crate::tls::load_certs(&ca_path)? {
        roots
            .add(ca)
            .with_context(|| format!("the broker CA in {}", ca_path.display()))?;
    }
    let chain = crate::tls::load_certs(&settings.resolve(&external.client_cert))?;
    let key = crate::tls::load_key(&settings.resolve(&external.client_key))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .context("the gateway's client certificate and key for the broker")?;
    Ok(Arc::new(config))
}

impl Upstream {
    /// Follows whether the connection to the broker is up.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    pub fn outlet(&self) -> UpstreamOutlet {
        UpstreamOutlet {
            client: self.client.clone(),
        }
    }

    /// Drives the connection until shutdown: (re)subscribes on every connection, takes
    /// requests into the pipeline's queue in arrival order, reconnects after a loss.
    pub async fn consume(
        mut self,
        queue: mpsc::Sender<Inbound>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut waiting: VecDeque<Inbound> = VecDeque::new();
        let mut over_window_warned = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let _ = self.client.try_disconnect();
                    return;
                }
                permit = queue.reserve(), if !waiting.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(inbound) = waiting.pop_front() {
                        permit.send(inbound);
                    }
                }
                event = self.events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        self.connected.send_replace(true);
                        tracing::info!(host = %self.settings.host, port = self.settings.port, "connected to the external broker");
                        // a resumed session keeps its subscription; subscribing again is harmless
                        if let Err(error) = self.client.try_subscribe(&self.filter, QoS::AtLeastOnce) {
                            tracing::error!(%error, "could not subscribe to the device requests");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::error!(filter = %self.filter, "the broker refused the subscription to the device requests (its ACL must let the gateway read them)");
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let Some(inbound) = self.inbound(publish) {
                            waiting.push_back(inbound);
                            if waiting.len() > self.settings.inflight_max && !over_window_warned {
                                over_window_warned = true;
                                tracing::warn!(waiting = waiting.len(), "more requests than broker.external.inflight_max wait for the pipeline: set it to the broker's window");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.connected.send_replace(false);
                        tracing::warn!(%error, "connection to the external broker lost; reconnecting");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(self.settings.reconnect_delay_ms)) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                },
            }
        }
    }

    /// A request for the pipeline, or `None` for a message on a topic that names no device
    /// (acknowledged at once: there is nothing to decide).
    fn inbound(&self, publish: Publish) -> Option<Inbound> {
        let topic = publish.topic.clone();
        let ack = (publish.qos != QoS::AtMostOnce).then_some(publish.pkid);
        let Some(device) = device_of_requests_topic(&topic) else {
            tracing::warn!(%topic, "message on an unexpected topic acknowledged and ignored");
            if let Err(error) = self.client.try_ack(&publish) {
                tracing::warn!(%error, "acknowledgement not sent");
            }
            return None;
        };
        Some(Inbound {
            device,
            message: publish.payload,
            received_at: Instant::now(),
            ack,
        })
    }
}

impl Outlet for UpstreamOutlet {
    async fn publish(&mut self, topic: String, payload: Vec<u8>) {
        if let Err(error) = self
            .client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
        {
            // the decision is durable; the device's resend gets the stored receipt
            tracing::warn!(%topic, %error, "reply dropped: the broker client is gone");
        }
    }

    async fn acknowledge(&mut self, packet_ids: Vec<u16>) {
        for pkid in packet_ids {
            let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
            publish.pkid = pkid;
            if let Err(error) = self.client.ack(&publish).await {
                tracing::warn!(%error, "acknowledgement not sent; the broker delivers the request again and it gets its first answer");
                return;
            }
        }
    }
}
