//! The device front: paygate's own TLS termination and an MQTT-aware guard in front of the
//! embedded rumqttd, which can neither bind identity nor authorise topics (DOMAIN.md).
//!
//! Per connection, in a task of its own (never on the accept loop):
//! 1. TLS handshake with a timeout; a client certificate is required, chains to a configured
//!    CA, is not revoked; its device id is read from the certificate.
//! 2. The first packet must be an MQTT 3.1.1 CONNECT whose client id is that device id, with no
//!    will, from an enrolled, active device. Otherwise a CONNACK refusal and close.
//! 3. The guard opens its own connection to rumqttd's loopback listener, presenting the broker
//!    secret, and then checks every packet from the device with [`check_packet`] before
//!    forwarding it. Refusals never reach rumqttd.
//!
//! Refusals after CONNECT send the device a signed notice (a receipt with outcome `rejected`
//! and the stable code) on its reply topic before closing, so the device learns why.

use crate::admission::Registry;
use crate::broker::BrokerSecret;
use crate::config::MqttSettings;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::{classify_handshake_error, device_identity};
use bytes::Bytes;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::envelope::SigningKey;
use paygate_core::{DeviceId, ErrorCode};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Login, Packet};
use rumqttc::mqttbytes::{Protocol, QoS};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

mod frames;
mod policy;

pub(crate) use crate::logs::{Throttled, LOG_INTERVAL};
pub use frames::{decode_strict, encode, Malformed};
use frames::{notice, overloaded_notice, FrameError, FrameReader};
pub use policy::{check_packet, Verdict};

/// Everything a connection task needs.
pub struct Front {
    pub settings: MqttSettings,
    pub acceptor: TlsAcceptor,
    pub broker_address: SocketAddr,
    pub broker_secret: BrokerSecret,
    pub store: Store,
    pub receipt_key: Arc<SigningKey>,
    pub metrics: Arc<Metrics>,
    pub connection_slots: Arc<Semaphore>,
    /// Every device's admission state, shared with the pipeline (which says when a request
    /// is answered).
    pub admission: Arc<Registry>,
    /// Devices whose sessions must end now (suspended or revoked through the operator API);
    /// every session listens and closes its own device's.
    pub disconnects: tokio::sync::broadcast::Sender<DeviceId>,
}

/// Accepts connections until `shutdown` turns true. The handshake and everything after it run
/// in a task per connection, so an idle socket holds only its own slot.
///
/// When accepting fails (out of descriptors: the kernel keeps the connection queued), the loop
/// waits, doubling the wait up to a second, instead of spinning; a connection over
/// `mqtt.connections_max` is closed at once, before any TLS. Both are logged at most once per
/// interval, with their count.
pub async fn serve(front: Arc<Front>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    const BACKOFF_MIN: Duration = Duration::from_millis(10);
    const BACKOFF_MAX: Duration = Duration::from_secs(1);
    let mut backoff = BACKOFF_MIN;
    let mut accept_failures = Throttled::every(LOG_INTERVAL);
    let mut over_capacity = Throttled::every(LOG_INTERVAL);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = BACKOFF_MIN;
                accepted
            }
            Err(error) => {
                if let Some(failures) = accept_failures.occurred() {
                    tracing::warn!(%error, failures, "accepting device connections fails; backing off");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = front.connection_slots.clone().try_acquire_owned() else {
            front.metrics.count_refusal(ErrorCode::Overloaded);
            if let Some(refused) = over_capacity.occurred() {
                tracing::warn!(%peer, refused, "connections refused: mqtt.connections_max reached");
            }
            drop(tcp);
            continue;
        };
        let front = front.clone();
        tokio::spawn(async move {
            front.metrics.connection_opened();
            handle_connection(&front, tcp, peer).await;
            front.metrics.connection_closed();
            drop(permit);
        });
    }
}

async fn handle_connection(front: &Front, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(
        Duration::from_millis(front.settings.handshake_timeout_ms),
        front.acceptor.accept(tcp),
    )
    .await;
    let tls = match handshake {
        Err(_) => {
            front.metrics.count_refusal(ErrorCode::TlsHandshakeFailed);
            tracing::info!(%peer, code = %ErrorCode::TlsHandshakeFailed, "tls handshake timed out");
            audit_refusal(
                front,
                peer,
                None,
                ErrorCode::TlsHandshakeFailed,
                EventType::AccessRefused,
            )
            .await;
            return;
        }
        Ok(Err(error)) => {
            let code = classify_handshake_error(&error);
            front.metrics.count_refusal(code);
            tracing::info!(%peer, code = %code, %error, "tls handshake refused");
            audit_refusal(front, peer, None, code, EventType::AccessRefused).await;
            return;
        }
        Ok(Ok(tls)) => tls,
    };
    let identity = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
    {
        Some(cert) => device_identity(cert),
        None => Err(ErrorCode::TlsClientCertRequired),
    };
    let device = match identity {
        Ok(device) => device,
        Err(code) => {
            front.metrics.count_refusal(code);
            tracing::info!(%peer, code = %code, "connection refused");
            audit_refusal(front, peer, None, code, EventType::AccessRefused).await;
            return;
        }
    };
    if let Err(code) = run_session(front, tls, &device, peer).await {
        front.metrics.count_refusal(code);
        tracing::info!(%peer, device = %device, code = %code, "connection closed by the guard");
        audit_refusal(front, peer, Some(&device), code, EventType::AccessRefused).await;
    }
}

/// Records an invalid access attempt (PCI DSS 10.2.1.4) in the audit outbox; the journal
/// writer picks it up within `audit.seal_check_interval_ms`.
async fn audit_refusal(
    front: &Front,
    peer: SocketAddr,
    device: Option<&DeviceId>,
    code: ErrorCode,
    event_type: EventType,
) {
    let actor = match device {
        Some(device) => format!("device:{device}"),
        None => "unauthenticated".to_owned(),
    };
    let resource = match device {
        Some(device) => format!("device:{device}"),
        None => "mqtt-listener".to_owned(),
    };
    let mut event = AuditEvent::new(
        crate::clock::now_ms(),
        event_type,
        actor,
        format!("mqtt:{peer}"),
        AuditOutcome::Failure,
        "front",
        resource,
    );
    event.code = Some(code.as_str().to_owned());
    event.device_id = device.map(DeviceId::to_string);
    if let Err(error) = front.store.record_audit(&event).await {
        front.metrics.count_audit_failure();
        tracing::error!(%error, "audit event for a refused access not recorded");
    }
}

/// Refused SUBSCRIBEs and UNSUBSCRIBEs one session is answered before it is closed.
const ANSWERED_REFUSALS_MAX: u32 = 8;

/// The admission step for a packet the policy lets through: only publishes (requests) count.
fn admit(front: &Front, device: &DeviceId, packet: &Packet, log: &mut Throttled) -> Verdict {
    let Packet::Publish(publish) = packet else {
        return Verdict::Forward;
    };
    let Err(refused) = front.admission.admit(device, Instant::now()) else {
        return Verdict::Forward;
    };
    if let Some(refused_count) = log.occurred() {
        tracing::info!(
            device = %device,
            limit = refused.reason.as_str(),
            refused = refused_count,
            "requests over the device's admission limits answered OVERLOADED"
        );
    }
    let mut answers = Vec::with_capacity(2);
    if publish.qos == QoS::AtLeastOnce {
        answers.push(encode(&Packet::PubAck(
            rumqttc::mqttbytes::v4::PubAck::new(publish.pkid),
        )));
    }
    answers.push(overloaded_notice(front, device, &publish.payload, refused));
    Verdict::Overloaded(answers)
}

async fn write_and_close<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = writer.write_all(frame).await;
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    })
    .await;
}

/// One device session, from CONNECT to close. Returns the code that ended it, if any.
async fn run_session<S>(
    front: &Front,
    tls: S,
    device: &DeviceId,
    peer: SocketAddr,
) -> Result<(), ErrorCode>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &front.settings;
    let (device_read, mut device_write) = tokio::io::split(tls);
    let mut device_reader = FrameReader::new(device_read, settings.packet_bytes_max);

    let first = tokio::time::timeout(
        Duration::from_millis(settings.connect_timeout_ms),
        device_reader.next(),
    )
    .await;
    let (connect, raw_len) = match first {
        Err(_) => return Err(ErrorCode::ProtocolViolation),
        Ok(Err(error)) => {
            if let FrameError::Malformed(detail) = &error {
                tracing::info!(device = %device, %detail, "malformed CONNECT");
            }
            return error.code().map_or(Ok(()), Err);
        }
        Ok(Ok((Packet::Connect(connect), raw))) => (connect, raw.len()),
        Ok(Ok(_)) => return Err(ErrorCode::ProtocolViolation),
    };
    tracing::debug!(device = %device, connect_bytes = raw_len, "connect received");
    let refuse_connect =
        |code: ConnectReturnCode| encode(&Packet::ConnAck(ConnAck::new(code, false)));
    if connect.protocol != Protocol::V4 {
        write_and_close(
            &mut device_write,
            &refuse_connect(ConnectReturnCode::RefusedProtocolVersion),
        )
        .await;
        return Err(ErrorCode::ProtocolViolation);
    }
    if connect.client_id != device.as_str() {
        write_and_close(
            &mut device_write,
            &refuse_connect(ConnectReturnCode::BadClientId),
        )
        .await;
        return Err(ErrorCode::ClientIdMismatch);
    }
    if connect.last_will.is_some() {
        write_and_close(
            &mut device_write,
            &refuse_connect(ConnectReturnCode::NotAuthorized),
        )
        .await;
        return Err(ErrorCode::TopicNotAuthorized);
    }
    // listening before the status is read: a suspension committed from here on reaches this
    // session, whenever it comes
    let mut disconnects = front.disconnects.subscribe();
    match front.store.device(device).await {
        Ok(Some(enrolled)) if enrolled.active => {}
        Ok(_) => {
            write_and_close(
                &mut device_write,
                &refuse_connect(ConnectReturnCode::NotAuthorized),
            )
            .await;
            return Err(ErrorCode::DeviceNotEnrolled);
        }
        Err(error) => {
            tracing::error!(%error, "device lookup failed");
            write_and_close(
                &mut device_write,
                &refuse_connect(ConnectReturnCode::ServiceUnavailable),
            )
            .await;
            return Err(ErrorCode::InternalError);
        }
    }

    let idle = if connect.keep_alive == 0 {
        Duration::from_millis(settings.idle_timeout_max_ms)
    } else {
        Duration::from_millis(
            (u64::from(connect.keep_alive) * 1_500).min(settings.idle_timeout_max_ms),
        )
    };

    let broker = match tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(front.broker_address),
    )
    .await
    {
        Ok(Ok(broker)) => broker,
        _ => {
            write_and_close(
                &mut device_write,
                &refuse_connect(ConnectReturnCode::ServiceUnavailable),
            )
            .await;
            return Err(ErrorCode::InternalError);
        }
    };
    let _ = broker.set_nodelay(true);
    let (broker_read, mut broker_write) = broker.into_split();
    let mut rewritten = connect;
    rewritten.login = Some(Login::new(device.as_str(), front.broker_secret.expose()));
    if broker_write
        .write_all(&encode(&Packet::Connect(rewritten)))
        .await
        .is_err()
    {
        write_and_close(
            &mut device_write,
            &refuse_connect(ConnectReturnCode::ServiceUnavailable),
        )
        .await;
        return Err(ErrorCode::InternalError);
    }

    // one writer owns the device's write half; the broker pump and the guard feed it frames
    let (to_device, mut device_queue) = mpsc::channel::<Bytes>(settings.outbound_queue_packets_max);
    let writer = tokio::spawn(async move {
        while let Some(frame) = device_queue.recv().await {
            if device_write.write_all(&frame).await.is_err() {
                return;
            }
            if device_queue.is_empty() && device_write.flush().await.is_err() {
                return;
            }
        }
        let _ = device_write.flush().await;
        let _ = device_write.shutdown().await;
    });
    // the QoS 1 packet ids the broker has sent and the device not yet acknowledged: a PUBACK
    // for any other id goes no further (rumqttd 0.20 drops the device's link on one). Bounded
    // by rumqttd's in-flight limit, since it sends no more until acknowledged.
    let awaiting_ack = Arc::new(std::sync::Mutex::new(HashSet::<u16>::new()));
    let pump_awaiting = awaiting_ack.clone();
    let pump_sender = to_device.clone();
    let mut broker_pump = tokio::spawn(async move {
        let mut broker_reader = FrameReader::new(broker_read, 2 * 1024 * 1024);
        loop {
            // rumqttd 0.20 never sets TCP_NODELAY, so Nagle holds its next small write until
            // this side ACKs the previous one; acknowledge at once instead of after the
            // kernel's delayed-ACK timer (Linux resets quick-ACK mode, so set it every read)
            let _ = socket2::SockRef::from(broker_reader.reader.as_ref()).set_quickack(true);
            let Ok(frame) = broker_reader.next_raw().await else {
                break;
            };
            if let Some(id) = frames::publish_packet_id(&frame) {
                pump_awaiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id);
            }
            // a device that does not read its replies is dropped, never waited for
            match pump_sender.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!("device too slow to read its replies; dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });

    let mut ended_by = None;
    let mut overload_log = Throttled::every(LOG_INTERVAL);
    let mut answered_refusals = 0u32;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, device_reader.next()) => next,
            _ = &mut broker_pump => break,
            told = disconnects.recv() => {
                let ours = match told {
                    Ok(id) => id == *device,
                    // missed some: ask the database whether this device may stay
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => !matches!(
                        front.store.device(device).await,
                        Ok(Some(enrolled)) if enrolled.active
                    ),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
                };
                if ours {
                    broker_pump.abort();
                    let _ = to_device
                        .send(notice(front, device, ErrorCode::DeviceNotEnrolled))
                        .await;
                    ended_by = Some(ErrorCode::DeviceNotEnrolled);
                    break;
                }
                continue;
            }
        };
        let (packet, raw) = match next {
            Err(_) => break, // keep-alive expired
            Ok(Err(error)) => {
                if let FrameError::Malformed(detail) = &error {
                    tracing::info!(device = %device, %detail, "malformed packet");
                }
                ended_by = error.code();
                if let Some(code) = ended_by {
                    broker_pump.abort();
                    let _ = to_device.send(notice(front, device, code)).await;
                }
                break;
            }
            Ok(Ok(frame)) => frame,
        };
        if let Packet::PubAck(ack) = &packet {
            let solicited = awaiting_ack
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ack.pkid);
            if !solicited {
                tracing::debug!(device = %device, pkid = ack.pkid, "unsolicited PUBACK ignored");
                continue;
            }
        }
        let verdict = match check_packet(device, &packet) {
            Verdict::Forward => admit(front, device, &packet, &mut overload_log),
            other => other,
        };
        match verdict {
            // a DISCONNECT ends the session here: closing the broker link says the same to
            // rumqttd (wills are refused at CONNECT, so none is discarded), and rumqttd 0.20,
            // given both, handles the disconnection twice and logs an ERROR each time
            Verdict::Forward if packet == Packet::Disconnect => break,
            Verdict::Forward => {
                if broker_write.write_all(&raw).await.is_err() {
                    break;
                }
            }
            Verdict::Overloaded(answers) => {
                front.metrics.count_refusal(ErrorCode::Overloaded);
                if answers
                    .into_iter()
                    .any(|frame| to_device.try_send(frame).is_err())
                {
                    // a device flooding without reading what it is told is dropped
                    ended_by = Some(ErrorCode::Overloaded);
                    break;
                }
            }
            Verdict::Answer(_, code) if answered_refusals >= ANSWERED_REFUSALS_MAX => {
                // a device that keeps asking for what it may not have is closed: each refusal
                // is an audit record, and the trail is not for filling (the closing refusal
                // is counted and audited once the session ends)
                broker_pump.abort();
                let _ = to_device.try_send(notice(front, device, code));
                ended_by = Some(code);
                break;
            }
            Verdict::Answer(answer, code) => {
                answered_refusals += 1;
                front.metrics.count_refusal(code);
                tracing::info!(device = %device, code = %code, "packet refused");
                audit_refusal(front, peer, Some(device), code, EventType::PacketRefused).await;
                if to_device.send(encode(&answer)).await.is_err()
                    || to_device.send(notice(front, device, code)).await.is_err()
                {
                    break;
                }
            }
            Verdict::Close(code) => {
                broker_pump.abort();
                let _ = to_device.send(notice(front, device, code)).await;
                ended_by = Some(code);
                break;
            }
        }
    }
    broker_pump.abort();
    let _ = broker_write.shutdown().await;
    drop(to_device);
    // a device that does not read keeps the writer blocked: it gets two seconds to take what
    // is queued, then the writer (and with it the socket) is dropped
    let writer_abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        writer_abort.abort();
    }
    ended_by.map_or(Ok(()), Err)
}

/// Frames for the tests of the guard's decoding (here and in `crate::fuzzing`).
#[cfg(test)]
pub(crate) mod test_frames {
    use super::frames::encode;
    use rumqttc::mqttbytes::v4::{Packet, Subscribe, SubscribeFilter};
    use rumqttc::mqttbytes::QoS;

    /// A packet's canonical encoding.
    pub(crate) fn frame(packet: Packet) -> Vec<u8> {
        encode(&packet).to_vec()
    }

    /// SUBSCRIBE (packet id 2) to pos-1's own replies at QoS 1.
    pub(crate) fn subscribe_own() -> Vec<u8> {
        frame(Packet::Subscribe(Subscribe {
            pkid: 2,
            filters: vec![SubscribeFilter::new(
                "paygate/v1/devices/pos-1/replies".into(),
                QoS::AtLeastOnce,
            )],
        }))
    }
}
