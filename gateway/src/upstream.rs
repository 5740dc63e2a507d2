//! External broker mode: the pipeline takes device requests from an existing broker
//! (Mosquitto, EMQX, AWS IoT Core) instead of the embedded one, as an MQTT client over mutual
//! TLS (rumqttc).
//!
//! - **Shared subscription.** Every replica subscribes to
//!   `$share/<group>/paygate/v1/devices/+/requests`; the broker hands each request to one of
//!   them.
//! - **Acknowledged once decided.** Acknowledgements are manual: a request is acknowledged
//!   only after its batch committed, its audit record is in the fsync'd journal and its reply
//!   was handed to the broker ([`crate::pipeline::Outlet`]): a broker that hands a lost
//!   member's unacknowledged messages to the others (EMQX), or a persistent session
//!   (`broker.external.persistent_session`), gives them to a live replica; in every case the
//!   devices resend what was not answered, and a resend gets the first answer whichever
//!   replica decided it (deduplication is in the shared database).
//! - **Identity.** The device is the one the topic names. The broker's ACL confines each
//!   device to its own topics by its certificate (`deploy/mosquitto/`), and the pipeline then
//!   accepts only a request signed by the key enrolled for that device: a device that could
//!   publish on another's topic still could not sign as it.
//!
//! Nothing here blocks the client's event loop: requests wait in a list while the pipeline's
//! queue is full, so replies and acknowledgements keep flowing. QoS 1 requests there are
//! bounded by the broker's window (`broker.external.inflight_max`, what it sends before an
//! acknowledgement); QoS 0 requests past that bound are dropped (devices resend).

use crate::config::{ExternalBrokerSettings, Settings};
use crate::pipeline::{Ack, Inbound, Outlet};
use anyhow::{Context, Result};
use paygate_core::topics::{device_of_requests_topic, ALL_REQUESTS_FILTER};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Largest packet taken from the broker (see `connect`).
const INCOMING_PACKET_BYTES_MAX: usize = 1024 * 1024 + 1024;

/// The gateway's connection to the external broker: the client the publisher uses and the
/// event loop the consumer drives.
pub struct Upstream {
    pub client: AsyncClient,
    pub events: EventLoop,
    filter: String,
    packet_bytes_max: usize,
    /// Messages acknowledged and ignored (logged at most every few seconds).
    ignored: crate::logs::Throttled,
    settings: ExternalBrokerSettings,
    /// Whether the connection is up now.
    online: watch::Sender<bool>,
    /// Whether requests come now: connected and subscribed (readiness).
    connected: watch::Sender<bool>,
    /// The broker session the deliveries belong to (moves on when the broker starts a new one).
    session: Arc<AtomicU64>,
}

/// The replies side of the connection ([`Outlet`]).
pub struct UpstreamOutlet {
    client: AsyncClient,
    session: Arc<AtomicU64>,
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
        .set_clean_session(!external.persistent_session)
        .set_manual_acks(true)
        // incoming: as large as brokers allow (AWS IoT 128 KiB, EMQX 1 MiB by default), so one
        // oversized request cannot make the client drop the connection and have the broker
        // redeliver it for ever; `inbound` drops (and acknowledges) what exceeds
        // mqtt.packet_bytes_max, as the embedded front refuses it
        .set_max_packet_size(INCOMING_PACKET_BYTES_MAX, settings.mqtt.packet_bytes_max)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls_config(settings)?),
        ));
    // the client's own request channel: replies and acknowledgements of one window
    let (client, events) = AsyncClient::new(options, external.inflight_max.max(16));
    Ok(Upstream {
        client,
        events,
        packet_bytes_max: settings.mqtt.packet_bytes_max,
        ignored: crate::logs::Throttled::every(crate::logs::LOG_INTERVAL),
        filter: format!(
            "$share/{}/{ALL_REQUESTS_FILTER}",
            external.share_group.expose()
        ),
        settings: external.clone(),
        online: watch::channel(false).0,
        connected: watch::channel(false).0,
        session: Arc::new(AtomicU64::new(0)),
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
    /// Follows whether the gateway takes requests from the broker now: connected, and the
    /// broker granted the shared subscription (readiness).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    pub fn outlet(&self) -> UpstreamOutlet {
        UpstreamOutlet {
            client: self.client.clone(),
            session: self.session.clone(),
        }
    }

    /// Drives the connection until shutdown: subscribes on every connection (again each
    /// second until the broker grants it), takes requests into the pipeline's queue in arrival
    /// order, reconnects after a loss.
    pub async fn consume(
        mut self,
        queue: mpsc::Sender<Inbound>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut waiting: VecDeque<Inbound> = VecDeque::new();
        let mut dropped = crate::logs::Throttled::every(crate::logs::LOG_INTERVAL);
        let mut subscribed = false;
        let mut retry = tokio::time::interval(Duration::from_secs(1));
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
                _ = retry.tick(), if !subscribed && *self.online.borrow() => self.subscribe(),
                event = self.events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            // a new session: deliveries are numbered afresh, and what waits
                            // from the old one can no longer be acknowledged
                            self.session.fetch_add(1, Ordering::SeqCst);
                        }
                        self.online.send_replace(true);
                        subscribed = false;
                        tracing::info!(host = %self.settings.host, port = self.settings.port, session_present = ack.session_present, "connected to the external broker");
                        self.subscribe();
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused = ack.return_codes.iter().any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure));
                        if refused {
                            tracing::error!(filter = %self.filter, "the broker refused the subscription to the device requests (its ACL must let the gateway read them); asking again each second");
                        } else {
                            subscribed = true;
                            self.connected.send_replace(true);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let Some(inbound) = self.inbound(publish) {
                            // QoS 1 is bounded by the broker's window (it sends no more before
                            // an acknowledgement); QoS 0 is not, and is dropped past it
                            if inbound.ack.is_none() && waiting.len() >= self.settings.inflight_max {
                                if let Some(count) = dropped.occurred() {
                                    tracing::warn!(count, waiting = waiting.len(), "QoS 0 requests dropped: the pipeline is behind (devices resend)");
                                }
                                continue;
                            }
                            waiting.push_back(inbound);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.online.send_replace(false);
                        self.connected.send_replace(false);
                        subscribed = false;
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

    fn subscribe(&self) {
        // never waits: a full request channel (replies queued while offline) is retried at
        // the next second
        if let Err(error) = self.client.try_subscribe(&self.filter, QoS::AtLeastOnce) {
            tracing::warn!(%error, "subscription to the device requests not sent yet; retried");
        }
    }

    /// A request for the pipeline, or `None` for a message on a topic that names no device
    /// (acknowledged at once: there is nothing to decide).
    fn inbound(&mut self, publish: Publish) -> Option<Inbound> {
        let topic = publish.topic.clone();
        let ack = (publish.qos != QoS::AtMostOnce).then_some(Ack {
            session: self.session.load(Ordering::SeqCst),
            pkid: publish.pkid,
        });
        let device = device_of_requests_topic(&topic);
        if device.is_none() || publish.payload.len() > self.packet_bytes_max {
            if let Some(count) = self.ignored.occurred() {
                tracing::warn!(%topic, bytes = publish.payload.len(), count, "messages on an unexpected topic, or larger than mqtt.packet_bytes_max: acknowledged and ignored");
            }
            if let Err(error) = self.client.try_ack(&publish) {
                tracing::warn!(%error, "acknowledgement not sent");
            }
            return None;
        }
        let device = device?;
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

    async fn acknowledge(&mut self, acks: Vec<Ack>) {
        let session = self.session.load(Ordering::SeqCst);
        for ack in acks.into_iter().filter(|ack| ack.session == session) {
            let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
            publish.pkid = ack.pkid;
            if let Err(error) = self.client.ack(&publish).await {
                tracing::warn!(%error, "acknowledgement not sent; the broker delivers the request again and it gets its first answer");
                return;
            }
        }
    }
}
