//! The guard's policy: what a device may send after CONNECT.

use bytes::Bytes;
use paygate_core::topics::{replies_topic, requests_topic};
use paygate_core::{DeviceId, ErrorCode};
use rumqttc::mqttbytes::v4::{Packet, SubAck, SubscribeReasonCode, UnsubAck};
use rumqttc::mqttbytes::QoS;

/// What the guard does with one packet from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not admitted ([`crate::admission`]): send these frames (an acknowledgement if the
    /// publish asked for one, and the `OVERLOADED` notice); nothing is audited or forwarded.
    Overloaded(Vec<Bytes>),
    /// Pass the packet to rumqttd unchanged.
    Forward,
    /// Answer the device directly (and report the code); the packet goes nowhere.
    Answer(Packet, ErrorCode),
    /// Send the device a signed notice with the code and close the connection.
    Close(ErrorCode),
}

/// The guard's policy for a packet after CONNECT. A device may publish (QoS 0 or 1, not
/// retained) only to its own request topic, and subscribe only to its own reply topic.
pub fn check_packet(device: &DeviceId, packet: &Packet) -> Verdict {
    match packet {
        Packet::Publish(publish) => {
            if publish.topic != requests_topic(device) {
                Verdict::Close(ErrorCode::TopicNotAuthorized)
            } else if publish.qos == QoS::ExactlyOnce || publish.retain {
                Verdict::Close(ErrorCode::QosNotSupported)
            } else {
                Verdict::Forward
            }
        }
        Packet::Subscribe(subscribe) => {
            let own = replies_topic(device);
            let allowed = subscribe
                .filters
                .iter()
                .all(|filter| filter.path == own && filter.qos != QoS::ExactlyOnce);
            if allowed {
                Verdict::Forward
            } else {
                let failures = vec![SubscribeReasonCode::Failure; subscribe.filters.len()];
                Verdict::Answer(
                    Packet::SubAck(SubAck::new(subscribe.pkid, failures)),
                    ErrorCode::TopicNotAuthorized,
                )
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            let own = replies_topic(device);
            if unsubscribe.topics.iter().all(|topic| *topic == own) {
                Verdict::Forward
            } else {
                Verdict::Answer(
                    Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)),
                    ErrorCode::TopicNotAuthorized,
                )
            }
        }
        Packet::PubAck(_) | Packet::PingReq | Packet::Disconnect => Verdict::Forward,
        Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
            Verdict::Close(ErrorCode::QosNotSupported)
        }
        Packet::Connect(_)
        | Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingResp => Verdict::Close(ErrorCode::ProtocolViolation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{
        ConnAck, ConnectReturnCode, PubAck, Publish, Subscribe, SubscribeFilter, Unsubscribe,
    };

    fn publish(topic: &str, qos: QoS, retain: bool) -> Packet {
        let mut publish = Publish::new(topic, qos, b"x".to_vec());
        publish.retain = retain;
        publish.pkid = 1;
        Packet::Publish(publish)
    }

    fn subscribe(paths: &[&str], qos: QoS) -> Packet {
        Packet::Subscribe(Subscribe {
            pkid: 7,
            filters: paths
                .iter()
                .map(|p| SubscribeFilter::new(p.to_string(), qos))
                .collect(),
        })
    }

    #[test]
    fn the_guard_policy_as_a_table() {
        let device = DeviceId::parse("pos-1").expect("valid");
        let own_requests = "paygate/v1/devices/pos-1/requests";
        let own_replies = "paygate/v1/devices/pos-1/replies";
        let sub_refused = |n: usize| {
            Verdict::Answer(
                Packet::SubAck(SubAck::new(7, vec![SubscribeReasonCode::Failure; n])),
                ErrorCode::TopicNotAuthorized,
            )
        };
        use ErrorCode::*;
        let table: Vec<(&str, Packet, Verdict)> = vec![
            (
                "own requests qos1",
                publish(own_requests, QoS::AtLeastOnce, false),
                Verdict::Forward,
            ),
            (
                "own requests qos0",
                publish(own_requests, QoS::AtMostOnce, false),
                Verdict::Forward,
            ),
            (
                "own requests qos2",
                publish(own_requests, QoS::ExactlyOnce, false),
                Verdict::Close(QosNotSupported),
            ),
            (
                "retained",
                publish(own_requests, QoS::AtLeastOnce, true),
                Verdict::Close(QosNotSupported),
            ),
            (
                "other device",
                publish("paygate/v1/devices/pos-2/requests", QoS::AtLeastOnce, false),
                Verdict::Close(TopicNotAuthorized),
            ),
            (
                "own replies",
                publish(own_replies, QoS::AtLeastOnce, false),
                Verdict::Close(TopicNotAuthorized),
            ),
            (
                "wildcard topic",
                publish("paygate/v1/devices/+/requests", QoS::AtLeastOnce, false),
                Verdict::Close(TopicNotAuthorized),
            ),
            (
                "sys",
                publish("$SYS/x", QoS::AtMostOnce, false),
                Verdict::Close(TopicNotAuthorized),
            ),
            (
                "nul",
                publish(
                    "paygate/v1/devices/pos-1/requests\0",
                    QoS::AtMostOnce,
                    false,
                ),
                Verdict::Close(TopicNotAuthorized),
            ),
            (
                "empty",
                publish("", QoS::AtMostOnce, false),
                Verdict::Close(TopicNotAuthorized),
            ),
            (
                "subscribe own replies",
                subscribe(&[own_replies], QoS::AtLeastOnce),
                Verdict::Forward,
            ),
            (
                "subscribe #",
                subscribe(&["#"], QoS::AtLeastOnce),
                sub_refused(1),
            ),
            (
                "subscribe share",
                subscribe(
                    &["$share/g/paygate/v1/devices/pos-1/replies"],
                    QoS::AtLeastOnce,
                ),
                sub_refused(1),
            ),
            (
                "subscribe other replies",
                subscribe(&["paygate/v1/devices/pos-2/replies"], QoS::AtLeastOnce),
                sub_refused(1),
            ),
            (
                "subscribe mixed",
                subscribe(&[own_replies, "#"], QoS::AtLeastOnce),
                sub_refused(2),
            ),
            (
                "subscribe qos2",
                subscribe(&[own_replies], QoS::ExactlyOnce),
                sub_refused(1),
            ),
            (
                "unsubscribe other",
                Packet::Unsubscribe(Unsubscribe {
                    pkid: 3,
                    topics: vec!["#".into()],
                }),
                Verdict::Answer(Packet::UnsubAck(UnsubAck::new(3)), TopicNotAuthorized),
            ),
            ("puback", Packet::PubAck(PubAck::new(1)), Verdict::Forward),
            ("ping", Packet::PingReq, Verdict::Forward),
            (
                "connack from device",
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
                Verdict::Close(ProtocolViolation),
            ),
            (
                "unsuback from device",
                Packet::UnsubAck(UnsubAck::new(1)),
                Verdict::Close(ProtocolViolation),
            ),
            (
                "pingresp from device",
                Packet::PingResp,
                Verdict::Close(ProtocolViolation),
            ),
        ];
        for (name, packet, expected) in table {
            assert_eq!(check_packet(&device, &packet), expected, "{name}");
        }
    }
}
