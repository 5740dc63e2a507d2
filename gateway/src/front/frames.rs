//! Frames in and out of a device session: the reader that splits (and size-checks) the
//! stream, the signed notices the front sends, and the throttle on repeated log lines.

use super::Front;
use crate::admission::Refused;
use crate::clock::now_ms;
use crate::pipeline::receipts::rejected_receipt;
use bytes::{Bytes, BytesMut};
use paygate_core::envelope::UnverifiedEnvelope;
use paygate_core::receipt::RECEIPT_CONTENT_TYPE;
use paygate_core::topics::replies_topic;
use paygate_core::{DeviceId, ErrorCode};
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(super) enum FrameError {
    Closed,
    TooLarge,
    Malformed(Malformed),
    Io,
}

/// Why a complete frame was refused by [`decode_strict`].
#[derive(Debug)]
pub enum Malformed {
    /// The MQTT decoder refused it.
    Decode(mqttbytes::Error),
    /// It decodes, but is not byte for byte the packet it decodes to: a reserved flag or bit
    /// set, header flags the packet type does not allow, a QoS byte with its upper bits set,
    /// an over-long length.
    NotCanonical,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Decode(error) => write!(f, "{error:?}"),
            Malformed::NotCanonical => f.write_str("not in canonical form"),
        }
    }
}

/// Decodes one complete frame and refuses it unless re-encoding the packet gives back the
/// very same bytes.
///
/// The guard decides on the packet as it decoded it, and forwards the device's bytes to
/// rumqttd, which decodes them again with its own decoder. Accepting only the canonical form
/// means both decoders see one packet: a byte the guard's decoder would have ignored (the
/// CONNECT reserved flag, SUBSCRIBE's header flags, a subscription QoS of `0x41`) cannot mean
/// something else to the broker. The `mqtt_frame` fuzz target checks this against rumqttd's
/// decoder.
///
/// CONNECT is the exception: the front never forwards the device's CONNECT (it sends rumqttd
/// one of its own, with the broker secret), and MQTT 3.1.1 lets a client send an empty
/// username or password with its flag set, which re-encodes differently. A CONNECT must
/// still have its fixed header flags and its reserved connect flag at zero.
pub fn decode_strict(raw: &[u8], packet_bytes_max: usize) -> Result<Packet, Malformed> {
    let mut copy = BytesMut::from(raw);
    let packet = Packet::read(&mut copy, packet_bytes_max).map_err(Malformed::Decode)?;
    if !copy.is_empty() {
        return Err(Malformed::NotCanonical);
    }
    if let Packet::Connect(_) = &packet {
        // the fixed header: its first byte and the remaining length's bytes (the last one has
        // its top bit clear); then the protocol name ("MQTT", checked by the decoder, 2 + 4
        // bytes) and the level (1 byte); then the connect flags
        let length_bytes = raw
            .iter()
            .skip(1)
            .position(|b| b & 0x80 == 0)
            .map_or(raw.len(), |at| at + 1);
        let flags = raw.get(1 + length_bytes + 7).copied();
        if raw.first() != Some(&0x10) || flags.is_none_or(|f| f & 0x01 != 0) {
            return Err(Malformed::NotCanonical);
        }
        return Ok(packet);
    }
    if encode(&packet) != raw {
        return Err(Malformed::NotCanonical);
    }
    Ok(packet)
}

impl FrameError {
    pub(super) fn code(&self) -> Option<ErrorCode> {
        match self {
            FrameError::Closed | FrameError::Io => None,
            FrameError::TooLarge => Some(ErrorCode::PacketTooLarge),
            FrameError::Malformed(_) => Some(ErrorCode::ProtocolViolation),
        }
    }
}

/// Splits a byte stream into MQTT frames, refusing a frame larger than the maximum as soon as
/// its fixed header is read (before its body is buffered).
pub(super) struct FrameReader<R> {
    pub(super) reader: R,
    pub(super) buffer: BytesMut,
    pub(super) packet_bytes_max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(reader: R, packet_bytes_max: usize) -> Self {
        FrameReader {
            reader,
            buffer: BytesMut::with_capacity(4096),
            packet_bytes_max,
        }
    }

    pub(super) async fn next_raw(&mut self) -> Result<Bytes, FrameError> {
        loop {
            match mqttbytes::check(self.buffer.iter(), self.packet_bytes_max) {
                Ok(header) => return Ok(self.buffer.split_to(header.frame_length()).freeze()),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                    return Err(FrameError::TooLarge)
                }
                Err(other) => return Err(FrameError::Malformed(Malformed::Decode(other))),
            }
            match self.reader.read_buf(&mut self.buffer).await {
                Ok(0) => return Err(FrameError::Closed),
                Ok(_) => {}
                Err(_) => return Err(FrameError::Io),
            }
        }
    }

    pub(super) async fn next(&mut self) -> Result<(Packet, Bytes), FrameError> {
        let raw = self.next_raw().await?;
        let packet = decode_strict(&raw, self.packet_bytes_max).map_err(FrameError::Malformed)?;
        Ok((packet, raw))
    }
}

/// The canonical encoding of a packet (what [`decode_strict`] compares a frame with).
pub fn encode(packet: &Packet) -> Bytes {
    let mut buffer = BytesMut::new();
    // packets the guard builds are small and well-formed
    let _ = packet.write(&mut buffer, usize::MAX);
    buffer.freeze()
}

/// The packet id of a QoS 1 PUBLISH frame as the broker sent it (`None` for any other frame,
/// or one too short to hold it): the ids a device may acknowledge.
pub fn publish_packet_id(frame: &[u8]) -> Option<u16> {
    let (&first, rest) = frame.split_first()?;
    if first >> 4 != 3 || (first >> 1) & 0b11 != 1 {
        return None;
    }
    // the remaining length: one to four bytes, the high bit meaning "more"
    let length_bytes = rest.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let body = rest.get(length_bytes..)?;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let id = body.get(2 + topic_len..4 + topic_len)?;
    Some(u16::from_be_bytes([id[0], id[1]]))
}

pub(super) fn notice(front: &Front, device: &DeviceId, code: ErrorCode) -> Bytes {
    let receipt = rejected_receipt(
        device,
        None,
        None,
        code,
        code.description().to_owned(),
        now_ms(),
    );
    seal_reply(front, device, &receipt)
}

/// The answer to a request the front did not admit: `OVERLOADED` with the wait, naming the
/// request (its idempotency key and body hash, read without verifying the signature: the
/// notice goes only to the device's own reply topic) so a device with several in flight
/// knows which one to send again.
pub(super) fn overloaded_notice(
    front: &Front,
    device: &DeviceId,
    message: &[u8],
    refused: Refused,
) -> Bytes {
    let envelope = UnverifiedEnvelope::parse(message).ok();
    let payload = envelope.as_ref().and_then(|e| e.payload_unverified());
    let key = payload
        .and_then(|p| paygate_core::request::decode_request(p).ok())
        .map(|request| request.idempotency_key);
    let body = payload.map(crate::pipeline::sha256);
    let mut receipt = rejected_receipt(
        device,
        key.as_ref(),
        body.as_deref(),
        ErrorCode::Overloaded,
        format!(
            "over the {} limit; send the same request again in {} ms",
            refused.reason.as_str(),
            refused.retry_after.as_millis()
        ),
        now_ms(),
    );
    receipt.retry_after_ms =
        Some(u64::try_from(refused.retry_after.as_millis()).unwrap_or(u64::MAX));
    seal_reply(front, device, &receipt)
}

pub(super) fn seal_reply(
    front: &Front,
    device: &DeviceId,
    receipt: &paygate_core::receipt::Receipt,
) -> Bytes {
    let sealed = front
        .receipt_key
        .seal(RECEIPT_CONTENT_TYPE, &receipt.to_payload());
    encode(&Packet::Publish(Publish::new(
        replies_topic(device),
        QoS::AtMostOnce,
        sealed,
    )))
}

#[cfg(test)]
mod tests {
    use super::super::test_frames::{frame, subscribe_own};
    use super::*;
    use rumqttc::mqttbytes::v4::{Connect, PubAck};

    const MAX: usize = 64 * 1024;

    #[test]
    fn the_packet_id_of_a_qos_1_publish_is_read_from_its_frame() {
        use proptest::prelude::*;
        let ids = |topic: String, payload: Vec<u8>, id: u16, dup: bool, qos: u8| {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos)];
            let mut publish = Publish::new(topic, qos, payload);
            publish.pkid = if qos == QoS::AtMostOnce { 0 } else { id };
            publish.dup = dup;
            let frame = encode(&Packet::Publish(publish));
            let expected = (qos == QoS::AtLeastOnce).then_some(id);
            assert_eq!(publish_packet_id(&frame), expected);
            // a frame cut anywhere is never misread as another id
            for cut in 0..frame.len() {
                let read = publish_packet_id(&frame[..cut]);
                assert!(read.is_none() || read == expected);
            }
        };
        proptest!(|(topic in "[a-z/]{0,300}", payload in proptest::collection::vec(any::<u8>(), 0..20_000), id in 1u16.., dup: bool, qos in 0u8..3)| {
            ids(topic, payload, id, dup, qos);
        });
        assert_eq!(
            publish_packet_id(&frame(Packet::PubAck(PubAck::new(7)))),
            None
        );
        assert_eq!(publish_packet_id(&subscribe_own()), None);
    }

    #[test]
    fn frames_not_in_canonical_form_are_refused() {
        let mut connect = Connect::new("pos-1");
        connect.keep_alive = 30;
        let canonical_connect = frame(Packet::Connect(connect));
        // fixed header (2), protocol name (2 + 4), level (1), then the connect flags
        assert_eq!(canonical_connect[9] & 0x01, 0);
        let mut reserved = canonical_connect.clone();
        reserved[9] |= 0x01;

        let mut subscribe_flags = subscribe_own();
        assert_eq!(subscribe_flags[0], 0x82);
        subscribe_flags[0] = 0x80;
        let mut qos_0x41 = subscribe_own();
        let last = qos_0x41.len() - 1;
        assert_eq!(qos_0x41[last], 0x01);
        qos_0x41[last] = 0x41;

        let refused: Vec<(&str, Vec<u8>)> = vec![
            ("CONNECT with the reserved flag", reserved),
            ("SUBSCRIBE with header flags 0000", subscribe_flags),
            ("SUBSCRIBE asking for QoS 0x41", qos_0x41),
            ("PINGREQ with a header flag", vec![0xC1, 0x00]),
            ("DISCONNECT with a header flag", vec![0xE2, 0x00]),
            (
                "PUBACK with a two-byte length",
                vec![0x40, 0x82, 0x00, 0x00, 0x07],
            ),
            (
                "PUBACK with a trailing byte",
                vec![0x40, 0x03, 0x00, 0x07, 0x00],
            ),
        ];
        for (case, bytes) in refused {
            assert!(
                matches!(
                    decode_strict(&bytes, MAX),
                    Err(Malformed::NotCanonical | Malformed::Decode(_))
                ),
                "{case} was accepted"
            );
        }
        // an empty password with its flag set (allowed by MQTT 3.1.1; re-encodes without it)
        let mut login = Connect::new("pos-1");
        login.keep_alive = 30;
        login.set_login("pos-1", "x");
        let mut empty_password = frame(Packet::Connect(login));
        let at = empty_password.len() - 3; // the password: length 00 01, then "x"
        assert_eq!(&empty_password[at..], &[0x00, 0x01, b'x']);
        empty_password.truncate(at);
        empty_password.extend_from_slice(&[0x00, 0x00]);
        empty_password[1] -= 1;
        assert!(decode_strict(&empty_password, MAX).is_ok());
        for canonical in [
            canonical_connect,
            subscribe_own(),
            frame(Packet::PubAck(PubAck::new(7))),
        ] {
            assert!(decode_strict(&canonical, MAX).is_ok());
        }
    }
}
